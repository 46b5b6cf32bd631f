"""proxy.server.socket_limits: the open-socket bound fitted under the file-handle limit."""

from __future__ import annotations

import resource

from proxy.config import ProxyConfig
from proxy.server import FD_RESERVE, socket_limits

CONFIG = ProxyConfig(api_keys=("k",), max_connections=100)


def test_automatic_bound_keeps_the_reserve_and_a_vllm_socket_per_session() -> None:
    limits, advice = socket_limits(CONFIG, 4096)
    assert limits.max_open == 4096 - FD_RESERVE - 100
    assert advice is None


def test_a_low_file_handle_limit_gets_advice() -> None:
    limits, advice = socket_limits(CONFIG, 256)
    assert limits.max_open == 256 - FD_RESERVE - 100
    assert advice is not None
    assert "ulimit -n" in advice
    assert str(FD_RESERVE + 100 + 116) in advice


def test_a_configured_bound_is_kept_below_what_fits() -> None:
    config = ProxyConfig(api_keys=("k",), max_connections=100, max_open_sockets=500)
    limits, advice = socket_limits(config, 4096)
    assert (limits.max_open, advice) == (500, None)
    limits, advice = socket_limits(config, 512)
    assert limits.max_open == 512 - FD_RESERVE - 100
    assert advice is not None


def test_no_limit_uses_the_configured_bound() -> None:
    config = ProxyConfig(api_keys=("k",), max_open_sockets=300)
    limits, advice = socket_limits(config, resource.RLIM_INFINITY)
    assert (limits.max_open, advice) == (300, None)
