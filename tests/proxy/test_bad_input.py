"""Bad input from hostile or broken clients (issue 6): fuzzed envelopes and frame sizes, binary
frames, oversized frames, deep JSON, invalid UTF-8, floods, vanishing clients, bad keys and
brute force. Real sockets, the real proxy, the fake vLLM.

The rule throughout: a bad frame gets exactly one answer and the connection carries on (or, where
the protocol says so, one error and a close); the server never falls over, and other clients
never notice.
"""

from __future__ import annotations

import asyncio
import base64
import os
import string
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devtools.fake_vllm import FRAME_BYTES, predict_deltas
from tests.harness import (
    TEST_KEY,
    Client,
    RunningProxy,
    assert_error,
    connected,
    fake_and_proxy,
    load_pcm,
    of_request,
    texts,
    wait_for,
)

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
SHORT = load_pcm("short.wav")
PIECE = SHORT[: 12 * FRAME_BYTES]
MIB = 1024 * 1024


# -- helpers --------------------------------------------------------------------------------


async def served(client: Client, request_id: str, pcm: bytes = PIECE) -> None:
    await client.utterance(request_id, pcm)
    events = await client.recv_until("transcription.done", request_id, timeout=30)
    assert texts(events, request_id) == [d for d in predict_deltas(pcm) if d]
    assert [e for e in of_request(events, request_id) if e["type"] == "error"] == []


async def still_answers(client: Client, tag: str = "alive") -> None:
    """The connection is open and in step: the next event is the pong for this ping."""
    await client.send("ping", tag, {"tag": tag})
    pong = await client.recv(timeout=10)
    assert (pong["type"], pong["request_id"], pong["payload"]) == ("pong", tag, {"tag": tag})


def run_hypothesis(loop: asyncio.AbstractEventLoop, check: Callable[..., Awaitable[None]]) -> Any:
    """Hypothesis drives examples from a worker thread; the sockets stay on the test's loop."""

    def sync(**kwargs: Any) -> None:
        asyncio.run_coroutine_threadsafe(check(**kwargs), loop).result(timeout=60)

    return sync


HYPOTHESIS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- fuzzed envelopes -----------------------------------------------------------------------

_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_value = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner)
)
_good_id = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
_id = st.one_of(
    _good_id,
    st.text(min_size=1, max_size=128),  # any characters, still a valid id
    st.text(min_size=129, max_size=140),
    st.just(""),
    _scalar.filter(lambda v: not isinstance(v, str)),
)
_audio = st.one_of(
    st.binary(min_size=1, max_size=600).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=20),
    st.sampled_from(["", "AA", "AA==", "AAA=", "A", "====", "AA AA", "AA\n", "-_-_", "AAAA="]),
    _scalar,
)
_payload_fields: dict[str, st.SearchStrategy[Any]] = {
    "ping": _value,
    "session.update": st.one_of(st.just(MODEL), st.text(max_size=30), _scalar),  # field "model"
    "cancel": st.one_of(st.text(max_size=300), _scalar),  # field "reason"
    "input_audio_buffer.append": _audio,  # field "audio"
    # Never false or absent: a commit that opens an utterance would be silently accepted.
    "input_audio_buffer.commit": st.sampled_from([True, "true", 1, 0, "no", None, [], {}]),
}
_field_name = {
    "session.update": "model",
    "cancel": "reason",
    "input_audio_buffer.append": "audio",
    "input_audio_buffer.commit": "final",
}


