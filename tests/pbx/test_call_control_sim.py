"""Call control in-process: the real SipServer on an in-memory network, phones made of our pure SIP cores.

Fast (no SIP sockets, no third-party process) and deterministic enough to cover what interop tests cover with
SIPp and baresip, plus the paths applications drive: transfers to any destination kind, originate, the digit
stream, call_out/bridge. The interop tests prove the same behaviour against real clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ccpbx.pbx.app import SipServer
from ccpbx.pbx.calls import Call, CallHangup, DialTarget, Party
from ccpbx.pbx.config import DestinationKind, parse_config
from ccpbx.pbx.destinations import Connected, Finished, Outcome
from ccpbx.pbx.sip.auth import DigestAuthenticator, ha1
from ccpbx.pbx.sip.uri import SipUri
from ccpbx.pbx.store import Store
from tests.pbx.simnet import HOST, InMemoryNetwork, InMemoryTransports, SimPhone, sdp

USERS = {"1001": "pw-1001-sim", "1002": "pw-1002-sim", "1003": "pw-1003-sim"}

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def net() -> InMemoryNetwork:
    return InMemoryNetwork()


@asynccontextmanager
async def sim_server(tmp_path: Path, net: InMemoryNetwork, rtp_min: int) -> AsyncIterator[SipServer]:
    """The real server with its SIP transports on ``net``; extensions USERS, 700 routed to ``ivr:app``."""
    config = parse_config(f'[server]\ndata_dir = "{tmp_path}"\n[admin]\nenabled = false\n'
                          f'[rtp]\nport_min = {rtp_min}\nport_max = {rtp_min + 400}\nworkers = 0\n'
                          '[[dialplan.rule]]\nmatch = "700"\ndestination = "ivr:app"\n')
    store = await Store.open(tmp_path / "ccpbx.sqlite3")
    await store.add_extensions([(u, p, "") for u, p in USERS.items()], config.sip.realm)
    server = SipServer(config.with_overrides(sip_workers=0), store)  # SIP workers: test_sip_workers.py
    server.transports = InMemoryTransports(net, server._on_datagram)  # type: ignore[assignment]
    await server.start(HOST, 0)
    try:
        yield server
    finally:
        await server.stop()
        await store.close()


@pytest.fixture
async def pbx(tmp_path: Path, net: InMemoryNetwork) -> AsyncIterator[SipServer]:
    async with sim_server(tmp_path, net, 31000) as server:
        yield server


async def phone(net: InMemoryNetwork, pbx: SipServer, user: str, **kw: bool) -> SimPhone:
    p = SimPhone(net, (HOST, pbx.listening[0].port), user, USERS[user], **kw)
    assert (await p.register()).status == 200
    return p


async def until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_call_rings_is_answered_and_a_bye_ends_both_legs(net: InMemoryNetwork, pbx: SipServer) -> None:
    a, b = await phone(net, pbx, "1001"), await phone(net, pbx, "1002")
    call = await a.call("1002", wait_answer=False)
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    assert incoming.invite.call_id != call.invite.call_id  # a B2BUA: each leg its own dialog
    b.ring(incoming)
    await until(lambda: 180 in call.provisional)
    b.answer(incoming)
    await asyncio.wait_for(call.answered.wait(), 5)
    assert (await a.hangup(call)).status == 200
    await asyncio.wait_for(incoming.ended.wait(), 5)
    assert [r.method for r in incoming.received][-1] == "BYE"
    await until(lambda: not pbx.calls.calls)


async def test_busy_callee_gives_the_caller_486(net: InMemoryNetwork, pbx: SipServer) -> None:
    a, b = await phone(net, pbx, "1001"), await phone(net, pbx, "1002")
    call = await a.call("1002", wait_answer=False)
    b.refuse(await asyncio.wait_for(b.incoming.get(), 5), 486)
    await asyncio.wait_for(call.ended.wait(), 5)
    assert call.final is not None and call.final.status == 486


async def test_cancel_reaches_the_ringing_callee(net: InMemoryNetwork, pbx: SipServer) -> None:
    a, b = await phone(net, pbx, "1001"), await phone(net, pbx, "1002")
    call = await a.call("1002", wait_answer=False)
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    b.ring(incoming)
    await until(lambda: 180 in call.provisional)
    a.cancel(call)
    await asyncio.wait_for(call.ended.wait(), 5)
    assert call.final is not None and call.final.status == 487
    await asyncio.wait_for(incoming.ended.wait(), 5)
    assert any(r.method == "CANCEL" for r in incoming.received)


async def test_blind_transfer_to_an_application_destination(net: InMemoryNetwork, pbx: SipServer) -> None:
    """REFER to a number routed to an ivr: destination: the transferee is handed over at once, the transferor
    gets NOTIFY 200 and BYE, and the application serves the transferee (here: reads its INFO digits)."""
    served: list[str] = []

    async def app(call: Call, target: str, number: str) -> Outcome:
        digit = await call.next_digit(timeout=5)
        served.append(f"{call.caller.number}:{digit}")
        return Finished()

    pbx.control.register_destination(DestinationKind.IVR, app, replace=True)
    a, b = await phone(net, pbx, "1001"), await phone(net, pbx, "1002", auto_answer=True)
    call = await a.call("1002")
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    refer = await b.in_dialog(incoming, "REFER", headers=(("Refer-To", f"<sip:700@{HOST}>"),
                                                            ("Referred-By", b.contact)))
    assert refer.status == 202
    await asyncio.wait_for(incoming.ended.wait(), 5)  # the transferor got BYE
    notifies = [r for r in incoming.received if r.method == "NOTIFY"]
    assert b"SIP/2.0 200" in notifies[-1].body
    info = await a.in_dialog(call, "INFO", body=b"Signal=7\r\nDuration=160\r\n", content_type="application/dtmf-relay")
    assert info.status == 200
    await asyncio.wait_for(call.ended.wait(), 5)  # Finished: the application hung the transferee up
    assert served == ["1001:7"]


async def test_originate_call_out_bridge_and_end_when(net: InMemoryNetwork, pbx: SipServer) -> None:
    b = await phone(net, pbx, "1002", auto_answer=True)
    c = await phone(net, pbx, "1003", auto_answer=True)
    call = await pbx.control.originate("extension:1002", caller=Party("queue"), timeout_s=5)
    leg = await call.call_out("extension:1003", timeout_s=5)
    call.bridge(call.a, leg)
    call.end_when(call.a)
    c_call = next(iter(c.calls.values()))
    await c.hangup(c_call)  # the second party leaves: the call goes on
    await asyncio.sleep(0.1)
    assert not call.finished and call.a.up
    b_call = next(iter(b.calls.values()))
    await b.hangup(b_call)
    await until(lambda: call.finished)


async def test_a_caller_hanging_up_cancels_the_applications_await(net: InMemoryNetwork, pbx: SipServer) -> None:
    outcome: list[str] = []

    async def app(call: Call, target: str, number: str) -> Outcome:
        await call.answer()
        try:
            await call.next_digit(timeout=10)
            outcome.append("digit")
        except CallHangup:
            outcome.append("hangup")
            raise
        return Connected()

    pbx.control.register_destination(DestinationKind.IVR, app, replace=True)
    a = await phone(net, pbx, "1001")
    call = await a.call("700")
    await a.hangup(call)
    await until(lambda: outcome == ["hangup"])
    await until(lambda: not pbx.calls.calls)


async def test_hold_by_reinvite_is_answered_and_resume_restores(net: InMemoryNetwork, pbx: SipServer) -> None:
    a, _ = await phone(net, pbx, "1001"), await phone(net, pbx, "1002", auto_answer=True)
    call = await a.call("1002")
    held = await a.in_dialog(call, "INVITE", body=sdp(direction="sendonly"),
                             headers=(("Contact", a.contact),))
    assert held.status == 200 and b"a=recvonly" in held.body
    live = next(iter(pbx.calls.calls.values()))
    assert live.a.held_by_remote
    resumed = await a.in_dialog(call, "INVITE", body=sdp(), headers=(("Contact", a.contact),))
    assert resumed.status == 200 and b"a=sendrecv" in resumed.body and not live.a.held_by_remote
    await a.hangup(call)


@pytest.mark.timeout(90)
async def test_signalling_survives_a_lossy_network(tmp_path: Path) -> None:
    """10% of datagrams dropped both ways: retransmissions (RFC 3261 §17) still get a call up and down."""
    net = InMemoryNetwork(loss=0.1, seed=7)
    async with sim_server(tmp_path, net, 31400) as server:
        a = SimPhone(net, (HOST, server.listening[0].port), "1001", USERS["1001"])
        b = SimPhone(net, (HOST, server.listening[0].port), "1002", USERS["1002"], auto_answer=True)
        assert (await a.register(timeout=20)).status == 200 and (await b.register(timeout=20)).status == 200
        call = await a.call("1002", timeout=20)
        assert call.final is not None and call.final.status == 200
        assert (await a.hangup(call, timeout=20)).status == 200
        assert net.dropped > 0


async def test_message_is_relayed_to_every_phone_of_the_extension(net: InMemoryNetwork, pbx: SipServer) -> None:
    a = await phone(net, pbx, "1001")
    b1, b2 = await phone(net, pbx, "1002"), SimPhone(net, (HOST, pbx.listening[0].port), "1002", USERS["1002"])
    assert (await b2.register()).status == 200  # a second phone of the same extension
    response = await a.message("1002", "lunch at noon?")
    assert response.status == 200
    for b in (b1, b2):
        got = [r for r in b.requests if r.method == "MESSAGE"]
        assert [r.body for r in got] == [b"lunch at noon?"]
        assert got[0].from_.uri.user == "1001"  # type: ignore[union-attr]
        assert got[0].call_id not in {r.call_id for r in a.requests}  # a new request of ours, not a forward
    assert (await a.message("1003", "anyone?")).status == 480  # an extension with no phone registered
    assert (await a.message("9999", "hello?")).status == 404


async def test_a_message_too_large_for_udp_is_refused_with_513(net: InMemoryNetwork, pbx: SipServer) -> None:
    a, b = await phone(net, pbx, "1001"), await phone(net, pbx, "1002")
    assert (await a.message("1002", "x" * 2000)).status == 513
    assert not [r for r in b.requests if r.method == "MESSAGE"]


async def test_a_bye_challenged_by_the_far_end_is_resent_once_with_credentials(
        net: InMemoryNetwork, pbx: SipServer) -> None:
    """Some providers challenge BYE (RFC 3261 §22.2 in a dialog): the leg's credentials answer it, once."""
    provider = SimPhone(net, (HOST, pbx.listening[0].port), "4930", "unused", auto_answer=True)
    provider.challenger = DigestAuthenticator("provider.example", algorithms=("MD5",))
    provider.challenge_secrets = {"MD5": ha1("MD5", "trunkuser", "provider.example", "trunk-secret")}
    for password, ended in (("trunk-secret", True), ("wrong", False)):
        target = DialTarget(uri=SipUri(user="4930", host=HOST, port=provider.port),
                            destination=("udp", HOST, provider.port), label="trunk:provider", to=Party("4930"),
                            credentials=("trunkuser", password))
        call = await pbx.calls.originate([target], caller=Party("1001"), dialled="4930", timeout_ms=5000)
        far = next(c for c in provider.calls.values() if c.invite.call_id == call.a.sip_call_id)
        call.hangup()
        await asyncio.sleep(0.3)
        byes = [r for r in far.received if r.method == "BYE"]
        assert len(byes) == 2  # challenged, then resent with credentials (and not a third time)
        assert "proxy-authorization" in byes[1].headers
        assert far.ended.is_set() is ended
