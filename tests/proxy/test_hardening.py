"""Hardening (issue 6): slow readers, a silent or slow vLLM, browser origins, and what the
operator sees (per-utterance log lines, JSON logs, metrics), over real sockets.

The proxy runs in-process (``tests.harness``) in front of the fake vLLM; logs are captured by
configuring the proxy's own logging (``proxy.logs.configure_logging``) onto a buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devtools.fake_vllm import FRAME_BYTES, predict_deltas, predict_text
from proxy import relay as relay_module
from proxy.protocols.envelope import PING_PAYLOAD_MAX_BYTES
from tests.harness import (
    TEST_KEY,
    Client,
    RunningProxy,
    assert_error,
    chunks,
    connected,
    fake_and_proxy,
    finalizing_held,
    json_lines,
    load_pcm,
    of_request,
    texts,
    wait_for,
)

SHORT = load_pcm("short.wav")
MID = load_pcm("mid.wav")
LONG = load_pcm("long.wav")
# The biggest pong a ping may ask for: many of them fill a stalled socket's buffers.
PING_PADDING = "x" * (PING_PAYLOAD_MAX_BYTES - 16)
# More pings than any loopback socket buffers hold pongs of: a bound for flooding loops.
FLOOD_PINGS = 20_000


# -- helpers --------------------------------------------------------------------------------


async def served(client: Client, request_id: str, pcm: bytes) -> list[dict[str, Any]]:
    """One complete utterance, checked delta by delta against the fake's prediction."""
    await client.utterance(request_id, pcm)
    events = await client.recv_until("transcription.done", request_id, timeout=30)
    mine = of_request(events, request_id)
    assert texts(mine, request_id) == [d for d in predict_deltas(pcm) if d]
    assert mine[-1]["payload"]["text"] == predict_text(pcm)
    assert [e["type"] for e in mine if e["type"] != "transcription.delta"] == ["transcription.done"]
    return events


@contextlib.asynccontextmanager
async def raw_client(proxy: RunningProxy, **options: Any) -> AsyncIterator[Client]:
    """A client whose WebSocket options the test chooses (e.g. a tiny receive queue)."""
    async with connect(
        proxy.ws_url, additional_headers={"X-API-Key": proxy.api_key}, **options
    ) as ws:
        client = Client(ws)
        created = await client.recv()
        assert created["type"] == "session.created"
        yield client


def outbound_sizes(proxy: RunningProxy) -> list[int]:
    return [relay.outbound.qsize() for relay in proxy.server.state.relays]


async def flood_pings(client: Client, proxy: RunningProxy) -> tuple[int, int]:
    """Sends the biggest pings without reading until the proxy ends a session (or the socket),
    at most FLOOD_PINGS; returns how many were sent and the most events queued meanwhile."""
    relays = proxy.server.state.relays
    sent = high_water = 0
    with contextlib.suppress(ConnectionClosed):
        while sent < FLOOD_PINGS and not any(r.session.closed for r in relays):
            await client.send("ping", f"p{sent}", {"pad": PING_PADDING})
            sent += 1
            high_water = max(high_water, *outbound_sizes(proxy), 0)
    return sent, high_water


async def connections(proxy: RunningProxy) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        count: int = (await http.get(f"{proxy.http_url}/healthz")).json()["connections"]
        return count


def utterance_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == "utterance"]


# -- a client that stops reading ------------------------------------------------------------


async def test_slow_reader_gets_slow_consumer_and_1008_with_bounded_buffer() -> None:
    """The client stops reading while a long utterance streams and its pings pile up big
    pongs: the proxy holds at most WS_OUTBOUND_QUEUE_MAX events for it, then drops them and
    ends it with slow_consumer / 1008; another client meanwhile gets every word."""
    async with fake_and_proxy(
        {"step_delay_s": 0.002}, outbound_queue_max=16, max_audio_ahead_s=3600.0
    ) as (_, proxy):
        async with (
            connected(proxy, session_id="steady") as steady,
            raw_client(proxy, max_queue=1, max_size=None) as slow,
        ):
            other = asyncio.create_task(served(steady, "steady-1", MID))
            await slow.utterance("slow-1", LONG, final=False)
            pings, high_water = await flood_pings(slow, proxy)
            relays = proxy.server.state.relays
            await wait_for(lambda: any(r.session.closed for r in relays), guard_s=20)
            assert high_water <= proxy.config.outbound_queue_max
            # Reading again: what was already in flight, then the clear error and the close.
            events, code = await slow.recv_all_until_closed(timeout=30)
            await other
        assert code == 1008
        assert_error(events[-1], "slow_consumer")
        pongs = [e for e in events if e["type"] == "pong"]
        assert len(pongs) < pings  # the rest was dropped, not buffered without bound
        # slow-1 ends with the same error, and nothing of it follows.
        ends = [e for e in of_request(events, "slow-1") if e["type"] != "transcription.delta"]
        assert [e["payload"]["code"] for e in ends] == ["slow_consumer"]
        async with connected(proxy) as client:  # the server is fine
            await served(client, "after", SHORT)


