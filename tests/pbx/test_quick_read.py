"""The quick reading of a REGISTER or a new INVITE (:mod:`ccpbx.pbx.sip.quick_read`) in a SIP worker: the shapes
phones send are read quickly, anything off the strict shape is left to the full parser, and a worker answers
every REGISTER and INVITE byte for byte as it would with the full parser alone (hypothesis: generated requests,
plain and with credentials, through two workers in the same state)."""

from __future__ import annotations

import contextlib
import types
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccpbx.pbx import sip_worker
from ccpbx.pbx.sip import auth as auth_module
from ccpbx.pbx.sip.auth import DigestAuthenticator
from ccpbx.pbx.sip.message import Request, parse_message
from ccpbx.pbx.sip.quick_read import read_credentials, read_request
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip_worker import INVITE_DECLINED, LEASE_HEADERS, NONCE_CLOCK_MARGIN_MS, Challenger, Lease
from tests.pbx.test_auth import answer
from tests.pbx.test_register_leases import ISSUER, answer_any, register_bytes, server_register, server_side
from tests.pbx.test_sip_worker import PHONE, setup

NOW = 5_000
WALL = 1_700_000_000.25
PASSWORD = "pw-201-secret"
SOURCES: list[Destination] = [PHONE, ("udp", "10.0.0.1", 5999), ("udp", "10.0.0.7", 5060), ("udp", "127.0.0.1", 40000)]


def sipp_register(auth: str | None = None) -> bytes:
    """What benchmarks/scenarios/bench_register.xml sends, its fields filled in."""
    lines = ["REGISTER sip:127.0.0.1:5060 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-4242-1-0;rport",
             "From: <sip:201@127.0.0.1>;tag=4242SIPpTag001", "To: <sip:201@127.0.0.1>",
             "Call-ID: 1-4242@127.0.0.1", "CSeq: 1 REGISTER", "Contact: <sip:201@127.0.0.1:40000;transport=UDP>",
             "Expires: 3600", "Max-Forwards: 70"]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


BARESIP = (b"REGISTER sip:pbx.example SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK5f3a;rport\r\n"
           b"Contact: <sip:201-0x55@10.0.0.1:5060;transport=udp>;expires=3600;"
           b"+sip.instance=\"<urn:uuid:6cbd5a1e-0000-4000-8000-000000000001>\"\r\n"
           b"Max-Forwards: 70\r\nTo: <sip:201@pbx.example>\r\nFrom: \"Alice\" <sip:201@pbx.example>;tag=2f8d\r\n"
           b"Call-ID: 9a1b2c3d4e5f\r\nCSeq: 7 REGISTER\r\nUser-Agent: baresip v2.9.0 (x86_64/linux)\r\n"
           b"Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER\r\n"
           b"Supported: replaces,norefersub\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("data", [register_bytes(), sipp_register(), BARESIP, register_bytes(answer_any(), cseq=3)],
                         ids=["tests", "sipp", "baresip", "credentials"])
def test_the_shapes_phones_send_are_read_quickly_as_the_parser_reads_them(data: bytes) -> None:
    quick = read_request(data, "REGISTER", LEASE_HEADERS)
    request = parse_message(data)
    assert quick is not None and isinstance(request, Request)
    assert quick.uri == str(request.uri) and quick.to_user == request.to.uri.user  # type: ignore[union-attr]
    assert quick.from_tag == request.from_.tag and quick.cseq == request.cseq.seq
    assert quick.fields["call-id"] == request.call_id and quick.max_forwards == request.max_forwards
    assert quick.via == str(request.via) and quick.wants_rport == request.via.wants_rport
    assert quick.fields == {name: value for name, _, value in request.headers._fields}  # each line's value


def _with(line: str, replacement: str, data: bytes = BARESIP) -> bytes:
    assert line.encode() in data
    return data.replace(line.encode(), replacement.encode(), 1)


