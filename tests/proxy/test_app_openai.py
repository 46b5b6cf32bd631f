"""WS /v1/realtime and POST /v1/realtime/client_secrets over real sockets, against the fake vLLM:
admission (credentials, subprotocol, query), the session's bounds and failures in OpenAI's words,
and the close codes. The real OpenAI clients are in tests/compat."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from proxy.client_secrets import CLIENT_SECRET_PREFIX
from tests.harness import (
    TEST_KEY,
    RunningProxy,
    fake_and_proxy,
    load_pcm,
    upstream_commits,
    wait_for,
)
from tests.proxy.realtime_client import recv, until, until_closed

SHORT = load_pcm("short.wav")
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"


def url(proxy: RunningProxy, query: str = "intent=transcription") -> str:
    return (
        proxy.http_url.replace("http://", "ws://") + "/v1/realtime" + (f"?{query}" if query else "")
    )


@contextlib.asynccontextmanager
async def opened(
    proxy: RunningProxy,
    *,
    query: str = "intent=transcription",
    key: str | None = TEST_KEY,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with connect(
        url(proxy, query),
        additional_headers=headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        max_size=None,
    ) as ws:
        yield ws


async def send(ws: ClientConnection, **event: Any) -> None:
    await ws.send(orjson.dumps(event).decode())


async def update(ws: ClientConnection, audio_input: dict[str, Any], **extra: Any) -> None:
    session = {"type": "transcription", "audio": {"input": audio_input}}
    await send(ws, type="session.update", session=session, **extra)


async def append_pcm16k(ws: ClientConnection, pcm: bytes, chunk_ms: int = 100) -> None:
    """16 kHz audio, sent as OpenAI's 24 kHz PCM16 (each sample repeated 3 for 2: the fake only
    hashes what reaches it)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    upsampled = np.repeat(samples, 3)[::2].astype("<i2").tobytes()
    size = 48 * chunk_ms
    for start in range(0, len(upsampled), size):
        audio = base64.b64encode(upsampled[start : start + size]).decode()
        await send(ws, type="input_audio_buffer.append", audio=audio)


def error_of(event: dict[str, Any], code: str) -> dict[str, Any]:
    assert event["type"] == "error", event
    assert isinstance(event["event_id"], str)
    error: dict[str, Any] = event["error"]
    assert error["code"] == code, event
    assert error["message"]
    return error


# ------------------------------------------------------------------ admission


async def test_no_credential_is_an_openai_error_and_1008() -> None:
    async with fake_and_proxy() as (fake, proxy), opened(proxy, key=None) as ws:
        events, code = await until_closed(ws)
    assert code == 1008
    (event,) = events
    error_of(event, "unauthorized")
    assert fake.connections_total == 0


async def test_the_browser_subprotocol_is_answered_with_realtime_only() -> None:
    offered = ["realtime", f"openai-insecure-api-key.{TEST_KEY}"]
    async with fake_and_proxy() as (_, proxy), opened(proxy, key=None, subprotocols=offered) as ws:
        assert ws.subprotocol == "realtime"
        assert TEST_KEY not in str(ws.response.headers)
        assert (await recv(ws))["type"] == "session.created"


async def test_a_session_update_sent_first_is_answered_after_session_created() -> None:
    async with fake_and_proxy() as (_, proxy), opened(proxy, query="") as ws:
        await update(ws, {"transcription": {"model": "whisper-1"}}, event_id="u1")
        created, updated = await recv(ws), await recv(ws)
    assert created["type"] == "session.created"
    assert updated["type"] == "session.updated"
    assert updated["session"]["audio"]["input"]["transcription"]["model"] == "whisper-1"
    assert created["event_id"] != updated["event_id"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("intent=realtime", "invalid_message"),
        ("intent=transcription&model=gpt-9-omni", "unsupported_model"),
    ],
)
async def test_a_query_this_server_does_not_serve_is_refused(query: str, code: str) -> None:
    async with fake_and_proxy() as (_, proxy), opened(proxy, query=query) as ws:
        events, close = await until_closed(ws)
    assert close == 1008
    error = error_of(events[-1], code)
    assert "transcription" in error["message"] or "gpt-realtime-whisper" in error["message"]


async def test_a_query_model_is_the_sessions_model_name() -> None:
    query = "intent=transcription&model=gpt-realtime-whisper"
    async with fake_and_proxy() as (_, proxy), opened(proxy, query=query) as ws:
        created = await recv(ws)
    transcription = created["session"]["audio"]["input"]["transcription"]
    assert transcription["model"] == "gpt-realtime-whisper"


async def test_at_capacity_the_close_is_1013() -> None:
    async with (
        fake_and_proxy(max_connections=1) as (_, proxy),
        opened(proxy) as first,
    ):
        assert (await recv(first))["type"] == "session.created"
        async with opened(proxy) as second:
            events, code = await until_closed(second)
    assert code == 1013
    assert error_of(events[-1], "server_at_capacity")["type"] == "server_error"


