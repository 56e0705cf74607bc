"""Where a prompt a flow names comes from: the prompt directories, a file path, or a tone.

``play("welcome")`` looks for ``welcome.wav`` in the configured prompt directories in order, then in the shipped
prompts of the language (``ivr/prompts/en``), so a user's directory overrides any shipped prompt.
``play("/srv/prompts/x.wav")`` (or any name with a ``/`` or ending ``.wav``) plays that file. Tones:
``"tone:beep"``, ``"tone:dial"``, ``"tone:ringback"``, ``"tone:busy"``, ``"tone:congestion"`` (the region's
call-progress tones) and ``"tone:440"`` or ``"tone:350+440"`` (Hz), each optionally ``/MS`` long
(``"tone:busy/3000"``); without a length, named tones play 2 s, a plain beep or frequency 400 ms.

This module only resolves names (no audio is read here: ``ivr`` imports nothing of ours); ``pbx`` decodes the
file with the media engine's loader, which converts any rate and width once and caches it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import PromptNotFoundError

__all__ = ["SHIPPED_PROMPTS", "PromptLibrary", "ToneRequest"]

#: The prompts shipped with ccpbx, one directory per language.
SHIPPED_PROMPTS = Path(__file__).resolve().parent / "prompts"

NAMED_TONES = ("dial", "ringback", "busy", "congestion")
BEEP_HZ = 1000.0
DEFAULT_BEEP_MS = 400
DEFAULT_NAMED_TONE_MS = 2000
MAX_TONE_MS = 60_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_TONE = re.compile(r"^tone:(?P<what>[a-z]+|\d+(?:\.\d+)?(?:\+\d+(?:\.\d+)?)*)(?:/(?P<ms>\d+))?$")


@dataclass(frozen=True, slots=True)
class ToneRequest:
    """A tone to play: a named call-progress tone (``kind``) or frequencies, for ``duration_ms``."""

    kind: str | None
    frequencies_hz: tuple[float, ...]
    duration_ms: int


class PromptLibrary:
    """Resolves what a flow names to a WAV file or a tone, searching ``directories`` then the shipped set."""

    def __init__(self, directories: Sequence[Path] = (), language: str = "en") -> None:
        self.directories = [Path(d) for d in directories]
        shipped = SHIPPED_PROMPTS / language
        self.search = [*self.directories, shipped] if shipped.is_dir() else list(self.directories)
        self.language = language

    def resolve(self, prompt: str | Path) -> Path | ToneRequest:
        """The file or tone ``prompt`` means; :class:`PromptNotFoundError` naming where it looked."""
        if isinstance(prompt, Path):
            return self._file(prompt)
        text = prompt.strip()
        if text.startswith("tone:"):
            return parse_tone(text)
        if "/" in text or text.lower().endswith(".wav"):
            return self._file(Path(text))
        if not _NAME.match(text):
            raise PromptNotFoundError(f"{prompt!r} is not a prompt name, a file path or a tone")
        for directory in self.search:
            candidate = directory / f"{text}.wav"
            if candidate.is_file():
                return candidate
        where = ", ".join(str(d) for d in self.search) or "no prompt directories"
        raise PromptNotFoundError(f"no prompt {text!r} ({text}.wav) in {where}")

    def names(self) -> list[str]:
        """Every prompt name reachable, the first directory's version winning."""
        seen: dict[str, Path] = {}
        for directory in self.search:
            if directory.is_dir():
                for wav in sorted(directory.glob("*.wav")):
                    seen.setdefault(wav.stem, wav)
        return sorted(seen)

    @staticmethod
    def _file(path: Path) -> Path:
        if not path.is_file():
            raise PromptNotFoundError(f"prompt file {str(path)!r} does not exist")
        return path


def parse_tone(text: str) -> ToneRequest:
    """``tone:busy/3000`` -> ToneRequest; :class:`PromptNotFoundError` for anything else."""
    match = _TONE.match(text)
    if match is None:
        raise PromptNotFoundError(f"{text!r} is not a tone (tone:beep, tone:busy/3000, tone:440/500)")
    what, ms = match["what"], match["ms"]
    duration = int(ms) if ms is not None else None
    if duration is not None and not 0 < duration <= MAX_TONE_MS:
        raise PromptNotFoundError(f"{text!r}: a tone lasts 1 to {MAX_TONE_MS} ms")
    if what == "beep":
        return ToneRequest(None, (BEEP_HZ,), duration or DEFAULT_BEEP_MS)
    if what in NAMED_TONES:
        return ToneRequest(what, (), duration or DEFAULT_NAMED_TONE_MS)
    if what.isalpha():
        raise PromptNotFoundError(f"{text!r}: no tone named {what!r} (beep, {', '.join(NAMED_TONES)})")
    freqs = tuple(float(f) for f in what.split("+"))
    if any(not 20 <= f < 4000 for f in freqs):
        raise PromptNotFoundError(f"{text!r}: tone frequencies must be from 20 to 3999 Hz")
    return ToneRequest(None, freqs, duration or DEFAULT_BEEP_MS)
