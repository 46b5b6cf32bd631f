"""The client env holds exactly the pinned client versions, and each client imports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.compat.harness import run_client

pytestmark = pytest.mark.compat

REQUIREMENTS = Path(__file__).resolve().parent / "env" / "requirements.in"


def pins() -> dict[str, str]:
    """The clients requirements.in pins (each exactly)."""
    found: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if not requirement:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]+\])?==([^\s;]+)", requirement)
        assert match, f"{requirement!r} is not an exact pin"
        found[match.group(1)] = match.group(2)
    return found


async def test_the_env_has_the_pinned_clients_and_they_import(client_env: Path) -> None:
    expected = pins()
    assert set(expected) >= {"openai", "livekit-agents", "pipecat-ai", "mistralai"}
    result = await run_client(client_env, "versions", *expected, "websockets")
    versions = result["versions"]
    assert {name: versions[name] for name in expected} == expected
    # Why the env is separate: openai's realtime extra keeps websockets below 16.
    assert int(versions["websockets"].split(".")[0]) < 16
    assert result["imports"] == dict.fromkeys(result["imports"])
