"""Bad input to the tools: one line on stderr, a non-zero exit, no traceback (no server needed).

The file is decoded before any connection is attempted, so the server address is never used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import run_in_repo

FILE_TOOLS = ["warmup", "remote", "convo", "bench"]
UNUSED_SERVER = "127.0.0.1:9"  # never reached: decoding fails first


def _run(
    tool: str, *args: str, path_env: str | None = None, key: str | None = "k"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VOXTRAL_API_KEY"}
    env["VOXTRAL_ENV_FILE"] = "tests/no-such.env"
    if key is not None:
        env["VOXTRAL_API_KEY"] = key
    if path_env is not None:
        env["PATH"] = path_env
    return run_in_repo(
        [sys.executable, "-m", f"clients.{tool}", "--server", UNUSED_SERVER, *args], env=env
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("tool", FILE_TOOLS)
def test_missing_file(tool: str, tmp_path: Path) -> None:
    proc = _run(tool, "--file", str(tmp_path / "missing.wav"))
    _assert_one_line_error(proc, f"clients.{tool}: error:", "not found", "missing.wav")


@pytest.mark.parametrize("tool", ["warmup", "bench"])
def test_unsupported_format_without_ffmpeg(tool: str, tmp_path: Path) -> None:
    clip = tmp_path / "clip.m4a"
    clip.write_bytes(b"\0\0\0\x20ftypM4A " + b"\0" * 64)
    proc = _run(tool, "--file", str(clip), path_env=str(tmp_path / "no-bin"))
    _assert_one_line_error(proc, "ffmpeg")


def test_undecodable_wav(tmp_path: Path) -> None:
    clip = tmp_path / "noise.wav"
    clip.write_bytes(b"RIFF....WAVEjunk" * 8)
    proc = _run("warmup", "--file", str(clip))
    _assert_one_line_error(proc, "cannot decode", "noise.wav")


def test_unreachable_server_is_one_line() -> None:
    # Port 9 (discard) on loopback has no listener here: the connection is refused.
    proc = _run("warmup", "--no-pace")
    _assert_one_line_error(proc, "cannot connect")


@pytest.mark.parametrize("tool", ["warmup", "convo", "bench", "idle"])
def test_no_api_key_is_said_before_connecting(tool: str) -> None:
    # The server address is unreachable: the key is missing before any connection is tried.
    proc = _run(tool, key=None)
    _assert_one_line_error(proc, "no API key: set VOXTRAL_API_KEY", "--api-key")
