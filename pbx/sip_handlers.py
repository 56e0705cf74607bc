"""The SIP handler chain: each request, response and failure is offered to handlers in order until one takes it.

pjsip's module priorities in a few lines: the application edge (``app.SipServer``) parses, runs transactions and
then asks each :class:`SipHandler` in turn — registrar, subscriptions, calls (trunks will add theirs) — whether
it handles the message; what nobody takes gets the UAS core's answer (481, 405, 501). Handlers reach the edge
through :class:`SipServices` only, and share :func:`admit`, the one admission step every method uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from ccpbx.pbx.admission import Admission, AdmissionContext, Admitted, Challenged, Refused
from ccpbx.pbx.location import LocationService
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.store import Extension

__all__ = ["NEEDS_STORE", "DeadlineTimer", "SipHandler", "SipServices", "admit", "admit_now", "stable_tag",
           "stable_to_tag"]


class _NeedsStore:
    """:func:`admit_now`'s answer when deciding needs an extension not in the cache (then :func:`admit`)."""

    def __repr__(self) -> str:
        return "NEEDS_STORE"


NEEDS_STORE = _NeedsStore()


class SipServices(Protocol):
    """What handlers need from the edge."""

    location: LocationService

    def now(self) -> int: ...

    def reply(self, request: Request, status: int, *, reason: str | None = None,
              headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()) -> None:
        """A response outside any dialog, with a To tag stable across retransmissions."""

    def spawn(self, coro: Awaitable[None]) -> None: ...

    def send_request(self, request: Request, destination: Destination) -> ClientKey: ...

    def local_address(self, destination: Destination) -> tuple[str, int]: ...

    async def extension(self, user: str) -> Extension | None: ...

    def cached_extension(self, user: str) -> tuple[bool, Extension | None]:
        """``(True, extension or None)`` when the cache knows ``user``; ``(False, None)`` when only the store
        can tell (then ``await extension(user)``)."""

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the registration changes made so far are committed to the store."""

    def ha1s(self, extension: Extension | None) -> Mapping[str, str] | None: ...

    def admission_decided(self, request: Request, source: Destination, user: str,
                          decision: Admitted | Challenged | Refused) -> None:
        """Count and log a decision (``sip.register.forbidden aor=...``, challenges...)."""


class SipHandler(Protocol):
    """One link of the chain; each method returns True when it took the message."""

    def on_request(self, request: Request, source: Destination, key: ServerKey | None) -> bool: ...

    def on_response(self, response: Response, key: ClientKey) -> bool: ...

    def on_transaction_failed(self, key: ClientKey | ServerKey, request: Request) -> bool: ...


async def admit(services: SipServices, admission: Admission, request: Request, source: Destination, *,
                challenge_status: int, must_match: str | None = None) -> Admitted | None:
    """Decide whether ``request`` may proceed; a challenge or refusal is answered here and None returned.

    Only what the policies need is looked up: a first INVITE with no credentials is challenged without a store
    lookup (calls per second), a trusted-network check reads the location service, credentials the extension.
    """
    claim = _claim(services, admission, request, challenge_status)
    if claim is None:
        return None
    user, lookup = claim
    extension = await services.extension(user) if lookup else None
    return _conclude(services, admission, request, source, user, lookup, extension, challenge_status, must_match)


def admit_now(services: SipServices, admission: Admission, request: Request, source: Destination, *,
              challenge_status: int, must_match: str | None = None) -> Admitted | _NeedsStore | None:
    """:func:`admit` without waiting, when the extension it needs is cached (a phone's every REGISTER refresh
    and call after its first): no task for the request. :data:`NEEDS_STORE` when it is not (nothing was
    answered or counted: call :func:`admit`)."""
    claim = _claim(services, admission, request, challenge_status)
    if claim is None:
        return None
    user, lookup = claim
    extension = None
    if lookup:
        known, extension = services.cached_extension(user)
        if not known:
            return NEEDS_STORE
    return _conclude(services, admission, request, source, user, lookup, extension, challenge_status, must_match)


def _claim(services: SipServices, admission: Admission, request: Request,
           challenge_status: int) -> tuple[str, bool] | None:
    """Who ``request`` claims to be, and whether deciding needs that user's extension; None once a request
    whose From/To cannot be parsed is answered."""
    user = _claimed_user(services, admission, request, challenge_status)
    if user is None:
        return None
    return user, bool(user) and admission.needs_lookup(request, challenge_status)


def _conclude(services: SipServices, admission: Admission, request: Request, source: Destination, user: str,
              lookup: bool, extension: Extension | None, challenge_status: int,
              must_match: str | None) -> Admitted | None:
    """The policies' decision on ``request`` (``extension`` is the claimed user's when ``lookup``): Admitted,
    or None once the challenge or refusal is answered."""
    ha1 = None
    registered_here = False
    if lookup:
        ha1 = services.ha1s(extension)
        if admission.trusted.enabled and admission.trusted.trusts(source):
            registered_here = any((b.transport, b.source_host, b.source_port) == source
                                  for b in services.location.lookup(user, time.time()))
    decision = _decide(services, admission, request, source, user, challenge_status, ha1, registered_here,
                       must_match)
    if isinstance(decision, Admitted):
        services.admission_decided(request, source, user, decision)
        return decision
    _answer(services, request, source, user, decision)
    return None


def _claimed_user(services: SipServices, admission: Admission, request: Request, challenge_status: int) -> str | None:
    try:
        return admission.claimed_user(request, challenge_status)
    except SipParseError as exc:
        services.reply(request, exc.status_hint, reason=str(exc)[:80])
        return None


def _decide(services: SipServices, admission: Admission, request: Request, source: Destination, user: str,
            challenge_status: int, ha1: Mapping[str, str] | None, registered_here: bool,
            must_match: str | None) -> Admitted | Challenged | Refused:
    context = AdmissionContext(request=request, source=source, user=user, challenge_status=challenge_status,
                               now_ms=services.now(), now_s=time.time(), ha1=ha1,
                               registered_from_source=registered_here, must_match=must_match)
    return admission.decide(context)


def _answer(services: SipServices, request: Request, source: Destination, user: str,
            decision: Challenged | Refused) -> None:
    services.admission_decided(request, source, user, decision)
    if isinstance(decision, Challenged):
        if request.method == "INVITE":
            # The transaction would send its 100 Trying only after 200 ms without a response (§17.2.1); a
            # challenge comes at once, and some clients wait for a 100 or 180 before they read anything else
            # (pyVoIP's invite(), written against servers that always send one first): it goes first here.
            services.reply(request, 100)
        services.reply(request, decision.status, headers=list(decision.headers))
        return
    assert isinstance(decision, Refused)
    services.reply(request, decision.status, reason=decision.reason)


def stable_to_tag(request: Request) -> str:
    """A To tag for a non-dialog response that is stable across retransmissions (§8.2.6.2).

    For INVITE it leaves out the CSeq: the 407 challenge and the call that follows with credentials then
    share one tag, which SIPp (it keeps the first To tag it sees) and some phones rely on.
    """
    return stable_tag(request.call_id, "" if request.method == "INVITE" else request.cseq.seq, request.from_.tag)


def stable_tag(call_id: str, seq: int | str, from_tag: str | None) -> str:
    """:func:`stable_to_tag` of a request with this Call-ID, CSeq number ("" for an INVITE) and From tag."""
    # surrogateescape: the bytes as received (the parser refuses them in these headers; this is defence in depth)
    seed = f"{call_id}|{seq}|{from_tag}".encode("utf-8", "surrogateescape")
    return hashlib.blake2s(seed, digest_size=6).hexdigest()


class DeadlineTimer:
    """ONE loop timer for a core's next deadline (ARCHITECTURE.md: never a handle per transaction).

    :meth:`arm` with the core's ``next_deadline()`` (monotonic ms, or None) after every input; the callback runs
    at that time, once; re-arming for the same deadline costs nothing.
    """

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self.at: int | None = None  # the deadline armed (read-only outside): a caller may skip arm() when equal

    def arm(self, deadline: int | None) -> None:
        if deadline == self.at:
            return
        self.cancel()
        self.at = deadline
        if deadline is not None:
            self._handle = asyncio.get_running_loop().call_at(deadline / 1000, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self.at = None

    def _fire(self) -> None:
        self._handle = None
        self.at = None
        self.callback()
