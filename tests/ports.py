"""Free loopback ports for the tests that start servers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick; another process may take it before
    the caller binds it, which on a test machine is rare enough)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
