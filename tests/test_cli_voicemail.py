"""`ccpbx voicemail list|export|pin|email` against a real store."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

from click.testing import CliRunner

from ccpbx.cli.main import main
from ccpbx.pbx.store import Store
from ccpbx.pbx.voicemail import verify_pin


def run(data: Path, *args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--data-dir", str(data), *args], input=input)
    return result.exit_code, result.output


def setup_box(data: Path) -> Path:
    wav = data / "voicemail" / "1001" / "msg-1.wav"
    wav.parent.mkdir(parents=True)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 8000)

    async def fill() -> None:
        async with await Store.open(data / "ccpbx.sqlite3") as store:
            await store.add_extension("1001", "pw-1001-long-enough", "", "ccpbx")
            await store.add_voicemail("1001", "new", "2002", "Bob", 1_800_000_000.0, 1.0, str(wav))
    asyncio.run(fill())
    return wav


def test_list_export_pin_and_email(tmp_path: Path) -> None:
    wav = setup_box(tmp_path)
    code, out = run(tmp_path, "voicemail", "list", "1001")
    assert code == 0 and "Bob <2002>" in out and "new" in out and "1.0 s" in out
    code, out = run(tmp_path, "voicemail", "list", "1001", "--json")
    assert json.loads(out)[0]["caller"] == "2002"
    code, out = run(tmp_path, "voicemail", "export", "1001", "--output", str(tmp_path / "out"))
    assert code == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert (tmp_path / "out" / index[0]["file"]).read_bytes() == wav.read_bytes()
    code, out = run(tmp_path, "voicemail", "pin", "1001", input="2468\n2468\n")
    assert code == 0, out

    async def box() -> tuple[str | None, str | None]:
        async with await Store.open(tmp_path / "ccpbx.sqlite3") as store:
            row = await store.get_voicebox("1001")
            return row.pin_hash, row.email
    pin_hash, _ = asyncio.run(box())
    assert verify_pin("2468", pin_hash) and not verify_pin("1111", pin_hash) and "2468" not in str(pin_hash)
    code, out = run(tmp_path, "voicemail", "pin", "1001", "--pin", "12")
    assert code != 0 and "at least 4 digits" in out
    assert run(tmp_path, "voicemail", "email", "1001", "owner@example.com")[0] == 0
    assert asyncio.run(box())[1] == "owner@example.com"
    code, out = run(tmp_path, "voicemail", "email", "1001", "not an address")
    assert code != 0


def test_an_unknown_extension_has_no_mailbox(tmp_path: Path) -> None:
    setup_box(tmp_path)
    code, out = run(tmp_path, "voicemail", "list", "9999")
    assert code == 1 and "no extension '9999'" in out
