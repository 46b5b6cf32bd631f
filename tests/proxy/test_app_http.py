"""/healthz, /readyz and /metrics of the real proxy, with the fake vLLM behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.fake_vllm import FakeVllm
from tests.harness import (
    TEST_KEY,
    RunningProxy,
    connected,
    fake_and_proxy,
    load_pcm,
    serve_proxy,
    upstream_commits,
    wait_for,
)

# The health monitor polls vLLM about once a second; this only guards against a hang.
MONITOR_GUARD_S = 10.0


@pytest.fixture
async def http_for() -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(proxy: RunningProxy) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=proxy.http_url, timeout=5.0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def wait_for_status(http: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    async with asyncio.timeout(MONITOR_GUARD_S):
        while True:
            response = await http.get(path)
            if response.status_code == status:
                return response
            await asyncio.sleep(0.05)


async def test_healthz_body_counts_connections(http_for: Any) -> None:
    async with fake_and_proxy(max_connections=7) as (_, proxy):
        http = http_for(proxy)
        response = await http.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "upstream": "ready",
            "connections": 0,
            "capacity": 7,
        }
        async with connected(proxy), connected(proxy):
            assert (await http.get("/healthz")).json()["connections"] == 2


async def test_readyz_follows_vllm_health(http_for: Any) -> None:
    async with fake_and_proxy() as (fake, proxy):
        http = http_for(proxy)
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "upstream": "ready",
            "draining": False,
            "connections": 0,
            "capacity": 100,
        }
        fake.healthy = False
        down = await wait_for_status(http, "/readyz", 503)
        assert down.json()["ready"] is False
        assert down.json()["upstream"] == "down"
        health = await http.get("/healthz")  # the process itself still serves
        assert health.status_code == 200
        assert health.json()["upstream"] == "down"
        fake.healthy = True
        back = await wait_for_status(http, "/readyz", 200)
        assert back.json()["upstream"] == "ready"


async def test_readyz_before_vllm_ever_answered(http_for: Any) -> None:
    fake = FakeVllm()
    await fake.start()
    await fake.stop()
    try:
        async with serve_proxy(fake.url) as proxy:
            http = http_for(proxy)
            response = await http.get("/readyz")
            assert response.status_code == 503
            assert response.json()["upstream"] == "starting"
            health = await http.get("/healthz")
            assert (health.status_code, health.json()["upstream"]) == (200, "starting")
            await fake.start()
            ready = await wait_for_status(http, "/readyz", 200)
            assert ready.json()["upstream"] == "ready"
    finally:
        await fake.stop()


async def test_readyz_at_capacity(http_for: Any) -> None:
    async with fake_and_proxy(max_connections=1) as (_, proxy):
        http = http_for(proxy)
        assert (await http.get("/readyz")).status_code == 200
        async with connected(proxy):
            full = await http.get("/readyz")
            assert full.status_code == 503
            assert full.json()["connections"] == 1
            assert full.json()["upstream"] == "ready"
        await wait_for_status(http, "/readyz", 200)


async def test_readyz_while_draining(http_for: Any) -> None:
    async with (
        fake_and_proxy(drain_timeout_s=10.0) as (fake, proxy),
        connected(proxy) as client,
    ):
        http = http_for(proxy)
        fake.hang()  # an utterance in flight keeps the drain (and the server) going
        await client.utterance("r1", load_pcm()[:32000])
        await wait_for(lambda: upstream_commits(fake, final=True) == 1)
        proxy.server.begin_shutdown()
        response = await http.get("/readyz")
        assert response.status_code == 503
        assert response.json()["draining"] is True
        assert (await http.get("/healthz")).status_code == 200
        fake.resume()
        await client.recv_all_until_closed(timeout=10)


async def test_endpoints_need_no_key(http_for: Any) -> None:
    async with fake_and_proxy() as (_, proxy):
        http = http_for(proxy)
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(path)).status_code == 200


async def test_metrics_is_prometheus_text_without_secrets(http_for: Any) -> None:
    secrets = {
        "key": TEST_KEY,
        "wrong key": "wrong-key-5d1e0b",
        "session id": "session-secret-81f2",
        "request id": "request-secret-44ac",
    }
    async with fake_and_proxy() as (_, proxy):
        http = http_for(proxy)
        async with connected(
            proxy, query=f"api_key={TEST_KEY}&session_id={secrets['session id']}"
        ) as client:
            client.session_id = secrets["session id"]
            await client.utterance(secrets["request id"], load_pcm()[:32000])
            await client.recv_until("transcription.done", secrets["request id"])
            await client.send("cancel", secrets["request id"])
            await client.recv()
        async with connected(proxy, key=secrets["wrong key"], expect_created=False) as client:
            await client.recv_all_until_closed()
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert any(name.startswith("voxtral_proxy_") for name in families)
    for what, secret in secrets.items():
        assert secret not in text, what
    # The traffic above shows up: one utterance done, one refusal.
    samples = [s for family in families.values() for s in family.samples]
    assert any(s.labels.get("outcome") == "done" and s.value >= 1 for s in samples)
    assert any(s.labels.get("reason") == "unauthorized" and s.value >= 1 for s in samples)
