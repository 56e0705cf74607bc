"""DTMF detection and generation: a streaming Goertzel detector vectorised over many channels.

Implements the receiver requirements of ITU-T Q.24 (the North American / Bellcore GR-506 column of its
table, which also covers ETSI ES 201 235-3) and the signal plan of ITU-T Q.23:

=========================  ==========================================================================
frequencies                low group 697, 770, 852, 941 Hz; high group 1209, 1336, 1477, 1633 Hz
frequency tolerance        accept within +-1.5 % of nominal, reject beyond +-3.5 % (decision at 2.5 %)
twist                      accept the high-group tone up to 8 dB *below* the low-group tone ("normal"
                           twist: line loss grows with frequency) and up to 4 dB *above* it ("reverse"
                           twist); the decision thresholds sit 1 dB beyond those, at 9 dB and 5 dB
duration                   tones of 40 ms and longer detected; tones shorter than 23 ms rejected
interdigit pause           40 ms separates two digits; an interruption of 10 ms or less does not
level                      -25 dBm0 per tone detected; below -36 dBm0 per tone nothing is (floor)
noise                      detected with white noise at 15 dB SNR; speech must not produce digits
=========================  ==========================================================================

Level reference (ITU-T G.711 section 3, table 5): a sine wave whose peak is the full int16 scale is
+3.17 dBm0, so 0 dBm0 is a sine of peak ``ZERO_DBM0_PEAK`` = 32767 * 10**(-3.17/20), about 22,750.

How it works
------------
Audio is cut into 10 ms analysis blocks of ``BLOCK_SAMPLES`` = 80 samples, two per 20 ms engine frame, so a
frame never leaves samples over and the block grid of every channel is the frame grid. For every block the
eight Goertzel terms (the DFT at the eight DTMF frequencies) of all channels are one matrix product,
``(2k, 80) @ (80, 16)`` against cosine and sine basis columns. A block is *valid* for digit (r, c) when

1. the strongest low-group bin r and high-group bin c are both above the level floor;
2. their ratio is inside the twist window;
3. the two tones carry at least ``TONE_TO_TOTAL_MIN`` of the block's energy: speech, music and noise
   spread their energy over many frequencies and fail here (the main talk-off guard);
4. no other bin of either group is within ``RELATIVE_PEAK_DB`` of the winner;
5. each tone's frequency, measured from the phase advance of its Goertzel term between this block and the
   previous one (10 ms apart), is within 2.5 % of nominal. An 80-sample block alone resolves only
   100 Hz, far too coarse for the +-1.5 % / +-3.5 % rule (10 Hz / 24 Hz at 697 Hz); the phase advance
   over 80 samples measures the frequency to about a hertz, and its ambiguity (+-50 Hz) is covered by
   the energy checks, which fail for tones that far off.

A per-channel state machine then declares a digit after ``HITS_TO_BEGIN`` = 3 consecutive valid blocks of
the same digit (30 ms of blocks: a 40 ms tone always contains three whole blocks, while a 23 ms tone
contains at most one whole block and two partial ones, whose tone-to-total ratio is too low), and ends it
after ``MISSES_TO_END`` = 3 blocks without it (a 10 ms break touches at most two blocks, a 40 ms pause
always covers three). The state is kept in arrays indexed by channel row, updated with vectorised numpy
operations for the rows that have anything going on.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from .errors import MediaConfigError
from .source import FRAME_SAMPLES, SAMPLE_RATE

DIGITS = "0123456789*#ABCD"
"""The sixteen DTMF digits, in RFC 4733 event-code order."""

LOW_GROUP_HZ: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
"""Row (low-group) frequencies of ITU-T Q.23, in Hz."""

HIGH_GROUP_HZ: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)
"""Column (high-group) frequencies of ITU-T Q.23, in Hz."""

KEYPAD = ("123A", "456B", "789C", "*0#D")
"""``KEYPAD[row][column]``: the digit sent as low-group tone ``row`` plus high-group tone ``column``."""

FULL_SCALE_SINE_DBM0 = 3.17
"""Level of a sine whose peak is full scale, in dBm0 (ITU-T G.711 table 5): the one level reference."""

ZERO_DBM0_PEAK = 32767.0 * 10.0 ** (-FULL_SCALE_SINE_DBM0 / 20.0)
"""Peak amplitude, in int16 units, of a 0 dBm0 sine."""

BLOCK_SAMPLES = 80
"""Analysis block length in samples (10 ms at 8 kHz); two blocks per engine frame."""

BLOCKS_PER_FRAME = FRAME_SAMPLES // BLOCK_SAMPLES

MIN_TONE_DBM0 = -36.0
"""Per-tone level floor, in dBm0. Q.24 asks for detection down to -25 dBm0; tones below this floor are
never detected (the margin keeps speech echoes and line noise from reaching the other checks)."""

NORMAL_TWIST_DB = 9.0
"""How far the high-group tone may lie below the low-group tone, in dB (Q.24: accept 8 dB)."""

REVERSE_TWIST_DB = 5.0
"""How far the high-group tone may lie above the low-group tone, in dB (Q.24: accept 4 dB)."""

TONE_TO_TOTAL_MIN = 0.70
"""Minimum share of the block energy carried by the two detected tones (1.0 for a clean dual tone)."""

RELATIVE_PEAK_DB = 3.0
"""Minimum margin, in dB, of the winning bin over the other bins of its group."""

FREQUENCY_TOLERANCE = 0.025
"""Decision point of the frequency check, as a fraction of nominal (Q.24: accept 1.5 %, reject 3.5 %)."""

HITS_TO_BEGIN = 3
"""Consecutive valid blocks of one digit that declare it."""

MISSES_TO_END = 3
"""Consecutive blocks without the current digit that end it (so the same digit may be declared again)."""

_NO_DIGIT = -1
_MISS_CAP = 1000


def dbm0_to_peak(level_dbm0: float) -> float:
    """Return the peak amplitude, in int16 units, of a sine at ``level_dbm0`` (see ``ZERO_DBM0_PEAK``)."""
    return float(ZERO_DBM0_PEAK * 10.0 ** (level_dbm0 / 20.0))


def _goertzel_basis() -> npt.NDArray[np.float32]:
    n = np.arange(BLOCK_SAMPLES, dtype=np.float64)[:, None]
    freqs = np.array(LOW_GROUP_HZ + HIGH_GROUP_HZ, dtype=np.float64)[None, :]
    angle = 2.0 * math.pi * freqs * n / SAMPLE_RATE
    return np.ascontiguousarray(np.hstack([np.cos(angle), np.sin(angle)]), dtype=np.float32)


def _fit_matrices() -> npt.NDArray[np.float32]:
    """Return, for each (row, column) pair ``r * 4 + c``, the 4x4 matrix turning the Goertzel terms
    ``[cos_r, sin_r, cos_c, sin_c] . x`` of a block into the least-squares coefficients of those four basis
    vectors (the inverse of their Gram matrix); shape (16, 4, 4), float32."""
    basis = _goertzel_basis().astype(np.float64)
    out = np.empty((16, 4, 4), dtype=np.float64)
    for r in range(4):
        for c in range(4):
            b = basis[:, [r, r + 8, c + 4, c + 12]]
            out[r * 4 + c] = np.linalg.inv(b.T @ b)
    return out.astype(np.float32)


class DtmfDetector:
    """Streaming DTMF detector for up to ``capacity`` channels, ITU-T Q.24 (see the module docstring).

    Parameters
    ----------
    capacity : int
        Number of channel slots; rows passed to :meth:`process` are slot numbers ``0 .. capacity - 1``.

    Notes
    -----
    Every slot keeps its own state between calls: the candidate digit and how many blocks it has held,
    the digit currently sounding, the blocks since it was last seen, and the previous block's Goertzel
    terms (for the frequency check). A slot must be fed consecutive frames of one stream; call
    :meth:`reset` when a slot is given to a new channel.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise MediaConfigError(f"DtmfDetector capacity must be >= 0, got {capacity}")
        self._capacity = 0
        self._current = np.empty(0, dtype=np.int8)
        self._run_digit = np.empty(0, dtype=np.int8)
        self._run_length = np.empty(0, dtype=np.int32)
        self._misses = np.empty(0, dtype=np.int32)
        self._prev = np.empty((0, 16), dtype=np.float32)
        self.grow(capacity)

        self._basis = _goertzel_basis()
        freqs = np.array(LOW_GROUP_HZ + HIGH_GROUP_HZ, dtype=np.float64)
        self._freqs = freqs.astype(np.float32)
        # A pure tone at the nominal frequency advances by 2*pi*f*N/fs per block; removing that rotation
        # leaves the advance caused by the frequency error alone.
        self._derotate = np.exp(-2j * np.pi * freqs * BLOCK_SAMPLES / SAMPLE_RATE).astype(np.complex64)
        self._hz_per_radian = np.float32(SAMPLE_RATE / (2.0 * math.pi * BLOCK_SAMPLES))
        self._max_error_hz = (freqs * FREQUENCY_TOLERANCE).astype(np.float32)
        # Goertzel energy of an on-bin tone of peak A over N samples is (A * N / 2) ** 2.
        # The first screening uses the raw Goertzel energies with 3 dB of slack (leakage between the two
        # tones moves them); the exact limits are applied to the fitted amplitudes.
        self._min_energy = np.float32((dbm0_to_peak(MIN_TONE_DBM0 - 3.0) * BLOCK_SAMPLES / 2.0) ** 2)
        self._min_power = np.float32(dbm0_to_peak(MIN_TONE_DBM0) ** 2)
        self._screen_normal = np.float32(10.0 ** ((NORMAL_TWIST_DB + 3.0) / 10.0))
        self._screen_reverse = np.float32(10.0 ** ((REVERSE_TWIST_DB + 3.0) / 10.0))
        self._normal_twist = np.float32(10.0 ** (NORMAL_TWIST_DB / 10.0))
        self._reverse_twist = np.float32(10.0 ** (REVERSE_TWIST_DB / 10.0))
        self._fit = _fit_matrices()
        # Energy of a block of N samples holding a dual tone of peaks A, B is (A**2 + B**2) * N / 2, and the
        # tones' Goertzel energies sum to (A**2 + B**2) * N**2 / 4: their ratio times 2 / N is the share.
        self._total_scale = np.float32(TONE_TO_TOTAL_MIN * BLOCK_SAMPLES / 2.0)
        self._peak_ratio = np.float32(10.0 ** (RELATIVE_PEAK_DB / 10.0))

    @property
    def capacity(self) -> int:
        """Number of channel slots."""
        return self._capacity

    def grow(self, capacity: int) -> None:
        """Enlarge the detector to ``capacity`` slots, keeping the state of the existing ones."""
        if capacity < self._capacity:
            raise MediaConfigError(f"cannot shrink DtmfDetector from {self._capacity} to {capacity} slots")
        extra = capacity - self._capacity
        self._current = np.concatenate([self._current, np.full(extra, _NO_DIGIT, dtype=np.int8)])
        self._run_digit = np.concatenate([self._run_digit, np.full(extra, _NO_DIGIT, dtype=np.int8)])
        self._run_length = np.concatenate([self._run_length, np.zeros(extra, dtype=np.int32)])
        self._misses = np.concatenate([self._misses, np.zeros(extra, dtype=np.int32)])
        self._prev = np.concatenate([self._prev, np.zeros((extra, 16), dtype=np.float32)])
        self._capacity = capacity

    def reset(self, row: int) -> None:
        """Forget everything about slot ``row`` (a new channel took it)."""
        if not 0 <= row < self._capacity:
            raise MediaConfigError(f"row {row} outside 0..{self._capacity - 1}")
        self._current[row] = _NO_DIGIT
        self._run_digit[row] = _NO_DIGIT
        self._run_length[row] = 0
        self._misses[row] = 0
        self._prev[row] = 0

    def process(self, rows: npt.NDArray[np.intp], pcm: npt.NDArray[np.int16]) -> list[tuple[int, str]]:
        """Analyse one frame for each of ``k`` channels.

        Parameters
        ----------
        rows : ndarray, shape (k,), intp
            Distinct slot numbers, ``0 <= row < capacity``.
        pcm : ndarray, shape (k, 160), int16
            This tick's frame of each of those slots, 8 kHz linear PCM.

        Returns
        -------
        list of (int, str)
            ``(row, digit)`` for every digit onset found in this frame, in time order within a row.
        """
        k = rows.shape[0]
        if pcm.shape != (k, FRAME_SAMPLES):
            raise MediaConfigError(f"pcm must have shape ({k}, {FRAME_SAMPLES}), got {pcm.shape}")
        if k == 0:
            return []
        blocks = pcm.reshape(k * BLOCKS_PER_FRAME, BLOCK_SAMPLES).astype(np.float32)
        terms = blocks @ self._basis  # (2k, 16): real and negated imaginary Goertzel parts
        energy = np.square(terms)
        energy = energy[:, :8] + energy[:, 8:]  # (2k, 8)
        total = np.einsum("ij,ij->i", blocks, blocks)

        candidate = self._validate(blocks.shape[0], terms, energy, total, rows)

        # The previous block of the next frame's first block is this frame's last block.
        last = terms[BLOCKS_PER_FRAME - 1 :: BLOCKS_PER_FRAME]
        self._prev[rows] = last

        return self._advance(rows, candidate.reshape(k, BLOCKS_PER_FRAME))

    def _validate(
        self,
        n_blocks: int,
        terms: npt.NDArray[np.float32],
        energy: npt.NDArray[np.float32],
        total: npt.NDArray[np.float32],
        rows: npt.NDArray[np.intp],
    ) -> npt.NDArray[np.int8]:
        """Return the digit index each block is valid for, or -1; shape (2k,), int8."""
        candidate = np.full(n_blocks, _NO_DIGIT, dtype=np.int8)
        low = energy[:, :4]
        high = energy[:, 4:]
        r = low.argmax(axis=1)
        c = high.argmax(axis=1)
        index = np.arange(n_blocks)
        e_low = low[index, r]
        e_high = high[index, c]
        ok = (
            (e_low >= self._min_energy)
            & (e_high >= self._min_energy)
            & (e_high * self._screen_normal >= e_low)
            & (e_high <= e_low * self._screen_reverse)
            & (e_low + e_high >= self._total_scale * total)
        )
        hit = np.flatnonzero(ok)
        if hit.size == 0:
            return candidate
        r = r[hit]
        c = c[hit]
        e_low = e_low[hit]
        e_high = e_high[hit]
        h = np.arange(hit.size)
        low = low[hit]
        high = high[hit]
        low[h, r] = 0.0
        high[h, c] = 0.0
        ok2 = (low.max(axis=1) * self._peak_ratio <= e_low) & (high.max(axis=1) * self._peak_ratio <= e_high)

        # Least-squares fit of the two nominal sinusoids to the block: unlike the raw Goertzel terms, the
        # fitted amplitudes and phases are free of the leakage of one tone into the other's bin, which at
        # 80 samples is -20 dB and, with 8 dB of twist, would move the weak tone's level and phase.
        cols = np.stack([r, r + 8, c + 4, c + 12], axis=1)  # (h, 4)
        pair = r * 4 + c
        fit_now = np.einsum("hij,hj->hi", self._fit[pair], terms[hit[:, None], cols])
        first = hit % BLOCKS_PER_FRAME == 0
        before = np.where(
            first[:, None],
            self._prev[rows[hit // BLOCKS_PER_FRAME][:, None], cols],
            terms[np.maximum(hit - 1, 0)[:, None], cols],
        )
        fit_before = np.einsum("hij,hj->hi", self._fit[pair], before)
        power = np.square(fit_now)
        p_low = power[:, 0] + power[:, 1]  # squared peak amplitudes
        p_high = power[:, 2] + power[:, 3]
        ok2 &= (
            (p_low >= self._min_power)
            & (p_high >= self._min_power)
            & (p_high * self._normal_twist >= p_low)
            & (p_high <= p_low * self._reverse_twist)
        )
        # Frequency from the phase advance of each fitted tone since the previous block.
        now = fit_now[:, 0::2] - 1j * fit_now[:, 1::2]  # (h, 2) phasors, low then high
        prev = fit_before[:, 0::2] - 1j * fit_before[:, 1::2]
        bins = np.stack([r, c + 4], axis=1)
        advance = now * np.conj(prev) * self._derotate[bins]
        error_hz = np.abs(np.angle(advance)) * self._hz_per_radian
        ok2 &= (np.abs(prev) > 0).all(axis=1) & (error_hz <= self._max_error_hz[bins]).all(axis=1)

        candidate[hit[ok2]] = _DIGIT_OF_CELL[r[ok2], c[ok2]]
        return candidate

    def _advance(self, rows: npt.NDArray[np.intp], candidate: npt.NDArray[np.int8]) -> list[tuple[int, str]]:
        """Run the per-channel digit state machine over this frame's blocks; candidate shape (k, 2)."""
        busy = (candidate >= 0).any(axis=1) | (self._current[rows] >= 0) | (self._run_length[rows] > 0)
        active = np.flatnonzero(busy)
        if active.size == 0:
            return []
        slots = rows[active]
        current = self._current[slots]
        run_digit = self._run_digit[slots]
        run_length = self._run_length[slots]
        misses = self._misses[slots]
        found: list[tuple[int, str]] = []
        for block in range(BLOCKS_PER_FRAME):
            digit = candidate[active, block]
            valid = digit >= 0
            run_length = np.where(valid & (digit == run_digit), run_length + 1, valid.astype(np.int32))
            run_digit = digit
            misses = np.where((digit == current) & (current >= 0), 0, np.minimum(misses + 1, _MISS_CAP))
            current = np.where((current >= 0) & (misses >= MISSES_TO_END), _NO_DIGIT, current).astype(np.int8)
            onset = (current < 0) & (run_length >= HITS_TO_BEGIN)
            if onset.any():
                for slot, d in zip(slots[onset].tolist(), run_digit[onset].tolist(), strict=True):
                    found.append((slot, DIGITS[d]))
                current = np.where(onset, run_digit, current).astype(np.int8)
                misses = np.where(onset, 0, misses)
        self._current[slots] = current
        self._run_digit[slots] = run_digit
        self._run_length[slots] = run_length
        self._misses[slots] = misses
        return found


_DIGIT_OF_CELL = np.array([[DIGITS.index(ch) for ch in row] for row in KEYPAD], dtype=np.int8)


def _resample(pcm: npt.NDArray[np.int16], rate: int, target: int) -> npt.NDArray[np.int16]:
    ratio = Fraction(target, rate)
    from scipy.signal import resample_poly  # imported here: scipy.signal costs ~1 s of start-up
    out: npt.NDArray[np.float64] = resample_poly(pcm.astype(np.float64), ratio.numerator, ratio.denominator)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def detect_digits(pcm: npt.NDArray[np.int16], rate: int = SAMPLE_RATE) -> str:
    """Return the DTMF digits found in one whole mono signal.

    Parameters
    ----------
    pcm : ndarray, shape (n,), int16
        The signal.
    rate : int
        Its sampling rate in Hz; other rates than 8000 are resampled with ``scipy.signal.resample_poly``.

    Returns
    -------
    str
        The digits in order, each once per onset.
    """
    if pcm.ndim != 1:
        raise MediaConfigError(f"detect_digits wants a 1-D signal, got shape {pcm.shape}")
    if rate <= 0:
        raise MediaConfigError(f"sampling rate must be positive, got {rate}")
    signal = pcm.astype(np.int16, copy=False)
    if rate != SAMPLE_RATE:
        signal = _resample(signal, rate, SAMPLE_RATE)
    frames = -(-signal.shape[0] // FRAME_SAMPLES) + 1  # one frame of trailing silence
    padded = np.zeros(frames * FRAME_SAMPLES, dtype=np.int16)
    padded[: signal.shape[0]] = signal
    detector = DtmfDetector(1)
    row = np.zeros(1, dtype=np.intp)
    out: list[str] = []
    for frame in padded.reshape(frames, 1, FRAME_SAMPLES):
        out.extend(d for _, d in detector.process(row, frame))
    return "".join(out)


def dual_tone(
    low_hz: float,
    high_hz: float,
    duration_ms: float,
    low_dbm0: float,
    high_dbm0: float,
    rate: int = SAMPLE_RATE,
) -> npt.NDArray[np.int16]:
    """Return a dual tone: sines of the given frequencies and levels, shape (round(ms * rate / 1000),) int16."""
    n = round(duration_ms * rate / 1000.0)
    t = np.arange(n, dtype=np.float64) / rate
    wave = dbm0_to_peak(low_dbm0) * np.sin(2 * np.pi * low_hz * t) + dbm0_to_peak(high_dbm0) * np.sin(
        2 * np.pi * high_hz * t
    )
    return np.clip(np.rint(wave), -32768, 32767).astype(np.int16)


def digit_frequencies(digit: str) -> tuple[float, float]:
    """Return the nominal (low-group, high-group) frequencies of ``digit``, in Hz (ITU-T Q.23)."""
    for r, row in enumerate(KEYPAD):
        c = row.find(digit.upper())
        if len(digit) == 1 and c >= 0:
            return LOW_GROUP_HZ[r], HIGH_GROUP_HZ[c]
    raise MediaConfigError(f"not a DTMF digit: {digit!r}")


def generate_digits(
    digits: str,
    rate: int = SAMPLE_RATE,
    tone_ms: float = 100,
    pause_ms: float = 100,
    level_dbm0: float = -10.0,
    twist_db: float = 0.0,
) -> npt.NDArray[np.int16]:
    """Return DTMF for ``digits`` (any of ``0-9 * # A B C D``): each digit's tone followed by a pause.

    Parameters
    ----------
    digits : str
        Digits to send.
    rate : int
        Sampling rate of the result, Hz.
    tone_ms, pause_ms : float
        Tone and following silence per digit, ms.
    level_dbm0 : float
        Level of the low-group tone, dBm0.
    twist_db : float
        Low-group level minus high-group level, dB: positive is "normal" twist (high group weaker),
        negative "reverse" twist. The high-group tone is sent at ``level_dbm0 - twist_db``.

    Returns
    -------
    ndarray, shape (n,), int16
    """
    pause = np.zeros(round(pause_ms * rate / 1000.0), dtype=np.int16)
    parts: list[npt.NDArray[np.int16]] = []
    for digit in digits:
        low, high = digit_frequencies(digit)
        parts.append(dual_tone(low, high, tone_ms, level_dbm0, level_dbm0 - twist_db, rate))
        parts.append(pause)
    if not parts:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(parts)
