"""SIP dialogs (RFC 3261 §12), Replaces (RFC 3891), Refer-To (RFC 3515) and sipfrag, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.sip.dialog import (
    SIPFRAG_CONTENT_TYPE,
    Dialog,
    DialogError,
    DialogId,
    DialogState,
    ReplacesTarget,
    dialog_id_of_request,
    dialog_id_of_response,
    parse_refer_to,
    parse_replaces,
    parse_sipfrag,
    refer_to_header,
    replaces_header,
    replaces_target,
    sipfrag,
    uas_dialog_id,
    uri_destination,
)
from ccpbx.pbx.sip.errors import SipError, SipLocalError, SipParseError
from ccpbx.pbx.sip.message import Request, Response, parse_message
from ccpbx.pbx.sip.uri import NameAddr, SipUri

SDP = b"v=0\r\no=alice 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
BOB_CONTACT = "<sip:bob@192.0.2.4:5062>"
ALICE_CONTACT_URI = "sip:alice@10.0.0.1:5070;transport=tcp"

# Alice's INVITE as Bob receives it after two proxies: p2 (loose, ;lr) nearest Bob, then p1 (a strict router).
INVITE_TEXT = (
    "INVITE sip:bob@192.0.2.4:5062 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2hop\r\n"
    "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1hop\r\n"
    "Via: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bKalice1;rport\r\n"
    "Record-Route: <sip:p2.example.com;lr>\r\n"
    "Record-Route: <sip:p1.example.com>\r\n"
    "Max-Forwards: 68\r\n"
    'From: "Alice" <sip:alice@example.com>;tag=a-tag\r\n'
    "To: Bob <sip:bob@example.com>\r\n"
    "Call-ID: 3848276298220188511@10.0.0.1\r\n"
    "CSeq: 101 INVITE\r\n"
    f"Contact: <{ALICE_CONTACT_URI}>\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n"
    "\r\n"
).encode() + SDP


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def parse_response(data: bytes) -> Response:
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


def wire(message: Request | Response) -> Request | Response:
    """What the peer receives: serialised and parsed again."""
    return parse_message(message.serialize())


def invite() -> Request:
    return parse_request(INVITE_TEXT)


def bob_dialog(*, early: bool = False) -> Dialog:
    return Dialog.from_uas(invite(), "b-tag", BOB_CONTACT, early=early, local_seq=500)


def ok_text(status: int = 200, reason: str = "OK", to_tag: str | None = "b-tag", contact: str | None = BOB_CONTACT,
            extra: tuple[str, ...] = ()) -> bytes:
    lines = [
        f"SIP/2.0 {status} {reason}",
        "Via: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bKalice1;rport=5070;received=10.0.0.1",
        "Record-Route: <sip:p2.example.com;lr>",
        "Record-Route: <sip:p1.example.com>",
        'From: "Alice" <sip:alice@example.com>;tag=a-tag',
        "To: Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: 3848276298220188511@10.0.0.1",
        "CSeq: 101 INVITE",
        *([f"Contact: {contact}"] if contact else []),
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def alice_dialog() -> Dialog:
    return Dialog.from_uac(invite(), parse_response(ok_text()), f"<{ALICE_CONTACT_URI}>")


def send(dialog: Dialog, method: str, **kwargs: object) -> Request:
    return dialog.create_request(method, via_host="10.0.0.9", via_port=5060, transport="udp", **kwargs)  # type: ignore[arg-type]


# ---- creation ---------------------------------------------------------------------------------------------------


def test_uas_dialog_from_invite() -> None:
    d = bob_dialog()
    assert d.id == DialogId("3848276298220188511@10.0.0.1", "b-tag", "a-tag")
    assert d.id == uas_dialog_id(invite(), "b-tag")
    assert [str(r.uri) for r in d.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com"]  # as received
    assert str(d.remote_target) == ALICE_CONTACT_URI
    assert d.remote_seq == 101
    assert d.local_seq == 500
    assert str(d.local_uri) == '"Bob" <sip:bob@example.com>' and d.local_uri.tag is None
    assert str(d.remote_uri) == '"Alice" <sip:alice@example.com>' and d.remote_uri.tag is None
    assert d.state is DialogState.CONFIRMED and not d.secure
    assert bob_dialog(early=True).state is DialogState.EARLY


def test_uas_random_local_seq_is_small_and_positive() -> None:
    seqs = {Dialog.from_uas(invite(), "t", BOB_CONTACT).local_seq for _ in range(20)}
    assert all(1 <= s <= 2**15 for s in seqs)
    assert len(seqs) > 1


def test_uas_needs_a_contact() -> None:
    no_contact = INVITE_TEXT.replace(f"Contact: <{ALICE_CONTACT_URI}>\r\n".encode(), b"")
    with pytest.raises(DialogError) as info:
        Dialog.from_uas(parse_request(no_contact), "b-tag", BOB_CONTACT)
    assert info.value.status_hint == 400


def test_uac_dialog_from_2xx_reverses_record_route() -> None:
    d = alice_dialog()
    assert d.id == DialogId("3848276298220188511@10.0.0.1", "a-tag", "b-tag")
    assert d.id == dialog_id_of_response(parse_response(ok_text()))
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example.com", "sip:p2.example.com;lr"]
    assert str(d.remote_target) == "sip:bob@192.0.2.4:5062"
    assert d.remote_seq is None and d.local_seq == 101
    assert d.state is DialogState.CONFIRMED


def test_uac_early_dialog_from_1xx_with_tag_only() -> None:
    d = Dialog.from_uac(invite(), parse_response(ok_text(180, "Ringing")), "<sip:alice@10.0.0.1>")
    assert d.state is DialogState.EARLY
    with pytest.raises(SipLocalError):
        Dialog.from_uac(invite(), parse_response(ok_text(180, "Ringing", to_tag=None)), "<sip:a@h>")
    with pytest.raises(SipLocalError):
        Dialog.from_uac(invite(), parse_response(ok_text(486, "Busy Here")), "<sip:a@h>")


def test_uac_without_contact_falls_back_to_request_uri() -> None:
    d = Dialog.from_uac(invite(), parse_response(ok_text(contact=None)), "<sip:alice@10.0.0.1>")
    assert str(d.remote_target) == "sip:bob@192.0.2.4:5062"


def test_secure_flag_from_sips_request_uri() -> None:
    text = INVITE_TEXT.replace(b"INVITE sip:bob@", b"INVITE sips:bob@")
    assert Dialog.from_uas(parse_request(text), "b", BOB_CONTACT).secure
    assert not bob_dialog().secure


def test_dialog_ids_of_messages() -> None:
    bye = send(alice_dialog(), "BYE")
    # Bob receives Alice's BYE: his local tag is in To, his remote tag in From.
    assert dialog_id_of_request(bye) == DialogId("3848276298220188511@10.0.0.1", "b-tag", "a-tag")
    assert dialog_id_of_request(bye) == bob_dialog().id
    assert DialogId("c", "l", "r").reversed() == DialogId("c", "r", "l")


def test_bad_local_contact_is_a_local_error() -> None:
    with pytest.raises(SipLocalError):
        Dialog.from_uas(invite(), "b-tag", "<sip:bob@")


# ---- building requests ---------------------------------------------------------------------------------------


def test_uas_request_uses_loose_routing() -> None:
    d = bob_dialog()
    bye = send(d, "BYE")
    assert str(bye.uri) == ALICE_CONTACT_URI
    assert bye.headers.get_all("route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com>"]
    assert bye.cseq.seq == 501 and bye.cseq.method == "BYE" and d.local_seq == 501
    assert bye.from_.tag == "b-tag" and bye.to.tag == "a-tag"
    assert bye.from_.uri == SipUri.parse("sip:bob@example.com")
    assert bye.to.display_name == "Alice"
    assert bye.call_id == d.call_id
    assert "contact" not in bye.headers  # BYE is no target refresh
    via = bye.via
    assert via.branch is not None and via.branch.startswith("z9hG4bK") and via.wants_rport
    assert (via.transport, via.host, via.port) == ("UDP", "10.0.0.9", 5060)
    assert bye.max_forwards == 70 and bye.content_length == 0


def test_uac_request_uses_strict_routing_when_first_route_lacks_lr() -> None:
    d = alice_dialog()
    reinvite = send(d, "INVITE", body=SDP, content_type="application/sdp")
    # §12.2.1.1: the strict router gets the Request-URI, the remote target goes last in Route.
    assert str(reinvite.uri) == "sip:p1.example.com"
    assert reinvite.headers.get_all("route") == ["<sip:p2.example.com;lr>", "<sip:bob@192.0.2.4:5062>"]
    assert reinvite.cseq.seq == 102
    assert reinvite.headers.get("contact") == f"<{ALICE_CONTACT_URI}>"
    assert reinvite.content_type == "application/sdp" and reinvite.body == SDP
    assert reinvite.content_length == len(SDP)


def test_strict_route_strips_parameters_not_allowed_in_request_uri() -> None:
    d = alice_dialog()
    d.route_set = [NameAddr.parse("<sip:p1.example.com;method=INVITE;maddr=192.0.2.9?X=y>")]
    req = send(d, "INFO")
    assert str(req.uri) == "sip:p1.example.com;maddr=192.0.2.9"
    assert req.headers.get_all("route") == ["<sip:bob@192.0.2.4:5062>"]
    assert wire(req) == req


def test_no_route_set_targets_the_contact() -> None:
    d = bob_dialog()
    d.route_set = []
    req = send(d, "OPTIONS")
    assert str(req.uri) == ALICE_CONTACT_URI and "route" not in req.headers


def test_cseq_increments_and_ack_reuses_the_invite_number() -> None:
    d = alice_dialog()
    seqs = [send(d, m).cseq.seq for m in ("INFO", "UPDATE", "OPTIONS")]
    assert seqs == [102, 103, 104]
    reinvite = send(d, "INVITE")
    ack = d.create_ack(reinvite)
    assert ack.method == "ACK" and ack.cseq.seq == reinvite.cseq.seq == 105 and ack.cseq.method == "ACK"
    assert d.local_seq == 105  # the ACK took no number
    assert ack.via.branch != reinvite.via.branch and ack.via.branch.startswith("z9hG4bK")  # type: ignore[union-attr]
    assert ack.uri == reinvite.uri and ack.headers.get_all("route") == reinvite.headers.get_all("route")
    assert ack.to.tag == "b-tag" and "contact" not in ack.headers
    assert send(d, "BYE").cseq.seq == 106


def test_ack_carries_the_invite_credentials_and_body() -> None:
    d = alice_dialog()
    inv = send(d, "INVITE", headers=[("Proxy-Authorization", 'Digest username="alice", realm="x"')])
    ack = d.create_ack(inv, body=SDP, content_type="application/sdp")
    assert ack.headers.get("proxy-authorization") == 'Digest username="alice", realm="x"'
    assert ack.body == SDP and ack.content_length == len(SDP)
    assert wire(ack) == ack


def test_cancel_copies_the_invite() -> None:
    d = Dialog.new_uac(local_uri=NameAddr.parse("<sip:pbx@10.0.0.9>"), remote_uri=NameAddr.parse("<sip:bob@h>"),
                       remote_target=SipUri.parse("sip:bob@192.0.2.4"), local_contact="<sip:pbx@10.0.0.9>",
                       route_set=[NameAddr.parse("<sip:out.example.com;lr>")])
    inv = send(d, "INVITE")
    cancel = d.create_cancel(inv)
    assert cancel.method == "CANCEL" and cancel.uri == inv.uri
    assert cancel.via == inv.via and cancel.headers.get_all("route") == inv.headers.get_all("route")
    assert cancel.cseq.seq == inv.cseq.seq and cancel.cseq.method == "CANCEL"
    assert cancel.headers.get("to") == inv.headers.get("to") and cancel.headers.get("from") == inv.headers.get("from")
    assert wire(cancel) == cancel


def test_from_and_to_follow_the_dialog_as_it_changes() -> None:
    """Requests carry the dialog's From and To as they are now: the text kept between requests is made again
    when a tag arrives or an address is replaced, and the headers are those the parser reads back."""
    d = Dialog.new_uac(local_uri=NameAddr.parse("<sip:pbx@10.0.0.9>"), remote_uri=NameAddr.parse("<sip:bob@h>"),
                       remote_target=SipUri.parse("sip:bob@192.0.2.4"), local_contact="<sip:pbx@10.0.0.9>")
    first = send(d, "OPTIONS")
    assert first.to.tag is None and first.from_.tag == d.local_tag
    assert send(d, "OPTIONS").headers.get("from") == first.headers.get("from")
    d.remote_tag = "far1"
    assert send(d, "OPTIONS").to.tag == "far1"
    d.local_uri = NameAddr.parse('"Desk" <sip:desk@10.0.0.9>')
    d.local_tag = "near2"
    moved = send(d, "INFO", body=b"x", content_type="text/plain")
    assert moved.from_.display_name == "Desk" and moved.from_.tag == "near2" and moved.to.tag == "far1"
    assert wire(moved) == moved and moved.headers.get("content-length") == "1"


def test_extra_headers_and_contact_override() -> None:
    d = bob_dialog()
    req = send(d, "REFER", headers=[("Refer-To", "<sip:carol@example.com>"), ("Contact", "<sip:bob@other>")])
    assert req.headers.get_all("contact") == ["<sip:bob@other>"]
    assert req.headers.get("refer-to") == "<sip:carol@example.com>"
    for method in ("UPDATE", "SUBSCRIBE", "NOTIFY"):
        assert send(d, method).headers.get("contact") == BOB_CONTACT


@pytest.mark.parametrize("bad", [
    {"headers": [("CSeq", "1 BYE")]},
    {"headers": [("Via", "SIP/2.0/UDP x")]},
    {"headers": [("X-Bad", "a\r\nInjected: 1")]},
    {"body": b"x"},  # no Content-Type
    {"max_forwards": 300},
])
def test_create_request_rejects_misuse_without_taking_a_number(bad: dict[str, object]) -> None:
    d = bob_dialog()
    with pytest.raises(SipLocalError):
        send(d, "INFO", **bad)
    assert d.local_seq == 500


def test_ack_cancel_and_terminated_are_misuse() -> None:
    d = bob_dialog()
    for method in ("ACK", "CANCEL", "BAD METHOD"):
        with pytest.raises(SipLocalError):
            send(d, method)
    d.terminate()
    with pytest.raises(SipLocalError):
        send(d, "BYE")
    with pytest.raises(SipLocalError):
        d.create_ack(invite())


def test_ipv6_contact_and_via() -> None:
    text = INVITE_TEXT.replace(f"Contact: <{ALICE_CONTACT_URI}>".encode(), b"Contact: <sip:alice@[::1]:5060>")
    d = Dialog.from_uas(parse_request(text), "b-tag", "<sip:bob@[::1]:5062>")
    d.route_set = []
    assert d.remote_target.host == "::1"
    assert d.next_hop() == ("udp", "::1", 5060)
    req = d.create_request("INVITE", via_host="[::1]", via_port=5062, transport="udp")
    raw = req.serialize()
    assert raw.startswith(b"INVITE sip:alice@[::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5062;branch=z9hG4bK")
    assert wire(req) == req
    assert req.headers.get("contact") == "<sip:bob@[::1]:5062>"


# ---- next hop ---------------------------------------------------------------------------------------------------


def test_next_hop_is_first_route_else_remote_target() -> None:
    assert bob_dialog().next_hop() == ("udp", "p2.example.com", 5060)
    assert alice_dialog().next_hop() == ("udp", "p1.example.com", 5060)
    d = bob_dialog()
    d.route_set = []
    assert d.next_hop() == ("tcp", "10.0.0.1", 5070)


@pytest.mark.parametrize(("uri", "expected"), [
    ("sip:a@h", ("udp", "h", 5060)),
    ("sip:a@h;transport=TCP", ("tcp", "h", 5060)),
    ("sip:a@h;transport=tls", ("tls", "h", 5061)),
    ("sip:a@h:7000;transport=tls", ("tls", "h", 7000)),
    ("sips:a@h", ("tls", "h", 5061)),
    ("sips:a@h;transport=tcp", ("tls", "h", 5061)),
    ("sip:a@h;transport=ws", ("ws", "h", 80)),
    ("sip:a@h;maddr=192.0.2.1", ("udp", "192.0.2.1", 5060)),
    ("sip:[2001:db8::1]:5080", ("udp", "2001:db8::1", 5080)),
])
def test_uri_destination(uri: str, expected: tuple[str, str, int]) -> None:
    assert uri_destination(SipUri.parse(uri)) == expected


def test_unknown_transport_is_a_dialog_error() -> None:
    with pytest.raises(DialogError):
        uri_destination(SipUri.parse("sip:a@h;transport=sctp"))


# ---- receiving requests ---------------------------------------------------------------------------------------


def in_dialog(method: str, seq: int, *, contact: str | None = None, to_tag: str = "b-tag",
              from_tag: str = "a-tag", call_id: str = "3848276298220188511@10.0.0.1") -> Request:
    """A request Alice sends to Bob inside the dialog."""
    lines = [
        f"{method} sip:bob@192.0.2.4:5062 SIP/2.0",
        "Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2x" + str(seq),
        "Max-Forwards: 69",
        f'From: "Alice" <sip:alice@example.com>;tag={from_tag}',
        f"To: <sip:bob@example.com>;tag={to_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {seq} {method}",
        *([f"Contact: {contact}"] if contact else []),
        "Content-Length: 0",
        "",
        "",
    ]
    return parse_request("\r\n".join(lines).encode())


def test_cseq_order_is_enforced() -> None:
    d = bob_dialog()  # remote_seq 101 from the INVITE
    for seq in (101, 100, 1):
        with pytest.raises(DialogError) as info:
            d.receive_request(in_dialog("INFO", seq))
        assert info.value.status_hint == 500
        assert d.remote_seq == 101
    d.receive_request(in_dialog("INFO", 102))
    assert d.remote_seq == 102
    d.receive_request(in_dialog("INFO", 250))  # gaps are allowed (§12.2.2)
    assert d.remote_seq == 250
    with pytest.raises(DialogError):
        d.receive_request(in_dialog("INFO", 249))


def test_ack_and_cancel_are_not_counted() -> None:
    d = bob_dialog(early=True)
    d.receive_request(in_dialog("ACK", 101))  # same number as the INVITE
    assert d.remote_seq == 101
    d.receive_request(in_dialog("CANCEL", 101, to_tag=""))  # a CANCEL has no To tag
    assert d.remote_seq == 101 and d.state is DialogState.EARLY


def test_uac_side_accepts_any_first_remote_cseq() -> None:
    d = alice_dialog()
    bye = send(bob_dialog(), "BYE")
    d.receive_request(bye)
    assert d.remote_seq == 501 and d.state is DialogState.TERMINATED


def test_requests_of_other_dialogs_get_481() -> None:
    d = bob_dialog()
    for req in (in_dialog("INFO", 200, to_tag="zzz"), in_dialog("INFO", 200, from_tag="zzz"),
                in_dialog("INFO", 200, call_id="other@h")):
        with pytest.raises(DialogError) as info:
            d.receive_request(req)
        assert info.value.status_hint == 481
    assert d.remote_seq == 101
    d.terminate()
    with pytest.raises(DialogError) as info:
        d.receive_request(in_dialog("INFO", 300))
    assert info.value.status_hint == 481


def test_target_refresh_by_request() -> None:
    d = bob_dialog()
    d.receive_request(in_dialog("INVITE", 102, contact="<sip:alice@[2001:db8::5]:5090>"))
    assert str(d.remote_target) == "sip:alice@[2001:db8::5]:5090"
    d.receive_request(in_dialog("UPDATE", 103, contact="<sip:alice@10.9.9.9>"))
    assert str(d.remote_target) == "sip:alice@10.9.9.9"
    d.receive_request(in_dialog("INFO", 104, contact="<sip:alice@10.1.1.1>"))  # INFO refreshes nothing
    assert str(d.remote_target) == "sip:alice@10.9.9.9"
    d.receive_request(in_dialog("INVITE", 105))  # no Contact: the target stays
    assert str(d.remote_target) == "sip:alice@10.9.9.9"
    with pytest.raises(DialogError):  # out of order: the Contact is not taken either
        d.receive_request(in_dialog("INVITE", 105, contact="<sip:alice@10.2.2.2>"))
    assert str(d.remote_target) == "sip:alice@10.9.9.9"


def test_bye_terminates() -> None:
    d = bob_dialog()
    d.receive_request(in_dialog("BYE", 102))
    assert d.state is DialogState.TERMINATED


# ---- receiving responses ----------------------------------------------------------------------------------


def response_to(request: Request, status: int, *, to_tag: str | None = "b-tag", contact: str | None = None,
                extra: tuple[tuple[str, str], ...] = ()) -> Response:
    bob = bob_dialog()
    bob.local_tag = to_tag or ""
    headers = list(extra)
    if contact:
        headers.append(("Contact", contact))
    response = bob.create_response(request, status, headers=headers)
    to = request.to
    to = NameAddr(to.uri, to.display_name, tuple((k, v) for k, v in to.params if k != "tag"))
    response.headers.set("To", str(to.with_tag(to_tag) if to_tag else to))
    if not contact:
        response.headers.remove("contact")
    return parse_response(response.serialize())


def test_481_and_408_terminate() -> None:
    for status in (481, 408):
        d = alice_dialog()
        info = send(d, "INFO")
        d.receive_response(info, response_to(info, status))
        assert d.state is DialogState.TERMINATED
    d = alice_dialog()
    info = send(d, "INFO")
    d.receive_response(info, response_to(info, 404))  # other errors keep the dialog
    assert d.state is DialogState.CONFIRMED
    d.receive_response(info, response_to(info, 500))
    assert d.state is DialogState.CONFIRMED


def test_bye_response_terminates() -> None:
    d = alice_dialog()
    bye = send(d, "BYE")
    d.receive_response(bye, response_to(bye, 200))
    assert d.state is DialogState.TERMINATED


def test_target_refresh_by_2xx_and_reliable_1xx() -> None:
    d = alice_dialog()
    reinvite = send(d, "INVITE")
    d.receive_response(reinvite, response_to(reinvite, 180, contact="<sip:bob@10.3.3.3>"))
    assert str(d.remote_target) == "sip:bob@192.0.2.4:5062"  # an unreliable 1xx refreshes nothing
    d.receive_response(reinvite, response_to(reinvite, 183, contact="<sip:bob@10.4.4.4>", extra=(("RSeq", "1"),)))
    assert str(d.remote_target) == "sip:bob@10.4.4.4"
    d.receive_response(reinvite, response_to(reinvite, 200, contact="<sip:bob@[::1]:5062>"))
    assert d.remote_target.host == "::1" and d.remote_target.port == 5062
    info = send(d, "INFO")
    d.receive_response(info, response_to(info, 200, contact="<sip:bob@10.5.5.5>"))  # INFO: no refresh
    assert d.remote_target.host == "::1"


def test_response_of_another_dialog_or_request_is_rejected() -> None:
    d = alice_dialog()
    info = send(d, "INFO")
    with pytest.raises(DialogError):
        d.receive_response(info, response_to(info, 200, to_tag="someone-else"))
    other = send(alice_dialog(), "OPTIONS")
    with pytest.raises(SipLocalError):
        d.receive_response(info, response_to(other, 200))


def test_full_uac_leg_with_fork_early_dialog_and_confirmation() -> None:
    """A B2BUA's outgoing leg: INVITE, 180 (early), 200 (confirmed, route set recomputed), ACK, BYE from Bob."""
    proxy = NameAddr.parse("<sip:out.example.com;lr>")
    leg = Dialog.new_uac(local_uri=NameAddr.parse('"PBX" <sip:100@pbx.example.com>'),
                         remote_uri=NameAddr.parse("<sip:bob@example.com>"),
                         remote_target=SipUri.parse("sip:bob@192.0.2.4:5062"),
                         local_contact="<sip:pbx@10.0.0.9:5060>", route_set=[proxy], call_id="leg-1@pbx")
    assert leg.state is DialogState.EARLY and leg.remote_tag == "" and leg.local_tag
    inv = send(leg, "INVITE", body=SDP, content_type="application/sdp")
    assert str(inv.uri) == "sip:bob@192.0.2.4:5062"
    assert inv.headers.get_all("route") == ["<sip:out.example.com;lr>"] and inv.to.tag is None
    assert leg.next_hop() == ("udp", "out.example.com", 5060)

    # Bob receives it through the proxy, which record-routes.
    received = parse_request(inv.serialize())
    received.headers.pop_first("route")
    received.headers.add("Record-Route", "<sip:out.example.com;lr>", first=True)
    bob = Dialog.from_uas(received, "bob-1", BOB_CONTACT, early=True)
    assert bob.id.reversed() == DialogId("leg-1@pbx", leg.local_tag, "bob-1")
    assert leg.id == DialogId("leg-1@pbx", leg.local_tag, "")  # our leg does not know Bob's tag yet

    trying = parse_response(bob.create_response(received, 100).serialize())
    leg.receive_response(inv, trying)
    assert leg.remote_tag == "" and leg.state is DialogState.EARLY
    ringing = parse_response(bob.create_response(received, 180).serialize())
    assert ringing.headers.get("contact") == BOB_CONTACT and ringing.to.tag == "bob-1"
    leg.receive_response(inv, ringing)
    assert leg.remote_tag == "bob-1" and leg.state is DialogState.EARLY and leg.id == bob.id.reversed()
    assert [str(r) for r in leg.route_set] == ["<sip:out.example.com;lr>"]
    assert str(leg.remote_target) == "sip:bob@192.0.2.4:5062"

    # A 180 from another fork is another dialog.
    with pytest.raises(DialogError):
        leg.receive_response(inv, response_to(inv, 180, to_tag="fork-2", contact="<sip:bob@10.8.8.8>"))
    fork = Dialog.from_uac(inv, response_to(inv, 180, to_tag="fork-2", contact="<sip:bob@10.8.8.8>"),
                           leg.local_contact)
    assert fork.id == DialogId("leg-1@pbx", leg.local_tag, "fork-2") and fork.state is DialogState.EARLY

    ok = bob.create_response(received, 200, body=SDP, content_type="application/sdp")
    bob.confirm()
    ok.headers.set("Contact", "<sip:bob@192.0.2.44:5062>")  # the 2xx moves the target
    leg.receive_response(inv, parse_response(ok.serialize()))
    assert leg.state is DialogState.CONFIRMED and bob.state is DialogState.CONFIRMED
    assert str(leg.remote_target) == "sip:bob@192.0.2.44:5062"

    ack = leg.create_ack(inv)
    assert ack.cseq.seq == inv.cseq.seq and ack.to.tag == "bob-1"
    bob.receive_request(parse_request(ack.serialize()))

    bye = bob.create_request("BYE", via_host="192.0.2.4", via_port=5062, transport="udp")
    assert str(bye.uri) == "sip:pbx@10.0.0.9:5060"
    assert bye.headers.get_all("route") == ["<sip:out.example.com;lr>"]
    leg.receive_request(parse_request(bye.serialize()))
    assert leg.state is DialogState.TERMINATED and leg.remote_seq == bye.cseq.seq


