"""Streams that fit in vLLM's KV cache, from its /metrics (the label line below is what the CPU
build of vLLM 0.32.0 publishes for the tiny model with a 256 MiB cache)."""

from __future__ import annotations

import httpx
import pytest

from launcher.capacity import CapacityError, KvCapacity, cache_info, derive, read_capacity

CPU_BUILD_METRICS = (
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    "# TYPE vllm:cache_config_info gauge\n"
    'vllm:cache_config_info{block_size="128",cache_dtype="auto",engine="0",'
    'gpu_memory_utilization="0.92",kv_cache_max_concurrency="17.066666666666666",'
    'kv_cache_memory_bytes="268435456",kv_cache_size_tokens="2236962",num_cpu_blocks="None",'
    'num_gpu_blocks="512",sliding_window="8192"} 1.0\n'
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0",model_name="m"} 0.0\n'
)
MODELS = {"object": "list", "data": [{"id": "m", "max_model_len": 131072}]}


def test_vllms_own_concurrency_counts_whole_streams() -> None:
    capacity = derive(cache_info(CPU_BUILD_METRICS), 131072)
    assert capacity == KvCapacity(kv_cache_tokens=2236962, max_model_len=131072, streams=17)


def test_blocks_alone_are_counted_as_full_attention() -> None:
    labels = {"num_gpu_blocks": "512", "block_size": "16"}
    assert derive(labels, 2048) == KvCapacity(8192, 2048, 4)


def test_no_cache_info_is_an_error() -> None:
    with pytest.raises(CapacityError, match="no vllm:cache_config_info"):
        cache_info("# nothing\nvllm:num_requests_running 0.0\n")
    with pytest.raises(CapacityError, match="neither"):
        derive({"block_size": "16"}, 2048)


def serve(metrics: str, models: object, status: int = 200) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(status, text=metrics)
        return httpx.Response(status, json=models)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_read_capacity_asks_metrics_and_models() -> None:
    async with serve(CPU_BUILD_METRICS, MODELS) as client:
        capacity = await read_capacity(client, "http://127.0.0.1:8001")
    assert capacity.streams == 17
    assert capacity.max_model_len == 131072


@pytest.mark.parametrize(
    ("metrics", "models", "status"),
    [(CPU_BUILD_METRICS, {"data": []}, 200), (CPU_BUILD_METRICS, MODELS, 503)],
)
async def test_unreadable_answers_are_a_capacity_error(
    metrics: str, models: object, status: int
) -> None:
    async with serve(metrics, models, status) as client:
        with pytest.raises(CapacityError):
            await read_capacity(client, "http://127.0.0.1:8001")
