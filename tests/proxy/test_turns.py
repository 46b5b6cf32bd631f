"""Turn detection's state machine, on synthetic probabilities (32 ms windows)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.turns import (
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    TurnEvent,
    TurnOptions,
    TurnOptionsError,
)

WINDOW = 32


def run(
    detector: TurnDetector, probabilities: list[float], first_end: int = WINDOW
) -> list[TurnEvent]:
    """Pushes consecutive windows; returns the facts in order."""
    events = []
    for i, probability in enumerate(probabilities):
        event = detector.push(first_end + i * WINDOW, probability)
        if event is not None:
            events.append(event)
    return events


def windows(ms: int) -> int:
    return ms // WINDOW


def test_defaults_match_the_protocol() -> None:
    assert TurnOptions.from_json({"type": "server_vad"}) == TurnOptions(0.5, 500, 300, 250)


def test_one_turn_with_its_boundaries() -> None:
    # 1 s of silence, 2 s of speech, 1 s of silence.
    probs = [0.02] * windows(1024) + [0.95] * windows(2048) + [0.03] * windows(1024)
    events = run(TurnDetector(TurnOptions()), probs)
    assert events == [
        # Confirmed after 256 ms (8 windows) of speech, the first multiple of 32 >= 250.
        SpeechStarted(audio_start_ms=1024, turn_start_ms=724, detected_ms=1280),
        # Silence from 3072; confirmed after 512 ms (16 windows).
        SpeechStopped(audio_end_ms=3072, detected_ms=3584),
    ]


def test_where_a_turn_would_open_while_speech_is_being_confirmed() -> None:
    detector = TurnDetector(TurnOptions())
    states = []
    for probability in [0.1] * 3 + [0.9] * 8 + [0.9] * 3 + [0.1] * 20 + [0.9]:
        window_end = (len(states) + 1) * WINDOW
        detector.push(window_end, probability)
        states.append(detector.opens_at_ms)
    # Silence: none; speech from 96 ms being confirmed (7 windows): at 96 + 250; the 8th opens
    # the turn: none, in it or out of it; speech from 1088 ms after the turn ended: again.
    assert states == [None] * 3 + [96 + 250] * 7 + [None] * 24 + [1088 + 250]


def test_speech_shorter_than_min_speech_opens_no_turn() -> None:
    # 224 ms bursts (7 windows) separated by silence never reach 250 ms.
    burst = [0.9] * 7 + [0.1] * 10
    assert run(TurnDetector(TurnOptions()), burst * 5) == []


def test_pause_shorter_than_silence_ms_keeps_the_turn() -> None:
    probs = [0.9] * 20 + [0.1] * windows(480) + [0.9] * 20 + [0.1] * 20
    events = run(TurnDetector(TurnOptions()), probs)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert events[1].audio_end_ms == (20 + 15 + 20) * WINDOW  # type: ignore[union-attr]


def test_probabilities_between_the_thresholds_continue_what_they_interrupt() -> None:
    # 0.4 is neither speech (>= 0.5) nor silence (< 0.35).
    detector = TurnDetector(TurnOptions())
    # Idle: 0.4 neither starts nor breaks a candidate.
    assert run(detector, [0.4] * 30) == []
    events = run(detector, [0.9] * 4 + [0.4] * 4, first_end=31 * WINDOW)
    assert events == [
        SpeechStarted(
            audio_start_ms=30 * WINDOW, turn_start_ms=30 * WINDOW - 300, detected_ms=38 * WINDOW
        )
    ]
    # In a turn: 0.4 after speech is still speech, 0.4 after silence is still silence.
    assert run(detector, [0.4] * 40, first_end=39 * WINDOW) == []
    events = run(detector, [0.2] * 8 + [0.4] * 8, first_end=79 * WINDOW)
    assert events == [SpeechStopped(audio_end_ms=78 * WINDOW, detected_ms=94 * WINDOW)]


def test_a_silent_window_resets_unconfirmed_speech() -> None:
    probs = [0.9] * 6 + [0.1] + [0.9] * 8
    events = run(TurnDetector(TurnOptions()), probs)
    assert events == [
        SpeechStarted(audio_start_ms=7 * WINDOW, turn_start_ms=0, detected_ms=15 * WINDOW)
    ]


def test_prefix_padding_never_reaches_before_the_stream() -> None:
    events = run(TurnDetector(TurnOptions(prefix_padding_ms=300)), [0.9] * 10)
    assert events[0] == SpeechStarted(audio_start_ms=0, turn_start_ms=0, detected_ms=8 * WINDOW)


def test_zero_min_speech_starts_on_the_first_speech_window() -> None:
    events = run(TurnDetector(TurnOptions(min_speech_ms=0, prefix_padding_ms=0)), [0.1, 0.6])
    assert events == [SpeechStarted(audio_start_ms=WINDOW, turn_start_ms=WINDOW, detected_ms=64)]


def test_custom_threshold() -> None:
    options = TurnOptions(threshold=0.8)
    assert run(TurnDetector(options), [0.7] * 40) == []
    assert options.silence_below == pytest.approx(0.65)
    # A low threshold keeps a silence band: hysteresis is at most half the threshold.
    assert TurnOptions(threshold=0.1).silence_below == pytest.approx(0.05)
    events = run(TurnDetector(TurnOptions(threshold=0.1)), [0.2] * 10 + [0.01] * 20)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_end_turn_returns_to_idle_and_continued_speech_opens_a_new_turn() -> None:
    detector = TurnDetector(TurnOptions())
    assert [type(e) for e in run(detector, [0.9] * 10)] == [SpeechStarted]
    assert detector.in_turn
    detector.end_turn()  # the client's commit final:true
    assert not detector.in_turn
    events = run(detector, [0.9] * 10, first_end=11 * WINDOW)
    # Confirmed anew from the first window after the end.
    assert events == [
        SpeechStarted(
            audio_start_ms=10 * WINDOW, turn_start_ms=10 * WINDOW - 300, detected_ms=18 * WINDOW
        )
    ]


@given(
    probabilities=st.lists(st.sampled_from([0.0, 0.2, 0.4, 0.6, 1.0]), max_size=300),
    silence_ms=st.integers(1, 1000),
    min_speech_ms=st.integers(0, 500),
    prefix_padding_ms=st.integers(0, 500),
)
def test_facts_agree_with_the_windows(
    probabilities: list[float], silence_ms: int, min_speech_ms: int, prefix_padding_ms: int
) -> None:
    options = TurnOptions(0.5, silence_ms, prefix_padding_ms, min_speech_ms)
    events = run(TurnDetector(options), probabilities)
    starts = [WINDOW * i for i in range(len(probabilities))]

    def probs_in(begin: int, end: int) -> list[float]:
        return [p for s, p in zip(starts, probabilities, strict=True) if begin <= s < end]

    started: SpeechStarted | None = None
    for i, event in enumerate(events):
        # Facts alternate, a start first.
        assert isinstance(event, SpeechStarted if i % 2 == 0 else SpeechStopped)
        if isinstance(event, SpeechStarted):
            assert event.detected_ms - event.audio_start_ms >= min_speech_ms
            assert event.turn_start_ms == max(0, event.audio_start_ms - prefix_padding_ms)
            speech = probs_in(event.audio_start_ms, event.detected_ms)
            assert speech[0] >= 0.5
            assert min(speech) >= options.silence_below
            started = event
        else:
            assert started is not None
            assert event.audio_end_ms >= started.detected_ms
            assert event.detected_ms - event.audio_end_ms >= silence_ms
            silence = probs_in(event.audio_end_ms, event.detected_ms)
            assert silence[0] < options.silence_below
            assert max(silence) < 0.5


def test_windows_must_advance() -> None:
    detector = TurnDetector(TurnOptions())
    detector.push(64, 0.1)
    with pytest.raises(ValueError, match="not after the last one"):
        detector.push(64, 0.1)


def test_windows_may_be_of_any_length() -> None:
    # Times come from the windows' ends, not from a fixed window size.
    detector = TurnDetector(TurnOptions(min_speech_ms=250, silence_ms=500))
    assert detector.push(1000, 0.1) is None
    assert detector.push(1100, 0.9) is None
    assert detector.push(1300, 0.9) == SpeechStarted(1000, 700, 1300)
    assert detector.push(1700, 0.1) is None
    assert detector.push(1800, 0.1) == SpeechStopped(1300, 1800)


def test_options_from_json_reads_each_field() -> None:
    options = TurnOptions.from_json(
        {
            "type": "server_vad",
            "threshold": 0.6,
            "silence_ms": 800,
            "prefix_padding_ms": 0,
            "min_speech_ms": 100,
        }
    )
    assert options == TurnOptions(0.6, 800, 0, 100)
    assert TurnOptions.from_json({"threshold": 1e-3}).threshold == 1e-3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("server_vad", "turn_detection 'server_vad' is invalid: use an object like {\"type\""),
        ([], "turn_detection [] is invalid"),
        ({"type": "semantic_vad"}, "type 'semantic_vad' is not supported"),
        ({"silence": 500}, "unknown field(s) silence"),
        ({"threshold": 0}, "threshold 0 is invalid"),
        ({"threshold": 1}, "threshold 1 is invalid"),
        ({"threshold": "0.5"}, "threshold '0.5' is invalid"),
        ({"threshold": True}, "threshold True is invalid"),
        ({"threshold": "9" * 1000}, "threshold '" + "9" * 36 + "... is invalid"),
        ({"silence_ms": 0}, "silence_ms 0 is invalid"),
        ({"silence_ms": 10_001}, "silence_ms 10001 is invalid"),
        ({"silence_ms": 500.0}, "silence_ms 500.0 is invalid: use a whole number"),
        ({"prefix_padding_ms": -1}, "prefix_padding_ms -1 is invalid"),
        ({"prefix_padding_ms": 2001}, "prefix_padding_ms 2001 is invalid"),
        ({"min_speech_ms": None}, "min_speech_ms None is invalid"),
        ({"min_speech_ms": False}, "min_speech_ms False is invalid"),
    ],
)
def test_options_from_json_refuses_bad_values(raw: object, message: str) -> None:
    with pytest.raises(TurnOptionsError) as refused:
        TurnOptions.from_json(raw)
    assert message in str(refused.value)
    assert "use " in str(refused.value)
