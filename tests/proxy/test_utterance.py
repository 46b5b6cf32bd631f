"""proxy.session._utterance: each phase answers the three questions the session asks of it;
held audio keeps its order and its size in bytes."""

from __future__ import annotations

import pytest

from proxy.session._utterance import HeldAudio, Phase


@pytest.mark.parametrize(
    ("phase", "client_final", "segment_committed", "rolling"),
    [
        (Phase.OPEN, False, False, False),
        (Phase.OPEN_ROLLING, False, True, True),
        (Phase.CLOSED, True, False, False),
        (Phase.CLOSED_ROLLING, True, True, True),
        (Phase.FINALIZING, True, True, False),
    ],
)
def test_phase_flags(
    phase: Phase, client_final: bool, segment_committed: bool, rolling: bool
) -> None:
    assert phase.client_final is client_final
    assert phase.segment_committed is segment_committed
    assert phase.rolling is rolling


def test_the_five_phases_are_every_possible_combination() -> None:
    combos = {(p.client_final, p.segment_committed, p.rolling) for p in Phase}
    assert len(combos) == len(Phase) == 5
    # Rolling implies a committed segment; a committed, non-rolling segment is the last one.
    assert all(committed for _, committed, rolling in combos if rolling)
    assert all(final for final, committed, rolling in combos if committed and not rolling)


def test_held_audio_keeps_order_and_counts_the_bytes_it_holds() -> None:
    held = HeldAudio()
    assert not held
    assert (len(held), held.nbytes) == (0, 0)
    held.append("AAAA", 3)
    held.append("BBBBBBBB", 6)
    held.appendleft("CC==", 1)  # the rest of a chunk cut at a segment's end goes first
    assert (len(held), held.nbytes) == (3, 16)
    assert held.popleft() == ("CC==", 1)
    assert held.popleft() == ("AAAA", 3)
    assert (len(held), held.nbytes) == (1, 8)
    assert held.popleft() == ("BBBBBBBB", 6)
    assert not held
    assert held.nbytes == 0
