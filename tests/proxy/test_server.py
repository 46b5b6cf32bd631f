"""proxy.server.socket_limits: the open-socket bound fitted under the file-handle limit."""

from __future__ import annotations

import resource

import pytest
from structlog.testing import capture_logs

from proxy.config import ProxyConfig
from proxy.server import FD_RESERVE, socket_limits

CONFIG = ProxyConfig(api_keys=("k",), max_connections=100)


def with_nofile(monkeypatch: pytest.MonkeyPatch, soft: int) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, resource.RLIM_INFINITY))


def test_automatic_bound_keeps_the_reserve_and_a_vllm_socket_per_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_nofile(monkeypatch, 4096)
    with capture_logs() as logs:
        limits = socket_limits(CONFIG)
    assert limits.max_open == 4096 - FD_RESERVE - 100
    assert logs == []


def test_a_low_file_handle_limit_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    with_nofile(monkeypatch, 256)
    with capture_logs() as logs:
        limits = socket_limits(CONFIG)
    assert limits.max_open == 256 - FD_RESERVE - 100
    (warning,) = logs
    assert warning["event"] == "file_handle_limit_low"
    assert "ulimit -n" in warning["advice"]
    assert str(FD_RESERVE + 100 + 116) in warning["advice"]


def test_a_configured_bound_is_kept_below_what_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    with_nofile(monkeypatch, 4096)
    config = ProxyConfig(api_keys=("k",), max_connections=100, max_open_sockets=500)
    assert socket_limits(config).max_open == 500
    with_nofile(monkeypatch, 512)
    with capture_logs() as logs:
        assert socket_limits(config).max_open == 512 - FD_RESERVE - 100
    assert [log["event"] for log in logs] == ["file_handle_limit_low"]


def test_no_limit_uses_the_configured_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    with_nofile(monkeypatch, resource.RLIM_INFINITY)
    config = ProxyConfig(api_keys=("k",), max_open_sockets=300)
    assert socket_limits(config).max_open == 300
