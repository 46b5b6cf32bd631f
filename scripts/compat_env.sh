#!/usr/bin/env bash
# Builds (or reuses) the environment of the real third-party clients the compatibility tests drive
# (the OpenAI SDK, LiveKit Agents, Pipecat, Mistral's SDK), cached outside the clone, and prints its
# path on stdout (and nothing else). Progress goes to stderr.
#
# It is its own environment because those clients cannot live in the project's: openai's realtime
# extra caps websockets below 16, the project needs 17.4 or later. The packages come from
# tests/compat/env/requirements.txt (compiled with hashes from requirements.in, exact versions of
# everything); the env's directory is named after that file's hash, so a changed file builds a new
# env and never patches an old one. A build happens in a temporary sibling directory
# that is renamed into place once every step has worked, and the env only counts as complete once
# its marker file exists, so an interrupted build is never reused.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

requirements=tests/compat/env/requirements.txt
lock_hash="$(sha256sum "$requirements" | cut -c1-12)"
env_dir="$YAP_CACHE_DIR/compat-clients-$lock_hash"
marker="$env_dir/.yap-complete"

if [ -f "$marker" ]; then
  printf '%s\n' "$env_dir"
  exit 0
fi

mkdir -p "$YAP_CACHE_DIR"
# Two concurrent runs (say, two test sessions) must not build twice into the same place.
exec 9>"$YAP_CACHE_DIR/.compat-clients.lock"
flock 9
if [ -f "$marker" ]; then
  printf '%s\n' "$env_dir"
  exit 0
fi

# Under the lock nothing else is building, so leftovers are from interrupted runs.
rm -rf "$YAP_CACHE_DIR/.compat-clients-$lock_hash.tmp."*
if [ -e "$env_dir" ]; then
  log "removing incomplete compat client env $env_dir"
  rm -rf "$env_dir"
fi

uv="$(ensure_uv)"
tmp="$YAP_CACHE_DIR/.compat-clients-$lock_hash.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
SECONDS=0
log "building the compat client env (about 100 packages) in $tmp"
UV_PYTHON_DOWNLOADS=never "$uv" venv --quiet --python 3.11 "$tmp" >&2 \
  || die "could not create a Python 3.11 venv in $tmp"
"$uv" pip sync --quiet --require-hashes --python "$tmp/bin/python" "$requirements" >&2 \
  || die "uv pip sync of $requirements failed"

# The venv's scripts and activate files name the temporary path; point them at the final one.
while IFS= read -r -d '' f; do
  if grep -Iq "$tmp" "$f"; then
    sed -i "s#$tmp#$env_dir#g" "$f"
  fi
done < <(find "$tmp/bin" -maxdepth 1 -type f -print0)
mv "$tmp" "$env_dir"
trap - EXIT

"$env_dir/bin/python" -c 'import openai, livekit.plugins.openai, pipecat, mistralai.extra.realtime' \
  || die "the compat client env in $env_dir cannot import its clients"
printf 'requirements.txt %s\n' "$lock_hash" >"$marker"
log "compat client env ready in ${SECONDS}s: $env_dir ($(du -sh "$env_dir" | cut -f1))"
printf '%s\n' "$env_dir"