def test_final_non_2xx_to_initial_invite_terminates_early_dialog() -> None:
    d = Dialog.from_uac(invite(), parse_response(ok_text(180, "Ringing")), "<sip:alice@10.0.0.1>")
    d.receive_response(invite(), parse_response(ok_text(486, "Busy Here")))
    assert d.state is DialogState.TERMINATED
    d.receive_response(invite(), parse_response(ok_text()))  # ignored once terminated
    assert d.state is DialogState.TERMINATED


def test_2xx_confirms_early_dialog_and_recomputes_route_set() -> None:
    d = Dialog.from_uac(invite(), parse_response(ok_text(180, "Ringing")), "<sip:alice@10.0.0.1>")
    text = ok_text(extra=()).replace(b"Record-Route: <sip:p1.example.com>\r\n", b"")
    d.receive_response(invite(), parse_response(text))
    assert d.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in d.route_set] == ["sip:p2.example.com;lr"]


def test_create_response_has_tag_and_contact() -> None:
    d = bob_dialog()
    r = d.create_response(invite(), 200, body=SDP, content_type="application/sdp")
    assert r.to.tag == "b-tag" and r.headers.get("contact") == BOB_CONTACT
    assert r.headers.get_all("record-route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com>"]
    assert r.content_length == len(SDP)
    assert "contact" not in d.create_response(in_dialog("INFO", 200), 200).headers
    assert "contact" not in d.create_response(invite(), 486).headers


