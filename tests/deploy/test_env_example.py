""".env.example documents every variable the code and scripts read, each with a comment, in a
format systemd, Docker Compose and scripts/ops.sh all accept."""

from __future__ import annotations

import re

from tests.deploy.conftest import ROOT

EXAMPLE = ROOT / ".env.example"
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
    names: set[str] = set()
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
