"""Render the shipped prompts: ``python scripts/make_prompts.py [--force] [DIR ...]``.

Each ``prompts.toml`` (``name = "text"``) under ``ivr/prompts/<language>/`` becomes ``NAME.wav`` beside it,
spoken by espeak-ng and converted to 8 kHz 16-bit mono (the engine's own format, so the server converts nothing
when it plays them). Existing files are kept unless ``--force``; the WAVs are committed, so servers and CI need
no speech engine to play the shipped prompts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
import wave
from pathlib import Path

from ccpbx.media.prompts import load_prompt

ROOT = Path(__file__).resolve().parent.parent
VOICES = {"en": "en-us"}


def render(text: str, voice: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
        pcm = load_prompt(raw)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.astype("<i2").tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="prompt directories (default: ivr/prompts/*)")
    parser.add_argument("--force", action="store_true", help="render again even when the WAV exists")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 1
    dirs = args.dirs or sorted(p.parent for p in (ROOT / "ivr" / "prompts").glob("*/prompts.toml"))
    made = 0
    for directory in dirs:
        table = tomllib.loads((directory / "prompts.toml").read_text(encoding="utf-8"))
        voice = VOICES.get(directory.name, directory.name)
        for name, text in table.items():
            out = directory / f"{name}.wav"
            if out.exists() and not args.force:
                continue
            render(str(text), voice, out)
            made += 1
    print(f"rendered {made} prompt(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
