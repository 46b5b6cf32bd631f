"""The stream capacity the launcher derives from the real vLLM's KV cache (CPU build): logged,
the same as vLLM's own start-up count, and the proxy's cap under MAX_CONCURRENT_CONNECTIONS=auto
(the shared stack runs with it)."""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.vllm

# vLLM's own start-up line, forwarded into the launcher's log.
VLLM_CONCURRENCY = re.compile(
    r"KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: "
    r"([\d.]+)x"
)


# The launcher reads vLLM's capacity once the service is ready, so its line may land a moment
# after the stack counts as up: wait for it, within this bound.
LOG_WAIT_S = 60.0


def logged(stack: Stack, event: str) -> dict[str, object]:
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        for line in stack.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == event:
                return dict(json.loads(line))
        if time.monotonic() > deadline:
            pytest.fail(f"no {event!r} line in the launcher's log:\n{stack.log_tail()}")
        time.sleep(0.2)


def test_capacity_matches_vllms_own_count_and_caps_the_proxy(stack: Stack) -> None:
    capacity = logged(stack, "stream capacity")
    match = VLLM_CONCURRENCY.search(stack.log_path.read_text(errors="replace"))
    assert match, stack.log_tail()
    tokens, model_len, concurrency = match.groups()
    assert capacity["kv_cache_tokens"] == int(tokens.replace(",", ""))
    assert capacity["max_model_len"] == int(model_len.replace(",", "")) == 2048
    streams = capacity["streams"]
    assert streams == math.floor(float(concurrency))
    assert isinstance(streams, int)
    assert streams >= 1

    assert logged(stack, "MAX_CONCURRENT_CONNECTIONS=auto")["max_connections"] == streams
    health = httpx.get(f"{stack.http_url}/healthz", timeout=5).json()
    assert health["capacity"] == streams


def test_vllms_health_polls_leave_no_access_line_in_the_log(stack: Stack) -> None:
    """The supervisor and the proxy poll vLLM's /health every second; the launcher turns those
    access lines off (and only those: the capacity reads stay)."""
    text = stack.log_path.read_text(errors="replace")
    assert "GET /metrics HTTP" in text, stack.log_tail()
    assert "GET /health HTTP" not in text
