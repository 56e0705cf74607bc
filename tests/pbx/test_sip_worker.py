"""SIP workers: the kernel's steering of requests among sockets sharing a port (responses to the server), and a
worker's decisions (which REGISTERs and INVITEs it challenges, which ACKs end there, what it passes to the server,
what it drops), with the server's verifier."""

from __future__ import annotations

import socket
import time

import pytest

from ccpbx.pbx.sip.auth import AuthOutcome, DigestAuthenticator
from ccpbx.pbx.sip.message import Response, parse_message
from ccpbx.pbx.sip.steering import attach_request_steering, reuse_port_socket, steering_available
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip_worker import Challenger, WorkerSetup
from tests.pbx.test_auth import answer, register, secrets_for

linux_only = pytest.mark.skipif(not steering_available(), reason="reuse-port steering is Linux's")

PHONE: Destination = ("udp", "10.0.0.1", 5060)
HOUR_MS = 3_600_000


def setup(**changes: object) -> WorkerSetup:
    values: dict[str, object] = dict(realm="ccpbx", algorithms=("SHA-256", "MD5"), qop="auth", nonce_ttl_ms=300_000,
                                     secret=b"k" * 32, opaque="0123abcd", server_header="ccpbx-test",
                                     trusted_networks=(), known_ms=HOUR_MS, sockets=1)
    values.update(changes)
    return WorkerSetup(**values)  # type: ignore[arg-type]


class Recorder:
    def __init__(self, **changes: object) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.forwarded: list[tuple[bytes, Destination]] = []
        self.behind = False  # the server is behind: what would be passed on is dropped
        self.worker = Challenger(setup(**changes), lambda data, addr: self.sent.append((data, addr)),
                                         self._forward)

    def _forward(self, data: bytes, source: Destination, now: int, vouched: str | None = None) -> bool:
        if self.behind:
            return False
        self.forwarded.append((data, source))
        return True


