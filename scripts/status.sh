#!/usr/bin/env bash
# What `make status` runs: the launcher's pid and uptime, /healthz and /readyz, open connections
# against capacity, the streams vLLM's KV cache holds, and vLLM's state. Exit status: 0 running and
# ready, 1 not running, 3 running but not ready (starting, vLLM down, draining or at capacity).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck source=scripts/ops.sh
. scripts/ops.sh

load_env_file "$ENV_FILE"

row() { printf '%-12s %s\n' "$1" "$2"; }

if ! pid="$(running_pid)"; then
  row launcher "not running (no live pid in $PID_FILE)"
  exit 1
fi
host="$(state_value SERVER_HOST)"
host="${host:-$(probe_host "${SERVER_BIND_HOST:-}")}"
port="$(state_value SERVER_PORT)"
port="${port:-${SERVER_PORT:-8000}}"
vllm_port="$(state_value VLLM_PORT)"
vllm_port="${vllm_port:-${VLLM_PORT:-8001}}"

started="$(state_value STARTED_AT)"
row launcher "running, pid $pid, up $(ps -o etime= -p "$pid" | tr -d ' ')${started:+ (since $started)}, phase $(last_phase)"

ready=0
if http_get "$host" "$port" /healthz; then
  row healthz "$HTTP_CODE $(json_field "$HTTP_BODY" status || true) (http://$host:$port/healthz)"
  upstream="$(json_field "$HTTP_BODY" upstream || true)"
  connections="$(json_field "$HTTP_BODY" connections || true)"
  capacity="$(json_field "$HTTP_BODY" capacity || true)"
  http_get "$host" "$port" /readyz || true
  draining="$(json_field "$HTTP_BODY" draining || true)"
  row readyz "$HTTP_CODE ready=$(json_field "$HTTP_BODY" ready || echo '?') draining=${draining:-?}"
  [ "$HTTP_CODE" = 200 ] && ready=1
  row connections "${connections:-?} open / ${capacity:-?} capacity"
  fits="$(last_capacity)"
  row kv-cache "${fits:-not known yet (vLLM not ready)}"
else
  row healthz "no answer on http://$host:$port/healthz (still preparing the model?)"
  row readyz "-"
  upstream="unknown"
fi

# vLLM: the proxy's view of it, its process under the launcher, and its own /health.
vllm_pid=""
for p in $(descendants "$pid"); do
  if ps -o args= -p "$p" 2>/dev/null | grep -q ' serve '; then vllm_pid="$p"; break; fi
done
if http_get 127.0.0.1 "$vllm_port" /health; then vllm_health="$HTTP_CODE"; else vllm_health="no answer"; fi
row vllm "${upstream:-unknown} (proxy's view); pid ${vllm_pid:-none}, /health on :$vllm_port: $vllm_health"
while IFS= read -r warning; do
  row warning "$warning"
done < <(startup_warnings)
row log "$LOG_FILE"

[ "$ready" = 1 ] || exit 3
