"""SIP MESSAGE between extensions (RFC 3428 pager-mode instant messages) in the handler chain.

A MESSAGE outside a dialog is admitted like an INVITE (407 digest, or a trusted network), then relayed as a new
request of ours to every live contact of the extension named in the Request-URI (a B2BUA does not forward the
sender's request unchanged): the first 2xx answers the sender (with that status); otherwise the best failure
(480 when the extension has no phone registered or none answered in time, 404 when there is no such extension).
The body and its Content-Type pass through untouched; RFC 3428 §8 caps a MESSAGE over UDP, so a body over
``MAX_BODY_BYTES`` gets 513.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from ccpbx.pbx.admission import Admission
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.sip.dialog import Dialog
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.sip.uri import NameAddr, SipUri
from ccpbx.pbx.sip_handlers import SipServices, admit

__all__ = ["MAX_BODY_BYTES", "MessageRelay"]

log = get_logger("ccpbx.messaging")

MAX_BODY_BYTES = 1300  # RFC 3428 §8: a MESSAGE must fit an unfragmented UDP datagram
RELAY_TIMEOUT_S = 32.0  # Timer F: after this the transaction layer reports a failure anyway


class MessageRelay:
    """Takes MESSAGE requests outside dialogs; see the module docstring."""

    def __init__(self, services: SipServices, admission: Admission, *, domain: str,
                 reachable: Callable[[str], list[tuple[SipUri, Destination]]], exists: Callable[[str], bool]) -> None:
        self.services = services
        self.admission = admission
        self.domain = domain
        self.reachable = reachable
        self.exists = exists
        self._pending: dict[ClientKey, asyncio.Future[int]] = {}
        self.relayed = 0

    def on_request(self, request: Request, source: Destination, key: ServerKey | None) -> bool:
        if request.method != "MESSAGE" or request.to.tag is not None:
            return False
        self.services.spawn(self._relay(request, source))
        return True

    def on_response(self, response: Response, key: ClientKey) -> bool:
        future = self._pending.get(key)
        if future is None:
            return False
        if response.status >= 200:
            self._pending.pop(key, None)
            if not future.done():
                future.set_result(response.status)
        return True

    def on_transaction_failed(self, key: ClientKey | ServerKey, request: Request) -> bool:
        future = self._pending.pop(key, None)  # type: ignore[arg-type]
        if future is None:
            return False
        if not future.done():
            future.set_result(408)
        return True

    async def _relay(self, request: Request, source: Destination) -> None:
        services = self.services
        try:
            target = request.sip_uri.user_unescaped or ""
        except SipParseError as exc:
            services.reply(request, exc.status_hint, reason=str(exc)[:80])
            return
        if len(request.body) > MAX_BODY_BYTES:
            services.reply(request, 513, reason="Message Too Large")
            return
        admitted = await admit(services, self.admission, request, source, challenge_status=407)
        if admitted is None:
            return
        if not target or not self.exists(target):
            services.reply(request, 404, reason="No such extension")
            return
        contacts = self.reachable(target)
        if not contacts:
            services.reply(request, 480, reason="Not registered")
            return
        futures = [self._send(request, admitted.user, target, uri, destination) for uri, destination in contacts]
        status = await self._first_success(futures)
        self.relayed += status < 300
        log.info("sip.message.relayed", sender=admitted.user, to=target, status=status, contacts=len(contacts))
        services.reply(request, status if status < 300 else (480 if status in (408, 487) else status))

    def _send(self, original: Request, sender: str, target: str, uri: SipUri,
              destination: Destination) -> asyncio.Future[int]:
        dialog = Dialog.new_uac(local_uri=NameAddr(SipUri(user=sender, host=self.domain)),
                                remote_uri=NameAddr(SipUri(user=target, host=self.domain)), remote_target=uri,
                                local_contact=f"<sip:ccpbx@{self.domain}>")
        host, port = self.services.local_address(destination)
        headers = [(name, value) for name, value in original.headers
                   if name.lower() in ("date", "subject", "in-reply-to", "priority")]
        relayed = dialog.create_request("MESSAGE", via_host=host, via_port=port, transport=destination[0],
                                        body=original.body, content_type=original.content_type or "text/plain",
                                        headers=headers)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            key = self.services.send_request(relayed, destination)
        except Exception:  # an unreachable contact: counts as a failure of that contact only
            future.set_result(480)
            return future
        self._pending[key] = future
        return future

    async def _first_success(self, futures: list[asyncio.Future[int]]) -> int:
        pending = set(futures)
        statuses: list[int] = []
        deadline = time.monotonic() + RELAY_TIMEOUT_S
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for future in done:
                status = future.result()
                if 200 <= status < 300:
                    for other in pending:
                        other.cancel()
                    return status
                statuses.append(status)
        for future in pending:
            with contextlib.suppress(Exception):
                future.cancel()
        return min(statuses, key=lambda s: (s // 100 != 4, s)) if statuses else 408
