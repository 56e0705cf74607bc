"""IVR flows against SIPp callers: digits by RFC 4733, by SIP INFO and as in-band tones all reach
``call.collect``, and the flow's ``transfer`` takes the call where it says (here: a second flow).

The server runs in this test's event loop with a flows directory of its own, as ``ccpbx serve`` would load it
from ``[ivr] paths``.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccpbx.pbx.app import SipServer
from tests.interop.server import in_process, udp_port
from tests.interop.sipp import run_sipp, write_rfc4733_pcap
from tests.interop.test_call_api_sipp import _digits_wav

USERS = {"2001": "secret-2001-pw"}

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

FLOWS = """
    from pathlib import Path

    MARKS = Path({marks!r})

    def mark(text):
        with MARKS.open("a") as f:
            f.write(text + "\\n")

    async def collect(call, then):
        await call.answer()
        digits = await call.collect(4, timeout=15, inter_digit_timeout=5, terminator="#")
        mark(f"collected {{call.caller}} {{call.dialled}} {{digits}}")
        await call.transfer(f"ivr:{{__name__}}:{{then}}", data={{"digits": digits}})

    async def then_hang_up(call):
        await call.collect(4, timeout=15, inter_digit_timeout=5, terminator="#")
        mark(f"reached hang-up with {{call.data['digits']}}")
        await call.play("tone:beep")
        await call.hangup()

    async def then_wait(call):
        mark(f"reached wait with {{call.data['digits']}}")
        await call.collect(1, timeout=30)  # until the caller's BYE

    async def inband(call):
        await collect(call, "then_hang_up")

    async def wait(call):
        await collect(call, "then_wait")
"""


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[tuple[SipServer, Path]]:
    flows = tmp_path / "flows"
    flows.mkdir()
    name = f"ivrflows_{uuid.uuid4().hex[:8]}"
    marks = tmp_path / "marks.txt"
    (flows / f"{name}.py").write_text(textwrap.dedent(FLOWS.format(marks=str(marks))))
    config = ('[rtp]\nport_min = 30600\nport_max = 30800\n'
              f'[ivr]\npaths = ["{flows}"]\n'
              f'[[dialplan.rule]]\nmatch = "700"\ndestination = "ivr:{name}:inband"\n'
              f'[[dialplan.rule]]\nmatch = "701"\ndestination = "ivr:{name}:wait"\n')
    async with in_process(tmp_path, config, USERS) as server:
        yield server, marks


_port = udp_port


async def _marks(marks: Path, count: int) -> list[str]:
    for _ in range(100):
        lines = marks.read_text().splitlines() if marks.exists() else []
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    return marks.read_text().splitlines() if marks.exists() else []


async def _call(pbx: SipServer, sipp: str, work: Path, scenario: str, number: str) -> None:
    result = await asyncio.to_thread(run_sipp, sipp, scenario, "127.0.0.1", _port(pbx), work,
                                     [["2001", USERS["2001"]]], extra=["-s", number], timeout_s=40)
    assert result.returncode == 0, result.explain()


async def test_rfc4733_digits_reach_the_flow(pbx: tuple[SipServer, Path], sipp: str, tmp_path: Path) -> None:
    server, marks = pbx
    work = tmp_path / "uac"
    work.mkdir()
    write_rfc4733_pcap(work / "digits_4733.pcap", "4711")
    await _call(server, sipp, work, "uac_rfc4733_digits", "701")
    assert await _marks(marks, 2) == ["collected 2001 701 4711", "reached wait with 4711"]


async def test_sip_info_digits_reach_the_flow(pbx: tuple[SipServer, Path], sipp: str, tmp_path: Path) -> None:
    server, marks = pbx
    await _call(server, sipp, tmp_path / "uac", "uac_info_digits", "701")  # 5, 9, #
    assert await _marks(marks, 2) == ["collected 2001 701 59", "reached wait with 59"]


async def test_inband_digits_reach_the_flow(pbx: tuple[SipServer, Path], sipp: str, tmp_path: Path) -> None:
    server, marks = pbx
    work = tmp_path / "uac"
    _digits_wav(work)  # 1234 as DTMF tones in the caller's audio; the flow hangs up after the second flow
    await _call(server, sipp, work, "uac_inband_digits", "700")
    assert await _marks(marks, 2) == ["collected 2001 700 1234", "reached hang-up with 1234"]
