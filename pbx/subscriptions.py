"""SIP-specific event notification (RFC 6665): the notifier side, as a small framework for event packages.

An :class:`EventPackage` says what its NOTIFY bodies look like (``name``, ``content_type``, ``render``) and who
may watch what (``authorize``). The :class:`Notifier` does the rest for every package: it screens a SUBSCRIBE
(unknown package → 489 with ``Allow-Events``; Expires below the minimum → 423 with ``Min-Expires``; Expires
above the maximum is lowered), creates the subscription dialog as its UAS (RFC 6665 §4.2.1, RFC 3261 §12.1.1),
answers 200 with Expires and Contact, sends the immediate NOTIFY with the full state (§4.2.1.2), one on every
change of the resource, takes refreshes and ``Expires: 0`` in the dialog (§4.2.1.2: a final NOTIFY with
``terminated;reason=timeout``), expires subscriptions by their deadline, drops a subscription whose NOTIFY is
refused (481, 408, any failure) or times out (§4.2.2), and ends them all with ``terminated;reason=deactivated``
when the server stops, ``noresource`` when the watched resource is gone.

A new NOTIFY is never sent while the previous one of the same subscription awaits its final response
(§4.2.2); the change is remembered and the current state goes out when that response arrives, so a burst of
changes costs one NOTIFY per round trip and the last state always arrives.

Authentication is the application's (digest, like REGISTER): it calls :meth:`Notifier.screen`, authenticates
the subscriber, then :meth:`Notifier.subscribe`. The notifier does not log; it queues past-tense events that
the edge drains with :meth:`Notifier.events` and logs. Time is integer milliseconds passed in; the edge arms
one timer at :meth:`Notifier.next_deadline`.

The voicemail ``message-summary`` package (RFC 3842) plugs in as another :class:`EventPackage`: its
``authorize`` lets an extension watch only its own mailbox, ``render`` writes the ``Messages-Waiting`` body, and
the voicemail store calls ``changed("message-summary", mailbox)`` when a message arrives or is read.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ccpbx.pbx.calls import SipPort, reachable_at
from ccpbx.pbx.sip.dialog import Dialog, DialogError, DialogId
from ccpbx.pbx.sip.errors import SipError, SipParseError
from ccpbx.pbx.sip.message import Request, Response, new_tag
from ccpbx.pbx.sip.transaction import ClientKey, Destination

__all__ = [
    "EventPackage",
    "Notifier",
    "NotifyFailed",
    "Rendered",
    "Subscription",
    "SubscriptionEnded",
    "SubscriptionPolicy",
    "SubscriptionRefreshed",
    "SubscriptionRefused",
    "SubscriptionStarted",
]

DEFAULT_EXPIRES_S = 3600  # RFC 6665 §4.1.2.1 leaves it to each package; RFC 4235 §3.3 suggests 3600 for dialog
MIN_EXPIRES_S = 60
MAX_EXPIRES_S = 7200  # the expiry of every subscription: none outlives this without a refresh
MAX_SUBSCRIPTIONS = 10_000  # subscriptions at once; past it the oldest ends (terminated;reason=timeout)
MAX_SUBSCRIPTIONS_PER_SUBSCRIBER = 200  # one extension's at once (a phone's BLF keys are a few dozen)
MS_PER_S = 1000
SUBSCRIBE = "SUBSCRIBE"


@dataclass(frozen=True, slots=True)
class SubscriptionPolicy:
    default_expires_s: int = DEFAULT_EXPIRES_S
    min_expires_s: int = MIN_EXPIRES_S
    max_expires_s: int = MAX_EXPIRES_S
    max_subscriptions: int = MAX_SUBSCRIPTIONS
    max_per_subscriber: int = MAX_SUBSCRIPTIONS_PER_SUBSCRIBER


@dataclass(frozen=True, slots=True)
class Rendered:
    """One NOTIFY body and what the package wants to remember about it for the subscription's next one."""

    body: bytes
    memory: object = None


