"""Admission: who is asking, and may it? One decision shared by every method that needs one.

REGISTER, INVITE and SUBSCRIBE all ask the same question — admit, challenge or reject — so they share one
:class:`Admission` with an ordered list of policies, pjsip-style: the first policy with an opinion decides.

- :class:`LockoutPolicy`: after ``max_failures`` wrong passwords from one address for one user, 403 without a
  challenge until the window passes (the guess is stopped; banning the guesser is the hardening issue's);
- :class:`TrustedNetworkPolicy`: ``[auth] trusted_networks``: a request without credentials from a trusted
  network, sent from the very address its user registered from (registration is always authenticated);
- :class:`DigestPolicy`: RFC 3261 §22 digest with RFC 7616/8760 (MD5, SHA-256): a request without credentials
  is challenged (401 for REGISTER and SUBSCRIBE to a registrar, 407 for INVITE), a stale nonce re-challenged,
  wrong credentials refused with 403 and counted.

Trunks will add a source-address policy. Pure: the edge looks up what the policies need (the extension the
credentials name, whether the source is a registered contact) into an :class:`AdmissionContext` and passes
``now``; nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ccpbx.pbx.sip.auth import AuthOutcome, DigestAuthenticator
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip.uri import SipUri

__all__ = [
    "Admission",
    "AdmissionContext",
    "AdmissionPolicy",
    "Admitted",
    "Challenged",
    "Decision",
    "DigestPolicy",
    "FailureWindows",
    "LockoutPolicy",
    "Refused",
    "TrustedNetworkPolicy",
]


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request comes from ``user`` (an extension), established ``via`` a policy ("digest", "trusted")."""

    user: str
    via: str


