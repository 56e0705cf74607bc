"""Every info line of a call names it (``call``: ours, ``call_id``: the caller's SIP Call-ID), whichever side ends
it: a BYE is handled outside the call's own task, whose context names the call for the lines logged there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from tests.pbx.simnet import answered_call, registered, sdp, sim_pbx, until

USERS = {"1001": "pw-1001-logline", "1002": "pw-1002-logline"}
CALL_LINES = ("call.started", "route.resolved", "call.leg.calling", "call.leg.answered", "call.media.bridged",
              "call.ended")
pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("media", ["in-process", "worker"])
@pytest.mark.parametrize("ender", ["caller", "callee"])
async def test_each_line_of_a_call_names_the_call(tmp_path: Path, ender: str, media: str) -> None:
    workers = "[rtp]\nworkers = 1\n" if media == "worker" else ""  # a worker's report brings the bridge's line
    async with sim_pbx(tmp_path, "[admin]\nenabled = false\n" + workers, USERS) as pbx:
        a, b = await registered(pbx, "1001", USERS["1001"]), await registered(pbx, "1002", USERS["1002"])
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            call = await a.call("1002", body=sdp(), wait_answer=False)
            incoming = await asyncio.wait_for(b.incoming.get(), 5)
            b.answer(incoming, sdp())
            await asyncio.wait_for(call.answered.wait(), 5)
            (ours,) = pbx.calls.calls.values()
            ids = (ours.id, ours.a.sip_call_id)
            await until(lambda: any(e["event"] == "call.media.bridged" for e in logs), timeout=5)
            await (a.hangup(call) if ender == "caller" else b.hangup(incoming))
            await until(lambda: not pbx.calls.calls, timeout=5)
        lines = [e for e in logs if e["event"] in CALL_LINES]
        assert sorted({e["event"] for e in lines}) == sorted(CALL_LINES)
        assert [(e["event"], e.get("call"), e.get("call_id")) for e in lines] == \
            [(e["event"], *ids) for e in lines]


async def test_the_bridge_line_from_a_media_workers_report_is_dropped_when_the_call_ended_meanwhile(
        tmp_path: Path) -> None:
    """With media workers the bridge's line waits for the worker's report of its relay decision; a call hung up
    before it came logs no ``call.media.bridged`` after its ``call.ended`` (its relay is gone by then)."""
    async with sim_pbx(tmp_path, "[admin]\nenabled = false\n", USERS) as pbx:
        a, call, ours = await answered_call(pbx, USERS)
        with capture_logs() as logs:
            ours._log_bridged(ours.a, ours.b, True)  # the control: a call still up gets its line
            await a.hangup(call)
            await until(lambda: not pbx.calls.calls, timeout=5)
            ours._log_bridged(ours.a, ours.b, True)  # the report of a worker that was slower than the hang-up
        lines = [e for e in logs if e["event"] in ("call.media.bridged", "call.ended")]
        assert [e["event"] for e in lines] == ["call.media.bridged", "call.ended"]
        assert (lines[0]["call"], lines[0]["call_id"], lines[0]["relay"]) == (ours.id, ours.a.sip_call_id, True)