@st.composite
def fuzzed_envelope(draw: st.DrawFn) -> dict[str, Any]:
    """An envelope of a type whose every variant is answered by exactly one event (so no valid
    opening commit and no `end`), with any field possibly missing or wrong."""
    kind = draw(
        st.sampled_from([*_payload_fields, "unknown.kind", "END", ""])
        | _scalar.filter(lambda v: not isinstance(v, str))
    )
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["type"] = kind
    if draw(st.integers(0, 5)):
        message["session_id"] = draw(_id)
    if draw(st.booleans()):
        message["request_id"] = draw(_id)
    if isinstance(kind, str) and kind in _payload_fields:
        shape = draw(st.integers(0, 5))
        if shape == 0 and kind != "input_audio_buffer.commit":
            pass  # no payload at all
        elif shape == 1:
            message["payload"] = draw(_scalar | st.lists(_scalar, max_size=2))
        else:
            field = _field_name.get(kind, "anything")
            message["payload"] = {field: draw(_payload_fields[kind])}
    if draw(st.integers(0, 4)) == 0:
        message[draw(st.text(min_size=1, max_size=8))] = draw(_value)
    if message.get("type") == "input_audio_buffer.commit" and not isinstance(
        message.get("payload"), dict
    ):
        message["payload"] = {"final": True}
    return message


def expected_request_id(message: dict[str, Any]) -> str | None:
    value = message.get("request_id")
    return value if isinstance(value, str) and 1 <= len(value) <= 128 else None


async def test_fuzzed_envelopes_get_exactly_one_answer_each() -> None:
    loop = asyncio.get_running_loop()
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:

        async def check(messages: list[dict[str, Any]]) -> None:
            for message in messages:
                await client.send_raw(orjson.dumps(message).decode())
            for message in messages:
                event = await client.recv(timeout=10)
                assert event["type"] in ("pong", "session.updated", "error"), (message, event)
                if event["type"] == "pong":
                    # A null payload is no payload: the pong carries an empty object.
                    sent = message.get("payload")
                    assert event["payload"] == ({} if sent is None else sent), (message, event)
                assert event["request_id"] == expected_request_id(message), (message, event)
                assert event["payload"] is not None
            await still_answers(client)  # also proves no frame got a second answer

        await asyncio.to_thread(
            given(messages=st.lists(fuzzed_envelope(), min_size=1, max_size=4))(
                HYPOTHESIS(run_hypothesis(loop, check))
            )
        )
        await served(client, "after-fuzz")


# -- frame sizes ----------------------------------------------------------------------------

LIMIT = 4096
# Characters of every UTF-8 width, so the byte size and the character count differ.
_wide_text = st.text(st.sampled_from("a~\u00e9\u00df\u20ac\u4e2d\U0001f600"), max_size=3 * LIMIT)


async def test_fuzzed_frame_sizes_around_the_limit() -> None:
    """Frames just under, at and over max_message_bytes (counted in UTF-8 bytes): over gets
    payload_too_large, the rest is served, and the connection always stays."""
    loop = asyncio.get_running_loop()
    async with (
        fake_and_proxy(max_message_bytes=LIMIT) as (_, proxy),
        connected(proxy) as client,
    ):

        async def check(padding: str, trim: int) -> None:
            # Trimming the padding moves the size across the limit one character at a time.
            padding = padding[: len(padding) - trim] if len(padding) > trim else padding
            message = {"type": "ping", "session_id": "s1", "request_id": "size"}
            frame = orjson.dumps({**message, "payload": {"p": padding}}).decode()
            await client.send_raw(frame)
            event = await client.recv(timeout=10)
            if len(frame.encode()) > LIMIT:
                payload = assert_error(event, "payload_too_large")
                assert payload["details"]["max_message_bytes"] == LIMIT
            else:
                assert (event["type"], event["payload"]) == ("pong", {"p": padding}), event
            await still_answers(client)

        await asyncio.to_thread(
            given(padding=_wide_text, trim=st.integers(0, 8))(
                HYPOTHESIS(run_hypothesis(loop, check))
            )
        )
        head = '{"type":"ping","session_id":"s1","payload":{"p":"'
        for size in (LIMIT - 1, LIMIT, LIMIT + 1):
            await client.send_raw(head + "x" * (size - len(head) - 3) + '"}}')
            event = await client.recv()
            assert event["type"] == ("pong" if size <= LIMIT else "error"), (size, event)


