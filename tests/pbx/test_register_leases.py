"""Leased REGISTER refreshes: the server's side (which bindings it leases, refreshes applied to the location
service) and a SIP worker's (which refreshes it answers 200 itself, which it passes on), with the server's
verifier for what is passed on: a replay or a wrong password never gets a 200 anywhere."""

from __future__ import annotations

import time

import pytest

from ccpbx.pbx.location import Binding, LocationService
from ccpbx.pbx.register_leases import RegisterLeases
from ccpbx.pbx.registrar import Registrar, RegistrarPolicy
from ccpbx.pbx.sip.auth import AuthOutcome, DigestAuthenticator, nonce_issuer
from ccpbx.pbx.sip.message import Request, Response, parse_message
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip_worker import Challenger, Lease
from tests.pbx.test_auth import answer, secrets_for
from tests.pbx.test_sip_worker import HOUR_MS, PHONE, setup

ISSUER = "a1b2c3d4"
NOW_S = 1_700_000_000.0


def register_bytes(auth: str | None = None, *, cseq: int = 1, call_id: str = "c1", expires: str = "3600",
                   contact: str = "<sip:201@10.0.0.1>", extra: str = "", body: str = "") -> bytes:
    lines = ["REGISTER sip:pbx.example SIP/2.0", f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{cseq};rport",
             "From: <sip:201@pbx.example>;tag=a", "To: <sip:201@pbx.example>", f"Call-ID: {call_id}",
             f"CSeq: {cseq} REGISTER", f"Contact: {contact}", f"Expires: {expires}", "Max-Forwards: 70",
             "User-Agent: phone/1.0"]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + f"\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}").encode()


