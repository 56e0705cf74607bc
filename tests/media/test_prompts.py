"""WAV prompt loading (widths, rates, channels, resampling, cache, errors) and the players."""

from __future__ import annotations

import os
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from ccpbx.media.errors import MediaError
from ccpbx.media.prompts import MusicOnHold, PromptError, PromptPlayer, clear_prompt_cache, load_prompt
from ccpbx.media.source import FRAME_SAMPLES, SAMPLE_RATE, AudioSource


def _sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> npt.NDArray[np.float64]:
    t = np.arange(round(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def _write_wav(path: Path, signal: npt.NDArray[np.float64], rate: int, width: int, channels: int = 1) -> None:
    """Write ``signal`` (-1..1, same on every channel) with the stdlib wave module."""
    full = 2 ** (8 * width - 1) - 1
    ints = np.rint(signal * full).astype(np.int64)
    frames = np.repeat(ints[:, None], channels, axis=1).reshape(-1)
    if width == 1:
        raw = (frames + 128).astype(np.uint8).tobytes()
    elif width == 3:
        b = frames.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
        raw = b.tobytes()
    else:
        raw = frames.astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def _dominant_hz(pcm: npt.NDArray[np.int16]) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.argmax(spectrum) * SAMPLE_RATE / pcm.size)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_prompt_cache()


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_formats_resampled_to_8k_mono(tmp_path: Path, rate: int, width: int, channels: int) -> None:
    path = tmp_path / "p.wav"
    _write_wav(path, _sine(1000.0, 0.5, rate), rate, width, channels)
    pcm = load_prompt(path)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert pcm.size == 4000  # 0.5 s at 8 kHz, exact rational resampling
    assert abs(_dominant_hz(pcm) - 1000.0) <= 2.0
    # Level preserved: half scale in, about half of int16 out (away from the filter's edge transients).
    middle = pcm[500:-500].astype(np.float64)
    assert np.abs(middle).max() == pytest.approx(0.5 * 32767, rel=0.03)


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left = np.rint(_sine(500.0, 0.2, 8000) * 20000).astype(np.int16)
    right = np.rint(_sine(1500.0, 0.2, 8000) * 20000).astype(np.int16)
    path = tmp_path / "st.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.stack([left, right], axis=1).tobytes())
    pcm = load_prompt(path)
    expected = (left.astype(np.int32) + right.astype(np.int32)) / 2
    assert np.abs(pcm - expected).max() <= 0.5


def test_sox_44k1_stereo(tmp_path: Path, sox: str) -> None:
    path = tmp_path / "sox.wav"
    subprocess.run(
        [sox, "-n", "-r", "44100", "-c", "2", "-b", "16", str(path), "synth", "1.5", "sine", "697"],
        check=True,
        timeout=30,
    )
    pcm = load_prompt(path)
    assert pcm.size == 12000
    assert abs(_dominant_hz(pcm) - 697.0) <= 2.0


def test_cache_same_object_and_reload_on_change(tmp_path: Path) -> None:
    path = tmp_path / "c.wav"
    _write_wav(path, _sine(400.0, 0.1, 8000), 8000, 2)
    first = load_prompt(path)
    assert load_prompt(str(path)) is first
    assert load_prompt(tmp_path / "." / "c.wav") is first  # keyed by the resolved path
    assert not first.flags.writeable
    _write_wav(path, _sine(2000.0, 0.2, 8000), 8000, 2)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = load_prompt(path)
    assert second is not first
    assert second.size == 1600 and abs(_dominant_hz(second) - 2000.0) <= 5.0


def _wav_header(tag: int, bits: int, channels: int = 1, rate: int = 8000, data: bytes = b"\0" * 16) -> bytes:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_wav_header(3, 32), "floating point"),
        (_wav_header(7, 8), "mu-law"),
        (_wav_header(0x11, 4), "ADPCM"),
        (_wav_header(1, 12), "sample width"),
        (b"RIFF\x10\0\0\0WAVEjunk", "fmt"),
        (b"not a wav file at all", "RIFF"),
        (_wav_header(1, 16)[:36], "data"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(PromptError, match=message):
        load_prompt(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot read prompt"):
        load_prompt(tmp_path / "nope.wav")


def test_prompt_player_plays_once_and_pads(tmp_path: Path) -> None:
    samples = np.arange(1, 401, dtype=np.int16)  # 2.5 frames
    player = PromptPlayer(samples)
    assert isinstance(player, AudioSource)
    frames = [player.read_frame() for _ in range(3)]
    assert player.read_frame() is None and player.finished
    got = np.concatenate([f for f in frames if f is not None])
    assert got.size == 3 * FRAME_SAMPLES
    assert np.array_equal(got[:400], samples) and not got[400:].any()
    path = tmp_path / "one.wav"
    _write_wav(path, _sine(300.0, 0.05, 8000), 8000, 2)  # 400 samples
    from_file = PromptPlayer(path)
    count = 0
    while from_file.read_frame() is not None:
        count += 1
    assert count == 3


def test_music_on_hold_loops_over_a_playlist(tmp_path: Path) -> None:
    a = np.full(100, 1, dtype=np.int16)
    path = tmp_path / "b.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.full(150, 2, dtype="<i2").tobytes())
    moh = MusicOnHold([a, path])
    assert isinstance(moh, AudioSource)
    out = np.concatenate([moh.read_frame() for _ in range(10)])
    cycle = np.concatenate([a, np.full(150, 2, dtype=np.int16)])
    assert np.array_equal(out, np.resize(cycle, out.size))
    single = MusicOnHold(a)
    assert np.array_equal(single.read_frame(), np.ones(FRAME_SAMPLES, dtype=np.int16))
    with pytest.raises(PromptError):
        MusicOnHold([])
    with pytest.raises(PromptError):
        PromptPlayer(np.zeros((2, 2), dtype=np.int16))
