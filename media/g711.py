"""G.711 µ-law (PCMU) and A-law (PCMA) companding over numpy arrays, ITU-T Rec. G.711 (11/88).

Every function works on arrays of any shape: one frame ``(160,)``, a tick of channels ``(channels, 160)``, or
anything else. The results are bit-exact with the ITU-T reference and with the stdlib ``audioop`` functions
``lin2ulaw``, ``ulaw2lin``, ``lin2alaw`` and ``alaw2lin`` at width 2 (the test suite checks every input).

How it is fast:

* Encoding indexes a 65,536-entry ``uint8`` table with the int16 samples viewed as ``uint16``: one gather
  per sample and no arithmetic (G.711 §2 and §3 tables 1a/2a are a pure function of the 14-/13-bit value).
* Decoding views each *pair* of codes as one ``uint16`` and gathers a pre-decoded sample pair (``uint32`` =
  two native-order int16) from a 65,536-entry table straight into the output buffer, whenever the last axis
  of both arrays is contiguous and of even length. That halves the number of gathers compared with a
  256-entry table; other layouts take the 256-entry table (same results, slower). The call overhead is kept
  to identity checks and a bound ``take`` (measured here: ~0.8x one ``audioop.ulaw2lin`` call on the whole
  buffer at 100 x 160 samples and ~0.95x at 1,000 x 160, 1.4-1.8x ``audioop`` called per 160-sample frame;
  numpy's gather converts the indices to intp and costs ~1.6 ns per pair here, which is the floor).

The tables are computed here from the G.711 segment definitions at import time; ``audioop`` is only the
test oracle (it is gone from the stdlib in Python 3.13).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from .errors import MediaConfigError

__all__ = [
    "ALAW_SILENCE",
    "ULAW_SILENCE",
    "Codec",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]

#: The µ-law and A-law codes of a zero sample (what a silent frame is filled with).
ULAW_SILENCE: Final = 0xFF
ALAW_SILENCE: Final = 0xD5

_ULAW_CLIP: Final = 8159  # largest 14-bit magnitude before the top segment saturates (G.711 table 2a)
_ULAW_BIAS: Final = 33  # 0x84 >> 2: the µ-law bias in the 14-bit domain
# Upper ends of the eight segments, in the 14-bit (µ-law) and 13-bit (A-law) magnitude domains.
_ULAW_SEG_END: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _all_int16() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered by its ``uint16`` bit pattern (the encoder's table index)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    # G.711 works on the 14 most significant bits; the arithmetic shift rounds towards minus infinity,
    # as the reference implementation does.
    v = _all_int16() >> 2
    negative = v < 0
    mag = np.minimum(np.where(negative, -v, v), _ULAW_CLIP) + _ULAW_BIAS
    seg = np.searchsorted(_ULAW_SEG_END, mag).astype(np.int32)  # first segment whose end >= mag
    mant = (mag >> np.minimum(seg + 1, 8)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | mant)
    # µ-law transmits every bit inverted; negative values keep their sign bit clear.
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    v = _all_int16() >> 3  # A-law uses the 13 most significant bits
    negative = v < 0
    mag = np.where(negative, -v - 1, v)  # one's-complement magnitude, as in the G.711 reference
    seg = np.searchsorted(_ALAW_SEG_END, mag).astype(np.int32)
    shift = np.where(seg < 2, 1, np.minimum(seg, 8))
    mant = (mag >> shift) & 0x0F
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | mant)
    # Even bits are inverted on the line (0x55); the sign bit is set for non-negative values.
    return (code ^ np.where(negative, 0x55, 0xD5)).astype(np.uint8)


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _build_pairs(single: npt.NDArray[np.int16]) -> npt.NDArray[np.uint32]:
    """The decoded sample pair for every two-code ``uint16`` word, in native byte order."""
    words = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    codes = words.view(np.uint8).reshape(65536, 2)  # the two codes in memory order
    pairs = np.ascontiguousarray(single[codes])  # (65536, 2) int16
    return pairs.view(np.uint32).reshape(65536)


_ULAW_ENC: Final = _build_ulaw_encode()
_ALAW_ENC: Final = _build_alaw_encode()
_ULAW_DEC: Final = _build_ulaw_decode()
_ALAW_DEC: Final = _build_alaw_decode()
_ULAW_DEC_PAIRS: Final = _build_pairs(_ULAW_DEC)
_ALAW_DEC_PAIRS: Final = _build_pairs(_ALAW_DEC)
# Bound ``take`` methods of the pair tables: the decoder's hot call (see ``_decode``).
_ULAW_TAKE_PAIRS: Final = _ULAW_DEC_PAIRS.take
_ALAW_TAKE_PAIRS: Final = _ALAW_DEC_PAIRS.take


_UINT8: Final = np.dtype(np.uint8)
_INT16: Final = np.dtype(np.int16)
_UINT16: Final = np.dtype(np.uint16)
_UINT32: Final = np.dtype(np.uint32)


def _bad_array(arr: object, dtype: np.dtype[np.generic], what: str) -> MediaConfigError:
    if not isinstance(arr, np.ndarray):
        return MediaConfigError(f"{what} must be a numpy array of {dtype.name}, got {type(arr).__name__}")
    return MediaConfigError(f"{what} must have dtype {dtype.name}, got {arr.dtype}")


def _checked_out(out: object, shape: tuple[int, ...], dtype: np.dtype[np.generic]) -> None:
    if not isinstance(out, np.ndarray) or out.dtype != dtype:
        raise _bad_array(out, dtype, "out")
    if out.shape != shape:
        raise MediaConfigError(f"out must have shape {shape}, got {out.shape}")
    if not out.flags.writeable:
        raise MediaConfigError("out must be writeable")


# Validation happens once per call on the whole batch; the work itself is a single gather (see module doc).


def _encode(
    table: npt.NDArray[np.uint8], pcm: npt.NDArray[np.int16], out: npt.NDArray[np.uint8] | None
) -> npt.NDArray[np.uint8]:
    if not isinstance(pcm, np.ndarray) or pcm.dtype != _INT16:
        raise _bad_array(pcm, _INT16, "pcm")
    if out is None:
        out = np.empty(pcm.shape, dtype=_UINT8)
    else:
        _checked_out(out, pcm.shape, _UINT8)
    # The uint16 view is valid for any strides (same item size) and every index is in range, so the
    # cheapest index mode ("wrap") never changes an index.
    np.take(table, pcm.view(np.uint16), out=out, mode="wrap")
    return out


def _decode(
    single: npt.NDArray[np.int16],
    take_pairs: Callable[..., object],
    codes: npt.NDArray[np.uint8],
    out: npt.NDArray[np.int16] | None,
) -> npt.NDArray[np.int16]:
    # The common case (exact ndarray, builtin dtype singletons, matching ``out``) is recognised with identity
    # tests only; anything else goes through the full checks, which raise or accept (subclasses, equal dtypes).
    if type(codes) is not np.ndarray or codes.dtype is not _UINT8:
        if not isinstance(codes, np.ndarray) or codes.dtype != _UINT8:
            raise _bad_array(codes, _UINT8, "codes")
    if out is None:
        out = np.empty(codes.shape, dtype=_INT16)
    elif type(out) is not np.ndarray or out.dtype is not _INT16 or out.shape != codes.shape:
        _checked_out(out, codes.shape, _INT16)
    try:
        # Fast path: one gather per two samples. The uint16 view of the codes and the uint32 view of ``out``
        # exist whenever the last axis is contiguous and of even length (numpy raises ValueError otherwise);
        # ``take`` is called as a bound method of the table because ``np.take``'s Python wrapper costs
        # about as much as gathering a few hundred samples.
        take_pairs(codes.view(_UINT16), None, out.view(_UINT32), "wrap")
    except ValueError:
        _checked_out(out, codes.shape, _INT16)  # a read-only ``out`` also lands here: say so clearly
        single.take(codes, None, out, "wrap")
    return out


def ulaw_encode(pcm: npt.NDArray[np.int16], out: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
    """Encode linear PCM to G.711 µ-law (ITU-T G.711 §3, table 2a).

    Parameters
    ----------
    pcm : ndarray, any shape, int16
        Linear samples (the 14 most significant bits are coded).
    out : ndarray, same shape as `pcm`, uint8, optional
        Where to write the codes; a new array when omitted.

    Returns
    -------
    ndarray, same shape as `pcm`, uint8
        The µ-law codes (`out` when given).

    Raises
    ------
    MediaConfigError
        `pcm` is not an int16 array, or `out` has the wrong dtype or shape.
    """
    return _encode(_ULAW_ENC, pcm, out)


def alaw_encode(pcm: npt.NDArray[np.int16], out: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
    """Encode linear PCM to G.711 A-law (ITU-T G.711 §2, table 1a).

    Parameters
    ----------
    pcm : ndarray, any shape, int16
        Linear samples (the 13 most significant bits are coded).
    out : ndarray, same shape as `pcm`, uint8, optional
        Where to write the codes; a new array when omitted.

    Returns
    -------
    ndarray, same shape as `pcm`, uint8
        The A-law codes (`out` when given).

    Raises
    ------
    MediaConfigError
        `pcm` is not an int16 array, or `out` has the wrong dtype or shape.
    """
    return _encode(_ALAW_ENC, pcm, out)


def ulaw_decode(codes: npt.NDArray[np.uint8], out: npt.NDArray[np.int16] | None = None) -> npt.NDArray[np.int16]:
    """Decode G.711 µ-law codes to linear PCM (ITU-T G.711 §3, table 2b).

    Parameters
    ----------
    codes : ndarray, any shape, uint8
        µ-law codes as received on the line.
    out : ndarray, same shape as `codes`, int16, optional
        Where to write the samples; a new array when omitted. A C-contiguous `out` with a C-contiguous
        `codes` of even size takes the fastest path.

    Returns
    -------
    ndarray, same shape as `codes`, int16
        The decoded samples (`out` when given).

    Raises
    ------
    MediaConfigError
        `codes` is not a uint8 array, or `out` has the wrong dtype or shape.
    """
    return _decode(_ULAW_DEC, _ULAW_TAKE_PAIRS, codes, out)


def alaw_decode(codes: npt.NDArray[np.uint8], out: npt.NDArray[np.int16] | None = None) -> npt.NDArray[np.int16]:
    """Decode G.711 A-law codes to linear PCM (ITU-T G.711 §2, table 1b).

    Parameters
    ----------
    codes : ndarray, any shape, uint8
        A-law codes as received on the line.
    out : ndarray, same shape as `codes`, int16, optional
        Where to write the samples; a new array when omitted.

    Returns
    -------
    ndarray, same shape as `codes`, int16
        The decoded samples (`out` when given).

    Raises
    ------
    MediaConfigError
        `codes` is not a uint8 array, or `out` has the wrong dtype or shape.
    """
    return _decode(_ALAW_DEC, _ALAW_TAKE_PAIRS, codes, out)


class Codec(enum.Enum):
    """The G.711 codecs with their static RTP payload types (RFC 3551 §6, table 4)."""

    PCMU = 0
    PCMA = 8

    # Members are singletons compared by identity, so hashing by identity keeps the hash/eq contract: in C,
    # where Enum's own __hash__ (of the member's name) is a Python call, a dozen of them a call in SDP work.
    __hash__ = object.__hash__

    @property
    def payload_type(self) -> int:
        """The static RTP payload type (0 for PCMU, 8 for PCMA)."""
        return int(self._value_)  # not .value: a descriptor call in Python, read several times a call

    @property
    def encoding_name(self) -> str:
        """The SDP ``a=rtpmap`` encoding name (RFC 3551 §4.5.14)."""
        return self._name_

    @property
    def silence(self) -> int:
        """The code of a zero sample."""
        return ULAW_SILENCE if self is Codec.PCMU else ALAW_SILENCE

    def encode(self, pcm: npt.NDArray[np.int16], out: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
        """Encode int16 samples of any shape with this codec (see :func:`ulaw_encode`)."""
        if self is Codec.PCMU:
            return ulaw_encode(pcm, out)
        return alaw_encode(pcm, out)

    def decode(self, codes: npt.NDArray[np.uint8], out: npt.NDArray[np.int16] | None = None) -> npt.NDArray[np.int16]:
        """Decode uint8 codes of any shape with this codec (see :func:`ulaw_decode`)."""
        if self is Codec.PCMU:
            return ulaw_decode(codes, out)
        return alaw_decode(codes, out)