# ---- Replaces, Refer-To, sipfrag ----------------------------------------------------------------------------


def test_parse_replaces() -> None:
    r = parse_replaces("425928@bobster.example.org;to-tag=7743;from-tag=6472")
    assert r == ReplacesTarget("425928@bobster.example.org", "7743", "6472", False)
    assert r.dialog_id() == DialogId("425928@bobster.example.org", "7743", "6472")
    assert parse_replaces("abc ; from-tag=1 ;To-Tag=2; early-only; x=y").early_only
    assert parse_replaces(str(r)) == r


@pytest.mark.parametrize("bad", [
    "", ";to-tag=1;from-tag=2", "abc;to-tag=1", "abc;from-tag=2", "abc;to-tag=1;to-tag=3;from-tag=2",
    "abc;to-tag=;from-tag=2", "a b;to-tag=1;from-tag=2", "abc;to-tag=1;;from-tag=2",
])
def test_bad_replaces(bad: str) -> None:
    with pytest.raises(SipParseError):
        parse_replaces(bad)


def test_replaces_header_names_the_dialog_as_the_peer_sees_it() -> None:
    alice = alice_dialog()
    bob = bob_dialog()
    # Alice asks someone to replace her dialog with Bob: the INVITE goes to Bob, who looks it up in his table.
    value = replaces_header(alice.id)
    assert value == "3848276298220188511@10.0.0.1;to-tag=b-tag;from-tag=a-tag"
    assert parse_replaces(value).dialog_id() == bob.id
    assert replaces_header(alice.id, early_only=True).endswith(";early-only")
    assert replaces_target(alice.id) == parse_replaces(value)


