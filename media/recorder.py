"""Call recording to WAV (RIFF, 8 kHz, 16-bit linear PCM), written incrementally and crash-tolerant.

The RIFF and ``data`` chunk sizes in the 44-byte header are patched every ``FLUSH_INTERVAL_SAMPLES``
(one second of audio) and the file is flushed to the operating system, so a process that dies without
:meth:`WavRecorder.close` leaves a valid WAV file missing at most the last second.
"""

from __future__ import annotations

import struct
from os import PathLike
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from .errors import MediaConfigError, MediaError
from .source import SAMPLE_RATE

__all__ = ["FLUSH_INTERVAL_SAMPLES", "HEADER_BYTES", "RecorderError", "WavRecorder"]

FLUSH_INTERVAL_SAMPLES = SAMPLE_RATE
"""Samples per channel between header patches: one second of audio."""

HEADER_BYTES = 44
"""Size of the canonical RIFF/WAVE header written (RIFF, fmt with 16 bytes, data chunk header)."""

_BYTES_PER_SAMPLE = 2


class RecorderError(MediaError):
    """The recording file could not be written, or the recorder was used after close."""


class WavRecorder:
    """Write 8 kHz 16-bit PCM to a WAV file as it arrives.

    Parameters
    ----------
    path : str or PathLike
        File to create (truncated if it exists).
    channels : {1, 2}
        1: one mixed track. 2: one call leg per channel (left = first column).
    append : bool
        Go on with an existing recording instead (one this class wrote, with the same channels), after its last
        whole sample: a recording that moves to another process continues in the same file.

    Notes
    -----
    Use as a context manager, or call :meth:`close` to write the final sizes.
    """

    def __init__(self, path: str | PathLike[str], channels: int = 1, *, append: bool = False) -> None:
        if channels not in (1, 2):
            raise MediaConfigError(f"WavRecorder channels must be 1 or 2, got {channels}")
        self.channels = channels
        self.frames_written = 0  # samples per channel
        self._since_patch = 0
        if append:
            self._file: BinaryIO | None = self._reopen(path)
            return
        try:
            self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise RecorderError(f"cannot create recording {path}: {exc.strerror or exc}") from exc
        self._file.write(self._header())
        self._file.flush()

    def _reopen(self, path: str | PathLike[str]) -> BinaryIO:
        """Open ``path`` to go on after its last whole sample; its header must be the one :meth:`_header` writes
        for this many channels (the sizes in it may be stale: the file's length counts)."""
        try:
            f = open(path, "r+b")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise RecorderError(f"cannot reopen recording {path}: {exc.strerror or exc}") from exc
        try:
            head = f.read(HEADER_BYTES)
            if len(head) < HEADER_BYTES or head[:4] != b"RIFF" or head[8:16] != b"WAVEfmt " or head[36:40] != b"data":
                raise RecorderError(f"cannot append to {path}: not a recording of this kind")
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", head[20:36])
            if (fmt, channels, rate, bits) != (1, self.channels, SAMPLE_RATE, 16):
                raise RecorderError(f"cannot append to {path}: it has {channels} channel(s) of format {fmt} at "
                                    f"{rate} Hz, {bits} bits; this recorder writes {self.channels} of PCM at "
                                    f"{SAMPLE_RATE} Hz, 16 bits")
            block = self.channels * _BYTES_PER_SAMPLE
            self.frames_written = (f.seek(0, 2) - HEADER_BYTES) // block
            f.seek(HEADER_BYTES + self.frames_written * block)
            f.truncate()  # a torn last sample, if the writer died mid-write
        except OSError as exc:
            f.close()
            raise RecorderError(f"cannot append to {path}: {exc.strerror or exc}") from exc
        except BaseException:
            f.close()
            raise
        return f

    def _header(self) -> bytes:
        data_bytes = self.frames_written * self.channels * _BYTES_PER_SAMPLE
        block_align = self.channels * _BYTES_PER_SAMPLE
        return (
            struct.pack("<4sI4s", b"RIFF", 36 + data_bytes, b"WAVE")
            + struct.pack(
                "<4sIHHIIHH", b"fmt ", 16, 1, self.channels, SAMPLE_RATE, SAMPLE_RATE * block_align, block_align, 16
            )
            + struct.pack("<4sI", b"data", data_bytes)
        )

    def write(self, frames: npt.NDArray[np.int16]) -> None:
        """Append audio.

        Parameters
        ----------
        frames : ndarray, shape (n,) or (n, 2), int16
            Mono samples, or two legs side by side. A mono recorder mixes two legs (sum, saturated); a
            stereo recorder needs shape (n, 2).
        """
        if self._file is None:
            raise RecorderError("write() on a closed WavRecorder")
        if frames.ndim == 2 and frames.shape[1] == 2:
            if self.channels == 1:
                mixed = frames.astype(np.int32).sum(axis=1)
                samples = np.clip(mixed, -32768, 32767).astype("<i2")
            else:
                samples = np.ascontiguousarray(frames, dtype="<i2")
        elif frames.ndim == 1 and self.channels == 1:
            samples = np.ascontiguousarray(frames, dtype="<i2")
        else:
            raise MediaConfigError(f"cannot record shape {frames.shape} on {self.channels} channel(s)")
        n = samples.shape[0]
        try:
            self._file.write(samples.tobytes())
        except OSError as exc:
            raise RecorderError(f"recording write failed: {exc.strerror or exc}") from exc
        self.frames_written += n
        self._since_patch += n
        if self._since_patch >= FLUSH_INTERVAL_SAMPLES:
            self._patch()

    def _patch(self) -> None:
        """Rewrite the header sizes for what has been written so far and flush to the OS."""
        assert self._file is not None
        end = self._file.tell()
        self._file.seek(0)
        self._file.write(self._header())
        self._file.seek(end)
        self._file.flush()
        self._since_patch = 0

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._file is None

    def close(self) -> None:
        """Write the final header and close the file; closing twice is harmless."""
        if self._file is None:
            return
        try:
            self._patch()
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> WavRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