# ------------------------------------------------------------------ client secrets


async def mint(proxy: RunningProxy, body: dict[str, Any], key: str = TEST_KEY) -> httpx.Response:
    async with httpx.AsyncClient(base_url=proxy.http_url, timeout=5) as http:
        return await http.post(
            "/v1/realtime/client_secrets",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )


async def test_a_client_secret_opens_sessions_until_it_expires() -> None:
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "session": {
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcmu"}}},
        },
    }
    async with fake_and_proxy() as (_, proxy):
        response = await mint(proxy, body)
        assert response.status_code == 200, response.text
        minted = response.json()
        secret = minted["value"]
        assert secret.startswith(CLIENT_SECRET_PREFIX)
        assert minted["session"]["type"] == "transcription"
        assert minted["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert minted["session"]["expires_at"] == minted["expires_at"]
        assert response.headers["cache-control"] == "no-store"
        # Reusable, as OpenAI's are: by header, then by the browser subprotocol.
        async with opened(proxy, key=secret) as ws:
            assert (await recv(ws))["type"] == "session.created"
        offered = ["realtime", f"openai-insecure-api-key.{secret}"]
        async with opened(proxy, key=None, subprotocols=offered) as ws:
            assert (await recv(ws))["type"] == "session.created"
        # Tampered: refused, and the message says where to get a new one.
        async with opened(proxy, key=secret[:-2] + "xx") as ws:
            events, code = await until_closed(ws)
        assert code == 1008
        assert "client_secrets" in error_of(events[-1], "unauthorized")["message"]


async def test_an_envelope_token_cannot_pass_for_a_client_secret() -> None:
    async with (
        fake_and_proxy() as (_, proxy),
        httpx.AsyncClient(base_url=proxy.http_url, timeout=5) as http,
    ):
        token = (await http.post("/api/tokens", headers={"X-API-Key": TEST_KEY})).json()["token"]
        async with opened(proxy, key=CLIENT_SECRET_PREFIX + token) as ws:
            events, code = await until_closed(ws)
    assert code == 1008
    error_of(events[-1], "unauthorized")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"expires_after": {"anchor": "created_at", "seconds": 5}}, "expires_after.seconds"),
        ({"expires_after": {"anchor": "created_at", "seconds": 100_000}}, "expires_after.seconds"),
        ({"session": {"type": "realtime"}}, "session.type"),
        (
            {"session": {"type": "transcription", "audio": {"input": {"format": {"rate": 8}}}}},
            "session.audio.input.format.rate",
        ),
    ],
)
async def test_a_bad_client_secret_request_is_a_400_naming_the_param(
    body: dict[str, Any], param: str
) -> None:
    async with fake_and_proxy() as (_, proxy):
        response = await mint(proxy, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


async def test_a_client_secret_cannot_mint_another() -> None:
    async with fake_and_proxy() as (_, proxy):
        secret = (await mint(proxy, {})).json()["value"]
        response = await mint(proxy, {}, key=secret)
    assert response.status_code == 401


# ------------------------------------------------------------------ the session


async def test_commit_mode_transcribes_each_item_once() -> None:
    async with fake_and_proxy() as (fake, proxy), opened(proxy) as ws:
        await recv(ws)
        for _ in range(2):
            await append_pcm16k(ws, SHORT)
            await send(ws, type="input_audio_buffer.commit")
            events = await until(ws, COMPLETED)
            assert [e for e in events if e["type"] == "error"] == []
        await wait_for(lambda: upstream_commits(fake, final=True) == 2)
    completed = events[-1]
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    assert committed[-1]["item_id"] == completed["item_id"]
    assert committed[-1]["previous_item_id"] is not None
    assert completed["transcript"].strip()


async def test_a_failed_item_is_failed_and_the_session_goes_on() -> None:
    async with fake_and_proxy() as (fake, proxy), opened(proxy) as ws:
        await recv(ws)
        fake.fail_after_deltas = 1
        await append_pcm16k(ws, SHORT)
        await send(ws, type="input_audio_buffer.commit")
        events = await until(ws, FAILED)
        fake.fail_after_deltas = None
        await append_pcm16k(ws, SHORT)
        await send(ws, type="input_audio_buffer.commit")
        after = await until(ws, COMPLETED)
    failed = events[-1]
    assert failed["content_index"] == 0
    assert failed["error"]["code"] == "upstream_error"
    assert [e for e in events + after if e["type"] == "error"] == []
    assert after[-1]["item_id"] != failed["item_id"]


async def test_an_append_over_the_frame_limit_is_refused_and_the_session_goes_on() -> None:
    async with fake_and_proxy(max_message_bytes=4096) as (_, proxy), opened(proxy) as ws:
        await recv(ws)
        big = base64.b64encode(bytes(6000)).decode()
        await send(ws, type="input_audio_buffer.append", audio=big, event_id="big-1")
        error = error_of(await recv(ws), "payload_too_large")
        assert "4096" in error["message"]
        await update(ws, {"turn_detection": None})
        assert (await recv(ws))["type"] == "session.updated"


async def test_the_idle_timeout_closes_with_1008() -> None:
    async with fake_and_proxy(idle_timeout_s=0.3) as (_, proxy), opened(proxy) as ws:
        events, code = await until_closed(ws)
    assert code == 1008
    error_of(events[-1], "idle_timeout")


async def test_draining_closes_with_1013_after_the_open_item_is_delivered() -> None:
    async with fake_and_proxy(drain_timeout_s=5.0) as (fake, proxy), opened(proxy) as ws:
        await recv(ws)
        await append_pcm16k(ws, SHORT)
        await wait_for(lambda: upstream_commits(fake, final=False) == 1)
        proxy.server.begin_shutdown()
        events, code = await until_closed(ws)
    assert code == 1013
    assert [e["type"] for e in events[-2:]] == [COMPLETED, "error"]
    error_of(events[-1], "shutting_down")


async def test_vllm_lost_mid_item_fails_the_item_and_closes_with_1011() -> None:
    async with fake_and_proxy() as (fake, proxy), opened(proxy) as ws:
        await recv(ws)
        await append_pcm16k(ws, SHORT)
        await until(ws, "conversation.item.input_audio_transcription.delta")
        await fake.kill_connections(1012)
        events, code = await until_closed(ws)
    assert code == 1011
    kinds = [e["type"] for e in events]
    assert FAILED in kinds
    assert kinds[-1] == "error"


async def test_a_long_item_rolls_over_and_completes_once() -> None:
    # 15 s, over two segments at max_model_len 128. Converted audio waits for vLLM in 80 ms
    # pieces: sent at once, more would pass the inbound queue's bound.
    long = load_pcm("long.wav")[: 15 * 32000]
    async with (
        fake_and_proxy({"max_model_len": 128}) as (fake, proxy),
        opened(proxy) as ws,
    ):
        await recv(ws)
        await append_pcm16k(ws, long, chunk_ms=640)
        await send(ws, type="input_audio_buffer.commit")
        events = await until(ws, COMPLETED)
    assert fake.generations_started > 2
    assert [e for e in events if e["type"] in ("error", FAILED)] == []
    completed = [e for e in events if e["type"] == COMPLETED]
    assert len(completed) == 1
    deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
    assert completed[0]["transcript"] == "".join(deltas)
    assert completed[0]["usage"]["seconds"] == pytest.approx(len(long) / 32000, abs=0.01)


async def test_metrics_count_openai_sessions_and_events_apart() -> None:
    async with fake_and_proxy() as (_, proxy):
        async with opened(proxy) as ws:
            await recv(ws)
            await update(ws, {"turn_detection": None})
            await recv(ws)
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=5) as http:
            text = (await http.get("/metrics")).text
    assert 'voxtral_proxy_connections_total{protocol="openai"} 1.0' in text
    assert (
        'voxtral_proxy_client_messages_total{protocol="openai",type="session.update"} 1.0' in text
    )


