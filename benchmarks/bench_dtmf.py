"""DTMF detection capacity: channels analysed in real time on one core.

Ours: ``DtmfDetector.process`` fed 1 s of audio (50 frames of 160 samples) for N channels at once, as the
media engine calls it each tick. The audio is white noise at about -20 dBm0 on most channels (it fails
the first screening, as speech does) and a DTMF digit string on every 20th channel (those go through the
frequency fit and the state machine). value = N / (seconds taken per second of audio).

Reference (same run): the textbook per-channel detector, a pure-Python Goertzel recurrence
(``s = x + 2 cos(w) s1 - s2``) over the same 80-sample blocks for the same eight frequencies, computing only
the energies (no checks, no state machine: generous to the reference), timed on a few channels and scaled
the same way. ratio = ours / reference (> 1 means ours analyses more channels per core).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

# "Per core": keep BLAS to one thread (effective when this module is the first to import numpy).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import main_for  # noqa: E402

from ccpbx.media.dtmf import (  # noqa: E402
    BLOCK_SAMPLES,
    HIGH_GROUP_HZ,
    LOW_GROUP_HZ,
    DtmfDetector,
    dbm0_to_peak,
    generate_digits,
)
from ccpbx.media.source import FRAME_SAMPLES, SAMPLE_RATE  # noqa: E402

FRAMES_PER_SECOND = SAMPLE_RATE // FRAME_SAMPLES


def _audio(channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, dbm0_to_peak(-20.0) / math.sqrt(2), (channels, SAMPLE_RATE))
    pcm = np.clip(np.rint(noise), -32768, 32767).astype(np.int16)
    digits = generate_digits("1234567890", tone_ms=50, pause_ms=50)[:SAMPLE_RATE]
    pcm[::20, : digits.size] = digits
    return pcm.reshape(channels, FRAMES_PER_SECOND, FRAME_SAMPLES)


def _ours_seconds(channels: int, repeats: int) -> tuple[float, int]:
    frames = _audio(channels)
    rows = np.arange(channels, dtype=np.intp)
    best = math.inf
    digits = 0
    for _ in range(repeats):
        detector = DtmfDetector(channels)
        batches = [np.ascontiguousarray(frames[:, t]) for t in range(FRAMES_PER_SECOND)]
        start = time.perf_counter()
        found = 0
        for batch in batches:
            found += len(detector.process(rows, batch))
        best = min(best, time.perf_counter() - start)
        digits = found
    return best, digits


def _python_goertzel(samples: list[float]) -> list[list[float]]:
    coeffs = [2.0 * math.cos(2.0 * math.pi * f / SAMPLE_RATE) for f in LOW_GROUP_HZ + HIGH_GROUP_HZ]
    energies = []
    for start in range(0, len(samples), BLOCK_SAMPLES):
        block = samples[start : start + BLOCK_SAMPLES]
        row = []
        for coeff in coeffs:
            s1 = s2 = 0.0
            for x in block:
                s1, s2 = x + coeff * s1 - s2, s1
            row.append(s1 * s1 + s2 * s2 - coeff * s1 * s2)
        energies.append(row)
    return energies


def _reference_seconds(channels: int, repeats: int) -> float:
    pcm = _audio(channels).reshape(channels, -1)
    lists = [row.astype(float).tolist() for row in pcm]
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for samples in lists:
            _python_goertzel(samples)
        best = min(best, time.perf_counter() - start)
    return best


def run(quick: bool = False) -> list[dict[str, Any]]:
    sizes = (100, 1_000) if quick else (1_000, 10_000, 30_000)
    repeats = 2 if quick else 3
    ref_channels = 2 if quick else 4
    ref_seconds = _reference_seconds(ref_channels, repeats)
    ref_rt = ref_channels / ref_seconds
    rows: list[dict[str, Any]] = []
    for n in sizes:
        seconds, digits = _ours_seconds(n, repeats)
        expected = len(range(0, n, 20)) * 10
        if digits != expected:
            raise RuntimeError(f"detector found {digits} digits, expected {expected}")
        value = n / seconds
        rows.append(
            {
                "name": f"dtmf channels in real time, N={n:,}",
                "value": value,
                "unit": "channels/core",
                "reference": f"pure-Python Goertzel per channel ({ref_channels} ch, scaled)",
                "reference_value": ref_rt,
                "ratio": value / ref_rt,
            }
        )
    return rows


if __name__ == "__main__":
    main_for(run, "benchmarks/results/dtmf.json")
