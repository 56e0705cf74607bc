"""RFC 3262 (100rel, PRACK) in call control, on the simulated network: the real server, phones of our pure cores.

UAS side: a caller whose INVITE requires 100rel gets every 18x reliably (Require: 100rel, RSeq), one at a time,
re-sent until it PRACKs; the 2xx waits for the PRACK of a 1xx with SDP; no PRACK at all gets a 5xx. UAC side: a
target with ``reliable_provisional="required"`` gets Require: 100rel, and its reliable 1xx are PRACKed once each
with the right RAck, retransmissions and out-of-order RSeqs not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccpbx.media.tones import ToneKind, tone_source
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.calls import Call, DialTarget, Party
from ccpbx.pbx.config import DestinationKind
from ccpbx.pbx.destinations import Finished, Outcome
from ccpbx.pbx.sip.dialog import Dialog
from ccpbx.pbx.sip.message import Request, Response, new_tag
from ccpbx.pbx.sip.uri import SipUri
from tests.pbx.simnet import HOST, SimCall, SimPhone, registered, sdp, sim_pbx, until

USERS = {"1001": "pw-1001-prack", "1002": "pw-1002-prack"}
CONFIG = """
[admin]
enabled = false
[rtp]
port_min = 35600
port_max = 35800
[[dialplan.rule]]
match = "700"
destination = "ivr:app"
"""

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[SipServer]:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        yield server


async def phone(pbx: SipServer, user: str, **kw: bool) -> SimPhone:
    return await registered(pbx, user, USERS[user], **kw)


async def invite(caller: SimPhone, number: str, option: tuple[str, str] = ("Require", "100rel")
                 ) -> tuple[SimCall, asyncio.Queue[Response]]:
    """INVITE ``number`` with ``option`` (Require: 100rel by default), answering the 407; returns the call and
    the queue its responses arrive on (the caller PRACKs by hand)."""
    headers = (("Contact", caller.contact), option)
    dialog = caller._dialog(number)
    first = caller._request(dialog, "INVITE", body=sdp(), headers=headers)
    challenge = await caller.final(caller.send(first))
    assert challenge.status == 407
    dialog = caller._dialog(number, call_id=first.call_id, tag=dialog.local_tag, seq=first.cseq.seq)
    request = caller._request(dialog, "INVITE", body=sdp(), headers=headers)
    request.headers.add("Proxy-Authorization", caller._authorization(challenge, request, "proxy-authorization"))
    call = SimCall(invite=request, dialog=dialog)
    caller.calls[request.call_id] = call
    return call, caller.send(request)


async def next_response(queue: asyncio.Queue[Response], timeout: float = 5.0) -> Response:
    return await asyncio.wait_for(queue.get(), timeout)


async def prack(caller: SimPhone, call: SimCall, response: Response, rseq: int | None = None) -> Response:
    """PRACK ``response`` in its early dialog (RAck from its RSeq unless ``rseq`` is given)."""
    assert call.dialog is not None
    if not call.dialog.remote_tag:
        call.dialog.receive_response(call.invite, response)
    number = int(response.headers.get("rseq") or "0") if rseq is None else rseq
    request = caller._request(call.dialog, "PRACK",
                              headers=(("RAck", f"{number} {call.invite.cseq.seq} INVITE"),))
    return await caller.final(caller.send(request))


def ack(caller: SimPhone, call: SimCall, ok: Response) -> None:
    assert call.dialog is not None
    call.dialog.receive_response(call.invite, ok)
    caller.endpoint.send_stateless(call.dialog.create_ack(call.invite), caller.server)
    caller._pump()


def is_reliable(response: Response) -> bool:
    return "100rel" in response.header_tokens("require") and "rseq" in response.headers


# ---- UAS side: callers that require 100rel ----------------------------------------------------------------------

async def test_a_caller_requiring_100rel_gets_a_reliable_180_pracks_it_and_is_answered(pbx: SipServer) -> None:
    a, b = await phone(pbx, "1001"), await phone(pbx, "1002")
    call, responses = await invite(a, "1002")
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    assert "100rel" not in incoming.invite.header_tokens("require")  # the B2BUA's own leg: "off" by default
    ringing = await next_response(responses)
    while ringing.status == 100:
        ringing = await next_response(responses)
    assert ringing.status == 180 and is_reliable(ringing)
    rseq = int(ringing.headers.get("rseq") or "0")
    assert 1 <= rseq <= 2 ** 31 - 1
    assert "prack" in ringing.header_tokens("allow")
    assert (await prack(a, call, ringing)).status == 200
    b.ring(incoming)  # the callee's 180 is the same 18x: nothing new goes to the caller
    b.answer(incoming)
    ok = await next_response(responses)
    assert ok.status == 200 and ok.body  # the 180 carried no SDP: the answer is in the 2xx
    assert "100rel" in ok.header_tokens("supported")
    ack(a, call, ok)
    await until(lambda: any(leg.state.value == "confirmed" for leg in pbx.calls.legs()))
    assert (await a.hangup(call)).status == 200
    await asyncio.wait_for(incoming.ended.wait(), 5)


async def test_a_prack_with_the_wrong_rack_gets_481_and_the_right_one_200(pbx: SipServer) -> None:
    a, b = await phone(pbx, "1001"), await phone(pbx, "1002")
    call, responses = await invite(a, "1002")
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    ringing = await next_response(responses)
    while ringing.status == 100:
        ringing = await next_response(responses)
    rseq = int(ringing.headers.get("rseq") or "0")
    assert (await prack(a, call, ringing, rseq=rseq + 5)).status == 481
    assert (await prack(a, call, ringing)).status == 200
    assert (await prack(a, call, ringing)).status == 481  # already acknowledged (a new PRACK, not a resend)
    b.refuse(incoming, 486)
    final = await next_response(responses)
    assert final.status == 486


async def test_a_caller_that_never_pracks_gets_the_180_resent_then_a_500(pbx: SipServer) -> None:
    pbx.endpoint.transactions.t1_ms = 20  # 64·T1 = 1.28 s
    a, b = await phone(pbx, "1001"), await phone(pbx, "1002")
    _, responses = await invite(a, "1002")
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    b.ring(incoming)  # (a leg that never sent a 1xx cannot be cancelled, RFC 3261 §9.1)
    seen: list[Response] = []
    while True:
        response = await next_response(responses)
        if response.status >= 200:
            break
        seen.append(response)
    ringing = [r for r in seen if r.status == 180]
    assert len(ringing) >= 4 and all(is_reliable(r) for r in ringing)  # re-sent: 20, 40, 80... ms apart
    assert len({r.headers.get("rseq") for r in ringing}) == 1  # retransmissions of one response
    assert response.status == 500
    await asyncio.wait_for(incoming.ended.wait(), 5)  # the callee's ringing leg was cancelled
    await until(lambda: not pbx.calls.calls)
    for _ in range(50):  # CDRs are written in batches
        rows = await pbx.store.list_cdrs()
        if rows and rows[0].end_reason:
            break
        await asyncio.sleep(0.05)
    assert rows[0].end_reason == "no_prack" and rows[0].hangup_status == 500


async def test_18x_queue_behind_an_unacknowledged_one_and_the_2xx_waits_for_the_prack_of_sdp(
        pbx: SipServer) -> None:
    """Early media (183 with our answer) reliably, a 180 queued behind it until the 183's PRACK (RSeq + 1), then
    the answer, which need not wait for the 180's PRACK (no SDP in it); that late PRACK still gets 200."""
    go = asyncio.Event()
    answered: list[bool] = []

    async def app(call: Call, target: str, number: str) -> Outcome:
        await call.early_media(tone_source(ToneKind.RINGBACK))
        await call.ring()  # queued: the 183 is not PRACKed yet
        await go.wait()
        await call.answer()
        answered.append(True)
        await asyncio.sleep(0.1)
        return Finished()

    pbx.control.register_destination(DestinationKind.IVR, app, replace=True)
    a = await phone(pbx, "1001")
    call, responses = await invite(a, "700")
    progress = await next_response(responses)
    while progress.status == 100:
        progress = await next_response(responses)
    assert progress.status == 183 and is_reliable(progress) and progress.body
    await asyncio.sleep(0.3)
    early = [responses.get_nowait() for _ in range(responses.qsize())]
    assert all(r.status == 183 for r in early)  # re-sent maybe; the 180 waits for the 183's PRACK
    assert (await prack(a, call, progress)).status == 200
    ringing = await next_response(responses)
    while ringing.status == 183:  # a retransmission already on its way
        ringing = await next_response(responses)
    assert ringing.status == 180 and is_reliable(ringing) and not ringing.body
    assert int(ringing.headers.get("rseq") or "0") == int(progress.headers.get("rseq") or "0") + 1
    go.set()
    ok = await next_response(responses)
    while ok.status == 180:
        ok = await next_response(responses)
    assert ok.status == 200 and not ok.body  # RFC 3262 §5: the answer went in the PRACKed 183
    ack(a, call, ok)
    await until(lambda: answered)
    assert (await prack(a, call, ringing)).status == 200  # a late PRACK of the 180 is still answered
    assert (await a.hangup(call)).status == 200