async def test_client_that_never_reads_again_is_dropped_and_its_slot_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A short write deadline keeps the test fast; the code path is the production one.
    monkeypatch.setattr(relay_module, "CLIENT_WRITE_TIMEOUT_S", 0.5)
    async with (
        fake_and_proxy(outbound_queue_max=16) as (fake, proxy),
        connected(proxy, session_id="steady") as steady,
        raw_client(proxy, max_queue=1, max_size=None) as slow,
    ):
        await slow.utterance("slow-1", MID, final=False)
        _, high_water = await flood_pings(slow, proxy)
        await wait_for(lambda: len(proxy.server.state.relays) == 1, guard_s=20)
        assert high_water <= proxy.config.outbound_queue_max
        assert await connections(proxy) == 1
        await wait_for(lambda: fake.open_connections == 1)  # its upstream socket is closed
        await served(steady, "steady-1", SHORT)


async def test_pings_of_a_megabyte_are_refused_and_the_connection_stays() -> None:
    """Issue 16 finding 5: a ping's payload is echoed, so 1 MB pings on a socket that never
    reads piled up 1 MB pongs (RSS 49 -> 906 MiB). Past the cap a ping gets a short error."""
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.send("ping", "big", {"pad": "x" * 1_000_000})
        payload = assert_error(await client.recv(), "payload_too_large", "big")
        assert payload["details"] == {"max_ping_payload_bytes": PING_PAYLOAD_MAX_BYTES}
        await client.send("ping", "small", {"t": 1})
        assert (await client.recv())["payload"] == {"t": 1}


async def test_pongs_for_a_client_that_never_reads_are_bounded_in_bytes() -> None:
    """A client floods the biggest pings allowed and reads nothing: once its kernel buffers are
    full, the pongs queued for it are held to WS_OUTBOUND_QUEUE_MAX_BYTES and it is ended with
    slow_consumer / 1008, long before the event bound."""
    budget = 65_536
    async with (
        fake_and_proxy(outbound_queue_max_bytes=budget) as (_, proxy),
        raw_client(proxy, max_queue=1, max_size=None) as slow,
    ):
        relays = proxy.server.state.relays
        [relay] = relays
        sent = high_water = 0
        with contextlib.suppress(ConnectionClosed):
            while sent < FLOOD_PINGS and not relay.session.closed:
                await slow.send("ping", f"p{sent}", {"pad": PING_PADDING})
                sent += 1
                high_water = max(high_water, relay.outbound_bytes)
        assert relay.session.closed
        assert high_water <= budget
        events, code = await slow.recv_all_until_closed(timeout=30)
    assert code == 1008
    assert_error(events[-1], "slow_consumer")
    assert len([e for e in events if e["type"] == "pong"]) < sent


async def test_a_burst_of_events_for_a_reading_client_is_not_a_slow_consumer() -> None:
    """vLLM catching up after a stall sends many events at once; a client that reads promptly
    must get them all, even with the smallest outbound buffer the configuration allows."""
    async with fake_and_proxy(outbound_queue_max=16) as (fake, proxy), connected(proxy) as c:
        await finalizing_held(fake, c, "r1", MID)
        fake.resume()  # about 150 events, most of them deltas, arrive together
        events = await c.recv_until("transcription.done", "r1")
    assert [e for e in events if e["type"] == "error"] == []
    assert texts(events, "r1") == [d for d in predict_deltas(MID) if d]


# -- vLLM silent, slow, or gone ---------------------------------------------------------------


