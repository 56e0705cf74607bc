"""Outbound registration (RFC 3261 §10.2), pure: explicit ``now``, responses built by hand or by our registrar."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.location import LocationService
from ccpbx.pbx.registrar import Registrar, RegistrarPolicy
from ccpbx.pbx.sip.auth import AuthOutcome, DigestAuthenticator, ha1
from ccpbx.pbx.sip.errors import SipLocalError
from ccpbx.pbx.sip.headers import AuthParams, format_auth
from ccpbx.pbx.sip.message import Request, Response, make_response, parse_message
from ccpbx.pbx.sip.registration_client import (
    RESPONSE_GUARD_MS,
    FailureCause,
    Registered,
    RegistrationClient,
    RegistrationFailed,
    RegistrationState,
    Unregistered,
    refresh_delay_ms,
)
from ccpbx.pbx.sip.uri import SipUri

AOR = SipUri(user="trunk1", host="sip.provider.example")
REGISTRAR = SipUri(host="sip.provider.example")
CONTACT = "<sip:tk9f3@192.0.2.10:5060>"
USER, PASSWORD = "trunk1", "s3cret-pw"


def make(credentials: tuple[str, str] | None = (USER, PASSWORD), **kwargs: object) -> RegistrationClient:
    options: dict[str, object] = {"via_host": "192.0.2.10", "via_port": 5060, "user_agent": "ccpbx-test"}
    options.update(kwargs)
    return RegistrationClient(AOR, REGISTRAR, CONTACT, credentials, **options)  # type: ignore[arg-type]


def wire(request: Request) -> Request:
    """The request as the far end parses it: proves it serialises to valid SIP."""
    parsed = parse_message(request.serialize())
    assert isinstance(parsed, Request)
    return parsed


def sent(client: RegistrationClient) -> Request:
    (request,) = client.outgoing()
    return wire(request)


def reply(request: Request, status: int, *headers: tuple[str, str]) -> Response:
    response = make_response(request, status, to_tag="srv1")
    for name, value in headers:
        response.headers.add(name, value)
    parsed = parse_message(response.serialize())
    assert isinstance(parsed, Response)
    return parsed


def challenge(nonce: str, *, algorithm: str = "MD5", stale: bool = False, realm: str = "provider") -> str:
    params = [("realm", realm), ("nonce", nonce), ("algorithm", algorithm), ("qop", "auth"), ("opaque", "op1")]
    if stale:
        params.append(("stale", "true"))
    return format_auth("Digest", params)


def auth_of(request: Request, header: str = "authorization") -> dict[str, str]:
    return AuthParams.parse(request.headers.get(header) or "").as_dict()


def register_ok(client: RegistrationClient, now: int, *, contact_expires: int = 600) -> Request:
    """Start, get challenged, answer, get a 200: the usual first registration."""
    client.start(now)
    first = sent(client)
    client.receive_response(reply(first, 401, ("WWW-Authenticate", challenge("n1"))), now + 20)
    second = sent(client)
    client.receive_response(reply(second, 200, ("Contact", f"{CONTACT};expires={contact_expires}")), now + 40)
    return second


# ---- the request ---------------------------------------------------------------------------------------------------
def test_first_register_is_a_complete_request() -> None:
    client = make(headers=[("Supported", "path")])
    client.start(1_000)
    request = sent(client)
    assert request.method == "REGISTER" and str(request.uri) == "sip:sip.provider.example"
    via = request.via
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.10", 5060)
    assert via.branch is not None and via.branch.startswith("z9hG4bK") and via.wants_rport
    assert request.from_.uri == AOR and request.from_.tag == client.from_tag
    assert request.to.uri == AOR and request.to.tag is None
    assert request.call_id == client.call_id
    assert (request.cseq.seq, request.cseq.method) == (1, "REGISTER")
    assert request.headers.get("contact") == CONTACT and request.expires == 600
    assert request.max_forwards == 70
    assert request.headers.get("user-agent") == "ccpbx-test" and request.headers.get("supported") == "path"
    assert "authorization" not in request.headers
    assert client.status.state is RegistrationState.REGISTERING and client.status.outstanding
    assert client.destination == ("udp", "sip.provider.example", 5060)
    assert client.next_deadline() == 1_000 + RESPONSE_GUARD_MS


def test_misuse_is_refused() -> None:
    with pytest.raises(SipLocalError):
        RegistrationClient(AOR, REGISTRAR, "<sip:x@h>;expires=60", None, via_host="h", via_port=5060)
    with pytest.raises(SipLocalError):
        RegistrationClient(AOR, REGISTRAR, "not a contact <", None, via_host="h", via_port=5060)
    with pytest.raises(SipLocalError):
        make(retry_s=60, max_retry_s=30)
    with pytest.raises(SipLocalError):
        make(headers=[("CSeq", "1 REGISTER")])
    with pytest.raises(SipLocalError):
        make(transport="sctp")


# ---- digest ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithms", [("MD5",), ("SHA-256",), ("SHA-256", "MD5"), ("MD5", "SHA-256")])
def test_401_is_answered_with_the_strongest_algorithm_then_200_registers(algorithms: tuple[str, ...]) -> None:
    server = DigestAuthenticator("provider", algorithms=algorithms)
    client = make()
    client.start(0)
    first = sent(client)
    client.receive_response(reply(first, 401, *[("WWW-Authenticate", c) for c in server.challenges(10)]), 30)
    second = sent(client)
    assert second.call_id == first.call_id and second.cseq.seq == first.cseq.seq + 1
    assert second.via.branch != first.via.branch and second.from_.tag == first.from_.tag
    creds = auth_of(second)
    assert creds["algorithm"] == ("SHA-256" if "SHA-256" in algorithms else "MD5")
    assert creds["nc"] == "00000001" and creds["uri"] == "sip:sip.provider.example" and creds["opaque"]
    secrets = {a: ha1(a, USER, "provider", PASSWORD) for a in ("MD5", "SHA-256")}
    assert server.verify(second, secrets, 40).outcome is AuthOutcome.OK
    client.receive_response(reply(second, 200, ("Contact", f"{CONTACT};expires=600")), 60)
    status = client.status
    assert status.state is RegistrationState.REGISTERED and status.granted_s == 600
    assert status.expires_at_ms == 30 + 600_000  # counted from when the answered REGISTER left
    assert status.last_status == 200 and status.failures == 0 and status.contact_listed
    (event,) = client.events()
    assert isinstance(event, Registered) and event.granted_s == 600 and event.refresh_at_ms == 30 + 540_000
    assert client.next_deadline() == 30 + 540_000


def test_407_is_answered_with_proxy_authorization_and_both_are_kept() -> None:
    client = make()
    client.start(0)
    first = sent(client)
    client.receive_response(reply(first, 407, ("Proxy-Authenticate", challenge("p1", realm="edge"))), 10)
    second = sent(client)
    assert auth_of(second, "proxy-authorization")["nonce"] == "p1" and "authorization" not in second.headers
    client.receive_response(reply(second, 401, ("WWW-Authenticate", challenge("r1"))), 20)
    third = sent(client)
    assert auth_of(third, "proxy-authorization")["nc"] == "00000002"
    assert auth_of(third, "authorization")["nonce"] == "r1"
    client.receive_response(reply(third, 200, ("Contact", f"{CONTACT};expires=300")), 30)
    assert client.status.state is RegistrationState.REGISTERED


def test_refresh_reuses_the_nonce_with_a_higher_count_and_a_fresh_cnonce() -> None:
    client = make()
    answered = register_ok(client, 0, contact_expires=600)
    client.events()
    refresh_at = client.next_deadline()
    assert refresh_at == 20 + 540_000
    client.handle_timer(refresh_at - 1)
    assert client.outgoing() == []
    client.handle_timer(refresh_at)
    refresh = sent(client)
    assert refresh.cseq.seq == answered.cseq.seq + 1 and refresh.call_id == answered.call_id
    old, new = auth_of(answered), auth_of(refresh)
    assert new["nonce"] == old["nonce"] == "n1" and new["nc"] == "00000002" and new["cnonce"] != old["cnonce"]
    assert client.status.state is RegistrationState.REGISTERED and client.status.outstanding


def test_a_new_nonce_on_refresh_is_answered_once() -> None:
    client = make()
    register_ok(client, 0)
    client.handle_timer(client.next_deadline() or 0)
    refresh = sent(client)
    client.receive_response(reply(refresh, 401, ("WWW-Authenticate", challenge("n2"))), 600_000)
    again = sent(client)
    assert auth_of(again)["nonce"] == "n2" and auth_of(again)["nc"] == "00000001"
    client.receive_response(reply(again, 200, ("Contact", f"{CONTACT};expires=600")), 600_010)
    assert client.status.state is RegistrationState.REGISTERED


def test_the_same_nonce_challenged_again_without_stale_means_wrong_credentials() -> None:
    client = make()
    register_ok(client, 0)
    client.handle_timer(client.next_deadline() or 0)
    refresh = sent(client)  # carries n1, nc=2
    client.receive_response(reply(refresh, 401, ("WWW-Authenticate", challenge("n1"))), 600_000)
    assert client.outgoing() == []
    assert client.status.state is RegistrationState.FAILED
    assert client.status.cause is FailureCause.WRONG_CREDENTIALS


def test_stale_nonce_is_retried_with_the_new_nonce() -> None:
    client = make()
    client.start(0)
    first = sent(client)
    client.receive_response(reply(first, 401, ("WWW-Authenticate", challenge("n1"))), 10)
    second = sent(client)
    client.receive_response(reply(second, 401, ("WWW-Authenticate", challenge("n2", stale=True))), 20)
    third = sent(client)
    assert auth_of(third)["nonce"] == "n2" and auth_of(third)["nc"] == "00000001"
    client.receive_response(reply(third, 200), 30)
    assert client.status.state is RegistrationState.REGISTERED


def test_endless_stale_challenges_end_in_a_failure() -> None:
    client = make()
    client.start(0)
    for i in range(20):
        requests = client.outgoing()
        if not requests:
            break
        client.receive_response(reply(wire(requests[0]), 401,
                                      ("WWW-Authenticate", challenge(f"n{i}", stale=i > 0))), i)
    assert client.status.state is RegistrationState.FAILED
    assert client.status.cause is FailureCause.TOO_MANY_ROUNDS


def test_challenge_without_credentials_or_usable_digest_fails() -> None:
    client = make(credentials=None)
    client.start(0)
    client.receive_response(reply(sent(client), 401, ("WWW-Authenticate", challenge("n1"))), 10)
    assert client.status.cause is FailureCause.CANNOT_AUTHENTICATE and client.outgoing() == []
    other = make()
    other.start(0)
    other.receive_response(reply(sent(other), 401, ("WWW-Authenticate", 'Basic realm="x"')), 10)
    assert other.status.cause is FailureCause.CANNOT_AUTHENTICATE


def test_wrong_password_fails_then_retries_with_back_off_doubling_and_capped() -> None:
    client = make(retry_s=30, max_retry_s=200)
    now = 0
    client.start(now)
    delays = []
    for attempt in range(6):
        first = sent(client)
        assert "authorization" not in first.headers  # each attempt starts from a fresh challenge
        client.receive_response(reply(first, 401, ("WWW-Authenticate", challenge(f"a{attempt}"))), now)
        second = sent(client)
        client.receive_response(reply(second, 401, ("WWW-Authenticate", challenge(f"b{attempt}"))), now)
        status = client.status
        assert status.state is RegistrationState.FAILED and status.cause is FailureCause.WRONG_CREDENTIALS
        assert status.failures == attempt + 1 and status.last_status == 401
        assert status.next_attempt_ms is not None
        delays.append(status.next_attempt_ms - now)
        (event,) = client.events()
        assert isinstance(event, RegistrationFailed) and event.retry_at_ms == status.next_attempt_ms
        client.handle_timer(status.next_attempt_ms - 1)
        assert client.outgoing() == []
        now = status.next_attempt_ms
        client.handle_timer(now)
    assert delays == [30_000, 60_000, 120_000, 200_000, 200_000, 200_000]
    # success resets the back-off
    first = sent(client)
    client.receive_response(reply(first, 401, ("WWW-Authenticate", challenge("ok"))), now)
    client.receive_response(reply(sent(client), 200), now + 10)
    assert client.status.failures == 0 and client.status.state is RegistrationState.REGISTERED
    client.handle_timer(client.next_deadline() or 0)
    client.transaction_failed(now + 700_000)
    assert client.status.next_attempt_ms == now + 700_000 + 30_000


# ---- expiry ----------------------------------------------------------------------------------------------------------
def test_423_is_retried_at_once_with_min_expires_which_is_kept() -> None:
    client = make(credentials=None, expires_s=60)
    client.start(0)
    first = sent(client)
    client.receive_response(reply(first, 423, ("Min-Expires", "1800")), 10)
    second = sent(client)
    assert second.expires == 1800 and second.cseq.seq == first.cseq.seq + 1
    client.receive_response(reply(second, 200), 20)  # no Contact, no Expires: what we asked
    assert client.status.granted_s == 1800 and client.status.requested_s == 1800
    assert client.status.contact_listed is False
    client.handle_timer(client.next_deadline() or 0)
    assert sent(client).expires == 1800


def test_423_without_a_higher_min_expires_fails() -> None:
    client = make(credentials=None, expires_s=600)
    client.start(0)
    client.receive_response(reply(sent(client), 423, ("Min-Expires", "300")), 10)
    assert client.status.cause is FailureCause.INTERVAL_TOO_BRIEF and client.outgoing() == []


@pytest.mark.parametrize(("granted", "delay_ms"), [
    (3600, 3_240_000),  # 10 % lead: 360 s
    (120, 108_000),  # 10 % lead: 12 s
    (30, 25_000),  # 5 s lead
    (8, 4_000),  # 5 s lead would be before half: at half
    (1, 500),
])
def test_refresh_timing_follows_the_granted_contact_expires(granted: int, delay_ms: int) -> None:
    assert refresh_delay_ms(granted * 1000) == delay_ms
    client = make(credentials=None)
    client.start(5_000)
    request = sent(client)
    client.receive_response(reply(request, 200, ("Contact", "<sip:other@198.51.100.1>;expires=3600"),
                                  ("Contact", f"<sip:TK9F3@192.0.2.10>;expires={granted}"),
                                  ("Expires", "999")), 5_100)
    # the user part is compared exactly, so TK9F3 is not ours: the Expires header counts
    assert client.status.granted_s == 999 and client.status.contact_listed is False
    client = make(credentials=None)
    client.start(5_000)
    request = sent(client)
    client.receive_response(reply(request, 200, ("Contact", "<sip:other@198.51.100.1>;expires=3600"),
                                  ("Contact", f"<sip:tk9f3@192.0.2.10;transport=udp>;expires={granted}"),
                                  ("Expires", "999")), 5_100)
    assert client.status.granted_s == granted and client.status.contact_listed is True
    assert client.status.expires_at_ms == 5_000 + granted * 1000
    assert client.next_deadline() == max(5_000 + delay_ms, 5_100 + 1_000)


def test_a_2xx_whose_contacts_lack_ours_uses_the_expires_header_else_what_we_asked() -> None:
    client = make(credentials=None, expires_s=900)
    client.start(0)
    client.receive_response(reply(sent(client), 200, ("Contact", "<sip:someone@203.0.113.5>;expires=60"),
                                  ("Expires", "300")), 10)
    assert client.status.granted_s == 300 and client.status.contact_listed is False
    client = make(credentials=None, expires_s=900)
    client.start(0)
    client.receive_response(reply(sent(client), 200, ("Contact", "<sip:someone@203.0.113.5>;expires=60")), 10)
    assert client.status.granted_s == 900 and client.status.state is RegistrationState.REGISTERED


def test_a_2xx_granting_nothing_is_a_failure() -> None:
    client = make(credentials=None)
    client.start(0)
    client.receive_response(reply(sent(client), 200, ("Contact", f"{CONTACT};expires=0")), 10)
    assert client.status.state is RegistrationState.FAILED and client.status.cause is FailureCause.NOTHING_GRANTED


# ---- failures --------------------------------------------------------------------------------------------------------
def test_timeout_fails_then_retries() -> None:
    client = make(credentials=None, retry_s=20)
    client.start(0)
    request = sent(client)
    client.transaction_failed(32_000, request)
    status = client.status
    assert status.state is RegistrationState.FAILED and status.cause is FailureCause.TIMEOUT
    assert (status.last_status, status.next_attempt_ms) == (408, 52_000)
    client.handle_timer(52_000)
    retry = sent(client)
    assert retry.cseq.seq == request.cseq.seq + 1
    client.transaction_failed(60_000, request)  # a failure of the earlier request changes nothing
    assert client.status.outstanding
    client.receive_response(reply(retry, 200), 52_050)
    assert client.status.state is RegistrationState.REGISTERED and client.status.failures == 0


def test_a_transaction_that_never_reports_is_given_up_by_the_guard() -> None:
    client = make(credentials=None)
    client.start(0)
    sent(client)
    client.handle_timer(RESPONSE_GUARD_MS - 1)
    assert client.status.outstanding
    client.handle_timer(RESPONSE_GUARD_MS)
    assert client.status.cause is FailureCause.TIMEOUT and client.next_deadline() == RESPONSE_GUARD_MS + 30_000


def test_503_retry_after_is_honoured_and_3xx_is_a_failure() -> None:
    client = make(credentials=None)
    client.start(0)
    client.receive_response(reply(sent(client), 503, ("Retry-After", "90 (maintenance);duration=600")), 10)
    assert client.status.next_attempt_ms == 10 + 90_000 and client.status.cause is FailureCause.REJECTED
    client.handle_timer(90_010)
    client.receive_response(reply(sent(client), 302, ("Contact", "<sip:elsewhere.example>")), 90_020)
    assert client.status.cause is FailureCause.REDIRECTED and client.outgoing() == []
    assert client.status.next_attempt_ms == 90_020 + 60_000  # second failure in a row: doubled


def test_strays_and_provisional_responses_are_ignored() -> None:
    client = make(credentials=None)
    client.start(0)
    request = sent(client)
    client.receive_response(reply(request, 100), 5)
    stray = reply(request, 200)
    stray.headers.set("CSeq", "99 REGISTER")
    client.receive_response(stray, 6)
    other = reply(request, 200)
    other.headers.set("Call-ID", "someone-else")
    client.receive_response(other, 7)
    assert client.status.outstanding and client.status.state is RegistrationState.REGISTERING
    client.receive_response(reply(request, 200), 8)
    client.receive_response(reply(request, 200), 9)  # a retransmission
    assert [type(e) for e in client.events()] == [Registered]


# ---- stop ------------------------------------------------------------------------------------------------------------
def test_stop_sends_an_unregister_for_our_contact() -> None:
    client = make()
    answered = register_ok(client, 0)
    client.events()
    client.stop(100_000)
    unregister = sent(client)
    assert unregister.expires == 0 and unregister.headers.get("contact") == CONTACT
    assert unregister.cseq.seq == answered.cseq.seq + 1 and unregister.call_id == answered.call_id
    assert auth_of(unregister)["nonce"] == "n1"
    assert client.status.state is RegistrationState.STOPPED and client.status.outstanding
    client.receive_response(reply(unregister, 200), 100_050)
    assert client.events() == [Unregistered(200, "OK")]
    assert client.status.state is RegistrationState.STOPPED and client.status.expires_at_ms is None
    assert client.next_deadline() is None and client.outgoing() == []
    client.stop(100_100)
    assert client.outgoing() == []


def test_unregister_is_challenged_and_answered() -> None:
    client = make()
    register_ok(client, 0)
    client.stop(100_000)
    unregister = sent(client)
    client.receive_response(reply(unregister, 401, ("WWW-Authenticate", challenge("n9", stale=True))), 100_010)
    again = sent(client)
    assert again.expires == 0 and auth_of(again)["nonce"] == "n9"
    client.receive_response(reply(again, 200), 100_020)
    assert client.status.expires_at_ms is None


def test_stop_before_any_binding_sends_nothing() -> None:
    client = make()
    client.start(0)
    client.receive_response(reply(sent(client), 403), 10)
    client.stop(20)
    assert client.outgoing() == [] and client.status.state is RegistrationState.STOPPED
    assert client.next_deadline() is None


def test_stop_while_registering_unregisters_after_the_answer_and_start_again_registers() -> None:
    client = make(credentials=None)
    client.start(0)
    request = sent(client)
    client.stop(5)
    assert client.outgoing() == []
    client.receive_response(reply(request, 200), 10)
    unregister = sent(client)
    assert unregister.expires == 0
    client.start(20)  # started again while the unREGISTER is out
    assert client.outgoing() == []
    client.receive_response(reply(unregister, 200), 30)
    register = sent(client)
    assert register.expires == 600 and register.cseq.seq == unregister.cseq.seq + 1
    client.receive_response(reply(register, 200), 40)
    assert client.status.state is RegistrationState.REGISTERED


# ---- against our own registrar ---------------------------------------------------------------------------------------
class OurRegistrar:
    """The project's registrar core with digest (the REGISTER handler's decisions, without the edge)."""

    def __init__(self, password: str = PASSWORD) -> None:
        self.auth = DigestAuthenticator("ccpbx", algorithms=("SHA-256", "MD5"))
        self.location = LocationService()
        self.registrar = Registrar(self.location, RegistrarPolicy(min_expires=120, max_expires=900))
        self.secrets = {a: ha1(a, USER, "ccpbx", password) for a in ("MD5", "SHA-256")}

    def handle(self, request: Request, now: int) -> Response:
        request = wire(request)
        result = self.auth.verify(request, self.secrets, now)
        if result.outcome is not AuthOutcome.OK:
            response = make_response(request, 401, to_tag="reg")
            for value in self.auth.challenges(now, stale=result.outcome is AuthOutcome.STALE):
                response.headers.add("WWW-Authenticate", value)
        else:
            outcome = self.registrar.register(request, USER, ("udp", "192.0.2.10", 5060), now / 1000)
            response = make_response(request, outcome.status, outcome.reason, to_tag="reg")
            for name, value in outcome.headers:
                response.headers.add(name, value)
        parsed = parse_message(response.serialize())
        assert isinstance(parsed, Response)
        return parsed


def run(client: RegistrationClient, server: OurRegistrar, now: int) -> int:
    """Deliver requests and answers until the client has nothing more to send; returns how many went."""
    count = 0
    while requests := client.outgoing():
        (request,) = requests
        count += 1
        client.receive_response(server.handle(request, now), now)
    return count


def test_against_our_registrar_core() -> None:
    server = OurRegistrar()
    client = make(expires_s=60)
    client.start(1_000_000)
    assert run(client, server, 1_000_000) == 3  # 401, 423 (Min-Expires 120), 200
    status = client.status
    assert status.state is RegistrationState.REGISTERED and status.granted_s == 120 and status.contact_listed
    (binding,) = server.location.lookup(USER, 1_000)
    assert binding.contact == "sip:tk9f3@192.0.2.10:5060" and binding.user_agent == "ccpbx-test"
    refresh_at = client.next_deadline()
    assert refresh_at == 1_000_000 + 108_000
    client.handle_timer(refresh_at)
    assert run(client, server, refresh_at) == 1  # the nonce is reused with nc=2: no new challenge
    assert client.status.expires_at_ms == refresh_at + 120_000
    client.stop(refresh_at + 1_000)
    run(client, server, refresh_at + 1_000)
    assert server.location.lookup(USER, 1_000) == []
    assert client.status.state is RegistrationState.STOPPED and client.next_deadline() is None


def test_against_our_registrar_core_with_a_wrong_password() -> None:
    server = OurRegistrar(password="another")
    client = make()
    client.start(0)
    assert run(client, server, 0) == 2
    assert client.status.cause is FailureCause.WRONG_CREDENTIALS and client.next_deadline() == 30_000


# ---- invariants ------------------------------------------------------------------------------------------------------
ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("respond"), st.sampled_from([
        "200", "200-contact", "200-short", "200-zero", "401-new", "401-same", "401-stale", "407-new", "423",
        "423-low", "503", "503-retry", "302", "403", "100"])),
    st.tuples(st.just("stray"), st.sampled_from(["200", "401-new"])),
    st.tuples(st.just("timeout"), st.booleans()),
    st.tuples(st.just("advance"), st.integers(0, 2_000_000)),
    st.tuples(st.just("timer"), st.just(0)),
    st.tuples(st.just("stop"), st.just(0)),
    st.tuples(st.just("start"), st.just(0)),
), max_size=60)


def _respond(request: Request, kind: str, counter: int) -> Response:
    status = int(kind[:3])
    headers: list[tuple[str, str]] = []
    sent_nonce = (AuthParams.parse(request.headers.get("authorization") or "Digest x=y").get("nonce")
                  if "authorization" in request.headers else None)
    if kind == "200-contact":
        headers.append(("Contact", f"{CONTACT};expires=300"))
    elif kind == "200-short":
        headers.append(("Contact", f"{CONTACT};expires=1"))
    elif kind == "200-zero":
        headers.append(("Contact", f"{CONTACT};expires=0"))
    elif kind == "401-new":
        headers.append(("WWW-Authenticate", challenge(f"n{counter}")))
    elif kind == "401-same":
        headers.append(("WWW-Authenticate", challenge(sent_nonce or "n0")))
    elif kind == "401-stale":
        headers.append(("WWW-Authenticate", challenge(f"s{counter}", stale=True)))
    elif kind == "407-new":
        headers.append(("Proxy-Authenticate", challenge(f"p{counter}", algorithm="SHA-256")))
    elif kind == "423":
        headers.append(("Min-Expires", str(600 + counter)))
    elif kind == "423-low":
        headers.append(("Min-Expires", "10"))
    elif kind == "503-retry":
        headers.append(("Retry-After", "0"))
    return reply(request, status, *headers)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_one_request_at_a_time_cseq_rises_and_deadlines_are_never_past(actions: list[tuple[str, object]]) -> None:
    client = make(expires_s=60, retry_s=5, max_retry_s=40)
    now = 0
    client.start(now)
    outstanding: Request | None = None
    last_answered: Request | None = None
    seqs: list[int] = []

    sent_at = now

    def collect() -> None:
        nonlocal outstanding, sent_at
        requests = [wire(r) for r in client.outgoing()]
        assert len(requests) <= 1
        if requests:
            assert outstanding is None, "a second request while one is outstanding"
            (outstanding,) = requests
            sent_at = now
            assert outstanding.call_id == client.call_id
            seqs.append(outstanding.cseq.seq)
        assert client.status.outstanding == (outstanding is not None)

    collect()
    for counter, (action, arg) in enumerate(actions):
        if action == "respond" and outstanding is not None:
            response = _respond(outstanding, str(arg), counter)
            if response.status >= 200:
                last_answered, outstanding = outstanding, None
            client.receive_response(response, now)
        elif action == "stray" and last_answered is not None:
            client.receive_response(_respond(last_answered, str(arg), counter), now)
        elif action == "timeout" and outstanding is not None:
            client.transaction_failed(now, outstanding if arg else None)
            last_answered, outstanding = outstanding, None
        elif action == "advance":
            assert isinstance(arg, int)
            now += arg
        elif action == "timer":
            deadline = client.next_deadline()
            if deadline is not None:
                now = max(now, deadline)
            client.handle_timer(now)
            if outstanding is not None and now >= sent_at + RESPONSE_GUARD_MS:
                last_answered, outstanding = outstanding, None  # the guard gave up on it
            collect()
            deadline = client.next_deadline()
            assert deadline is None or deadline > now
            continue
        elif action == "stop":
            client.stop(now)
        elif action == "start":
            client.start(now)
        collect()
        client.events()
    assert seqs == sorted(set(seqs)) and seqs == list(range(1, len(seqs) + 1))
