"""Giving memory back to the operating system once connections end.

CPython hands large objects (a held audio chunk, an encoded event) to the C allocator. glibc's
malloc keeps the pages they used in its heap after they are freed (after freeing a large block it
also raises its mmap threshold, so later large blocks come from the heap too), and the process
stays at its peak size after a client that held megabytes has gone. ``malloc_trim`` returns the
free pages. Where the C library has no such call (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

# Connections ending within this long share one trim (it walks the whole heap), and what they
# held is unreferenced by then.
TRIM_DELAY_S = 1.0


def load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None when the C library has none."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


class MemoryReleaser:
    """Trims the C heap a moment after connections end (at most once per ``delay_s``)."""

    def __init__(
        self,
        trim: Callable[[int], int] | None = None,
        delay_s: float = TRIM_DELAY_S,
    ) -> None:
        self._trim = trim if trim is not None else load_malloc_trim()
        self.delay_s = delay_s
        self._scheduled: asyncio.TimerHandle | None = None

    def connection_ended(self) -> None:
        if self._trim is None or self._scheduled is not None:
            return
        self._scheduled = asyncio.get_running_loop().call_later(self.delay_s, self._run)

    def _run(self) -> None:
        self._scheduled = None
        if self._trim is not None:
            self._trim(0)
