#!/usr/bin/env bash
# What `make down` runs: SIGTERM to the launcher started by `make up` (it drains the open
# connections, then stops vLLM), a wait of up to WS_DRAIN_TIMEOUT_S plus a margin, SIGKILL to every
# process it left as a last resort, and the pid file removed.
#
#   scripts/stop.sh                  stop the service
#   NUKE=1 scripts/stop.sh --nuke    stop it, then delete .venv, models/, logs/, run/ and the
#                                    project's cache ($YAP_CACHE_DIR: uv, the CPU vLLM env)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck source=scripts/ops.sh
. scripts/ops.sh

nuke=0
case "${1:-}" in
  '') ;;
  --nuke) nuke=1 ;;
  *) die "usage: scripts/stop.sh [--nuke]" ;;
esac
if [ "$nuke" = 1 ] && [ "${NUKE:-}" != 1 ]; then
  die "--nuke deletes .venv, models/, logs/, run/ and $YAP_CACHE_DIR: confirm with NUKE=1 scripts/stop.sh --nuke"
fi

load_env_file "$ENV_FILE"

# Kills every process left from the launcher's tree, by process group and by pid.
kill_all() {
  local sig="$1" pid group
  shift
  for pid in "$@"; do
    group="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" || continue
    # Never our own group (a launcher started without setsid would share it).
    if [ -n "$group" ] && [ "$group" != "$(ps -o pgid= -p $$ | tr -d ' ')" ]; then
      kill "-$sig" -- "-$group" 2>/dev/null || true
    fi
    kill "-$sig" "$pid" 2>/dev/null || true
  done
}

stop_service() {
  local pid drain limit survivors=() p tree=()
  if ! pid="$(running_pid)"; then
    log "the service is not running"
    return 0
  fi
  drain="$(state_value WS_DRAIN_TIMEOUT_S)"
  drain="${drain:-${WS_DRAIN_TIMEOUT_S:-30}}"
  limit="${STOP_TIMEOUT_S:-$((${drain%.*} + STOP_MARGIN_S))}"
  # The tree as it is now: vLLM runs in a process group of its own under the launcher.
  mapfile -t tree < <(descendants "$pid")
  log "stopping the launcher (pid $pid): draining connections for up to ${drain}s, then vLLM"
  kill -TERM "$pid" 2>/dev/null || true
  SECONDS=0
  while alive "$pid" && [ "$SECONDS" -lt "$limit" ]; do
    if [ -t 2 ]; then printf '\r[%s] stopping: %ss / %ss ' "$(date +%H:%M:%S)" "$SECONDS" "$limit" >&2; fi
    sleep 1
  done
  if [ -t 2 ]; then printf '\n' >&2; fi
  if alive "$pid"; then
    log "the launcher did not stop within ${limit}s; killing it and its processes"
    mapfile -t -O "${#tree[@]}" tree < <(descendants "$pid")
    kill_all KILL "$pid" "${tree[@]}"
  fi
  # Anything of the tree that outlived the launcher (it normally stops vLLM itself).
  for p in "${tree[@]}"; do
    if alive "$p"; then survivors+=("$p"); fi
  done
  if [ "${#survivors[@]}" -gt 0 ]; then
    log "killing leftover processes: ${survivors[*]}"
    kill_all KILL "${survivors[@]}"
  fi
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    survivors=()
    for p in "$pid" "${tree[@]}"; do
      if alive "$p"; then survivors+=("$p"); fi
    done
    [ "${#survivors[@]}" -eq 0 ] && break
    sleep 0.5
  done
  rm -f "$PID_FILE" "$STATE_FILE"
  [ "${#survivors[@]}" -eq 0 ] || die "processes still alive after SIGKILL: ${survivors[*]}"
  log "stopped after ${SECONDS}s"
}

stop_service

if [ "$nuke" = 1 ]; then
  case "$YAP_CACHE_DIR" in
    '' | / | "$HOME" | "$HOME/") die "refusing to delete YAP_CACHE_DIR=$YAP_CACHE_DIR" ;;
  esac
  for target in .venv models "$LOG_DIR" "$RUN_DIR" "$YAP_CACHE_DIR"; do
    if [ -e "$target" ]; then
      log "deleting $target"
      rm -rf -- "$target"
    fi
  done
  log "nuked: \`make up\` or \`make test\` rebuilds everything"
fi
