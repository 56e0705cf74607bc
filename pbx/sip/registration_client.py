"""Outbound registration (RFC 3261 §10.2): keep one Contact bound at a registrar, as a SIP trunk needs it.

A sans-IO core. The edge feeds it ``start``/``stop``, the final responses and transaction failures of the
REGISTERs it sent, and timer firings; it drains ``outgoing()`` (REGISTER requests, each with a fresh Via branch,
to send to ``destination``) and ``events()`` (what to log), and arms one timer at ``next_deadline()``.

What it does, by section:

- §10.2: every REGISTER of one client has the same Call-ID and From tag and a CSeq one higher than the last;
  never more than one is outstanding (§10.2 "MUST NOT send a new registration until it has received a final
  response from the registrar for the previous one or the previous REGISTER request has timed out").
- §22.2, §22.3, RFC 7616 §3.4, RFC 8760: a 401 is answered with ``Authorization``, a 407 with
  ``Proxy-Authorization``, once per nonce, choosing the strongest algorithm offered (SHA-256 over MD5). The
  nonce is reused for later refreshes with nc counting up (a fresh cnonce each time); a challenge to credentials
  that were just computed, or naming the nonce we answered, without ``stale=true`` means the credentials are
  wrong. ``stale=true`` is answered with the new nonce.
- §10.2.8: 423 Interval Too Brief is retried at once with its ``Min-Expires``, which is kept for refreshes.
- §10.2.4: the time granted is the ``expires`` parameter of the Contact in the 2xx that is ours, else the 2xx's
  ``Expires`` header, else what we asked. It counts from when the REGISTER was sent (the registrar cannot have
  started its clock earlier). The refresh goes out ``max(5 s, 10 %)`` before expiry, never before half of it.
- Failures (other 4xx/5xx/6xx, 3xx, which are not followed, and timeouts, §8.1.3.1) retry after ``retry_s``,
  doubling up to ``max_retry_s``; a 503's ``Retry-After`` (§20.33) replaces the back-off delay. A 2xx resets it.
- ``stop`` removes our binding with Expires: 0 for our Contact (§10.2.2), not ``*``: other devices may share the
  address-of-record.

Times are monotonic milliseconds passed in as ``now``; nothing here reads a clock, sleeps or logs.

Wiring, in a ``SipHandler``: after every input, send each of ``outgoing()`` with
``key = services.send_request(request, client.destination)`` and remember ``key -> client``; log ``events()``;
arm one ``DeadlineTimer`` with ``next_deadline()``. ``on_response(response, key)`` of a remembered key calls
``receive_response(response, now)`` (1xx are ignored here); ``on_transaction_failed(key, request)`` calls
``transaction_failed(now, request)``; the timer calls ``handle_timer(now)``.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from ccpbx.pbx.sip.auth import choose_challenge, client_authorization
from ccpbx.pbx.sip.dialog import DEFAULT_MAX_FORWARDS, uri_destination
from ccpbx.pbx.sip.errors import SipLocalError, SipParseError
from ccpbx.pbx.sip.headers import AuthParams, Headers, Via, extra_headers
from ccpbx.pbx.sip.message import Request, Response, new_branch, new_call_id, new_tag, via_text
from ccpbx.pbx.sip.transaction import T1_MS, TRANSPORTS, Destination
from ccpbx.pbx.sip.uri import NameAddr, SipUri, unquote_string

__all__ = [
    "FailureCause",
    "Registered",
    "RegistrationClient",
    "RegistrationEvent",
    "RegistrationFailed",
    "RegistrationState",
    "RegistrationStatus",
    "Unregistered",
    "refresh_delay_ms",
]

# A REGISTER whose transaction never reports back (an edge bug) is given up after twice Timer F (64·T1, §17.1.2.2),
# so the client can never be stuck; the transaction layer's own timeout comes first.
RESPONSE_GUARD_MS = 128 * T1_MS
REFRESH_MIN_LEAD_MS = 5_000  # refresh at least this long before the binding expires ...
REFRESH_LEAD_FRACTION = 10  # ... or a tenth of the granted time, whichever is longer ...
MIN_REFRESH_GAP_MS = 1_000  # ... but never sooner than half of it, nor within a second of the last answer
MAX_IMMEDIATE_RESENDS = 6  # answers to challenges and 423s within one attempt, so a peer cannot loop us
MAX_RETRY_AFTER_S = 86_400  # a Retry-After beyond a day is taken as a day
TIMEOUT_STATUS = 408  # §8.1.3.1: a transaction timeout is treated as a 408
TIMEOUT_REASON = "Request Timeout (no response)"
_LEADING_DIGITS_RE = re.compile(r"\s*(\d{1,10})")
# Headers the client writes itself; passing them as extra headers is a misuse.
_OWN_HEADERS = frozenset({
    "via", "max-forwards", "from", "to", "call-id", "cseq", "contact", "expires", "authorization",
    "proxy-authorization", "user-agent", "content-length", "content-type",
})


class RegistrationState(enum.Enum):
    """Where the client stands. A refresh in flight keeps ``REGISTERED``; a retry in flight is ``REGISTERING``."""

    UNREGISTERED = "unregistered"  # not started
    REGISTERING = "registering"  # a REGISTER is out and no binding is known to be in place
    REGISTERED = "registered"  # the registrar granted our binding (it may be being refreshed)
    FAILED = "failed"  # the last attempt failed; a retry is scheduled at ``next_attempt_ms``
    STOPPED = "stopped"  # ``stop`` was called (the unREGISTER may still be out: ``outstanding``)


class FailureCause(enum.Enum):
    """Why an attempt failed, for the log line."""

    REJECTED = "rejected"  # a 4xx/5xx/6xx final response
    REDIRECTED = "redirected"  # a 3xx: not followed
    TIMEOUT = "timeout"  # no final response (transaction timeout or transport error)
    WRONG_CREDENTIALS = "wrong-credentials"  # challenged again for credentials just computed
    CANNOT_AUTHENTICATE = "cannot-authenticate"  # challenged with no credentials, or no Digest challenge we know
    INTERVAL_TOO_BRIEF = "interval-too-brief"  # a 423 without a usable, higher Min-Expires
    TOO_MANY_ROUNDS = "too-many-rounds"  # challenges/423s kept coming within one attempt
    NOTHING_GRANTED = "nothing-granted"  # a 2xx granting our Contact an expiry of 0


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    """A read-only snapshot of the client.

    ``expires_at_ms`` is when the last granted binding runs out (it may lie in the past after failures);
    ``granted_s`` what the registrar granted then; ``requested_s`` what we ask for now (raised by a 423);
    ``next_attempt_ms`` when the next REGISTER goes out (a refresh or a retry; None while one is out or stopped);
    ``failures`` failed attempts in a row; ``cause`` why the last one failed (None after a success);
    ``contact_listed`` whether the last 2xx listed our Contact; ``outstanding`` whether a request is out.
    """

    state: RegistrationState
    requested_s: int
    last_status: int | None = None
    last_reason: str = ""
    expires_at_ms: int | None = None
    granted_s: int | None = None
    next_attempt_ms: int | None = None
    failures: int = 0
    cause: FailureCause | None = None
    contact_listed: bool | None = None
    outstanding: bool = False


@dataclass(frozen=True, slots=True)
class Registered:
    """A 2xx bound our Contact for ``granted_s`` seconds; the refresh goes out at ``refresh_at_ms``."""

    status: int
    granted_s: int
    expires_at_ms: int
    refresh_at_ms: int
    contact_listed: bool


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """An attempt failed; ``retry_at_ms`` is when the next one goes out (None when stopping)."""

    status: int
    reason: str
    cause: FailureCause
    failures: int
    retry_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Unregistered:
    """The unREGISTER of ``stop`` ended: a 2xx removed the binding, anything else (timeout: 408) gave up."""

    status: int
    reason: str


RegistrationEvent = Registered | RegistrationFailed | Unregistered


def refresh_delay_ms(granted_ms: int) -> int:
    """How long after sending a REGISTER to send its refresh: ``max(5 s, 10 %)`` before the expiry, but not
    before half of the granted time (so a very short grant is refreshed at half)."""
    lead = max(REFRESH_MIN_LEAD_MS, granted_ms // REFRESH_LEAD_FRACTION)
    return max(granted_ms - lead, granted_ms // 2)


@dataclass(slots=True)
class _Pending:
    """The REGISTER out now: its CSeq number, the expiry it asks for (0: an unREGISTER), when it left, and the
    nonce it answered per credentials header."""

    seq: int
    expires_s: int
    sent_at: int
    nonces: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Nonce:
    """A challenge we answer, and the nonce-count last used with it (RFC 7616 §3.4)."""

    challenge: AuthParams
    nc: int = 0


class RegistrationClient:
    """Registers ``contact`` for ``aor`` at ``registrar_uri`` and keeps it registered (RFC 3261 §10.2).

    Parameters
    ----------
    aor : SipUri
        The address-of-record (From and To, §10.2): for a trunk, the provider account's ``sip:user@domain``.
    registrar_uri : SipUri
        The Request-URI (§10.2: the registrar's domain, no user part) and, by ``destination``, where to send.
    contact : str
        Our Contact header value, e.g. ``"<sip:token@192.0.2.10:5060>"``, without an ``expires`` parameter.
    credentials : (str, str) or None
        Digest user name and password; None when the registrar asks for none.
    expires_s : int
        The expiry to ask for (Expires header).
    retry_s, max_retry_s : int
        The first retry delay after a failure, doubling per failure in a row up to ``max_retry_s``.
    via_host, via_port, transport : str, int, str
        Our sent-by and transport for the Via header (as ``Dialog.create_request`` takes them); each REGISTER
        gets a fresh ``z9hG4bK`` branch and ``rport`` (RFC 3581), as the transaction layer requires.
    user_agent : str
        The User-Agent header value; empty for none.
    headers : iterable of (str, str)
        Extra headers for every REGISTER (``Supported``, ``Allow`` ...), after the client's own.

    Raises
    ------
    SipLocalError
        Misuse: a bad contact, expiry, retry delays, transport or port, or a reserved extra header.
    """

    def __init__(self, aor: SipUri, registrar_uri: SipUri, contact: str, credentials: tuple[str, str] | None,
                 expires_s: int = 600, *, retry_s: int = 30, max_retry_s: int = 600, via_host: str, via_port: int,
                 transport: str = "udp", user_agent: str = "", headers: Iterable[tuple[str, str]] = ()) -> None:
        try:
            contact_addr = NameAddr.parse(contact)
        except SipParseError as exc:
            raise SipLocalError(f"bad Contact {contact!r}: {exc}") from exc
        if contact_addr.param("expires") is not None:
            raise SipLocalError("the Contact may not carry expires: the client sets the expiry")
        if expires_s < 1:
            raise SipLocalError(f"expires_s must be at least 1, not {expires_s}")
        if retry_s < 1 or max_retry_s < retry_s:
            raise SipLocalError(f"need 1 <= retry_s <= max_retry_s, got {retry_s} and {max_retry_s}")
        if transport.lower() not in TRANSPORTS:
            raise SipLocalError(f"unknown transport {transport!r}")
        if not 0 < via_port < 65536:
            raise SipLocalError(f"bad Via port {via_port}")
        extra = extra_headers(headers, _OWN_HEADERS)
        self.aor = aor
        self.registrar_uri = registrar_uri
        self.contact = contact
        self.credentials = credentials
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.via_host = via_host.strip("[]")
        self.via_port = via_port
        self.transport = transport.upper()
        self.user_agent = user_agent
        self.call_id = new_call_id()
        self.from_tag = new_tag()
        self._contact = contact_addr
        self._extra = extra
        self._expires_s = expires_s
        self._seq = 0
        self._active = False
        self._state = RegistrationState.UNREGISTERED
        self._pending: _Pending | None = None
        self._next_attempt: int | None = None
        self._expires_at: int | None = None
        self._granted_s: int | None = None
        self._contact_listed: bool | None = None
        self._last: tuple[int, str] | None = None
        self._failures = 0
        self._cause: FailureCause | None = None
        self._nonces: dict[str, _Nonce] = {}  # "Authorization" / "Proxy-Authorization" -> challenge answered
        self._answered: set[str] = set()  # headers answered afresh within the current attempt
        self._resends = 0  # immediate resends within the current attempt
        self._outgoing: list[Request] = []
        self._events: list[RegistrationEvent] = []

    # ---- outputs ----------------------------------------------------------------------------------------------
    def outgoing(self) -> list[Request]:
        """The requests to send to ``destination`` (at most one), drained."""
        out, self._outgoing = self._outgoing, []
        return out

    def events(self) -> list[RegistrationEvent]:
        """What happened since the last call, drained (for the edge to log)."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> int | None:
        """When ``handle_timer`` must run next: the refresh or retry, or the guard on an outstanding request."""
        if self._pending is not None:
            return self._pending.sent_at + RESPONSE_GUARD_MS
        return self._next_attempt if self._active else None

    @property
    def destination(self) -> Destination:
        """Where the REGISTERs go: ``registrar_uri`` resolved as RFC 3263 §4 without DNS (see ``uri_destination``).

        The edge may send elsewhere (an outbound proxy, a resolved SRV target)."""
        return uri_destination(self.registrar_uri)

    @property
    def status(self) -> RegistrationStatus:
        last_status, last_reason = self._last if self._last is not None else (None, "")
        return RegistrationStatus(
            state=self._state, requested_s=self._expires_s, last_status=last_status, last_reason=last_reason,
            expires_at_ms=self._expires_at, granted_s=self._granted_s,
            next_attempt_ms=self._next_attempt if self._active and self._pending is None else None,
            failures=self._failures, cause=self._cause, contact_listed=self._contact_listed,
            outstanding=self._pending is not None)

    # ---- inputs -----------------------------------------------------------------------------------------------
    def start(self, now: int) -> None:
        """Begin registering (at once, or when the unREGISTER of an earlier ``stop`` has ended). Idempotent."""
        if self._active:
            return
        self._active = True
        self._failures = 0
        self._cause = None
        self._state = RegistrationState.REGISTERING
        if self._pending is None:
            self._begin_attempt(now)

    def stop(self, now: int) -> None:
        """Stop: remove our binding with an unREGISTER (Expires: 0) if one may be in place, and refresh no more.

        With a REGISTER outstanding the unREGISTER follows its final response. Idempotent.
        """
        if not self._active:
            return
        self._active = False
        self._next_attempt = None
        self._state = RegistrationState.STOPPED
        if self._pending is None and self._binding_may_live(now):
            self._begin_attempt(now)

    def receive_response(self, response: Response, now: int) -> None:
        """A response to one of our REGISTERs. Provisional ones, and any not answering the outstanding request
        (late retransmissions, strays), are ignored."""
        pending = self._pending
        if pending is None or response.status < 200 or not self._answers(pending, response):
            return
        self._pending = None
        status = response.status
        reason = response.reason
        self._last = (status, reason)
        if status in (401, 407):
            cause = self._answer_challenge(pending, response, now)
            if cause is not None:
                self._failed(pending, now, cause)
            return
        if status == 423 and pending.expires_s > 0:
            minimum = _min_expires(response)
            if minimum is None or minimum <= pending.expires_s:
                self._failed(pending, now, FailureCause.INTERVAL_TOO_BRIEF)
            elif self._resends >= MAX_IMMEDIATE_RESENDS:
                self._failed(pending, now, FailureCause.TOO_MANY_ROUNDS)
            else:
                self._expires_s = minimum
                self._resend(now)
            return
        if 200 <= status < 300:
            if pending.expires_s == 0:
                self._unregistered(now)
            else:
                self._registered(pending, response, now)
            return
        cause = FailureCause.REDIRECTED if status < 400 else FailureCause.REJECTED
        self._failed(pending, now, cause, _retry_after(response) if status == 503 else None)

    def transaction_failed(self, now: int, request: Request | None = None) -> None:
        """The outstanding REGISTER got no final response (timeout, transport error): a failure, as a 408.

        ``request``, when given, must be the one that failed; a failure of an earlier request is ignored.
        """
        pending = self._pending
        if pending is None:
            return
        if request is not None and not self._is_pending_request(pending, request):
            return
        self._pending = None
        self._last = (TIMEOUT_STATUS, TIMEOUT_REASON)
        self._failed(pending, now, FailureCause.TIMEOUT)

    def handle_timer(self, now: int) -> None:
        """Send the refresh or retry that is due, or give up on a request whose transaction never reported."""
        pending = self._pending
        if pending is not None:
            if now >= pending.sent_at + RESPONSE_GUARD_MS:
                self.transaction_failed(now)
            return
        if self._active and self._next_attempt is not None and now >= self._next_attempt:
            self._begin_attempt(now)

    # ---- outcomes ---------------------------------------------------------------------------------------------
    def _registered(self, pending: _Pending, response: Response, now: int) -> None:
        granted_s, listed = self._granted(response, pending.expires_s)
        if granted_s <= 0:
            self._failed(pending, now, FailureCause.NOTHING_GRANTED)
            return
        granted_ms = granted_s * 1000
        self._failures = 0
        self._cause = None
        self._granted_s = granted_s
        self._contact_listed = listed
        self._expires_at = pending.sent_at + granted_ms
        if not self._active:  # stopped while this REGISTER was out: take the binding away again
            self._begin_attempt(now)
            return
        refresh_at = max(pending.sent_at + refresh_delay_ms(granted_ms), now + MIN_REFRESH_GAP_MS)
        self._state = RegistrationState.REGISTERED
        self._next_attempt = refresh_at
        self._events.append(Registered(response.status, granted_s, self._expires_at, refresh_at, listed))

    def _unregistered(self, now: int) -> None:
        status, reason = self._last if self._last is not None else (TIMEOUT_STATUS, TIMEOUT_REASON)
        if 200 <= status < 300:
            self._expires_at = None
            self._granted_s = None
            self._contact_listed = None
        self._nonces.clear()
        self._events.append(Unregistered(status, reason))
        if self._active:  # started again while the unREGISTER was out
            self._state = RegistrationState.REGISTERING
            self._begin_attempt(now)
        else:
            self._state = RegistrationState.STOPPED

    def _failed(self, pending: _Pending, now: int, cause: FailureCause, retry_after_s: int | None = None) -> None:
        # A nonce that led to a failure is not reused: the next attempt starts from a fresh challenge.
        self._nonces.clear()
        if pending.expires_s == 0:
            self._unregistered(now)
            return
        self._failures += 1
        self._cause = cause
        status, reason = self._last if self._last is not None else (TIMEOUT_STATUS, TIMEOUT_REASON)
        if not self._active:
            # Stopped while this REGISTER was out. Remove the binding if it may be there: an earlier one still
            # running, or this REGISTER's own fate is unknown.
            self._events.append(RegistrationFailed(status, reason, cause, self._failures, None))
            if self._binding_may_live(now) or cause is FailureCause.TIMEOUT:
                self._begin_attempt(now)
            return
        delay_s = retry_after_s if retry_after_s is not None else self._backoff_s()
        self._state = RegistrationState.FAILED
        self._next_attempt = now + delay_s * 1000
        self._events.append(RegistrationFailed(status, reason, cause, self._failures, self._next_attempt))

    def _backoff_s(self) -> int:
        delay = self.retry_s
        for _ in range(self._failures - 1):
            if delay >= self.max_retry_s:
                break
            delay *= 2
        return min(delay, self.max_retry_s)

    def _binding_may_live(self, now: int) -> bool:
        return self._expires_at is not None and self._expires_at > now

    # ---- authentication (§22.2, §22.3) ------------------------------------------------------------------------
    def _answer_challenge(self, pending: _Pending, response: Response, now: int) -> FailureCause | None:
        """Resend answering a 401/407 and return None, or say why it cannot be answered."""
        if response.status == 401:
            offered, header = response.headers.get_all("www-authenticate"), "Authorization"
        else:
            offered, header = response.headers.get_all("proxy-authenticate"), "Proxy-Authorization"
        challenge = choose_challenge(offered)
        if self.credentials is None or challenge is None:
            return FailureCause.CANNOT_AUTHENTICATE
        stale = (challenge.get("stale") or "").lower() == "true"
        answered_nonce = pending.nonces.get(header)
        if not stale and (header in self._answered or answered_nonce == challenge.get("nonce")):
            return FailureCause.WRONG_CREDENTIALS
        if self._resends >= MAX_IMMEDIATE_RESENDS:
            return FailureCause.TOO_MANY_ROUNDS
        self._nonces[header] = _Nonce(challenge)
        self._answered.add(header)
        self._resend(now)
        return None

    def _authorizations(self, nonces: dict[str, str]) -> list[tuple[str, str]]:
        """The credentials headers for the next request, each nonce's count one higher (RFC 7616 §3.4.5)."""
        if self.credentials is None:
            return []
        username, password = self.credentials
        out = []
        for header, state in self._nonces.items():
            state.nc += 1
            value = client_authorization(state.challenge, method="REGISTER", uri=str(self.registrar_uri),
                                         username=username, password=password, cnonce=secrets.token_hex(8),
                                         nc=state.nc)
            nonces[header] = state.challenge.get("nonce") or ""
            out.append((header, value))
        return out

    # ---- sending ----------------------------------------------------------------------------------------------
    def _begin_attempt(self, now: int) -> None:
        """A new REGISTER (or unREGISTER when stopped) that is not a resend within an attempt."""
        self._answered.clear()
        self._resends = 0
        if self._active and not (self._state is RegistrationState.REGISTERED and self._binding_may_live(now)):
            self._state = RegistrationState.REGISTERING
        self._send(now, self._expires_s if self._active else 0)

    def _resend(self, now: int) -> None:
        """The same attempt again, after a challenge or a 423; a stop meanwhile turns it into an unREGISTER."""
        self._resends += 1
        self._send(now, self._expires_s if self._active else 0)

    def _send(self, now: int, expires_s: int) -> None:
        assert self._pending is None, "never more than one REGISTER outstanding (RFC 3261 §10.2)"
        self._seq += 1
        self._next_attempt = None
        pending = _Pending(self._seq, expires_s, now)
        headers = Headers()
        via = Via(self.transport, self.via_host, self.via_port, (("branch", new_branch()), ("rport", None)))
        headers.add("Via", via_text(via))
        headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        headers.add("From", str(NameAddr(self.aor).with_tag(self.from_tag)))
        headers.add("To", str(NameAddr(self.aor)))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self._seq} REGISTER")
        headers.add("Contact", self.contact)
        headers.add("Expires", str(expires_s))
        for name, value in self._authorizations(pending.nonces):
            headers.add(name, value)
        if self.user_agent:
            headers.add("User-Agent", self.user_agent)
        for name, value in self._extra:
            headers.add(name, value)
        headers.add("Content-Length", "0")
        self._pending = pending
        self._outgoing.append(Request(headers=headers, method="REGISTER", uri=self.registrar_uri))

    # ---- reading responses ------------------------------------------------------------------------------------
    def _answers(self, pending: _Pending, response: Response) -> bool:
        try:
            cseq = response.cseq
            return response.call_id == self.call_id and cseq.seq == pending.seq and cseq.method == "REGISTER"
        except SipParseError:
            return False

    def _is_pending_request(self, pending: _Pending, request: Request) -> bool:
        try:
            return request.call_id == self.call_id and request.cseq.seq == pending.seq
        except SipParseError:
            return False

    def _granted(self, response: Response, asked_s: int) -> tuple[int, bool]:
        """The expiry granted to our Contact (§10.2.4) and whether the 2xx listed it."""
        try:
            contacts = response.contacts
        except SipParseError:
            contacts = []
        try:
            header = response.expires
        except SipParseError:
            header = None
        fallback = header if header is not None else asked_s
        for contact in contacts:
            if _same_contact(self._contact, contact):
                text = (contact.param("expires") or "").strip()
                if text.isdigit() and len(text) <= 10:
                    return int(text), True
                return fallback, True
        return fallback, False


