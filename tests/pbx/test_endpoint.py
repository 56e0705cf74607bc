"""The sans-IO endpoint: received/rport stamping, salvaged 400s, events and outputs."""

from __future__ import annotations

import pytest

from ccpbx.pbx.sip.endpoint import MalformedMessageReceived, SipEndpoint, salvage_error_response, stamp_received
from ccpbx.pbx.sip.message import Request, Response, parse_message
from ccpbx.pbx.sip.transaction import RequestReceived

OPTIONS = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKe1;rport\r\n"
           b"From: <sip:a@h>;tag=1\r\nTo: <sip:pbx>\r\nCall-ID: e1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def test_rport_and_received_are_stamped() -> None:
    request = parse_message(OPTIONS)
    assert isinstance(request, Request)
    stamp_received(request, ("udp", "203.0.113.9", 61000))
    assert request.via.received == "203.0.113.9" and request.via.rport == 61000
    assert request.via.response_address(None) == ("203.0.113.9", 61000)


def test_the_stamped_via_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack reads the top Via of every request several times after stamping it: it stays parsed, and the
    header text is what it serialises to (what goes back in the response)."""
    from ccpbx.pbx.sip.headers import Via

    request = parse_message(OPTIONS.replace(b"branch=z9hG4bKe1", b"branch=z9hG4bKstamped-once"))
    assert isinstance(request, Request)
    request.via  # noqa: B018  (the received Via, parsed once)
    parsed: list[str] = []
    real = Via.parse.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Via, "parse", classmethod(lambda cls, text: parsed.append(text) or real(cls, text)))
    stamp_received(request, ("udp", "203.0.113.9", 61000))
    assert request.via.received == "203.0.113.9" and request.via.rport == 61000 and request.vias[0] is request.via
    assert parsed == []
    assert request.headers.get("via") == str(request.via) and len(request.vias) == 1
    assert Via.parse(request.headers.get("via") or "") == request.via


def test_received_without_rport_only_when_the_host_differs() -> None:
    raw = OPTIONS.replace(b";rport", b"")
    request = parse_message(raw)
    assert isinstance(request, Request)
    stamp_received(request, ("udp", "10.0.0.1", 5060))
    assert request.via.received is None
    stamp_received(request, ("udp", "203.0.113.9", 5060))
    assert request.via.received == "203.0.113.9" and request.via.rport is None


def test_request_becomes_an_event_and_the_answer_goes_back_to_the_nat_address() -> None:
    endpoint = SipEndpoint()
    endpoint.receive_datagram(OPTIONS, ("udp", "203.0.113.9", 61000), 0)
    (event,) = endpoint.events()
    assert isinstance(event, RequestReceived)
    endpoint.respond(event.request, 200, 5, to_tag="t1")
    ((data, destination),) = endpoint.outgoing()
    assert destination == ("udp", "203.0.113.9", 61000)
    response = parse_message(data)
    assert isinstance(response, Response) and response.status == 200 and response.to.tag == "t1"
    assert response.headers.get("server") == "ccpbx"


def test_an_ack_is_taken_as_it_came_and_an_invite_stamped() -> None:
    # An ACK gets no response, so its Via routes nothing back: it is passed on unstamped (one rewrite of the
    # top Via less on every call); any other request gets received/rport for its responses.
    endpoint = SipEndpoint()
    for method in ("ACK", "INVITE"):
        data = OPTIONS.replace(b"OPTIONS", method.encode())
        endpoint.receive_datagram(data, ("udp", "203.0.113.9", 61000), 0)
        events = [e for e in endpoint.events() if isinstance(e, RequestReceived)]
        assert len(events) == 1 and events[0].request.method == method
        via = events[0].request.via
        if method == "ACK":
            assert via.received is None and via.rport is None and via.wants_rport
        else:
            assert via.received == "203.0.113.9" and via.rport == 61000


def test_unparseable_request_gets_a_salvaged_400() -> None:
    endpoint = SipEndpoint()
    bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")
    endpoint.receive_datagram(bad, ("udp", "10.0.0.1", 5060), 0)
    ((data, destination),) = endpoint.outgoing()
    (event,) = endpoint.events()
    assert isinstance(event, MalformedMessageReceived) and event.answered
    assert data.startswith(b"SIP/2.0 400 bad CSeq")  # the reason says what was wrong
    assert b"\r\nCall-ID: e1\r\n" in data and b"branch=z9hG4bKe1" in data  # the lines a UAC matches on
    assert destination == ("udp", "10.0.0.1", 5060)


def test_no_answer_to_garbage_responses_or_ack() -> None:
    assert salvage_error_response(b"\x00\x01garbage", 400, "x", "s") is None
    assert salvage_error_response(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n", 400, "x", "s") is None
    assert salvage_error_response(b"ACK sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", 400, "x", "s") is None
    assert salvage_error_response(b"OPTIONS sip:h SIP/2.0\r\nFrom: x\r\n\r\n", 400, "x", "s") is None
    endpoint = SipEndpoint()
    endpoint.receive_datagram(b"\r\n\r\n", ("udp", "10.0.0.1", 5060), 0)  # a UDP keep-alive
    assert endpoint.outgoing() == [] and endpoint.events() == []


def test_version_error_is_505() -> None:
    endpoint = SipEndpoint()
    endpoint.receive_datagram(OPTIONS.replace(b"sip:pbx SIP/2.0", b"sip:pbx SIP/3.0"), ("udp", "10.0.0.1", 5060), 0)
    ((data, _),) = endpoint.outgoing()
    assert data.startswith(b"SIP/2.0 505 ")