@dataclass(frozen=True, slots=True)
class Challenged:
    """Answer ``status`` (401 or 407) with these ``WWW-/Proxy-Authenticate`` headers."""

    status: int
    headers: tuple[tuple[str, str], ...]
    cause: str | None = field(default=None, compare=False)  # "nonce-unknown", "nonce-replayed"... (for bans)


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer ``status`` (403, 400...) with ``reason``."""

    status: int
    reason: str | None = None
    cause: str | None = field(default=None, compare=False)  # "wrong-password", "unknown-user"... (for bans)


Decision = Admitted | Challenged | Refused


@dataclass(frozen=True, slots=True)
class AdmissionContext:
    """What the policies decide on; the edge fills in the looked-up parts.

    ``user`` is who the request claims to be: the credentials' username, else the From (INVITE, SUBSCRIBE) or
    To (REGISTER) user. ``ha1`` are that extension's stored HA1 values (None: no such extension, or not looked
    up because no policy needs them). ``registered_from_source``: the user has a live binding whose source is
    exactly this request's source. ``must_match``: the identity the credentials must be (REGISTER's To user).
    """

    request: Request
    source: Destination
    user: str
    challenge_status: int  # 401 (registrar, RFC 3261 §22.1) or 407 (proxy/B2BUA, §22.3)
    now_ms: int
    now_s: float
    ha1: Mapping[str, str] | None = None
    registered_from_source: bool = False
    must_match: str | None = None

    @property
    def header(self) -> str:
        return "authorization" if self.challenge_status == 401 else "proxy-authorization"

    @property
    def has_credentials(self) -> bool:
        return self.header in self.request.headers


class AdmissionPolicy(Protocol):
    """One rule: a decision, or None to leave it to the next policy."""

    def decide(self, context: AdmissionContext) -> Decision | None: ...


MAX_FAILURE_WINDOWS = 100_000  # (address, user) pairs with a recent wrong password, kept at once


@dataclass(slots=True)
class _Window:
    count: int
    first_s: float


@dataclass(slots=True)
class FailureWindows:
    """Wrong-password counts per (source address, user), each window ``ttl_s`` long, at most ``max_entries``.

    A guesser chooses the keys (any address, any user name), so the table is capped: when it is full the oldest
    window goes first (dict order is age order: a restarted window moves to the end), and ``evicted`` counts them.
    The bans (``pbx.bans``) still see every failure, so an evicted window never hides a guesser from them.
    """

    ttl_s: float
    max_entries: int = MAX_FAILURE_WINDOWS
    windows: dict[tuple[str, str], _Window] = field(default_factory=dict)
    evicted: int = 0

    def count(self, key: tuple[str, str], now_s: float) -> int:
        window = self.windows.get(key)
        if window is None or now_s - window.first_s >= self.ttl_s:
            return 0
        return window.count

    def failed(self, key: tuple[str, str], now_s: float) -> None:
        window = self.windows.get(key)
        if window is None or now_s - window.first_s >= self.ttl_s:
            if window is not None:
                del self.windows[key]  # re-inserted below, at the end: the newest
            elif len(self.windows) >= self.max_entries:
                del self.windows[next(iter(self.windows))]
                self.evicted += 1
            window = self.windows[key] = _Window(0, now_s)
        window.count += 1

    def succeeded(self, key: tuple[str, str]) -> None:
        self.windows.pop(key, None)

    def purge(self, now_s: float) -> None:
        self.windows = {k: w for k, w in self.windows.items() if now_s - w.first_s < self.ttl_s}


class LockoutPolicy:
    """403 without a challenge while one address has failed ``max_failures`` times for one user."""

    def __init__(self, failures: FailureWindows, max_failures: int) -> None:
        self.failures = failures
        self.max_failures = max_failures

    def decide(self, context: AdmissionContext) -> Decision | None:
        if self.failures.count((context.source[1], context.user), context.now_s) >= self.max_failures:
            return Refused(403, "Too many failed attempts", cause="locked-out")
        return None


class TrustedNetworkPolicy:
    """Admit a request without credentials from a trusted network, sent from where its user registered."""

    def __init__(self, networks: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    @property
    def enabled(self) -> bool:
        return bool(self.networks)

    def trusts(self, source: Destination) -> bool:
        try:
            address = ipaddress.ip_address(source[1])
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def decide(self, context: AdmissionContext) -> Decision | None:
        if (context.has_credentials or not context.registered_from_source or context.ha1 is None
                or not self.trusts(context.source)):
            return None
        return Admitted(context.user, "trusted")


# Why a stale=true challenge was sent (``Challenged.cause``): an expired nonce is routine; a nonce we never
# issued (forged, foreign, or from before a restart) or a replayed nonce-count is what bans watch for.
_STALE_CAUSES = {"unknown or expired nonce": "nonce-unknown", "nonce expired": "nonce-expired",
                 "nonce count replayed": "nonce-replayed"}


class DigestPolicy:
    """RFC 3261 §22 / RFC 7616 digest: challenge, verify, refuse (and count) wrong credentials."""

    def __init__(self, authenticator: DigestAuthenticator, failures: FailureWindows) -> None:
        self.auth = authenticator
        self.failures = failures

    def challenge(self, context: AdmissionContext, *, stale: bool = False, cause: str | None = None) -> Challenged:
        name = "WWW-Authenticate" if context.challenge_status == 401 else "Proxy-Authenticate"
        return Challenged(context.challenge_status,
                          tuple((name, c) for c in self.auth.challenges(context.now_ms, stale=stale)), cause)

    def decide(self, context: AdmissionContext) -> Decision | None:
        if not context.has_credentials:
            return self.challenge(context)
        result = self.auth.verify(context.request, context.ha1, context.now_ms, header=context.header)
        outcome = result.outcome
        if outcome is AuthOutcome.MISSING:
            return self.challenge(context)
        if outcome is AuthOutcome.STALE:
            return self.challenge(context, stale=True, cause=_STALE_CAUSES.get(result.reason, "nonce-expired"))
        if outcome is AuthOutcome.MALFORMED:
            return Refused(400, result.reason[:80] or "Malformed credentials", cause="malformed")
        key = (context.source[1], context.user)
        if outcome is not AuthOutcome.OK or context.ha1 is None:
            self.failures.failed(key, context.now_s)
            if outcome is AuthOutcome.WRONG:
                return Refused(403, "Wrong credentials", cause="wrong-password")
            return Refused(403, None, cause="unknown-user")
        if context.must_match is not None and result.username != context.must_match:
            return Refused(403, "Credentials do not match the user registered", cause="identity-mismatch")
        self.failures.succeeded(key)
        return Admitted(result.username or context.user, "digest")


class Admission:
    """The ordered policies; see the module docstring."""

    def __init__(self, authenticator: DigestAuthenticator, *, max_failures: int, failure_window_s: float,
                 trusted_networks: Sequence[str] = ()) -> None:
        self.auth = authenticator
        self.failures = FailureWindows(failure_window_s)
        self.trusted = TrustedNetworkPolicy(trusted_networks)
        self.digest = DigestPolicy(authenticator, self.failures)
        self.policies: list[AdmissionPolicy] = [LockoutPolicy(self.failures, max_failures), self.trusted,
                                                self.digest]

    def claimed_user(self, request: Request, challenge_status: int) -> str:
        """Who ``request`` says it is: its credentials' username, else its From (or REGISTER's To) user.

        Raises :class:`SipParseError` for a From/To that cannot be parsed.
        """
        header = "authorization" if challenge_status == 401 else "proxy-authorization"
        try:
            creds = self.auth.credentials(request, header)
        except SipParseError:
            creds = None
        if creds is not None and creds.username:
            return creds.username
        uri = request.to.uri if request.method == "REGISTER" else request.from_.uri
        return (uri.user_unescaped or "") if isinstance(uri, SipUri) else ""

    def needs_lookup(self, request: Request, challenge_status: int) -> bool:
        """Whether deciding needs the user's extension: not for a first INVITE that will only be challenged
        (calls per second: no store lookup for the 407)."""
        header = "authorization" if challenge_status == 401 else "proxy-authorization"
        return header in request.headers or self.trusted.enabled

    def decide(self, context: AdmissionContext) -> Decision:
        for policy in self.policies:
            decision = policy.decide(context)
            if decision is not None:
                return decision
        return Refused(403)

    def purge(self, now_ms: int, now_s: float) -> None:
        self.auth.purge(now_ms)
        self.failures.purge(now_s)
