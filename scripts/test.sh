#!/usr/bin/env bash
# The whole suite on a fresh machine: installs uv, syncs the locked env, builds (or reuses) the CPU vLLM
# env for the end-to-end tier and the env of the third-party clients for the compat tier, then runs
# pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
sync_env
# Headless Chromium for the browser demo test (Debian's package; needs root when missing).
scripts/ensure_chromium.sh
VOXTRAL_VLLM_CPU_ENV="${VOXTRAL_VLLM_CPU_ENV:-$(scripts/cpu_vllm_env.sh)}"
export VOXTRAL_VLLM_CPU_ENV
VOXTRAL_COMPAT_ENV="${VOXTRAL_COMPAT_ENV:-$(scripts/compat_env.sh)}"
export VOXTRAL_COMPAT_ENV
exec .venv/bin/python -m pytest "$@"