async def test_hung_upstream_ends_the_utterance_with_no_response() -> None:
    async with fake_and_proxy(upstream_timeout_s=1.0) as (fake, proxy), connected(proxy) as c:
        frames = chunks(SHORT)
        await c.open("r1")
        for frame in frames[:20]:
            await c.append("r1", frame)
        await c.recv_until("transcription.delta", "r1")
        fake.hang()
        for frame in frames[20:40]:  # far more audio than the model's delay: vLLM owes words
            await c.append("r1", frame)
        events = await c.recv_until("error", "r1", timeout=15)
        fake.resume()  # before the proxy's new upstream socket gives up waiting for vLLM
        payload = assert_error(events[-1], "upstream_error", "r1")
        assert payload["details"]["upstream_code"] == "no_response"
        # The connection carries on: the next utterance is complete, nothing more of r1 comes.
        after = await served(c, "r2", MID)
        assert of_request(after, "r1") == []


async def test_hung_upstream_after_the_final_commit_is_detected_too() -> None:
    async with fake_and_proxy(upstream_timeout_s=1.0) as (fake, proxy), connected(proxy) as c:
        fake.hang()
        await c.utterance("r1", SHORT[: 10 * FRAME_BYTES])  # a final commit owes a done
        events = await c.recv_until("error", "r1", timeout=15)
        fake.resume()
        payload = assert_error(events[-1], "upstream_error", "r1")
        assert payload["details"]["upstream_code"] == "no_response"
        await served(c, "r2", SHORT)


async def test_a_client_pausing_mid_utterance_is_not_a_stalled_upstream() -> None:
    """200 ms of audio (less than the model's delay) then a pause longer than the upstream
    timeout: vLLM owes nothing yet, so the utterance must go on."""
    pcm = SHORT
    async with fake_and_proxy(upstream_timeout_s=0.5) as (_, proxy), connected(proxy) as c:
        first = 6400  # 200 ms
        await c.open("r1")
        await c.append("r1", pcm[:first])
        await asyncio.sleep(2.0)  # four upstream timeouts of silence from both sides
        await c.send("ping", "still-there")
        assert (await c.recv())["type"] == "pong"
        for frame in chunks(pcm[first:]):
            await c.append("r1", frame)
        await c.final("r1")
        events = await c.recv_until("transcription.done", "r1")
    assert [e for e in events if e["type"] == "error"] == []
    assert "".join(texts(events, "r1")) == predict_text(pcm)


async def test_slow_but_steady_upstream_is_not_a_stall() -> None:
    """vLLM taking 0.05 s per step, under a 0.5 s watchdog: every word arrives, no error."""
    pcm = MID[: 20 * FRAME_BYTES]
    async with (
        fake_and_proxy({"step_delay_s": 0.05}, upstream_timeout_s=0.5) as (fake, proxy),
        connected(proxy) as c,
    ):
        await served(c, "r1", pcm)
        await served(c, "r2", SHORT[: 12 * FRAME_BYTES])
    assert fake.connections_total == 1  # never replaced


async def test_upstream_killed_mid_stream_ends_every_session_and_the_service_recovers() -> None:
    async with (
        fake_and_proxy({"step_delay_s": 0.002}) as (fake, proxy),
        connected(proxy, session_id="a") as a,
        connected(proxy, session_id="b") as b,
    ):
        await a.utterance("ra", LONG[: 200 * FRAME_BYTES], final=False)
        await b.utterance("rb", MID, final=False)
        await a.recv_until("transcription.delta", "ra")
        await b.recv_until("transcription.delta", "rb")
        await fake.kill_connections(None)  # vLLM dies: no close frames
        for client, request_id in ((a, "ra"), (b, "rb")):
            events, code = await client.recv_all_until_closed()
            assert code == 1013
            assert_error(events[-2], "upstream_unavailable", request_id)
            assert_error(events[-1], "upstream_unavailable")
        await wait_for(lambda: not proxy.server.state.relays)
        async with connected(proxy) as c:
            await served(c, "r2", SHORT)


