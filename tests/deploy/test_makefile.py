"""The Makefile's client targets as `make -n` prints them: flags given in ARGS reach the tool
(`make warmup ARGS=--telephony`), `make bench` sweeps up to the server's capacity by default,
and `make restart` keeps the model the stopped service ran."""

from __future__ import annotations

import subprocess

import pytest

from tests.deploy.conftest import ROOT

TOOL_TARGETS = {
    "warmup": "clients.warmup",
    "convo": "clients.convo",
    "idle": "clients.idle",
    "remote": "clients.remote",
    "bench": "clients.bench",
    "bench-proxy": "devtools.bench_proxy",
    "bench-vad": "devtools.bench_vad",
}


def recipe(*args: str) -> str:
    return subprocess.run(
        ["make", "-n", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


@pytest.mark.parametrize(("target", "module"), TOOL_TARGETS.items())
def test_args_reach_the_tool(target: str, module: str) -> None:
    line = next(
        line for line in recipe(target, "ARGS=--telephony --json").splitlines() if module in line
    )
    assert line.rstrip().endswith("--telephony --json")


def test_bench_sweeps_up_to_the_capacity_unless_concurrency_is_given() -> None:
    assert '--sweep "${CONCURRENCY:-auto}"' in recipe("bench")


def test_restart_keeps_the_model() -> None:
    assert "scripts/main.sh --restart" in recipe("restart")
