"""The token clock: index -> audio time, rollovers, clamping of the right-padding tail, and
segments at pauses."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.audio_clock import AudioClock, Segment
from proxy.vllm_wire import FRAME_BYTES, steps_sent

MS = 32  # bytes of 16 kHz PCM16 per millisecond
DELAYS = [80, 480, 2400]


def feed_run(clock: AudioClock, pcm_bytes: int, delay_ms: int) -> list[int]:
    """Plays one run as vLLM sends it (audio a frame at a time, then the final commit), every
    delta with text; returns their ``audio_ms``."""
    times: list[int] = []
    sent = 0
    while sent < pcm_bytes:
        sent = min(sent + FRAME_BYTES, pcm_bytes)
        while clock.steps < steps_sent(sent, delay_ms, final=False):
            times.append(clock.add_text("w", sent))
    while clock.steps < steps_sent(sent, delay_ms, final=True):
        times.append(clock.add_text("w", sent))
    return times


@pytest.mark.parametrize("delay_ms", DELAYS)
def test_delta_k_sits_at_frame_k_whatever_the_delay(delay_ms: int) -> None:
    clock = AudioClock()
    times = feed_run(clock, 1234 * MS, delay_ms)
    # 16 frames start within the audio; the other 10 of the 26 steps are right padding.
    assert times == [80 * k for k in range(16)] + [1234] * 10


def test_empty_deltas_count_as_steps() -> None:
    clock = AudioClock()
    clock.steps += 3
    assert clock.add_text(" a", 1000 * MS) == 240
    clock.steps += 1
    assert clock.add_text(" b", 1000 * MS) == 400
    assert clock.text() == " a b"


def test_a_step_is_clamped_to_the_audio_the_run_has() -> None:
    clock = AudioClock()
    clock.steps = 12
    # 12 * 80 = 960 ms, but the run holds only 900 ms: a right-padding step.
    assert clock.add_text(" x", 900 * MS) == 900
    assert clock.segments() == [Segment(" x", 900, 900)]


def test_runs_after_the_first_are_offset_by_the_audio_before_them() -> None:
    clock = AudioClock()
    # A run ended by the proxy's final commit: 2 s, 35 steps, its tail clamped to 2000 ms.
    first = feed_run(clock, 2000 * MS, 480)
    assert len(first) == 35
    assert first[-1] == 2000
    clock.end_run(2000 * MS)
    assert clock.add_text(" next", 500 * MS) == 2000
    # A run vLLM cut at max_model_len after 89 steps of 7760 ms of audio it was sent: the
    # audio it dropped was still spoken, so the next run starts after all of it.
    clock.end_run(500 * MS)
    clock.steps = 88
    assert clock.add_text(" cut", 7760 * MS) == 2500 + 88 * 80
    clock.end_run(7760 * MS)
    assert clock.add_text(" on", 1000 * MS) == 2500 + 7760


def test_an_offset_off_the_frame_grid_is_kept() -> None:
    clock = AudioClock()
    clock.end_run(1234 * MS + 2)
    assert clock.add_text(" a", 1000 * MS) == 1234
    assert clock.add_text(" b", 1000 * MS) == 1314


def clock_of(steps: list[str | None], run_bytes: int = 10_000 * MS) -> AudioClock:
    """A one-run clock fed ``steps``: a string is a delta with text, None an empty delta."""
    clock = AudioClock()
    for step in steps:
        if step is None:
            clock.steps += 1
        else:
            clock.add_text(step, run_bytes)
    return clock


def test_a_pause_of_480_ms_splits_and_a_shorter_one_does_not() -> None:
    six_empty = clock_of([" one", " two", ".", *[None] * 6, " three"])
    assert six_empty.segments() == [Segment(" one two.", 0, 240), Segment(" three", 720, 800)]
    five_empty = clock_of([" one", " two", ".", *[None] * 5, " three"])
    assert five_empty.segments() == [Segment(" one two. three", 0, 720)]


def test_the_pause_is_configurable() -> None:
    clock = clock_of([None, " a", None, None, " b", None, " c"])
    assert clock.segments(pause_ms=160) == [Segment(" a", 80, 160), Segment(" b c", 320, 560)]
    assert clock.segments(pause_ms=80) == [
        Segment(" a", 80, 160),
        Segment(" b", 320, 400),
        Segment(" c", 480, 560),
    ]


def test_segments_serialize_as_the_protocol_objects() -> None:
    segments = clock_of([" hi", *[None] * 6, " there"]).segments()
    assert orjson.loads(orjson.dumps(segments)) == [
        {"text": " hi", "start_ms": 0, "end_ms": 80},
        {"text": " there", "start_ms": 560, "end_ms": 640},
    ]


def test_no_text_no_segment() -> None:
    clock = clock_of([None] * 20)
    assert clock.segments() == []
    assert clock.text() == ""


def test_the_last_segment_ends_with_the_audio() -> None:
    clock = AudioClock()
    feed_run(clock, 1000 * MS, 480)
    assert clock.segments() == [Segment("w" * 23, 0, 1000)]


def test_a_rollover_is_no_pause_by_itself() -> None:
    clock = AudioClock()
    clock.steps = 12
    clock.add_text(" end", 800 * MS)  # right padding of the first run: clamped to 800 ms
    clock.end_run(800 * MS)
    clock.add_text(" start", 3000 * MS)
    assert clock.segments() == [Segment(" end start", 800, 880)]


# One run: its audio, then each step's delta (None = empty), at most as many as vLLM makes.
run_strategy = st.integers(min_value=1, max_value=20_000 * MS).flatmap(
    lambda run_bytes: st.tuples(
        st.just(run_bytes),
        st.lists(
            st.one_of(st.none(), st.text(min_size=1, max_size=4)),
            max_size=steps_sent(run_bytes, 480, final=True),
        ),
    )
)


@given(
    runs=st.lists(run_strategy, min_size=1, max_size=4),
    pause_ms=st.integers(min_value=1, max_value=3000),
)
def test_segments_cover_the_text_in_order_within_the_audio(
    runs: list[tuple[int, list[str | None]]], pause_ms: int
) -> None:
    clock = AudioClock()
    texts: list[str] = []
    times: list[int] = []
    for run_bytes, steps in runs:
        for step in steps:
            if step is None:
                clock.steps += 1
            else:
                texts.append(step)
                times.append(clock.add_text(step, run_bytes))
        clock.end_run(run_bytes)
    audio_ms = sum(run_bytes for run_bytes, _ in runs) // MS

    segments = clock.segments(pause_ms)
    assert "".join(s.text for s in segments) == "".join(texts) == clock.text()
    assert all(s.text for s in segments)
    assert times == sorted(times)
    assert all(0 <= t <= audio_ms for t in times)
    bounds = [t for s in segments for t in (s.start_ms, s.end_ms)]
    assert bounds == sorted(bounds)
    assert all(0 <= t <= audio_ms for t in bounds)


def steps_closing(
    clock: AudioClock, steps: list[str | None], run_bytes: int, pause_ms: int
) -> list[Segment]:
    """Plays ``steps`` as the session does, asking the clock for a closed segment around each
    one; returns those segments in order."""
    closed: list[Segment] = []
    for step in steps:
        if step is None:
            clock.steps += 1
            segment = clock.close_segment(pause_ms, run_bytes)
        else:
            segment = clock.close_segment(pause_ms, run_bytes)
            clock.add_text(step, run_bytes)
        if segment is not None:
            closed.append(segment)
    return closed


def test_a_segment_closes_once_its_pause_has_passed() -> None:
    clock = AudioClock()
    run = 2000 * MS
    assert steps_closing(clock, [" one", " two", *[None] * 5], run, 480) == []
    # The sixth silent step: the next text can start no earlier than 480 ms after " two".
    assert steps_closing(clock, [None], run, 480) == [Segment(" one two", 0, 160)]
    assert steps_closing(clock, [None, None, " three", None], run, 480) == []
    assert clock.segments() == [Segment(" one two", 0, 160), Segment(" three", 800, 880)]


def test_text_after_a_pause_closes_the_segment_before_it() -> None:
    clock = AudioClock()
    closed = steps_closing(clock, [" a", None, None, " b"], 1000 * MS, 160)
    assert closed == [Segment(" a", 0, 80)]
    assert clock.segments(160)[0] == closed[0]


def test_silence_past_the_audio_received_closes_nothing() -> None:
    # Right padding of a final commit: steps past the run's audio do not count as silence.
    clock = AudioClock()
    assert steps_closing(clock, [" a", *[None] * 10], 160 * MS, 480) == []


@given(
    runs=st.lists(run_strategy, min_size=1, max_size=4),
    pause_ms=st.integers(min_value=1, max_value=3000),
)
def test_segments_closed_on_the_way_are_the_done_segments_but_the_last(
    runs: list[tuple[int, list[str | None]]], pause_ms: int
) -> None:
    clock = AudioClock()
    closed: list[Segment] = []
    for run_bytes, steps in runs:
        closed += steps_closing(clock, steps, run_bytes, pause_ms)
        clock.end_run(run_bytes)
    segments = clock.segments(pause_ms)
    assert closed == segments[: len(closed)]
    assert len(closed) >= len(segments) - 1
