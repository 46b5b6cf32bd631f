"""The environment ``vllm serve`` runs with: what vLLM reads and what its process needs, nothing
of the launcher's or the proxy's settings.

vLLM warns about every ``VLLM_*`` name it does not know, and some launcher names are vLLM's too:
``VLLM_PORT`` is where vLLM starts its internal ports, so with several instances on one host
(scripts/multi_gpu.sh) one instance could take the next one's API port. So ``VLLM_*`` names pass
only when vLLM reads them and the launcher does not own them; other names pass when vLLM reads them
or they belong to the system, Python, CUDA, torch, Triton or the model hub.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

from launcher.config import LAUNCHER_VARIABLES

# vLLM needs none of these; keeping them out of its environment keeps them out of its logs, and
# VLLM_API_KEY would make vLLM demand a key the proxy does not send.
SECRET_VARIABLES = frozenset(
    {"VOXTRAL_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY"}
)
# What the process needs besides vLLM's own names: the system, the C and Python runtimes, the GPU
# stack (driver, CUDA, NCCL, torch, Triton), thread pools and the model hub's caches.
SYSTEM_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "PWD",
        "CC",
        "CXX",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)
SYSTEM_PREFIXES = (
    "LC_",
    "XDG_",
    "LD_",
    "SSL_",
    "PYTHON",
    "CUDA_",
    "CUDNN_",
    "CUBLAS_",
    "NVIDIA_",
    "NCCL_",
    "TORCH",
    "PYTORCH_",
    "TRITON_",
    "OMP_",
    "MKL_",
    "KMP_",
    "OPENBLAS_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
)


def vllm_variables() -> frozenset[str]:
    """The names vLLM 0.32.0 reads (launcher/vllm_variables.txt)."""
    text = resources.files("launcher").joinpath("vllm_variables.txt").read_text()
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


VLLM_VARIABLES = vllm_variables()


def passes(name: str) -> bool:
    """Whether the launcher's variable ``name`` reaches vLLM's environment."""
    if name in SECRET_VARIABLES or name in LAUNCHER_VARIABLES:
        return False
    if name in VLLM_VARIABLES:
        return True
    if name.startswith("VLLM_"):
        return False
    return name in SYSTEM_VARIABLES or name.startswith(SYSTEM_PREFIXES)


def vllm_environ(environ: Mapping[str, str], command_env: Mapping[str, str]) -> dict[str, str]:
    """vLLM's environment: the passing part of the launcher's, then the command's own settings."""
    env = {name: value for name, value in environ.items() if passes(name)}
    env.update(command_env)
    return env