async def test_the_2xx_waits_for_the_prack_of_a_1xx_with_sdp(pbx: SipServer) -> None:
    async def app(call: Call, target: str, number: str) -> Outcome:
        await call.early_media(tone_source(ToneKind.RINGBACK))
        await call.answer()
        await asyncio.sleep(0.1)
        return Finished()

    pbx.control.register_destination(DestinationKind.IVR, app, replace=True)
    a = await phone(pbx, "1001")
    call, responses = await invite(a, "700")
    progress = await next_response(responses)
    while progress.status == 100:
        progress = await next_response(responses)
    assert progress.status == 183 and is_reliable(progress)
    await asyncio.sleep(0.4)
    assert all(responses.get_nowait().status == 183 for _ in range(responses.qsize()))  # no 2xx yet
    assert (await prack(a, call, progress)).status == 200
    ok = await next_response(responses)
    while ok.status == 183:
        ok = await next_response(responses)
    assert ok.status == 200 and not ok.body
    ack(a, call, ok)


async def test_supported_100rel_only_keeps_18x_unreliable(pbx: SipServer) -> None:
    a, b = await phone(pbx, "1001"), await phone(pbx, "1002")
    call, responses = await invite(a, "1002", ("Supported", "100rel"))
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    ringing = await next_response(responses)
    while ringing.status == 100:
        ringing = await next_response(responses)
    assert ringing.status == 180 and not is_reliable(ringing)
    b.answer(incoming)
    ok = await next_response(responses)
    assert ok.status == 200 and ok.body
    ack(a, call, ok)
    assert (await a.hangup(call)).status == 200