def plain_register(extra: str = "", via: str = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport") -> bytes:
    return ("REGISTER sip:pbx.example SIP/2.0\r\n"
            f"Via: {via}\r\n"
            "From: <sip:201@pbx.example>;tag=a\r\nTo: <sip:201@pbx.example>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:201@10.0.0.1>\r\n{extra}Content-Length: 0\r\n\r\n").encode()


def test_a_known_phones_plain_register_gets_a_401_the_server_verifies() -> None:
    r = Recorder()
    r.worker.learn([(PHONE, 1_000)])
    r.worker.datagram(plain_register(), PHONE, 5_000)
    assert r.forwarded == [] and len(r.sent) == 1
    data, address = r.sent[0]
    assert address == ("10.0.0.1", 5060)
    response = parse_message(data)
    assert isinstance(response, Response) and response.status == 401
    assert response.to.tag  # a To tag, as the server's own challenges carry
    assert response.via.param("received") is None or response.via.param("received") == "10.0.0.1"
    assert response.headers.get("server") == "ccpbx-test"
    challenges = response.headers.get_all("www-authenticate")
    assert [("SHA-256" in c, "MD5" in c) for c in challenges] == [(True, False), (False, True)]
    assert all('opaque="0123abcd"' in c for c in challenges)
    # the server (same secret) accepts the answer, even reading its clock a little behind the worker's
    server = DigestAuthenticator("ccpbx", algorithms=("SHA-256", "MD5"), secret=b"k" * 32, opaque="0123abcd")
    credentials = answer(challenges[0], "pw-201-secret", uri="sip:pbx.example")
    result = server.verify(register(credentials), secrets_for(), 5_000 - 500)  # its loop's clock read 0.5 s ago
    assert result.outcome is AuthOutcome.OK
    assert server.verify(register(answer(challenges[0], "wrong", uri="sip:pbx.example", nc=2)), secrets_for(),
                         5_000).outcome is AuthOutcome.WRONG
    assert r.worker.take_counts() == (1, 0, 0, 0, 0, 0, 0, 1) and r.worker.take_counts() == (0,) * 8


def test_the_answer_goes_where_the_via_says_and_its_to_tag_is_stable() -> None:
    r = Recorder()
    source: Destination = ("udp", "192.0.2.7", 40000)  # behind a NAT: the Via names the phone's own address
    r.worker.learn([(source, 1_000)])
    for _ in range(2):  # a retransmission gets a fresh challenge with the same To tag
        r.worker.datagram(plain_register(via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport"), source, 2_000)
    assert [addr for _, addr in r.sent] == [("192.0.2.7", 40000)] * 2
    first, second = (parse_message(d) for d, _ in r.sent)
    assert isinstance(first, Response) and isinstance(second, Response)
    assert first.via.param("received") == "192.0.2.7" and first.via.param("rport") == "40000"
    assert first.to.tag == second.to.tag
    r2 = Recorder()
    r2.worker.learn([(source, 1_000)])
    r2.worker.datagram(plain_register(via="SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1"), source, 2_000)
    assert r2.sent[0][1] == ("192.0.2.7", 5070)  # no rport: the received address and the sent-by port (§18.2.2)


@pytest.mark.parametrize(("name", "data", "source"), [
    ("unknown endpoint", plain_register(), ("udp", "10.0.0.1", 5061)),
    ("credentials", plain_register('Authorization: Digest username="201", realm="ccpbx", nonce="x", '
                                   'uri="sip:pbx.example", response="00"\r\n'), PHONE),
    ("Require", plain_register("Require: gruu\r\n"), PHONE),
    ("not a REGISTER", plain_register().replace(b"REGISTER sip", b"OPTIONS sip", 1), PHONE),
    ("a response", b"SIP/2.0 200 OK\r\n\r\n", PHONE),
    ("malformed", b"REGISTER nonsense\r\n\r\n", PHONE),
    ("no To user", plain_register().replace(b"To: <sip:201@pbx.example>", b"To: <sip:pbx.example>"), PHONE),
    ("tel Request-URI", plain_register().replace(b"REGISTER sip:pbx.example", b"REGISTER tel:+15551234"), PHONE),
])
def test_what_is_not_a_known_phones_plain_register_goes_to_the_server_whole(name: str, data: bytes,
                                                                            source: Destination) -> None:
    r = Recorder()
    r.worker.learn([(PHONE, 1_000)])
    r.worker.datagram(data, source, 2_000)
    assert r.sent == [] and r.forwarded == [(data, source)], name


def test_an_endpoint_known_too_long_ago_goes_to_the_server() -> None:
    r = Recorder()
    r.worker.learn([(PHONE, 1_000)])
    r.worker.datagram(plain_register(), PHONE, 1_000 + HOUR_MS)
    assert r.sent == [] and len(r.forwarded) == 1
    r.worker.learn([(PHONE, 1_000 + HOUR_MS)])  # it authenticated again
    r.worker.datagram(plain_register(), PHONE, 2_000 + HOUR_MS)
    assert len(r.sent) == 1


def test_a_banned_address_is_dropped_until_its_ban_ends_or_is_lifted() -> None:
    r = Recorder()
    r.worker.learn([(PHONE, 1_000)])
    r.worker.ban("10.0.0.1", 10_000)
    r.worker.datagram(plain_register(), PHONE, 5_000)
    r.worker.datagram(b"SIP/2.0 200 OK\r\n\r\n", ("udp", "10.0.0.1", 7), 5_000)  # whatever it sends
    assert r.sent == [] and r.forwarded == [] and r.worker.take_counts() == (0, 0, 2, 0, 0, 0, 0, 0)
    r.worker.datagram(plain_register(), PHONE, 10_000)  # the ban ended
    assert len(r.sent) == 1
    r.worker.ban("10.0.0.1", 99_000)
    r.worker.unban("10.0.0.1")
    r.worker.datagram(plain_register(), PHONE, 11_000)
    assert len(r.sent) == 2


def test_what_cannot_be_passed_on_while_the_server_is_behind_is_counted_shed() -> None:
    r = Recorder()
    r.worker.learn([(PHONE, 1_000)])
    r.behind = True
    r.worker.datagram(plain_register(), ("udp", "10.0.0.9", 5060), 2_000)  # unknown: would be passed on
    r.worker.datagram(plain_register(), PHONE, 2_000)  # still answered here
    assert r.forwarded == [] and len(r.sent) == 1 and r.worker.take_counts() == (1, 0, 0, 1, 0, 0, 0, 1)


def test_a_trusted_network_is_the_servers_to_decide() -> None:
    r = Recorder(trusted_networks=("10.0.0.0/8",))
    r.worker.learn([(PHONE, 1_000), (("udp", "192.0.2.1", 5060), 1_000)])
    r.worker.datagram(plain_register(), PHONE, 2_000)
    r.worker.datagram(plain_register(), ("udp", "192.0.2.1", 5060), 2_000)
    assert [source for _, source in r.forwarded] == [PHONE] and len(r.sent) == 1


def test_the_known_endpoints_are_capped_oldest_first() -> None:
    r = Recorder()
    import ccpbx.pbx.sip_worker as module

    cap = module.MAX_KNOWN
    module.MAX_KNOWN = 3
    try:
        r.worker.learn([(("udp", "10.0.0.1", p), 1_000) for p in range(5)])
        r.worker.learn([(("udp", "10.0.0.1", 2), 1_500)])  # learnt again: the newest now
        assert list(r.worker.known) == [("udp", "10.0.0.1", p) for p in (3, 4, 2)]
    finally:
        module.MAX_KNOWN = cap


# -- the kernel's steering -----------------------------------------------------------------------------------
def _drain(sock: socket.socket) -> list[bytes]:
    got = []
    sock.setblocking(False)
    while True:
        try:
            got.append(sock.recv(2048)[:4])
        except BlockingIOError:
            return got


def _send_all(host: str, port: int, family: int, senders: int) -> None:
    for _ in range(senders):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            for data in (b"REGISTER sip:x SIP/2.0\r\n", b"INVITE sip:x SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n", b"RE",
                         b"\r\n\r\n", b"ACK sip:x SIP/2.0\r\n", b"BYE sip:x SIP/2.0\r\n"):
                s.sendto(data, (host, port))


def _wait_for(socks: list[socket.socket], expected: int) -> list[list[bytes]]:
    got: list[list[bytes]] = [[] for _ in socks]
    deadline = time.monotonic() + 5
    while sum(map(len, got)) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
        for i, s in enumerate(socks):
            got[i] += _drain(s)
    return got


@linux_only
@pytest.mark.parametrize(("host", "family"), [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_requests_go_to_the_worker_socket_and_responses_to_the_server(host: str, family: int) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = reuse_port_socket(host, 0, family)
    port = server.getsockname()[1]
    attach_request_steering(server, 1)
    worker = reuse_port_socket(host, port, family)
    try:
        _send_all(host, port, family, 10)
        to_server, to_worker = _wait_for([server, worker], 70)
        # responses, BYEs (no worker answers one) and what is too short to tell
        assert sorted(to_server) == [b"BYE "] * 10 + [b"RE"] * 10 + [b"SIP/"] * 10
        assert to_worker == [b"REGI", b"INVI", b"\r\n\r\n", b"ACK "] * 10  # requests and keep-alives, in order
        worker.close()  # the worker died: its requests fall back to the server
        _send_all(host, port, family, 3)
        (to_server,) = _wait_for([server], 21)
        assert to_server.count(b"REGI") == 3 and len(to_server) == 21
    finally:
        server.close()
        worker.close()


@linux_only
def test_two_workers_share_the_requests_by_the_senders_port() -> None:
    server = reuse_port_socket("127.0.0.1", 0, socket.AF_INET)
    port = server.getsockname()[1]
    attach_request_steering(server, 2)
    workers = [reuse_port_socket("127.0.0.1", port, socket.AF_INET) for _ in range(2)]
    try:
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(40)]
        for s in senders:
            s.bind(("127.0.0.1", 0))
        for method in (b"REGISTER", b"INVITE", b"BYE"):  # a sender's requests all go to one worker (BYEs: none)
            for s in senders:
                s.sendto(method + b" sip:x SIP/2.0\r\n" + str(s.getsockname()[1]).encode(), ("127.0.0.1", port))
        got: list[list[bytes]] = [[], []]
        deadline = time.monotonic() + 5
        while sum(map(len, got)) < 80 and time.monotonic() < deadline:
            time.sleep(0.01)
            for i, w in enumerate(workers):
                w.setblocking(False)
                while True:
                    try:
                        got[i].append(w.recv(2048))
                    except BlockingIOError:
                        break
        assert len(got[0]) + len(got[1]) == 80 and got[0] and got[1]
        ports = [{d.split(b"\r\n")[-1] for d in g} for g in got]
        assert not ports[0] & ports[1]  # no sender's requests in both
        assert _wait_for([server], 40) == [[b"BYE "] * 40]
        for s in senders:
            s.close()
    finally:
        server.close()
        for w in workers:
            w.close()


# -- a new call's challenge -----------------------------------------------------------------------------------
def plain_invite(extra: str = "", *, branch: str = "z9hG4bK-i1", to_tag: str = "",
                 uri: str = "sip:300@pbx.example") -> bytes:
    body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    return (f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch};rport\r\n"
            "Max-Forwards: 70\r\nFrom: \"Ann\" <sip:201@pbx.example>;tag=f1\r\n"
            f"To: <sip:300@pbx.example>{to_tag}\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:201@10.0.0.1:5060>\r\n{extra}Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def ack_of(invite: bytes, *, branch: str = "z9hG4bK-i1", to_tag: str = "") -> bytes:
    head = invite.split(b"\r\n\r\n")[0].decode()
    lines = [line for line in head.split("\r\n")[1:] if not line.startswith(("Content-", "Contact"))]
    text = "\r\n".join(lines).replace("CSeq: 1 INVITE", "CSeq: 1 ACK").replace("branch=z9hG4bK-i1", f"branch={branch}")
    text = text.replace("To: <sip:300@pbx.example>", f"To: <sip:300@pbx.example>{to_tag}")
    return f"ACK sip:300@pbx.example SIP/2.0\r\n{text}\r\nContent-Length: 0\r\n\r\n".encode()


def test_a_known_callers_new_invite_gets_a_407_the_server_verifies_and_its_ack_ends_here() -> None:
    from ccpbx.pbx.sip_handlers import stable_to_tag

    r = Recorder()
    r.worker.learn_callers([(PHONE, 1_000)])
    invite = plain_invite()
    r.worker.datagram(invite, PHONE, 5_000)
    assert r.forwarded == [] and len(r.sent) == 1
    data, address = r.sent[0]
    assert address == ("10.0.0.1", 5060)
    response = parse_message(data)
    assert isinstance(response, Response) and response.status == 407
    request = parse_message(invite)
    # the To tag the server answers the call with (SIPp and some phones keep the first they see)
    assert response.to.tag == stable_to_tag(request)  # type: ignore[arg-type]
    assert response.via.branch == "z9hG4bK-i1" and response.headers.get("server") == "ccpbx-test"
    challenges = response.headers.get_all("proxy-authenticate")
    assert [("SHA-256" in c, "MD5" in c) for c in challenges] == [(True, False), (False, True)]
    # the server (same secret) verifies the INVITE that answers it
    server = DigestAuthenticator("ccpbx", algorithms=("SHA-256", "MD5"), secret=b"k" * 32, opaque="0123abcd")
    credentials = answer(challenges[0], "pw-201-secret", uri="sip:300@pbx.example", method="INVITE")
    answered = parse_message(plain_invite(f"Proxy-Authorization: {credentials}\r\n"))
    assert isinstance(answered, type(request))
    result = server.verify(answered, secrets_for(), 5_000, header="proxy-authorization")  # type: ignore[arg-type]
    assert result.outcome is AuthOutcome.OK
    # the ACK of the 407 ends here; the INVITE with credentials and the call's ACK (new branch) go on (its BYE
    # comes to the server from the kernel: see the steering tests)
    r.worker.datagram(ack_of(invite), PHONE, 5_010)
    assert r.forwarded == []
    later = [plain_invite(f"Proxy-Authorization: {credentials}\r\n", branch="z9hG4bK-i2"),
             ack_of(invite, branch="z9hG4bK-i3", to_tag=f";tag={response.to.tag}")]
    for datagram in later:
        r.worker.datagram(datagram, PHONE, 5_020)
    assert [d for d, _ in r.forwarded] == later and len(r.sent) == 1
    assert r.worker.take_counts() == (0, 2, 0, 0, 0, 1, 1, 1)


def test_a_retransmitted_invite_is_challenged_again_and_an_ack_only_ends_here_from_its_sender_in_time() -> None:
    from ccpbx.pbx.sip_worker import CHALLENGE_ACK_WAIT_MS

    r = Recorder()
    r.worker.learn_callers([(PHONE, 1_000)])
    invite = plain_invite()
    r.worker.datagram(invite, PHONE, 5_000)
    r.worker.datagram(invite, PHONE, 5_500)  # the 407 was lost: the phone retransmits (Timer A)
    assert len(r.sent) == 2 and r.forwarded == []
    elsewhere: Destination = ("udp", "10.0.0.2", 5060)
    r.worker.datagram(ack_of(invite), elsewhere, 5_600)  # the same branch from another sender
    r.worker.datagram(ack_of(invite), PHONE, 5_500 + CHALLENGE_ACK_WAIT_MS)  # too late: Timer H ran out
    assert [source for _, source in r.forwarded] == [elsewhere, PHONE]
    r.worker.datagram(ack_of(invite), PHONE, 5_600)
    assert len(r.forwarded) == 2  # in time, from its sender: absorbed


@pytest.mark.parametrize(("name", "data"), [
    ("credentials", plain_invite('Proxy-Authorization: Digest username="201", realm="ccpbx", nonce="n", '
                                 'uri="sip:300@pbx.example", response="00"\r\n')),
    ("in a dialog", plain_invite(to_tag=";tag=abc")),
    ("Require", plain_invite("Require: 100rel\r\n")),
    ("no hops left", plain_invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 0")),
    ("no number", plain_invite(uri="sip:pbx.example")),
    ("tel Request-URI", plain_invite(uri="tel:+15551234")),
    ("no branch", plain_invite().replace(b";branch=z9hG4bK-i1", b"")),
    ("bad From", plain_invite().replace(b'From: "Ann" <sip:201@pbx.example>', b'From: "Ann <sip:201@pbx.example>')),
    ("malformed", b"INVITE nonsense\r\n\r\n"),
    ("not an INVITE", plain_invite().replace(b"INVITE sip:300", b"MESSAGE sip:300", 1)),
])
def test_what_is_not_a_known_callers_new_invite_goes_to_the_server_whole(name: str, data: bytes) -> None:
    r = Recorder()
    r.worker.learn_callers([(PHONE, 1_000)])
    r.worker.datagram(data, PHONE, 2_000)
    assert r.sent == [] and r.forwarded == [(data, PHONE)], name


def test_invites_are_challenged_only_for_callers_the_server_named_and_not_once_forgotten() -> None:
    r = Recorder(trusted_networks=("192.0.2.0/24",))
    r.worker.learn([(PHONE, 1_000)])  # authenticated (a REGISTER): not enough for its INVITEs
    r.worker.datagram(plain_invite(), PHONE, 2_000)
    assert r.sent == [] and len(r.forwarded) == 1
    r.worker.learn_callers([(PHONE, 2_000), (("udp", "192.0.2.1", 5060), 2_000)])
    r.worker.datagram(plain_invite(), ("udp", "192.0.2.1", 5060), 3_000)  # trusted network: the server's
    r.worker.datagram(plain_invite(), PHONE, 3_000)
    assert len(r.sent) == 1 and len(r.forwarded) == 2
    r.worker.datagram(plain_invite(), PHONE, 2_000 + HOUR_MS)  # an hour on: the server's again
    assert len(r.sent) == 1 and len(r.forwarded) == 3
    r.worker.learn_callers([(PHONE, 2_000 + HOUR_MS)])
    r.worker.forget_caller(PHONE)  # a credential from there failed
    r.worker.datagram(plain_invite(), PHONE, 3_000 + HOUR_MS)
    assert len(r.sent) == 1 and len(r.forwarded) == 4


def test_the_challenges_awaiting_an_ack_are_bounded_one_out_for_each_one_in(monkeypatch: pytest.MonkeyPatch) -> None:
    import ccpbx.pbx.sip_worker as module

    monkeypatch.setattr(module, "MAX_CHALLENGES_AWAITED", 3)
    r = Recorder()
    r.worker.learn_callers([(PHONE, 1_000)])
    for i in range(5):
        r.worker.datagram(plain_invite(branch=f"z9hG4bK-b{i}"), PHONE, 2_000 + i)
    assert [branch for branch, _ in r.worker.awaiting_ack] == [b"z9hG4bK-b2", b"z9hG4bK-b3", b"z9hG4bK-b4"]
    r.worker.datagram(plain_invite(branch="z9hG4bK-late"), PHONE, 2_000 + module.CHALLENGE_ACK_WAIT_MS + 3)
    # the oldest, whose ACK can no longer come, made room (one per challenge: the table never grows past 3)
    assert [branch for branch, _ in r.worker.awaiting_ack] == [b"z9hG4bK-b3", b"z9hG4bK-b4", b"z9hG4bK-late"]


def test_a_backlog_to_the_server_drops_new_requests_first() -> None:
    from ccpbx.pbx.sip_worker import FORWARD_BACKLOG_BYTES, URGENT_BACKLOG_BYTES, may_pass_on

    bye = b"BYE sip:201@10.0.0.1 SIP/2.0\r\n"
    for data in (plain_invite(), plain_register(), bye, ack_of(plain_invite())):
        assert may_pass_on(data, FORWARD_BACKLOG_BYTES)
        assert not may_pass_on(data, URGENT_BACKLOG_BYTES + 1)
    assert not may_pass_on(plain_invite(), FORWARD_BACKLOG_BYTES + 1)
    assert not may_pass_on(plain_register(), FORWARD_BACKLOG_BYTES + 1)
    assert may_pass_on(bye, FORWARD_BACKLOG_BYTES + 1) and may_pass_on(ack_of(plain_invite()), URGENT_BACKLOG_BYTES)


def test_while_the_server_refuses_new_work_new_calls_go_to_it_unchallenged() -> None:
    r = Recorder()
    r.worker.learn([(PHONE, 1_000)])
    r.worker.learn_callers([(PHONE, 1_000)])
    r.worker.overloaded = True  # a sustained backlog: the server answers new calls 503 itself
    r.worker.datagram(plain_invite(), PHONE, 2_000)
    r.worker.datagram(plain_register(), PHONE, 2_000)  # a registration is still challenged here
    assert [d for d, _ in r.forwarded] == [plain_invite()] and len(r.sent) == 1
    r.worker.overloaded = False
    r.worker.datagram(plain_invite(), PHONE, 3_000)
    assert len(r.forwarded) == 1 and len(r.sent) == 2
