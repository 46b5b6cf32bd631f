"""API keys never reach the logs: the real `python -m proxy` process, its stderr captured."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from devtools.fake_vllm import FakeVllm
from tests.harness import RunningProxy, connected, load_pcm, proxy_subprocess

KEYS = ("logkey-first-9b1f4e", "logkey-second-27c0d3")
WRONG = {
    "query": "wrongkey-query-5a5a",
    "header": "wrongkey-header-6b6b",
    "bearer": "wrongkey-bearer-7c7c",
}


@contextlib.asynccontextmanager
async def proxy_process(
    upstream_url: str, log_level: str, lines: list[str], **env: str
) -> AsyncIterator[RunningProxy]:
    async with proxy_subprocess(upstream_url, KEYS, lines, LOG_LEVEL=log_level, **env) as proxy:
        yield proxy


async def exercise(proxy: RunningProxy) -> None:
    """Sessions that present keys every way, and failed attempts every way."""
    pcm = load_pcm()[:32000]
    ways: list[dict[str, Any]] = [
        {"query": f"api_key={KEYS[0]}&session_id=log-s1"},
        {"headers": {"X-API-Key": KEYS[1]}},
        {"headers": {"Authorization": f"Bearer {KEYS[0]}"}},
    ]
    for number, how in enumerate(ways):
        async with connected(proxy, **how) as client:
            await client.utterance(f"r{number}", pcm)
            await client.recv_until("transcription.done", f"r{number}")
    failures: list[dict[str, Any]] = [
        {"query": f"api_key={WRONG['query']}"},
        {"headers": {"X-API-Key": WRONG["header"]}},
        {"headers": {"Authorization": f"Bearer {WRONG['bearer']}"}},
        {"query": f"api_key={KEYS[0][:-3]}"},  # most of a real key
    ]
    for how in failures:
        async with connected(proxy, expect_created=False, **how) as client:
            events, code = await client.recv_all_until_closed()
        assert (events[0]["payload"]["code"], code) == ("unauthorized", 4001)


@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
async def test_no_key_in_any_log_line(log_level: str) -> None:
    lines: list[str] = []
    async with FakeVllm() as fake, proxy_process(fake.url, log_level, lines) as proxy:
        await exercise(proxy)
    assert lines, "the process logged nothing"
    secrets = [*KEYS, KEYS[0][:-3], *WRONG.values()]
    for line in lines:
        for secret in secrets:
            assert secret not in line, line
    # uvicorn's line for each WebSocket handshake shows the query string, key redacted.
    handshakes = [line for line in lines if "WebSocket /api/asr-streaming" in line]
    assert handshakes
    redacted = [line for line in handshakes if "api_key=[redacted]" in line]
    assert len(redacted) == 3  # one accepted and two refused connections had a query key
    assert any("session_id=log-s1" in line for line in redacted)


async def test_a_key_as_session_or_request_id_never_reaches_the_logs() -> None:
    """Finding 6 of issue 16: our own structured lines scrub every field, not only the text."""
    lines: list[str] = []
    async with (
        FakeVllm() as fake,
        proxy_process(fake.url, "INFO", lines) as proxy,
        connected(proxy, query=f"session_id={KEYS[0]}") as client,
    ):
        await client.utterance(KEYS[1], load_pcm()[:16000])
        await client.recv_until("transcription.done", KEYS[1])
    assert any("session_closed" in line for line in lines)
    for line in lines:
        for key in KEYS:
            assert key not in line, line


async def test_no_token_or_token_secret_in_any_line() -> None:
    secret = "token-secret-c0ffee-31337-0123456789abcdef"
    lines: list[str] = []
    async with (
        FakeVllm() as fake,
        proxy_process(fake.url, "DEBUG", lines, VOXTRAL_TOKEN_SECRET=secret) as proxy,
    ):
        async with httpx.AsyncClient(base_url=proxy.http_url) as http:
            minted = [
                (await http.post("/api/tokens", headers={"X-API-Key": KEYS[1]})).json()["token"]
                for _ in range(2)
            ]
        async with connected(proxy, query=f"api_key={minted[0]}&session_id={minted[1]}") as client:
            await client.utterance(minted[1], load_pcm()[:16000])
            await client.recv_until("transcription.done", minted[1])
    assert any("session_opened" in line for line in lines)
    for line in lines:
        for leaked in (*minted, secret):
            assert leaked not in line, line


async def test_no_openai_credential_or_client_secret_in_any_line() -> None:
    """The OpenAI route's credentials (Bearer, the openai-insecure-api-key subprotocol, an ek_
    client secret), accepted and refused, at DEBUG."""
    lines: list[str] = []
    wrong = "wrongkey-subprotocol-8d8d"
    async with (
        FakeVllm() as fake,
        proxy_process(fake.url, "DEBUG", lines) as proxy,
        httpx.AsyncClient(base_url=proxy.http_url) as http,
    ):
        minted = await http.post(
            "/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {KEYS[0]}"}
        )
        secret = minted.json()["value"]
        base = proxy.http_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
        offers = [
            (["realtime", f"openai-insecure-api-key.{secret}"], {}, "session.created"),
            (["realtime"], {"Authorization": f"Bearer {KEYS[1]}"}, "session.created"),
            (["realtime", f"openai-insecure-api-key.{wrong}"], {}, "error"),
        ]
        for offered, headers, first in offers:
            async with connect(
                base,
                subprotocols=offered,  # type: ignore[arg-type]
                additional_headers=headers,
            ) as ws:
                assert json.loads(await ws.recv())["type"] == first
    assert any("protocol" in line and "openai" in line for line in lines)
    for line in lines:
        for leaked in (*KEYS, secret, secret.removeprefix("ek_"), wrong):
            assert leaked not in line, line


async def test_no_mistral_credential_or_session_token_in_any_line() -> None:
    """The Mistral route's credentials (Bearer, the credential offered beside the realtime
    subprotocol, an rt_ client session token), accepted and refused, at DEBUG."""
    lines: list[str] = []
    wrong = "wrongkey-mistral-9e9e"
    model = "voxtral-mini-transcribe-realtime-2602"
    async with (
        FakeVllm() as fake,
        proxy_process(fake.url, "DEBUG", lines) as proxy,
        httpx.AsyncClient(base_url=proxy.http_url) as http,
    ):
        minted = await http.post(
            "/v1/client/sessions",
            json={"model": model, "purpose": "realtime"},
            headers={"Authorization": f"Bearer {KEYS[0]}"},
        )
        token = minted.json()["client_secret"]["value"]
        base = proxy.http_url.replace("http://", "ws://")
        url = f"{base}/v1/audio/transcriptions/realtime?model={model}"
        offers = [
            (["realtime", token], {}, "session.created"),
            (["realtime", KEYS[1]], {}, "session.created"),
            ([], {"Authorization": f"Bearer {KEYS[0]}"}, "session.created"),
            (["realtime", wrong], {}, "error"),
            ([], {"Authorization": f"Bearer {wrong}"}, "error"),
        ]
        for offered, headers, first in offers:
            async with connect(
                url,
                subprotocols=offered or None,  # type: ignore[arg-type]
                additional_headers=headers,
            ) as ws:
                assert json.loads(await ws.recv())["type"] == first
    assert any("protocol" in line and "mistral" in line for line in lines)
    for line in lines:
        for leaked in (*KEYS, token, token.removeprefix("rt_"), wrong):
            assert leaked not in line, line


async def test_the_apps_session_id_and_the_connection_id_reach_the_log_lines() -> None:
    """The connect-time id (the query's, or a generated one) is on every line of the connection;
    the app's own id from its messages on each utterance's line and the closing one; the
    connection_id on every line is session.created's payload.id."""
    lines: list[str] = []
    async with (
        FakeVllm() as fake,
        proxy_process(fake.url, "INFO", lines) as proxy,
        connected(
            proxy, headers={"X-API-Key": KEYS[0]}, expect_created=False, session_id="app-7"
        ) as client,
    ):
        created = await client.recv()
        await client.utterance("r1", load_pcm()[:32000])
        await client.recv_until("transcription.done", "r1")
    records = [json.loads(line) for line in lines if line.startswith("{")]
    [utterance] = [r for r in records if r.get("event") == "utterance"]
    [closed] = [r for r in records if r.get("event") == "session_closed"]
    [opened] = [r for r in records if r.get("event") == "session_opened"]
    assert utterance["session_id"] == closed["session_id"] == "app-7"
    assert opened["session_id"] == created["session_id"]  # generated at connect
    assert created["session_id"] != "app-7"
    connection = created["payload"]["id"]
    assert utterance["connection_id"] == closed["connection_id"] == connection
    assert opened["connection_id"] == connection