async def test_events_over_the_rate_limit_are_refused_and_the_session_goes_on() -> None:
    async with (
        fake_and_proxy(max_messages_per_window=5, message_window_s=60.0) as (_, proxy),
        opened(proxy) as ws,
    ):
        await recv(ws)
        audio = base64.b64encode(bytes(4800)).decode()
        for number in range(8):
            await send(ws, type="input_audio_buffer.append", audio=audio, event_id=f"a{number}")
        refused = [await recv(ws) for _ in range(3)]
        assert ws.close_code is None
    for event, number in zip(refused, (5, 6, 7), strict=True):
        error = error_of(event, "rate_limited")
        assert error["event_id"] == f"a{number}"
        assert "Retry in" in error["message"]


async def test_the_beta_transcription_sessions_endpoint_mints_a_secret_in_its_shape() -> None:
    body = {
        "input_audio_format": "g711_ulaw",
        "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
        "client_secret": {"expires_at": {"anchor": "created_at", "seconds": 60}},
    }
    async with (
        fake_and_proxy() as (_, proxy),
        httpx.AsyncClient(base_url=proxy.http_url, timeout=5) as http,
    ):
        response = await http.post(
            "/v1/realtime/transcription_sessions",
            json=body,
            headers={"Authorization": f"Bearer {TEST_KEY}"},
        )
        assert response.status_code == 200, response.text
        session = response.json()
        assert session["input_audio_format"] == "g711_ulaw"
        assert session["input_audio_transcription"] == {"model": "whisper-1", "language": "en"}
        assert session["turn_detection"]["silence_duration_ms"] == 700
        secret = session["client_secret"]["value"]
        assert secret.startswith(CLIENT_SECRET_PREFIX)
        async with opened(proxy, key=secret) as ws:
            assert (await recv(ws))["type"] == "session.created"
        refused = await http.post(
            "/v1/realtime/transcription_sessions",
            json={"input_audio_format": "opus"},
            headers={"Authorization": f"Bearer {TEST_KEY}"},
        )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "input_audio_format"