class EventPackage(Protocol):
    """An event package (RFC 6665 §7): what the notifier needs to serve SUBSCRIBEs for it."""

    @property
    def name(self) -> str:
        """The ``Event`` header's package name (``dialog``, ``message-summary``)."""
        ...

    @property
    def content_type(self) -> str:
        """The NOTIFY body's type (``application/dialog-info+xml``)."""
        ...

    def authorize(self, subscriber: str, resource: str) -> bool:
        """May the authenticated extension ``subscriber`` watch ``resource`` (the Request-URI's user)?"""
        ...

    def render(self, resource: str, version: int, memory: object) -> Rendered:
        """The full state of ``resource`` as a NOTIFY body; ``version`` counts the NOTIFYs of this subscription
        from 0; ``memory`` is what the previous ``render`` of this subscription returned (None at first)."""
        ...


# ---- events (the edge logs them) -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SubscriptionStarted:
    subscription: str
    package: str
    resource: str
    subscriber: str
    expires_s: int


@dataclass(frozen=True, slots=True)
class SubscriptionRefreshed:
    subscription: str
    expires_s: int


@dataclass(frozen=True, slots=True)
class SubscriptionRefused:
    event: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class SubscriptionEnded:
    subscription: str
    package: str
    resource: str
    reason: str  # timeout, deactivated, noresource, or why its NOTIFY failed (notify_481, notify_timeout...)


@dataclass(frozen=True, slots=True)
class NotifyFailed:
    subscription: str
    status: int | None  # None: no response (transaction timeout or transport failure)


NotifierEvent = SubscriptionStarted | SubscriptionRefreshed | SubscriptionRefused | SubscriptionEnded | NotifyFailed


@dataclass(slots=True, eq=False)
class Subscription:
    """One subscription (RFC 6665 §4.2): its dialog, watched resource, expiry and NOTIFY bookkeeping."""

    package: EventPackage
    resource: str
    subscriber: str
    dialog: Dialog
    destination: Destination
    event: str  # the Event header value as the subscriber sent it (with any ``id``), echoed in every NOTIFY
    expires_at: int
    version: int = 0  # the version of the next body
    memory: object = None
    in_flight: ClientKey | None = None
    dirty: bool = False  # the resource changed while a NOTIFY was in flight
    ended: bool = False

    @property
    def id(self) -> str:
        d = self.dialog
        return f"{d.call_id};{d.local_tag};{d.remote_tag}"


@dataclass(slots=True)
class _Sent:
    subscription: Subscription
    request: Request


@dataclass(slots=True)
class _Index:
    by_dialog: dict[DialogId, Subscription] = field(default_factory=dict)
    by_resource: dict[tuple[str, str], dict[DialogId, Subscription]] = field(default_factory=dict)
    by_subscriber: dict[str, dict[DialogId, Subscription]] = field(default_factory=dict)


