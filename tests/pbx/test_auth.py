"""Digest authentication (RFC 7616, RFC 8760): known answers, nonce expiry, replay, tampering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.sip.auth import AuthOutcome, DigestAuthenticator, digest_response, ha1
from ccpbx.pbx.sip.headers import AuthParams
from ccpbx.pbx.sip.message import Request, parse_message
from ccpbx.pbx.sip.uri import SipUri

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_section_3_9_1_example(algorithm: str, expected: str) -> None:
    h = ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    assert digest_response(algorithm, h, "GET", "/dir/index.html", RFC7616_NONCE, "00000001", RFC7616_CNONCE,
                           "auth") == expected


def register(auth_header: str | None = None, uri: str = "sip:pbx.example") -> Request:
    lines = [f"REGISTER {uri} SIP/2.0", "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
             "From: <sip:201@pbx.example>;tag=a", "To: <sip:201@pbx.example>", "Call-ID: c1", "CSeq: 1 REGISTER",
             "Contact: <sip:201@10.0.0.1>"]
    if auth_header:
        lines.append(f"Authorization: {auth_header}")
    message = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def answer(challenge: str, password: str, *, user: str = "201", nc: int = 1, uri: str = "sip:pbx.example",
           method: str = "REGISTER") -> str:
    p = AuthParams.parse(challenge).as_dict()
    algorithm = p["algorithm"]
    h = ha1(algorithm, user, p["realm"], password)
    nc_text = f"{nc:08x}"
    response = digest_response(algorithm, h, method, uri, p["nonce"], nc_text, "abc", "auth")
    return (f'Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc_text}, cnonce="abc", '
            f'opaque="{p["opaque"]}"')


def secrets_for(password: str = "pw-201-secret") -> dict[str, str]:
    return {a: ha1(a, "201", "ccpbx", password) for a in ("MD5", "SHA-256")}


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_right_password_is_accepted(algorithm: str) -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("SHA-256", "MD5"))
    challenge = next(c for c in auth.challenges(1000) if f"algorithm={algorithm}" in c)
    result = auth.verify(register(answer(challenge, "pw-201-secret")), secrets_for(), 1500)
    assert result.outcome is AuthOutcome.OK and result.username == "201"


def test_challenges_list_every_algorithm_in_order_with_qop() -> None:
    values = DigestAuthenticator("ccpbx", algorithms=("SHA-256", "MD5")).challenges(0)
    assert [AuthParams.parse(v).get("algorithm") for v in values] == ["SHA-256", "MD5"]
    assert all(AuthParams.parse(v).get("qop") == "auth" for v in values)
    assert all(AuthParams.parse(v).get("stale") is None for v in values)


def test_wrong_password_missing_and_unknown_user() -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    challenge = auth.challenges(0)[0]
    assert auth.verify(register(answer(challenge, "wrong")), secrets_for(), 10).outcome is AuthOutcome.WRONG
    assert auth.verify(register(), secrets_for(), 10).outcome is AuthOutcome.MISSING
    assert auth.verify(register(answer(challenge, "x")), None, 10).outcome is AuthOutcome.UNKNOWN_USER


def test_expired_nonce_is_stale_even_with_the_right_password() -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",), nonce_ttl_ms=1000)
    challenge = auth.challenges(0)[0]
    assert auth.verify(register(answer(challenge, "pw-201-secret")), secrets_for(), 1001).outcome is AuthOutcome.STALE
    fresh = auth.challenges(1001, stale=True)[0]
    assert AuthParams.parse(fresh).get("stale") == "true"
    assert auth.verify(register(answer(fresh, "pw-201-secret")), secrets_for(), 1500).outcome is AuthOutcome.OK


def test_nonce_from_another_process_is_stale_not_wrong() -> None:
    old = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    new = DigestAuthenticator("ccpbx", algorithms=("MD5",))  # a restart: new secret
    header = answer(old.challenges(0)[0], "pw-201-secret")
    assert new.verify(register(header), secrets_for(), 10).outcome is AuthOutcome.STALE


def test_replayed_nonce_count_is_refused_and_higher_count_accepted() -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    challenge = auth.challenges(0)[0]
    first = register(answer(challenge, "pw-201-secret", nc=1))
    assert auth.verify(first, secrets_for(), 10).outcome is AuthOutcome.OK
    assert auth.verify(first, secrets_for(), 20).outcome is AuthOutcome.STALE
    second = register(answer(challenge, "pw-201-secret", nc=2))
    assert auth.verify(second, secrets_for(), 30).outcome is AuthOutcome.OK


def test_tampered_nonce_is_not_accepted() -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    challenge = auth.challenges(0)[0]
    nonce = AuthParams.parse(challenge).get("nonce") or ""
    stamp, rand, mac = nonce.split(".")
    forged = challenge.replace(nonce, f"{int(stamp, 16) + 10**6:x}.{rand}.{mac}")
    assert auth.verify(register(answer(forged, "pw-201-secret")), secrets_for(), 10).outcome is AuthOutcome.STALE


def test_uri_must_name_the_request_uri_but_parameters_may_differ() -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    challenge = auth.challenges(0)[0]
    other = register(answer(challenge, "pw-201-secret", uri="sip:elsewhere.example"))
    assert auth.verify(other, secrets_for(), 10).outcome is AuthOutcome.MALFORMED
    with_params = register(answer(challenge, "pw-201-secret", uri="sip:pbx.example;transport=UDP"))
    assert auth.verify(with_params, secrets_for(), 10).outcome is AuthOutcome.OK
    other_user = register(answer(challenge, "pw-201-secret", uri="sip:someone@pbx.example"))
    assert auth.verify(other_user, secrets_for(), 10).outcome is AuthOutcome.MALFORMED


def test_a_uri_naming_the_server_itself_is_accepted_for_any_request_uri_user() -> None:
    """SIPp signs ``sip:host:port`` (the server) whatever the Request-URI's user is."""
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    challenge = auth.challenges(0)[0]
    request = register(answer(challenge, "pw-201-secret", uri="sip:pbx.example"))
    request.uri = SipUri.parse("sip:1002@pbx.example")
    assert auth.verify(request, secrets_for(), 10).outcome is AuthOutcome.OK