# -- browser origins -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://app.example.com/", True),  # a trailing slash is the same origin
        ("http://localhost:5173", True),
        (None, True),  # not a browser: no Origin header
        ("https://evil.example.com", False),
        ("https://app.example.com.evil.example", False),
        ("http://app.example.com", False),  # another scheme is another origin
        ("null", False),  # sandboxed iframes and file:// pages
    ],
)
async def test_allowed_origins(origin: str | None, allowed: bool) -> None:
    origins = ("https://app.example.com", "http://localhost:5173")
    headers = {"X-API-Key": TEST_KEY} | ({"Origin": origin} if origin else {})
    async with fake_and_proxy(allowed_origins=origins) as (_, proxy):
        async with connected(proxy, headers=headers, expect_created=False) as c:
            if allowed:
                assert (await c.recv())["type"] == "session.created"
                await c.send("ping", "p1")
                assert (await c.recv())["type"] == "pong"
                return
            events, code = await c.recv_all_until_closed()
        assert code == 4001
        assert len(events) == 1
        assert_error(events[0], "unauthorized")


async def test_origins_are_not_checked_when_none_are_configured() -> None:
    async with (
        fake_and_proxy() as (_, proxy),
        connected(proxy, headers={"X-API-Key": TEST_KEY, "Origin": "https://any.example"}) as c,
    ):
        await c.send("ping", "p1")
        assert (await c.recv())["type"] == "pong"


# -- logs -------------------------------------------------------------------------------------


async def test_one_summary_line_per_utterance_and_no_transcript_by_default(
    log_buffer: io.StringIO,
) -> None:
    async with (
        fake_and_proxy() as (fake, proxy),
        # The app names its session on every message, as at connect.
        connected(proxy, query="session_id=logs-1", session_id="logs-1") as c,
    ):
        await served(c, "r1", SHORT)
        await served(c, "r2", MID)
        await c.open("r3")
        await c.append("r3", SHORT[: 4 * FRAME_BYTES])
        await c.send("cancel", "r3")
        await c.recv_until("cancelled", "r3")
        fake.fail_after_deltas = 0
        await c.utterance("r4", SHORT[: 10 * FRAME_BYTES])
        await c.recv_until("error", "r4")
        await c.send("end")
        await c.recv_all_until_closed()
    lines = json_lines(log_buffer)
    summaries = {line["request_id"]: line for line in utterance_lines(lines)}
    assert sorted(summaries) == ["r1", "r2", "r3", "r4"]
    assert len(utterance_lines(lines)) == 4  # exactly one line each
    for request_id, pcm in (("r1", SHORT), ("r2", MID)):
        line = summaries[request_id]
        assert line["outcome"] == "done"
        assert line["session_id"] == "logs-1"
        assert line["audio_ms"] == len(pcm) // 32
        assert line["text_chars"] == len(predict_text(pcm))
        assert isinstance(line["ttfw_ms"], int)
        assert line["ttfw_ms"] >= 0
        assert isinstance(line["finalization_ms"], int)
        assert line["finalization_ms"] >= 0
        assert "text" not in line
    assert summaries["r3"]["outcome"] == "cancelled"
    assert summaries["r4"]["outcome"] == "error:upstream_error"
    for field in ("audio_ms", "text_chars", "ttfw_ms", "finalization_ms", "outcome"):
        assert all(field in line for line in summaries.values()), field
    whole = log_buffer.getvalue()
    for pcm in (SHORT, MID):
        assert predict_text(pcm).strip() not in whole
    assert TEST_KEY not in whole


async def test_log_transcripts_puts_the_text_on_the_utterance_line(
    log_buffer: io.StringIO,
) -> None:
    async with fake_and_proxy(log_transcripts=True) as (_, proxy), connected(proxy) as c:
        await served(c, "r1", SHORT)
        await c.send("end")
        await c.recv_all_until_closed()
    (line,) = utterance_lines(json_lines(log_buffer))
    assert line["text"] == predict_text(SHORT)
    assert line["text_chars"] == len(predict_text(SHORT))


