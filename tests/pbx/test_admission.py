"""Admission: one decision for REGISTER, INVITE and SUBSCRIBE — lockout, trusted network, digest — pure."""

from __future__ import annotations

import time

from ccpbx.pbx.admission import Admission, AdmissionContext, Admitted, Challenged, Refused
from ccpbx.pbx.sip.auth import DigestAuthenticator
from ccpbx.pbx.sip.message import Request
from tests.pbx.test_auth import answer, register, secrets_for

SOURCE = ("udp", "10.0.0.1", 5060)
PASSWORD = "pw-201-secret"


def admission(**kw: object) -> Admission:
    auth = DigestAuthenticator("ccpbx", algorithms=("MD5",))
    return Admission(auth, max_failures=3, failure_window_s=300, **kw)  # type: ignore[arg-type]


def context(request: Request, *, ha1: bool = True, registered: bool = False, status: int = 401,
            must_match: str | None = "201", now_s: float = 1000.0) -> AdmissionContext:
    return AdmissionContext(request=request, source=SOURCE, user="201", challenge_status=status, now_ms=1_000,
                            now_s=now_s, ha1=secrets_for(PASSWORD) if ha1 else None,
                            registered_from_source=registered, must_match=must_match)


def challenge_of(adm: Admission) -> str:
    decision = adm.decide(context(register()))
    assert isinstance(decision, Challenged) and decision.status == 401
    assert decision.headers[0][0] == "WWW-Authenticate"
    return decision.headers[0][1]


def test_no_credentials_are_challenged_and_the_right_ones_admitted() -> None:
    adm = admission()
    request = register(answer(challenge_of(adm), PASSWORD))
    assert adm.decide(context(request)) == Admitted("201", "digest")


def test_invite_is_challenged_with_407_and_proxy_authenticate() -> None:
    decision = admission().decide(context(register(), status=407))
    assert isinstance(decision, Challenged) and decision.status == 407
    assert decision.headers[0][0] == "Proxy-Authenticate"


def test_wrong_passwords_are_refused_counted_then_locked_out_without_a_challenge() -> None:
    adm = admission()
    for _ in range(3):
        wrong = register(answer(challenge_of(adm), "guess"))
        assert adm.decide(context(wrong)) == Refused(403, "Wrong credentials")
    right = register(answer(challenge_of_fresh(), PASSWORD))
    assert adm.decide(context(right)) == Refused(403, "Too many failed attempts")
    assert adm.decide(context(register())) == Refused(403, "Too many failed attempts")  # no challenge either
    adm.failures.purge(2000.0)  # the window has passed
    assert isinstance(adm.decide(context(register(), now_s=2000.0)), Challenged)


def challenge_of_fresh() -> str:
    return challenge_of(admission())


def test_an_unknown_user_is_refused_and_counted() -> None:
    adm = admission()
    request = register(answer(challenge_of(adm), PASSWORD))
    assert adm.decide(context(request, ha1=False)).status == 403  # type: ignore[union-attr]
    assert adm.failures.count(("10.0.0.1", "201"), 1000.0) == 1


def test_credentials_of_another_user_do_not_register_this_one() -> None:
    adm = admission()
    request = register(answer(challenge_of(adm), PASSWORD))
    decision = adm.decide(context(request, must_match="202"))
    assert decision == Refused(403, "Credentials do not match the user registered")


def test_trusted_network_admits_only_from_where_the_user_registered() -> None:
    adm = admission(trusted_networks=("10.0.0.0/8",))
    assert adm.decide(context(register(), registered=True, status=407)) == Admitted("201", "trusted")
    assert isinstance(adm.decide(context(register(), registered=False, status=407)), Challenged)
    untrusted = admission(trusted_networks=("192.0.2.0/24",))
    assert isinstance(untrusted.decide(context(register(), registered=True, status=407)), Challenged)


def test_a_first_invite_needs_no_lookup_unless_trusted_networks_are_set() -> None:
    assert not admission().needs_lookup(register(), 407)
    assert admission(trusted_networks=("10.0.0.0/8",)).needs_lookup(register(), 407)
    assert admission().needs_lookup(register("Digest username=\"201\""), 401)


def test_claimed_user_prefers_the_credentials_then_the_to_or_from_user() -> None:
    adm = admission()
    assert adm.claimed_user(register(), 401) == "201"
    assert adm.claimed_user(register(answer(challenge_of(adm), PASSWORD, user="alice")), 401) == "alice"


