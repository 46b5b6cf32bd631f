#!/usr/bin/env bash
# What `make up` runs: reads .env, syncs the locked env (with vLLM on a GPU host; on a CPU-only host
# it builds or reuses the CPU vLLM env instead), then runs the launcher in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# KEY=VALUE lines of .env; a variable already set in the environment wins over the file.
if [ -f .env ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line#"${line%%[![:space:]]*}"}"
    case "$line" in '' | '#'*) continue ;; esac
    line="${line#export }"
    key="${line%%=*}"
    [ "$key" != "$line" ] || continue
    value="${line#*=}"
    case "$value" in
      \"*\") value="${value:1:${#value}-2}" ;;
      \'*\') value="${value:1:${#value}-2}" ;;
    esac
    if [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] && [ -z "${!key+set}" ]; then
      export "$key=$value"
    fi
  done <.env
fi

[ -n "${VOXTRAL_API_KEY:-}" ] \
  || die "VOXTRAL_API_KEY is not set: put it in .env or the environment (one key, or several separated by commas)"

device="${VLLM_DEVICE:-auto}"
if [ "$device" = auto ]; then
  if [ -e /dev/nvidia0 ] || nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
fi
export VLLM_DEVICE="$device"

if [ "$device" = cpu ]; then
  sync_env
  if [ -z "${VLLM_BIN:-}" ]; then
    VOXTRAL_VLLM_CPU_ENV="${VOXTRAL_VLLM_CPU_ENV:-$(scripts/cpu_vllm_env.sh)}"
    export VOXTRAL_VLLM_CPU_ENV
  fi
  if [ "${VOXTRAL_MODEL_ID:-}" != dummy ]; then
    log "warning: vLLM runs on CPU; the real model is far too slow there (VOXTRAL_MODEL_ID=dummy serves the tiny test model)"
  fi
else
  uv="$(ensure_uv)"
  "$uv" sync --frozen --extra clients --extra gpu --quiet >&2 || die "uv sync (with the gpu extra) failed"
fi

exec .venv/bin/python -m launcher
