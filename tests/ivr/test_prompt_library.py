"""Prompt names, files and tones a flow may play."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccpbx.ivr.errors import PromptNotFoundError
from ccpbx.ivr.prompt_library import SHIPPED_PROMPTS, PromptLibrary, ToneRequest, parse_tone


def test_shipped_prompts_are_found_by_name() -> None:
    library = PromptLibrary()
    assert library.resolve("goodbye") == SHIPPED_PROMPTS / "en" / "goodbye.wav"
    assert {"0", "9", "invalid", "no-input"} <= set(library.names())


def test_a_users_directory_overrides_a_shipped_prompt(tmp_path: Path) -> None:
    (tmp_path / "goodbye.wav").write_bytes(b"RIFF")
    (tmp_path / "welcome.wav").write_bytes(b"RIFF")
    library = PromptLibrary([tmp_path])
    assert library.resolve("goodbye") == tmp_path / "goodbye.wav"
    assert library.resolve("welcome") == tmp_path / "welcome.wav"
    assert library.resolve(str(tmp_path / "welcome.wav")) == tmp_path / "welcome.wav"
    assert library.resolve(tmp_path / "welcome.wav") == tmp_path / "welcome.wav"


def test_missing_prompts_name_where_they_were_looked_for(tmp_path: Path) -> None:
    library = PromptLibrary([tmp_path])
    with pytest.raises(PromptNotFoundError, match=str(tmp_path)):
        library.resolve("nosuch")
    with pytest.raises(PromptNotFoundError):
        library.resolve(str(tmp_path / "x.wav"))
    with pytest.raises(PromptNotFoundError):
        library.resolve("../etc/passwd")  # a path: it must exist as a file
    with pytest.raises(PromptNotFoundError):
        library.resolve("has space")


def test_tones() -> None:
    assert parse_tone("tone:beep") == ToneRequest(None, (1000.0,), 400)
    assert parse_tone("tone:busy/3000") == ToneRequest("busy", (), 3000)
    assert parse_tone("tone:350+440/250") == ToneRequest(None, (350.0, 440.0), 250)
    for bad in ("tone:", "tone:whistle", "tone:5000", "tone:440/0", "tone:440/999999", "tone:busy/x"):
        with pytest.raises(PromptNotFoundError):
            parse_tone(bad)
