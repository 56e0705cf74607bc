"""The ACD against SIPp phones over loopback: callers into a queue, SIPp agents that answer, hang up or never
answer, an agent that is not registered, an abandon and a callback; the queue log must say exactly that.

The server runs in this test's event loop (the same ``SipServer`` ``ccpbx serve`` runs) so the test can read
the ACD's state and the store while SIPp processes play the phones.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ccpbx.acd.stats import AgentState
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.store import QueueLogRow
from tests.interop.server import in_process, udp_port
from tests.interop.sipp import SCENARIOS, free_media_port, free_port, run_sipp

USERS = {e: f"secret-{e}-pw" for e in ("2001", "2002", "2003", "2010")}
NOISE = {"login", "device-available", "device-unavailable"}

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[SipServer]:
    config = ('[rtp]\nport_min = 30800\nport_max = 31000\n'
              '[[queue]]\nname = "support"\nnumber = "500"\nmembers = ["2001", "2002", "2003"]\n'
              'strategy = "linear"\nring_timeout = 2\nwrap_up = 1\nannounce_position = false\ncallback_key = "5"\n'
              '[[agent]]\nextension = "2001"\nauto_pause_after = 1\n')
    async with in_process(tmp_path, config, USERS) as server:
        yield server


_port = udp_port


class Phones:
    """SIPp processes started by a test, each registered as an extension; all stopped at the end."""

    def __init__(self, server: SipServer, sipp: str, work: Path) -> None:
        self.server, self.sipp, self.work = server, sipp, work
        self.procs: list[subprocess.Popen[str]] = []

    async def uas(self, user: str, scenario: str) -> subprocess.Popen[str]:
        """A SIPp UAS on a free port, registered as ``user`` (the REGISTER runs in a thread)."""
        work = self.work / f"{user}-{scenario}"
        work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        proc = subprocess.Popen([self.sipp, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1",
                                 "-p", str(port), "-m", "1", "-timeout", "60s", "-timeout_error", "-nostdin",
                                 "-mp", str(free_media_port())],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
        self.procs.append(proc)
        reg = await asyncio.to_thread(run_sipp, self.sipp, "reg_contact", "127.0.0.1", _port(self.server),
                                      work / "reg", [[user, USERS[user], "300", str(port)]])
        assert reg.returncode == 0, reg.explain()
        return proc

    def uac(self, user: str, scenario: str, extra: list[str]) -> asyncio.Future[object]:
        return asyncio.ensure_future(asyncio.to_thread(
            run_sipp, self.sipp, scenario, "127.0.0.1", _port(self.server), self.work / f"uac-{scenario}",
            [[user, USERS[user]]], extra=["-s", "500", *extra], timeout_s=60))

    async def finish(self, proc: subprocess.Popen[str]) -> tuple[int, str]:
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        return proc.returncode, (proc.stdout.read() if proc.stdout is not None else "")[-3000:]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def phones(pbx: SipServer, sipp: str, tmp_path: Path) -> Iterator[Phones]:
    p = Phones(pbx, sipp, tmp_path)
    yield p
    p.close()


async def _rows(server: SipServer, until_event: str, timeout: float = 20.0) -> list[QueueLogRow]:
    for _ in range(int(timeout / 0.05)):
        rows = await server.store.list_queue_log()
        if any(r.event == until_event for r in rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {until_event} in {[r.event for r in await server.store.list_queue_log()]}")


async def test_agents_that_never_answer_are_skipped_and_paused_unregistered_never_rung(
        pbx: SipServer, phones: Phones) -> None:
    lazy = await phones.uas("2001", "uas_ring_cancel")  # rings, never answers: CANCEL after 2 s
    worker = await phones.uas("2002", "uas_callee_bye")  # answers, hangs up after 1 s
    # 2003 never registers
    caller = phones.uac("2010", "uac_callee_bye", [])  # waits for the far end's BYE
    rows = await _rows(pbx, "complete-agent")
    result = await caller
    assert result.returncode == 0, result.explain()  # type: ignore[attr-defined]
    assert (await phones.finish(lazy))[0] == 0 and (await phones.finish(worker))[0] == 0
    story = [(r.event, r.agent) for r in rows if r.event not in NOISE]
    assert story == [("enter", None), ("offer", "2001"), ("ring-no-answer", "2001"), ("pause", "2001"),
                     ("offer", "2002"), ("connect", "2002"), ("complete-agent", "2002")]
    assert not any(r.agent == "2003" and r.event == "offer" for r in rows)
    assert ("device-unavailable", "2003") in [(r.event, r.agent) for r in rows]
    pause = next(r for r in rows if r.event == "pause")
    assert pause.reason == "missed-offers"
    assert pbx.queues.engine.agent_state("2001") is AgentState.PAUSED
    connect = next(r for r in rows if r.event == "connect")
    assert connect.wait_ms is not None and connect.wait_ms >= 2000  # the first agent rang 2 s
    done = next(r for r in rows if r.event == "complete-agent")
    assert done.talk_ms is not None and 800 <= done.talk_ms <= 5000


async def test_a_caller_who_hangs_up_is_an_abandon_with_position_and_wait(pbx: SipServer, phones: Phones) -> None:
    result = await phones.uac("2010", "uac_call", ["-d", "1500"])  # answered by the queue, BYE after 1.5 s
    assert result.returncode == 0, result.explain()  # type: ignore[attr-defined]
    rows = await _rows(pbx, "abandon")
    story = [(r.event, r.position) for r in rows if r.event not in NOISE]
    assert story == [("enter", 1), ("abandon", 1)]
    abandon = rows[-1]
    assert abandon.wait_ms is not None and 1400 <= abandon.wait_ms <= 5000


async def test_a_callback_request_keeps_the_place_and_is_honoured(pbx: SipServer, phones: Phones) -> None:
    caller = phones.uac("2010", "uac_callback_key", [])  # presses 5, is thanked and hung up on
    result = await caller
    assert result.returncode == 0, result.explain()  # type: ignore[attr-defined]
    await _rows(pbx, "callback-requested")
    assert pbx.queues.engine.waiting_contacts("support")  # the place is kept
    customer = await phones.uas("2010", "uas_callee_bye")  # the customer's phone: answers, hangs up after 1 s
    agent = await phones.uas("2002", "uas_answer")  # the agent comes up: offered the callback first
    rows = await _rows(pbx, "complete-caller")
    assert (await phones.finish(customer))[0] == 0 and (await phones.finish(agent))[0] == 0
    story = [(r.event, r.agent) for r in rows if r.event not in NOISE]
    assert story == [("enter", None), ("callback-requested", None), ("offer", "2002"),
                     ("callback-attempted", "2002"), ("callback-completed", "2002"), ("connect", "2002"),
                     ("complete-caller", "2002")]