def request_of(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def server_register(leases: RegisterLeases, data: bytes, source: Destination = PHONE) -> Lease | None:
    """What the server does with a REGISTER it admitted: the registrar's 200, then the lease offer."""
    request = request_of(data)
    outcome = leases.registrar.register(request, "201", source, NOW_S)
    assert outcome.status == 200
    return leases.offer(request, source, "201", outcome.bindings, secrets_for())


def server_side() -> RegisterLeases:
    return RegisterLeases(Registrar(LocationService(), RegistrarPolicy(max_expires=1800)))


class Worker:
    """A worker's decisions with what it sends, passes on and reports."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.forwarded: list[bytes] = []
        self.vouched: list[str | None] = []  # with each passed on: the worker's nonce it vouched for
        self.refreshed: list[tuple[Lease, float]] = []
        self.worker = Challenger(setup(issuer=ISSUER), lambda data, addr: self.sent.append(data),
                                         self._forward, lambda lease, at: self.refreshed.append((lease, at)))
        self.worker.learn([(PHONE, 1_000)])

    def _forward(self, data: bytes, source: Destination, now: int, vouched: str | None) -> bool:
        self.forwarded.append(data)
        self.vouched.append(vouched)
        return True

    def challenge(self, now: int = 2_000) -> str:
        """A plain REGISTER's 401: its first (SHA-256) challenge."""
        self.worker.datagram(register_bytes(), PHONE, now)
        response = parse_message(self.sent.pop())
        assert isinstance(response, Response) and response.status == 401
        return response.headers.get_all("www-authenticate")[0]


def leased_worker() -> tuple[Worker, Lease]:
    leases = server_side()
    lease = server_register(leases, register_bytes(answer_any(), cseq=2))
    assert lease is not None
    w = Worker()
    w.worker.lease(lease)
    return w, lease


def answer_any() -> str:
    return 'Digest username="201", realm="ccpbx", nonce="n", uri="sip:pbx.example", response="r"'


# ---- the server's offer ----------------------------------------------------------------------------------------
def test_a_plain_udp_registration_is_leased_with_the_terms_of_its_request() -> None:
    leases = server_side()
    lease = server_register(leases, register_bytes(answer_any(), cseq=2, expires="3600"))
    assert lease is not None and leases.leases == {"201": lease}
    assert (lease.aor, lease.key, lease.source) == ("201", "sip:201@10.0.0.1", PHONE)
    assert (lease.contact, lease.expires, lease.user_agent, lease.request_uri) == (
        "<sip:201@10.0.0.1>", "3600", "phone/1.0", "sip:pbx.example")
    assert lease.granted == 1800  # the policy's maximum, as the registrar granted
    assert lease.answer_contact == ("<sip:201@10.0.0.1>;expires=", "")
    assert (lease.call_id, lease.cseq) == ("c1", 2) and lease.ha1s == secrets_for()


@pytest.mark.parametrize(("name", "data", "source"), [
    ("tcp", register_bytes(answer_any()), ("tcp", "10.0.0.1", 5060)),
    ("no credentials (a trusted network's)", register_bytes(), PHONE),
    ("a header the registrar might act on", register_bytes(answer_any(), extra="Path: <sip:proxy>\r\n"), PHONE),
    ("two contacts", register_bytes(answer_any(), contact="<sip:201@10.0.0.1>, <sip:201@10.0.0.9>"), PHONE),
])
def test_what_a_worker_could_not_answer_as_the_server_is_not_leased(name: str, data: bytes,
                                                                    source: Destination) -> None:
    leases = server_side()
    leases.leases["201"] = object()  # type: ignore[assignment]  # a lease from before: it ends
    assert server_register(leases, data, source) is None and leases.leases == {}, name


def test_an_address_of_record_with_two_bindings_is_not_leased() -> None:
    leases = server_side()
    assert server_register(leases, register_bytes(answer_any(), contact="<sip:201@10.0.0.9>"),
                           ("udp", "10.0.0.9", 5060)) is not None
    assert server_register(leases, register_bytes(answer_any(), cseq=2)) is None and leases.leases == {}


def test_a_refresh_is_applied_to_its_binding_and_not_to_one_gone_or_replaced() -> None:
    leases = server_side()
    lease = server_register(leases, register_bytes(answer_any(), cseq=2))
    assert lease is not None
    location = leases.registrar.location
    refreshed = leases.apply(location, "201", lease.key, "c1", 3, NOW_S + 5_000, PHONE)
    assert isinstance(refreshed, Binding) and location.find("201", lease.key) == refreshed
    assert (refreshed.expires_at, refreshed.call_id, refreshed.cseq) == (NOW_S + 5_000, "c1", 3)
    assert refreshed.registered_at == NOW_S and (lease.call_id, lease.cseq) == ("c1", 3)
    assert leases.apply(location, "201", lease.key, "c1", 4, NOW_S, ("udp", "10.0.0.66", 5060)) is None
    location.remove("201", lease.key)
    assert leases.apply(location, "201", lease.key, "c1", 4, NOW_S, PHONE) is None
    assert leases.revoke("201") and not leases.revoke("201") and not leases.revoke_all()


# ---- the worker ------------------------------------------------------------------------------------------------
def test_a_leased_phones_refresh_is_answered_200_by_the_worker_and_reported() -> None:
    w, lease = leased_worker()
    challenge = w.challenge()
    nonce = challenge.split('nonce="')[1].split('"')[0]
    assert nonce_issuer(nonce) == ISSUER  # the worker's own: only it accepts it for REGISTER
    before = time.time()
    w.worker.datagram(register_bytes(answer(challenge, "pw-201-secret"), cseq=3), PHONE, 2_100)
    assert w.forwarded == [] and len(w.sent) == 1
    response = parse_message(w.sent[0])
    assert isinstance(response, Response) and response.status == 200 and response.to.tag
    assert response.headers.get_all("contact") == ["<sip:201@10.0.0.1>;expires=1800"]
    assert response.headers.get("date") and response.headers.get("server") == "ccpbx-test"
    assert response.cseq.seq == 3 and response.via.param("received") in (None, "10.0.0.1")
    [(reported, expires_at)] = w.refreshed
    assert reported is lease and (lease.call_id, lease.cseq) == ("c1", 3)
    assert before + 1800 <= expires_at <= time.time() + 1800
    assert w.worker.take_counts() == (1, 0, 0, 0, 1, 0, 0, 2)
    # the next refresh with the next nonce-count of the same nonce, and one with a new Call-ID (RFC 3261 §10.3)
    w.worker.datagram(register_bytes(answer(challenge, "pw-201-secret", nc=2), cseq=4), PHONE, 2_200)
    w.worker.datagram(register_bytes(answer(challenge, "pw-201-secret", nc=3), call_id="c2"), PHONE, 2_300)
    assert len(w.sent) == 3 and w.forwarded == [] and (lease.call_id, lease.cseq) == ("c2", 1)


def test_a_replay_and_a_wrong_password_go_to_the_server_which_never_accepts_the_workers_nonce() -> None:
    w, _ = leased_worker()
    challenge = w.challenge()
    good = register_bytes(answer(challenge, "pw-201-secret"), cseq=3)
    w.worker.datagram(good, PHONE, 2_100)
    w.worker.datagram(good, PHONE, 2_200)  # replayed: the same nonce-count
    wrong = register_bytes(answer(challenge, "guess", nc=5), cseq=4)
    w.worker.datagram(wrong, PHONE, 2_300)
    assert len(w.sent) == 1 and w.forwarded == [good, wrong]
    server = DigestAuthenticator("ccpbx", algorithms=("SHA-256", "MD5"), secret=b"k" * 32, opaque="0123abcd",
                                 owned_methods=frozenset({"REGISTER"}))
    assert w.vouched[0] is None  # its count was used: no vouching for the replay
    replay = server.verify(request_of(good), secrets_for(), 2_200)
    assert replay.outcome is AuthOutcome.STALE and replay.reason == "nonce issued elsewhere"
    assert server.verify(request_of(wrong), secrets_for(), 2_300).outcome is AuthOutcome.WRONG  # counted there
    # its own nonces it still accepts (and an INVITE may use the worker's: its count is the server's)
    own = server.challenges(2_000)[0]
    assert server.verify(request_of(register_bytes(answer(own, "pw-201-secret"))), secrets_for(),
                         2_100).outcome is AuthOutcome.OK


@pytest.mark.parametrize(("name", "make"), [
    ("an unregister", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=3, expires="0")),
    ("another Expires", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=3, expires="600")),
    ("another Contact", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=3, contact="<sip:201@10.0.0.2>")),
    ("a second Contact", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=3,
                                                   contact="<sip:201@10.0.0.1>, <sip:201@10.0.0.2>")),
    ("a header the registrar might act on", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=3,
                                                                      extra="Path: <sip:edge>\r\n")),
    ("Require", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=3, extra="Require: outbound\r\n")),
    ("a body", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=3, body="x")),
    ("an old CSeq", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=2)),
    ("Max-Forwards 0", lambda c: register_bytes(answer(c, "pw-201-secret"), cseq=3).replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0")),
    ("another user's credentials", lambda c: register_bytes(answer(c, "pw-202", user="202"), cseq=3)),
    ("the server's kind of nonce", lambda c: register_bytes(answer(
        DigestAuthenticator("ccpbx", secret=b"k" * 32, opaque="0123abcd").challenges(2_000)[0], "pw-201-secret"),
        cseq=3)),
    ("another worker's nonce", lambda c: register_bytes(answer(
        DigestAuthenticator("ccpbx", secret=b"k" * 32, opaque="0123abcd", issuer="ffff0000").challenges(2_000)[0],
        "pw-201-secret"), cseq=3)),
])
def test_a_refresh_off_the_leases_terms_goes_to_the_server(name: str, make: object) -> None:
    w, lease = leased_worker()
    data = make(w.challenge())  # type: ignore[operator]
    w.worker.datagram(data, PHONE, 2_100)
    assert w.sent == [] and w.forwarded == [data] and w.refreshed == [], name
    assert (lease.call_id, lease.cseq) == ("c1", 2)


