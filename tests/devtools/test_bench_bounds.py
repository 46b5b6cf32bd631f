"""devtools.bench_bounds: the quickest figure, against this clone's proxy process."""

from __future__ import annotations

import sys

from devtools.bench_bounds import run
from devtools.bench_proxy_procs import ROOT


async def test_leave_counts_five_clients_leaving_as_the_clients() -> None:
    result = await run("leave", ROOT, sys.executable)
    assert result["figure"] == "leave"
    assert sorted(result["samples"]) == [
        'voxtral_proxy_closes_total{"by": "client", "code": "1000"} 5',
        'voxtral_proxy_utterances_total{"outcome": "abandoned"} 5',
        'voxtral_proxy_utterances_total{"outcome": "started"} 5',
    ]
