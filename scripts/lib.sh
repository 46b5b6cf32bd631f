# Shared helpers for the lifecycle scripts. Source it; do not run it.
# shellcheck shell=bash

UV_VERSION="${UV_VERSION:-0.13.8}"
# Everything the project builds outside the clone lives here, so one machine builds it once.
YAP_CACHE_DIR="${YAP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/yap-voxtral-stt}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints the path of a uv binary of UV_VERSION, installing it into the cache when missing.
ensure_uv() {
  if command -v uv >/dev/null 2>&1 && [ "$(uv --version | awk '{print $2}')" = "$UV_VERSION" ]; then
    command -v uv
    return
  fi
  local venv="$YAP_CACHE_DIR/uv-$UV_VERSION"
  if [ ! -x "$venv/bin/uv" ]; then
    log "installing uv $UV_VERSION into $venv"
    command -v python3 >/dev/null 2>&1 || die "python3 is required to install uv"
    python3 -m venv "$venv" >&2 || die "could not create $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" >&2 \
      || die "could not install uv $UV_VERSION"
  fi
  printf '%s\n' "$venv/bin/uv"
}

# Syncs the locked project environment (.venv) with the client extras; prints nothing on success.
sync_env() {
  local uv
  uv="$(ensure_uv)"
  "$uv" sync --frozen --extra clients --quiet >&2 || die "uv sync failed"
}
