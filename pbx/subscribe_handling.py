"""SUBSCRIBE/NOTIFY in the handler chain: the RFC 6665 notifier at the edge.

A new SUBSCRIBE is screened by the notifier (400, 489 for an unknown event package, 423...), admitted like a
REGISTER (401 digest: the subscriber is an extension), and its resource must be an extension (404 otherwise);
a SUBSCRIBE inside a subscription refreshes or ends it (481 when none matches). Responses to our NOTIFYs and
their failures go back to the notifier. State changes reported during call control are NOTIFYed once the
current handler is done (one NOTIFY for a burst), and the notifier's expiry timer is one ``loop.call_at``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ccpbx.pbx.admission import Admission
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.sip_handlers import DeadlineTimer, SipServices, admit
from ccpbx.pbx.subscriptions import (
    Notifier,
    NotifyFailed,
    SubscriptionEnded,
    SubscriptionRefreshed,
    SubscriptionRefused,
    SubscriptionStarted,
)

__all__ = ["SubscriptionHandler"]

log = get_logger("ccpbx.subscriptions")


class SubscriptionHandler:
    """Takes SUBSCRIBE and the responses to our NOTIFYs; see the module docstring."""

    def __init__(self, services: SipServices, admission: Admission, notifier: Notifier, *,
                 exists: Callable[[str], bool], reload: Callable[[], Awaitable[None]]) -> None:
        self.services = services
        self.admission = admission
        self.notifier = notifier
        self.exists = exists
        self.reload = reload
        self._flush: asyncio.Handle | None = None
        self._timer = DeadlineTimer(self._on_timer)

    # ---- the chain --------------------------------------------------------------------------------------------
    def on_request(self, request: Request, source: Destination, key: ServerKey | None) -> bool:
        if request.method != "SUBSCRIBE":
            return False
        if request.to.tag is not None:
            if not self.notifier.on_request(request, source, self.services.now()):
                self.services.reply(request, 481)
            self._drain()
            return True
        self.services.spawn(self._subscribe(request, source))
        return True

    def on_response(self, response: Response, key: ClientKey) -> bool:
        taken = self.notifier.on_response(response, key, self.services.now())
        self._drain()
        return taken

    def on_transaction_failed(self, key: ClientKey | ServerKey, request: Request) -> bool:
        if not isinstance(key, ClientKey):
            return False
        taken = self.notifier.on_transaction_failed(key, self.services.now())
        self._drain()
        return taken

    async def _subscribe(self, request: Request, source: Destination) -> None:
        try:
            if not self.notifier.screen(request):
                return
            resource = request.sip_uri.user_unescaped or ""
        except SipParseError as exc:
            self.services.reply(request, exc.status_hint, reason=str(exc)[:80])
            return
        finally:
            self._drain()
        admitted = await admit(self.services, self.admission, request, source, challenge_status=401)
        if admitted is None:
            return
        if not self.exists(resource):
            await self.reload()  # perhaps added (`ccpbx ext add`) since the last reload
        if not self.exists(resource):
            self.services.reply(request, 404, reason="No such extension")
            return
        self.notifier.subscribe(request, source, admitted.user, resource, self.services.now())
        self._drain()

    # ---- state changes, timers ----------------------------------------------------------------------------------
    def resource_changed(self, package: str, resource: str) -> None:
        """A watched resource changed (from a leg listener, in the middle of call control): NOTIFY once the
        current handler is done, so the leg's dialog identifiers are complete and a burst is one NOTIFY."""
        if not self.notifier.changed(package, resource):
            return  # nobody watches it: no work per leg change at all
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def resources_gone(self, package: str, resources: set[str]) -> None:
        for resource in resources:
            self.notifier.resource_gone(package, resource, self.services.now())
        self._drain()

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()  # (when called directly, at stop)
            self._flush = None
        self.notifier.flush(self.services.now())
        self._drain()

    def arm_timer(self) -> None:
        """One timer at the notifier's next deadline (expiries); armed again after every change (``_drain``)."""
        self._timer.arm(self.notifier.next_deadline())

    def _on_timer(self) -> None:
        self.notifier.handle_timer(self.services.now())
        self._drain()

    def stop(self) -> None:
        """Send what is pending, end every subscription (``deactivated``), cancel the timers."""
        self.flush()
        self.notifier.stop(self.services.now())
        self._drain()
        self._timer.cancel()
        if self._flush is not None:
            self._flush.cancel()
        self._flush = None

    def _drain(self) -> None:
        for event in self.notifier.events():
            if isinstance(event, SubscriptionStarted):
                log.info("sip.subscription.started", subscription=event.subscription, package=event.package,
                         resource=event.resource, subscriber=event.subscriber, expires=event.expires_s)
            elif isinstance(event, SubscriptionRefreshed):
                log.info("sip.subscription.refreshed", subscription=event.subscription, expires=event.expires_s)
            elif isinstance(event, SubscriptionEnded):
                log.info("sip.subscription.ended", subscription=event.subscription, package=event.package,
                         resource=event.resource, reason=event.reason)
            elif isinstance(event, SubscriptionRefused):
                log.info("sip.subscription.refused", package=event.event, status=event.status, reason=event.reason)
            elif isinstance(event, NotifyFailed):
                log.info("sip.notify.failed", subscription=event.subscription, status=event.status)
        # every change to the notifier is followed by a drain: its deadlines are armed here, not after each
        # datagram the edge handles (three calls a datagram, most of them with no subscription anywhere)
        self.arm_timer()
