#!/usr/bin/env bash
# Builds (or reuses) the environment of the real third-party clients the compatibility tests drive
# (the OpenAI SDK, LiveKit Agents, Pipecat, Mistral's SDK), cached outside the clone, and prints its
# path on stdout (and nothing else). Progress goes to stderr.
#
# It is its own environment because those clients cannot live in the project's: openai's realtime
# extra caps websockets below 16, the project needs 17.4 or later. The packages come from
# tests/compat/env/requirements.txt (compiled with hashes from requirements.in, exact versions of
# everything); the env's directory is named after that file's hash, so a changed file builds a new
# env and never patches an old one. Building, caching and reuse are lib.sh's cached_env.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

requirements=tests/compat/env/requirements.txt
lock_hash="$(sha256sum "$requirements" | cut -c1-12)"

build() {
  local tmp="$1" uv
  uv="$(ensure_uv)"
  log "building the compat client env (about 100 packages) in $tmp"
  UV_PYTHON_DOWNLOADS=never "$uv" venv --quiet --python 3.11 "$tmp" >&2 \
    || die "could not create a Python 3.11 venv in $tmp"
  "$uv" pip sync --quiet --require-hashes --python "$tmp/bin/python" "$requirements" >&2 \
    || die "uv pip sync of $requirements failed"
}

check() {
  "$1/bin/python" -c 'import openai, livekit.plugins.openai, pipecat, mistralai.extra.realtime' \
    || die "the compat client env in $1 cannot import its clients"
  printf 'requirements.txt %s\n' "$lock_hash"
}

cached_env compat-clients "$YAP_CACHE_DIR/compat-clients-$lock_hash" "compat client env" build check
