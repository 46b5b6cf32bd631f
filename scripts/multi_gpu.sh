#!/usr/bin/env bash
# One launcher per GPU behind a balancer: the settings of each instance.
#
# Instance N sees only GPU N (CUDA_VISIBLE_DEVICES=N), serves its proxy on loopback at
# MULTI_GPU_PROXY_BASE_PORT+N (8010+N) and its vLLM at MULTI_GPU_VLLM_BASE_PORT+N (8100+N); the
# balancer (deploy/haproxy/voxtral-stt.cfg) listens on 8000 and spreads connections over them.
# VLLM_PORT is the launcher's setting only: it never reaches vLLM's environment, where vLLM would
# take it as the first of its internal ports and could collide with the next instance's API port.
#
#   scripts/multi_gpu.sh env N             print instance N's variables (KEY=VALUE lines)
#   scripts/multi_gpu.sh render DIR [K]    write DIR/gpu0.env .. DIR/gpu{K-1}.env (K: every GPU)
#   scripts/multi_gpu.sh upstream [K]      print the balancer's `server` lines for K instances
#
# The systemd template deploy/systemd/voxtral-stt@.service reads /etc/voxtral-stt/gpuN.env for
# instance N, on top of the shared /etc/voxtral-stt/voxtral-stt.env.
set -euo pipefail

PROXY_BASE="${MULTI_GPU_PROXY_BASE_PORT:-8010}"
VLLM_BASE="${MULTI_GPU_VLLM_BASE_PORT:-8100}"
# Far more GPUs than one host holds; it also keeps the two port ranges apart.
MAX_GPUS=64

die() { printf 'error: %s\n' "$*" >&2; exit 2; }

is_count() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$MAX_GPUS" ]; }

check_ports() {
  local count="$1" base
  for base in "$PROXY_BASE" "$VLLM_BASE"; do
    [[ "$base" =~ ^[0-9]+$ ]] && [ "$base" -ge 1 ] && [ $((base + count - 1)) -le 65535 ] \
      || die "base port $base cannot hold $count instances"
  done
  if [ "$PROXY_BASE" -lt $((VLLM_BASE + count)) ] && [ "$VLLM_BASE" -lt $((PROXY_BASE + count)) ]; then
    die "proxy ports $PROXY_BASE+ and vLLM ports $VLLM_BASE+ overlap for $count instances"
  fi
}

gpu_count() {
  local count
  count="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
  is_count "$count" || die "no NVIDIA GPU found: give the number of instances"
  printf '%s\n' "$count"
}

instance_env() {
  local index="$1"
  printf '# Instance %s of voxtral-stt@.service (scripts/multi_gpu.sh): GPU %s only.\n' "$index" "$index"
  printf 'CUDA_VISIBLE_DEVICES=%s\n' "$index"
  printf 'VLLM_DEVICE=cuda\n'
  printf 'SERVER_BIND_HOST=127.0.0.1\n'
  # HAProxy on this host sets X-Forwarded-For (after deleting the client's): trust it to say
  # who the client is, so auth failures are counted per real client.
  printf 'TRUSTED_PROXIES=127.0.0.1\n'
  printf 'SERVER_PORT=%s\n' $((PROXY_BASE + index))
  printf 'VLLM_PORT=%s\n' $((VLLM_BASE + index))
}

command="${1:-}"
case "$command" in
  env)
    [[ "${2:-}" =~ ^[0-9]+$ ]] && [ "$2" -lt "$MAX_GPUS" ] || die "usage: $0 env N (0 <= N < $MAX_GPUS)"
    check_ports $(($2 + 1))
    instance_env "$2"
    ;;
  render)
    dir="${2:-}"
    [ -n "$dir" ] || die "usage: $0 render DIR [COUNT]"
    count="${3:-$(gpu_count)}"
    is_count "$count" || die "COUNT must be 1..$MAX_GPUS"
    check_ports "$count"
    mkdir -p "$dir"
    for ((i = 0; i < count; i++)); do
      instance_env "$i" >"$dir/gpu$i.env"
      printf '%s\n' "$dir/gpu$i.env"
    done
    ;;
  upstream)
    count="${2:-$(gpu_count)}"
    is_count "$count" || die "COUNT must be 1..$MAX_GPUS"
    check_ports "$count"
    for ((i = 0; i < count; i++)); do
      printf '    server gpu%s 127.0.0.1:%s check\n' "$i" $((PROXY_BASE + i))
    done
    ;;
  *)
    die "usage: $0 env N | render DIR [COUNT] | upstream [COUNT]"
    ;;
esac
