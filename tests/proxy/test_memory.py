"""proxy.memory: the C heap is trimmed a moment after connections end, once for a burst."""

from __future__ import annotations

import asyncio
import platform

import pytest

from proxy.memory import MemoryReleaser, load_malloc_trim


async def test_connections_ending_together_share_one_trim_after_the_delay() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    releaser = MemoryReleaser(trim, delay_s=0.05)
    for _ in range(3):
        releaser.connection_ended()
    assert calls == []  # not while the relay may still reference what it held
    await asyncio.sleep(0.2)
    assert calls == [0]
    releaser.connection_ended()
    await asyncio.sleep(0.2)
    assert calls == [0, 0]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_has_malloc_trim() -> None:
    trim = load_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