def test_another_sender_or_an_ended_lease_gets_the_servers_nonce_and_its_refresh_goes_to_the_server() -> None:
    w, _ = leased_worker()
    other: Destination = ("udp", "10.0.0.1", 5999)
    w.worker.learn([(other, 1_000)])
    w.worker.datagram(register_bytes(), other, 2_000)
    assert nonce_issuer(w.sent.pop().decode().split('nonce="')[1].split('"')[0]) == ""
    challenge = w.challenge()
    w.worker.unlease(["201"])
    data = register_bytes(answer(challenge, "pw-201-secret"), cseq=3)
    w.worker.datagram(data, PHONE, 2_100)
    assert w.sent == [] and w.forwarded == [data]
    assert nonce_issuer(w.challenge(2_200).split('nonce="')[1].split('"')[0]) == ""
    w.worker.lease(leased_worker()[1])
    w.worker.unlease(None)
    assert w.worker.leases == {}


def test_a_worker_nonce_expires_like_the_servers() -> None:
    w, _ = leased_worker()
    challenge = w.challenge(2_000)
    data = register_bytes(answer(challenge, "pw-201-secret"), cseq=3)
    w.worker.datagram(data, PHONE, 2_000 + 300_000 + 1_001)  # past the TTL (the nonce is stamped 1 s early)
    assert w.sent == [] and w.forwarded == [data]
    assert HOUR_MS > 300_000


def test_credentials_on_the_workers_nonce_off_the_lease_are_vouched_for_and_the_server_accepts_them_once() -> None:
    w, _ = leased_worker()
    challenge = w.challenge()
    unregister = register_bytes(answer(challenge, "pw-201-secret"), cseq=3, expires="0")
    w.worker.datagram(unregister, PHONE, 2_100)
    nonce = challenge.split('nonce="')[1].split('"')[0]
    assert w.forwarded == [unregister] and w.vouched == [nonce]  # no second challenge for the phone
    server = DigestAuthenticator("ccpbx", algorithms=("SHA-256", "MD5"), secret=b"k" * 32, opaque="0123abcd",
                                 owned_methods=frozenset({"REGISTER"}))
    assert server.verify(request_of(unregister), secrets_for(), 2_100).outcome is AuthOutcome.STALE
    server.vouch(nonce, 2_100)
    assert server.verify(request_of(unregister), secrets_for(), 2_100).outcome is AuthOutcome.OK
    assert server.verify(request_of(unregister), secrets_for(), 2_150).reason == "nonce count replayed"
    w.worker.datagram(unregister, PHONE, 2_200)  # the same count again: passed on without the worker's word
    assert w.vouched == [nonce, None]
    # a plain phone off the lease (no lease at all): the same
    w.worker.unlease(None)
    nexts = register_bytes(answer(challenge, "pw-201-secret", nc=2), cseq=4, expires="0")
    w.worker.datagram(nexts, PHONE, 2_300)
    assert w.vouched == [nonce, None, nonce]
    server.purge(2_100 + 300_001)  # vouching lasts as long as a nonce does
    assert server.verify(request_of(register_bytes(answer(challenge, "pw-201-secret", nc=9), cseq=9)),
                         secrets_for(), 2_400).outcome is AuthOutcome.STALE
