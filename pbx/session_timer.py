"""Session timers (RFC 4028) for call legs: who refreshes, how often, and what happens when nobody does.

Negotiated per leg on the INVITE (or UPDATE) and its 2xx: the interval is at least our Min-SE (a smaller one
got 422 before a leg existed); the refresher is the UAC unless it does not support timers (§9). The refresher
side sends a re-INVITE (or UPDATE when the peer allows it) at half the interval; the other side ends the call
if no refresh came by ``interval - min(32, interval / 3)`` (§10). One asyncio timer per leg, on the manager's
loop; the manager's public leg operations do the sending.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ccpbx.pbx.cdr import HangupSide
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.sip.message import Request, Response

if TYPE_CHECKING:
    from ccpbx.pbx.calls import CallManager, Leg

__all__ = ["DEFAULT_SESSION_EXPIRES_S", "MIN_SE_S", "SUPPORTED", "SessionTimers", "session_expires"]

log = get_logger("ccpbx.calls")

SDP = "application/sdp"
SUPPORTED = "replaces, timer"  # the option tags our legs support (RFC 3891 Replaces, RFC 4028 timer)
MIN_SE_S = 90  # RFC 4028 §4: the smallest Session-Expires we accept (and the default Min-SE)
DEFAULT_SESSION_EXPIRES_S = 1800  # RFC 4028 §4 recommended value


def session_expires(message: Request | Response, *, strict: bool = False) -> tuple[int, str | None] | None:
    """``Session-Expires: delta;refresher=uac|uas`` (RFC 4028 §4) as (seconds, refresher or None).

    None when absent; a value that is not a number is None too, or ``ValueError`` with ``strict``.
    """
    value = message.headers.get("session-expires")
    if not value:
        return None
    parts = value.split(";")
    try:
        interval = int(parts[0].strip())
    except ValueError:
        if strict:
            raise
        return None
    refresher = None
    for param in parts[1:]:
        name, _, v = param.partition("=")
        if name.strip().lower() == "refresher" and v.strip().lower() in ("uac", "uas"):
            refresher = v.strip().lower()
    return interval, refresher



class SessionTimers:
    """The session timers of a manager's legs; see the module docstring."""

    def __init__(self, manager: CallManager) -> None:
        self.m = manager

    def uas_headers(self, leg: Leg, request: Request) -> list[tuple[str, str]]:
        parsed = session_expires(request)
        if parsed is None:
            return []
        interval = max(parsed[0], self.m.config.min_se_s)
        refresher = parsed[1] or "uac"
        uac_supports = "timer" in request.header_tokens("supported")
        if not uac_supports:
            refresher = "uas"  # §9: a UAC without timer support cannot refresh
        leg.session_expires = interval
        leg.we_refresh = refresher == "uas"
        leg.peer_allows_update = "UPDATE" in (request.headers.get("allow") or "").upper()
        headers = [("Session-Expires", f"{interval};refresher={refresher}")]
        if uac_supports:
            headers.append(("Require", "timer"))
        return headers

    def apply_uac(self, leg: Leg, response: Response) -> None:
        parsed = session_expires(response)
        if parsed is None:
            return
        leg.session_expires = max(parsed[0], self.m.config.min_se_s)
        leg.we_refresh = parsed[1] == "uac"
        self.arm(leg)

    def arm(self, leg: Leg) -> None:
        if leg.timer is not None:
            leg.timer.cancel()
        interval = leg.session_expires or 0
        if interval <= 0 or leg.ended:
            return
        loop = asyncio.get_running_loop()
        if leg.we_refresh:
            leg.timer = loop.call_later(interval / 2, self._refresh, leg)
        else:  # §10: the session expires unless refreshed before Session-Expires - min(32, SE/3)
            leg.timer = loop.call_later(interval - min(32, interval / 3), self._expired, leg)

    def _refresh(self, leg: Leg) -> None:
        leg.timer = None
        if leg.ended or leg.dialog is None:
            return
        headers = [("Session-Expires", f"{leg.session_expires};refresher=uas" if leg.inbound
                    else f"{leg.session_expires};refresher=uac"), ("Supported", SUPPORTED)]
        if leg.peer_allows_update:
            request = self.m.in_dialog_request(leg, "UPDATE", headers=headers)
        else:
            offer = leg.sdp.offer(self.m.local_media(leg))
            leg.local_offer = offer
            request = self.m.in_dialog_request(leg, "INVITE", body=offer.serialize(), content_type=SDP,
                                              headers=[("Contact", self.m.contact(leg)), *headers])
        key = self.m.send_in_dialog(leg, request)
        if request.method == "INVITE":
            leg.reinvite_out = key
        self.arm(leg)

    def _expired(self, leg: Leg) -> None:
        leg.timer = None
        if leg.ended:
            return
        log.info("call.session.expired", leg=leg.id)
        leg.call.end_reason = leg.call.end_reason or "session_expired"
        self.m.end_call(leg.call, HangupSide.SYSTEM, 408)
