"""DTMF detector against the ITU-T Q.24 receiver table (North American / Bellcore column)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.media.dtmf import (
    DIGITS,
    FULL_SCALE_SINE_DBM0,
    ZERO_DBM0_PEAK,
    DtmfDetector,
    dbm0_to_peak,
    detect_digits,
    digit_frequencies,
    dual_tone,
    generate_digits,
)
from ccpbx.media.errors import MediaConfigError, MediaError
from ccpbx.media.source import FRAME_SAMPLES

# Start offsets that put the tone at different phases of the 80-sample block grid.
OFFSETS = (0, 23, 51, 77, 141)


def _tone(
    digit: str,
    *,
    ms: float = 100,
    level: float = -10.0,
    twist: float = 0.0,
    low_offset: float = 0.0,
    high_offset: float = 0.0,
    lead: int = 0,
    snr_db: float | None = None,
    seed: int = 0,
) -> npt.NDArray[np.int16]:
    low, high = digit_frequencies(digit)
    tone = dual_tone(low * (1 + low_offset), high * (1 + high_offset), ms, level, level - twist).astype(float)
    signal = np.concatenate([np.zeros(lead), tone, np.zeros(400)])
    if snr_db is not None:
        power = float(np.mean(tone**2))
        noise = np.random.default_rng(seed).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), signal.size)
        signal = signal + noise
    return np.clip(np.rint(signal), -32768, 32767).astype(np.int16)


def test_level_reference_is_g711() -> None:
    # A full-scale sine is +3.17 dBm0 (G.711 table 5).
    assert dbm0_to_peak(FULL_SCALE_SINE_DBM0) == pytest.approx(32767.0)
    assert abs(ZERO_DBM0_PEAK - 22_756) < 10


@pytest.mark.parametrize("digit", list(DIGITS))
def test_every_digit_at_nominal(digit: str) -> None:
    for lead in OFFSETS:
        assert detect_digits(_tone(digit, lead=lead)) == digit


def test_all_digits_in_one_signal() -> None:
    assert detect_digits(generate_digits(DIGITS)) == DIGITS
    assert detect_digits(generate_digits(DIGITS.lower())) == DIGITS


# Q.24 frequency tolerance: accept within +-1.5 %, reject beyond +-3.5 %, on either group.
@pytest.mark.parametrize(
    ("offset", "accepted"), [(0.015, True), (-0.015, True), (0.035, False), (-0.035, False), (0.05, False)]
)
@pytest.mark.parametrize("group", ["low", "high"])
def test_frequency_tolerance_table(offset: float, accepted: bool, group: str) -> None:
    for digit in DIGITS:
        for lead in (0, 51):
            kwargs = {"low_offset": offset} if group == "low" else {"high_offset": offset}
            got = detect_digits(_tone(digit, lead=lead, **kwargs))  # type: ignore[arg-type]
            assert got == (digit if accepted else ""), (digit, group, offset, lead)


def test_both_groups_off_by_accepted_tolerance() -> None:
    for digit in DIGITS:
        for sign in (1, -1):
            assert detect_digits(_tone(digit, low_offset=0.015 * sign, high_offset=-0.015 * sign)) == digit


# Twist = low-group level minus high-group level. Normal twist (high group weaker) up to 8 dB and reverse
# twist up to 4 dB are accepted; 10 dB normal and 6 dB reverse are rejected.
@pytest.mark.parametrize(("twist", "accepted"), [(8.0, True), (-4.0, True), (10.0, False), (-6.0, False)])
def test_twist_table(twist: float, accepted: bool) -> None:
    for digit in DIGITS:
        assert detect_digits(_tone(digit, twist=twist)) == (digit if accepted else ""), (digit, twist)


@pytest.mark.parametrize(("ms", "accepted"), [(40, True), (45, True), (20, False), (22, False)])
def test_duration(ms: float, accepted: bool) -> None:
    for digit in "15*D":
        for lead in range(0, 160, 9):
            assert detect_digits(_tone(digit, ms=ms, lead=lead)) == (digit if accepted else ""), (ms, lead)


def test_pause_of_40_ms_separates_repeated_digit() -> None:
    for lead in range(0, 160, 13):
        signal = np.concatenate([np.zeros(lead, np.int16), generate_digits("55", tone_ms=40, pause_ms=40)])
        assert detect_digits(signal) == "55", lead


def test_break_of_10_ms_does_not_split_a_digit() -> None:
    for lead in range(0, 160, 13):
        tone = _tone("9", ms=200, lead=lead)
        gap_start = lead + 700
        tone[gap_start : gap_start + 80] = 0
        assert detect_digits(tone) == "9", lead


@pytest.mark.parametrize(("level", "accepted"), [(-25.0, True), (-30.0, True), (-45.0, False), (-60.0, False)])
def test_level(level: float, accepted: bool) -> None:
    for digit in DIGITS:
        assert detect_digits(_tone(digit, level=level)) == (digit if accepted else ""), (digit, level)


def test_white_noise_at_15_db_snr() -> None:
    for seed, digit in enumerate(DIGITS):
        for level in (-10.0, -25.0):
            assert detect_digits(_tone(digit, level=level, snr_db=15.0, seed=seed)) == digit, (digit, level)


def test_noise_alone_gives_nothing() -> None:
    noise = np.random.default_rng(3).normal(0, 3000, 8000 * 10)
    assert detect_digits(np.clip(noise, -32768, 32767).astype(np.int16)) == ""


def test_single_tones_give_nothing() -> None:
    t = np.arange(8000) / 8000
    for f in (697.0, 941.0, 1209.0, 1633.0):
        assert detect_digits(np.rint(8000 * np.sin(2 * np.pi * f * t)).astype(np.int16)) == ""


def test_resampled_input() -> None:
    signal = generate_digits("147*", rate=16000)
    assert detect_digits(signal, rate=16000) == "147*"
    assert detect_digits(generate_digits("2580", rate=44100), rate=44100) == "2580"


def test_multichannel_rows_are_isolated() -> None:
    capacity = 40
    detector = DtmfDetector(capacity)
    rows = np.array([3, 17, 5, 39, 0], dtype=np.intp)
    sent = ["123", "A#", "", "D0D", "9*"]
    signals = [generate_digits(s, tone_ms=60, pause_ms=60) for s in sent]
    # Different lengths and different start delays per row.
    length = 8000 * 2
    pcm = np.zeros((rows.size, length), dtype=np.int16)
    for i, s in enumerate(signals):
        pcm[i, 37 * i : 37 * i + s.size] = s
    got: dict[int, str] = {int(r): "" for r in rows}
    for t in range(length // FRAME_SAMPLES):
        for row, digit in detector.process(rows, pcm[:, t * FRAME_SAMPLES : (t + 1) * FRAME_SAMPLES]):
            got[row] += digit
    assert got == {int(r): s for r, s in zip(rows, sent, strict=True)}


def test_rows_may_change_between_calls_and_reset_forgets() -> None:
    detector = DtmfDetector(4)
    tone = _tone("7", ms=200)
    frames = tone[: 8 * FRAME_SAMPLES].reshape(8, FRAME_SAMPLES)
    # Row 1 hears 20 ms of the tone (two blocks, too short), is reset (a new channel takes the slot) and
    # hears the next 20 ms: without the reset those would make three consecutive blocks and a digit.
    found: list[tuple[int, str]] = []
    found += detector.process(np.array([1, 2], dtype=np.intp), np.stack([frames[0], np.zeros_like(frames[0])]))
    detector.reset(1)
    found += detector.process(np.array([1], dtype=np.intp), frames[1][None, :])
    assert found == []
    for f in frames[2:]:
        found += detector.process(np.array([1], dtype=np.intp), f[None, :])
    assert found == [(1, "7")]
    control = DtmfDetector(1)
    got = [control.process(np.zeros(1, dtype=np.intp), f[None, :]) for f in frames[:2]]
    assert got == [[], [(0, "7")]]
    detector.grow(10)
    assert detector.capacity == 10
    assert detector.process(np.array([9], dtype=np.intp), frames[:1]) == []


def test_boundary_errors() -> None:
    detector = DtmfDetector(2)
    with pytest.raises(MediaConfigError):
        detector.process(np.array([0], dtype=np.intp), np.zeros((1, 80), dtype=np.int16))
    with pytest.raises(MediaError):
        detector.reset(2)
    with pytest.raises(MediaConfigError):
        detector.grow(1)
    with pytest.raises(MediaConfigError):
        generate_digits("12x")
    with pytest.raises(MediaConfigError):
        detect_digits(np.zeros((2, 2), dtype=np.int16))
    assert detector.process(np.zeros(0, dtype=np.intp), np.zeros((0, 160), dtype=np.int16)) == []


@settings(max_examples=40, deadline=None)
@given(
    digits=st.text(alphabet=DIGITS, min_size=1, max_size=6),
    lead=st.integers(min_value=0, max_value=1000),
    tone_ms=st.integers(min_value=40, max_value=120),
    pause_ms=st.integers(min_value=40, max_value=120),
    level=st.floats(min_value=-25.0, max_value=-3.0),
    twist=st.floats(min_value=-4.0, max_value=8.0),
)
def test_random_strings_at_random_offsets(
    digits: str, lead: int, tone_ms: int, pause_ms: int, level: float, twist: float
) -> None:
    signal = generate_digits(digits, tone_ms=tone_ms, pause_ms=pause_ms, level_dbm0=level, twist_db=twist)
    assert detect_digits(np.concatenate([np.zeros(lead, np.int16), signal])) == digits
