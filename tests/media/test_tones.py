"""Call-progress tones: frequencies by FFT, cadences measured from the samples, phase continuity."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from ccpbx.media.dtmf import dbm0_to_peak
from ccpbx.media.errors import MediaConfigError
from ccpbx.media.source import FRAME_SAMPLES, SAMPLE_RATE, AudioSource
from ccpbx.media.tones import TONES, Region, ToneKind, ToneSource, ToneSpec, tone_source

EXPECTED = {
    (ToneKind.DIAL, Region.ETSI): ((425.0,), ()),
    (ToneKind.RINGBACK, Region.ETSI): ((425.0,), (1000, 4000)),
    (ToneKind.BUSY, Region.ETSI): ((425.0,), (500, 500)),
    (ToneKind.CONGESTION, Region.ETSI): ((425.0,), (200, 200)),
    (ToneKind.DIAL, Region.NORTH_AMERICA): ((350.0, 440.0), ()),
    (ToneKind.RINGBACK, Region.NORTH_AMERICA): ((440.0, 480.0), (2000, 4000)),
    (ToneKind.BUSY, Region.NORTH_AMERICA): ((480.0, 620.0), (500, 500)),
    (ToneKind.CONGESTION, Region.NORTH_AMERICA): ((480.0, 620.0), (250, 250)),
}


def _render(source: ToneSource, seconds: float) -> npt.NDArray[np.int16]:
    frames = round(seconds * SAMPLE_RATE / FRAME_SAMPLES)
    out = [source.read_frame() for _ in range(frames)]
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in out)
    return np.concatenate(out)


def _runs(on: npt.NDArray[np.bool_]) -> list[tuple[bool, int]]:
    """Run-length encode a boolean array into (value, length) pairs."""
    edges = np.flatnonzero(np.diff(on.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [on.size]])
    return [(bool(on[a]), int(b - a)) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("key", list(EXPECTED))
def test_frequencies_and_cadence(key: tuple[ToneKind, Region]) -> None:
    freqs, cadence = EXPECTED[key]
    assert set(TONES) == set(EXPECTED)
    spec = TONES[key]
    assert spec.frequencies_hz == freqs and spec.cadence_ms == cadence
    source = tone_source(*key)
    assert isinstance(source, AudioSource)
    period_s = sum(cadence) / 1000 if cadence else 1.0
    audio = _render(source, 2 * period_s)

    # Dominant frequencies: the strongest FFT peaks of the sounding part, 1 Hz resolution.
    sounding = audio[: SAMPLE_RATE // 5].astype(np.float64)  # every cadence starts with >= 200 ms on
    spectrum = np.abs(np.fft.rfft(sounding, n=SAMPLE_RATE))
    # Neighbouring bins of one peak may outrank a second tone, so rank local maxima only.
    local = [i for i in range(1, spectrum.size - 1) if spectrum[i] >= spectrum[i - 1] and spectrum[i] > spectrum[i + 1]]
    top = sorted(sorted(local, key=lambda i: spectrum[i])[-len(freqs) :])
    assert top == [round(f) for f in freqs], top

    # Level: each component at the spec level (peak of the sum = sum of peaks, within rounding).
    assert np.abs(sounding).max() == pytest.approx(len(freqs) * dbm0_to_peak(spec.level_dbm0), rel=0.02)

    # Cadence measured from the samples: a sample is "on" if the 5 ms around it has energy.
    energy = np.convolve(audio.astype(np.float64) ** 2, np.ones(40), mode="same") > 1.0
    runs = _runs(energy)
    if not cadence:
        assert runs == [(True, audio.size)]
        return
    expected_runs = [(i % 2 == 0, ms * SAMPLE_RATE // 1000) for i, ms in enumerate(cadence)] * 2
    assert len(runs) == len(expected_runs)
    for (value, length), (want_value, want_length) in zip(runs, expected_runs, strict=True):
        assert value == want_value
        assert abs(length - want_length) <= 40  # the 5 ms smoothing window blurs the edges


def test_phase_continuous_across_frames() -> None:
    source = ToneSource(ToneSpec((425.0,), -10.0))
    audio = _render(source, 0.5).astype(np.float64)
    t = np.arange(audio.size) / SAMPLE_RATE
    reference = dbm0_to_peak(-10.0) * np.sin(2 * np.pi * 425.0 * t)
    assert np.abs(audio - reference).max() <= 1.0
    # No discontinuity at any frame boundary: the sample-to-sample step stays within a sine's slope.
    max_step = dbm0_to_peak(-10.0) * 2 * np.pi * 425.0 / SAMPLE_RATE
    assert np.abs(np.diff(audio)).max() <= max_step + 1.0


def test_bad_specs() -> None:
    with pytest.raises(MediaConfigError):
        ToneSpec((), -10.0)
    with pytest.raises(MediaConfigError):
        ToneSpec((5000.0,), -10.0)
    with pytest.raises(MediaConfigError):
        ToneSpec((425.0,), -10.0, (500,))
    with pytest.raises(MediaConfigError):
        ToneSpec((425.0,), 3.0)
