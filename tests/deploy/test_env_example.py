""".env.example documents every variable the code and scripts read, each with a comment, in a
format systemd, Docker Compose and scripts/ops.sh all accept; it, ADVANCED's configuration table
and the scripts' fallbacks show the proxy's settings table's defaults."""

from __future__ import annotations

import re
from dataclasses import MISSING, Field
from typing import Any

import pytest

from proxy.config import DEFAULT_UPSTREAM_PORT, SETTINGS, setting_of
from tests.deploy.conftest import ROOT

EXAMPLE = ROOT / ".env.example"
ADVANCED = ROOT / "ADVANCED.md"
BY_NAME = {item.name: item for item in SETTINGS}
# Standard variables the code reads only to find the home/cache directory.
SYSTEM = {"HOME", "XDG_CACHE_HOME"}
PYTHON_READS = (
    r'(?:environ|env)\.get\(\s*"([A-Z][A-Z0-9_]*)"',
    r'_(?:int|float|bool|number|flag)\(\s*(?:env|environ),\s*"([A-Z][A-Z0-9_]*)"',
    r'^[A-Z_]*_ENV\s*=\s*"([A-Z][A-Z0-9_]*)"',
)
SHELL_READS = r"\$\{([A-Z][A-Z0-9_]*):?[-=]"
LINE = re.compile(r"#?([A-Z][A-Z0-9_]*)=(.*)")


def documented() -> dict[str, str]:
    """Variable -> its value in the example (commented or not)."""
    found = {}
    for line in EXAMPLE.read_text().splitlines():
        match = LINE.fullmatch(line)
        if match:
            found[match[1]] = match[2]
    return found