async def test_frames_over_one_mebibyte() -> None:
    async with (
        fake_and_proxy() as (_, proxy),
        connected(proxy, session_id="bystander") as bystander,
        connected(proxy) as client,
    ):
        # A session.update carries any padding (a ping's payload has a cap of its own).
        head = f'{{"type":"session.update","session_id":"s1","payload":{{"model":"{MODEL}","p":"'
        exact = head + "x" * (MIB - len(head) - 3) + '"}}'
        assert len(exact) == MIB
        await client.send_raw(exact)
        assert (await client.recv())["type"] == "session.updated"  # the limit itself is allowed
        for size in (MIB + 1, 2 * MIB):
            await client.send_raw(head + "x" * (size - len(head) - 3) + '"}}')
            assert_error(await client.recv(), "payload_too_large")
            await still_answers(client, f"after-{size}")
        # Audio too big for one frame, inside an utterance: refused, the utterance goes on.
        await client.open("big")
        await client.append("big", b"\x01\x02" * (MIB // 2 + 1))
        assert_error(await client.recv(), "payload_too_large")
        for piece in (PIECE[i : i + FRAME_BYTES] for i in range(0, len(PIECE), FRAME_BYTES)):
            await client.append("big", piece)
        await client.final("big")
        events = await client.recv_until("transcription.done", "big")
        assert texts(events, "big") == [d for d in predict_deltas(PIECE) if d]
        # Past the WebSocket layer's own cap (twice the limit) the socket is cut; nobody else is.
        try:
            await client.send_raw("x" * (2 * MIB + 1))
            _, code = await client.recv_all_until_closed()
        except ConnectionClosed as closed:
            # The server may close while the frame is still going out.
            code = closed.rcvd.code if closed.rcvd is not None else 1006
        assert code == 1009
        await still_answers(bystander)
        await served(bystander, "bystander-1")


async def test_bad_binary_frames_are_refused_and_the_connection_stays() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.open("r1")
        refusals = [
            (b"", "invalid_audio"),
            (b"\x00", "invalid_audio"),
            (os.urandom(FRAME_BYTES + 1), "invalid_audio"),
            (os.urandom(2 * MIB), "payload_too_large"),
        ]
        for blob, code in refusals:
            await client.send_raw(blob)
            payload = assert_error(await client.recv(), code)
            assert payload["message"]
            await still_answers(client)
        # The open utterance was not disturbed: only its whole frames reach vLLM.
        for piece in (PIECE[i : i + FRAME_BYTES] for i in range(0, len(PIECE), FRAME_BYTES)):
            await client.send_raw(piece)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
        assert texts(events, "r1") == [d for d in predict_deltas(PIECE) if d]


# -- deep JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 254, 255, 300, 1000, 1100, 100_000])
async def test_deeply_nested_json_is_answered_once_and_the_connection_stays(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    async with (
        fake_and_proxy() as (_, proxy),
        connected(proxy, session_id="bystander") as bystander,
        connected(proxy) as client,
    ):
        # As the whole frame, and as a ping's payload (which a pong would echo back).
        await client.send_raw(nested)
        event = await client.recv()
        assert event["type"] == "error"
        assert event["payload"]["code"] in ("invalid_json", "invalid_message")
        await client.send_raw(
            f'{{"type":"ping","session_id":"s1","request_id":"deep","payload":{{"a":{nested}}}}}'
        )
        event = await client.recv()
        if event["type"] == "pong":
            assert event["payload"] == {"a": orjson.loads(nested)}
        else:
            assert event["payload"]["code"] in ("invalid_json", "invalid_message"), event
        await still_answers(client)
        await still_answers(bystander)


# -- invalid UTF-8 --------------------------------------------------------------------------


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame built by hand, so nothing on our side checks its UTF-8."""
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe",
        b'{"type":"ping","session_id":"s1","payload":{"a":"\xc3\x28"}}',  # bad 2-byte sequence
        b'{"type":"ping","session_id":"\xed\xa0\x80"}',  # an encoded UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    ],
)
async def test_invalid_utf8_text_frame_ends_only_that_connection(payload: bytes) -> None:
    async with (
        fake_and_proxy() as (fake, proxy),
        connected(proxy, session_id="bystander") as bystander,
        connected(proxy) as client,
    ):
        await client.open("r1")
        await client.append("r1", PIECE[:FRAME_BYTES])
        client.ws.transport.write(masked_text_frame(payload))
        events, code = await client.recv_all_until_closed()
        assert code == 1007  # invalid frame payload data
        assert all(e["type"] != "transcription.done" for e in events)
        await wait_for(lambda: len(proxy.server.state.relays) == 1)
        await wait_for(lambda: fake.open_connections == 1)
        await still_answers(bystander)
        await served(bystander, "bystander-1")
        async with connected(proxy) as fresh:
            await served(fresh, "fresh-1")


# -- floods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        '{"type":"session.update","session_id":"s1","payload":{"model":"other"}}',
        '{"type":"input_audio_buffer.append","session_id":"s1","request_id":"x",'
        '"payload":{"audio":"AAAA"}}',
    ],
)
async def test_a_flood_is_cut_with_rate_limited_then_4008(frame: str) -> None:
    limit = 40
    async with (
        fake_and_proxy(max_messages_per_window=limit, message_window_s=60) as (_, proxy),
        connected(proxy, session_id="bystander") as bystander,
        connected(proxy) as client,
    ):
        for _ in range(20_000):
            try:
                await client.send_raw(frame)
            except ConnectionClosed:  # the server closed on us mid-flood: that is the point
                break
        events, code = await client.recv_all_until_closed(timeout=30)
        assert code == 4008
        codes = [e["payload"].get("code") for e in events]
        assert len(events) < limit + 40  # cut off, not one answer per flooded frame
        assert codes[:limit].count("rate_limited") == 0  # the allowance was answered normally
        refusals = codes[limit:-1]
        assert refusals
        assert set(refusals) == {"rate_limited"}
        assert_error(events[-1], "rate_limited")  # the connection's: why it closes
        details = events[limit]["payload"]["details"]
        assert (details["kind"], details["limit"]) == ("messages", limit)
        await still_answers(bystander)
        await served(bystander, "bystander-1")


# -- clients that vanish --------------------------------------------------------------------


async def test_vanishing_clients_at_capacity_free_every_slot() -> None:
    capacity = 4
    async with fake_and_proxy({"step_delay_s": 0.005}, max_connections=capacity) as (fake, proxy):
        clients = []
        for number in range(capacity):
            ws = await connect(proxy.ws_url, additional_headers={"X-API-Key": TEST_KEY})
            client = Client(ws, f"v{number}")
            assert (await client.recv())["type"] == "session.created"
            await client.utterance(f"r{number}", SHORT, final=False)
            clients.append(client)
        for number, client in enumerate(clients):
            await client.recv_until("transcription.delta", f"r{number}")
        async with connected(proxy, expect_created=False) as extra:
            events, code = await extra.recv_all_until_closed()
            assert (events[0]["payload"]["code"], code) == ("server_at_capacity", 4002)
        for client in clients:
            client.ws.transport.abort()  # gone mid-utterance, without a close frame
        await wait_for(lambda: fake.open_connections == 0)
        await wait_for(lambda: not proxy.server.state.relays)
        async with httpx.AsyncClient(timeout=5) as http:
            health = (await http.get(f"{proxy.http_url}/healthz")).json()
        assert health["connections"] == 0
        assert fake.generations_aborted == capacity
        for number in range(capacity):  # every slot can be taken again
            async with connected(proxy, session_id=f"new{number}") as client:
                await served(client, f"n{number}")


# -- keys -----------------------------------------------------------------------------------

SECOND_KEY = "second-key-0c4d8e"


def refusal_cases() -> list[tuple[str, dict[str, Any]]]:
    key = TEST_KEY
    return [
        ("prefix", {"headers": {"X-API-Key": key[:-1]}}),
        ("half", {"headers": {"X-API-Key": key[: len(key) // 2]}}),
        ("suffix", {"headers": {"X-API-Key": key[1:]}}),
        ("plus one", {"headers": {"X-API-Key": key + "x"}}),
        ("upper case", {"headers": {"X-API-Key": key.upper()}}),
        ("swapped case", {"headers": {"X-API-Key": key.swapcase()}}),
        ("inner space", {"headers": {"X-API-Key": key[:4] + " " + key[4:]}}),
        ("both keys joined", {"headers": {"X-API-Key": f"{key},{SECOND_KEY}"}}),
        ("doubled", {"headers": {"X-API-Key": key + key}}),
        ("query leading space", {"query": f"api_key=%20{key}"}),
        ("query trailing tab", {"query": f"api_key={key}%09"}),
        ("query prefix", {"query": f"api_key={key[:-3]}"}),
        ("query upper case", {"query": f"api_key={key.upper()}"}),
        ("query second key prefix", {"query": f"api_key={SECOND_KEY[:-1]}"}),
        ("bearer prefix", {"headers": {"Authorization": f"Bearer {key[:-1]}"}}),
        ("bearer without key", {"headers": {"Authorization": "Bearer"}}),
        ("basic scheme", {"headers": {"Authorization": f"Basic {key}"}}),
        ("no scheme", {"headers": {"Authorization": key}}),
        ("bearer two tokens", {"headers": {"Authorization": f"Bearer {key} {key}"}}),
        ("no key at all", {"headers": {}}),
    ]


async def test_wrong_and_partial_keys_are_refused_and_real_ones_accepted() -> None:
    async with fake_and_proxy(
        api_keys=(TEST_KEY, SECOND_KEY), max_auth_failures_per_window=1000
    ) as (_, proxy):
        for name, how in refusal_cases():
            async with connected(proxy, expect_created=False, **how) as client:
                events, code = await client.recv_all_until_closed()
            assert code == 4001, name
            assert len(events) == 1, name
            payload = assert_error(events[0], "unauthorized")
            for secret in (TEST_KEY, SECOND_KEY):
                assert secret not in orjson.dumps(payload).decode(), name
        for how in (
            {"headers": {"X-API-Key": SECOND_KEY}},  # the rotated-in key
            {"headers": {"Authorization": f"bearer {TEST_KEY}"}},  # the scheme ignores case
            {"query": f"api_key={SECOND_KEY}"},
        ):
            async with connected(proxy, **how) as client:
                await still_answers(client)


async def _attempt(proxy: RunningProxy, key: str, local: str = "127.0.0.1") -> tuple[Any, int]:
    async with connect(
        proxy.ws_url, additional_headers={"X-API-Key": key}, local_addr=(local, 0)
    ) as ws:
        client = Client(ws)
        return await client.recv_all_until_closed(timeout=10)


async def _accepted(proxy: RunningProxy, key: str, local: str = "127.0.0.1") -> bool:
    async with connect(
        proxy.ws_url, additional_headers={"X-API-Key": key}, local_addr=(local, 0)
    ) as ws:
        client = Client(ws)
        first = await client.recv()
        if first["type"] != "session.created":
            return False
        await still_answers(client)
        return True


async def test_brute_force_is_limited_per_address() -> None:
    limit, window = 5, 1.5
    async with fake_and_proxy(max_auth_failures_per_window=limit, auth_failure_window_s=window) as (
        _,
        proxy,
    ):
        for attempt in range(limit):
            events, code = await _attempt(proxy, f"guess-{attempt}")
            assert (events[0]["payload"]["code"], code) == ("unauthorized", 4001)
        # Over the limit a wrong guess is turned away and told when to come back ...
        events, code = await _attempt(proxy, "guess-more")
        assert code == 4008
        assert len(events) == 1
        payload = assert_error(events[0], "rate_limited")
        details = payload["details"]
        assert details["kind"] == "auth_failures"
        assert details["limit"] == limit
        assert 0 < details["retry_in"] <= window
        # ... while the right key is never refused for the failures of others on the address.
        assert await _accepted(proxy, TEST_KEY)
        # Once the window has passed, guesses are answered unauthorized again.
        await asyncio.sleep(details["retry_in"] + 0.2)
        events, code = await _attempt(proxy, "guess-after")
        assert (events[0]["payload"]["code"], code) == ("unauthorized", 4001)
