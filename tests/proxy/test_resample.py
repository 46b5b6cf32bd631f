"""proxy.resample: the low-delay polyphase FIR against a direct-form reference, its passband,
its rejection of what would fold into the passband, and how little it holds back."""

from __future__ import annotations

import tracemalloc

import numpy as np
import numpy.typing as npt
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resample import (
    MAX_PHASES,
    OUTPUT_RATE,
    Resampler,
    design_filter,
    make_resampler,
    phases_for,
)

FIR_RATES = [8000, 11025, 12000, 22050, 24000, 32000, 44100, 48000]


def direct_form(rate: int, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The whole signal by the definition, in float64: output n is the prototype's convolution
    with the input upsampled by L (zeros between samples) at instant n * M + the centre."""
    up, down, prototype = design_filter(rate)
    count = -(-x.size * up // down)
    instant = np.arange(count)[:, None] * down + (prototype.size - 1) // 2
    source = instant // up - np.arange(-(-prototype.size // up))[None, :]
    tap = instant - source * up
    inside = (source >= 0) & (source < x.size) & (tap < prototype.size)
    values = x[source.clip(0, x.size - 1)] * prototype[tap.clip(0, prototype.size - 1)]
    terms = np.where(inside, values, 0.0)
    return terms.sum(axis=1)


def streamed(rate: int, x: npt.NDArray[np.float32], cuts: list[int]) -> npt.NDArray[np.float32]:
    resampler = make_resampler(rate)
    pieces, start = [], 0
    for size in cuts:
        pieces.append(resampler.feed(x[start : start + size]))
        start += size
    pieces.append(resampler.feed(x[start:]))
    pieces.append(resampler.flush())
    return np.concatenate(pieces)


def noise(rate: int, seconds: float, seed: int = 1) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(rate * seconds)) * 3000).astype(np.float32)


def level_db(rate: int, hz: float, seconds: float = 1.0) -> tuple[float, float]:
    """A full-scale tone at `hz` through the resampler: (level at `hz` or where it folds to,
    strongest other component), both in dB relative to the input tone."""
    t = np.arange(int(rate * seconds)) / rate
    x = (np.sin(2 * np.pi * hz * t) * 10_000).astype(np.float32)
    y = streamed(rate, x, [rate // 50] * (int(seconds * 50) - 1)).astype(np.float64)
    y = y[OUTPUT_RATE // 10 : -OUTPUT_RATE // 10]  # the edges' transients left out
    window = np.hanning(y.size)
    spectrum = np.abs(np.fft.rfft(y * window)) / (window.sum() / 2) / 10_000
    freqs = np.fft.rfftfreq(y.size, 1 / OUTPUT_RATE)
    folded = abs(hz - OUTPUT_RATE * round(hz / OUTPUT_RATE))
    near = np.abs(freqs - folded) <= 30
    return float(20 * np.log10(spectrum[near].max())), float(20 * np.log10(spectrum[~near].max()))


def passband_top(rate: int) -> float:
    return 3400.0 if rate == 8000 else min(7000.0, 0.425 * rate)


@pytest.mark.parametrize("rate", FIR_RATES)
def test_common_rates_take_the_fir(rate: int) -> None:
    assert phases_for(rate) <= MAX_PHASES
    assert isinstance(make_resampler(rate), Resampler)


def test_odd_rates_take_soxr_and_16_khz_takes_nothing() -> None:
    assert phases_for(8001) > MAX_PHASES
    assert not isinstance(make_resampler(8001), Resampler)
    with pytest.raises(ValueError, match="no resampling"):
        make_resampler(OUTPUT_RATE)


@pytest.mark.parametrize("rate", [*FIR_RATES, 8001])
@pytest.mark.parametrize("piece_ms", [10, 20, 40, 80])
def test_streamed_equals_one_shot(rate: int, piece_ms: int) -> None:
    x = noise(rate, 0.5)
    step = rate * piece_ms // 1000
    pieces = streamed(rate, x, [step] * (x.size // step))
    whole = streamed(rate, x, [])
    if rate == 8001:  # soxr's own one-shot call is the reference
        reference = soxr.resample(x, rate, OUTPUT_RATE, quality="HQ")
    else:
        reference = direct_form(rate, x.astype(np.float64)).astype(np.float32)
        assert reference.size == -(-x.size * OUTPUT_RATE // rate)
    assert pieces.size == whole.size == reference.size
    assert np.max(np.abs(pieces - whole)) <= 0.01
    assert np.max(np.abs(whole - reference)) <= 0.05


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(FIR_RATES), st.lists(st.integers(0, 700), max_size=25))
def test_any_cut_gives_the_same_samples(rate: int, cuts: list[int]) -> None:
    x = noise(rate, 0.4, seed=sum(cuts))
    assert np.max(np.abs(streamed(rate, x, cuts) - streamed(rate, x, []))) <= 0.01


@pytest.mark.parametrize("rate", FIR_RATES)
def test_passband_is_flat_within_1_db(rate: int) -> None:
    for hz in (300.0, 1000.0, passband_top(rate)):
        t = np.arange(rate) / rate
        x = (np.sin(2 * np.pi * hz * t) * 10_000).astype(np.float32)
        y = streamed(rate, x, [rate // 50] * 49)[OUTPUT_RATE // 10 : -OUTPUT_RATE // 10]
        level = 20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2)) / (10_000 / np.sqrt(2)))
        assert abs(level) <= 1.0, (hz, level)


@pytest.mark.parametrize("rate", FIR_RATES)
def test_what_would_fold_into_the_passband_is_60_db_down(rate: int) -> None:
    # Downsampling: tones above 16 kHz - the passband top fold into the passband. Upsampling:
    # each tone's image (at rate - f) lands where the tone is absent; both must be 60 dB down.
    top = passband_top(rate)
    low = min(rate, OUTPUT_RATE)
    if rate > OUTPUT_RATE:
        tones = np.linspace(low - top, rate / 2 * 0.98, 6)
        for hz in tones:
            level, _ = level_db(rate, hz)
            assert level <= -60.0, (hz, level)
    else:
        for hz in np.linspace(500.0, top, 5):
            _, other = level_db(rate, hz)
            assert other <= -60.0, (hz, other)


@pytest.mark.parametrize("rate", FIR_RATES)
def test_a_20_ms_piece_goes_out_but_for_at_most_2_ms(rate: int) -> None:
    resampler = make_resampler(rate)
    x = noise(rate, 1.0)
    step = rate // 50
    out = 0
    for start in range(0, x.size - step + 1, step):
        out += resampler.feed(x[start : start + step]).size
        owed = (start + step) * OUTPUT_RATE // rate
        assert owed - out <= OUTPUT_RATE * 2 // 1000, (start, owed - out)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_a_frame_of_the_largest_size_takes_memory_in_proportion(rate: int) -> None:
    # 1 MiB of PCM16 (the default frame limit) in one piece: the work goes in blocks, so no
    # temporary grows with the piece beyond a few times the output itself.
    x = np.zeros(2**19, dtype=np.float32)
    resampler = make_resampler(rate)
    tracemalloc.start()
    try:
        out = resampler.feed(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 3 * out.nbytes + x.nbytes + 2**20, peak
