"""Load: 300 concurrent streams through the real proxy and the fake vLLM for 60 s.

Processes: the fake vLLM (``python -m devtools.fake_vllm``), the proxy (``python -m proxy``,
configured by its environment variables), and ``CLIENT_WORKERS`` client processes that each drive a
share of the streams. Every stream is one WebSocket that speaks for the whole run: several
utterances, each a distinct slice of ``samples/long.wav`` sent as real-time-paced 80 ms appends and
a final commit, with a short pause between utterances, then ``end``.

What must hold: every utterance ends in exactly one ``transcription.done`` (no error, no
cancellation); each utterance's deltas are exactly the non-empty deltas the fake produces for its
audio (``predict_deltas``), in order, none lost or duplicated; ``done.text`` is their concatenation;
every session ends with ``session.ended`` and close 1000; the proxy's metrics and its per-utterance
log lines account for every utterance.

Reported (printed, and written to ``test-artifacts/load.json``), never asserted: delta latency,
pacing lag of the clients, CPU time of each process, and the proxy's RSS before, during and after.

Delta latency is measured per non-empty delta: from the moment the client sent the message that
made the fake emit that token (the append that completed its frame plus the model delay, per the
fake's token model: token i goes out once ``(bytes - 80) // 2560 - delay_frames >= i``; tokens past
the last append go out on the final commit) to the moment the client received the delta. It covers
client -> proxy -> fake -> proxy -> client, including any queueing in the three processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import random
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devtools.fake_vllm import predict_deltas
from devtools.processes import stop_process
from tests.harness import b64, load_pcm

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "test-artifacts" / "load.json"
HOST = "127.0.0.1"
KEY = "load-test-key-51d0e2"

STREAMS = 300
DURATION_S = 60.0
CLIENT_WORKERS = 2
DELAY_MS = 480
FRAME_S = 0.080
FRAME_BYTES = 2560
LOOKAHEAD_BYTES = 80  # the fake's 2.5 ms look-ahead (see its token model)
BYTES_PER_S = 32_000
UTTERANCE_S = (3.0, 8.0)
PAUSE_S = (0.2, 1.0)

# Hang guards only: nothing below is an expectation about speed.
START_GUARD_S = 30.0
CONNECT_GUARD_S = 60.0
DONE_GUARD_S = 60.0
RUN_GUARD_S = DURATION_S + 150.0


# ---------------------------------------------------------------------------------------------
# What each stream says (deterministic per stream index, so a failure can be replayed)


@dataclass(frozen=True, slots=True)
class UtterancePlan:
    request_id: str
    offset: int  # byte offset into long.wav's PCM
    nbytes: int
    pause_s: float  # silence before the utterance opens


def plan_stream(index: int, pcm_len: int) -> list[UtterancePlan]:
    """Utterances filling about DURATION_S: random lengths, slices and pauses."""
    rng = random.Random(index)
    plans: list[UtterancePlan] = []
    used = 0.0
    while True:
        pause = rng.uniform(*PAUSE_S)
        seconds = rng.uniform(*UTTERANCE_S)
        left = DURATION_S - used - pause
        if left < 1.0:
            break
        seconds = min(seconds, left)
        nbytes = int(seconds * BYTES_PER_S) // 2 * 2
        offset = rng.randrange(0, (pcm_len - nbytes) // 2) * 2
        plans.append(UtterancePlan(f"s{index}-u{len(plans)}", offset, nbytes, pause))
        used += pause + seconds
    return plans


def tokens_after(audio_bytes: int) -> int:
    """How many tokens the fake has emitted once it holds ``audio_bytes`` (before the final)."""
    return max(0, (audio_bytes - LOOKAHEAD_BYTES) // FRAME_BYTES - DELAY_MS // 80)


# ---------------------------------------------------------------------------------------------
# Client worker (runs in its own process)


@dataclass(frozen=True, slots=True)
class WorkerJob:
    ws_url: str
    api_key: str
    streams: tuple[int, ...]


@dataclass(slots=True)
class WorkerReport:
    streams: int = 0
    utterances: int = 0
    events: int = 0
    deltas: int = 0
    latencies_s: list[float] = field(default_factory=list)
    send_lag_s: list[float] = field(default_factory=list)  # actual send time minus schedule
    failures: list[str] = field(default_factory=list)
    cpu_s: float = 0.0


@dataclass(slots=True)
class _Utterance:
    plan: UtterancePlan
    send_times: list[float] = field(default_factory=list)  # appends, then the final commit
    cum_bytes: list[int] = field(default_factory=list)
    deltas: list[tuple[str, float]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class _Stream:
    def __init__(self, index: int, pcm: bytes, report: WorkerReport) -> None:
        self.index = index
        self.pcm = pcm
        self.report = report
        self.session_id = f"load-{index}"
        self.plans = plan_stream(index, len(pcm))
        self.utterances: dict[str, _Utterance] = {}
        self.ws: ClientConnection | None = None
        self.stray: list[dict[str, Any]] = []
        self.ended_with: tuple[bool, int | None] = (False, None)

    def fail(self, what: str) -> None:
        self.report.failures.append(f"stream {self.index}: {what}")

    def message(self, kind: str, request_id: str | None, payload: dict[str, Any] | None) -> str:
        body: dict[str, Any] = {"type": kind, "session_id": self.session_id}
        if request_id is not None:
            body["request_id"] = request_id
        if payload is not None:
            body["payload"] = payload
        return orjson.dumps(body).decode()

    async def connect(self, ws_url: str, api_key: str, gate: asyncio.Semaphore) -> None:
        async with gate, asyncio.timeout(CONNECT_GUARD_S):
            ws = await connect(
                f"{ws_url}?session_id={self.session_id}",
                additional_headers={"X-API-Key": api_key},
                compression=None,
                max_size=None,
                open_timeout=None,
                ping_interval=None,
            )
            created = orjson.loads(await ws.recv())
        self.report.events += 1
        if created.get("type") != "session.created":
            self.fail(f"first event {created}")
        self.ws = ws

    async def run(self, start: float) -> None:
        ws = self.ws
        assert ws is not None
        receiver = asyncio.create_task(self._receive(ws))
        try:
            await _sleep_until(start)
            for plan in self.plans:
                if not await self._speak(ws, plan):
                    break
            await ws.send(self.message("end", None, None))
            async with asyncio.timeout(DONE_GUARD_S):
                await asyncio.shield(receiver)
        except (ConnectionClosed, TimeoutError) as exc:
            self.fail(f"{type(exc).__name__} while streaming: {exc}")
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
            await ws.close()
        self._check()

    async def _speak(self, ws: ClientConnection, plan: UtterancePlan) -> bool:
        utterance = _Utterance(plan)
        rid = plan.request_id
        self.utterances[rid] = utterance
        audio = self.pcm[plan.offset : plan.offset + plan.nbytes]
        appends = [
            self.message("input_audio_buffer.append", rid, {"audio": b64(piece)})
            for piece in (audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES))
        ]
        await asyncio.sleep(plan.pause_s)
        await ws.send(self.message("input_audio_buffer.commit", rid, {"final": False}))
        start = time.monotonic()
        sent_bytes = 0
        for k, text in enumerate(appends):
            due = start + k * FRAME_S
            await _sleep_until(due)
            now = time.monotonic()
            self.report.send_lag_s.append(now - due)
            await ws.send(text)
            sent_bytes = min(sent_bytes + FRAME_BYTES, len(audio))
            utterance.send_times.append(now)
            utterance.cum_bytes.append(sent_bytes)
        # The final commit follows the last frame at once, as a live client's would.
        utterance.send_times.append(time.monotonic())
        await ws.send(self.message("input_audio_buffer.commit", rid, {"final": True}))
        try:
            async with asyncio.timeout(DONE_GUARD_S):
                await utterance.ended.wait()
        except TimeoutError:
            self.fail(f"{rid}: no end within {DONE_GUARD_S:g} s of its final commit")
            return False
        return True

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                now = time.monotonic()
                event = orjson.loads(raw)
                self.report.events += 1
                kind, rid = event.get("type"), event.get("request_id")
                utterance = self.utterances.get(rid) if isinstance(rid, str) else None
                if kind == "transcription.delta" and utterance is not None:
                    utterance.deltas.append((event["payload"]["delta"], now))
                elif kind in ("transcription.done", "cancelled", "error") and utterance:
                    utterance.ends.append(event)
                    utterance.ended.set()
                else:
                    self.stray.append(event)
        except ConnectionClosed as closed:
            self.ended_with = (True, closed.rcvd.code if closed.rcvd else None)
            return
        self.ended_with = (True, ws.close_code)

    def _check(self) -> None:
        report = self.report
        report.streams += 1
        kinds = [e.get("type") for e in self.stray]
        if kinds != ["session.ended"]:
            self.fail(f"events outside utterances: {self.stray[:5]}")
        if self.ended_with != (True, 1000):
            self.fail(f"ended with {self.ended_with}, expected close 1000")
        if len(self.utterances) != len(self.plans):
            self.fail(f"spoke {len(self.utterances)} of {len(self.plans)} utterances")
        for rid, utterance in self.utterances.items():
            report.utterances += 1
            report.deltas += len(utterance.deltas)
            problem = _utterance_problem(self.pcm, utterance, report.latencies_s)
            if problem:
                self.fail(f"{rid}: {problem}")


def _utterance_problem(pcm: bytes, utterance: _Utterance, latencies: list[float]) -> str | None:
    plan = utterance.plan
    if len(utterance.ends) != 1 or utterance.ends[0]["type"] != "transcription.done":
        return f"ended with {utterance.ends}, expected exactly one transcription.done"
    audio = pcm[plan.offset : plan.offset + plan.nbytes]
    tokens = predict_deltas(audio, delay_ms=DELAY_MS)
    expected = [(i, text) for i, text in enumerate(tokens, start=1) if text]
    received = [text for text, _ in utterance.deltas]
    if received != [text for _, text in expected]:
        return f"deltas {received} != expected {[text for _, text in expected]}"
    done_text = utterance.ends[0]["payload"]["text"]
    if done_text != "".join(received):
        return f"done text {done_text!r} != the concatenation of its deltas"
    # Latency from the send that let the fake emit each token (see the module docstring).
    finals = len(utterance.send_times) - 1
    k = 0
    for (index, _), (_, received_at) in zip(expected, utterance.deltas, strict=True):
        while k < finals and tokens_after(utterance.cum_bytes[k]) < index:
            k += 1
        latencies.append(received_at - utterance.send_times[k])
    return None


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _drive(job: WorkerJob) -> WorkerReport:
    report = WorkerReport()
    pcm = load_pcm("long.wav")
    streams = [_Stream(index, pcm, report) for index in job.streams]
    gate = asyncio.Semaphore(16)
    connected = await asyncio.gather(
        *(s.connect(job.ws_url, job.api_key, gate) for s in streams), return_exceptions=True
    )
    for stream, outcome in zip(streams, connected, strict=True):
        if isinstance(outcome, BaseException):
            stream.fail(f"connect failed: {type(outcome).__name__}: {outcome}")
    live = [s for s in streams if s.ws is not None]
    # Spread the streams evenly over one 80 ms period so the load is smooth.
    begin = time.monotonic() + 0.5
    cpu_before = time.process_time()
    await asyncio.gather(
        *(s.run(begin + i * FRAME_S / max(len(live), 1)) for i, s in enumerate(live))
    )
    report.cpu_s = time.process_time() - cpu_before
    return report


def run_worker(job: WorkerJob) -> WorkerReport:
    """Entry point of a client process."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_drive(job))


