"""How each way a session ends is accounted for (issue 25): ``closes_total`` by who closed and
with which code, the outcome of the utterance in flight, and the ``session_closed`` and
``utterance`` log lines. Only a real loss of vLLM counts as vLLM failing; a client leaving is
recorded as the client leaving. Real sockets, the fake vLLM behind."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from devtools.fake_vllm import FRAME_BYTES, FakeVllm
from tests.harness import (
    Client,
    RunningProxy,
    b64,
    chunks,
    connected,
    fake_and_proxy,
    json_lines,
    load_pcm,
    upstream_commits,
    wait_for,
)

SHORT = load_pcm("short.wav")
OTHER = load_pcm("mid.wav")[: 50 * FRAME_BYTES]
ENDINGS = ("done", "cancelled", "errored", "abandoned")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def samples_once_closed(proxy: RunningProxy) -> Samples:
    """The proxy's metrics once every session has ended (read in the process: a draining
    server answers no HTTP)."""
    state = proxy.server.state
    await wait_for(lambda: state.slots_taken == 0)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(state.metrics.render().decode())
        for sample in family.samples
    }


def closes(samples: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["by"], dict(labels)["code"]): value
        for (name, labels), value in samples.items()
        if name == "voxtral_proxy_closes_total" and value
    }


def assert_accounted(
    samples: Samples,
    buffer: io.StringIO,
    *,
    by: str,
    code: str,
    outcome: str,
    error: str | None = None,
    utterances: int = 1,
) -> None:
    """One session closed ``by`` whom with ``code`` ("none": no close code); its
    ``utterances`` all ended in ``outcome`` (``error``: the code they errored with)."""
    assert closes(samples) == {(by, code): 1}
    ended = {
        name: samples.get(("voxtral_proxy_utterances_total", (("outcome", name),)), 0.0)
        for name in ENDINGS
    }
    assert ended == {name: utterances if name == outcome else 0 for name in ENDINGS}
    lines = json_lines(buffer)
    [closed] = [line for line in lines if line.get("event") == "session_closed"]
    assert closed["closed_by"] == by
    assert closed["close_code"] == (None if code == "none" else int(code))
    assert closed[outcome] == utterances
    logged = [line["outcome"] for line in lines if line.get("event") == "utterance"]
    assert logged == [f"error:{error}" if error else outcome] * utterances
    if error != "upstream_unavailable":
        assert "upstream_unavailable" not in buffer.getvalue()


async def mid_utterance(fake: FakeVllm, client: Client, pcm: bytes = OTHER) -> None:
    """Opens r1 and streams ``pcm`` without finalizing; returns once vLLM runs it."""
    await client.utterance("r1", pcm, final=False)
    await wait_for(lambda: upstream_commits(fake, final=False) == 1)


async def send_quietly(client: Client, kind: str, request_id: str, payload: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        await client.send(kind, request_id, payload)


# -- the client leaves ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001])
async def test_a_client_closing_mid_utterance_is_recorded_with_its_code(
    log_buffer: io.StringIO, code: int
) -> None:
    async with fake_and_proxy() as (fake, proxy):
        async with connected(proxy) as client:
            await mid_utterance(fake, client)
            await client.ws.close(code)
        samples = await samples_once_closed(proxy)
    assert_accounted(samples, log_buffer, by="client", code=str(code), outcome="abandoned")


async def test_a_client_vanishing_mid_utterance_is_recorded_without_a_code(
    log_buffer: io.StringIO,
) -> None:
    async with fake_and_proxy() as (fake, proxy):
        async with connected(proxy) as client:
            await mid_utterance(fake, client)
            client.ws.transport.abort()  # no close frame
        samples = await samples_once_closed(proxy)
    assert_accounted(samples, log_buffer, by="client", code="none", outcome="abandoned")


# -- the server closes ------------------------------------------------------------------------


async def test_idle_timeout_is_the_servers_4000(log_buffer: io.StringIO) -> None:
    async with fake_and_proxy(idle_timeout_s=0.5) as (fake, proxy):
        async with connected(proxy) as client:
            await mid_utterance(fake, client)
            await client.recv_all_until_closed()
        samples = await samples_once_closed(proxy)
    assert_accounted(
        samples, log_buffer, by="server", code="4000", outcome="errored", error="idle_timeout"
    )


async def test_a_refusal_at_capacity_closes_no_session(log_buffer: io.StringIO) -> None:
    async with fake_and_proxy(max_connections=1) as (_, proxy):
        async with connected(proxy, session_id="first") as first:
            async with connected(proxy, expect_created=False) as second:
                events, code = await second.recv_all_until_closed()
            assert (code, events[0]["payload"]["code"]) == (4002, "server_at_capacity")
            await first.send("end")
            await first.recv_all_until_closed()
        samples = await samples_once_closed(proxy)
    refused = ("voxtral_proxy_refusals_total", (("reason", "server_at_capacity"),))
    assert samples[refused] == 1
    # The one session that ran closed normally; the refused connection is no session.
    assert closes(samples) == {("server", "1000"): 1}
    lines = json_lines(log_buffer)
    assert [line["reason"] for line in lines if line.get("event") == "connection_refused"] == [
        "server_at_capacity"
    ]
    assert len([line for line in lines if line.get("event") == "session_closed"]) == 1


async def test_max_duration_is_the_servers_4003(log_buffer: io.StringIO) -> None:
    async with fake_and_proxy(max_duration_s=1.0, drain_timeout_s=5.0) as (fake, proxy):
        async with connected(proxy) as client:
            await mid_utterance(fake, client)
            await client.recv_all_until_closed()
        samples = await samples_once_closed(proxy)
    assert_accounted(samples, log_buffer, by="server", code="4003", outcome="done")


async def test_a_full_inbound_queue_is_the_servers_4004(log_buffer: io.StringIO) -> None:
    async with fake_and_proxy(inbound_queue_max=8) as (fake, proxy):
        async with connected(proxy) as client:
            fake.hang()  # r1's done never comes: r2's audio is held in the proxy
            await client.utterance("r1", OTHER[: 4 * FRAME_BYTES])
            await client.open("r2")
            for piece in chunks(SHORT)[:20]:
                await send_quietly(client, "input_audio_buffer.append", "r2", {"audio": b64(piece)})
            await client.recv_all_until_closed()
            fake.resume()
        samples = await samples_once_closed(proxy)
    assert_accounted(
        samples,
        log_buffer,
        by="server",
        code="4004",
        outcome="errored",
        error="inbound_queue_full",
        utterances=2,
    )


async def test_the_rate_limit_is_the_servers_4008(log_buffer: io.StringIO) -> None:
    async with fake_and_proxy(max_messages_per_window=5) as (fake, proxy):
        async with connected(proxy) as client:
            await mid_utterance(fake, client, OTHER[: 3 * FRAME_BYTES])
            for piece in chunks(SHORT)[:60]:
                await send_quietly(client, "input_audio_buffer.append", "r1", {"audio": b64(piece)})
            await client.recv_all_until_closed()
        samples = await samples_once_closed(proxy)
    assert_accounted(
        samples, log_buffer, by="server", code="4008", outcome="errored", error="rate_limited"
    )


async def test_a_drain_delivers_then_is_the_servers_1001(log_buffer: io.StringIO) -> None:
    async with fake_and_proxy(drain_timeout_s=5.0) as (fake, proxy):
        async with connected(proxy) as client:
            await mid_utterance(fake, client)
            proxy.server.begin_shutdown()
            await client.recv_all_until_closed()
        samples = await samples_once_closed(proxy)
    assert_accounted(samples, log_buffer, by="server", code="1001", outcome="done")


async def test_only_a_real_upstream_loss_is_the_servers_1013(log_buffer: io.StringIO) -> None:
    async with fake_and_proxy() as (fake, proxy):
        async with connected(proxy) as client:
            fake.die_after_deltas = 5
            await client.utterance("r1", SHORT)
            await client.recv_all_until_closed()
        samples = await samples_once_closed(proxy)
    assert fake.deaths == 1
    assert_accounted(
        samples,
        log_buffer,
        by="server",
        code="1013",
        outcome="errored",
        error="upstream_unavailable",
    )
