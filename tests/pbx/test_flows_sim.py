"""IVR flows on the real server (in-memory SIP network): ivr:MODULE:FUNCTION, reloading, fallback, hang-ups."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import textwrap
import uuid
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccpbx.pbx.app import SipServer
from ccpbx.pbx.config import Config, ConfigError, parse_config
from ccpbx.pbx.wiring import check_destinations
from tests.pbx.simnet import SimPhone, registered, sim_pbx, until

USERS = {"1001": "pw-1001-sim", "1002": "pw-1002-sim"}

pytestmark = pytest.mark.timeout(30)


class Flows:
    """A flows module in a temporary directory, under a name no other test uses."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "flows"
        self.dir.mkdir()
        self.name = f"flows_{uuid.uuid4().hex[:8]}"
        self.marks = root / "marks.txt"

    def write(self, body: str) -> None:
        source = f"import asyncio\nfrom pathlib import Path\nMARKS = Path({str(self.marks)!r})\n\n" \
                 "def mark(text):\n    with MARKS.open('a') as f:\n        f.write(text + '\\n')\n\n"
        (self.dir / f"{self.name}.py").write_text(source + textwrap.dedent(body))

    def marked(self) -> list[str]:
        return self.marks.read_text().split() if self.marks.exists() else []


def config_text(tmp_path: Path, flows: Flows, extra: str = "") -> str:
    return ('[admin]\nenabled = false\n[rtp]\nport_min = 32000\nport_max = 32400\n'
            f'[ivr]\npaths = ["flows"]\nfallback = "extension:1002"\n{extra}'
            f'[[dialplan.rule]]\nmatch = "700"\ndestination = "ivr:{flows.name}:main"\n'
            f'[[dialplan.rule]]\nmatch = "701"\ndestination = "ivr:{flows.name}:other"\n')


def full_config(tmp_path: Path, flows: Flows) -> Config:
    return parse_config(f'[server]\ndata_dir = "{tmp_path}"\n' + config_text(tmp_path, flows), base_dir=tmp_path)


@pytest.fixture
def flows(tmp_path: Path) -> Flows:
    return Flows(tmp_path)


@pytest.fixture
async def pbx(tmp_path: Path, flows: Flows) -> AsyncIterator[SipServer]:
    async with sim_pbx(tmp_path, config_text(tmp_path, flows), USERS) as server:
        yield server


async def phone(pbx: SipServer, user: str, **kw: bool) -> SimPhone:
    return await registered(pbx, user, USERS[user], **kw)


async def press(a: SimPhone, call: object, keys: str) -> None:
    for key in keys:
        info = await a.in_dialog(call, "INFO", body=f"Signal={key}\r\nDuration=160\r\n".encode(),  # type: ignore[arg-type]
                                 content_type="application/dtmf-relay")
        assert info.status == 200


async def cdr(pbx: SipServer, number: str) -> dict[str, object]:
    for _ in range(100):
        with sqlite3.connect(pbx.store.path) as db:
            db.row_factory = sqlite3.Row
            row = db.execute('SELECT * FROM cdrs WHERE callee = ? AND "end" IS NOT NULL', (number,)).fetchone()
        if row is not None:
            return dict(row)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no final CDR for a call to {number}")


async def test_a_flow_collects_digits_and_transfers_with_data(pbx: SipServer, flows: Flows) -> None:
    flows.write("""
        async def main(call):
            await call.answer()
            account = await call.collect(4, timeout=5, terminator="#")
            mark(f"{call.caller}:{call.dialled}:{account}")
            call.data["account"] = account
            await call.transfer("extension:1002", data={"verified": True})
            mark("never")
    """)
    a = await phone(pbx, "1001")
    b = await phone(pbx, "1002", auto_answer=True)
    call = await a.call("700")
    await press(a, call, "4711#")
    incoming = await asyncio.wait_for(b.incoming.get(), 5)  # the transfer rings 1002
    await until(lambda: bool(flows.marked()))
    assert flows.marked() == ["1001:700:4711"]
    await a.hangup(call)
    await asyncio.wait_for(incoming.ended.wait(), 5)
    await until(lambda: not pbx.calls.calls)
    row = await cdr(pbx, "700")
    assert '"account":"4711"' in str(row["data"]) and '"verified":true' in str(row["data"])


async def test_a_flow_that_raises_sends_the_caller_to_the_fallback(pbx: SipServer, flows: Flows) -> None:
    flows.write("""
        async def main(call):
            await call.answer()
            mark("started")
            raise RuntimeError("the CRM is down")
    """)
    a = await phone(pbx, "1001")
    b = await phone(pbx, "1002", auto_answer=True)
    call = await a.call("700")
    incoming = await asyncio.wait_for(b.incoming.get(), 5)  # fallback = extension:1002
    assert flows.marked() == ["started"]
    await a.hangup(call)
    await asyncio.wait_for(incoming.ended.wait(), 5)


async def test_a_missing_function_or_a_broken_file_also_falls_back(pbx: SipServer, flows: Flows) -> None:
    flows.write("async def main(call):\n    pass\n")
    a = await phone(pbx, "1001")
    b = await phone(pbx, "1002", auto_answer=True)
    call = await a.call("701")  # "other" does not exist
    await asyncio.wait_for(b.incoming.get(), 5)
    await a.hangup(call)
    (flows.dir / f"{flows.name}.py").write_text("async def main(call)\n    pass\n")  # a syntax error
    call = await a.call("700")
    await asyncio.wait_for(b.incoming.get(), 5)
    await a.hangup(call)


