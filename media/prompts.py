"""Prompts and music on hold: WAV files decoded to the engine's 8 kHz mono int16 and played frame by frame.

Reads RIFF/WAVE files with integer PCM samples (``WAVE_FORMAT_PCM``, or ``WAVE_FORMAT_EXTENSIBLE`` with
the PCM sub-format) of 8, 16, 24 or 32 bits, any channel count (mixed down by averaging) and any sampling
rate (resampled with a polyphase filter, ``scipy.signal.resample_poly``, at the exact rational ratio, so
44.1 kHz becomes 8 kHz by up 80 / down 441). Floating-point and compressed WAVs (G.711, ADPCM, ...) are
refused with a :class:`~ccpbx.media.errors.MediaError` naming the format, as are missing or truncated files.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from fractions import Fraction
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import MediaError
from .source import FRAME_SAMPLES, SAMPLE_RATE

__all__ = ["MusicOnHold", "PromptError", "PromptPlayer", "clear_prompt_cache", "load_prompt"]

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_ALAW = 0x0006
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

_FORMAT_NAMES = {
    0x0002: "Microsoft ADPCM",
    WAVE_FORMAT_IEEE_FLOAT: "IEEE floating point",
    WAVE_FORMAT_ALAW: "G.711 A-law",
    WAVE_FORMAT_MULAW: "G.711 mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MPEG layer 3",
}

_SUPPORTED_BITS = (8, 16, 24, 32)


class PromptError(MediaError):
    """A prompt file is missing, unreadable, corrupt or in an unsupported format."""


_cache: dict[tuple[Path, int, int], npt.NDArray[np.int16]] = {}
_cache_lock = threading.Lock()


def clear_prompt_cache() -> None:
    """Forget every decoded prompt (the next :func:`load_prompt` reads the file again)."""
    with _cache_lock:
        _cache.clear()


def load_prompt(path: str | PathLike[str]) -> npt.NDArray[np.int16]:
    """Return the audio of a WAV file as 8 kHz mono int16, shape (n,).

    The result is cached by (resolved path, modification time in ns, size): loading an unchanged file again
    returns the same read-only array object; a rewritten file is decoded afresh.

    Raises
    ------
    PromptError
        The file is missing, truncated, not a WAV file, or not integer PCM of 8/16/24/32 bits.
    """
    try:
        resolved = Path(path).resolve()
        stat = resolved.stat()
    except OSError as exc:
        raise PromptError(f"cannot read prompt {path}: {exc.strerror or exc}") from exc
    key = (resolved, stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    try:
        data = resolved.read_bytes()
    except OSError as exc:
        raise PromptError(f"cannot read prompt {path}: {exc.strerror or exc}") from exc
    pcm = _decode_wav(data, str(path))
    pcm.flags.writeable = False
    with _cache_lock:
        # Drop stale versions of the same file so an edited prompt does not pin the old audio.
        for old in [k for k in _cache if k[0] == resolved]:
            del _cache[old]
        _cache[key] = pcm
    return pcm


def _decode_wav(data: bytes, name: str) -> npt.NDArray[np.int16]:
    """Parse a RIFF/WAVE image and return 8 kHz mono int16."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise PromptError(f"{name}: not a RIFF/WAVE file")
    fmt: bytes | None = None
    samples: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            # A writer that crashed may leave a data size larger than the file: take what is there.
            samples = body
            break
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise PromptError(f"{name}: no valid 'fmt ' chunk")
    if samples is None:
        raise PromptError(f"{name}: no 'data' chunk")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        (tag,) = struct.unpack_from("<H", fmt, 24)  # first two bytes of the sub-format GUID
    if tag != WAVE_FORMAT_PCM:
        kind = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise PromptError(f"{name}: unsupported WAV encoding {kind}; convert it to integer PCM")
    if bits not in _SUPPORTED_BITS:
        raise PromptError(f"{name}: unsupported sample width {bits} bits (8, 16, 24 or 32 supported)")
    width = bits // 8
    if channels < 1 or rate < 1 or block_align != width * channels:
        raise PromptError(f"{name}: inconsistent fmt chunk (channels={channels}, rate={rate})")
    frames = len(samples) // block_align
    raw = np.frombuffer(samples, dtype=np.uint8, count=frames * block_align)
    wide = _to_float(raw, width).reshape(frames, channels)
    mono = wide.mean(axis=1) if channels > 1 else wide[:, 0]
    if rate != SAMPLE_RATE:
        ratio = Fraction(SAMPLE_RATE, rate)
        from scipy.signal import resample_poly  # imported here: scipy.signal costs ~1 s of start-up
        mono = resample_poly(mono, ratio.numerator, ratio.denominator)
    return np.clip(np.rint(mono), -32768, 32767).astype(np.int16)