def test_parse_refer_to_with_escaped_replaces() -> None:
    value = ("<sip:dave@denver.example.org?Replaces=12345%40192.168.118.3%3Bto-tag%3D12345%3Bfrom-tag%3D5FFE-3994"
             "&Require=replaces>;x=1")
    addr, target = parse_refer_to(value)
    assert target == ReplacesTarget("12345@192.168.118.3", "12345", "5FFE-3994")
    assert str(addr) == "<sip:dave@denver.example.org?Require=replaces>;x=1"
    assert addr.sip_uri.headers == (("Require", "replaces"),)


def test_parse_refer_to_without_replaces() -> None:
    addr, target = parse_refer_to("Carol <sip:carol@example.com>")
    assert target is None and addr.display_name == "Carol"
    addr, target = parse_refer_to("<tel:+15551234567>")
    assert target is None and str(addr.uri) == "tel:+15551234567"
    with pytest.raises(SipParseError):
        parse_refer_to("<sip:d@h?Replaces=abc%3Bto-tag%3D1>")  # no from-tag


def test_refer_to_round_trip() -> None:
    target = ReplacesTarget("a@b", "t1", "f2", early_only=True)
    value = refer_to_header(SipUri.parse("sip:carol@[::1]:5070"), target)
    assert "%40" in value and "%3B" in value and "%3D" in value and "@b;" not in value
    addr, parsed = parse_refer_to(value)
    assert parsed == target and str(addr.uri) == "sip:carol@[::1]:5070"
    assert refer_to_header(NameAddr.parse("<sip:carol@h>")) == "<sip:carol@h>"