# ---- UAC side: our outbound legs --------------------------------------------------------------------------------

def provider(pbx: SipServer) -> SimPhone:
    """A far end that answers by hand (a gateway), on the server's network."""
    return SimPhone(pbx.net, (HOST, pbx.listening[0].port), "4930", "unused")  # type: ignore[attr-defined]


def target(far: SimPhone, reliable_provisional: str) -> DialTarget:
    return DialTarget(uri=SipUri(user="4930", host=HOST, port=far.port), destination=("udp", HOST, far.port),
                      label="gateway", to=Party("4930"), reliable_provisional=reliable_provisional)


def reliable_1xx(far: SimPhone, incoming: SimCall, status: int, rseq: int, *, body: bytes = b"") -> None:
    if incoming.dialog is None:
        incoming.dialog = Dialog.from_uas(incoming.invite, new_tag(), far.contact, early=True)
    far.respond(incoming.invite, status, body=body, to_tag=incoming.dialog.local_tag,
                headers=(("Require", "100rel"), ("RSeq", str(rseq))))


def pracks(incoming: SimCall) -> list[Request]:
    return [r for r in incoming.received if r.method == "PRACK"]


async def test_a_leg_requiring_100rel_pracks_the_reliable_183_with_the_right_rack(pbx: SipServer) -> None:
    far = provider(pbx)
    placing = asyncio.ensure_future(pbx.calls.originate([target(far, "required")], caller=Party("1001"),
                                                        dialled="4930", timeout_ms=5000))
    incoming = await asyncio.wait_for(far.incoming.get(), 5)
    assert "100rel" in incoming.invite.header_tokens("require")
    assert "100rel" in incoming.invite.header_tokens("supported")
    assert "prack" in incoming.invite.header_tokens("allow")
    reliable_1xx(far, incoming, 183, 4711, body=sdp())
    await until(lambda: len(pracks(incoming)) == 1)
    sent = pracks(incoming)[0]
    assert sent.headers.get("rack") == f"4711 {incoming.invite.cseq.seq} INVITE"
    assert incoming.dialog is not None and sent.to.tag == incoming.dialog.local_tag  # in the early dialog
    assert sent.cseq.seq > incoming.invite.cseq.seq and sent.call_id == incoming.invite.call_id
    far.answer(incoming)
    call = await asyncio.wait_for(placing, 5)
    assert call.a.up
    call.hangup()
    await asyncio.wait_for(incoming.ended.wait(), 5)
    await far.close()


