"""Hypothesis properties of the SIP message layer: round trip, never crash, stream framing anywhere split."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.framing import BadMessage, FramingError, KeepAlive, StreamFramer
from ccpbx.pbx.sip.headers import AuthParams, Headers, Via
from ccpbx.pbx.sip.message import Request, Response, SipMessage, parse_message
from ccpbx.pbx.sip.uri import NameAddr, SipUri, quote_string

# Example counts are kept modest so the file runs in well under 30 s on two cores; generating whole messages
# is what costs, the parser itself is cheap, so the never-crash properties get more examples.
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(SETTINGS, max_examples=80)
CHEAP = settings(SETTINGS, max_examples=500)
DATA = Path(__file__).resolve().parent.parent / "data" / "sip"
SEEDS = [p.read_bytes() for p in sorted((DATA / "captures").glob("*.sip"))] + [
    p.read_bytes() for p in sorted((DATA / "torture" / "valid").glob("*.sip"))]

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join).filter(lambda h: not h.replace(".", "").isdigit())
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.from_regex(r"[0-9a-f]{1,4}", fullmatch=True), min_size=8, max_size=8).map(":".join)
hosts = st.one_of(hostnames, ipv4, ipv6, st.just("::1"))
ports = st.none() | st.integers(1, 65535)
users = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/", min_size=1, max_size=10) | st.builds(
    lambda a, b: f"{a}%{b:02X}", st.text("abc", min_size=1, max_size=3), st.integers(0, 255))
params = st.lists(st.tuples(tokens, st.none() | tokens), max_size=3).map(tuple)
display_texts = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=12)


@st.composite
def sip_uris(draw: st.DrawFn, with_headers: bool = True) -> SipUri:
    user = draw(st.none() | users)
    password = draw(st.none() | st.text("abc123&=+$,", max_size=6)) if user else None
    headers = draw(st.lists(st.tuples(tokens, st.text("abc123%-", max_size=5)), max_size=2).map(tuple)) \
        if with_headers else ()
    return SipUri(draw(st.sampled_from(["sip", "sips"])), user, password, draw(hosts), draw(ports), draw(params),
                  headers)


@st.composite
def name_addrs(draw: st.DrawFn) -> NameAddr:
    display = draw(st.none() | display_texts)
    return NameAddr(draw(sip_uris()), display, draw(params))


@st.composite
def vias(draw: st.DrawFn) -> Via:
    branch = "z9hG4bK" + draw(tokens)
    extra = draw(st.lists(st.tuples(st.sampled_from(["rport", "received", "ttl", "x"]), st.none() | tokens),
                          max_size=2))
    return Via(draw(st.sampled_from(["UDP", "TCP", "TLS", "WS", "SCTP"])), draw(hosts), draw(ports),
               (("branch", branch), *extra))


header_values = st.text(st.characters(min_codepoint=32, max_codepoint=0x10FF, exclude_characters="\x7f"),
                        max_size=30).map(str.strip)
extra_names = st.sampled_from(["Subject", "s", "k", "Supported", "User-Agent", "X-Custom", "o", "u", "Allow",
                               "Accept", "c", "e", "Date", "WWW-Authenticate", "Warning"]) | tokens.map("X-".__add__)


@st.composite
def messages(draw: st.DrawFn) -> SipMessage:
    via_list = draw(st.lists(vias(), min_size=1, max_size=4))
    fields: list[tuple[str, str]] = []
    if draw(st.booleans()):
        fields.append((draw(st.sampled_from(["Via", "v", "VIA"])), ", ".join(map(str, via_list))))
    else:
        fields.extend((draw(st.sampled_from(["Via", "v"])), str(v)) for v in via_list)
    method = draw(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE"]) | tokens)
    to = draw(name_addrs())
    fields += [(draw(st.sampled_from(["From", "f", "FROM"])), str(draw(name_addrs()).with_tag(draw(tokens)))),
               (draw(st.sampled_from(["To", "t"])), str(to)),
               (draw(st.sampled_from(["Call-ID", "i", "call-id"])), draw(tokens) + "@" + draw(hosts)),
               ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
               ("Max-Forwards", str(draw(st.integers(0, 255))))]
    contacts = draw(st.lists(name_addrs(), max_size=3))
    if contacts:
        fields.append((draw(st.sampled_from(["Contact", "m"])), ", ".join(map(str, contacts))))
    fields += draw(st.lists(st.tuples(extra_names, header_values), max_size=5))
    if draw(st.booleans()):
        fields.append(("X-Quoted", quote_string(draw(display_texts))))
    order = draw(st.permutations(range(len(fields))))
    headers = Headers([fields[i] for i in order])
    body = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        return Request(headers=headers, body=body, method=method, uri=draw(sip_uris(with_headers=False)))
    status = draw(st.integers(100, 699))
    reason = draw(st.text(st.characters(min_codepoint=32, max_codepoint=0x4FF, exclude_characters="\x7f"),
                          max_size=20)).strip()
    headers.set("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")
    return Response(headers=headers, body=body, status=status, reason=reason)


def touch_everything(message: SipMessage) -> None:
    """Every lazy accessor either works or raises SipParseError."""
    for name in ("call_id", "cseq", "vias", "via", "from_", "to", "contacts", "is_wildcard_contact", "routes",
                 "record_routes", "max_forwards", "expires", "content_length", "content_type"):
        try:
            getattr(message, name)
        except SipParseError:
            pass
    for value in message.headers.get_all("authorization") + message.headers.get_all("www-authenticate"):
        try:
            AuthParams.parse(value)
        except SipParseError:
            pass
    if isinstance(message, Request):
        try:
            message.sip_uri  # noqa: B018
        except SipParseError:
            pass


# ---- (a) round trip -----------------------------------------------------------------------------------------
@HEAVY
@given(messages())
def test_round_trip(message: SipMessage) -> None:
    data = message.serialize()
    parsed = parse_message(data)
    assert parsed == message
    assert parse_message(data, stream=True) == message
    assert parsed.serialize() == data
    if isinstance(message, Request):
        assert len(parsed.vias) >= 1 and parsed.to == NameAddr.parse(message.headers.get("to") or "")


@SETTINGS
@given(sip_uris())
def test_uri_round_trip(uri: SipUri) -> None:
    assert SipUri.parse(str(uri)) == uri


@SETTINGS
@given(name_addrs())
def test_name_addr_round_trip(addr: NameAddr) -> None:
    assert NameAddr.parse(str(addr)) == addr


@SETTINGS
@given(vias())
def test_via_round_trip(via: Via) -> None:
    assert Via.parse(str(via)) == via


# ---- (b) never crash ----------------------------------------------------------------------------------------
def parse_or_error(data: bytes) -> None:
    for stream in (False, True):
        try:
            message = parse_message(data, stream=stream)
        except SipParseError as exc:
            assert 400 <= exc.status_hint <= 599
            continue
        assert isinstance(message, Request | Response)
        touch_everything(message)


@CHEAP
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    parse_or_error(data)


@CHEAP
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_messages_never_crash(seed: bytes, data: st.DataObject) -> None:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete", "dup"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip" and buf:
            buf[pos] = data.draw(st.sampled_from([0, 9, 10, 13, 32, 34, 44, 58, 59, 60, 62, 64, 92, 0xFF]) |
                                 st.integers(0, 255))
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = data.draw(st.sampled_from([b"\r\n", b"\r\n ", b",", b";", b'"', b"<", b">", b"\\",
                                                      b"\r\n\r\n", b"%", b"9" * 40]) | st.binary(max_size=8))
        elif kind == "delete":
            del buf[pos:pos + data.draw(st.integers(1, 20))]
        else:
            buf[pos:pos] = buf[pos:pos + data.draw(st.integers(1, 40))]
    parse_or_error(bytes(buf))


@SETTINGS
@given(st.sampled_from(SEEDS), st.integers(0, 10_000))
def test_truncated_valid_messages_raise(seed: bytes, cut: int) -> None:
    message = parse_message(seed)
    data = message.serialize()
    cut %= len(data)
    try:
        parse_message(data[:cut])
    except SipParseError:
        return
    # Every strict prefix lacks either the empty line or body bytes that Content-Length announces.
    raise AssertionError(f"truncated at {cut} of {len(data)} parsed")


# ---- (c) stream framing -------------------------------------------------------------------------------------
@settings(HEAVY, max_examples=40)
@given(st.lists(messages(), min_size=1, max_size=3), st.lists(st.integers(0, 4000), max_size=8),
       st.lists(st.booleans(), max_size=4))
def test_stream_split_anywhere(msgs: list[SipMessage], cuts: list[int], pings: list[bool]) -> None:
    wire = b""
    expected: list[object] = []
    for i, message in enumerate(msgs):
        if i < len(pings) and pings[i]:
            wire += b"\r\n\r\n"
            expected.append(KeepAlive())
        data = message.serialize()
        wire += data
        expected.append(parse_message(data))
    points = sorted({c % (len(wire) + 1) for c in cuts})
    framer = StreamFramer()
    got: list[object] = []
    start = 0
    for point in [*points, len(wire)]:
        got.extend(framer.feed(wire[start:point]))
        start = point
    assert got == expected and not framer.broken


@CHEAP
@given(st.lists(st.binary(max_size=120) | st.sampled_from(SEEDS[:4]), max_size=6))
def test_framer_never_raises(chunks: list[bytes]) -> None:
    framer = StreamFramer()
    for chunk in chunks:
        for item in framer.feed(chunk):
            assert isinstance(item, Request | Response | KeepAlive | BadMessage | FramingError)
            if isinstance(item, Request | Response):
                touch_everything(item)