def test_sipfrag() -> None:
    assert sipfrag(200, "OK") == b"SIP/2.0 200 OK\r\n"
    assert sipfrag(100) == b"SIP/2.0 100 Trying\r\n"
    assert sipfrag(503, "Service Unavailable") == b"SIP/2.0 503 Service Unavailable\r\n"
    assert parse_sipfrag(sipfrag(180, "Ringing")) == (180, "Ringing")
    assert SIPFRAG_CONTENT_TYPE.startswith("message/sipfrag")
    with pytest.raises(SipLocalError):
        sipfrag(99, "x")
    with pytest.raises(SipLocalError):
        sipfrag(200, "OK\r\nInjected: 1")
    with pytest.raises(SipParseError):
        parse_sipfrag(b"garbage")


def test_errors_are_one_hierarchy() -> None:
    assert issubclass(DialogError, SipError)
    assert DialogError("x").status_hint == 481


# ---- property: any sequence of requests ---------------------------------------------------------------------

METHODS = ("INVITE", "UPDATE", "INFO", "OPTIONS", "MESSAGE", "NOTIFY", "REFER", "SUBSCRIBE", "PRACK", "BYE")
HOSTS = ("10.0.0.9", "::1", "pbx.example.com", "2001:db8::7")
TARGETS = ("sip:bob@[::1]:5060", "sip:bob@192.0.2.4:5062;transport=tcp", "sips:bob@example.com", "sip:10.1.1.1")
ROUTES = ((), ("<sip:p1.example.com;lr>",), ("<sip:p1.example.com>", "<sip:p2.example.com;lr>"),
          ("<sip:[::1]:5080;lr>", "<sip:p2.example.com>"))