async def test_a_duplicate_reliable_1xx_is_pracked_once_and_an_out_of_order_one_not_at_all(
        pbx: SipServer) -> None:
    far = provider(pbx)
    placing = asyncio.ensure_future(pbx.calls.originate([target(far, "supported")], caller=Party("1001"),
                                                        dialled="4930", timeout_ms=5000))
    incoming = await asyncio.wait_for(far.incoming.get(), 5)
    assert "100rel" not in incoming.invite.header_tokens("require")
    assert "100rel" in incoming.invite.header_tokens("supported")
    reliable_1xx(far, incoming, 180, 10)
    reliable_1xx(far, incoming, 180, 10)  # a retransmission (as if our PRACK were slow)
    reliable_1xx(far, incoming, 183, 12, body=sdp())  # out of order: 11 never came
    await until(lambda: len(pracks(incoming)) >= 1)
    await asyncio.sleep(0.2)
    assert [p.headers.get("rack") for p in pracks(incoming)] == [f"10 {incoming.invite.cseq.seq} INVITE"]
    reliable_1xx(far, incoming, 183, 11, body=sdp())
    await until(lambda: len(pracks(incoming)) == 2)
    assert pracks(incoming)[1].headers.get("rack") == f"11 {incoming.invite.cseq.seq} INVITE"
    far.answer(incoming)
    call = await asyncio.wait_for(placing, 5)
    call.hangup()
    await far.close()


async def test_a_reliable_1xx_we_did_not_ask_for_is_pracked_and_off_changes_nothing_else(pbx: SipServer) -> None:
    far = provider(pbx)
    placing = asyncio.ensure_future(pbx.calls.originate([target(far, "off")], caller=Party("1001"),
                                                        dialled="4930", timeout_ms=5000))
    incoming = await asyncio.wait_for(far.incoming.get(), 5)
    assert "100rel" not in incoming.invite.header_tokens("supported")
    assert "require" not in incoming.invite.headers
    reliable_1xx(far, incoming, 180, 1)
    await until(lambda: len(pracks(incoming)) == 1)
    far.answer(incoming)
    call = await asyncio.wait_for(placing, 5)
    call.hangup()
    await far.close()


async def test_a_refused_prack_does_not_end_the_leg(pbx: SipServer) -> None:
    far = provider(pbx)
    refused: list[Request] = []
    answer = far._on_request

    def on_request(request: Request) -> None:
        if request.method == "PRACK":
            refused.append(request)
            far.respond(request, 481)
            return
        answer(request)

    far._on_request = on_request  # type: ignore[method-assign]
    placing = asyncio.ensure_future(pbx.calls.originate([target(far, "required")], caller=Party("1001"),
                                                        dialled="4930", timeout_ms=5000))
    incoming = await asyncio.wait_for(far.incoming.get(), 5)
    reliable_1xx(far, incoming, 183, 77, body=sdp())
    await until(lambda: refused)
    await asyncio.sleep(0.1)
    far.answer(incoming)
    call = await asyncio.wait_for(placing, 5)
    assert call.a.up
    call.hangup()
    await far.close()


def test_reliable_provisional_takes_three_values() -> None:
    with pytest.raises(ValueError):
        DialTarget(uri=SipUri(user="x", host=HOST), destination=("udp", HOST, 5060), label="", to=Party("x"),
                   reliable_provisional="yes")
