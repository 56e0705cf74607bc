"""Talk-off: synthetic speech (espeak-ng, several voices, speeds and levels, clean and with noise) must not
produce DTMF digits, and digits sent over speech must still be detected."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ccpbx.media.dtmf import DtmfDetector, dbm0_to_peak, generate_digits
from ccpbx.media.prompts import load_prompt
from ccpbx.media.source import FRAME_SAMPLES, SAMPLE_RATE

TEXTS = (
    "The quick brown fox jumps over the lazy dog. Please hold while we connect your call to the next "
    "available agent. Your call is important to us.",
    "One two three four five six seven eight nine zero. Press star to return to the main menu, or hash "
    "to hear these options again. Thank you for calling.",
    "Der Kundenservice ist von Montag bis Freitag erreichbar. Bitte halten Sie Ihre Kundennummer bereit. "
    "Alle Leitungen sind besetzt, bitte warten Sie.",
)
VOICES = ("en", "en-us", "de")
SPEEDS = (120, 160, 200)
GAINS_DB = (-20.0, -8.0, 0.0, 6.0)  # espeak-ng speaks near -10 dBm0; +6 dB reaches clipping
NOISE_SNR_DB = 20.0


def _speech(espeak: str, directory: Path) -> list[npt.NDArray[np.int16]]:
    out = []
    for v, voice in enumerate(VOICES):
        for s, speed in enumerate(SPEEDS):
            text = TEXTS[(v + s) % len(TEXTS)]
            path = directory / f"{voice}_{speed}.wav"
            subprocess.run([espeak, "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, timeout=60)
            out.append(load_prompt(path))
    return out


def _run(pcm: npt.NDArray[np.int16]) -> list[list[str]]:
    """Feed rows of pcm, shape (k, n), through one detector; return the digits found per row."""
    k, n = pcm.shape
    frames = n // FRAME_SAMPLES
    detector = DtmfDetector(k)
    rows = np.arange(k, dtype=np.intp)
    found: list[list[str]] = [[] for _ in range(k)]
    for t in range(frames):
        for row, digit in detector.process(rows, pcm[:, t * FRAME_SAMPLES : (t + 1) * FRAME_SAMPLES]):
            found[row].append(digit)
    return found


def _stack(signals: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.int16]:
    n = max(s.size for s in signals)
    n = -(-n // FRAME_SAMPLES) * FRAME_SAMPLES
    pcm = np.zeros((len(signals), n), dtype=np.int16)
    for i, s in enumerate(signals):
        pcm[i, : s.size] = np.clip(np.rint(s), -32768, 32767)
    return pcm


def test_speech_produces_no_digits(espeak: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2024)
    signals = []
    for speech in _speech(espeak, tmp_path):
        x = speech.astype(np.float64)
        for gain in GAINS_DB:
            y = x * 10 ** (gain / 20)
            active_power = float(np.mean(y[np.abs(y) > 64] ** 2))
            signals.append(y)
            signals.append(y + rng.normal(0, np.sqrt(active_power / 10 ** (NOISE_SNR_DB / 10)), y.size))
    seconds = sum(s.size for s in signals) / SAMPLE_RATE
    assert seconds >= 600  # well beyond the 60 s the issue asks for
    found = _run(_stack(signals))
    false_digits = sum(len(f) for f in found)
    assert false_digits == 0, f"{false_digits} false digits in {seconds:.0f} s of speech: {found}"


def test_digits_over_speech_are_detected(espeak: str, tmp_path: Path) -> None:
    speech = _speech(espeak, tmp_path)[:3]
    digits = "1590*#AD"
    signals = []
    for x in speech:
        # Speech at about -25 dBm0 (RMS while talking), DTMF at -10 dBm0 per tone on top of it.
        y = x.astype(np.float64)
        rms = float(np.sqrt(np.mean(y[np.abs(y) > 64] ** 2)))
        y *= dbm0_to_peak(-25.0) / np.sqrt(2) / rms
        tones = generate_digits(digits, tone_ms=60, pause_ms=200, level_dbm0=-10.0).astype(np.float64)
        start = 8000
        y[start : start + tones.size] += tones
        signals.append(y)
    assert _run(_stack(signals)) == [list(digits)] * len(signals)
