"""RFC 4475 torture messages (tests/data/sip/torture/) against the message parser.

Valid messages must parse with the right fields; invalid ones raise ``SipParseError`` with the status to answer.
Where RFC 4475 lets an element be liberal, the chosen behaviour is asserted and the RFC's note quoted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.framing import StreamFramer
from ccpbx.pbx.sip.message import Request, Response, SipMessage, parse_message
from ccpbx.pbx.sip.uri import AbsoluteUri, SipUri

DATA = Path(__file__).resolve().parent.parent / "data" / "sip" / "torture"


def load(kind: str, name: str) -> bytes:
    return (DATA / kind / f"{name}.sip").read_bytes()


def parse_valid(name: str) -> SipMessage:
    return parse_message(load("valid", name))


def request(name: str) -> Request:
    message = parse_valid(name)
    assert isinstance(message, Request)
    return message


def test_every_data_file_is_covered() -> None:
    names = {p.stem for p in (DATA / "valid").glob("*.sip")} | {p.stem for p in (DATA / "invalid").glob("*.sip")}
    covered = set(VALID_CHECKS) | {case[0] for case in INVALID} | set(LIBERAL)
    assert names == covered


# ---- §3.1.1 valid messages ----------------------------------------------------------------------------------
def check_wsinv() -> None:
    m = request("wsinv")
    assert m.method == "INVITE"
    assert isinstance(m.uri, SipUri) and m.uri.params == (("unknownparam", None),)
    assert m.to.uri == SipUri(user="vivekg", host="chair-dnrc.example.com") and m.to.tag == "1918181833n"
    assert m.from_.display_name == 'J Rosenberg \\"' and m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.cseq.seq == 9 and m.cseq.method == "INVITE"
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    vias = m.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239")]
    assert m.headers.get("subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    (contact,) = m.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert m.routes[0].uri.params[-1] == ("unknown-no-value", None)  # type: ignore[union-attr]
    assert len(m.body) == 150 and m.content_type == "application/sdp"


def check_intmeth() -> None:
    m = request("intmeth")
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.uri.host == "example.com" and m.uri.params == () and m.uri.headers == ()
    assert m.via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.param("fromParam''~+*_!.-%") == '"работающий"'
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.cseq.method == m.method and m.max_forwards == 255
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def check_esc01() -> None:
    m = request("esc01")
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "sips%3Auser%40example.com" and m.uri.user_unescaped == "sips:user@example.com"
    assert m.to.sip_uri.user_unescaped == "user"
    assert m.from_.sip_uri.user_unescaped == "I have spaces"
    assert m.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    (contact,) = m.contacts
    assert contact.sip_uri.user_unescaped == "caller"
    # "value%41" is NOT "valueA": unescaping is never recursive, and parameters are kept as received.
    assert contact.sip_uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    assert m.content_type == "application/sdp"


def check_escnull() -> None:
    m = request("escnull")
    assert m.to.sip_uri.user_unescaped == "null-\x00-null"
    assert [c.sip_uri.user_unescaped for c in m.contacts] == ["\x00", "\x00\x00"]
    assert m.content_length == 0


def check_esc02() -> None:
    m = request("esc02")
    assert m.method == "RE%47IST%45R" and m.method != "REGISTER"
    assert m.to.display_name == "%Z%45"
    assert m.via.branch == "z9hG4bK209%fzsnel234"
    # C%6Fntact is an unknown header, not Contact: two Contacts.
    assert [str(c.uri) for c in m.contacts] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def check_lwsdisp() -> None:
    m = request("lwsdisp")
    assert m.from_.display_name == "caller" and m.from_.tag == "323"


def check_longreq() -> None:
    m = request("longreq")
    assert len(m.vias) == 34
    assert m.vias[0].host == "sip33.example.com" and m.vias[-1].received == "192.0.2.5"
    assert m.vias[-1].branch == "very" + "long" * 50 + "branchvalue"
    assert m.to.sip_uri.port == 6000
    assert m.from_.tag == "12" + "982" * 50 + "424"  # addr-spec: the parameters belong to the header (§20.10)
    assert m.from_.param("unknownValueless" + "paramname" * 10) is None
    assert m.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert len(m.body) == 150


def check_dblreq() -> None:
    # §3.1.1.8: over UDP the bytes after Content-Length's body are discarded.
    m = request("dblreq")
    assert m.method == "REGISTER" and m.body == b""
    assert m.contacts[0].uri == SipUri(user="j.user", host="host.example.com")
    # Over a stream the same bytes are two messages.
    items = StreamFramer().feed(load("valid", "dblreq"))
    assert [i.method for i in items if isinstance(i, Request)] == ["REGISTER", "INVITE"]
    assert len(items) == 2 and len(items[1].body) == 150


def check_semiuri() -> None:
    m = request("semiuri")
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "user;par=u%40example.net" and m.uri.host == "example.com" and m.uri.params == ()
    assert m.headers.get_all("accept") == ["application/sdp", "application/pkcs7-mime", "multipart/mixed",
                                           "multipart/signed", "message/sip", "message/sipfrag"]


def check_transports() -> None:
    m = request("transports")
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def check_mpart01() -> None:
    m = request("mpart01")
    assert m.content_type == "multipart/mixed"
    assert m.body.endswith(b"--7a9cbec02ceef655--\r\n") and bytes(range(256)) in m.body
    assert m.via.wants_rport and m.via.rport is None


def check_unreason() -> None:
    m = parse_valid("unreason")
    assert isinstance(m, Response) and m.status == 200
    assert m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(m.body) == 154


def check_noreason() -> None:
    m = parse_valid("noreason")
    assert isinstance(m, Response) and m.status == 100 and m.reason == ""
    # "a liberal receiver would accept it anyway" without the SP after the code (§3.1.1.13): so does ccpbx.
    liberal = load("valid", "noreason").replace(b"SIP/2.0 100 \r\n", b"SIP/2.0 100\r\n")
    m2 = parse_message(liberal)
    assert isinstance(m2, Response) and m2.status == 100 and m2.reason == ""


def check_unkscm() -> None:
    # §3.3.2: well-formed; a UA answers 416, which is what Request.sip_uri raises.
    m = request("unkscm")
    assert isinstance(m.uri, AbsoluteUri) and m.uri.opaque == "totallyopaquecontent"
    with pytest.raises(SipParseError) as info:
        m.sip_uri  # noqa: B018
    assert info.value.status_hint == 416


def check_novelsc() -> None:
    m = request("novelsc")
    assert m.uri == AbsoluteUri("soap.beep", "//192.0.2.103:3002")
    with pytest.raises(SipParseError) as info:
        m.sip_uri  # noqa: B018
    assert info.value.status_hint == 416


VALID_CHECKS = {
    "wsinv": check_wsinv, "intmeth": check_intmeth, "esc01": check_esc01, "escnull": check_escnull,
    "esc02": check_esc02, "lwsdisp": check_lwsdisp, "longreq": check_longreq, "dblreq": check_dblreq,
    "semiuri": check_semiuri, "transports": check_transports, "mpart01": check_mpart01,
    "unreason": check_unreason, "noreason": check_noreason, "unkscm": check_unkscm, "novelsc": check_novelsc,
}


@pytest.mark.parametrize("name", sorted(VALID_CHECKS))
def test_valid_message(name: str) -> None:
    VALID_CHECKS[name]()


@pytest.mark.parametrize("name", sorted(VALID_CHECKS))
def test_valid_message_structural_round_trip(name: str) -> None:
    first = parse_valid(name)
    again = parse_message(first.serialize())
    assert again == first


@pytest.mark.parametrize("name", sorted(VALID_CHECKS))
def test_valid_message_over_a_stream_in_small_reads(name: str) -> None:
    data = parse_valid(name).serialize()  # carries a correct Content-Length, required on streams
    framer = StreamFramer()
    items = []
    for i in range(0, len(data), 7):
        items.extend(framer.feed(data[i:i + 7]))
    assert items == [parse_message(data)]


# ---- §3.1.2 invalid messages ---------------------------------------------------------------------------------
# (name, status_hint, (defect, repair) or a list of them): the repaired message must parse, which shows the
# error is the defect's and nothing else's.
Repair = tuple[bytes, bytes] | list[tuple[bytes, bytes]] | None
INVALID: list[tuple[str, int, Repair]] = [
    # §3.1.2.1 "This message is syntactically invalid ... should respond with a 400"
    ("badinv01", 400, (b"192.0.2.15;;,;,,", b"192.0.2.15;branch=z9hG4bK1")),
    ("clerr", 400, (b"Content-Length: 9999", b"Content-Length: 154")),  # §3.1.2.2 (UDP: 400)
    ("ncl", 400, (b"Content-Length: -999", b"Content-Length: 152")),  # §3.1.2.3
    # §3.1.2.4 "should respond with a 400 Bad Request due to the CSeq error"
    ("scalar02", 400, [(b"CSeq: 36893488147419103232", b"CSeq: 1"), (b"Max-Forwards: 300", b"Max-Forwards: 70")]),
    ("scalarlg", 400, (b"CSeq: 9292394834772304023312", b"CSeq: 9")),  # §3.1.2.5
    ("quotbal", 400, (b'"Mr. J. User <', b'"Mr. J. User" <')),  # §3.1.2.6
    ("ltgtruri", 400, (b"INVITE <sip:user@example.com> SIP", b"INVITE sip:user@example.com SIP")),  # §3.1.2.7
    ("lwsruri", 400, (b"example.com; lr SIP", b"example.com;lr SIP")),  # §3.1.2.8
    # §3.1.2.9 "It is acceptable to reject this request as malformed": ccpbx is strict on the start line.
    ("lwsstart", 400, (b"INVITE  sip:user@example.com  SIP", b"INVITE sip:user@example.com SIP")),
    # §3.1.2.10 "It is reasonable to always reject a request with this error with a 400 Bad Request."
    ("trws", 400, (b"SIP/2.0  \r\n", b"SIP/2.0\r\n")),
    # §3.1.2.11 "It is acceptable for an element to reject this request with a 400 Bad Request."
    ("escruri", 400, (b"?Route=%3Csip:example.com%3E", b"")),
    # §3.1.2.15 "It is reasonable to always reject this kind of error with a 400 Bad Request response."
    ("baddn", 400, [(b"Bell, Alexander <", b'"Bell, Alexander" <'), (b"Watson, Thomas <", b'"Watson, Thomas" <')]),
    ("badvers", 505, (b"SIP/7.0\r\n", b"SIP/2.0\r\n")),  # §3.1.2.16 "respond with a 505"
    ("mismatch01", 400, (b"CSeq: 8 INVITE", b"CSeq: 8 OPTIONS")),  # §3.1.2.17
    # §3.1.2.18 "should respond with a 400 Bad Request (not a 501)"
    ("mismatch02", 400, (b"CSeq: 8 INVITE", b"CSeq: 8 NEWMETHOD")),
    ("bigcode", 400, (b"SIP/2.0 4294967301 ", b"SIP/2.0 400 ")),  # §3.1.2.19
    ("multi01", 400, None),  # §3.3.8 "An element receiving this request would respond with a 400"
    ("mcl01", 400, (b"Content-Length: 13\r\n", b"")),  # §3.3.9 "should respond with an error"
]


@pytest.mark.parametrize(("name", "status", "repair"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_message(name: str, status: int, repair: Repair) -> None:
    data = load("invalid", name)
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status_hint == status
    if repair is not None:
        for defect, fix in repair if isinstance(repair, list) else [repair]:
            assert defect in data
            data = data.replace(defect, fix)
        parse_message(data)


def test_badinv01_contact_is_rejected_when_used() -> None:
    repaired = load("invalid", "badinv01").replace(b"192.0.2.15;;,;,,", b"192.0.2.15;branch=z9hG4bK1")
    message = parse_message(repaired)
    with pytest.raises(SipParseError):
        message.contacts  # noqa: B018  (";;;;": empty parameters)


def test_scalar02_overlarge_expires_raises_on_access() -> None:
    repaired = load("invalid", "scalar02").replace(b"CSeq: 36893488147419103232", b"CSeq: 1")
    repaired = repaired.replace(b"Max-Forwards: 300", b"Max-Forwards: 70")
    message = parse_message(repaired)
    with pytest.raises(SipParseError):
        message.expires  # noqa: B018
    with pytest.raises(SipParseError):
        parse_message(load("invalid", "scalar02").replace(b"CSeq: 36893488147419103232", b"CSeq: 1"))


# ---- messages the RFC lets an element accept ----------------------------------------------------------------
def liberal_baddate() -> None:
    # §3.1.2.12: "An element wishing to be liberal in what it accepts could ignore this value altogether if it
    # wasn't going to use the Date header field anyway." ccpbx never interprets Date: kept verbatim, unsplit.
    m = parse_message(load("invalid", "baddate"))
    assert m.headers.get_all("date") == ["Fri, 01 Jan 2010 16:00:00 EST"]


def liberal_badaspec() -> None:
    # §3.1.2.14: "Elements attempting to be liberal may ignore the spaces." The To URI inside < > is trimmed.
    m = parse_message(load("invalid", "badaspec"))
    assert m.to.uri == SipUri(user="t.watson", host="example.org")
    assert m.to.display_name == "Watson, Thomas" and m.from_.display_name == "Bell, Alexander"


def liberal_regbadct() -> None:
    # §3.1.2.13: "It is reasonable for a registrar to reject this request with a 400 Bad Request." Contact is
    # parsed lazily, so the message parses and the registrar's access to its contacts raises the 400.
    m = parse_message(load("invalid", "regbadct"))
    with pytest.raises(SipParseError) as info:
        m.contacts  # noqa: B018
    assert info.value.status_hint == 400


LIBERAL = {"baddate": liberal_baddate, "badaspec": liberal_badaspec, "regbadct": liberal_regbadct}


@pytest.mark.parametrize("name", sorted(LIBERAL))
def test_liberal_message(name: str) -> None:
    LIBERAL[name]()