async def test_json_log_lines_of_a_connection_carry_its_session_id(
    log_buffer: io.StringIO,
) -> None:
    async with (
        fake_and_proxy(upstream_timeout_s=1.0) as (fake, proxy),
        connected(proxy, query="session_id=json-a", session_id="json-a") as a,
    ):
        await served(a, "r1", SHORT[: 20 * FRAME_BYTES])
        fake.hang()  # makes the relay log a warning of its own (upstream_silent)
        await a.utterance("r2", SHORT[: 10 * FRAME_BYTES])
        await a.recv_until("error", "r2", timeout=15)
        fake.resume()
        await a.send("end")
        await a.recv_all_until_closed()
    lines = json_lines(log_buffer)
    ours = [line for line in lines if str(line.get("logger", "")).startswith("proxy.")]
    per_connection = [
        line
        for line in ours
        if line["event"] in ("session_opened", "session_closed", "utterance", "upstream_silent")
    ]
    assert {line["event"] for line in per_connection} == {
        "session_opened",
        "session_closed",
        "utterance",
        "upstream_silent",
    }
    for line in per_connection:
        assert line["session_id"] == "json-a", line
        assert line.get("connection_id"), line
        assert {"timestamp", "level", "logger"} <= line.keys(), line


# -- metrics ---------------------------------------------------------------------------------

DOCUMENTED = (
    "voxtral_proxy_connections_open",
    "voxtral_proxy_connections",  # counter: exposed as ..._total
    "voxtral_proxy_refusals",
    "voxtral_proxy_closes",
    "voxtral_proxy_utterances",
    "voxtral_proxy_client_messages",
    "voxtral_proxy_upstream_state",
    "voxtral_proxy_upstream_reconnects",
    "voxtral_proxy_draining",
    "voxtral_proxy_audio_seconds",
    "voxtral_proxy_time_to_first_word_seconds",
    "voxtral_proxy_finalization_latency_seconds",
    "voxtral_proxy_inbound_queue_high_water",
    "voxtral_proxy_inbound_bytes_high_water",
)


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_after_traffic(log_buffer: io.StringIO) -> None:
    secret_ids = ("metric-session-9e1", "metric-req-4b7", "metric-req-5c8", "metric-req-6d9")
    wrong_key = "wrong-metric-key-31f"
    utterances = [(secret_ids[1], SHORT), (secret_ids[2], MID[: 60 * FRAME_BYTES])]
    async with (
        fake_and_proxy() as (_, proxy),
        httpx.AsyncClient(base_url=proxy.http_url, timeout=5) as http,
    ):
        async with connected(proxy, query=f"api_key={TEST_KEY}&session_id={secret_ids[0]}") as c:
            c.session_id = secret_ids[0]
            for request_id, pcm in utterances:
                await served(c, request_id, pcm)
            await c.open(secret_ids[3])
            await c.send("cancel", secret_ids[3])
            await c.recv_until("cancelled", secret_ids[3])
            during = samples_of((await http.get("/metrics")).text)
            await c.send("end")
            await c.recv_all_until_closed()
        for how in ({"key": wrong_key}, {"headers": {"Authorization": f"Bearer {wrong_key}"}}):
            async with connected(proxy, expect_created=False, **how) as bad:
                await bad.recv_all_until_closed()
        text = (await http.get("/metrics")).text
    samples = samples_of(text)
    names = {family.name for family in text_string_to_metric_families(text)}
    for name in DOCUMENTED:
        assert name in names, name
    envelope = {"protocol": "envelope"}
    assert value(during, "voxtral_proxy_connections_open", **envelope) == 1
    assert value(samples, "voxtral_proxy_connections_open", **envelope) == 0
    assert value(samples, "voxtral_proxy_connections_total", **envelope) == 1
    assert value(samples, "voxtral_proxy_refusals_total", reason="unauthorized") == 2
    assert value(samples, "voxtral_proxy_closes_total", by="server", code="1000") == 1
    outcome = "voxtral_proxy_utterances_total"
    assert value(samples, outcome, outcome="started") == 3
    assert value(samples, outcome, outcome="done") == 2
    assert value(samples, outcome, outcome="cancelled") == 1
    assert value(samples, outcome, outcome="errored") == 0
    appends = sum(len(chunks(pcm)) for _, pcm in utterances)
    assert (
        value(
            samples,
            "voxtral_proxy_client_messages_total",
            type="input_audio_buffer.append",
            **envelope,
        )
        == appends
    )
    assert value(samples, "voxtral_proxy_client_messages_total", type="end", **envelope) == 1
    assert value(samples, "voxtral_proxy_audio_seconds_total") == pytest.approx(
        sum(len(pcm) for _, pcm in utterances) / 32000
    )
    assert value(samples, "voxtral_proxy_upstream_state", state="ready") == 1
    assert value(samples, "voxtral_proxy_upstream_state", state="down") == 0
    assert value(samples, "voxtral_proxy_draining") == 0
    assert value(samples, "voxtral_proxy_upstream_reconnects_total") == 1  # the cancel
    ttfw = "voxtral_proxy_time_to_first_word_seconds_count"
    assert value(samples, ttfw, audio_format="pcm16_16000", turn_detection="client") == 2
    assert value(samples, "voxtral_proxy_finalization_latency_seconds_count") == 2
    assert value(samples, "voxtral_proxy_finalization_latency_seconds_sum") > 0
    assert value(samples, "voxtral_proxy_inbound_queue_high_water") >= 0
    # Labels are closed sets: no key, session id or request id anywhere in the exposition.
    whole_logs = log_buffer.getvalue()
    for secret in (TEST_KEY, wrong_key):
        assert secret not in text
        assert secret not in whole_logs
    for secret in secret_ids:
        assert secret not in text
    for (_, labels), _ in samples.items():
        for _, label_value in labels:
            assert "sess_" not in label_value


