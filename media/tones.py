"""Call-progress tones (dial, ringback, busy, congestion) as frame-by-frame audio sources.

Frequencies, cadences and levels follow ITU-T E.180 and its Supplement 2 (the national tone plans),
ETSI TR 101 041-2 for the European 425 Hz plan, and ANSI T1.401 / the North American precise tone plan:

=======================  ===============================  ====================================
tone                     ETSI / Europe (425 Hz, -10 dBm0)  North America (precise tone plan)
=======================  ===============================  ====================================
dial                     425 Hz continuous                350 + 440 Hz continuous, -13 dBm0
ringback                 1 s on, 4 s off                  440 + 480 Hz, 2 s on, 4 s off, -19 dBm0
busy                     0.5 s on, 0.5 s off              480 + 620 Hz, 0.5 s on, 0.5 s off, -24 dBm0
congestion (reorder)     0.2 s on, 0.2 s off              480 + 620 Hz, 0.25 s on, 0.25 s off, -24 dBm0
=======================  ===============================  ====================================

Levels are per frequency component, in dBm0 against the G.711 reference of :mod:`ccpbx.media.dtmf`
(a full-scale sine is +3.17 dBm0).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .dtmf import dbm0_to_peak
from .errors import MediaConfigError
from .source import FRAME_SAMPLES, SAMPLE_RATE

__all__ = ["TONES", "Region", "ToneKind", "ToneSource", "ToneSpec", "tone_source"]


class ToneKind(enum.Enum):
    """What a call-progress tone tells the caller."""

    DIAL = "dial"
    RINGBACK = "ringback"
    BUSY = "busy"
    CONGESTION = "congestion"


class Region(enum.Enum):
    """A national tone plan."""

    ETSI = "etsi"
    NORTH_AMERICA = "north_america"


@dataclass(frozen=True, slots=True)
class ToneSpec:
    """One call-progress tone.

    Attributes
    ----------
    frequencies_hz : tuple of float
        Components summed together, Hz.
    level_dbm0 : float
        Level of each component, dBm0.
    cadence_ms : tuple of int
        Alternating on and off durations, ms, starting with on and repeating; empty means continuous.
    """

    frequencies_hz: tuple[float, ...]
    level_dbm0: float
    cadence_ms: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.frequencies_hz or any(not 0 < f < SAMPLE_RATE / 2 for f in self.frequencies_hz):
            raise MediaConfigError(f"tone frequencies must be in (0, {SAMPLE_RATE // 2}) Hz")
        if len(self.cadence_ms) % 2 or any(d <= 0 for d in self.cadence_ms):
            raise MediaConfigError("tone cadence must be pairs of positive (on, off) durations in ms")
        if self.level_dbm0 > 0:
            raise MediaConfigError("tone level must be at most 0 dBm0 per component")


TONES: dict[tuple[ToneKind, Region], ToneSpec] = {
    (ToneKind.DIAL, Region.ETSI): ToneSpec((425.0,), -10.0),
    (ToneKind.RINGBACK, Region.ETSI): ToneSpec((425.0,), -10.0, (1000, 4000)),
    (ToneKind.BUSY, Region.ETSI): ToneSpec((425.0,), -10.0, (500, 500)),
    (ToneKind.CONGESTION, Region.ETSI): ToneSpec((425.0,), -10.0, (200, 200)),
    (ToneKind.DIAL, Region.NORTH_AMERICA): ToneSpec((350.0, 440.0), -13.0),
    (ToneKind.RINGBACK, Region.NORTH_AMERICA): ToneSpec((440.0, 480.0), -19.0, (2000, 4000)),
    (ToneKind.BUSY, Region.NORTH_AMERICA): ToneSpec((480.0, 620.0), -24.0, (500, 500)),
    (ToneKind.CONGESTION, Region.NORTH_AMERICA): ToneSpec((480.0, 620.0), -24.0, (250, 250)),
}
"""The built-in tone plans, keyed by (kind, region)."""


class ToneSource:
    """Generate a :class:`ToneSpec` forever, one frame per call (an :class:`~ccpbx.media.source.AudioSource`).

    The oscillators run continuously (through the off periods too), so the waveform is phase-continuous
    across frame boundaries and every on period of a cadence starts where the last left off.
    """

    def __init__(self, spec: ToneSpec) -> None:
        self.spec = spec
        self._step = np.array([2.0 * math.pi * f / SAMPLE_RATE for f in spec.frequencies_hz])[:, None]
        self._phase = np.zeros((len(spec.frequencies_hz), 1))
        self._peak = dbm0_to_peak(spec.level_dbm0)
        self._n = np.arange(FRAME_SAMPLES, dtype=np.float64)[None, :]
        period = sum(spec.cadence_ms) * SAMPLE_RATE // 1000
        gate = np.zeros(period, dtype=bool)
        start = 0
        for i, ms in enumerate(spec.cadence_ms):
            end = start + ms * SAMPLE_RATE // 1000
            gate[start:end] = i % 2 == 0
            start = end
        self._gate = gate
        self._position = 0  # sample position inside the cadence period

    def read_frame(self) -> npt.NDArray[np.int16]:
        """Return the next frame, shape (160,), int16 (tones never finish)."""
        wave: npt.NDArray[np.float64] = self._peak * np.sin(self._phase + self._step * self._n).sum(axis=0)
        self._phase = (self._phase + self._step * FRAME_SAMPLES) % (2.0 * math.pi)
        if self._gate.size:
            idx = (self._position + np.arange(FRAME_SAMPLES)) % self._gate.size
            wave = np.where(self._gate[idx], wave, 0.0)
            self._position = (self._position + FRAME_SAMPLES) % self._gate.size
        return np.clip(np.rint(wave), -32768, 32767).astype(np.int16)


def tone_source(kind: ToneKind, region: Region = Region.ETSI) -> ToneSource:
    """Return a fresh :class:`ToneSource` for a built-in tone."""
    return ToneSource(TONES[(kind, region)])
