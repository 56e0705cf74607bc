"""The server's 100 Trying (RFC 3261 §17.2.1): sent when the server has answered the caller nothing within
200 ms (a route rings the caller at once, with our 180), not sent when it has; a challenge of an INVITE still
comes after one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ccpbx.pbx.app import SipServer
from ccpbx.pbx.calls import Call
from tests.pbx.simnet import HOST, registered, sdp, sim_pbx

USERS = {"1001": "pw-1001-trying", "1002": "pw-1002-trying"}
CONFIG = "[admin]\nenabled = false\n"
pytestmark = pytest.mark.timeout(30)


def slow_routing(pbx: SipServer) -> None:
    """Every call's route starts half a second late (a slow dial plan lookup, a busy store)."""
    route = pbx.calls.router

    async def slow_route(call: Call) -> None:
        await asyncio.sleep(0.5)
        await route(call)

    pbx.calls.router = slow_route


async def test_a_callee_that_answers_at_once_spares_the_caller_the_100(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as pbx:
        a = await registered(pbx, "1001", USERS["1001"])
        await registered(pbx, "1002", USERS["1002"], auto_answer=True)
        call = await a.call("1002", body=sdp())
        assert call.final is not None and call.final.status == 200
        assert 100 not in call.provisional  # the 200 (or the 180 before it) came well within 200 ms
        await a.hangup(call)


async def test_a_call_routed_slowly_gets_the_caller_a_100_then_the_ring(tmp_path: Path) -> None:
    # our own 180 goes as soon as a route starts ringing; a route that takes longer than 200 ms to get there (a
    # slow dial plan lookup, a busy store) leaves the caller with the transaction's 100 meanwhile
    async with sim_pbx(tmp_path, CONFIG, USERS) as pbx:
        a = await registered(pbx, "1001", USERS["1001"])
        await registered(pbx, "1002", USERS["1002"], auto_answer=True)
        slow_routing(pbx)
        call = await a.call("1002", body=sdp(), wait_answer=False)
        await asyncio.sleep(0.35)  # past the 200 ms, before the route goes on
        assert call.provisional == [100]
        await asyncio.wait_for(call.answered.wait(), 5)
        assert call.provisional[0] == 100 and call.provisional.count(100) == 1
        await a.hangup(call)


async def test_the_challenge_of_an_invite_follows_a_100(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as pbx:
        a = await registered(pbx, "1001", USERS["1001"])
        dialog = a._dialog("1002")
        invite = a._request(dialog, "INVITE", body=sdp(), headers=(("Contact", a.contact),))
        queue = a.send(invite)
        first = await asyncio.wait_for(queue.get(), 5)
        second = await asyncio.wait_for(queue.get(), 5)
        assert (first.status, second.status) == (100, 407)


async def test_an_invite_that_waited_on_its_way_gets_its_100_at_once(tmp_path: Path) -> None:
    # a datagram a SIP worker read 100 ms before the server takes it in: the server is behind, and the caller,
    # who has waited already, hears the 100 as its INVITE is read rather than 200 ms later
    async with sim_pbx(tmp_path, CONFIG, USERS) as pbx:
        a = await registered(pbx, "1001", USERS["1001"])
        await registered(pbx, "1002", USERS["1002"], auto_answer=True)
        slow_routing(pbx)
        port = pbx.listening[0].port
        pbx.net.attach(HOST, port, lambda data, source: pbx._on_datagram(  # type: ignore[attr-defined]
            data, source, pbx._now() - 100 if data.startswith(b"INVITE") else None))
        call = await a.call("1002", body=sdp(), wait_answer=False)
        await asyncio.sleep(0.1)  # well within the 200 ms an INVITE taken in on time would wait for its 100
        assert call.provisional == [100]
        await asyncio.wait_for(call.answered.wait(), 5)
        await a.hangup(call)
