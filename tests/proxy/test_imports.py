"""The import rules of proxy/, read from the source (ast): no import circle among its modules
(imports under ``TYPE_CHECKING`` and inside functions count too), the session package stays
pure (no event loop, no web framework, no relay) and speaks no wire protocol, and its
underscored modules are imported from nowhere else in the code (tests may: they test them)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("proxy", "devtools", "clients", "launcher")
SESSION = "proxy.session"
# What the session package may not import (itself or any submodule of it).
NOT_FOR_THE_SESSION = (
    "asyncio",
    "starlette",
    "uvicorn",
    "websockets",
    "proxy.relay",
    "proxy.app",
    "proxy.state",
    "proxy.upstream",
    "proxy.protocols",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(top: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / top).rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """Every module ``path`` imports; ``from package import name`` counts as the submodule
    when ``name`` is one of ``known``."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return found


def proxy_graph() -> dict[str, set[str]]:
    mods = modules("proxy")
    known = set(mods)
    return {name: imported(path, known) & known for name, path in mods.items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle: list[str] = exc.args[1]
        return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    cycle = cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    assert cycle is not None
    assert set(cycle) == {"a", "b", "c"}


def test_no_import_circle_in_proxy() -> None:
    graph = proxy_graph()
    assert "proxy.session._lifecycle" in graph  # the walk sees the package
    assert cycle_in(graph) is None, cycle_in(graph)


def test_the_session_package_needs_no_io_and_no_wire_protocol() -> None:
    graph = proxy_graph()
    known = set(graph)
    for name, path in modules("proxy").items():
        if name != SESSION and not name.startswith(SESSION + "."):
            continue
        for target in imported(path, known):
            banned = [b for b in NOT_FOR_THE_SESSION if target == b or target.startswith(b + ".")]
            assert not banned, f"{name} imports {target}"


@pytest.mark.parametrize("top", CODE_DIRS)
def test_nothing_outside_the_session_imports_its_internals(top: str) -> None:
    known = set(modules("proxy"))
    for name, path in modules(top).items():
        if name == SESSION or name.startswith(SESSION + "."):
            continue
        for target in imported(path, known):
            internal = target.startswith(SESSION + ".") and target.split(".")[2].startswith("_")
            assert not internal, f"{name} imports {target}"
