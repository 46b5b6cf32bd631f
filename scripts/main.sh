#!/usr/bin/env bash
# What `make up` runs: reads .env, checks the key, syncs the locked env (with vLLM on a GPU host; on a
# CPU-only host it builds or reuses the CPU vLLM env instead), runs the preflight (`make doctor`),
# starts the launcher detached (pid in run/launcher.pid, output in logs/server.log), waits for
# /healthz and then /readyz, and tails the log (Ctrl+C stops only the tail; TAIL_LOGS=0 skips it).
# `scripts/main.sh --restart` (make restart) stops the running service first and starts the model
# it ran (recorded in run/launcher.state) unless VOXTRAL_MODEL_ID says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck source=scripts/ops.sh
. scripts/ops.sh

load_env_file "$ENV_FILE"

case "${1:-}" in
  '') ;;
  --restart)
    recorded="$(state_value VOXTRAL_MODEL_ID)"
    if [ -z "${VOXTRAL_MODEL_ID:-}" ] && [ -n "$recorded" ]; then
      export VOXTRAL_MODEL_ID="$recorded"
      log "restarting with the model the service ran: VOXTRAL_MODEL_ID=$recorded"
    fi
    scripts/stop.sh
    ;;
  *) die "usage: scripts/main.sh [--restart]" ;;
esac

[ -n "${VOXTRAL_API_KEY:-}" ] \
  || die "VOXTRAL_API_KEY is not set: put it in .env or the environment (one key, or several separated by commas)"

if pid="$(running_pid)"; then
  die "the service is already running (pid $pid): \`make down\` stops it, \`make restart\` restarts it"
fi

device="${VLLM_DEVICE:-auto}"
if [ "$device" = auto ]; then
  if [ -e /dev/nvidia0 ] || nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
fi
export VLLM_DEVICE="$device"

sync_env
if [ "$device" = cpu ]; then
  if [ -z "${VLLM_BIN:-}" ]; then
    VOXTRAL_VLLM_CPU_ENV="${VOXTRAL_VLLM_CPU_ENV:-$(scripts/cpu_vllm_env.sh)}"
    export VOXTRAL_VLLM_CPU_ENV
  fi
fi

port="${SERVER_PORT:-8000}"
host="$(probe_host "${SERVER_BIND_HOST:-}")"
http_get "$host" "$port" /healthz \
  && die "port $port already answers /healthz: another server runs there (set SERVER_PORT)"

# What the host lacks, or a bad setting, stops here with one line per problem, before anything is
# downloaded or detached (exit status 2, as for any setting refused before the start).
if ! .venv/bin/python -m launcher --check >&2; then
  log "make up stopped before starting anything: the preflight (make doctor) found the problems above"
  exit 2
fi

mkdir -p "$RUN_DIR" "$LOG_DIR"
# One previous run is kept next to the current one.
[ -f "$LOG_FILE" ] && mv -f "$LOG_FILE" "$LOG_FILE.1"
# setsid: a session of its own, so the terminal's Ctrl+C and hang-up never reach the service, and
# its pid is also its process group id (stop.sh signals the group as a last resort).
setsid .venv/bin/python -m launcher </dev/null >>"$LOG_FILE" 2>&1 &
pid=$!
printf '%s\n' "$pid" >"$PID_FILE"
{
  printf 'SERVER_HOST=%s\nSERVER_PORT=%s\n' "$host" "$port"
  printf 'VLLM_PORT=%s\nWS_DRAIN_TIMEOUT_S=%s\n' "${VLLM_PORT:-8001}" "${WS_DRAIN_TIMEOUT_S:-30}"
  printf 'VLLM_DEVICE=%s\nSTARTED_AT=%s\n' "$device" "$(date -Iseconds)"
  printf 'VOXTRAL_MODEL_ID=%s\n' "${VOXTRAL_MODEL_ID:-}"
} >"$STATE_FILE"
log "launcher started (pid $pid, $device); its log: $LOG_FILE"

if [ "$device" = cuda ]; then default_timeout=3600; else default_timeout=900; fi
timeout_s="${UP_TIMEOUT_S:-$default_timeout}"
trap 'printf "\n"; log "stopped waiting; the service keeps starting in the background (pid $pid): make status, make logs, make down"; exit 130' INT

fail() {
  printf '\n' >&2
  log "$1; the last lines of $LOG_FILE:"
  tail -n 40 "$LOG_FILE" >&2 || true
  if alive "$pid"; then
    scripts/stop.sh >&2 || true
  fi
  rm -f "$PID_FILE" "$STATE_FILE"
  die "make up failed: $1"
}

# Waits until GET $1 answers 200, showing the elapsed time and the launcher's phase.
wait_for() {
  local path="$1" last_line=-1
  while ! http_get "$host" "$port" "$path" || [ "$HTTP_CODE" != 200 ]; do
    alive "$pid" || fail "the launcher exited before $path answered 200"
    [ "$SECONDS" -lt "$timeout_s" ] || fail "$path did not answer 200 within ${timeout_s}s (UP_TIMEOUT_S)"
    local phase
    phase="$(last_phase)"
    if [ -t 2 ]; then
      printf '\r[%s] waiting for %s: %ss (phase: %s)   ' "$(date +%H:%M:%S)" "$path" "$SECONDS" \
        "${phase:-starting}" >&2
    elif [ $((SECONDS / 10)) -ne "$last_line" ]; then
      last_line=$((SECONDS / 10))
      log "waiting for $path: ${SECONDS}s (phase: ${phase:-starting})"
    fi
    sleep 1
  done
  [ -t 2 ] && printf '\n' >&2
  log "$path answers 200 after ${SECONDS}s"
}

SECONDS=0
wait_for /healthz
wait_for /readyz
trap - INT
log "ready: ws://$host:$port/api/asr-streaming (pid $pid); make status, make logs, make down"
fits="$(last_capacity)"
[ -z "$fits" ] || log "vLLM's KV cache: $fits"
while IFS= read -r warning; do
  log "warning: $warning"
done < <(startup_warnings)

if [ "${TAIL_LOGS:-1}" != 0 ]; then
  log "following $LOG_FILE (Ctrl+C stops following; the service keeps running)"
  exec tail -n 20 -F "$LOG_FILE"
fi