# -- keys never leak --------------------------------------------------------------------------

LEAK_KEYS = ("leak-key-one-6f2b91d4", "leak-key-two-0a7c53e8")
LEAK_WRONG = ("leak-wrong-header-3d3d", "leak-wrong-bearer-4e4e", "leak-wrong-query-5f5f")


@pytest.mark.parametrize("log_buffer", ["INFO", "DEBUG"], indirect=True)
async def test_no_key_in_logs_metrics_or_error_texts(log_buffer: io.StringIO) -> None:
    """Mixed traffic: both configured keys in every place, wrong and partial keys, a brute-force
    lockout. Neither the log lines (the test's own WebSocket client's lines aside) nor /metrics
    nor any event sent to a client carries a key, whole or in part."""
    pcm = SHORT[: 12 * FRAME_BYTES]
    sent_to_clients: list[dict[str, Any]] = []
    async with (
        fake_and_proxy(api_keys=LEAK_KEYS, max_auth_failures_per_window=6) as (_, proxy),
        httpx.AsyncClient(base_url=proxy.http_url, timeout=5) as http,
    ):
        good = [
            {"query": f"api_key={LEAK_KEYS[0]}&session_id=leak-1"},
            {"headers": {"X-API-Key": LEAK_KEYS[1]}},
            {"headers": {"Authorization": f"Bearer {LEAK_KEYS[0]}"}},
        ]
        for number, how in enumerate(good):
            async with connected(proxy, **how) as client:
                await served(client, f"r{number}", pcm)
                await client.send("end")
                events, _ = await client.recv_all_until_closed()
                sent_to_clients += events
        bad = [
            {"headers": {"X-API-Key": LEAK_WRONG[0]}},
            {"headers": {"Authorization": f"Bearer {LEAK_WRONG[1]}"}},
            {"query": f"api_key={LEAK_WRONG[2]}"},
            {"query": f"api_key={LEAK_KEYS[0][:-2]}"},
            {"headers": {"X-API-Key": LEAK_KEYS[1][2:]}},
            {"headers": {"X-API-Key": LEAK_KEYS[1].upper()}},
            {"query": f"api_key={LEAK_WRONG[2]}"},  # over the failure limit by now: rate_limited
        ]
        for how in bad:
            async with connected(proxy, expect_created=False, **how) as client:
                events, _ = await client.recv_all_until_closed()
                sent_to_clients += events
        assert sent_to_clients[-1]["payload"]["code"] == "rate_limited"
        metrics_text = (await http.get("/metrics")).text
    server_lines = [
        line
        for line in log_buffer.getvalue().splitlines()
        if json.loads(line).get("logger") != "websockets.client"  # the test's own client
    ]
    assert any('"utterance"' in line for line in server_lines)
    # Whole keys, and their distinctive tails (a prefix or suffix printed would show them).
    secrets = [*LEAK_KEYS, *LEAK_WRONG, *(key[-8:] for key in LEAK_KEYS)]
    client_text = orjson.dumps(sent_to_clients).decode()
    for secret in secrets:
        assert secret not in metrics_text, secret
        assert secret not in client_text, secret
        for line in server_lines:
            assert secret not in line, line
