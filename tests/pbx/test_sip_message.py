"""Requests and responses (RFC 3261 §7, §8.2.6, §18.3, §20): parsing, serialising, golden captures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.headers import Headers
from ccpbx.pbx.sip.message import (
    Request,
    Response,
    _find_head_end,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    random_hex,
    reason_for,
)
from ccpbx.pbx.sip.uri import SipUri

CAPTURES = Path(__file__).resolve().parent.parent / "data" / "sip" / "captures"

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1, SIP/2.0/TCP edge.example.com;branch=z9hG4bK2\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"v=0\r\n"
)


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def test_parse_request_fields() -> None:
    m = parse_request(INVITE)
    assert m.method == "INVITE" and m.uri == SipUri(user="bob", host="biloxi.example.com")
    assert m.sip_uri.user == "bob" and m.version == "SIP/2.0"
    assert [v.host for v in m.vias] == ["pc33.atlanta.example.com", "proxy.example.com", "edge.example.com"]
    assert m.via.branch == "z9hG4bKnashds8" and m.max_forwards == 70
    assert m.from_.tag == "1928301774" and m.to.tag is None and m.to.display_name == "Bob"
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (m.cseq.seq, m.cseq.method) == (314159, "INVITE")
    assert [str(r.uri) for r in m.record_routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert m.routes == [] and m.expires is None and m.content_length == 5 and m.body == b"v=0\r\n"
    assert m.content_type == "application/sdp" and not m.is_wildcard_contact


def test_exact_round_trip_of_canonical_message() -> None:
    assert parse_message(INVITE).serialize() == INVITE
    assert bytes(parse_message(INVITE)) == INVITE


def test_parse_response() -> None:
    data = (b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:b@x>;tag=9\r\n"
            b"From: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    m = parse_message(data)
    assert isinstance(m, Response) and m.status == 180 and m.reason == "Ringing"
    assert m.is_provisional and not m.is_final and m.serialize() == data
    assert repr(m) == "<Response 180 Ringing>"


def test_folding_and_lf_only_line_ends() -> None:
    folded = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards:\r\n   70\r\n").replace(
        b"Subject", b"x").replace(b"CSeq: 314159 INVITE\r\n", b"CSeq: 314159\r\n\tINVITE\r\n")
    m = parse_request(folded)
    assert m.max_forwards == 70 and m.cseq.method == "INVITE"
    assert m.headers.get("max-forwards") == "70"
    lf_only = INVITE.replace(b"\r\n", b"\n").replace(b"Content-Length: 5", b"Content-Length: 4")
    m2 = parse_request(lf_only)
    assert m2.body == b"v=0\n" and m2.call_id == m.call_id
    mixed = INVITE.replace(b"\r\n\r\n", b"\n\r\n")
    assert parse_request(mixed).body == b"v=0\r\n"


def test_leading_crlf_is_ignored() -> None:
    assert parse_request(b"\r\n\r\n" + INVITE).method == "INVITE"


def test_datagram_content_length_rules() -> None:
    without = INVITE.replace(b"Content-Length: 5\r\n", b"")
    assert parse_request(without + b"more").body == b"v=0\r\nmore"  # missing: the rest of the datagram
    assert parse_request(INVITE + b"junk").body == b"v=0\r\n"  # extra bytes discarded
    with pytest.raises(SipParseError, match="truncated body"):
        parse_message(INVITE.replace(b"Content-Length: 5", b"Content-Length: 40"))
    with pytest.raises(SipParseError):
        parse_message(INVITE.replace(b"Content-Length: 5", "Content-Length: \u0665".encode()))
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE.replace(b"Content-Length: 5", b"Content-Length: 99999999999999"))
    assert info.value.status_hint == 413


def test_stream_requires_content_length() -> None:
    assert parse_message(INVITE, stream=True).body == b"v=0\r\n"
    with pytest.raises(SipParseError, match="required"):
        parse_message(INVITE.replace(b"Content-Length: 5\r\n", b""), stream=True)


@pytest.mark.parametrize("cut", [1, 10, 60, 200, len(INVITE) - 8, len(INVITE) - 1])
def test_truncated_input_raises(cut: int) -> None:
    with pytest.raises(SipParseError):
        parse_message(INVITE[:cut])


@pytest.mark.parametrize(("old", "new", "status"), [
    (b"To: Bob <sip:bob@biloxi.example.com>\r\n", b"", 400),
    (b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", b"", 400),
    (b"CSeq: 314159 INVITE", b"CSeq: x INVITE", 400),
    (b"Max-Forwards: 70", b"Max-Forwards: 256", 400),
    (b"Max-Forwards: 70", b"Max-Forwards: seventy", 400),
    (b"INVITE sip:bob@biloxi.example.com SIP/2.0", b"INVITE sip:bob@biloxi.example.com SIP/3.0", 505),
    (b"INVITE sip:bob@biloxi.example.com SIP/2.0", b"INVITE sip:bob@biloxi.example.com?x=y SIP/2.0", 400),
    (b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nBad Header: x\r\n", 400),
    (b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nNoColon\r\n", 400),
    (b"CSeq: 314159 INVITE\r\n", b"CSeq: 314159 INVITE\r\nCSeq: 314160 INVITE\r\n", 400),
    (b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport", b"Via: garbage", 400),
])
def test_invalid_requests(old: bytes, new: bytes, status: int) -> None:
    assert old in INVITE
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE.replace(old, new))
    assert info.value.status_hint == status


def test_continuation_before_any_header() -> None:
    with pytest.raises(SipParseError):
        parse_message(INVITE.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n  folded\r\nVia", 1))


@pytest.mark.parametrize("line", [b"SIP/2.0 99 Low", b"SIP/2.0 700 High", b"SIP/2.0 20 OK", b"SIP/2.0 2000 OK",
                                  b"SIP/2.0  200 OK", b"HTTP/1.1 200 OK"])
def test_bad_status_lines(line: bytes) -> None:
    data = line + b"\r\nVia: SIP/2.0/UDP h\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 1 X\r\n\r\n"
    with pytest.raises(SipParseError):
        parse_message(data)


def test_lazy_accessors_raise_parse_errors() -> None:
    m = parse_request(INVITE.replace(b"Contact: <sip:alice@pc33.atlanta.example.com>", b"Contact: <bad"))
    with pytest.raises(SipParseError):
        m.contacts  # noqa: B018
    m = parse_request(INVITE.replace(b"Timestamp: 54", b"Expires: 99999999999999999999"))
    with pytest.raises(SipParseError):
        m.expires  # noqa: B018
    m = parse_request(INVITE.replace(b"Timestamp: 54", b"Contact: *"))
    assert m.is_wildcard_contact and len(m.contacts) == 1


def test_header_tokens() -> None:
    m = parse_request(INVITE.replace(b"Timestamp: 54", b"Supported: Timer, 100rel\r\nSupported: path"))
    assert m.header_tokens("k") == {"timer", "100rel", "path"}


def test_serialize_fixes_content_length_and_builds_from_parts() -> None:
    request = Request(headers=Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("To", "<sip:b@x>"),
                                       ("From", "<sip:a@x>;tag=1"), ("Call-ID", "c"), ("CSeq", "1 MESSAGE")]),
                      body=b"hello", method="MESSAGE", uri=SipUri(user="b", host="x"))
    data = request.serialize()
    assert data.endswith(b"Content-Length: 5\r\n\r\nhello")
    assert parse_message(data) == request
    assert repr(request) == "<Request MESSAGE sip:b@x>"
    request.body = b""
    assert b"Content-Length: 0\r\n" in request.serialize()


# ---- make_response (§8.2.6) ----------------------------------------------------------------------------------
def test_make_response_copies_the_right_headers() -> None:
    request = parse_request(INVITE)
    ringing = make_response(request, 180, to_tag="t1")
    assert ringing.status == 180 and ringing.reason == "Ringing"
    assert ringing.headers.get_all("via") == request.headers.get_all("via")
    assert ringing.headers.get("from") == request.headers.get("from")
    assert ringing.to.tag == "t1" and ringing.to.display_name == "Bob"
    assert ringing.call_id == request.call_id and ringing.cseq == request.cseq
    assert ringing.headers.get_all("record-route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert "timestamp" not in ringing.headers and "contact" not in ringing.headers
    ok = make_response(request, 200, to_tag="t1", body=b"v=0\r\n", content_type="application/sdp")
    assert len(ok.record_routes) == 2 and ok.content_type == "application/sdp"
    assert parse_message(ok.serialize()) == ok


def test_make_response_100_and_errors() -> None:
    request = parse_request(INVITE)
    trying = make_response(request, 100, to_tag="t1")
    assert trying.to.tag is None and trying.headers.get("timestamp") == "54"
    assert "record-route" not in trying.headers and trying.reason == "Trying"
    busy = make_response(request, 486, to_tag="t1")
    assert busy.to.tag == "t1" and "record-route" not in busy.headers
    custom = make_response(request, 499, "Whatever")
    assert custom.reason == "Whatever" and custom.to.tag is None
    assert reason_for(799) == "Unknown" and reason_for(404) == "Not Found"


def test_make_response_keeps_an_existing_to_tag() -> None:
    request = parse_request(INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>",
                                           b"To: Bob <sip:bob@biloxi.example.com>;tag=old"))
    assert make_response(request, 200, to_tag="new").to.tag == "old"


@pytest.mark.parametrize("to", [b"To: sip:bob@biloxi.example.com", b"To: <sip:bob@biloxi.example.com;user=phone>",
                                b'To: "Bob, B." <sip:bob@biloxi.example.com>;x=1 ', b"t: sip:bob@biloxi.example.com"])
def test_make_response_adds_the_to_tag_to_either_form_of_to(to: bytes) -> None:
    """The tag goes after whatever the To says (addr-spec or name-addr, with parameters or not): the address,
    display name and parameters are kept as the caller wrote them."""
    request = parse_request(INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", to))
    response = parse_message(make_response(request, 486, to_tag="t9").serialize())
    assert response.to.tag == "t9"
    assert response.to.uri == request.to.uri and response.to.display_name == request.to.display_name
    assert dict(response.to.params) == {**dict(request.to.params), "tag": "t9"}


def test_identifiers() -> None:
    assert new_branch().startswith("z9hG4bK") and new_branch() != new_branch()
    assert len(new_tag()) == 12 and new_call_id("h").endswith("@h")


def test_random_identifiers_use_each_pooled_byte_once() -> None:
    """Tags, branches and Call-IDs come from a pool of OS random bytes: across refills (a pool serves ~4 KB) no
    value repeats, and each has its length in hex digits."""
    drawn = [random_hex(n) for _ in range(1_500) for n in (6, 8, 12)]
    assert all(re.fullmatch(r"[0-9a-f]+", v) for v in drawn)
    assert [len(v) for v in drawn[:3]] == [12, 16, 24]
    assert len(set(drawn)) == len(drawn)
    assert len(random_hex(5000)) == 10_000  # more than a pool at once


def test_random_identifiers_differ_in_a_forked_child() -> None:
    """A forked child must not hand out the bytes its parent hands out next (same tags, same branches)."""
    import os

    random_hex(1)  # the pool is filled before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next identifier, to the parent
        try:
            os.write(write_end, random_hex(16).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        child = os.read(read_end, 64).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert len(child) == 32 and child != random_hex(16)


# ---- golden captures (tests/data/sip/captures) ----------------------------------------------------------------
CAPTURE_FILES = sorted(p.name for p in CAPTURES.glob("*.sip"))
# SIPp pads its Content-Length ("Content-Length:   129"): not our canonical spacing, so structural only.
NOT_CANONICAL = {"sipp_uac_invite.sip", "sipp_regexp_invite.sip", "sipp_options.sip"}


def test_captures_exist() -> None:
    assert len(CAPTURE_FILES) >= 12
    prefixes = {name.split("_")[0] for name in CAPTURE_FILES}
    assert prefixes == {"baresip", "sipp", "pyvoip"}


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_capture_round_trip(name: str) -> None:
    data = (CAPTURES / name).read_bytes()
    first = parse_message(data)
    if name in NOT_CANONICAL:
        assert first.serialize() != data
    else:
        assert first.serialize() == data
    assert parse_message(first.serialize()) == parse_message(data)
    assert parse_message(first.serialize()) == first


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_capture_typed_fields(name: str) -> None:
    m = parse_message((CAPTURES / name).read_bytes())
    assert isinstance(m, Request)
    assert m.cseq.method == m.method and m.via.branch and m.via.branch.startswith("z9hG4bK")
    assert m.from_.tag and m.call_id and m.max_forwards == 70
    assert m.content_length == len(m.body)
    for contact in m.contacts:
        assert contact.sip_uri.host == "127.0.0.1"


def test_pyvoip_capture_details() -> None:
    m = parse_message((CAPTURES / "pyvoip_register_auth.sip").read_bytes())
    (contact,) = m.contacts
    assert contact.param("+sip.instance").startswith('"<urn:uuid:')  # type: ignore[union-attr]
    assert m.headers.get_all("allow") == ["INVITE", "ACK", "BYE", "CANCEL"]
    from ccpbx.pbx.sip.headers import AuthParams

    auth = AuthParams.parse(m.headers.get("authorization") or "")
    assert auth.get("realm") == "ccpbx" and auth.get("uri") == "sip:127.0.0.1;transport=UDP"
    assert m.expires == 120 and m.via.wants_rport


def test_baresip_capture_details() -> None:
    m = parse_message((CAPTURES / "baresip_invite.sip").read_bytes())
    assert m.headers.get("supported") == "" and m.header_tokens("supported") == set()
    assert "OPTIONS" in m.headers.get_all("allow") and m.content_type == "application/sdp"
    unregister = parse_message((CAPTURES / "baresip_unregister.sip").read_bytes())
    assert unregister.contacts[0].param("expires") == "0"


NOT_UTF8_REQUEST = (b"INVITE sip:1001@h SIP/2.0\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bK{branch}\r\n"
                    b'From: {display}<sip:a@h>;tag=f{ftag}\r\nTo: <sip:1001@h>{ttag}\r\nCall-ID: c{cid}\r\n'
                    b"CSeq: 1 INVITE\r\nContact: <sip:a@h{contact}>\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("place", ["branch", "ftag", "ttag", "cid", "contact"])
def test_bytes_that_are_not_utf8_in_identifiers_are_a_400(place: str) -> None:
    fields = {"branch": b"1", "display": b"", "ftag": b"1", "ttag": b"", "cid": b"1", "contact": b""}
    fields[place] = {"ttag": b";tag=\xff", "contact": b";x=\xc3("}.get(place, b"\xff\xfe")
    data = NOT_UTF8_REQUEST
    for name, value in fields.items():
        data = data.replace(b"{" + name.encode() + b"}", value)
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status_hint == 400


def test_a_latin1_display_name_is_kept_and_round_trips() -> None:
    data = (NOT_UTF8_REQUEST.replace(b"{display}", b'"M\xfcller" ').replace(b"{branch}", b"1")
            .replace(b"{ftag}", b"1").replace(b"{ttag}", b"").replace(b"{cid}", b"1").replace(b"{contact}", b""))
    request = parse_message(data)
    assert request.from_.display_name == "M\udcfcller"
    assert request.serialize() == data


# ---- where the head ends (§7: CRLF CRLF; bare LF and a mix accepted) ------------------------------------------------
_HEAD_END = re.compile(rb"\r?\n\r?\n")  # the grammar, as a regex: the scan must find exactly what it finds


@settings(max_examples=3000)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b" ", b":"]), max_size=40).map(b"".join))
def test_the_head_ends_where_the_grammar_says(data: bytes) -> None:
    m = _HEAD_END.search(data)
    assert _find_head_end(data) == ((-1, -1) if m is None else (m.start(), m.end()))


def test_head_end_examples() -> None:
    assert _find_head_end(b"A\r\nB: c\r\n\r\nbody") == (7, 11)
    assert _find_head_end(b"A\nB: c\n\nbody") == (6, 8)
    assert _find_head_end(b"A\r\nB: c\n\r\nbody") == (7, 10)
    assert _find_head_end(b"\n\n") == (0, 2)
    assert _find_head_end(b"A\r\nB: c\r\n") == (-1, -1)


_TYPED = ("call_id", "cseq", "via", "from_", "to")
_EDITS = st.lists(st.tuples(
    st.sampled_from(["add", "add_first", "set", "set_all", "remove", "pop_first", "replace_first", "stamp"]),
    st.sampled_from(["Call-ID", "i", "CSeq", "Via", "v", "From", "f", "To", "t", "Contact"]),
    st.integers(1, 9)), max_size=12)
_VALUES = {"call-id": "id{n}@h", "cseq": "{n} INVITE", "via": "SIP/2.0/UDP h{n};branch=z9hG4bK{n}",
           "from": "<sip:a{n}@x>;tag={n}", "to": "<sip:b{n}@y>", "contact": "<sip:c{n}@z>"}


def _typed_of(message: Request) -> list[object]:
    out: list[object] = []
    for name in _TYPED:
        try:
            out.append(getattr(message, name))
        except SipParseError as exc:
            out.append(type(exc))
    return out


@given(_EDITS)
@settings(max_examples=300, deadline=None)
def test_typed_accessors_follow_every_change_of_the_headers(edits: list[tuple[str, str, int]]) -> None:
    # The accessors keep what they parsed until the headers change: after each edit, what they give must be
    # what a fresh parse of the same lines gives (a copy of the headers starts with nothing kept).
    from ccpbx.pbx.sip.headers import canonical_name

    request = parse_request(INVITE)
    _typed_of(request)  # everything kept
    for op, name, n in edits:
        value = _VALUES[canonical_name(name)].format(n=n)
        h = request.headers
        if op == "add":
            h.add(name, value)
        elif op == "add_first":
            h.add(name, value, first=True)
        elif op == "set":
            h.set(name, value)
        elif op == "set_all":
            h.set_all(name, [value, value])
        elif op == "remove":
            h.remove(name)
        elif op == "pop_first":
            h.pop_first(name)
        elif op == "replace_first":
            h.replace_first(name, value)
        elif "via" in h:
            request.set_top_via(request.via.stamped("192.0.2.1", n))
        fresh = Request(method=request.method, uri=request.uri, headers=h.copy(), body=request.body)
        assert _typed_of(request) == _typed_of(fresh)
        assert _typed_of(request) == _typed_of(fresh)  # and again, now from what was kept