async def test_an_edited_flow_is_used_by_the_next_call(pbx: SipServer, flows: Flows) -> None:
    flows.write("""
        async def main(call):
            mark("v1")
            await call.hangup()
    """)
    a = await phone(pbx, "1001")
    call = await a.call("700", wait_answer=False)
    await asyncio.wait_for(call.ended.wait(), 5)
    flows.write("""
        async def main(call):
            mark("v2")
            await call.hangup()
    """)
    call = await a.call("700", wait_answer=False)
    await asyncio.wait_for(call.ended.wait(), 5)
    assert flows.marked() == ["v1", "v2"]


async def test_a_hang_up_cancels_the_flow_and_its_finally_blocks_run(pbx: SipServer, flows: Flows) -> None:
    flows.write("""
        from ccpbx.ivr.errors import CallHangup

        async def main(call):
            await call.answer()
            try:
                await call.collect(1, timeout=20)  # a call operation: CallHangup
            except CallHangup:
                mark("hangup-seen")
            finally:
                mark("finally-1")

        async def other(call):
            await call.answer()
            try:
                await asyncio.sleep(30)  # not an operation on the call: cancelled
            finally:
                mark("finally-2")
    """)
    a = await phone(pbx, "1001")
    call = await a.call("700")
    await asyncio.sleep(0.2)
    await a.hangup(call)
    await until(lambda: "finally-1" in flows.marked())
    call = await a.call("701")
    await asyncio.sleep(0.2)
    await a.hangup(call)
    await until(lambda: "finally-2" in flows.marked())
    assert flows.marked() == ["hangup-seen", "finally-1", "finally-2"]
    await until(lambda: not pbx.calls.calls)


async def test_record_stops_on_silence_and_play_takes_names_files_and_tones(
        pbx: SipServer, flows: Flows) -> None:
    flows.write("""
        async def main(call):
            await call.play(["goodbye", "tone:busy/200", "tone:440/100"])
            path = await call.record(max_seconds=10, silence_stop=0.6)
            mark(str(path))
            await call.hangup()
    """)
    a = await phone(pbx, "1001")
    started = asyncio.get_running_loop().time()
    call = await a.call("700")
    await asyncio.wait_for(call.ended.wait(), 10)
    assert asyncio.get_running_loop().time() - started < 6  # stopped by silence, not by max_seconds
    [path] = flows.marked()
    with wave.open(path) as w:
        assert w.getframerate() == 8000 and w.getnchannels() == 1
        assert 0.5 <= w.getnframes() / 8000 <= 2.0


def test_config_check_names_the_file_and_line_of_a_broken_flow(tmp_path: Path, flows: Flows) -> None:
    flows.write("async def main(call):\n    pass\n")
    check_destinations(parse_config(f'[server]\ndata_dir = "{tmp_path}"\n'
                                    + config_text(tmp_path, flows).replace(":other", ":main"), base_dir=tmp_path))
    (flows.dir / f"{flows.name}.py").write_text("x = 1\n\nasync def main(call)\n    pass\n")
    with pytest.raises(ConfigError) as info:
        check_destinations(full_config(tmp_path, flows))
    text = str(info.value)
    assert f"{flows.name}.py:3" in text and "syntax error" in text
    (flows.dir / f"{flows.name}.py").write_text("import no_such_module_here\n")
    with pytest.raises(ConfigError, match="no_such_module_here"):
        check_destinations(full_config(tmp_path, flows))


def test_config_check_wants_espeak_for_a_flow_that_speaks(tmp_path: Path, flows: Flows,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    flows.write("async def main(call):\n    await call.say('hello')\n\nasync def other(call):\n    pass\n")
    config = full_config(tmp_path, flows)
    check_destinations(config)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="espeak-ng"):
        check_destinations(config)


async def test_speech_is_rendered_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ccpbx.media.prompts import load_prompt
    from ccpbx.pbx.flows import Speech

    speech = Speech(tmp_path / "speech")
    if not speech.available() and os.environ.get("CI") != "true":
        pytest.skip("espeak-ng is not installed")  # scripts/test installs it; with CI=true this fails instead
    path = await speech.render("Your   call is important to us.")
    pcm = load_prompt(path)
    assert pcm.size > 8000 * 0.8 and abs(pcm).max() > 1000  # most of a second of real speech
    calls: list[object] = []
    monkeypatch.setattr("asyncio.create_subprocess_exec", lambda *a, **k: calls.append(a))
    assert await speech.render("Your call is important to us.") == path  # same text: the cached file
    assert calls == []


async def test_a_flow_asks_the_schedules_at_the_routers_clock(pbx: SipServer, flows: Flows) -> None:
    from datetime import UTC, datetime

    flows.write("""
        async def main(call):
            mark("open" if call.in_schedule("office") else "closed")
            await call.hangup()

        async def other(call):
            call.in_schedule("nosuch")  # an unknown schedule is the flow's error: the caller goes to the fallback
    """)
    a = await phone(pbx, "1001")
    b = await phone(pbx, "1002", auto_answer=True)
    for when in (datetime(2026, 12, 7, 9, 0, tzinfo=UTC), datetime(2026, 12, 6, 9, 0, tzinfo=UTC)):  # Mon, Sun
        pbx.router.clock = lambda when=when: when  # type: ignore[misc]
        call = await a.call("700", wait_answer=False)
        await asyncio.wait_for(call.ended.wait(), 5)
    assert flows.marked() == ["open", "closed"]  # the demo's office: mon-fri 08:00-18:00 UTC
    call = await a.call("701")
    await asyncio.wait_for(b.incoming.get(), 5)  # fallback = extension:1002
    await a.hangup(call)
