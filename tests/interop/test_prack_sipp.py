"""RFC 3262 (100rel, PRACK) against SIPp over loopback, both sides of the B2BUA.

(a) A SIPp caller whose INVITE requires 100rel reaches an application destination that rings, plays early media
and answers: it gets a reliable 180 and a reliable 183 with SDP, PRACKs each with the RSeq it read (SIPp checks
the 200 to each PRACK and that the INVITE's 200 comes only after the last), and is answered and hung up.
(b) A SIPp gateway that insists on 100rel answers our INVITE (a ``DialTarget`` with
``reliable_provisional="required"``) with a reliable 183 and answers 200 only after a PRACK with the right RAck.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccpbx.media.tones import ToneKind, tone_source
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.calls import Call, DialTarget, Party
from ccpbx.pbx.config import DestinationKind
from ccpbx.pbx.destinations import Finished, Outcome
from ccpbx.pbx.sip.uri import SipUri
from tests.interop.server import in_process, udp_port
from tests.interop.sipp import SCENARIOS, free_media_port, free_port, run_sipp

USERS = {"2001": "secret-2001-pw"}
CONFIG = """
[rtp]
port_min = 35800
port_max = 36000
[[dialplan.rule]]
match = "700"
destination = "ivr:progress"
"""

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[SipServer]:
    async with in_process(tmp_path, CONFIG, USERS) as server:
        yield server


async def test_a_sipp_caller_requiring_100rel_pracks_our_180_and_183_and_is_answered(
        pbx: SipServer, sipp: str, tmp_path: Path) -> None:
    served: list[str] = []

    async def progress(call: Call, target: str, number: str) -> Outcome:
        await call.ring()
        await call.early_media(tone_source(ToneKind.RINGBACK))  # waits for the 180's PRACK (one at a time)
        await asyncio.sleep(0.2)
        await call.answer()  # the 183 carried our answer: no 2xx before its PRACK
        served.append(call.caller.number)
        await asyncio.sleep(0.5)  # a moment of the call, then the application hangs up (BYE)
        return Finished()

    pbx.control.register_destination(DestinationKind.IVR, progress, replace=True)
    result = await asyncio.to_thread(run_sipp, sipp, "uac_100rel", "127.0.0.1", udp_port(pbx), tmp_path / "uac",
                                     [["2001", USERS["2001"]]], extra=["-s", "700"])
    assert result.returncode == 0, result.explain()
    assert served == ["2001"]
    assert pbx.calls.stats.answered >= 1


async def test_our_invite_requiring_100rel_pracks_a_sipp_gateways_reliable_183(
        pbx: SipServer, sipp: str, tmp_path: Path) -> None:
    port = free_port()
    work = tmp_path / "gateway"
    work.mkdir()
    proc = subprocess.Popen([sipp, "-sf", str(SCENARIOS / "uas_100rel.xml"), "-i", "127.0.0.1", "-p", str(port),
                             "-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin", "-mp", str(free_media_port()),
                             "-trace_err", "-error_file", str(work / "errors.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    try:
        await asyncio.sleep(0.5)  # SIPp binds its port
        target = DialTarget(uri=SipUri(user="4930123", host="127.0.0.1", port=port),
                            destination=("udp", "127.0.0.1", port), label="gateway", to=Party("4930123"),
                            reliable_provisional="required")
        call = await pbx.calls.originate([target], caller=Party("2001"), dialled="4930123", timeout_ms=10_000)
        assert call.a.up and call.a.remote_rseq  # answered after the reliable 183 was PRACKed
        await asyncio.sleep(0.2)
        call.hangup()
        await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        output = proc.stdout.read() if proc.stdout is not None else ""
        if proc.stdout is not None:
            proc.stdout.close()
    errors = (work / "errors.log").read_text(errors="replace") if (work / "errors.log").exists() else ""
    assert proc.returncode == 0, f"{output[-3000:]}\n{errors[-3000:]}"  # SIPp saw the PRACK it expected
