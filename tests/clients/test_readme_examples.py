"""The README's two Python examples, run verbatim (extracted from README.md) against the real
proxy and the fake vLLM: the minimal client streams (its first word comes while its audio is
still being sent) and prints the transcript; the telephony bridge is a complete program that
prints the transcript of the μ-law it forwarded."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf

from clients.audio import load_pcm
from clients.cli import sample
from devtools.fake_vllm import FakeVllm, predict_text
from tests.clients.conftest import ROOT, TOOL_TIMEOUT_S, ToolRun
from tests.harness import RunningProxy
from tests.tones import upstream_audio

README = ROOT / "README.md"
FIRST_WORD = re.compile(r"\[first word after ([\d.]+) s of ([\d.]+) s of audio\]")


def python_block_after(marker: str) -> str:
    """The first ```python block after `marker` in the README."""
    text = README.read_text()
    start = text.index("```python\n", text.index(marker)) + len("```python\n")
    return text[start : text.index("```\n", start)]


async def run_example(code: str, proxy: RunningProxy, *args: str) -> ToolRun:
    env = {"VOXTRAL_SERVER": urlsplit(proxy.http_url).netloc, "VOXTRAL_API_KEY": proxy.api_key}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TOOL_TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return ToolRun(proc.returncode, out.decode(), err.decode())


async def test_the_minimal_client_streams_and_prints_the_transcript(proxy: RunningProxy) -> None:
    code = python_block_after("## Stream audio from your app")
    run = await run_example(code, proxy, "samples/short.wav")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    expected = predict_text(load_pcm(sample("short.wav")))
    assert lines[0] == "session.created"
    assert lines[1] == expected  # the deltas, printed as they came
    match = FIRST_WORD.fullmatch(lines[2])
    assert match, run.stdout
    first_word_s, audio_s = map(float, match.groups())
    # Streaming: the first word came back before the client had even sent all its audio.
    assert first_word_s < audio_s
    assert lines[3] == expected
    assert len(lines) == 4


async def test_the_minimal_client_checks_the_wavs_format(
    proxy: RunningProxy, tmp_path: Path
) -> None:
    code = python_block_after("## Stream audio from your app")
    stereo = tmp_path / "stereo-44k.wav"
    sf.write(stereo, np.zeros((4410, 2), dtype=np.int16), 44100, subtype="PCM_16")
    run = await run_example(code, proxy, str(stereo))
    assert run.returncode != 0
    assert "not 16 kHz mono 16-bit" in run.stderr


async def test_the_telephony_bridge_is_a_complete_program(
    fake: FakeVllm, proxy: RunningProxy
) -> None:
    code = python_block_after("telephony bridge opens an utterance")
    run = await run_example(code, proxy)
    assert run.returncode == 0, run.stderr
    expected = predict_text(upstream_audio(fake))
    assert expected
    assert run.stdout.splitlines()[-1] == expected
    assert run.stdout.startswith(expected)  # the deltas as they came, then the done's text