def read_by_code() -> set[str]:
    names = {setting_of(item).env for item in SETTINGS}
    for package in ("proxy", "launcher", "clients"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for pattern in PYTHON_READS:
                names |= set(re.findall(pattern, text, re.M))
    for path in (ROOT / "scripts").glob("*.sh"):
        names |= set(re.findall(SHELL_READS, path.read_text()))
    return names - SYSTEM


def test_the_scan_finds_the_known_variables() -> None:
    assert {"VOXTRAL_API_KEY", "WS_DRAIN_TIMEOUT_S", "VLLM_PORT", "VOXTRAL_SERVER"} <= (
        read_by_code()
    )
    assert {"TAIL_LOGS", "YAP_CACHE_DIR", "UP_TIMEOUT_S"} <= read_by_code()


def test_every_variable_read_is_documented() -> None:
    missing = sorted(read_by_code() - documented().keys())
    assert not missing, f"add to .env.example: {missing}"


def test_every_documented_variable_is_read_somewhere() -> None:
    sources = "\n".join(
        path.read_text()
        for pattern in (
            "proxy/**/*.py",
            "launcher/**/*.py",
            "clients/**/*.py",
            "scripts/*.sh",
            "tests/**/*.py",
            "Makefile",
        )
        for path in ROOT.glob(pattern)
        if path.resolve() != (ROOT / "tests/deploy/test_env_example.py").resolve()
    )
    stale = sorted(name for name in documented() if name not in sources)
    assert not stale, f"not read anywhere: {stale}"


def test_each_variable_has_a_comment_and_a_plain_value() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        match = LINE.fullmatch(line)
        if not match:
            continue
        # A comment above it, possibly shared by the variables of one group.
        above = index - 1
        while LINE.fullmatch(lines[above]):
            above -= 1
        assert lines[above].startswith("# "), f"{match[1]} has no comment"
        # No quotes or `export`: systemd's EnvironmentFile and Compose read the same file.
        assert not match[2].startswith(("'", '"')), match[1]
    # Only the key is set (empty), so `make up` from a copy asks for it.
    active = [line for line in lines if line and not line.startswith("#")]
    assert active == ["VOXTRAL_API_KEY="]


def shown(default: object) -> str:
    """A default as the docs write it: flags 1/0, whole seconds without .0, lists joined."""
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


def source(item: Field[Any]) -> Field[Any]:
    """The field whose default ``item`` takes when unset (itself, or its ``default_from``)."""
    origin = setting_of(item).default_from
    return BY_NAME[origin] if origin else item


def section(heading: str) -> str:
    return ADVANCED.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def advanced_defaults() -> dict[str, str]:
    """Variable -> the default column of ADVANCED's configuration table: the backticked value
    (several variables in one row, several values), else the cell's text."""
    found = {}
    for line in section("10. Configuration").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        if not names:
            continue
        values = re.findall(r"`([^`]*)`", cells[1]) or [cells[1]]
        assert len(values) == len(names), line
        found.update(zip(names, values, strict=True))
    return found


@pytest.mark.parametrize("item", SETTINGS, ids=lambda item: setting_of(item).env)
def test_example_shows_each_settings_default(item: Field[Any]) -> None:
    row = setting_of(item)
    default = source(item).default
    expected = "" if default is MISSING else shown(default)
    line = f"#{row.env}={expected}" if expected or default is not MISSING else f"{row.env}="
    assert documented().get(row.env) == expected, f"in .env.example: # {row.doc}\n{line}"


@pytest.mark.parametrize("item", SETTINGS, ids=lambda item: setting_of(item).env)
def test_advanced_shows_each_settings_default(item: Field[Any]) -> None:
    row = setting_of(item)
    if item.default is MISSING:
        expected = "(required)"
    elif row.default_from:
        # Written as the other variable: "as `VOXTRAL_MODEL_ID`".
        expected = setting_of(source(item)).env
    else:
        expected = shown(item.default) or "empty"
    cell = expected if expected in ("(required)", "empty") else f"`{expected}`"
    assert advanced_defaults().get(row.env) == expected, (
        f"in ADVANCED §10: | `{row.env}` | {cell} | {row.doc} |"
    )


def test_advanced_limits_show_the_settings_defaults() -> None:
    """§7's "variable (default)" cells: `WS_IDLE_TIMEOUT_S` (150), `A` / `B` (5000 / 60),
    `MAX_OPEN_SOCKETS` (0: automatic), `ALLOWED_ORIGINS` (empty: any)."""
    defaults = {setting_of(item).env: shown(item.default) or "empty" for item in SETTINGS}
    checked = 0
    for line in section("7. Limits").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        shown_values = (
            re.fullmatch(r"(`[A-Z].*`) \(([^)]*)\)", cells[1]) if len(cells) > 1 else None
        )
        if not shown_values:
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", shown_values[1])
        values = [value.split(":")[0].strip() for value in shown_values[2].split(" / ")]
        assert {name: defaults.get(name) for name in names} == dict(
            zip(names, values, strict=True)
        ), line
        checked += len(names)
    assert checked >= 20


def test_advanced_lists_only_settings() -> None:
    names = {setting_of(item).env for item in SETTINGS}
    assert sorted(advanced_defaults().keys() - names) == []


def test_the_scripts_fall_back_to_the_same_defaults() -> None:
    """A script that reads a proxy setting (or vLLM's port) before the proxy runs falls back to
    the table's default, not to a value of its own (``${X:-}`` only guards `set -u`)."""
    defaults = {
        setting_of(item).env: shown(item.default)
        for item in SETTINGS
        if item.default is not MISSING
    }
    defaults["VLLM_PORT"] = str(DEFAULT_UPSTREAM_PORT)
    checked = 0
    for path in (ROOT / "scripts").glob("*.sh"):
        for name, value in re.findall(r"\$\{([A-Z][A-Z0-9_]*):-([^}$]+)\}", path.read_text()):
            if name in defaults:
                assert value == defaults[name], f"{path.name}: ${{{name}:-{value}}}"
                checked += 1
    assert checked >= 3