class Notifier:
    """The notifier of every registered event package; see the module docstring."""

    def __init__(self, port: SipPort, *, policy: SubscriptionPolicy | None = None,
                 user_agent: str = "ccpbx") -> None:
        self.port = port
        self.policy = policy or SubscriptionPolicy()
        self.user_agent = user_agent
        self._packages: dict[str, EventPackage] = {}
        self._index = _Index()
        self._sent: dict[ClientKey, _Sent] = {}
        self._pending: set[tuple[str, str]] = set()
        self._deadlines: list[tuple[int, int, DialogId]] = []
        self._seq = itertools.count()
        self._events: list[NotifierEvent] = []
        self.evicted = 0  # subscriptions ended early by the caps

    # ---- packages -----------------------------------------------------------------------------------------
    def register(self, package: EventPackage) -> None:
        self._packages[package.name] = package

    @property
    def allow_events(self) -> str:
        """The ``Allow-Events`` header value (RFC 6665 §8.2.2)."""
        return ", ".join(self._packages)

    def subscriptions(self, package: str | None = None, resource: str | None = None) -> list[Subscription]:
        return [s for s in self._index.by_dialog.values()
                if (package is None or s.package.name == package) and (resource is None or s.resource == resource)]

    def events(self) -> list[NotifierEvent]:
        out, self._events = self._events, []
        return out

    # ---- SUBSCRIBE ----------------------------------------------------------------------------------------
    def screen(self, request: Request) -> bool:
        """Check a new SUBSCRIBE before authentication; answer and return False when it cannot succeed."""
        try:
            package = self._package_of(request)
            if package is None:
                return False
            if not self._acceptable_type(request, package):
                return False
            return self._expires(request) is not None
        except SipParseError as exc:
            self._refuse(request, 400, str(exc)[:80])
            return False

    def subscribe(self, request: Request, source: Destination, subscriber: str, resource: str,
                  now: int) -> Subscription | None:
        """Accept a new SUBSCRIBE from the authenticated extension ``subscriber`` for ``resource``."""
        try:
            package = self._package_of(request)
            expires = self._expires(request) if package is not None else None
        except SipParseError as exc:
            self._refuse(request, 400, str(exc)[:80])
            return None
        if package is None or expires is None:
            return None
        if not package.authorize(subscriber, resource):
            self._refuse(request, 403, f"{subscriber} may not watch {resource}")
            return None
        local_tag = new_tag()
        local_host, local_port = self.port.local_address(source)
        contact = _contact(local_host, local_port, source[0])
        try:
            dialog = Dialog.from_uas(request, local_tag, contact)
        except (DialogError, SipParseError) as exc:
            self._refuse(request, exc.status_hint, str(exc)[:80])
            return None
        destination = self._destination(dialog, source)
        sub = Subscription(package=package, resource=resource, subscriber=subscriber, dialog=dialog,
                           destination=destination, event=request.headers.get("event") or package.name,
                           expires_at=now + expires * MS_PER_S)
        self.port.respond(request, 200, headers=[("Expires", str(expires)), ("Contact", contact),
                                                 ("Allow-Events", self.allow_events)], to_tag=local_tag)
        if expires == 0:  # a fetch (RFC 6665 §4.4.3): one NOTIFY with the state, then it ends
            self._finish(sub, "timeout", now)
            return sub
        self._make_room(subscriber, now)
        self._index.by_dialog[dialog.id] = sub
        self._index.by_resource.setdefault((package.name, resource), {})[dialog.id] = sub
        self._index.by_subscriber.setdefault(subscriber, {})[dialog.id] = sub
        self._arm(sub)
        self._events.append(SubscriptionStarted(sub.id, package.name, resource, subscriber, expires))
        self._notify(sub, now)
        return sub

    def on_request(self, request: Request, source: Destination, now: int) -> bool:
        """An in-dialog SUBSCRIBE (refresh, or ``Expires: 0`` to end it); False when no subscription matches
        (the caller answers 481, RFC 6665 §4.2.1.2)."""
        if request.method != SUBSCRIBE:
            return False
        sub = self._index.by_dialog.get(DialogId(request.call_id, request.to.tag or "", request.from_.tag or ""))
        if sub is None:
            return False
        try:
            package = self._package_of(request)
            if package is None:
                return True
            if package is not sub.package:
                self._refuse(request, 489, "Another event package than the subscription's")
                return True
            expires = self._expires(request)
            if expires is None:
                return True
            sub.dialog.receive_request(request)
        except SipError as exc:
            self._refuse(request, exc.status_hint, str(exc)[:80])
            return True
        if not sub.dialog.route_set:
            sub.destination = reachable_at(sub.dialog.remote_target, source)
        self.port.respond(request, 200, headers=[("Expires", str(expires)), ("Contact", sub.dialog.local_contact)],
                          to_tag=sub.dialog.local_tag)
        if expires == 0:
            self._finish(sub, "timeout", now)
            return True
        sub.expires_at = now + expires * MS_PER_S
        self._arm(sub)
        self._events.append(SubscriptionRefreshed(sub.id, expires))
        self._notify(sub, now)
        return True

    # ---- state changes --------------------------------------------------------------------------------------
    def changed(self, package: str, resource: str) -> bool:
        """The state of ``resource`` changed: its watchers get a NOTIFY at the next :meth:`flush`. False when
        nobody watches it (nothing to flush)."""
        if (package, resource) not in self._index.by_resource:
            return False
        self._pending.add((package, resource))
        return True

    def flush(self, now: int) -> None:
        """Send the NOTIFYs of every change since the last flush."""
        pending, self._pending = self._pending, set()
        for key in pending:
            for sub in list(self._index.by_resource.get(key, {}).values()):
                self._notify(sub, now)

    def resource_gone(self, package: str, resource: str, now: int) -> None:
        """``resource`` no longer exists (an extension removed): its subscriptions end with ``noresource``."""
        for sub in list(self._index.by_resource.get((package, resource), {}).values()):
            self._finish(sub, "noresource", now)

    # ---- responses to our NOTIFYs ---------------------------------------------------------------------------
    def on_response(self, response: Response, key: ClientKey, now: int) -> bool:
        """A response to a request we sent; False when it is not one of our NOTIFYs."""
        sent = self._sent.get(key)
        if sent is None:
            return False
        if response.status < 200:
            return True
        del self._sent[key]
        sub = sent.subscription
        with contextlib.suppress(SipError):
            sub.dialog.receive_response(sent.request, response)
        if sub.in_flight == key:
            sub.in_flight = None
        if sub.ended:
            return True
        if response.status >= 300:
            self._events.append(NotifyFailed(sub.id, response.status))
            self._drop(sub, f"notify_{response.status}")
            return True
        if sub.dirty:
            self._notify(sub, now)
        return True

    def on_transaction_failed(self, key: ClientKey, now: int) -> bool:
        """Our NOTIFY got no response (Timer F) or could not be sent; False when ``key`` is not ours."""
        sent = self._sent.pop(key, None)
        if sent is None:
            return False
        sub = sent.subscription
        if sub.in_flight == key:
            sub.in_flight = None
        if not sub.ended:
            self._events.append(NotifyFailed(sub.id, None))
            self._drop(sub, "notify_timeout")
        return True

    # ---- time -------------------------------------------------------------------------------------------------
    def next_deadline(self) -> int | None:
        heap = self._deadlines
        while heap:
            at, _, dialog_id = heap[0]
            sub = self._index.by_dialog.get(dialog_id)
            if sub is not None and sub.expires_at == at:
                return at
            heapq.heappop(heap)  # refreshed or ended since: a stale entry
        return None

    def handle_timer(self, now: int) -> None:
        """End every subscription whose expiry has passed (RFC 6665 §4.2.2: ``terminated;reason=timeout``)."""
        while True:
            at = self.next_deadline()
            if at is None or at > now:
                return
            _, _, dialog_id = heapq.heappop(self._deadlines)
            sub = self._index.by_dialog.get(dialog_id)
            if sub is not None:
                self._finish(sub, "timeout", now)

    def stop(self, now: int) -> None:
        """The server stops: every subscription ends with ``terminated;reason=deactivated`` (§4.2.2), so
        watchers subscribe again when it is back."""
        for sub in list(self._index.by_dialog.values()):
            self._finish(sub, "deactivated", now)

    # ---- internals ------------------------------------------------------------------------------------------
    def _package_of(self, request: Request) -> EventPackage | None:
        value = request.headers.get("event")
        if value is None or not value.split(";")[0].strip():
            self._refuse(request, 400, "Missing Event header")
            return None
        name = value.split(";")[0].strip()
        package = self._packages.get(name)
        if package is None:
            self._refuse(request, 489, f"Unknown event package {name[:40]}")
        return package

    def _acceptable_type(self, request: Request, package: EventPackage) -> bool:
        accepts = [a.split(";")[0].strip().lower() for a in request.headers.get_all("accept")]
        if not accepts or package.content_type in accepts or "*/*" in accepts:
            return True
        self._refuse(request, 406, f"Bodies are {package.content_type}")
        return False

    def _expires(self, request: Request) -> int | None:
        """The granted expiry in seconds (0 ends or fetches), or None after answering 423 (§4.2.1.1)."""
        asked = request.expires
        policy = self.policy
        if asked is None:
            return policy.default_expires_s
        if asked == 0:
            return 0
        if asked < policy.min_expires_s:
            self._refuse(request, 423, None, [("Min-Expires", str(policy.min_expires_s))])
            return None
        return min(asked, policy.max_expires_s)

    def _refuse(self, request: Request, status: int, reason: str | None,
                headers: Iterable[tuple[str, str]] = ()) -> None:
        extra = list(headers)
        if status == 489:
            extra.append(("Allow-Events", self.allow_events))
        to_tag = request.to.tag or new_tag()
        self.port.respond(request, status, reason=reason, headers=extra, to_tag=to_tag)
        self._events.append(SubscriptionRefused(request.headers.get("event") or "", status, reason or ""))

    @staticmethod
    def _destination(dialog: Dialog, source: Destination) -> Destination:
        """Where NOTIFYs go: the route set's first hop, else where the subscriber really is (NAT, RFC 3581)."""
        if dialog.route_set:
            return dialog.next_hop()
        return reachable_at(dialog.remote_target, source)

    def _make_room(self, subscriber: str, now: int) -> None:
        """Keep under the caps: the subscriber's oldest subscription, else the oldest of all, ends first."""
        mine = self._index.by_subscriber.get(subscriber, {})
        if len(mine) >= self.policy.max_per_subscriber:
            self.evicted += 1
            self._finish(next(iter(mine.values())), "timeout", now)
        if len(self._index.by_dialog) >= self.policy.max_subscriptions:
            self.evicted += 1
            self._finish(next(iter(self._index.by_dialog.values())), "timeout", now)

    def _arm(self, sub: Subscription) -> None:
        heapq.heappush(self._deadlines, (sub.expires_at, next(self._seq), sub.dialog.id))
        heap = self._deadlines
        if len(heap) > 64 and len(heap) > 4 * len(self._index.by_dialog):
            # every refresh leaves its old deadline behind (lazy deletion): compact so the heap stays bounded
            by_dialog = self._index.by_dialog
            self._deadlines = [e for e in heap if (live := by_dialog.get(e[2])) is not None
                               and live.expires_at == e[0]]
            heapq.heapify(self._deadlines)

    @property
    def table_sizes(self) -> dict[str, int]:
        return {"subscriptions": len(self._index.by_dialog), "subscription_deadlines": len(self._deadlines),
                "notifies_in_flight": len(self._sent)}

    def _notify(self, sub: Subscription, now: int, *, state: str | None = None, force: bool = False) -> None:
        """Send the current full state; while a NOTIFY is in flight only remember that one is due."""
        if sub.in_flight is not None and not force:
            sub.dirty = True
            return
        sub.dirty = False
        if state is None:
            remaining = max(1, -(-(sub.expires_at - now) // MS_PER_S))
            state = f"active;expires={remaining}"
        rendered = sub.package.render(sub.resource, sub.version, sub.memory)
        sub.version += 1
        sub.memory = rendered.memory
        transport = sub.destination[0]
        host, port = self.port.local_address(sub.destination)
        try:
            notify = sub.dialog.create_request(
                "NOTIFY", via_host=host, via_port=port, transport=transport, body=rendered.body,
                content_type=sub.package.content_type,
                headers=[("Event", sub.event), ("Subscription-State", state), ("User-Agent", self.user_agent)])
            key = self.port.send_request(notify, sub.destination)
        except Exception:  # an unsendable destination (a closed TCP connection): the subscription is gone
            if not sub.ended:
                self._events.append(NotifyFailed(sub.id, None))
                self._drop(sub, "notify_unsendable")
            return
        sub.in_flight = key
        self._sent[key] = _Sent(sub, notify)

    def _finish(self, sub: Subscription, reason: str, now: int) -> None:
        """End ``sub`` with a final NOTIFY (``terminated;reason=...``) carrying the resource's state."""
        self._drop(sub, reason)
        self._notify(sub, now, state=f"terminated;reason={reason}", force=True)

    def _drop(self, sub: Subscription, reason: str) -> None:
        if sub.ended:
            return
        sub.ended = True
        dialog_id = sub.dialog.id
        self._index.by_dialog.pop(dialog_id, None)
        watchers = self._index.by_resource.get((sub.package.name, sub.resource))
        if watchers is not None:
            watchers.pop(dialog_id, None)
            if not watchers:
                del self._index.by_resource[(sub.package.name, sub.resource)]
        mine = self._index.by_subscriber.get(sub.subscriber)
        if mine is not None:
            mine.pop(dialog_id, None)
            if not mine:
                del self._index.by_subscriber[sub.subscriber]
        self._events.append(SubscriptionEnded(sub.id, sub.package.name, sub.resource, reason))


def _contact(host: str, port: int, transport: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    param = "" if transport == "udp" else f";transport={transport}"
    return f"<sip:ccpbx@{shown}:{port}{param}>"
