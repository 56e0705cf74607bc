"""Header fields (RFC 3261 §7.3, §20): names, compact forms, lists, Via/RFC 3581, CSeq, digest parameters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.headers import AuthParams, CSeq, Headers, Via, canonical_name, display_name, format_auth

COMPACT = {"i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length", "c": "content-type",
           "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via", "o": "event",
           "u": "allow-events", "r": "refer-to", "b": "referred-by", "x": "session-expires"}


@pytest.mark.parametrize(("short", "long"), sorted(COMPACT.items()))
def test_compact_forms(short: str, long: str) -> None:
    assert canonical_name(short) == long and canonical_name(short.upper()) == long
    headers = Headers([(short.upper(), "value")])
    assert headers.get(long) == "value" and headers.get(long.upper()) == "value" and long in headers


def test_display_names_of_created_headers() -> None:
    assert display_name("call-id") == "Call-ID" and display_name("cseq") == "CSeq"
    assert display_name("www-authenticate") == "WWW-Authenticate" and display_name("max-forwards") == "Max-Forwards"
    headers = Headers()
    headers.add("call-id", "x")
    headers.add("X-Custom", "y")
    assert headers.encode_lines() == ["Call-ID: x", "X-Custom: y"]


def test_raw_names_are_kept_and_lookups_are_case_insensitive() -> None:
    headers = Headers([("v", "SIP/2.0/UDP a"), ("VIA", "SIP/2.0/UDP b, SIP/2.0/UDP c"), ("Subject", "")])
    assert headers.get_all("Via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert list(headers) == [("v", "SIP/2.0/UDP a"), ("VIA", "SIP/2.0/UDP b, SIP/2.0/UDP c"), ("Subject", "")]
    assert headers.encode_lines() == ["v: SIP/2.0/UDP a", "VIA: SIP/2.0/UDP b, SIP/2.0/UDP c", "Subject:"]
    assert headers == Headers([("Via", "SIP/2.0/UDP a"), ("via", "SIP/2.0/UDP b, SIP/2.0/UDP c"), ("s", "")])


def test_list_split_respects_quotes_and_brackets() -> None:
    headers = Headers([("Contact", '"Doe, John" <sip:j@a.example.com;x=1,2>;q=0.5, <sip:k@b.example.com>, '
                                   '"a \\" , b" <sip:l@c.example.com>')])
    assert headers.get_all("m") == ['"Doe, John" <sip:j@a.example.com;x=1,2>;q=0.5', "<sip:k@b.example.com>",
                                    '"a \\" , b" <sip:l@c.example.com>']
    assert headers.get("contact") == '"Doe, John" <sip:j@a.example.com;x=1,2>;q=0.5'


@pytest.mark.parametrize("name", ["WWW-Authenticate", "Authorization", "Proxy-Authenticate",
                                  "Proxy-Authorization", "Date", "Subject", "Call-ID", "User-Agent"])
def test_headers_with_bare_commas_are_never_split(name: str) -> None:
    value = 'Digest realm="a, b", nonce="n", qop="auth,auth-int"' if "Auth" in name else "Sat, 13 Nov 2010 23:29:00 GMT"
    headers = Headers([(name, value)])
    assert headers.get_all(name) == [value] and headers.get(name) == value


def test_set_add_remove_pop() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP a, SIP/2.0/UDP b"), ("To", "<sip:t@x>"), ("via", "SIP/2.0/UDP c")])
    assert headers.pop_first("v") == "SIP/2.0/UDP a"
    assert headers.get_all("via") == ["SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    headers.add("Via", "SIP/2.0/UDP z", first=True)
    assert headers.get("via") == "SIP/2.0/UDP z"
    headers.set("TO", "<sip:u@x>")
    assert headers.get("to") == "<sip:u@x>" and len(headers) == 4
    headers.set_all("via", ["SIP/2.0/UDP 1", "SIP/2.0/UDP 2"])
    assert headers.get_all("via") == ["SIP/2.0/UDP 1", "SIP/2.0/UDP 2"]
    headers.remove("VIA")
    assert "via" not in headers and headers.pop_first("via") is None and headers.get("via", "d") == "d"
    copy = headers.copy()
    copy.add("X", "1")
    assert "x" not in headers


# ---- Via (§20.42, RFC 3581) ----------------------------------------------------------------------------------
def test_via_parse_and_serialise() -> None:
    via = Via.parse("SIP/2.0/udp pc33.atlanta.example.com:5066;branch=z9hG4bK776asdhds;received=192.0.2.1;rport=9")
    assert (via.transport, via.host, via.port) == ("UDP", "pc33.atlanta.example.com", 5066)
    assert via.branch == "z9hG4bK776asdhds" and via.received == "192.0.2.1" and via.rport == 9
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.example.com:5066;branch=z9hG4bK776asdhds;received=192.0.2.1;rport=9"
    v6 = Via.parse("SIP / 2.0 / TCP [2001:db8::1]:5070 ; branch = z9hG4bKx")
    assert v6.host == "2001:db8::1" and v6.port == 5070 and v6.branch == "z9hG4bKx"
    assert str(v6) == "SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKx"


@pytest.mark.parametrize("text", ["SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host:99999", "SIP/2.0/UDP host junk",
                                  "SIP/2.0/UDP host;;branch=x", "SIP/2.0/UDP host;", "HTTP/1.1/TCP host"])
def test_bad_via(text: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(text)


def test_via_rport_states() -> None:
    assert Via.parse("SIP/2.0/UDP h;rport").wants_rport
    assert Via.parse("SIP/2.0/UDP h;rport").rport is None
    assert not Via.parse("SIP/2.0/UDP h").wants_rport
    assert Via.parse("SIP/2.0/UDP h;rport=\u0663").rport is None  # non-ASCII digits are not a port
    assert Via.parse("SIP/2.0/UDP h;rport=70000").rport is None


def test_response_address_rfc3261_and_rfc3581() -> None:
    source = ("192.0.2.9", 40000)
    # RFC 3581 §4: rport present and empty -> the source address and port.
    assert Via.parse("SIP/2.0/UDP h.example.com:5062;rport").response_address(source) == source
    # a received parameter already there wins for the address; rport=value for the port
    assert Via.parse("SIP/2.0/UDP h:5062;received=192.0.2.7;rport=3000").response_address(None) == (
        "192.0.2.7", 3000)
    # §18.2.2: received, no rport -> received address, sent-by port (5060 when absent)
    assert Via.parse("SIP/2.0/UDP h:5062;received=192.0.2.7").response_address(None) == ("192.0.2.7", 5062)
    assert Via.parse("SIP/2.0/UDP h;received=192.0.2.7").response_address(None) == ("192.0.2.7", 5060)
    # maddr -> maddr with the sent-by port
    assert Via.parse("SIP/2.0/UDP h:5070;maddr=239.1.1.1").response_address(source) == ("239.1.1.1", 5070)
    # nothing known but the Via: sent-by
    assert Via.parse("SIP/2.0/UDP h.example.com").response_address(None) == ("h.example.com", 5060)
    assert Via.parse("SIP/2.0/TLS h.example.com").sent_by == ("h.example.com", 5061)
    # no rport asked: the source address, but the sent-by port
    assert Via.parse("SIP/2.0/UDP h:5062").response_address(source) == ("192.0.2.9", 5062)


def test_via_param_edits() -> None:
    via = Via.parse("SIP/2.0/UDP h;branch=z9hG4bK1;rport")
    filled = via.with_param("rport", "4000").with_param("received", "192.0.2.1")
    assert str(filled) == "SIP/2.0/UDP h;branch=z9hG4bK1;rport=4000;received=192.0.2.1"
    assert filled.without_param("RPORT").param("rport") is None


# ---- CSeq, digest ---------------------------------------------------------------------------------------------
def test_cseq() -> None:
    assert CSeq.parse("0009  INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(314159, "INVITE")) == "314159 INVITE"
    assert CSeq.parse(f"{2**31 - 1} ACK").seq == 2**31 - 1
    for bad in (f"{2**31} ACK", "1", "x INVITE", "1 INVITE extra", "-1 ACK", "\u0661 ACK", "9" * 5000 + " ACK",
                "1 IN<VITE"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


def test_auth_params() -> None:
    auth = AuthParams.parse('Digest username="alice",realm="a, b",nonce="4f1b", uri="sip:127.0.0.1;transport=UDP",'
                            'response="7452",algorithm=MD5, qop=auth, nc=00000001, cnonce="x\\"y"')
    assert auth.scheme == "Digest"
    assert auth.get("realm") == "a, b" and auth.get("uri") == "sip:127.0.0.1;transport=UDP"
    assert auth.get("algorithm") == "MD5" and auth.get("nc") == "00000001" and auth.get("cnonce") == 'x"y'
    assert auth.as_dict()["username"] == "alice" and auth.get("missing") is None
    for bad in ("", "Digest realm", 'Digest realm="x", =y', '"Digest" realm="x"', 'Digest realm="open'):
        with pytest.raises(SipParseError):
            AuthParams.parse(bad)


_AUTH_PIECES = st.sampled_from(['username', 'realm', 'Nonce', 'uri', '=', ',', ' ', '\t', '"', '\\', '<', '>',
                                 '"a, b"', '"x\\"y"', 'MD5', 'sip:1@h;x=y', 'a b', '(', '\n', '', '0a1F', 'é'])
_AUTH_VALUES = st.sampled_from(['"alice"', 'MD5', '""', '', '"a, b"', '"x\\"y"', '<sip:a@h>', '<a, b=c>', 'a<b',
                                '"open', 'x"y"', '"q"z', 'sip:h;p=1', 'é', '00000001'])
_AUTH_TEXT = st.one_of(
    st.lists(_AUTH_PIECES, max_size=14).map("".join),
    st.lists(st.tuples(st.sampled_from(["realm", "NC", "x-y", "a b", "(n", ""]), st.sampled_from(["", " "]),
                       st.sampled_from(["=", " = ", ""]), _AUTH_VALUES, st.sampled_from([",", ", ", " ,", ",,"])),
             max_size=5).map(lambda items: "".join("".join(item) for item in items)),
)


@settings(max_examples=800, deadline=None)
@given(_AUTH_TEXT)
def test_digest_parameters_read_in_one_pass_as_the_general_way_reads_them(rest: str) -> None:
    """The one-regex reading of the common form gives what the token-at-a-time reading gives, and declines
    (None) everything else, errors included."""
    from ccpbx.pbx.sip.headers import _auth_params_fast, _auth_params_general

    fast = _auth_params_fast(rest)
    try:
        general = _auth_params_general(rest)
    except SipParseError:
        assert fast is None
        return
    assert fast is None or fast == general


def test_what_phones_send_is_read_in_one_pass() -> None:
    from ccpbx.pbx.sip.headers import _auth_params_fast

    rest = ('username="1001",realm="ccpbx",uri="sip:127.0.0.1:5060",nonce="19a.5f3.0123",response="0123abcd",'
            'algorithm=MD5, qop=auth, nc=00000001 , cnonce="x\\"y", opaque=""')
    assert _auth_params_fast(rest) == [("username", "1001"), ("realm", "ccpbx"), ("uri", "sip:127.0.0.1:5060"),
                                       ("nonce", "19a.5f3.0123"), ("response", "0123abcd"), ("algorithm", "MD5"),
                                       ("qop", "auth"), ("nc", "00000001"), ("cnonce", 'x"y'), ("opaque", "")]


def test_format_auth_round_trip() -> None:
    text = format_auth("Digest", [("realm", 'the "pbx"'), ("nonce", "abc"), ("algorithm", "MD5"), ("stale", "FALSE")])
    assert text == 'Digest realm="the \\"pbx\\"", nonce="abc", algorithm=MD5, stale=FALSE'
    assert AuthParams.parse(text).params == (("realm", 'the "pbx"'), ("nonce", "abc"), ("algorithm", "MD5"),
                                             ("stale", "FALSE"))


def test_lookup_index_follows_every_change() -> None:
    # Lookups go through a cached first-position index; each mutation must drop it.
    h = Headers([("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("To", "<sip:b@x>"), ("v", "SIP/2.0/UDP b;branch=z9hG4bK2")])
    assert "via" in h and "Contact" not in h
    assert h.get_all("Via") == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b;branch=z9hG4bK2"]
    h.add("Contact", "<sip:c@y>")
    assert h.get("m") == "<sip:c@y>"
    h.add("Via", "SIP/2.0/UDP z;branch=z9hG4bK0", first=True)
    assert h.get("Via") == "SIP/2.0/UDP z;branch=z9hG4bK0"
    assert h.pop_first("Via") == "SIP/2.0/UDP z;branch=z9hG4bK0"
    assert h.get("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    h.remove("To")
    assert "To" not in h and h.get("To") is None
    assert h.get("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    h.set("Via", "SIP/2.0/UDP q;branch=z9hG4bK9")
    assert h.get_all("Via") == ["SIP/2.0/UDP q;branch=z9hG4bK9"]
    h.set_all("Via", ["SIP/2.0/UDP r;branch=z9hG4bK7", "SIP/2.0/UDP s;branch=z9hG4bK8"])
    assert h.get_all("Via") == ["SIP/2.0/UDP r;branch=z9hG4bK7", "SIP/2.0/UDP s;branch=z9hG4bK8"]
    c = h.copy()
    c.remove("Via")
    assert "Via" in h and "Via" not in c and c.get("Contact") == "<sip:c@y>"


def test_stamping_the_top_via_replaces_it_in_place_also_in_a_comma_list() -> None:
    from ccpbx.pbx.sip.message import Request, parse_message

    data = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP a:5060;branch=z9hG4bK1;rport, SIP/2.0/UDP b;branch=z9hG4bK2"
            b"\r\nVia: SIP/2.0/UDP c;branch=z9hG4bK3\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:pbx>\r\nCall-ID: c\r\n"
            b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    request = parse_message(data)
    assert isinstance(request, Request)
    assert request.headers.get("call-id") == "c"  # the look-up index is built
    kept = {name: request.headers.typed[name] for name in ("call-id", "cseq", "from", "to")}
    request.set_top_via(request.via.with_param("rport", "4000").with_param("received", "10.0.0.9"))
    assert [str(v) for v in request.vias] == [
        "SIP/2.0/UDP a:5060;branch=z9hG4bK1;rport=4000;received=10.0.0.9", "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3"]
    assert request.headers.get("cseq") == "1 OPTIONS" and request.via.rport == 4000
    # the other typed values, parsed when the request was validated, are kept: the stamp touched the Via only
    assert all(request.headers.typed.get(name) is value for name, value in kept.items())
    assert b"Via: SIP/2.0/UDP a:5060;branch=z9hG4bK1;rport=4000;received=10.0.0.9, SIP/2.0/UDP b" in request.serialize()
    assert not request.headers.replace_first("route", "<sip:r>") and "route" not in request.headers


@given(st.lists(st.sampled_from(["branch=z9hG4bK1", "rport", "rport=5", "received=1.2.3.4", "RPort", "lr", "x=y"]),
                max_size=6))
@settings(max_examples=200, deadline=None)
def test_a_stamped_via_is_what_setting_rport_then_received_gives(params: list[str]) -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5060" + "".join(f";{p}" for p in params))
    assert via.stamped("192.0.2.9", 4000) == via.with_param("rport", "4000").with_param("received", "192.0.2.9")


def test_firsts_gives_what_get_gives_for_each_name() -> None:
    headers = Headers([("f", "<sip:a@h>;tag=1"), ("TO", "<sip:b@h>"), ("i", "c1"), ("CSeq", "1 INVITE"),
                       ("Call-ID", "second")])
    names = ("from", "to", "call-id", "cseq", "subject")
    assert headers.firsts(names) == [headers.get(n) for n in names] == ["<sip:a@h>;tag=1", "<sip:b@h>", "c1",
                                                                       "1 INVITE", None]
    headers.add("Subject", "hi")  # a change is seen (the look-up index is rebuilt)
    assert headers.firsts(("subject",)) == ["hi"]
