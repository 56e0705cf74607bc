"""``ccpbx voicemail list / export / pin / email`` over a data directory (no server: SQLite and the WAV files)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from ccpbx.pbx.store import Store, VoiceboxRow
from ccpbx.pbx.voicemail import verify_pin
from tests.test_cli import run


def setup_box(data_dir: Path) -> list[Path]:
    """Extension 1001 with two messages (one new, one saved) whose WAVs exist in the data directory."""
    assert run(["ext", "add", "1001", "--password", "secret-one"], data_dir=data_dir).exit_code == 0
    box = data_dir / "voicemail" / "1001"
    box.mkdir(parents=True)
    paths = [box / "msg-a.wav", box / "msg-b.wav"]
    for i, path in enumerate(paths):
        path.write_bytes(b"RIFF-fake-" + bytes([i]))

    async def add() -> None:
        async with await Store.open(data_dir / "ccpbx.sqlite3") as store:
            now = time.time()
            await store.add_voicemail("1001", "saved", "1002", "Bob", now - 3600, 4.2, str(paths[0]))
            await store.add_voicemail("1001", "new", "5550100", "", now - 60, 12.0, str(paths[1]))

    asyncio.run(add())
    return paths


def voicebox(data_dir: Path, box: str) -> VoiceboxRow:
    async def read() -> VoiceboxRow:
        async with await Store.open(data_dir / "ccpbx.sqlite3") as store:
            return await store.get_voicebox(box)

    return asyncio.run(read())


def test_list_shows_new_messages_first_and_json_has_every_field(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    setup_box(data_dir)
    result = run(["voicemail", "list", "1001"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["ID", "FOLDER"]
    assert "new" in lines[1] and "5550100" in lines[1] and "12.0 s" in lines[1]
    assert "saved" in lines[2] and "Bob <1002>" in lines[2]
    rows = json.loads(run(["voicemail", "list", "1001", "--json"], data_dir=data_dir).output)
    assert [(r["folder"], r["caller"]) for r in rows] == [("new", "5550100"), ("saved", "1002")]
    assert set(rows[0]) == {"id", "mailbox", "folder", "caller", "caller_name", "received_at", "duration_s", "path"}


def test_list_of_an_unknown_extension_fails_clearly(tmp_path: Path) -> None:
    result = run(["voicemail", "list", "4711"], data_dir=tmp_path / "data")
    assert result.exit_code != 0 and "no extension '4711'" in result.output


def test_export_copies_the_wavs_with_an_index(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    paths = setup_box(data_dir)
    out = tmp_path / "out"
    result = run(["voicemail", "export", "1001", "--output", str(out)], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "exported 2 message(s)" in result.output
    index = json.loads((out / "index.json").read_text())
    assert sorted((out / i["file"]).read_bytes() for i in index) == sorted(p.read_bytes() for p in paths)
    assert {i["caller"] for i in index} == {"1002", "5550100"}
    assert all(p.exists() for p in paths)  # export copies; the box keeps its messages


def test_export_reports_a_missing_file_and_exports_the_rest(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    paths = setup_box(data_dir)
    paths[0].unlink()
    result = run(["voicemail", "export", "1001", "--output", str(tmp_path / "out")], data_dir=data_dir)
    assert result.exit_code != 0 and "1 message file(s) are missing" in result.output
    assert len(json.loads((tmp_path / "out" / "index.json").read_text())) == 1


def test_pin_is_stored_hashed_asked_hidden_and_checked(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    setup_box(data_dir)
    result = run(["voicemail", "pin", "1001", "--pin", "12"], data_dir=data_dir)
    assert result.exit_code != 0 and "at least 4 digits" in result.output
    assert voicebox(data_dir, "1001").pin_hash is None  # a bad PIN changes nothing
    result = run(["voicemail", "pin", "1001"], data_dir=data_dir, input="735921\n735921\n")
    assert result.exit_code == 0, result.output
    assert "735921" not in result.output  # the prompt does not echo it
    stored = voicebox(data_dir, "1001").pin_hash
    assert stored is not None and "735921" not in stored and verify_pin("735921", stored)
    assert not verify_pin("000000", stored)
    assert b"735921" not in (data_dir / "ccpbx.sqlite3").read_bytes()


def test_email_is_set_checked_and_cleared(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    setup_box(data_dir)
    result = run(["voicemail", "email", "1001", "owner@example.com"], data_dir=data_dir)
    assert result.exit_code == 0 and "once [voicemail] smtp_host is set" in result.output
    assert voicebox(data_dir, "1001").email == "owner@example.com"
    result = run(["voicemail", "email", "1001", "not an address"], data_dir=data_dir)
    assert result.exit_code != 0
    assert voicebox(data_dir, "1001").email == "owner@example.com"  # kept on bad input
    assert run(["voicemail", "email", "1001", ""], data_dir=data_dir).exit_code == 0
    assert voicebox(data_dir, "1001").email is None
