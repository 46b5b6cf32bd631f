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
    python3 -m venv "$venv" >&2 \
      || die "could not create $venv with python3 -m venv (Debian and Ubuntu ship it apart: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" >&2 \
      || die "could not install uv $UV_VERSION"
  fi
  printf '%s\n' "$venv/bin/uv"
}

# True when this host runs (or will run) the GPU service: VLLM_DEVICE=cuda, or VLLM_DEVICE auto
# (or unset) and an NVIDIA GPU is visible, or .venv already holds the gpu extra (its vllm). The
# last rule wins over VLLM_DEVICE=cpu, so that a CPU run on a GPU host (the lifecycle tests, say)
# never uninstalls the vLLM a running server uses; removing the extra is a deliberate
# `rm -rf .venv` (or `scripts/stop.sh --nuke`).
serves_gpu() {
  [ -x .venv/bin/vllm ] && return 0
  case "${VLLM_DEVICE:-auto}" in
    cuda | gpu) return 0 ;;
    auto) [ -e /dev/nvidia0 ] || nvidia-smi -L >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

# The one rule for the extras of the project environment: the clients always, the gpu extra
# (vLLM's CUDA build, about 8 GB) on a host that serves with it. Prints the uv arguments.
sync_args() {
  printf '%s\n' sync --frozen --extra clients
  if serves_gpu; then printf '%s\n' --extra gpu; fi
  printf '%s\n' --quiet
}

# Syncs the locked project environment (.venv) by that rule; prints nothing on success. Every
# target that syncs (env, test, lint, up, warmup, bench...) comes here. SYNC_DRY_RUN=1 prints the
# uv command instead of running it.
sync_env() {
  local uv args
  uv="$(ensure_uv)"
  mapfile -t args < <(sync_args)
  if [ "${SYNC_DRY_RUN:-0}" = 1 ]; then
    printf '%s\n' "$uv ${args[*]}"
    return
  fi
  "$uv" "${args[@]}" >&2 || die "uv ${args[*]} failed"
}

# cached_env LOCK ENV_DIR WHAT BUILD CHECK: prints ENV_DIR (and nothing else) once it is
# complete, building it first when it is not. An env is complete only once its marker file
# exists, so an interrupted build is never reused. The build runs under a lock (two concurrent
# runs, say two test sessions, never build twice into the same place): BUILD fills a temporary
# sibling directory (its one argument), which is renamed into place once every step has worked;
# then CHECK (given ENV_DIR) verifies the env and prints what the marker records.
cached_env() {
  local lock="$1" env_dir="$2" what="$3" build="$4" check="$5"
  local marker="$env_dir/.yap-complete" stem tmp contents
  if [ -f "$marker" ]; then
    printf '%s\n' "$env_dir"
    return 0
  fi
  mkdir -p "$YAP_CACHE_DIR"
  exec 9>"$YAP_CACHE_DIR/.$lock.lock"
  flock 9
  if [ -f "$marker" ]; then
    printf '%s\n' "$env_dir"
    return 0
  fi
  stem="$YAP_CACHE_DIR/.$(basename "$env_dir").tmp"
  # Under the lock nothing else is building, so leftovers are from interrupted runs.
  rm -rf "$stem."*
  if [ -e "$env_dir" ]; then
    log "removing incomplete $what $env_dir"
    rm -rf "$env_dir"
  fi
  tmp="$stem.$$"
  # shellcheck disable=SC2064 # expanded now: tmp is local, the trap may run after this returns
  trap "rm -rf '$tmp'" EXIT
  SECONDS=0
  "$build" "$tmp"
  # The venv's scripts and activate files name the temporary path; point them at the final one.
  local f
  while IFS= read -r -d '' f; do
    if grep -Iq "$tmp" "$f"; then
      sed -i "s#$tmp#$env_dir#g" "$f"
    fi
  done < <(find "$tmp/bin" -maxdepth 1 -type f -print0)
  mv "$tmp" "$env_dir"
  trap - EXIT
  contents="$("$check" "$env_dir")" || exit 1
  printf '%s\n' "$contents" >"$marker"
  log "$what ready in ${SECONDS}s: $env_dir ($(du -sh "$env_dir" | cut -f1))"
  printf '%s\n' "$env_dir"
}
