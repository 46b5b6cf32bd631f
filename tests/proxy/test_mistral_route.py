"""WS /v1/audio/transcriptions/realtime and POST /v1/client/sessions against the fake vLLM (real
sockets): the model query, the credentials and client session tokens, the lifecycle of flush and
end, settings fixed at the first audio, metrics, logs and drain. The real Mistral SDK and Pipecat
run against the same route in tests/compat."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from devtools.fake_vllm import predict_text
from proxy.mistral_route import PATH, SESSIONS_PATH
from proxy.protocols.mistral import MISTRAL_MODELS
from tests.harness import TEST_KEY, RunningProxy, fake_and_proxy, load_pcm, wait_for
from tests.proxy.realtime_client import recv, until, until_closed

MODEL = MISTRAL_MODELS[0]
FRAME = 2560  # 80 ms of 16 kHz PCM16


def url(proxy: RunningProxy, model: str | None = MODEL) -> str:
    base = proxy.http_url.replace("http://", "ws://", 1) + PATH
    return base if model is None else f"{base}?model={model}"


@contextlib.asynccontextmanager
async def mistral(
    proxy: RunningProxy,
    model: str | None = MODEL,
    *,
    key: str | None = TEST_KEY,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with connect(
        url(proxy, model),
        additional_headers=headers,
        subprotocols=subprotocols,
    ) as ws:
        yield ws


async def send(ws: ClientConnection, kind: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": kind, **fields}))


async def append(ws: ClientConnection, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME):
        await send(ws, "input_audio.append", audio=base64.b64encode(pcm[i : i + FRAME]).decode())


async def mint(proxy: RunningProxy, body: Any, key: str | None = TEST_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with httpx.AsyncClient(base_url=proxy.http_url, timeout=5.0) as http:
        return await http.post(SESSIONS_PATH, json=body, headers=headers)


# -- connecting ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", [None, "whisper-1"])
async def test_the_model_is_required_and_must_be_served(model: str | None) -> None:
    async with fake_and_proxy() as (_, proxy), mistral(proxy, model) as ws:
        events, code = await until_closed(ws)
    (error,) = events
    assert error["type"] == "error"
    assert error["error"]["code"] == 4103
    message = error["error"]["message"]
    assert ("model is required" if model is None else "'whisper-1' is not served") in message
    for name in (proxy.config.served_model_name, *MISTRAL_MODELS):
        assert name in message
    assert code == 1008


async def test_the_served_name_and_aliases_open_a_session() -> None:
    async with fake_and_proxy(model_aliases=("house-stt",)) as (_, proxy):
        for name in (proxy.config.served_model_name, "house-stt", *MISTRAL_MODELS):
            async with mistral(proxy, name) as ws:
                created = await recv(ws)
                assert created["type"] == "session.created"
                assert created["session"]["model"] == name
                assert created["session"]["audio_format"] == {
                    "encoding": "pcm_s16le",
                    "sample_rate": 16000,
                }


async def test_strict_names_refuse_mistrals_own() -> None:
    async with (
        fake_and_proxy(strict_model_names=True) as (_, proxy),
        mistral(proxy, MISTRAL_MODELS[1]) as ws,
    ):
        events, code = await until_closed(ws)
    assert events[0]["error"]["code"] == 4103
    assert code == 1008


@pytest.mark.parametrize("key", [None, "wrong-key-123"])
async def test_a_missing_or_wrong_key_is_refused(key: str | None) -> None:
    async with fake_and_proxy() as (_, proxy), mistral(proxy, key=key) as ws:
        events, code = await until_closed(ws)
    (error,) = events
    assert error["error"]["code"] == 4001
    words = "Authorization: Bearer" if key is None else "Wrong API key"
    assert words in error["error"]["message"]
    assert code == 4001


async def test_the_key_as_a_subprotocol_is_not_echoed() -> None:
    async with (
        fake_and_proxy() as (_, proxy),
        mistral(proxy, key=None, subprotocols=["realtime", TEST_KEY]) as ws,
    ):
        assert ws.subprotocol == "realtime"
        assert (await recv(ws))["type"] == "session.created"


async def test_two_credentials_offered_as_subprotocols_are_refused() -> None:
    async with (
        fake_and_proxy() as (_, proxy),
        mistral(proxy, key=None, subprotocols=["realtime", TEST_KEY, "other"]) as ws,
    ):
        events, code = await until_closed(ws)
    assert events[0]["error"]["code"] == 4001
    assert "not several" in events[0]["error"]["message"]
    assert code == 4001


# -- client session tokens -----------------------------------------------------------------


async def test_a_session_token_opens_sessions_for_its_model_until_it_expires() -> None:
    async with fake_and_proxy(token_max_ttl_s=60) as (_, proxy):
        answer = await mint(proxy, {"model": MODEL, "purpose": "realtime", "ttl_seconds": 2})
        assert answer.status_code == 201
        assert answer.headers["cache-control"] == "no-store"
        body = answer.json()
        token = body["client_secret"]["value"]
        assert token.startswith("rt_")
        assert body["expires_at"] == body["client_secret"]["expires_at"]
        assert body["expires_at"].endswith("Z")
        for _ in range(3):  # reusable
            async with mistral(proxy, key=None, subprotocols=["realtime", token]) as ws:
                assert (await recv(ws))["type"] == "session.created"
        async with mistral(proxy, key=token) as ws:  # as a Bearer credential too
            assert (await recv(ws))["type"] == "session.created"
        async with mistral(proxy, MISTRAL_MODELS[1], key=token) as ws:
            events, code = await until_closed(ws)
        assert "another model" in events[0]["error"]["message"]
        assert code == 4001
        # A token cannot mint another.
        again = await mint(proxy, {"model": MODEL, "purpose": "realtime"}, token)
        assert again.status_code == 401
        expires = datetime.fromisoformat(body["client_secret"]["expires_at"]).timestamp()
        # Past the expiry and the leeway a replica's clock may be given.
        await wait_for(lambda: time.time() > expires + 3, guard_s=10)
        async with mistral(proxy, key=token) as ws:
            events, code = await until_closed(ws)
        assert "expired" in events[0]["error"]["message"]
        assert code == 4001


async def test_a_tampered_token_is_refused() -> None:
    async with fake_and_proxy() as (_, proxy):
        body = (await mint(proxy, {"model": MODEL, "purpose": "realtime"})).json()
        token = body["client_secret"]["value"]
        async with mistral(proxy, key=token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) as ws:
            events, code = await until_closed(ws)
        assert "not valid" in events[0]["error"]["message"]
        assert code == 4001


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": MODEL}, "purpose"),
        ({"model": "whisper-1", "purpose": "realtime"}, "model must be one of"),
        ({"model": MODEL, "purpose": "realtime", "ttl_seconds": 0}, "ttl_seconds"),
        ({"model": MODEL, "purpose": "realtime", "ttl_seconds": 100_000}, "ttl_seconds"),
        ({"model": MODEL, "purpose": "realtime", "ttl_seconds": "60"}, "ttl_seconds"),
        ([1], "JSON object"),
    ],
)
async def test_bad_session_requests_say_what_to_send(body: Any, words: str) -> None:
    async with fake_and_proxy() as (_, proxy):
        answer = await mint(proxy, body)
    assert answer.status_code == 400
    assert answer.json()["object"] == "error"
    assert words in answer.json()["message"]


async def test_minting_needs_a_key_and_failures_are_limited() -> None:
    async with fake_and_proxy(max_auth_failures_per_window=2) as (_, proxy):
        body = {"model": MODEL, "purpose": "realtime"}
        statuses = [(await mint(proxy, body, key)).status_code for key in (None, "x", "y")]
        assert statuses == [401, 401, 429]


# -- the session ---------------------------------------------------------------------------


async def test_flush_then_more_audio_then_end() -> None:
    pcm = load_pcm()
    async with fake_and_proxy() as (fake, proxy), mistral(proxy) as ws:
        await recv(ws)
        await append(ws, pcm)
        await send(ws, "input_audio.flush")
        first = await until(ws, "transcription.done")
        await append(ws, pcm[: len(pcm) // 2])
        await send(ws, "input_audio.end")
        rest, code = await until_closed(ws)
    assert code == 1000
    assert first[-1]["text"] == predict_text(pcm)
    assert [e["type"] for e in rest].count("transcription.done") == 1
    assert rest[-1]["type"] == "transcription.done"
    assert rest[-1]["text"] == predict_text(pcm[: len(pcm) // 2])
    assert isinstance(rest[-1]["usage"]["prompt_audio_seconds"], int)
    assert fake.generations_completed == 2


async def test_a_flush_with_no_audio_is_answered_by_an_empty_done() -> None:
    async with fake_and_proxy() as (_, proxy), mistral(proxy) as ws:
        await recv(ws)
        await send(ws, "input_audio.flush")
        (done,) = await until(ws, "transcription.done")
        assert done["text"] == ""
        assert done["segments"] == []
        await send(ws, "input_audio.end")
        events, code = await until_closed(ws)
    assert [e["type"] for e in events] == ["transcription.done"]
    assert code == 1000


async def test_settings_are_fixed_from_the_first_audio_chunk_even_after_a_flush() -> None:
    pcm = load_pcm()
    mulaw = {"audio_format": {"encoding": "pcm_mulaw", "sample_rate": 8000}}
    async with fake_and_proxy() as (_, proxy), mistral(proxy) as ws:
        await recv(ws)
        await send(ws, "session.update", session={"target_streaming_delay_ms": 480})
        assert (await recv(ws))["type"] == "session.updated"
        await append(ws, pcm[:FRAME])
        await send(ws, "session.update", session=mulaw)
        refused = await recv(ws)
        assert refused["error"]["code"] == 4110
        await send(ws, "input_audio.flush")
        await until(ws, "transcription.done")
        await send(ws, "session.update", session=mulaw)
        assert (await recv(ws))["error"]["code"] == 4110


async def test_audio_after_end_is_refused() -> None:
    async with fake_and_proxy({"step_delay_s": 0.05}) as (_, proxy), mistral(proxy) as ws:
        await recv(ws)
        await append(ws, load_pcm()[: FRAME * 4])
        await send(ws, "input_audio.end")
        await append(ws, load_pcm()[:FRAME])
        events, code = await until_closed(ws)
    errors = [e for e in events if e["type"] == "error"]
    assert [e["error"]["code"] for e in errors] == [4101]
    assert "after input_audio.end" in errors[0]["error"]["message"]
    assert events[-1]["type"] == "transcription.done"
    assert code == 1000


async def test_metrics_carry_the_protocol_label() -> None:
    async with fake_and_proxy() as (_, proxy):
        async with mistral(proxy) as ws:
            await recv(ws)
            await append(ws, load_pcm()[:FRAME])
            await send(ws, "input_audio.end")
            await until_closed(ws)
        async with httpx.AsyncClient(base_url=proxy.http_url) as http:
            text = (await http.get("/metrics")).text
    assert 'voxtral_proxy_connections_total{protocol="mistral"} 1.0' in text
    assert 'protocol="mistral",type="input_audio.append"' in text
    assert 'protocol="mistral",type="input_audio.end"' in text


async def test_drain_delivers_the_open_utterance_then_closes() -> None:
    pcm = load_pcm()
    async with fake_and_proxy() as (fake, proxy), mistral(proxy) as ws:
        await recv(ws)
        await append(ws, pcm)
        await wait_for(lambda: len(fake.received) > 3)
        proxy.server.begin_shutdown()
        events, code = await until_closed(ws)
    kinds = [e["type"] for e in events]
    assert "transcription.done" in kinds
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == 4503
    assert code == 1001


async def test_the_token_never_reaches_the_logs(capfd: pytest.CaptureFixture[str]) -> None:
    async with fake_and_proxy() as (_, proxy):
        token = (await mint(proxy, {"model": MODEL, "purpose": "realtime"})).json()[
            "client_secret"
        ]["value"]
        async with mistral(proxy, key=None, subprotocols=["realtime", token]) as ws:
            await recv(ws)
    out, err = capfd.readouterr()
    assert token.removeprefix("rt_") not in out + err
    assert TEST_KEY not in out + err