@pytest.mark.parametrize(("name", "data"), [
    ("bare line ends", BARESIP.replace(b"\r\n", b"\n")),
    ("a folded line", _with("Supported: replaces,norefersub", "Supported: replaces,\r\n norefersub")),
    ("bytes that are not ASCII", _with("baresip v2.9.0", "baresip v2.9.0 \xe9")),
    ("a body", _with("Content-Length: 0\r\n\r\n", "Content-Length: 2\r\n\r\nab")),
    ("no Content-Length but a body", BARESIP.replace(b"Content-Length: 0\r\n", b"") + b"ab"),
    ("a header twice", _with("Expires: 3600", "Expires: 3600\r\nExpires: 60")),
    ("a header off the list", _with("Expires: 3600", "Expires: 3600\r\nPath: <sip:edge>")),
    ("Require", _with("Expires: 3600", "Expires: 3600\r\nRequire: outbound")),
    ("two Vias", _with("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK5f3a;rport",
                       "Via: SIP/2.0/UDP edge;branch=z9hG4bKe\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK5f3a")),
    ("an IPv6 Via", _with("10.0.0.1:5060;branch", "[2001:db8::1]:5060;branch")),
    ("a Via over TCP", _with("SIP/2.0/UDP", "SIP/2.0/TCP")),
    ("rport with a value", _with(";rport\r\n", ";rport=5060\r\n")),
    ("received", _with(";rport\r\n", ";received=10.0.0.9\r\n")),
    ("maddr", _with(";rport\r\n", ";maddr=10.0.0.9\r\n")),
    ("an upper-case Via parameter", _with(";branch=", ";Branch=")),
    ("a To tag", _with("To: <sip:201@pbx.example>", "To: <sip:201@pbx.example>;tag=1")),
    ("no From tag", _with(";tag=2f8d", "")),
    ("another From parameter", _with(";tag=2f8d", ";tag=2f8d;x=1")),
    ("an escaped user", _with("To: <sip:201@", "To: <sip:2%401@")),
    ("a display name without quotes", _with('"Alice" <sip', "Alice <sip")),
    ("no angle brackets", _with("To: <sip:201@pbx.example>", "To: sip:201@pbx.example")),
    ("a port past 65535", _with("To: <sip:201@pbx.example>", "To: <sip:201@pbx.example:70000>")),
    ("Max-Forwards past 255", _with("Max-Forwards: 70", "Max-Forwards: 256")),
    ("a leading zero", _with("CSeq: 7 REGISTER", "CSeq: 07 REGISTER")),
    ("another CSeq method", _with("CSeq: 7 REGISTER", "CSeq: 7 INVITE")),
    ("a Call-ID with a space", _with("Call-ID: 9a1b2c3d4e5f", "Call-ID: 9a1b 2c3d")),
    ("a Request-URI with headers", _with("REGISTER sip:pbx.example", "REGISTER sip:pbx.example?x=1")),
    ("a tel Request-URI", _with("REGISTER sip:pbx.example", "REGISTER tel:+15551234")),
    ("leading empty lines", b"\r\n" + BARESIP),
    ("no Call-ID", _with("Call-ID: 9a1b2c3d4e5f\r\n", "")),
    ("an empty header name", _with("Expires: 3600", ": 3600")),
    ("a space before the colon", _with("Expires: 3600", "Expires : 3600")),
])
def test_what_is_off_the_strict_shape_is_left_to_the_parser(name: str, data: bytes) -> None:
    assert read_request(data, "REGISTER", LEASE_HEADERS) is None, name


