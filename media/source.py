"""The frame clock of the media engine and the protocol every audio producer implements.

The engine runs one tick every ``FRAME_MS`` milliseconds and asks each attached producer (a prompt, music on
hold, a call-progress tone) for exactly one frame of ``FRAME_SAMPLES`` linear samples at ``SAMPLE_RATE`` Hz,
the G.711 packetisation of RFC 3551 section 4.5.14 (20 ms, 160 samples at 8 kHz).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000
"""Sampling rate of every internal audio path, in Hz (G.711, ITU-T G.711 section 1)."""

FRAME_MS = 20
"""Duration of one engine tick, in milliseconds."""

FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
"""Samples in one frame: 160 at 8 kHz."""


@runtime_checkable
class AudioSource(Protocol):
    """Anything that yields audio one frame per engine tick.

    ``read_frame`` returns an ndarray of shape ``(FRAME_SAMPLES,)``, dtype int16, 8 kHz mono, or ``None``
    once the source has finished (a prompt that has played out). The engine calls it exactly once per tick
    and never concurrently; sources must not block.
    """

    def read_frame(self) -> npt.NDArray[np.int16] | None:
        """Return the next frame, shape (160,), int16, or ``None`` when finished."""
        ...
