"""Call pickup: answering, from one phone, a call that rings another.

Three ways in, one way of carrying it out:

- **directed pickup** (``[features] pickup_directed``, ``**`` + extension): the call ringing that extension;
- **group pickup** (``[features] pickup_group``, ``*8``): a call ringing any member of a ``[[group]]`` the
  picker belongs to;
- **INVITE with Replaces** outside a REFER (RFC 3891), what a phone's BLF key sends: the dialog it names.

The oldest ringing call wins when several ring. The picker's own call is answered, then handed to the ringing
call's ``dial`` (:meth:`Call.picked_up`), which bridges it with the caller and CANCELs the ringing legs with
``Reason: SIP;cause=200;text="Call completed elsewhere"``; the ringing call's CDR then names the picker as its
destination (``extension:PICKER``), and the picker's own (now empty) call ends with a record that points at it
(``transfers``). A Replaces naming a confirmed dialog replaces that leg instead (RFC 3891 §3: bridged with its
peer, the replaced leg gets BYE). Nothing to pick up: a short congestion tone, then 404 — never silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass

from ccpbx.media.tones import Region, ToneKind, tone_source
from ccpbx.pbx.calls import Call, CallHangup, CallManager, Leg, Party
from ccpbx.pbx.config import ToneRegion
from ccpbx.pbx.dialplan import DialPlan, FeatureCode, FeatureRequest
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.sip.dialog import ReplacesTarget, parse_replaces
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request, new_tag
from ccpbx.pbx.sip.transaction import Destination, ServerKey

__all__ = ["REFUSAL_TONE_MS", "Pickup", "ReplacesDecision", "decide_replaces"]

log = get_logger("ccpbx.pickup")

REFUSAL_TONE_MS = 1_500  # the congestion tone a picker hears before the 404 when nothing rings
TAKE_ATTEMPTS = 3  # a ringing call can be answered between finding it and taking it: look again


@dataclass(frozen=True, slots=True)
class ReplacesDecision:
    """What an INVITE with Replaces (RFC 3891 §3) gets: ``status`` to refuse with, or the ``leg`` it names."""

    leg: Leg | None
    status: int = 0
    reason: str = ""


def decide_replaces(manager: CallManager, replaces: ReplacesTarget) -> ReplacesDecision:
    """RFC 3891 §3 on our legs: 481 when the dialog is none of ours (or an early dialog we did not initiate,
    or a leg that no longer rings), 486 for ``early-only`` naming a confirmed dialog; else the leg."""
    leg = manager.find_leg_by_dialog(replaces.call_id, replaces.to_tag, replaces.from_tag)
    if leg is None:
        return ReplacesDecision(None, 481, "Call/Transaction Does Not Exist")
    if leg.up:
        if replaces.early_only:
            return ReplacesDecision(None, 486, "Busy Here")
        return ReplacesDecision(leg)
    if leg.inbound or not _rings(leg):
        return ReplacesDecision(None, 481, "Call/Transaction Does Not Exist")
    return ReplacesDecision(leg)


def _rings(leg: Leg) -> bool:
    """An outbound leg ringing (a 1xx came back, so a CANCEL can go at once, RFC 3261 §9.1) for a ``dial``
    that a pickup can still win."""
    pickup = leg.call.pickup
    return (not leg.inbound and leg.provisional and not leg.up and not leg.ended and pickup is not None
            and not pickup.done() and not leg.call.finished)


class Pickup:
    """Call pickup over a :class:`CallManager`; see the module docstring."""

    def __init__(self, manager: CallManager, dialplan: DialPlan) -> None:
        self.manager = manager
        self.dialplan = dialplan

    @property
    def region(self) -> Region:
        return Region.NORTH_AMERICA if self.dialplan.region is ToneRegion.US else Region.ETSI

    # ---- which call --------------------------------------------------------------------------------------
    def group_devices(self, picker: str) -> set[str]:
        """The extensions ``*8`` picks up for: every member of every group ``picker`` is a member of."""
        return {m for g in self.dialplan.groups if picker in g.members for m in g.members}

    def ringing(self, devices: Collection[str], *, picker: str = "") -> Leg | None:
        """The ringing leg to a phone of ``devices`` whose call started first (the caller waiting longest);
        a call ``picker`` itself makes is not one to pick up."""
        found = [leg for leg in self.manager.legs()
                 if leg.device is not None and leg.device in devices and _rings(leg)
                 and not (picker and leg.call.a.device == picker)]
        return min(found, key=lambda leg: (leg.call.started, leg.started), default=None)

    # ---- feature codes -------------------------------------------------------------------------------------
    async def feature(self, call: Call, request: FeatureRequest) -> None:
        """``pickup_directed`` (argument: the ringing extension) or ``pickup_group``, dialled by ``call``."""
        picker = call.caller.number
        if request.code is FeatureCode.PICKUP_DIRECTED:
            if not request.argument:
                await call.reject(484, "Extension to pick up missing")
                return
            devices: set[str] = {request.argument}
        else:
            devices = self.group_devices(picker)
        for _ in range(TAKE_ATTEMPTS):
            leg = self.ringing(devices, picker=picker)
            if leg is None:
                break
            if await self._take(call, leg):
                return
        log.info("pickup.nothing_ringing", picker=picker, code=request.code.name, devices=sorted(devices))
        await self._refuse(call, 404, "Nothing to pick up")

    # ---- INVITE with Replaces -----------------------------------------------------------------------------
    def on_invite(self, request: Request, source: Destination, key: ServerKey, caller: Party, dialled: str, *,
                  local_tag: str | None = None, device: str | None = None) -> None:
        """An authenticated INVITE carrying Replaces (RFC 3891) outside a REFER: refuse it, or start a call
        that picks up (early dialog) or replaces (confirmed dialog) the leg it names. Never dial-plan routed."""
        sip = self.manager.sip
        try:
            replaces = parse_replaces(request.headers.get("replaces") or "")
        except SipParseError as exc:
            sip.respond(request, 400, reason=str(exc)[:80], to_tag=local_tag or new_tag())
            return
        decision = decide_replaces(self.manager, replaces)
        if decision.leg is None:
            log.info("pickup.replaces.refused", status=decision.status, replaces=str(replaces))
            sip.respond(request, decision.status, reason=decision.reason, to_tag=local_tag or new_tag())
            return
        target = decision.leg
        early = not target.up  # a pickup; if the call is answered meanwhile it is not taken over instead

        async def serve(call: Call) -> None:
            await self._replace(call, target, early=early)

        self.manager.on_invite(request, source, key, caller, dialled, local_tag=local_tag, device=device,
                               router=serve)

    async def _replace(self, call: Call, target: Leg, *, early: bool) -> None:
        if early:
            if not await self._take(call, target):
                await call.reject(481, "Call/Transaction Does Not Exist")
            return
        if target.ended:
            await call.reject(481, "Call/Transaction Does Not Exist")
            return
        await call.answer()
        old_call = target.call
        if not self.manager.replace_leg(target, call.a):
            call.hangup(status=481)
            return
        call.a.role = "replacing"
        call.destination = old_call.destination
        self._done(call, old_call)
        log.info("pickup.replaced", call=old_call.id, picker=call.caller.number)

    # ---- carrying it out ----------------------------------------------------------------------------------
    async def _take(self, call: Call, ringing: Leg) -> bool:
        """Answer the picker (``call``'s caller) and hand it to the ringing call; False when it stopped ringing."""
        if not _rings(ringing):
            return False
        target = ringing.call
        await call.answer()
        was = target.destination
        if not target.picked_up(call.a, f"extension:{call.caller.number}"):
            return False
        call.a.role = "picker"
        call.destination = was
        self._done(call, target)
        log.info("pickup.done", call=target.id, picker=call.caller.number, rang=ringing.device)
        return True

    @staticmethod
    def _done(call: Call, target: Call) -> None:
        """The picker's own call has given its leg away: it ends, its record pointing at the call it joined."""
        call.transfers.append(target.id)
        call.hangup()

    async def _refuse(self, call: Call, status: int, reason: str) -> None:
        """A short tone (early media, or in the call when the picker was answered already), then ``status``."""
        try:
            await call.early_media(tone_source(ToneKind.CONGESTION, self.region))
            await asyncio.sleep(REFUSAL_TONE_MS / 1000)
        except CallHangup:
            return
        await call.reject(status, reason)