request_specs = st.lists(
    st.tuples(st.sampled_from(METHODS), st.binary(max_size=40), st.sampled_from(HOSTS),
              st.integers(1, 65535), st.sampled_from(("udp", "tcp", "tls"))),
    min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(specs=request_specs, target=st.sampled_from(TARGETS), routes=st.sampled_from(ROUTES),
       start=st.integers(0, 2**31 - 100))
def test_created_requests_have_increasing_cseq_and_round_trip(
        specs: list[tuple[str, bytes, str, int, str]], target: str, routes: tuple[str, ...], start: int) -> None:
    d = Dialog.new_uac(local_uri=NameAddr.parse('"PBX" <sip:pbx@pbx.example.com>'),
                       remote_uri=NameAddr.parse("<sip:bob@example.com>"), remote_target=SipUri.parse(target),
                       local_contact="<sip:pbx@[2001:db8::7]:5060>",
                       route_set=[NameAddr.parse(r) for r in routes], local_seq=start)
    d.remote_tag = "remote-1"
    last = start
    for method, body, host, port, transport in specs:
        req = d.create_request(method, via_host=host, via_port=port, transport=transport, body=body,
                               content_type="application/octet-stream" if body else None)
        assert req.cseq.seq > last and req.cseq.method == method
        last = req.cseq.seq
        back = parse_request(req.serialize())
        assert back == req
        assert list(back.headers) == list(req.headers)
        assert back.via.host == host and back.via.port == port
        if routes and "lr" not in routes[0]:
            assert back.routes[-1].uri == SipUri.parse(target)
        else:
            assert back.uri == SipUri.parse(target)
        ack = d.create_ack(req) if method == "INVITE" else None
        if ack is not None:
            assert ack.cseq.seq == last and parse_request(ack.serialize()) == ack
    assert d.local_seq == last
