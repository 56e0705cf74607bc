"""G.711 throughput of ``ccpbx.media.g711`` against the stdlib ``audioop`` C functions, in the same run.

Per 20 ms frame first, the case users meet: one packet's 160 samples converted by one call, bytes in and bytes out
as a per-packet path sees them (ours: ``np.frombuffer`` of the payload, the table lookup, ``tobytes``; audioop: one
call on the bytes). value = ns per frame; ratio = audioop's time / ours (< 1: ours is slower per packet, as numpy's
fixed cost per call dominates 160 samples). Then per batch:

for each law (ulaw, alaw), direction (encode, decode) and batch of 160-sample frames x 1, 100 and 1,000
channels, ours converts a ``(channels, 160)`` array into a preallocated ``out`` (as the media engine does)
and ``audioop`` converts the same bytes as one object (the fairest reference: one C call per batch). A second
reference row times ``audioop`` called once per 160-sample frame, which is what a per-channel design pays.
Timing: ``time.perf_counter`` around a loop sized to ~2 ms, best of several repeats; value = samples/s;
ratio = ours / reference (> 1 means ours is faster).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_seconds_per_call, main_for

from ccpbx.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_SAMPLES = 160
CHANNELS = (1, 100, 1000)


def _signal(channels: int) -> np.ndarray:
    # Speech-like amplitudes: Gaussian noise around -20 dBFS, clipped to int16.
    rng = np.random.default_rng(channels)
    x = rng.normal(0.0, 3000.0, size=(channels, FRAME_SAMPLES))
    return np.clip(x, -32768, 32767).astype(np.int16)


def _row(name: str, ours_s: float, ref_name: str, ref_s: float, samples: int) -> dict[str, Any]:
    value = samples / ours_s
    ref_value = samples / ref_s
    return {
        "name": name,
        "value": round(value),
        "unit": "samples/s",
        "reference": ref_name,
        "reference_value": round(ref_value),
        "ratio": round(value / ref_value, 3),
    }


def per_frame_rows(law: str, enc: Any, dec: Any, a_enc: Any, a_dec: Any, repeats: int) -> list[dict[str, Any]]:
    """One 20 ms frame per call, bytes to bytes (see the module docstring)."""
    pcm = _signal(1)[0]
    pcm_bytes = pcm.tobytes()
    code_bytes = enc(pcm).tobytes()
    assert a_enc(pcm_bytes, 2) == code_bytes
    assert a_dec(code_bytes, 2) == dec(np.frombuffer(code_bytes, np.uint8)).tobytes()
    rows = []
    cases = (
        ("encode", lambda: enc(np.frombuffer(pcm_bytes, np.int16)).tobytes(), lambda: a_enc(pcm_bytes, 2),
         a_enc.__name__),
        ("decode", lambda: dec(np.frombuffer(code_bytes, np.uint8)).tobytes(), lambda: a_dec(code_bytes, 2),
         a_dec.__name__),
    )
    for direction, ours, ref, ref_name in cases:
        t_ours = best_seconds_per_call(ours, repeats)
        t_ref = best_seconds_per_call(ref, repeats)
        rows.append({"name": f"g711.{law}.{direction} per 20 ms frame (160 samples, bytes in/out)",
                     "value": round(t_ours * 1e9), "unit": "ns/frame", "reference": f"audioop.{ref_name} per frame",
                     "reference_value": round(t_ref * 1e9), "ratio": round(t_ref / t_ours, 3)})
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    repeats = 3 if quick else 15
    laws = {
        "ulaw": (ulaw_encode, ulaw_decode, audioop.lin2ulaw, audioop.ulaw2lin),
        "alaw": (alaw_encode, alaw_decode, audioop.lin2alaw, audioop.alaw2lin),
    }
    rows: list[dict[str, Any]] = []
    for law, (enc, dec, a_enc, a_dec) in laws.items():
        rows += per_frame_rows(law, enc, dec, a_enc, a_dec, repeats)
    for law, (enc, dec, a_enc, a_dec) in laws.items():
        for channels in CHANNELS:
            pcm = _signal(channels)
            codes = enc(pcm)
            pcm_bytes = pcm.tobytes()
            code_bytes = codes.tobytes()
            pcm_frames = [pcm[i].tobytes() for i in range(channels)]
            code_frames = [codes[i].tobytes() for i in range(channels)]
            assert a_enc(pcm_bytes, 2) == code_bytes, "encoder disagrees with audioop"
            assert a_dec(code_bytes, 2) == dec(codes).tobytes(), "decoder disagrees with audioop"
            codes_out = np.empty_like(codes)
            pcm_out = np.empty_like(pcm)
            n = pcm.size
            tag = f"{channels}x{FRAME_SAMPLES}"

            t_ours = best_seconds_per_call(lambda: enc(pcm, codes_out), repeats)  # noqa: B023
            t_ref = best_seconds_per_call(lambda: a_enc(pcm_bytes, 2), repeats)  # noqa: B023
            rows.append(_row(f"g711.{law}.encode {tag}", t_ours, f"audioop.{a_enc.__name__} (one call)", t_ref, n))
            if channels > 1:
                t_frames = best_seconds_per_call(
                    lambda: [a_enc(f, 2) for f in pcm_frames],  # noqa: B023
                    repeats,
                )
                rows.append(
                    _row(f"g711.{law}.encode {tag}", t_ours, f"audioop.{a_enc.__name__} per frame", t_frames, n)
                )

            t_ours = best_seconds_per_call(lambda: dec(codes, pcm_out), repeats)  # noqa: B023
            t_ref = best_seconds_per_call(lambda: a_dec(code_bytes, 2), repeats)  # noqa: B023
            rows.append(_row(f"g711.{law}.decode {tag}", t_ours, f"audioop.{a_dec.__name__} (one call)", t_ref, n))
            if channels > 1:
                t_frames = best_seconds_per_call(
                    lambda: [a_dec(f, 2) for f in code_frames],  # noqa: B023
                    repeats,
                )
                rows.append(
                    _row(f"g711.{law}.decode {tag}", t_ours, f"audioop.{a_dec.__name__} per frame", t_frames, n)
                )
    return rows


if __name__ == "__main__":
    main_for(run, str(Path(__file__).resolve().parent / "results" / "g711.json"))
