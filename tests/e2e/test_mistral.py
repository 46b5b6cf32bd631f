"""Mistral's SDK, unchanged, through the shared stack to the real vLLM: every frame valid for the
SDK's own models; a flush's done and the session going on; an end right after a flush answered
by an empty done (an empty generation upstream), then a normal close."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.protocols.mistral import MISTRAL_MODELS
from tests.compat import env_path
from tests.compat.audio import speech_16k
from tests.compat.harness import ClientFailed, run_client
from tests.e2e.stack import Stack

pytestmark = [pytest.mark.vllm, pytest.mark.compat]

DONE = "transcription.done"


async def run(stack: Stack, tmp_path: Path, scenario: str, *extra: str) -> dict[str, Any]:
    path = tmp_path / "speech.raw"
    path.write_bytes(speech_16k(trailer_s=0.5))
    try:
        result = await run_client(
            env_path.compat_env(),
            "mistral_sdk",
            stack.http_url,
            stack.api_key,
            scenario,
            str(path),
            MISTRAL_MODELS[0],
            *extra,
            guard_s=240.0,
        )
    except ClientFailed as failed:
        raise AssertionError(f"{failed}\n--- stack\n{stack.log_tail()}") from None
    assert result["invalid"] == [], result["invalid"]
    return result


def check_done(events: list[dict[str, Any]]) -> None:
    kinds = [event["type"] for event in events]
    assert "error" not in kinds
    done = events[kinds.index(DONE)]
    deltas = [e["text"] for e in events[: kinds.index(DONE)] if e["type"].endswith(".delta")]
    assert all(deltas)
    assert done["text"] == "".join(deltas)
    assert isinstance(done["usage"]["prompt_audio_seconds"], int)
    assert done["language"] is None


async def test_flush_then_end_against_the_real_vllm(stack: Stack, tmp_path: Path) -> None:
    result = await run(stack, tmp_path, "flush_end")
    events = result["events"]
    assert events[0]["type"] == "session.created"
    assert result["closed"] is True
    first = events.index(next(e for e in events if e["type"] == DONE))
    check_done(events[: first + 1])
    check_done(events[first + 1 :])


async def test_an_end_after_a_flush_gets_an_empty_done(stack: Stack, tmp_path: Path) -> None:
    result = await run(stack, tmp_path, "token", MISTRAL_MODELS[1])
    first = result["sessions"][0]
    dones = [e for e in first["events"] if e["type"] == DONE]
    assert len(dones) == 2
    assert dones[1]["text"] == ""
    assert first["close_code"] == 1000
    check_done(first["events"])