def test_credentials_are_read_as_the_authenticator_reads_them_or_left_to_it() -> None:
    reader = DigestAuthenticator("ccpbx")
    challenge = reader.challenges(1_000)[0]
    for value in (answer(challenge, PASSWORD), answer(challenge, PASSWORD).replace(", ", ","),
                  answer(challenge, PASSWORD).replace("algorithm=SHA-256", "algorithm=sha-256"),
                  answer(challenge, PASSWORD).replace(", qop=auth", ""),
                  answer(challenge, PASSWORD).replace('response="', 'response=" ').replace(", ", " ,  "),
                  'Digest username="201", realm="ccpbx", nonce="n", uri="sip:pbx.example", response="ABCD"'):
        assert read_credentials(value, "ccpbx") == reader._read_credentials([value]), value
    good = answer(challenge, PASSWORD)
    for value in (good.replace("Digest", "digest"), good.replace('realm="ccpbx"', 'realm="other"'),
                  good.replace('cnonce="abc"', 'cnonce="a\\"bc"'), good.replace('cnonce="abc"', 'cnonce="a,bc"'),
                  good.replace("username=", "Username="), good + ', nc=00000002',
                  good.replace('uri="sip:pbx.example", ', ""), good.replace("nc=00000001, ", "")):
        assert read_credentials(value, "ccpbx") is None, value