def test_failure_windows_are_capped_oldest_first() -> None:
    from ccpbx.pbx.admission import FailureWindows

    windows = FailureWindows(ttl_s=300, max_entries=100)
    for i in range(1000):
        windows.failed((f"10.0.{i // 256}.{i % 256}", "201"), now_s=float(i))
    assert len(windows.windows) == 100 and windows.evicted == 900
    assert windows.count(("10.0.3.231", "201"), 1000.0) == 1  # the newest kept
    assert windows.count(("10.0.0.0", "201"), 1000.0) == 0
    # A window that expired and starts again counts as new: it moves to the end and is not the next evicted.
    windows.failed(("10.0.3.132", "201"), now_s=2000.0)  # i=900, the oldest kept, expired at 1200
    windows.failed(("192.0.2.1", "201"), now_s=2000.0)
    assert windows.count(("10.0.3.132", "201"), 2000.0) == 1
    assert ("10.0.3.133", "201") not in windows.windows and windows.evicted == 901  # evicted instead
    assert ("10.0.3.132", "201") in windows.windows and len(windows.windows) == 100


class _Services:
    """What :func:`admit_now` and :func:`admit` use of the edge: replies and decisions are recorded; the
    extension is "cached" once ``cached`` is set."""

    def __init__(self) -> None:
        from ccpbx.pbx.location import LocationService

        self.location = LocationService()
        self.replies: list[tuple[int, str | None, list[tuple[str, str]]]] = []
        self.decided: list[object] = []
        self.cached = False

    def now(self) -> int:
        return 1_000

    def reply(self, request: Request, status: int, *, reason: str | None = None,
              headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()) -> None:
        self.replies.append((status, reason, list(headers)))

    def admission_decided(self, request: Request, source: object, user: str, decision: object) -> None:
        self.decided.append(decision)

    async def extension(self, user: str) -> object:
        return object()

    def cached_extension(self, user: str) -> tuple[bool, object]:
        return (True, object()) if self.cached else (False, None)

    def ha1s(self, extension: object) -> dict[str, str]:
        return secrets_for(PASSWORD)


def test_what_needs_no_store_is_decided_at_once_with_no_task() -> None:
    """The first REGISTER or INVITE of an exchange needs no store look-up, and credentials need only the cached
    extension: decided (and a challenge or refusal answered) without a task. NEEDS_STORE means the handler must
    go the asynchronous way, admit(), and nothing was answered or counted yet."""
    from ccpbx.pbx.sip_handlers import NEEDS_STORE, admit_now

    adm, services = admission(), _Services()
    assert admit_now(services, adm, register(), SOURCE, challenge_status=401) is None  # type: ignore[arg-type]
    [(status, _, headers)] = services.replies
    assert status == 401 and headers[0][0] == "WWW-Authenticate" and isinstance(services.decided[0], Challenged)
    with_credentials = register(answer(headers[0][1], PASSWORD))
    assert admit_now(services, adm, with_credentials, SOURCE, challenge_status=401) is NEEDS_STORE  # type: ignore[arg-type]
    assert len(services.replies) == 1 and len(services.decided) == 1  # nothing answered or counted
    services.cached = True  # now the extension is cached: checked at once
    assert admit_now(services, adm, with_credentials, SOURCE, challenge_status=401,  # type: ignore[arg-type]
                     must_match="201") == Admitted("201", "digest")
    assert len(services.replies) == 1 and services.decided[-1] == Admitted("201", "digest")
    wrong = register(answer(challenge_of(adm), "guess"))
    assert admit_now(services, adm, wrong, SOURCE, challenge_status=401) is None  # type: ignore[arg-type]
    assert services.replies[-1][:2] == (403, "Wrong credentials")
    for _ in range(3):  # locked out: the next bare request is refused at once, not challenged
        adm.failures.failed((SOURCE[1], "201"), time.time())
    assert admit_now(services, adm, register(), SOURCE, challenge_status=401) is None  # type: ignore[arg-type]
    assert services.replies[-1][:2] == (403, "Too many failed attempts")
    services.cached = False  # a trusted network needs the location service and the extension
    trusting = admission(trusted_networks=("10.0.0.0/8",))
    assert admit_now(services, trusting, register(), SOURCE, challenge_status=401) is NEEDS_STORE  # type: ignore[arg-type]


async def test_admit_still_decides_what_needs_the_store() -> None:
    from ccpbx.pbx.sip_handlers import admit

    adm, services = admission(), _Services()
    challenge = challenge_of(adm)
    admitted = await admit(services, adm, register(answer(challenge, PASSWORD)), SOURCE,  # type: ignore[arg-type]
                           challenge_status=401, must_match="201")
    assert admitted == Admitted("201", "digest") and services.replies == []
    assert await admit(services, adm, register(answer(challenge_of(adm), "guess")), SOURCE,  # type: ignore[arg-type]
                       challenge_status=401) is None
    assert services.replies[-1][:2] == (403, "Wrong credentials")
