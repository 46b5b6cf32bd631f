"""The Docker image stays honest without a Docker engine: hadolint is clean, everything it copies
exists and reaches the build context, and its `uv sync` installs exactly the lock (checked by
running the same command as a dry run, offline)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import yaml

from tests.deploy.conftest import DEPLOY, ROOT
from tests.processes import run_in_repo

DOCKER = DEPLOY / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def uv_sync_argv() -> list[str]:
    runs = [args for keyword, args in instructions() if keyword == "RUN" and "uv sync" in args]
    assert len(runs) == 1, runs
    return shlex.split(runs[0])


def find_uv() -> str:
    """The uv the project scripts use (installed into the cache when missing)."""
    result = subprocess.run(
        ["bash", "-c", ". scripts/lib.sh && ensure_uv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout.strip()


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "hadolint"),
            "--config",
            str(DOCKER / ".hadolint.yaml"),
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\n")
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hadolint"), "--config", str(DOCKER / ".hadolint.yaml"), bad],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; `!` re-includes."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if fnmatch(path, bare) or fnmatch(path.split("/")[0], bare):
            excluded = not negate
    return excluded


def test_every_copied_path_exists_and_reaches_the_context() -> None:
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [args for keyword, args in instructions() if keyword == "COPY"]
    sources = []
    for args in copies:
        parts = shlex.split(args)
        if any(part.startswith("--from=") for part in parts):
            continue
        sources += [part for part in parts[:-1] if not part.startswith("--")]
    assert {"pyproject.toml", "uv.lock", "proxy", "launcher", "clients"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is excluded by Dockerfile.dockerignore"
    # And the bulky or secret things stay out of the context.
    for path in (".venv", "models", ".env", "logs"):
        assert ignored(path, patterns), path


def test_image_runs_the_launcher_as_a_non_root_user_with_a_readiness_check() -> None:
    found = dict(instructions())
    assert found["FROM"].startswith("nvidia/cuda:")
    assert "-runtime-ubuntu" in found["FROM"]
    assert found["USER"].split(":")[0] not in ("root", "0")
    assert found["CMD"] == '["python", "-m", "launcher"]'
    assert found["EXPOSE"] == "8000"
    assert "/app/models" in found["VOLUME"]
    assert "/readyz" in found["HEALTHCHECK"]


def test_uv_sync_is_the_locked_env_with_the_gpu_extra() -> None:
    argv = uv_sync_argv()
    assert argv[:2] == ["uv", "sync"]
    assert "--frozen" in argv
    assert "--no-dev" in argv
    extras = {argv[i + 1] for i, arg in enumerate(argv) if arg == "--extra"}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras == {"gpu", "clients"}
    assert extras <= set(declared)


def test_the_same_uv_sync_resolves_from_the_lock_offline(tmp_path: Path) -> None:
    """Run the Dockerfile's exact command as a dry run: it must install vLLM from the lock and no
    dev tool, without the network and without touching .venv."""
    argv = [find_uv(), *uv_sync_argv()[1:], "--dry-run", "--offline"]
    target = tmp_path / "image-venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(target)}
    env.pop("VIRTUAL_ENV", None)
    result = run_in_repo(
        [*argv, "--python", str(ROOT / ".venv" / "bin" / "python")], env=env, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    locked_vllm = re.search(r'name = "vllm"\nversion = "([^"]+)"', (ROOT / "uv.lock").read_text())
    assert locked_vllm
    assert f"+ vllm=={locked_vllm[1]}" in output
    assert "+ starlette==" in output
    assert "+ soundfile==" in output
    for dev_tool in ("pytest", "ruff", "mypy", "hadolint"):
        assert f"+ {dev_tool}==" not in output
    assert not target.exists()


def test_compose_reserves_a_gpu_and_outlasts_the_drain() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["stt"]
    assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
        DOCKERFILE.resolve()
    )
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert any("/readyz" in part for part in service["healthcheck"]["test"])
    assert service["volumes"] == ["models:/app/models"]
    assert "models" in compose["volumes"]
    assert service["env_file"][0]["path"] == "../../.env"
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert grace > 30 + 20  # WS_DRAIN_TIMEOUT_S default + vLLM's stop


def test_healthcheck_commands_agree() -> None:
    """The image and compose probe /readyz the same way."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    probe = compose["services"]["stt"]["healthcheck"]["test"][-1]
    assert probe in dict(instructions())["HEALTHCHECK"]
