"""WavRecorder: readable by sox and the stdlib wave module, exact samples, crash tolerance."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from ccpbx.media.errors import MediaConfigError, MediaError
from ccpbx.media.recorder import FLUSH_INTERVAL_SAMPLES, WavRecorder
from ccpbx.media.source import FRAME_SAMPLES, SAMPLE_RATE


def _read(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == SAMPLE_RATE and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return w.getnchannels(), data.reshape(-1, w.getnchannels())


def _soxi(sox: str, path: Path, flag: str) -> str:
    return subprocess.run(
        [sox, "--i", flag, str(path)], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


def test_mono_exact_samples_and_sox(tmp_path: Path, sox: str) -> None:
    rng = np.random.default_rng(5)
    audio = rng.integers(-32768, 32768, size=(125, FRAME_SAMPLES), dtype=np.int16)  # 2.5 s
    path = tmp_path / "mono.wav"
    with WavRecorder(path, channels=1) as rec:
        for frame in audio:
            rec.write(frame)
    assert rec.closed
    channels, data = _read(path)
    assert channels == 1 and np.array_equal(data[:, 0], audio.reshape(-1))
    assert _soxi(sox, path, "-c") == "1"
    assert _soxi(sox, path, "-r") == "8000"
    assert float(_soxi(sox, path, "-D")) == pytest.approx(2.5)


def test_stereo_legs_and_mono_mix(tmp_path: Path, sox: str) -> None:
    a = np.full((50, FRAME_SAMPLES), 30000, dtype=np.int16)
    b = np.tile(np.arange(FRAME_SAMPLES, dtype=np.int16), (50, 1))
    stereo_path, mono_path = tmp_path / "st.wav", tmp_path / "mix.wav"
    with WavRecorder(stereo_path, channels=2) as st, WavRecorder(mono_path, channels=1) as mono:
        for fa, fb in zip(a, b, strict=True):
            pair = np.stack([fa, fb], axis=1)
            st.write(pair)
            mono.write(pair)
    channels, data = _read(stereo_path)
    assert channels == 2
    assert np.array_equal(data[:, 0], a.reshape(-1)) and np.array_equal(data[:, 1], b.reshape(-1))
    assert _soxi(sox, stereo_path, "-c") == "2"
    assert float(_soxi(sox, stereo_path, "-D")) == pytest.approx(1.0)
    _, mixed = _read(mono_path)
    expected = np.clip(a.reshape(-1).astype(np.int32) + b.reshape(-1), -32768, 32767)
    assert np.array_equal(mixed[:, 0], expected)  # saturating sum


def test_crash_leaves_valid_file_missing_at_most_one_second(tmp_path: Path) -> None:
    path = tmp_path / "crash.wav"
    rec = WavRecorder(path, channels=1)
    audio = np.random.default_rng(1).integers(-3000, 3000, size=3 * SAMPLE_RATE + 7 * FRAME_SAMPLES, dtype=np.int16)
    for start in range(0, audio.size, FRAME_SAMPLES):
        rec.write(audio[start : start + FRAME_SAMPLES])
        if start == 3 * SAMPLE_RATE - FRAME_SAMPLES:
            # "Crash" part-way: copy the file as it is on disk, without closing the recorder.
            copy = tmp_path / "copy.wav"
            shutil.copyfile(path, copy)
            _, data = _read(copy)
            assert 2 * SAMPLE_RATE <= data.shape[0] <= 3 * SAMPLE_RATE
            assert np.array_equal(data[:, 0], audio[: data.shape[0]])
    copy2 = tmp_path / "copy2.wav"
    shutil.copyfile(path, copy2)
    _, data2 = _read(copy2)
    assert audio.size - data2.shape[0] <= FLUSH_INTERVAL_SAMPLES
    rec.close()
    rec.close()
    _, final = _read(path)
    assert np.array_equal(final[:, 0], audio)


def test_misuse(tmp_path: Path) -> None:
    with pytest.raises(MediaConfigError):
        WavRecorder(tmp_path / "x.wav", channels=3)
    rec = WavRecorder(tmp_path / "y.wav", channels=2)
    with pytest.raises(MediaConfigError):
        rec.write(np.zeros(10, dtype=np.int16))
    rec.close()
    with pytest.raises(MediaError):
        rec.write(np.zeros((10, 2), dtype=np.int16))
    with pytest.raises(MediaError):
        WavRecorder(tmp_path / "no" / "such" / "dir.wav")


def test_append_goes_on_after_the_last_whole_sample(tmp_path: Path) -> None:
    path = tmp_path / "moved.wav"
    first = (np.arange(2 * 300, dtype=np.int16) - 300).reshape(-1, 2)
    second = (np.arange(2 * 200, dtype=np.int16) * 7).reshape(-1, 2)
    with WavRecorder(path, channels=2) as rec:
        rec.write(first)
    with path.open("ab") as f:
        f.write(b"\x01\x02\x03")  # a torn last sample: a writer that died mid-write
    with WavRecorder(path, channels=2, append=True) as rec:
        assert rec.frames_written == 300
        rec.write(second)
    channels, data = _read(path)
    assert channels == 2 and np.array_equal(data, np.concatenate([first, second]))


def test_append_counts_the_file_not_a_stale_header(tmp_path: Path) -> None:
    path = tmp_path / "died.wav"
    said = np.full(FRAME_SAMPLES * 3, 1234, dtype=np.int16)
    rec = WavRecorder(path)
    rec.write(said)  # less than a second: the header still says 0 samples
    rec._file.flush()  # type: ignore[union-attr]  # what the OS has of a writer that died here
    with WavRecorder(path, append=True) as again:
        assert again.frames_written == said.size
        again.write(said)
    _, data = _read(path)
    assert data.shape == (2 * said.size, 1) and (data == 1234).all()
    rec._file.close()  # type: ignore[union-attr]


def test_append_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    stereo = tmp_path / "stereo.wav"
    WavRecorder(stereo, channels=2).close()
    with pytest.raises(MediaError, match="has 2 channel"):
        WavRecorder(stereo, channels=1, append=True)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wave file at all, but long enough to hold a header")
    with pytest.raises(MediaError, match="not a recording of this kind"):
        WavRecorder(junk, append=True)
    with pytest.raises(MediaError, match="cannot reopen"):
        WavRecorder(tmp_path / "missing.wav", append=True)