def _to_float(raw: npt.NDArray[np.uint8], width: int) -> npt.NDArray[np.float64]:
    """Return little-endian integer samples of ``width`` bytes scaled to the int16 range, float64."""
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        return (raw.astype(np.float64) - 128.0) * 256.0
    if width == 2:
        return raw.view("<i2").astype(np.float64)
    if width == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float64) / 256.0
    return raw.view("<i4").astype(np.float64) / 65536.0


class PromptPlayer:
    """Play one prompt once, frame by frame (an :class:`~ccpbx.media.source.AudioSource`).

    Parameters
    ----------
    audio : str, PathLike or ndarray
        A WAV path (decoded with :func:`load_prompt`) or 8 kHz mono int16 samples, shape (n,).

    Notes
    -----
    The last frame is padded with silence; after it, :meth:`read_frame` returns ``None``.
    """

    def __init__(self, audio: str | PathLike[str] | npt.NDArray[np.int16]) -> None:
        self._pcm = _as_pcm(audio)
        self._pos = 0

    @property
    def finished(self) -> bool:
        """True once every sample has been returned."""
        return bool(self._pos >= self._pcm.shape[0])

    def read_frame(self) -> npt.NDArray[np.int16] | None:
        """Return the next frame, shape (160,), int16, or ``None`` once the prompt has played."""
        if self._pos >= self._pcm.shape[0]:
            return None
        chunk = self._pcm[self._pos : self._pos + FRAME_SAMPLES]
        self._pos += FRAME_SAMPLES
        if chunk.shape[0] == FRAME_SAMPLES:
            return chunk.copy()
        frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        frame[: chunk.shape[0]] = chunk
        return frame


class MusicOnHold:
    """Loop one file, or a playlist of files, forever (an :class:`~ccpbx.media.source.AudioSource`).

    Parameters
    ----------
    audio : str, PathLike, ndarray, or a sequence of those
        What to play, in order; the sequence restarts after the last item. Items are decoded on
        construction, so a bad file fails here rather than in the engine tick.

    Notes
    -----
    Frames run across the end of one item into the next without inserted silence.
    """

    def __init__(
        self,
        audio: str | PathLike[str] | npt.NDArray[np.int16] | Sequence[str | PathLike[str] | npt.NDArray[np.int16]],
    ) -> None:
        items: Sequence[str | PathLike[str] | npt.NDArray[np.int16]]
        items = [audio] if isinstance(audio, (str, PathLike, np.ndarray)) else audio
        parts = [_as_pcm(item) for item in items]
        if not parts:
            raise PromptError("MusicOnHold needs at least one item")
        # one item is kept as it is (a cached prompt, the server's music): shared, not copied per held call
        self._pcm = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self._pcm.shape[0] == 0:
            raise PromptError("MusicOnHold items are all empty")
        self._pos = 0

    def read_frame(self) -> npt.NDArray[np.int16]:
        """Return the next frame, shape (160,), int16 (never ``None``: music on hold does not end)."""
        n = self._pcm.shape[0]
        idx = (self._pos + np.arange(FRAME_SAMPLES)) % n
        self._pos = (self._pos + FRAME_SAMPLES) % n
        frame: npt.NDArray[np.int16] = self._pcm[idx]
        return frame


def _as_pcm(audio: str | PathLike[str] | npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1 or audio.dtype != np.int16:
            raise PromptError(f"prompt samples must be 1-D int16, got shape {audio.shape} {audio.dtype}")
        return audio
    return load_prompt(audio)
