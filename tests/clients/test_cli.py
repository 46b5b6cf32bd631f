"""clients.cli: the tools' audio options (no server needed)."""

from __future__ import annotations

import argparse

import pytest

from clients.cli import AudioOptions, add_audio_args, audio_options
from clients.client import BINARY_DEFAULT
from proxy.audio_format import NATIVE, AudioFormat, Encoding


def parse(*argv: str) -> AudioOptions:
    parser = argparse.ArgumentParser(prog="tool")
    add_audio_args(parser)
    return audio_options(parser, parser.parse_args(argv))


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as caught:
        parse(*argv)
    assert caught.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_defaults_are_the_native_format_in_80ms_pieces() -> None:
    assert parse() == AudioOptions(NATIVE, 80, BINARY_DEFAULT)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--format", "g711_ulaw"],
            AudioOptions(AudioFormat(Encoding.G711_ULAW, 8000, 1), 80, BINARY_DEFAULT),
        ),
        (
            ["--sample-rate", "44100", "--channels", "2"],
            AudioOptions(AudioFormat(Encoding.PCM16, 44100, 2), 80, BINARY_DEFAULT),
        ),
        (
            ["--format", "g711_alaw", "--chunk-ms", "20", "--frames", "binary"],
            AudioOptions(AudioFormat(Encoding.G711_ALAW, 8000, 1), 20, True),
        ),
        (["--frames", "json"], AudioOptions(NATIVE, 80, False)),
        (["--telephony"], AudioOptions(AudioFormat(Encoding.G711_ULAW, 8000, 1), 20, True)),
    ],
)
def test_options(argv: list[str], expected: AudioOptions) -> None:
    assert parse(*argv) == expected


def test_describe() -> None:
    assert parse("--telephony").describe() == "g711_ulaw 8000 Hz mono, 20 ms binary frames"
    assert parse("--frames", "json").describe() == "pcm16 16000 Hz mono, 80 ms JSON appends"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--sample-rate", "96000"], "--sample-rate 8000 to 48000"),
        (["--format", "g711_ulaw", "--sample-rate", "16000"], "--sample-rate 8000 only"),
        (["--telephony", "--format", "pcm16"], "--telephony sets the audio itself: drop --format"),
        (["--telephony", "--chunk-ms", "40", "--frames", "json"], "drop --chunk-ms, --frames"),
        (["--channels", "3"], "invalid choice"),
        (["--format", "opus"], "invalid choice"),
        (["--chunk-ms", "0"], "must be positive"),
    ],
)
def test_refusals(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    assert says in refusal(capsys, *argv)
