"""G.711 against the stdlib ``audioop`` oracle: every int16 input, every code, shapes, dtypes and ``out=``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ccpbx.media.errors import MediaConfigError, MediaError
from ccpbx.media.g711 import (
    ALAW_SILENCE,
    ULAW_SILENCE,
    Codec,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_PCM = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)

ENCODERS = {"ulaw": (ulaw_encode, audioop.lin2ulaw), "alaw": (alaw_encode, audioop.lin2alaw)}
DECODERS = {"ulaw": (ulaw_decode, audioop.ulaw2lin), "alaw": (alaw_decode, audioop.alaw2lin)}


def _oracle_decode(fn: object, codes: np.ndarray) -> np.ndarray:
    return np.frombuffer(fn(np.ascontiguousarray(codes).tobytes(), 2), dtype=np.int16).reshape(codes.shape)  # type: ignore[operator]


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_encode_every_int16_matches_audioop(law: str) -> None:
    ours, oracle = ENCODERS[law]
    got = ours(ALL_PCM)
    want = np.frombuffer(oracle(ALL_PCM.tobytes(), 2), dtype=np.uint8)
    assert got.dtype == np.uint8
    mismatch = np.flatnonzero(got != want)
    assert mismatch.size == 0, f"first mismatch at sample {ALL_PCM[mismatch[0]]}"


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_decode_every_code_matches_audioop(law: str) -> None:
    ours, oracle = DECODERS[law]
    got = ours(ALL_CODES)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, _oracle_decode(oracle, ALL_CODES))


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_decode_every_code_pair_matches_audioop(law: str) -> None:
    # The fast path gathers sample pairs: check all 65,536 (first, second) combinations in both slots.
    ours, oracle = DECODERS[law]
    pairs = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.uint8).reshape(65536, 2)
    np.testing.assert_array_equal(ours(pairs), _oracle_decode(oracle, pairs))


def test_silence_codes() -> None:
    zero = np.zeros(4, dtype=np.int16)
    assert (ulaw_encode(zero) == ULAW_SILENCE).all()
    assert (alaw_encode(zero) == ALAW_SILENCE).all()
    assert Codec.PCMU.silence == ULAW_SILENCE and Codec.PCMA.silence == ALAW_SILENCE


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
@pytest.mark.parametrize("shape", [(160,), (3, 160), (7, 160), (2, 3, 5), (0,), (0, 160), (1,), (161,), ()])
def test_shapes_preserved_and_exact(law: str, shape: tuple[int, ...]) -> None:
    enc, enc_oracle = ENCODERS[law]
    dec, dec_oracle = DECODERS[law]
    rng = np.random.default_rng(sum(shape) + len(shape))
    pcm = rng.integers(-32768, 32768, size=shape, dtype=np.int16)
    codes = enc(pcm)
    assert codes.shape == shape and codes.dtype == np.uint8
    want = np.frombuffer(enc_oracle(pcm.tobytes(), 2), dtype=np.uint8).reshape(shape)
    np.testing.assert_array_equal(codes, want)
    back = dec(codes)
    assert back.shape == shape and back.dtype == np.int16
    np.testing.assert_array_equal(back, _oracle_decode(dec_oracle, codes))


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_non_contiguous_and_odd_inputs(law: str) -> None:
    enc, _ = ENCODERS[law]
    dec, dec_oracle = DECODERS[law]
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, size=(10, 160), dtype=np.uint8)
    for view in (codes[:, ::2], codes[::3], codes.T, codes[:, 1:], codes[:5, :33]):
        np.testing.assert_array_equal(dec(view), _oracle_decode(dec_oracle, view))
    pcm = rng.integers(-32768, 32768, size=(10, 160), dtype=np.int16)
    np.testing.assert_array_equal(enc(pcm[:, ::2]), enc(np.ascontiguousarray(pcm[:, ::2])))
    # A non-contiguous ``out`` is filled correctly too.
    big = np.zeros((10, 320), dtype=np.int16)
    dec(codes, out=big[:, ::2])
    np.testing.assert_array_equal(big[:, ::2], dec(codes))
    assert (big[:, 1::2] == 0).all()


@pytest.mark.parametrize("codec", list(Codec))
def test_out_parameter_is_filled_and_returned(codec: Codec) -> None:
    rng = np.random.default_rng(3)
    pcm = rng.integers(-32768, 32768, size=(4, 160), dtype=np.int16)
    codes_out = np.empty((4, 160), dtype=np.uint8)
    assert codec.encode(pcm, out=codes_out) is codes_out
    np.testing.assert_array_equal(codes_out, codec.encode(pcm))
    pcm_out = np.full((4, 160), 12345, dtype=np.int16)
    assert codec.decode(codes_out, out=pcm_out) is pcm_out
    np.testing.assert_array_equal(pcm_out, codec.decode(codes_out))


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_wrong_dtypes_rejected(law: str) -> None:
    enc, _ = ENCODERS[law]
    dec, _ = DECODERS[law]
    with pytest.raises(MediaConfigError, match="int16"):
        enc(np.zeros(160, dtype=np.int32))
    with pytest.raises(MediaConfigError, match="int16"):
        enc(np.zeros(160, dtype=np.float64))
    with pytest.raises(MediaConfigError, match="numpy array"):
        enc([0, 1, 2])
    with pytest.raises(MediaConfigError, match="uint8"):
        dec(np.zeros(160, dtype=np.int8))
    with pytest.raises(MediaConfigError, match="uint8"):
        dec(b"\xff" * 160)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_bad_out_rejected(law: str) -> None:
    enc, _ = ENCODERS[law]
    dec, _ = DECODERS[law]
    pcm = np.zeros((2, 160), dtype=np.int16)
    codes = np.zeros((2, 160), dtype=np.uint8)
    with pytest.raises(MediaConfigError, match="shape"):
        enc(pcm, out=np.empty((160, 2), dtype=np.uint8))
    with pytest.raises(MediaConfigError, match="uint8"):
        enc(pcm, out=np.empty((2, 160), dtype=np.int16))
    with pytest.raises(MediaConfigError, match="int16"):
        dec(codes, out=np.empty((2, 160), dtype=np.uint16))
    readonly = np.empty((2, 160), dtype=np.int16)
    readonly.flags.writeable = False
    with pytest.raises(MediaConfigError, match="writeable"):
        dec(codes, out=readonly)
    assert issubclass(MediaConfigError, MediaError)


def test_codec_enum() -> None:
    assert Codec.PCMU.payload_type == 0 and Codec.PCMA.payload_type == 8
    assert Codec.PCMU.encoding_name == "PCMU" and Codec.PCMA.encoding_name == "PCMA"
    assert Codec(8) is Codec.PCMA


def _quantisation_step(law: str, x: np.ndarray) -> np.ndarray:
    """The width of the G.711 interval containing each sample (in 16-bit units)."""
    mag = np.abs(x.astype(np.int32))
    if law == "ulaw":
        seg = np.clip(np.floor(np.log2((np.minimum(mag >> 2, 8159) + 33) / 32.0)).astype(np.int32), 0, 7)
        return np.int32(8) << seg  # 2^(seg+1) in the 14-bit domain, times 4
    seg = np.clip(np.floor(np.log2(np.maximum(mag >> 3, 1) / 16.0)).astype(np.int32) + 1, 0, 7)
    return np.int32(16) << np.maximum(seg - 1, 0)  # 2^max(seg,1) in the 13-bit domain, times 8


pcm_arrays = hnp.arrays(np.int16, hnp.array_shapes(min_dims=1, max_dims=2, max_side=40))


@settings(max_examples=60, deadline=None)
@given(pcm=pcm_arrays, law=st.sampled_from(["ulaw", "alaw"]))
def test_roundtrip_within_quantisation_step(pcm: np.ndarray, law: str) -> None:
    enc, _ = ENCODERS[law]
    dec, _ = DECODERS[law]
    back = dec(enc(pcm))
    err = np.abs(back.astype(np.int32) - pcm.astype(np.int32))
    # Clipping at the top of the range is the only place the error may exceed one step.
    limit = 32124 if law == "ulaw" else 32256
    inside = np.abs(pcm.astype(np.int32)) <= limit
    # Near a segment edge the sample and its reconstruction may sit in neighbouring segments.
    step = np.maximum(_quantisation_step(law, pcm), _quantisation_step(law, back))
    assert (err[inside] <= step[inside]).all()
    assert (np.sign(back[inside & (np.abs(pcm) > 8)]) == np.sign(pcm[inside & (np.abs(pcm) > 8)])).all()


@settings(max_examples=60, deadline=None)
@given(codes=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=2, max_side=40)))
def test_encode_of_decode_is_identity(codes: np.ndarray) -> None:
    np.testing.assert_array_equal(alaw_encode(alaw_decode(codes)), codes)
    # µ-law has two zeros: 0x7F (negative zero) decodes to 0, which encodes back to 0xFF.
    expected = np.where(codes == 0x7F, 0xFF, codes).astype(np.uint8)
    np.testing.assert_array_equal(ulaw_encode(ulaw_decode(codes)), expected)


def test_encode_of_decode_every_code() -> None:
    assert (alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES).all()
    back = ulaw_encode(ulaw_decode(ALL_CODES))
    assert list(np.flatnonzero(back != ALL_CODES)) == [0x7F]
    assert back[0x7F] == 0xFF
