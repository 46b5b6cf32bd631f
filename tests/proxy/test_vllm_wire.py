"""proxy.vllm_wire: vLLM's message texts and token clock."""

from __future__ import annotations

import json

import pytest

from proxy import vllm_wire
from proxy.vllm_wire import (
    FRAME_BYTES,
    FRAME_MS,
    LEFT_PAD_FRAMES,
    PCM_BYTES_PER_MS,
    TranscriptionDelta,
    TranscriptionDone,
    UpstreamError,
    decode_event,
    generation_tokens,
    max_steps,
    owed_audio_bytes,
    prompt_tokens,
    right_pad_frames,
    segment_audio_limit,
    segment_limit,
    step_audio_bytes,
    steps_sent,
)

MS = 32  # bytes of 16 kHz PCM16 per millisecond
DELAYS = [80, 480, 2400]
USAGE = {"prompt_tokens": 39, "completion_tokens": 5, "total_tokens": 44}


def test_the_frame_is_80_ms_of_16_khz_pcm16() -> None:
    assert FRAME_MS == 80
    assert FRAME_BYTES == 2560
    assert LEFT_PAD_FRAMES == 32


def test_token_clock() -> None:
    # BOS + 32 left-pad tokens + one per 80 ms of delay.
    assert prompt_tokens(480) == 39
    assert prompt_tokens(2400) == 63
    # The final commit pads the audio with the delay plus 11 frames of silence.
    assert right_pad_frames(480) == 17
    assert right_pad_frames(80) == 12
    # vLLM owes an event once its delay plus two frames of audio went up unanswered.
    assert owed_audio_bytes(480) == 8 * FRAME_BYTES


def test_a_generation_of_n_seconds_fits_the_model_length_made_for_it() -> None:
    for seconds, delay in ((300.0, 480), (60.0, 2400), (12.34, 80)):
        tokens = generation_tokens(seconds, delay)
        limit = segment_audio_limit(tokens, delay)
        assert limit is not None
        assert limit >= seconds * 1000 * PCM_BYTES_PER_MS
        assert limit - FRAME_BYTES < seconds * 1000 * PCM_BYTES_PER_MS


def test_the_segment_limit_is_the_proxys_bound_or_vllms_if_shorter() -> None:
    assert segment_limit(None, 480, 300.0) == 300 * 1000 * PCM_BYTES_PER_MS
    assert segment_limit(131072, 480, 300.0) == 300 * 1000 * PCM_BYTES_PER_MS
    assert segment_limit(2048, 480, 300.0) == segment_audio_limit(2048, 480)
    assert segment_limit(40, 480, 300.0) == 300 * 1000 * PCM_BYTES_PER_MS  # vLLM's is none


def test_segment_audio_limit_formula() -> None:
    # frames = max_model_len - 33 - delay/80 - 12
    assert segment_audio_limit(4096, 480) == (4096 - 33 - 6 - 12) * FRAME_BYTES
    assert segment_audio_limit(131072, 2400) == (131072 - 33 - 30 - 12) * FRAME_BYTES
    assert segment_audio_limit(128, 80) == (128 - 33 - 1 - 12) * FRAME_BYTES
    assert segment_audio_limit(52, 480) == FRAME_BYTES
    assert segment_audio_limit(51, 480) is None
    assert segment_audio_limit(10, 480) is None


# Deltas per utterance with a final commit, as the real vLLM sent them at 80, 480 and 2400 ms
# (tests/e2e/test_vllm_clock.py), plus earlier observations at 480 ms.
OBSERVED_WITH_FINAL = [
    (0, 0),
    (2, 10),
    (400 * MS, 15),
    (1000 * MS, 23),
    (1234 * MS, 26),
    (3000 * MS, 48),
    (10 * FRAME_BYTES + 78, 20),
    (10 * FRAME_BYTES + 80, 21),
    (300 * MS, 14),
    (500 * MS, 17),
    (2000 * MS, 35),
    (3614 * MS, 56),
    (10842 * MS, 146),
]
# Deltas sent before the final commit once this much audio was in, per delay (real vLLM).
OBSERVED_BEFORE_FINAL = [
    (80, 5198, 0),
    (80, 5200, 1),
    (80, 7760, 2),
    (80, 15440, 5),
    (480, 17998, 0),
    (480, 18000, 1),
    (480, 20560, 2),
    (480, 28240, 5),
    (2400, 79438, 0),
    (2400, 79440, 1),
    (2400, 82000, 2),
    (2400, 89680, 5),
]


