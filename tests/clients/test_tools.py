"""The tools as users run them (`python -m clients.<tool>`), against the real proxy and the fake
(and, where only the wire shows what was sent, the recording peer)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from clients.audio import TELEPHONY_FORMAT, load_audio, load_pcm
from clients.bench import auto_levels
from clients.cli import sample
from clients.report import CSV_COLUMNS, STAT_METRICS
from clients.stats import STAT_KEYS
from clients.warmup import NO_WORDS_RIGHT, NO_WORDS_RIGHT_WER
from devtools.fake_vllm import FakeVllm, predict_text
from proxy.audio_convert import AudioConverter
from proxy.audio_format import AudioFormat, Encoding
from tests.clients.conftest import recording_peer, run_tool
from tests.harness import RunningProxy, serve_proxy

LEVEL_KEYS = {
    "concurrency",
    "n",
    "ok",
    "capacity_refusals",
    "errors",
    "error_codes",
    "wall_s",
    "audio_s",
    "throughput_x",
    "utterances_per_s",
    "wer_mean",
    "utterances",
    *STAT_METRICS,
}
UTTERANCE_KEYS = {
    "status",
    "error_code",
    "error",
    "connect_ms",
    "ttfw_ms",
    "finalize_ms",
    "rtf",
    "audio_s",
    "wer",
}


async def test_warmup_prints_the_predicted_text(proxy: RunningProxy) -> None:
    run = await run_tool(
        "warmup",
        "--server",
        proxy.ws_url,
        "--file",
        str(sample("short.wav")),
        "--no-pace",
        api_key=proxy.api_key,
    )
    assert run.returncode == 0, run.stderr
    expected = predict_text(load_pcm(sample("short.wav"))).strip()
    assert expected
    lines = dict(line.split(maxsplit=1) for line in run.stdout.splitlines() if " " in line)
    assert lines["text"] == expected
    assert lines["status"] == "done"
    for label in ("ttfw", "finalize", "rtf", "wer"):
        assert lines[label] != "-"
    # The fake's words, like the dummy model's, match nothing: the report says why.
    wer = float(lines["wer"].split()[0])
    assert wer >= NO_WORDS_RIGHT_WER
    assert lines["wer"] == f"{wer:.3f} ({NO_WORDS_RIGHT})"


async def test_the_tools_read_the_key_from_the_env_file_as_make_up_does(
    proxy: RunningProxy, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"# the service's settings\nexport VOXTRAL_API_KEY='{proxy.api_key},old'\n")
    args = ("--server", proxy.ws_url, "--file", str(sample("short.wav")), "--no-pace", "--json")
    run = await run_tool("warmup", *args, env_file=env_file)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "done"
    # The environment wins over the file, as it does for `make up`.
    refused = await run_tool("warmup", *args, env_file=env_file, api_key="k-wrong")
    assert "unauthorized" in refused.stderr


async def test_warmup_json_and_default_file(proxy: RunningProxy) -> None:
    run = await run_tool(
        "warmup", "--server", proxy.ws_url, "--speed", "50", "--json", api_key=proxy.api_key
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["file"].endswith("mid.wav")
    assert report["text"] == predict_text(load_pcm(sample("mid.wav")))
    assert report["audio_s"] == 11.0
    assert report["chunks"] == 138
    assert report["ttfw_ms"] is not None
    assert report["finalize_ms"] is not None
    assert report["wer"] >= 0


async def test_remote_uses_the_given_scheme_and_key(proxy: RunningProxy) -> None:
    run = await run_tool(
        "remote",
        "--server",
        proxy.ws_url,
        "--file",
        str(sample("short.wav")),
        "--no-pace",
        "--json",
        api_key=proxy.api_key,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["text"] == predict_text(load_pcm(sample("short.wav")))

    bad_key = "k-7z9q-not-valid"
    refused = await run_tool("remote", "--server", proxy.ws_url, "--no-pace", api_key=bad_key)
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert "unauthorized" in refused.stderr
    assert "(close 4001)" in refused.stderr
    assert bad_key not in refused.stderr


async def test_convo_gets_both_dones_in_order(proxy: RunningProxy) -> None:
    files = [sample("mid.wav"), sample("short.wav")]
    run = await run_tool(
        "convo",
        "--server",
        proxy.ws_url,
        "--file",
        str(files[0]),
        "--file",
        str(files[1]),
        "--pause",
        "0.2",
        "--no-pace",
        "--json",
        api_key=proxy.api_key,
    )
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["request_id"] for r in results] == ["convo-1", "convo-2"]
    assert [r["status"] for r in results] == ["done", "done"]
    assert [r["text"] for r in results] == [predict_text(load_pcm(f)) for f in files]


async def test_idle_sees_4000(fake: FakeVllm) -> None:
    async with serve_proxy(fake.url, idle_timeout_s=1.0) as proxy:
        run = await run_tool(
            "idle", "--server", proxy.ws_url, "--grace", "5", api_key=proxy.api_key
        )
    assert run.returncode == 0, run.stderr
    assert "closed 4000 (idle_timeout)" in run.stdout


async def test_idle_fails_when_the_server_has_no_idle_timeout(fake: FakeVllm) -> None:
    async with serve_proxy(fake.url, idle_timeout_s=0.0) as proxy:
        run = await run_tool("idle", "--server", proxy.ws_url, api_key=proxy.api_key)
    assert run.returncode == 1
    assert "no idle timeout" in run.stderr


def _read_outputs(out_dir: Path, name: str) -> tuple[dict[str, Any], list[dict[str, str]], bytes]:
    document = json.loads((out_dir / f"{name}.json").read_text())
    with (out_dir / f"{name}.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return document, rows, (out_dir / f"{name}.png").read_bytes()


async def test_bench_sweep_writes_json_csv_png(proxy: RunningProxy, tmp_path: Path) -> None:
    run = await run_tool(
        "bench",
        "--server",
        proxy.ws_url,
        "--file",
        str(sample("short.wav")),
        "--sweep",
        "1,3",
        "--no-pace",
        "--stagger",
        "0",
        "--settle",
        "0.2",
        "--out-dir",
        str(tmp_path),
        "--name",
        "tiny",
        "--quiet",
        api_key=proxy.api_key,
    )
    assert run.returncode == 0, run.stderr
    document, rows, png = _read_outputs(tmp_path, "tiny")

    assert {"tool", "schema", "server", "file", "audio_s", "pacing", "levels"} <= document.keys()
    levels = document["levels"]
    assert [level["concurrency"] for level in levels] == [1, 3]
    for level in levels:
        assert level.keys() >= LEVEL_KEYS
        assert (level["ok"], level["capacity_refusals"], level["errors"]) == (level["n"], 0, 0)
        for metric in STAT_METRICS:
            assert set(level[metric]) == set(STAT_KEYS)
            assert all(level[metric][key] is not None for key in STAT_KEYS)
        assert level["throughput_x"] > 0
        assert level["wer_mean"] is not None  # short.wav has a reference transcript
        assert len(level["utterances"]) == level["n"]
        assert all(u.keys() >= UTTERANCE_KEYS for u in level["utterances"])

    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["concurrency"] for row in rows] == ["1", "3"]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    table = run.stdout.splitlines()
    assert any(line.split()[:3] == ["3", "3", "3"] for line in table)
    assert f"wrote {tmp_path / 'tiny.png'}" in run.stdout


async def test_bench_auto_sweeps_up_to_the_servers_capacity(fake: FakeVllm, tmp_path: Path) -> None:
    async with serve_proxy(fake.url, max_connections=3) as proxy:
        run = await run_tool(
            "bench",
            "--server",
            proxy.ws_url,
            "--file",
            str(sample("short.wav")),
            "--sweep",
            "auto",
            "--no-pace",
            "--settle",
            "0.2",
            "--out-dir",
            str(tmp_path),
            "--name",
            "auto",
            "--quiet",
            api_key=proxy.api_key,
        )
    assert run.returncode == 0, run.stderr
    assert "sweep 1,3: up to the server's capacity, 3 streams" in run.stderr
    document, _, _ = _read_outputs(tmp_path, "auto")
    levels = document["levels"]
    assert [level["concurrency"] for level in levels] == [1, 3]
    assert all(level["capacity_refusals"] == 0 for level in levels)


def test_auto_levels_stop_at_the_capacity() -> None:
    assert auto_levels(1) == [1]
    assert auto_levels(21) == [1, 8, 21]
    assert auto_levels(110) == [1, 8, 32, 64, 100, 110]
    assert auto_levels(100) == [1, 8, 32, 64, 100]


async def test_bench_counts_capacity_refusals_apart(fake: FakeVllm, tmp_path: Path) -> None:
    async with serve_proxy(fake.url, max_connections=1) as proxy:
        run = await run_tool(
            "bench",
            "--server",
            proxy.ws_url,
            "--file",
            str(sample("short.wav")),
            "--concurrency",
            "3",
            "--speed",
            "2",  # each session lasts about 3 s: the other two arrive while it holds the slot
            "--stagger",
            "0",
            "--settle",
            "0.5",
            "--out-dir",
            str(tmp_path),
            "--name",
            "cap",
            "--quiet",
            api_key=proxy.api_key,
        )
    assert run.returncode == 0, run.stderr
    (level,) = json.loads((tmp_path / "cap.json").read_text())["levels"]
    assert level["errors"] == 0
    assert level["capacity_refusals"] >= 1
    assert level["ok"] + level["capacity_refusals"] == 3
    refused = [u for u in level["utterances"] if u["status"] == "refused"]
    assert all(u["error_code"] == "server_at_capacity" for u in refused)


async def test_warmup_telephony_sends_20ms_mulaw_binary_frames() -> None:
    async with recording_peer() as peer:
        run = await run_tool(
            "warmup", "--server", peer.url, "--telephony", "--no-pace", "--json", api_key="k"
        )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["audio"] == "g711_ulaw 8000 Hz mono, 20 ms binary frames"
    assert peer.query["audio_format"] == "g711_ulaw"
    expected = load_audio(sample("mid.wav"), TELEPHONY_FORMAT)
    assert b"".join(peer.audio()) == expected
    kinds = peer.kinds()
    assert kinds[-2:] == ["input_audio_buffer.commit", "end"]
    assert set(kinds[1:-2]) == {"binary"}
    assert report["chunks"] == len(expected) // 160
    assert report["audio_s"] == 11.0


async def test_warmup_telephony_through_the_proxy(fake: FakeVllm, proxy: RunningProxy) -> None:
    run = await run_tool(
        "warmup",
        *("--server", proxy.ws_url, "--file", str(sample("short.wav"))),
        *("--telephony", "--no-pace", "--json"),
        api_key=proxy.api_key,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    ulaw = load_audio(sample("short.wav"), TELEPHONY_FORMAT)
    converter = AudioConverter(TELEPHONY_FORMAT)
    pcm = [c for i in range(0, len(ulaw), 160) for c in converter.feed(ulaw[i : i + 160])]
    expected = b"".join(pcm + converter.flush())
    assert report["text"].strip() == predict_text(expected).strip()
    assert report["text"].strip()


async def test_convo_sends_each_file_in_the_chosen_format() -> None:
    files = [sample("short.wav"), sample("mid.wav")]
    fmt = AudioFormat(Encoding.G711_ALAW, 8000, 2)
    async with recording_peer() as peer:
        run = await run_tool(
            "convo",
            "--server",
            peer.url,
            *("--file", str(files[0]), "--file", str(files[1])),
            *("--format", "g711_alaw", "--channels", "2", "--frames", "json"),
            *("--pause", "0", "--no-pace", "--json"),
            api_key="k",
        )
    assert run.returncode == 0, run.stderr
    assert set(peer.kinds()) == {"input_audio_buffer.commit", "input_audio_buffer.append", "end"}
    assert b"".join(peer.audio()) == b"".join(load_audio(f, fmt) for f in files)
