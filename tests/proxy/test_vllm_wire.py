"""proxy.vllm_wire: vLLM's message texts and token clock."""

from __future__ import annotations

import json

from proxy import vllm_wire
from proxy.vllm_wire import (
    FRAME_BYTES,
    FRAME_MS,
    LEFT_PAD_FRAMES,
    decode_event,
    owed_audio_bytes,
    prompt_tokens,
    right_pad_frames,
    segment_audio_limit,
)


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


def test_segment_audio_limit_formula() -> None:
    # frames = max_model_len - 33 - delay/80 - 12
    assert segment_audio_limit(4096, 480) == (4096 - 33 - 6 - 12) * FRAME_BYTES
    assert segment_audio_limit(131072, 2400) == (131072 - 33 - 30 - 12) * FRAME_BYTES
    assert segment_audio_limit(128, 80) == (128 - 33 - 1 - 12) * FRAME_BYTES
    assert segment_audio_limit(52, 480) == FRAME_BYTES
    assert segment_audio_limit(51, 480) is None
    assert segment_audio_limit(10, 480) is None


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
    assert decode_event(vllm_wire.EMPTY_DELTA_TEXT) == {"type": "transcription.delta", "delta": ""}
    assert decode_event('{"type": "transcription.delta", "delta": " a"}') == {
        "type": "transcription.delta",
        "delta": " a",
    }
    assert decode_event("[1]") is None
    assert decode_event("{not json") is None


def test_error_details_keep_vllms_code_and_a_bounded_message() -> None:
    event = {"type": "error", "code": "processing_error", "error": "x" * 400}
    assert vllm_wire.error_details(event) == {
        "upstream_code": "processing_error",
        "upstream_message": "x" * 300,
    }
    assert vllm_wire.error_details({"type": "error"}) == {"upstream_code": "None"}
