"""Message-waiting indication (RFC 3842): the ``message-summary`` event package and unsolicited NOTIFYs.

- :class:`MessageSummaryPackage` plugs into the RFC 6665 notifier (:mod:`ccpbx.pbx.subscriptions`): a phone
  may SUBSCRIBE to its own box only; each change of the box's counts (``Notifier`` told through
  ``resource_changed("message-summary", box)``) NOTIFYs ``Messages-Waiting``, ``Message-Account`` and
  ``Voice-Message: new/old (0/0)`` (no urgent messages).
- :class:`UnsolicitedMwi` (``[voicemail] unsolicited_mwi``): the same body in a NOTIFY outside any
  subscription to every registered contact of the box's extension, for phones configured that way (many desk
  phones expect it); it sits in the handler chain so their responses end here.

Counts come from a callable (``box -> (new, saved)``), so this module knows nothing of how boxes are stored.
"""

from __future__ import annotations

from collections.abc import Callable

from ccpbx.pbx.log import get_logger
from ccpbx.pbx.sip.dialog import Dialog
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.sip.uri import NameAddr, SipUri
from ccpbx.pbx.sip_handlers import SipServices
from ccpbx.pbx.subscriptions import Rendered

__all__ = ["MWI_CONTENT_TYPE", "MWI_PACKAGE", "MessageSummaryPackage", "UnsolicitedMwi", "summary_body"]

log = get_logger("ccpbx.mwi")

MWI_PACKAGE = "message-summary"
MWI_CONTENT_TYPE = "application/simple-message-summary"
Counts = Callable[[str], tuple[int, int]]  # a box's (new, saved) messages


def summary_body(account: str, new: int, saved: int) -> bytes:
    """The RFC 3842 ``application/simple-message-summary`` body."""
    return (f"Messages-Waiting: {'yes' if new else 'no'}\r\nMessage-Account: {account}\r\n"
            f"Voice-Message: {new}/{saved} (0/0)\r\n").encode()



class MessageSummaryPackage:
    """The ``message-summary`` event package (RFC 3842) over the boxes' counts; a phone watches its own box."""

    name = MWI_PACKAGE
    content_type = MWI_CONTENT_TYPE

    def __init__(self, counts: Counts, domain: str) -> None:
        self.counts = counts
        self.domain = domain

    def authorize(self, subscriber: str, resource: str) -> bool:
        return subscriber == resource

    def render(self, resource: str, version: int, memory: object) -> Rendered:
        new, saved = self.counts(resource)
        return Rendered(summary_body(f"sip:{resource}@{self.domain}", new, saved))


class UnsolicitedMwi:
    """NOTIFYs outside any subscription to every registered phone of a box whose counts changed (for phones
    configured for unsolicited MWI); a handler in the chain so their responses are consumed here."""

    def __init__(self, services: SipServices, counts: Counts, domain: str,
                 reachable: Callable[[str], list[tuple[SipUri, Destination]]]) -> None:
        self.services = services
        self.counts = counts
        self.domain = domain
        self.reachable = reachable
        self._pending: set[ClientKey] = set()

    def changed(self, box: str) -> None:
        new, saved = self.counts(box)
        body = summary_body(f"sip:{box}@{self.domain}", new, saved)
        for uri, destination in self.reachable(box):
            dialog = Dialog.new_uac(local_uri=NameAddr(SipUri(user=box, host=self.domain)),
                                    remote_uri=NameAddr(SipUri(user=box, host=self.domain)), remote_target=uri,
                                    local_contact=f"<sip:ccpbx@{self.domain}>")
            host, port = self.services.local_address(destination)
            notify = dialog.create_request("NOTIFY", via_host=host, via_port=port, transport=destination[0],
                                           body=body, content_type=MWI_CONTENT_TYPE,
                                           headers=[("Event", MWI_PACKAGE), ("Subscription-State", "active")])
            try:
                self._pending.add(self.services.send_request(notify, destination))
            except Exception as exc:  # an unreachable contact: the others still get theirs
                log.info("voicemail.mwi.unsent", mailbox=box, error=str(exc))

    def on_request(self, request: Request, source: Destination, key: ServerKey | None) -> bool:
        return False

    def on_response(self, response: Response, key: ClientKey) -> bool:
        if key not in self._pending:
            return False
        if response.status >= 200:
            self._pending.discard(key)
        return True

    def on_transaction_failed(self, key: ClientKey | ServerKey, request: Request) -> bool:
        if key in self._pending:
            self._pending.discard(key)
            return True
        return False