@pytest.mark.parametrize("delay_ms", DELAYS)
@pytest.mark.parametrize(("audio_bytes", "deltas"), OBSERVED_WITH_FINAL)
def test_steps_with_the_final_commit_match_vllm(
    audio_bytes: int, deltas: int, delay_ms: int
) -> None:
    assert steps_sent(audio_bytes, delay_ms, final=True) == deltas


@pytest.mark.parametrize(("delay_ms", "audio_bytes", "deltas"), OBSERVED_BEFORE_FINAL)
def test_steps_before_the_final_commit_match_vllm(
    delay_ms: int, audio_bytes: int, deltas: int
) -> None:
    assert steps_sent(audio_bytes, delay_ms, final=False) == deltas


@pytest.mark.parametrize("delay_ms", DELAYS)
def test_each_step_runs_from_exactly_its_audio(delay_ms: int) -> None:
    """The session sends audio on these boundaries: a sample short of one, the step waits."""
    for step in range(6):
        needed = step_audio_bytes(step, delay_ms)
        assert steps_sent(needed, delay_ms, final=False) == step + 1
        assert steps_sent(needed - 2, delay_ms, final=False) == step
    assert step_audio_bytes(0, 480) == 18_000  # 562.5 ms


@pytest.mark.parametrize(
    ("delay_ms", "prompt", "cap"), [(80, 34, 94), (480, 39, 89), (2400, 63, 65)]
)
def test_prompt_and_length_cap_match_vllm(delay_ms: int, prompt: int, cap: int) -> None:
    assert prompt_tokens(delay_ms) == prompt
    assert max_steps(128, delay_ms) == cap
    assert max_steps(prompt, delay_ms) == 0


@pytest.mark.parametrize("delay_ms", DELAYS)
@pytest.mark.parametrize("max_model_len", [52, 128, 2048, 131072])
def test_a_segment_at_the_audio_limit_flushes_before_the_cap(
    max_model_len: int, delay_ms: int
) -> None:
    """The proxy's cut is 2 frames and 78 bytes short of the most a generation can take with
    its flush inside ``max_model_len`` (a margin kept on purpose; the rollover e2e test runs
    with this limit)."""
    limit = segment_audio_limit(max_model_len, delay_ms)
    cap = max_steps(max_model_len, delay_ms)
    if limit is None:
        assert steps_sent(FRAME_BYTES, delay_ms, final=True) >= cap
        return
    exact = (cap - 10) * FRAME_BYTES + 78
    assert steps_sent(exact, delay_ms, final=True) == cap
    assert steps_sent(exact + 2, delay_ms, final=True) == cap + 1
    assert limit == exact - 2 * FRAME_BYTES - 78


def test_message_texts_are_what_vllm_reads() -> None:
    assert json.loads(vllm_wire.append_text("AAAA")) == {
        "type": "input_audio_buffer.append",
        "audio": "AAAA",
    }
    assert json.loads(vllm_wire.COMMIT_OPEN) == {
        "type": "input_audio_buffer.commit",
        "final": False,
    }
    assert json.loads(vllm_wire.COMMIT_FINAL) == {
        "type": "input_audio_buffer.commit",
        "final": True,
    }
    assert json.loads(vllm_wire.session_update_text("m")) == {
        "type": "session.update",
        "model": "m",
    }


def test_decode_event() -> None:
    assert decode_event(vllm_wire.EMPTY_DELTA_TEXT) is vllm_wire.EMPTY_DELTA
    assert decode_event('{"type": "transcription.delta", "delta": " a"}') == TranscriptionDelta(
        " a"
    )
    # A delta without usable text is an empty step, like vLLM's own.
    assert decode_event('{"type": "transcription.delta"}') is vllm_wire.EMPTY_DELTA
    assert decode_event('{"type": "session.created", "id": "x"}') is vllm_wire.OTHER_EVENT
    assert decode_event("[1]") is None
    assert decode_event("{not json") is None


def test_decode_done_keeps_the_whole_token_counts() -> None:
    raw = {"type": "transcription.done", "text": "a", "usage": {**USAGE, "total_tokens": "9"}}
    assert decode_event(json.dumps(raw)) == TranscriptionDone(
        {"prompt_tokens": 39, "completion_tokens": 5}
    )
    assert decode_event('{"type": "transcription.done"}') == TranscriptionDone({})


def test_decode_error_keeps_vllms_code_and_a_bounded_message() -> None:
    event = decode_event(
        json.dumps({"type": "error", "code": "processing_error", "error": "x" * 400})
    )
    assert isinstance(event, UpstreamError)
    assert event.details() == {
        "upstream_code": "processing_error",
        "upstream_message": "x" * 300,
    }
    bare = decode_event('{"type": "error"}')
    assert isinstance(bare, UpstreamError)
    assert bare.details() == {"upstream_code": "None"}