def _same_contact(ours: NameAddr, theirs: NameAddr) -> bool:
    """Whether a Contact of a 2xx is ours: the same ``+sip.instance`` (RFC 5626 §4.1) or the same URI
    (§19.1.4, leniently: scheme, user, host and port; ``transport`` only when both name one)."""
    instance = ours.param("+sip.instance")
    if instance is not None and unquote_string(instance) == unquote_string(theirs.param("+sip.instance") or ""):
        return True
    a, b = ours.uri, theirs.uri
    if not isinstance(a, SipUri) or not isinstance(b, SipUri):
        return a == b
    if (a.scheme, a.user_unescaped, a.host.lower().strip("[]"), a.hostport[1]) != (
            b.scheme, b.user_unescaped, b.host.lower().strip("[]"), b.hostport[1]):
        return False
    return a.transport is None or b.transport is None or a.transport == b.transport


def _min_expires(response: Response) -> int | None:
    value = (response.headers.get("min-expires") or "").strip()
    return int(value) if value.isdigit() and len(value) <= 10 else None


def _retry_after(response: Response) -> int | None:
    """The delta-seconds of ``Retry-After`` (§20.33), at least 1 s and at most a day; None when absent or bad."""
    m = _LEADING_DIGITS_RE.match(response.headers.get("retry-after") or "")
    return min(max(int(m.group(1)), 1), MAX_RETRY_AFTER_S) if m else None