# ---------------------------------------------------------------------------------------------
# The fake and the proxy as child processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_GUARD_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"{proc.args} exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"{url} never answered 200: {log_path.read_text()[-2000:]}")


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------------------------------------
# The test


@pytest.mark.load
@pytest.mark.timeout(RUN_GUARD_S + 120)
def test_300_streams_for_60_seconds(tmp_path: Path) -> None:
    fake_port, proxy_port = _free_port(), _free_port()
    fake_log, proxy_log = tmp_path / "fake.log", tmp_path / "proxy.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXTRAL_", "WS_", "LOG_"))}
    with fake_log.open("wb") as out:
        fake = subprocess.Popen(
            [sys.executable, "-m", "devtools.fake_vllm", "--host", HOST, "--port", str(fake_port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proxy_env = {
        **env,
        "VOXTRAL_UPSTREAM_URL": f"ws://{HOST}:{fake_port}/v1/realtime",
        "VOXTRAL_API_KEY": KEY,
        "SERVER_BIND_HOST": HOST,
        "SERVER_PORT": str(proxy_port),
        "MAX_CONCURRENT_CONNECTIONS": "400",
        "VOXTRAL_TRANSCRIPTION_DELAY_MS": str(DELAY_MS),
        "LOG_LEVEL": "INFO",
    }
    proxy: subprocess.Popen[bytes] | None = None
    try:
        _wait_http(f"http://{HOST}:{fake_port}/health", fake, fake_log)
        with proxy_log.open("wb") as out:
            proxy = subprocess.Popen(
                [sys.executable, "-m", "proxy"],
                cwd=ROOT,
                env=proxy_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://{HOST}:{proxy_port}"
        _wait_http(f"{base}/readyz", proxy, proxy_log)
        summary = _run_load(proxy, fake, f"ws://{HOST}:{proxy_port}/api/asr-streaming", base)
    finally:
        if proxy is not None:
            stop_process(proxy, 30)
        stop_process(fake, 30)

    reports, figures = summary
    # The proxy's own accounting, read after it drained and exited: one summary line each.
    log_lines = [json.loads(line) for line in proxy_log.read_text().splitlines() if line[:1] == "{"]
    utterance_lines = [line for line in log_lines if line.get("event") == "utterance"]
    figures["proxy_log_utterance_lines"] = len(utterance_lines)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")
    print("\nload test:", json.dumps(figures, indent=2))

    failures = [failure for report in reports for failure in report.failures]
    assert not failures, f"{len(failures)} failures, first ones: {failures[:10]}"
    assert figures["streams"] == STREAMS
    assert figures["peak_connections"] == STREAMS
    expected_utterances = sum(
        len(plan_stream(i, len(load_pcm("long.wav")))) for i in range(STREAMS)
    )
    assert figures["utterances"] == expected_utterances
    assert figures["metrics_utterances_done"] == expected_utterances
    assert figures["metrics_utterances_started"] == expected_utterances
    assert [line["outcome"] for line in utterance_lines] == ["done"] * expected_utterances
    assert all(line["text_chars"] >= 0 and line["audio_ms"] > 0 for line in utterance_lines)


def _run_load(
    proxy: subprocess.Popen[bytes], fake: subprocess.Popen[bytes], ws_url: str, base: str
) -> tuple[list[WorkerReport], dict[str, Any]]:
    rss_before = _rss_kib(proxy.pid)
    cpu_before = {"proxy": _cpu_s(proxy.pid), "fake": _cpu_s(fake.pid)}
    jobs = [
        WorkerJob(ws_url, KEY, tuple(range(w, STREAMS, CLIENT_WORKERS)))
        for w in range(CLIENT_WORKERS)
    ]
    rss_peak, peak_connections = rss_before, 0
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with (
        concurrent.futures.ProcessPoolExecutor(len(jobs), mp_context=context) as pool,
        httpx.Client(timeout=5.0) as http,
    ):
        futures = [pool.submit(run_worker, job) for job in jobs]
        while not all(f.done() for f in futures):
            assert time.monotonic() - started < RUN_GUARD_S, "the load run did not finish"
            concurrent.futures.wait(futures, timeout=1.0)
            rss_peak = max(rss_peak, _rss_kib(proxy.pid))
            with contextlib.suppress(httpx.HTTPError):
                connections = http.get(f"{base}/healthz").json()["connections"]
                peak_connections = max(peak_connections, connections)
        reports = [f.result() for f in futures]
        wall = time.monotonic() - started
        # Let the proxy finish closing the last sockets before the "after" figures.
        deadline = time.monotonic() + 10
        while http.get(f"{base}/healthz").json()["connections"] and time.monotonic() < deadline:
            time.sleep(0.1)
        metrics_text = http.get(f"{base}/metrics").text
    rss_after = _rss_kib(proxy.pid)
    latencies = [x for r in reports for x in r.latencies_s]
    lags = [x for r in reports for x in r.send_lag_s]
    utterances_metric = "voxtral_proxy_utterances_total"
    figures: dict[str, Any] = {
        "streams": sum(r.streams for r in reports),
        "utterances": sum(r.utterances for r in reports),
        "events": sum(r.events for r in reports),
        "deltas": sum(r.deltas for r in reports),
        "wall_s": round(wall, 1),
        "delta_latency_ms": {
            "p50": _ms(_percentile(latencies, 0.50)),
            "p99": _ms(_percentile(latencies, 0.99)),
            "max": _ms(max(latencies, default=None)),
        },
        "client_send_lag_ms": {
            "p50": _ms(_percentile(lags, 0.50)),
            "p99": _ms(_percentile(lags, 0.99)),
        },
        "proxy_rss_kib": {"before": rss_before, "peak": rss_peak, "after": rss_after},
        "peak_connections": peak_connections,
        "cpu_s": {
            "proxy": round(_cpu_s(proxy.pid) - cpu_before["proxy"], 1),
            "fake": round(_cpu_s(fake.pid) - cpu_before["fake"], 1),
            "clients": round(sum(r.cpu_s for r in reports), 1),
        },
        "metrics_utterances_started": _metric(
            metrics_text, utterances_metric, '{outcome="started"}'
        ),
        "metrics_utterances_done": _metric(metrics_text, utterances_metric, '{outcome="done"}'),
        "metrics_inbound_queue_high_water": _metric(
            metrics_text, "voxtral_proxy_inbound_queue_high_water"
        ),
        "failures": sum(len(r.failures) for r in reports),
    }
    return reports, figures