def test_rfc2069_response_without_qop_is_accepted_once() -> None:
    """pyVoIP and other old stacks answer without qop; the nonce is then good for one request."""
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    p = AuthParams.parse(auth.challenges(0)[0]).as_dict()
    response = digest_response("MD5", ha1("MD5", "201", "ccpbx", "pw-201-secret"), "REGISTER", "sip:pbx.example",
                               p["nonce"])
    header = f'Digest username="201",realm="ccpbx",nonce="{p["nonce"]}",uri="sip:pbx.example",response="{response}"'
    assert auth.verify(register(header), secrets_for(), 10).outcome is AuthOutcome.OK
    assert auth.verify(register(header), secrets_for(), 20).outcome is AuthOutcome.STALE


def test_malformed_credentials() -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    assert auth.verify(register('Digest username="201", realm="ccpbx"'), secrets_for(), 0).outcome \
        is AuthOutcome.MALFORMED
    qop_without_nc = 'Digest username="201", realm="ccpbx", nonce="n", uri="sip:x", response="r", qop=auth'
    assert auth.verify(register(qop_without_nc), secrets_for(), 0).outcome is AuthOutcome.MALFORMED


def test_other_realms_are_ignored() -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    header = 'Digest username="201", realm="elsewhere", nonce="n", uri="sip:x", response="r"'
    assert auth.verify(register(header), secrets_for(), 0).outcome is AuthOutcome.MISSING


@settings(max_examples=60, deadline=None)
@given(password=st.text(min_size=1, max_size=30), guess=st.text(min_size=1, max_size=30))
def test_only_the_right_password_passes(password: str, guess: str) -> None:
    auth = DigestAuthenticator("ccpbx", algorithms=("SHA-256",))
    header = answer(auth.challenges(0)[0], guess)
    outcome = auth.verify(register(header), secrets_for(password), 5).outcome
    assert outcome is (AuthOutcome.OK if guess == password else AuthOutcome.WRONG)


@pytest.mark.parametrize("algorithms", [("MD5",), ("SHA-256", "MD5"), ("SHA-256",)])
def test_our_client_answer_passes_our_verifier(algorithms: tuple[str, ...]) -> None:
    """The UAC side (an outbound request challenged by a provider): the strongest challenge is answered."""
    from ccpbx.pbx.sip.auth import choose_challenge, client_authorization

    server = DigestAuthenticator("ccpbx", algorithms=algorithms)
    challenge = choose_challenge(server.challenges(0))
    assert challenge is not None and challenge.get("algorithm") == algorithms[0]
    value = client_authorization(challenge, method="REGISTER", uri="sip:pbx.example", username="201",
                                 password="pw-201-secret", cnonce="c0ffee")
    assert "qop=auth" in value and 'cnonce="c0ffee"' in value
    assert server.verify(register(value), secrets_for(), 0).outcome is AuthOutcome.OK
    wrong = client_authorization(challenge, method="REGISTER", uri="sip:pbx.example", username="201",
                                 password="guess", cnonce="c0ffee", nc=2)
    assert server.verify(register(wrong), secrets_for(), 0).outcome is AuthOutcome.WRONG


def test_choose_challenge_skips_what_we_cannot_answer() -> None:
    from ccpbx.pbx.sip.auth import choose_challenge

    assert choose_challenge(['Basic realm="x"', 'Digest realm="x", nonce="n", algorithm=SHA-512-256']) is None
    chosen = choose_challenge(['Digest realm="x", nonce="n1"', 'Digest realm="x", nonce="n2", algorithm=SHA-256'])
    assert chosen is not None and chosen.get("nonce") == "n2"


@pytest.mark.parametrize("stale", [False, True])
def test_challenges_are_formatted_as_format_auth_would_with_a_fresh_nonce_each(stale: bool) -> None:
    from ccpbx.pbx.sip.headers import format_auth

    auth = DigestAuthenticator('a "quoted" realm', secret=b"k" * 32, opaque="op", issuer="ab12")
    first, again = auth.challenges(1000, stale=stale), auth.challenges(1000, stale=stale)
    nonce = AuthParams.parse(first[0]).get("nonce")
    assert nonce and nonce != AuthParams.parse(again[0]).get("nonce")
    expected = [format_auth("Digest", [("realm", 'a "quoted" realm'), ("nonce", nonce), ("opaque", "op"),
                                       ("algorithm", algorithm), ("qop", "auth"),
                                       *([("stale", "true")] if stale else [])])
                for algorithm in ("SHA-256", "MD5")]
    assert first == expected
