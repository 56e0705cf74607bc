"""Call pickup through the real call manager over an in-memory SIP port and media engine: no sockets.

1001 calls 1002, whose phone rings (180); 1003 picks the call up with an INVITE with Replaces (RFC 3891). The
ringing dial must be won by 1003's answered leg, the ringing leg CANCELled with Reason cause=200, 1001 answered
and bridged with 1003, and a 200 from 1002 that races the pickup must get ACK and BYE.
"""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any, cast

from ccpbx.media.transport import MediaServer
from ccpbx.pbx.calls import Call, CallEnded, CallManager, DialOutcome, DialTarget, Party
from ccpbx.pbx.dialplan import DialPlan, DialPlanConfig
from ccpbx.pbx.pickup import Pickup
from ccpbx.pbx.sip.message import Request, Response, make_response, parse_message
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.sip.uri import SipUri

SDP = (b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
RINGING: Destination = ("udp", "127.0.0.1", 5072)


class FakeSip:
    """The SipPort: records what call control sends."""

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.requests: list[Request] = []

    def now(self) -> int:
        return 0

    def respond(self, request: Request, status: int, *, reason: str | None = None, headers: Any = (),
                body: bytes = b"", content_type: str | None = None, to_tag: str | None = None) -> Response:
        response = make_response(request, status, reason, to_tag=to_tag, body=body, content_type=content_type)
        self.responses.append(response)
        return response

    def send_request(self, request: Request, destination: Destination) -> ClientKey:
        self.requests.append(request)
        return ClientKey(request.via.branch or "", request.method)

    def send_stateless(self, message: Request, destination: Destination) -> None:
        self.requests.append(message)

    def local_address(self, destination: Destination) -> tuple[str, int]:
        return "127.0.0.1", 5060

    def sent(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]


class FakeEngine:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.bridges: dict[int, tuple[int, int]] = {}

    def bridge(self, a: int, b: int) -> int:
        bridge_id = next(self.ids)
        self.bridges[bridge_id] = (a, b)
        return bridge_id

    def destroy(self, bridge_id: int) -> None:
        self.bridges.pop(bridge_id, None)

    def play(self, channel: int, source: object) -> int:
        return next(self.ids)

    def relaying(self, channel: int) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # set_codec, set_remote, set_direction, stop_play, send_dtmf...


class FakeMedia:
    def __init__(self) -> None:
        self.engine = FakeEngine()
        self.channels = itertools.count(1)

    async def open_channel(self, codec: object, remote: object, *, near: int | None = None) -> SimpleNamespace:
        channel = next(self.channels)
        return SimpleNamespace(channel=channel, port=40000 + 2 * channel)

    def close_channel(self, channel: int) -> None:
        pass


def _invite(caller: str, dialled: str, call_id: str, *, extra: str = "") -> Request:
    text = (f"INVITE sip:{dialled}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK{call_id}\r\n"
            f"From: <sip:{caller}@127.0.0.1>;tag=f{call_id}\r\nTo: <sip:{dialled}@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 2 INVITE\r\nContact: <sip:{caller}@127.0.0.1:5071>\r\n"
            f"Max-Forwards: 70\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n")
    message = parse_message(text.encode() + SDP)
    assert isinstance(message, Request)
    return message


def _ack(invite: Request, to_tag: str) -> Request:
    text = (f"ACK {invite.uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKack{invite.call_id}\r\n"
            f"From: {invite.headers.get('from')}\r\nTo: {invite.headers.get('to')};tag={to_tag}\r\n"
            f"Call-ID: {invite.call_id}\r\nCSeq: 2 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


async def _until(condition: Any, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def _scenario(race_200: bool, swapped: bool = False) -> None:
    sip = FakeSip()
    outcomes: list[DialOutcome] = []

    async def router(call: Call) -> None:
        await call.ring()
        target = DialTarget(uri=SipUri.parse("sip:1002@127.0.0.1:5072"), destination=RINGING,
                            label="extension:1002", to=Party("1002"), device="1002")
        outcomes.append(await call.dial([target], 10_000, label="extension:1002"))
        while not isinstance(await call.wait_event(), CallEnded):
            pass

    manager = CallManager(sip, cast(MediaServer, FakeMedia()), router)
    pickup = Pickup(manager, DialPlan(DialPlanConfig(rule=())))
    first = _invite("1001", "1002", "c1")
    manager.on_invite(first, ("udp", "127.0.0.1", 5071), ServerKey("z9hG4bKc1", ("127.0.0.1", 5071), "INVITE"),
                      Party("1001"), "1002", local_tag="a1", device="1001")
    await _until(lambda: sip.sent("INVITE"), "the INVITE to 1002")
    ringing_invite = sip.sent("INVITE")[0]
    key = ClientKey(ringing_invite.via.branch or "", "INVITE")
    manager.on_response(make_response(ringing_invite, 180, to_tag="ring"), key)
    caller_call = next(iter(manager.calls.values()))
    assert pickup.ringing({"1002"}, picker="1003") is caller_call.legs[1]

    # 1003's BLF: Replaces names the early dialog as ccpbx sees it (to-tag = ccpbx's own tag)
    our_tag = ringing_invite.from_.tag
    to_tag, from_tag = ("ring", our_tag) if swapped else (our_tag, "ring")  # phones get the order wrong too
    replaces = f"Replaces: {ringing_invite.call_id};to-tag={to_tag};from-tag={from_tag}\r\n"
    picker_invite = _invite("1003", "1002", "c3", extra=replaces)
    pickup.on_invite(picker_invite, ("udp", "127.0.0.1", 5073), ServerKey("z9hG4bKc3", ("127.0.0.1", 5073), "INVITE"),
                     Party("1003"), "1002", local_tag="p3", device="1003")
    await _until(lambda: any(r.status == 200 and r.call_id == "c3" for r in sip.responses), "1003 answered")
    manager.on_request(_ack(picker_invite, "p3"), ("udp", "127.0.0.1", 5073), None)
    if race_200:
        # 1002 answers between the pickup and the dial noticing it: 1002 lost, so it gets ACK and BYE
        for _ in range(100):
            if caller_call.b is not None:
                break
            await asyncio.sleep(0)
        assert caller_call.b is not None and not sip.sent("CANCEL")
        manager.on_response(make_response(ringing_invite, 200, to_tag="ring", body=SDP,
                                          content_type="application/sdp"), key)
        assert [r.call_id for r in sip.sent("BYE")] == [ringing_invite.call_id]
        assert [r.call_id for r in sip.requests if r.method == "ACK"] == [ringing_invite.call_id]
    else:
        await _until(lambda: sip.sent("CANCEL"), "the CANCEL to 1002")
        assert 'cause=200;text="Call completed elsewhere"' in (sip.sent("CANCEL")[0].headers.get("reason") or "")
    await _until(lambda: any(r.status == 200 and r.call_id == "c1" for r in sip.responses), "1001 answered")
    manager.on_request(_ack(first, "a1"), ("udp", "127.0.0.1", 5071), None)
    await _until(lambda: bool(outcomes), "the dial's outcome")
    picker_leg = outcomes[0].answered
    assert picker_leg is not None and picker_leg.device == "1003" and picker_leg.role == "picker"
    assert caller_call.b is picker_leg and caller_call.destination == "extension:1003"
    assert caller_call.bridge_id is not None
    assert cast(FakeMedia, manager.media).engine.bridges[caller_call.bridge_id] == (caller_call.a.channel,
                                                                                  picker_leg.channel)
    assert len(manager.calls) == 1  # the picker's own call gave its leg away and ended
    await manager.stop()


def test_a_replaces_invite_wins_the_ringing_dial() -> None:
    asyncio.run(_scenario(race_200=False))


def test_a_200_racing_the_pickup_gets_ack_and_bye() -> None:
    asyncio.run(_scenario(race_200=True))


def test_a_replaces_with_the_tags_swapped_still_names_the_dialog() -> None:
    asyncio.run(_scenario(race_200=False, swapped=True))