# ---- the same answers with and without the quick reading ------------------------------------------------------
class Twin:
    """A worker in a known state: a leased 201 at PHONE, the endpoint known."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.forwarded: list[tuple[bytes, str | None]] = []
        self.refreshed: list[tuple[str, int, float]] = []
        self.quick = 0
        self.worker = Challenger(setup(issuer=ISSUER), lambda data, addr: self.sent.append((data, addr)),
                                 self._forward, self._refreshed)
        self.worker.learn([(source, 1_000) for source in SOURCES])
        self.worker.learn_callers([(source, 1_000) for source in SOURCES])
        lease = server_register(server_side(), register_bytes(answer_any(), cseq=2))
        assert lease is not None
        self.lease: Lease = lease
        self.worker.lease(lease)

    def _forward(self, data: bytes, source: Destination, now: int, vouched: str | None) -> bool:
        self.forwarded.append((data, vouched))
        return True

    def _refreshed(self, lease: Lease, expires_at: float) -> None:
        self.refreshed.append((lease.call_id, lease.cseq, expires_at))

    def outcome(self) -> tuple[object, ...]:
        """All the worker did; its counts but for how many it read quickly (the one difference allowed)."""
        self.quick = self.worker.quick
        return (self.sent, self.forwarded, self.refreshed, self.worker.take_counts()._replace(quick=0),
                (self.lease.call_id, self.lease.cseq))


def both_ways(data: bytes, source: Destination = PHONE, times: int = 1, then: bytes = b"") -> tuple[Twin, Twin]:
    """``data`` (``times`` over, ``then`` after it) through a worker as it is and through one that never reads
    quickly, with the same nonces and the same wall clock: (quick, full)."""
    twins = Twin(), Twin()
    with mock.patch.object(auth_module, "random_hex", lambda n: "5a" * n), \
            mock.patch.object(sip_worker, "time", types.SimpleNamespace(time=lambda: WALL)):
        for twin, reading in zip(twins, (contextlib.nullcontext(),
                                         mock.patch.object(sip_worker, "read_request", lambda *a, **k: None)),
                                 strict=True):
            with reading:
                for datagram in [data] * times + ([then] if then else []):
                    twin.worker.datagram(datagram, source, NOW)
    return twins


def worker_challenge(realm: str = "ccpbx") -> str:
    """The challenge a (patched) worker gives a leased phone: its own nonce."""
    with mock.patch.object(auth_module, "random_hex", lambda n: "5a" * n):
        return Twin().worker.own_auth.challenges(NOW - NONCE_CLOCK_MARGIN_MS)[0].replace('"ccpbx"', f'"{realm}"')


def test_the_usual_shapes_get_the_same_answer_quickly() -> None:
    challenge = worker_challenge()
    for data in (register_bytes(), sipp_register(), BARESIP, register_bytes(answer(challenge, PASSWORD), cseq=3)):
        assert read_request(data, "REGISTER", LEASE_HEADERS) is not None
        quick, full = both_ways(data, PHONE if b"127.0.0.1" not in data else SOURCES[3])
        assert quick.outcome() == full.outcome()
        assert (quick.quick, full.quick) == (1, 0)
    quick, _ = both_ways(register_bytes(answer(challenge, PASSWORD), cseq=3))
    assert quick.sent[0][0].startswith(b"SIP/2.0 200 OK\r\n") and quick.refreshed  # a refresh, answered quickly


_HOSTS = ["10.0.0.1", "10.0.0.7", "pbx.example", "PBX.Example", "phone-1.lan"]


# each part of a REGISTER: (shapes a phone sends, read quickly when the rest is; shapes off the strict shape or
# off the lease's terms). An example takes the usual shapes but for up to two parts.
_PARTS: dict[str, tuple[list[str], list[str]]] = {
    "via name": (["Via", "v", "VIA"], []),
    "via transport": (["UDP"], ["udp", "TCP"]),
    "via host": (["10.0.0.1", "10.0.0.7", "phone-1.lan", "PBX.Example"], ["[2001:db8::1]", "a..b"]),
    "via port": (["", ":5060", ":5070"], [":0", ":99999", ":"]),
    "via params": ([";branch=z9hG4bK77;rport", ";branch=z9hG4bK77", ";rport;branch=z9hG4bK77",
                    ";branch=z9hG4bK77;alias;ttl=5"],
                   [";branch=z9hG4bK77;rport=5060", ";received=10.0.0.1", ";Branch=z9hG4bK1", ";maddr=10.0.0.2",
                    ";branch=", ";branch=z9hG4bK77;;rport"]),
    "user": (["201"], ["202", "2%301", "alice.b"]),
    "display": (["", '"Alice" ', '"Alice"'], ['"Al\\"ice" ', "Alice "]),
    "host": (["pbx.example", "10.0.0.254", "pbx.example:5060"], ["pbx.example:70000", "pbx.example:0"]),
    "from tag": ([";tag=a", ";tag=4242SIPpTag001"], ["", ";tag=a;x=1", ";tag="]),
    "to form": (["<{u}>"], ["<{u}>;tag=b", "{u}", "<{u}>;x=1"]),
    "uri": (["sip:pbx.example"], ["sip:PBX.example", "sip:pbx.example:5060", "sip:pbx.example;transport=udp",
                                  "sips:pbx.example", "sip:pbx.example?x=y", "sip:201@pbx.example"]),
    "call-id": (["c1", "c2@host", "a7f-3@10.0.0.1"], ["c 1", "c1@[::1]", "c1@a@b", ""]),
    "cseq": (["3 REGISTER", "4 REGISTER"], ["2 REGISTER", "03 REGISTER", "3 register", "3  REGISTER",
                                            "4294967296 REGISTER", "3 REGISTER x"]),
    "contact": (["<sip:201@10.0.0.1>"], ["<sip:201@10.0.0.2>", "*", "<sip:201@10.0.0.1>, <sip:201@10.0.0.3>"]),
    "expires": (["3600"], ["0", "600", "03600", "x"]),
    "max-forwards": (["70", "1"], ["0", "256", "x", "070"]),
    "user-agent": (["phone/1.0"], ["other/2", ""]),
    "credentials": (["none", "right", "right, no spaces"],
                    ["wrong", "other realm", "signed elsewhere", "used before", "server nonce", "other user"]),
    "extra": (["", "Allow: INVITE, ACK", "Supported: path", "k: gruu", "Content-Length: 0"],
              ["Require: outbound", "Path: <sip:edge>", "Expires: 60", "Content-Length: 00", "Content-Length: 1",
               "X-Odd: 1", "Via: SIP/2.0/UDP edge;branch=z9hG4bKe"]),
    "line ends": (["\r\n"], ["\n"]),
    "trailing space": ([""], [" ", "\t"]),
}


@st.composite
def registers(draw: st.DrawFn) -> tuple[bytes, Destination, int]:
    """REGISTERs on the strict shape and a step or two off it, plain and with credentials."""
    off = draw(st.sets(st.sampled_from(sorted(_PARTS)), max_size=2))

    def part(name: str) -> str:
        usual, odd = _PARTS[name]
        return draw(st.sampled_from(odd if name in off and odd else usual))

    via = f"SIP/2.0/{part('via transport')} {part('via host')}{part('via port')}{part('via params')}"
    address = f"sip:{part('user')}@{part('host')}"
    from_ = f"{part('display')}<{address}>{part('from tag')}"
    to = part("display") + part("to form").format(u=address)
    uri = part("uri")
    space = part("trailing space")
    lines = [(part("via name"), via), (draw(st.sampled_from(["From", "f"])), from_),
             (draw(st.sampled_from(["To", "t"])), to), (draw(st.sampled_from(["Call-ID", "i"])), part("call-id")),
             ("CSeq", part("cseq")), (draw(st.sampled_from(["Contact", "m"])), part("contact")),
             ("Expires", part("expires")), ("Max-Forwards", part("max-forwards")), ("User-Agent", part("user-agent"))]
    credentials = part("credentials")
    if credentials != "none":
        challenge = worker_challenge("elsewhere" if credentials == "other realm" else "ccpbx")
        if credentials == "server nonce":
            challenge = DigestAuthenticator("ccpbx", secret=b"k" * 32, opaque="0123abcd").challenges(NOW)[0]
        value = answer(challenge, "guess" if credentials == "wrong" else PASSWORD,
                       uri="sip:other" if credentials == "signed elsewhere" else uri.split("?")[0],
                       user="202" if credentials == "other user" else "201")
        lines.append(("Authorization", value.replace(", ", ",") if credentials == "right, no spaces" else value))
    extra = part("extra")
    if extra:
        lines.append(tuple(extra.split(": ", 1)))  # type: ignore[arg-type]
    lines = draw(st.permutations(lines))
    text = "".join(f"{name}: {value}{space}\r\n" for name, value in lines)
    data = f"REGISTER {uri} SIP/2.0\r\n{text}\r\n".replace("\r\n", part("line ends")).encode()
    return data, draw(st.sampled_from(SOURCES)), 2 if credentials == "used before" else 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registers())
def test_every_register_gets_the_same_answer_with_or_without_the_quick_reading(
        case: tuple[bytes, Destination, int]) -> None:
    quick, full = both_ways(*case)
    assert quick.outcome() == full.outcome()


# ---- new calls: the INVITE's 407 ------------------------------------------------------------------------------
SDP = ("v=0\r\no=sipp 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\n"
       "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
       "a=ptime:20\r\na=sendrecv\r\n")


def invite_bytes(headers: list[tuple[str, str]], body: str = SDP, uri: str = "sip:300@pbx.example") -> bytes:
    text = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"INVITE {uri} SIP/2.0\r\n{text}\r\n{body}".encode()


def sipp_invite(body: str = SDP) -> bytes:
    """What tests/interop/scenarios/uac_call.xml sends first, its fields filled in."""
    return invite_bytes([("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-7-inv1;rport"),
                         ("From", '"Caller 201" <sip:201@pbx.example>;tag=4242SIPpTag007'),
                         ("To", "<sip:300@pbx.example>"), ("Call-ID", "7-4242@10.0.0.1"), ("CSeq", "1 INVITE"),
                         ("Contact", "<sip:201@10.0.0.1:5060;transport=UDP>"), ("Max-Forwards", "70"),
                         ("Content-Type", "application/sdp"), ("Content-Length", str(len(body)))], body)


def baresip_invite() -> bytes:
    return invite_bytes([("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK8d2e;rport"),
                         ("Contact", '<sip:201-0x55@10.0.0.1:5060>;+sip.instance="<urn:uuid:6cbd5a1e-1>"'),
                         ("Max-Forwards", "70"), ("To", "<sip:300@pbx.example>"),
                         ("From", '"Alice" <sip:201@pbx.example>;tag=77e0'), ("Call-ID", "1b2c3d4e5f60"),
                         ("CSeq", "24871 INVITE"), ("User-Agent", "baresip v2.9.0 (x86_64/linux)"),
                         ("Allow", "INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER"),
                         ("Supported", "replaces,norefersub"), ("Content-Type", "application/sdp"),
                         ("Content-Length", str(len(SDP)))])


def ack_for(invite: bytes) -> bytes:
    """The ACK a phone sends for the 407 to ``invite`` (its top branch; the To tag does not matter here)."""
    after = invite.split(b"branch=")
    branch = after[1].split(b";")[0].split(b"\r")[0].split(b"\n")[0].decode() if len(after) > 1 else "none"
    return ("ACK sip:300@pbx.example SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch={branch};rport\r\nFrom: <sip:201@pbx.example>;tag=x\r\n"
            "To: <sip:300@pbx.example>;tag=y\r\nCall-ID: c\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("data", [sipp_invite(), baresip_invite(), sipp_invite(body="")], ids=["sipp", "baresip",
                                                                                               "no offer"])
def test_the_invites_phones_send_are_read_quickly_as_the_parser_reads_them(data: bytes) -> None:
    quick = read_request(data, "INVITE", declined=INVITE_DECLINED)
    request = parse_message(data)
    assert quick is not None and isinstance(request, Request)
    assert quick.uri == str(request.uri) and quick.uri_user == "300" and quick.to_user == request.to.uri.user  # type: ignore[union-attr]
    assert quick.from_tag == request.from_.tag and quick.cseq == request.cseq.seq
    assert quick.branch == request.via.branch and quick.max_forwards == request.max_forwards
    assert quick.fields == {name: value for name, _, value in request.headers._fields}


@pytest.mark.parametrize(("name", "data"), [
    ("Content-Length short of the body", sipp_invite().replace(f"Content-Length: {len(SDP)}".encode(),
                                                                 f"Content-Length: {len(SDP) - 4}".encode())),
    ("no Content-Length", sipp_invite().replace(f"Content-Length: {len(SDP)}\r\n".encode(), b"")),
    ("Require", sipp_invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nRequire: 100rel")),
    ("Proxy-Authorization", sipp_invite().replace(b"Max-Forwards: 70", b'Max-Forwards: 70\r\nProxy-Authorization: '
                                                                       b'Digest username="201"')),
    ("a header twice", baresip_invite().replace(b"Supported: replaces,norefersub",
                                                b"Supported: replaces\r\nSupported: norefersub")),
    ("an odd header name", baresip_invite().replace(b"User-Agent:", b"User Agent:")),
    ("a body that is not ASCII", sipp_invite(body="v=0\r\ns=caf\xe9\r\n")),
    ("a To tag", sipp_invite().replace(b"To: <sip:300@pbx.example>", b"To: <sip:300@pbx.example>;tag=1")),
    ("another CSeq method", sipp_invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")),
    ("a REGISTER", BARESIP),
])
def test_an_invite_off_the_strict_shape_is_left_to_the_parser(name: str, data: bytes) -> None:
    assert read_request(data, "INVITE", declined=INVITE_DECLINED) is None, name


def test_the_usual_invites_get_the_same_407_quickly_and_its_ack_ends_in_both() -> None:
    for data in (sipp_invite(), baresip_invite()):
        quick, full = both_ways(data, PHONE, then=ack_for(data))
        assert quick.outcome() == full.outcome() and (quick.quick, full.quick) == (1, 0)
        assert quick.sent[0][0].startswith(b"SIP/2.0 407 Proxy Authentication Required\r\n")
        assert quick.forwarded == [] and quick.worker.awaiting_ack != {}


_INVITE_PARTS: dict[str, tuple[list[str], list[str]]] = {
    "via": (["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-i1;rport", "SIP/2.0/UDP 10.0.0.7;branch=z9hG4bK-i1",
             "SIP/2.0/UDP phone.lan:5070;rport;branch=z9hG4bK-i1"],
            ["SIP/2.0/UDP 10.0.0.1:5060;rport", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-i1;received=10.0.0.2",
             "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK-i1", "SIP/2.0/UDP [::1];branch=z9hG4bK-i1"]),
    "uri": (["sip:300@pbx.example", "sip:300@10.0.0.254:5060", "sip:alice.b@pbx.example;user=phone"],
            ["sip:pbx.example", "tel:+15551234", "sip:3%300@pbx.example", "sip:300@pbx.example?subject=x"]),
    "from": (['"Caller 201" <sip:201@pbx.example>;tag=f1', "<sip:201@pbx.example>;tag=f1"],
             ["<sip:201@pbx.example>", '"Ann <sip:201@pbx.example>;tag=f1', "Ann <sip:201@pbx.example>;tag=f1"]),
    "to": (["<sip:300@pbx.example>"], ["<sip:300@pbx.example>;tag=t", "sip:300@pbx.example"]),
    "cseq": (["1 INVITE", "24871 INVITE"], ["1 invite", "0 INVITE", "1 ACK"]),
    "max-forwards": (["70", "1"], ["0", "256", ""]),
    "extra": (["", "Allow: INVITE, ACK, BYE", "Supported: replaces, timer", "User-Agent: phone/2",
               "Session-Expires: 1800", "P-Asserted-Identity: <sip:201@pbx.example>", "k: timer"],
              ["Require: timer", "Proxy-Authorization: Digest username=\"201\"", "Authorization: Digest x",
               "Proxy-Require: foo", "Max-Forwards: 70", "Bad Name: 1", "Call-ID: other"]),
    "body": ([SDP, ""], ["short", "long"]),
    "line ends": (["\r\n"], ["\n"]),
}


@st.composite
def invites(draw: st.DrawFn) -> tuple[bytes, Destination, int, bytes]:
    """New INVITEs on the strict shape and a step or two off it, with the ACK of their 407 after them."""
    off = draw(st.sets(st.sampled_from(sorted(_INVITE_PARTS)), max_size=2))

    def part(name: str) -> str:
        usual, odd = _INVITE_PARTS[name]
        return draw(st.sampled_from(odd if name in off and odd else usual))

    body = part("body")
    length = {"short": len(SDP) + 3, "long": len(SDP) - 3}.get(body, len(body))
    body = SDP if body in ("short", "long") else body
    headers = [(draw(st.sampled_from(["Via", "v"])), part("via")), (draw(st.sampled_from(["From", "f"])), part("from")),
               (draw(st.sampled_from(["To", "t"])), part("to")), ("Call-ID", draw(st.sampled_from(["c1", "c2@h"]))),
               ("CSeq", part("cseq")), ("Max-Forwards", part("max-forwards")),
               (draw(st.sampled_from(["Contact", "m"])), "<sip:201@10.0.0.1:5060>"),
               (draw(st.sampled_from(["Content-Type", "c"])), "application/sdp"),
               (draw(st.sampled_from(["Content-Length", "l"])), str(length))]
    extra = part("extra")
    if extra:
        headers.append(tuple(extra.split(": ", 1)))  # type: ignore[arg-type]
    data = invite_bytes(draw(st.permutations(headers)), body, part("uri")).replace(b"\r\n", part("line ends").encode())
    return data, draw(st.sampled_from(SOURCES)), draw(st.sampled_from([1, 1, 2])), ack_for(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invites())
def test_every_invite_gets_the_same_answer_with_or_without_the_quick_reading(
        case: tuple[bytes, Destination, int, bytes]) -> None:
    data, source, times, ack = case
    quick, full = both_ways(data, source, times, then=ack)
    assert quick.outcome() == full.outcome()
    assert quick.worker.awaiting_ack == full.worker.awaiting_ack
