# Helpers shared by the lifecycle scripts: main.sh (make up), stop.sh (make down) and status.sh
# (make status). Source it after lib.sh, from the project root; do not run it.
# shellcheck shell=bash
# The variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034

# Overridable so that tests (or a second copy on another port) never touch the default ones.
ENV_FILE="${VOXTRAL_ENV_FILE:-.env}"
RUN_DIR="${VOXTRAL_RUN_DIR:-run}"
LOG_DIR="${VOXTRAL_LOG_DIR:-logs}"
PID_FILE="$RUN_DIR/launcher.pid"
# What the running launcher was started with (port, drain timeout...), so that status and stop
# talk to it even when the shell that runs them has other values.
STATE_FILE="$RUN_DIR/launcher.state"
LOG_FILE="$LOG_DIR/server.log"
# vLLM's own stop grace (launcher/supervisor.py) plus its log flush and a margin.
STOP_MARGIN_S=30

# Exports the KEY=VALUE lines of a dotenv file (comments, blank lines, `export ` and one level of
# quotes allowed); a variable already set in the environment wins over the file.
load_env_file() {
  local file="$1" line key value
  [ -f "$file" ] || return 0
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
  done <"$file"
}

# Reads one KEY from the state file of the running launcher (empty when absent).
state_value() {
  [ -f "$STATE_FILE" ] || return 0
  sed -n "s/^$1=//p" "$STATE_FILE" | tail -n 1
}

# True while the pid names a live process (a zombie waiting for its reaper counts as gone).
alive() {
  local stat
  stat="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [ -n "$stat" ] && [ "${stat:0:1}" != Z ]
}

# Prints the pid of the running launcher; fails when there is none. A stale pid file (dead process,
# or a recycled pid that is not a launcher) is removed.
running_pid() {
  local pid
  [ -f "$PID_FILE" ] || return 1
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  if [ -n "$pid" ] && alive "$pid" && ps -o args= -p "$pid" | grep -q -- '-m launcher'; then
    printf '%s\n' "$pid"
    return 0
  fi
  rm -f "$PID_FILE" "$STATE_FILE"
  return 1
}

# Prints every descendant pid of $1 (children first), from one snapshot of the process table.
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      for (pid in parent) {
        p = parent[pid]
        while (p != "" && p != 0 && p != 1) {
          if (p == root) { print pid; break }
          p = parent[p]
        }
      }
    }'
}

# The address to probe the proxy on: its bind host, or loopback when it binds every address.
probe_host() {
  case "${1:-0.0.0.0}" in
    '' | 0.0.0.0) printf '127.0.0.1\n' ;;
    '::' | '[::]') printf '::1\n' ;;
    *) printf '%s\n' "$1" ;;
  esac
}

# GET http://HOST:PORT/PATH with bash's /dev/tcp (no curl needed); sets HTTP_CODE (000 when
# nothing answered) and HTTP_BODY.
http_get() {
  local host="$1" port="$2" path="$3" response
  HTTP_CODE=000
  HTTP_BODY=""
  # shellcheck disable=SC2016  # the inner script expands its own arguments
  response="$(timeout 5 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$3" "$1" >&3
    cat <&3' _ "$host" "$port" "$path" 2>/dev/null)" || return 1
  [[ "$response" =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]] || return 1
  HTTP_CODE="${BASH_REMATCH[1]}"
  HTTP_BODY="${response#*$'\r\n\r\n'}"
}

# One field of a flat JSON object: json_field BODY NAME prints the raw value (strings unquoted).
json_field() {
  local pattern="\"$2\":[[:space:]]*(\"[^\"]*\"|[^,}]*)"
  [[ "$1" =~ $pattern ]] || return 1
  local value="${BASH_REMATCH[1]}"
  value="${value#\"}"
  printf '%s\n' "${value%\"}"
}

# The launcher's latest phase (downloading, patching, loading, ready) from its log.
last_phase() {
  [ -f "$LOG_FILE" ] || return 0
  { grep -o '"phase": *"[a-z]*"' "$LOG_FILE" 2>/dev/null || true; } | tail -n 1 \
    | sed 's/.*"\([a-z]*\)"$/\1/'
}

# The stream capacity the launcher derived from vLLM's KV cache ("N streams of L tokens, KV cache
# T tokens"), from its latest log line about it; empty until vLLM has been ready once.
last_capacity() {
  [ -f "$LOG_FILE" ] || return 0
  local line
  line="$({ grep '"event": *"stream capacity"' "$LOG_FILE" 2>/dev/null || true; } | tail -n 1)"
  [ -n "$line" ] || return 0
  printf '%s streams of %s tokens fit (KV cache %s tokens)\n' "$(json_field "$line" streams)" \
    "$(json_field "$line" max_model_len)" "$(json_field "$line" kv_cache_tokens)"
}

# The warnings the launcher and the proxy logged while starting (a setting that does not fit, a
# capacity that could not be read...), one per line: the event, then its advice when it has one.
startup_warnings() {
  [ -f "$LOG_FILE" ] || return 0
  local line event advice
  { grep '"startup": *true' "$LOG_FILE" 2>/dev/null || true; } | while IFS= read -r line; do
    event="$(json_field "$line" event || true)"
    advice="$(json_field "$line" advice || json_field "$line" error || true)"
    printf '%s%s\n' "$event" "${advice:+: $advice}"
  done
}
