"""How many streams vLLM's KV cache holds, read from the running engine.

vLLM sizes its KV cache at start-up (from free GPU memory, or the CPU build's byte budget) and
publishes the result on ``/metrics`` as the labels of ``vllm:cache_config_info``:
``kv_cache_size_tokens`` and ``kv_cache_max_concurrency``, its own count of how many requests of
``max_model_len`` tokens fit at once (aware of sliding-window layers, which need less). Each open
stream is one such request, so more streams than that can be preempted. Older engines that publish
only ``num_gpu_blocks`` and ``block_size`` are counted as full-attention blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

CACHE_INFO_METRIC = "vllm:cache_config_info"


class CapacityError(RuntimeError):
    """vLLM's answers do not say how large its KV cache is."""


@dataclass(frozen=True, slots=True)
class KvCapacity:
    kv_cache_tokens: int
    max_model_len: int
    streams: int


def cache_info(metrics_text: str) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` in a Prometheus text page."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == CACHE_INFO_METRIC:
                return dict(sample.labels)
    raise CapacityError(f"vLLM's /metrics has no {CACHE_INFO_METRIC}")


def _int_label(labels: dict[str, str], name: str) -> int | None:
    try:
        return int(labels[name])
    except (KeyError, ValueError):
        return None


def derive(labels: dict[str, str], max_model_len: int) -> KvCapacity:
    """Streams of ``max_model_len`` tokens that fit in the KV cache the labels describe."""
    if max_model_len < 1:
        raise CapacityError(f"vLLM reports max_model_len={max_model_len}")
    tokens = _int_label(labels, "kv_cache_size_tokens")
    try:
        concurrency = float(labels["kv_cache_max_concurrency"])
    except (KeyError, ValueError):
        concurrency = math.nan
    if tokens is not None and math.isfinite(concurrency):
        return KvCapacity(tokens, max_model_len, math.floor(concurrency))
    blocks = _int_label(labels, "num_gpu_blocks")
    block_size = _int_label(labels, "block_size")
    if blocks is None or block_size is None:
        raise CapacityError(f"{CACHE_INFO_METRIC} names neither the KV cache tokens nor its blocks")
    tokens = blocks * block_size
    return KvCapacity(tokens, max_model_len, tokens // max_model_len)


async def read_capacity(client: httpx.AsyncClient, base_url: str) -> KvCapacity:
    """Ask a ready vLLM at ``base_url`` (http://host:port) for its KV cache and model length."""
    try:
        metrics = await client.get(f"{base_url}/metrics")
        models = await client.get(f"{base_url}/v1/models")
        metrics.raise_for_status()
        models.raise_for_status()
        max_model_len = int(models.json()["data"][0]["max_model_len"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise CapacityError(f"could not read vLLM's KV cache size: {exc!r}") from None
    return derive(cache_info(metrics.text), max_model_len)
