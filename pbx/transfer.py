"""Transfers: REFER (RFC 3515) with blind and attended (Replaces, RFC 3891) forms, carried out on a manager's calls.

A blind transfer's target is routed by the application (``TransferRequested`` reaches routing through the call's
events); :meth:`Transfers.blind_transfer` then rings it for the transferee while the transferor hears NOTIFY
progress (sipfrag, RFC 3515 §2.4.5), and :meth:`Transfers.hand_over` gives the transferee to any other
destination at once. An attended transfer names the transferor's other call in ``Replaces``: the two far
parties are joined in a new call whose record continues the chain. Works only through the manager's public leg
operations (``send_bye``, ``close_leg``, ``end_call``, ``in_dialog_request``...).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ccpbx.ivr.errors import CallHangup
from ccpbx.media.prompts import MusicOnHold
from ccpbx.pbx.call_types import CallEnded, DialOutcome, Party, TransferRequested
from ccpbx.pbx.cdr import HangupSide
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.sip.dialog import ReplacesTarget, parse_refer_to, sipfrag
from ccpbx.pbx.sip.errors import SipParseError, reason_text
from ccpbx.pbx.sip.message import Request, reason_for
from ccpbx.pbx.sip.uri import SipUri

if TYPE_CHECKING:
    from ccpbx.pbx.call_types import DialTarget
    from ccpbx.pbx.calls import Call, CallManager, Leg

__all__ = ["Transfers"]

log = get_logger("ccpbx.calls")


class Transfers:
    """REFER and its two forms for one manager; see the module docstring."""

    def __init__(self, manager: CallManager) -> None:
        self.m = manager

    def on_refer(self, leg: Leg, request: Request) -> None:
        value = request.headers.get("refer-to")
        call = leg.call
        if not value:
            self.m.sip.respond(request, 400, reason="Missing Refer-To")
            return
        try:
            target, replaces = parse_refer_to(value)
        except SipParseError as exc:
            self.m.sip.respond(request, 400, reason=reason_text(exc))
            return
        other = call.b if leg is call.a else call.a if leg is call.b else None
        if other is None or not other.up:
            self.m.sip.respond(request, 603, reason="Nothing to transfer")
            return
        self.m.sip.respond(request, 202, headers=[("Contact", self.m.contact(leg))])
        self._notify(leg, 100, "Trying")
        if replaces is not None:
            self._attended_transfer(leg, other, replaces)
            return
        uri = target.uri
        user = uri.user_unescaped if isinstance(uri, SipUri) else None
        if not user:
            self._notify(leg, 404, "Not Found", final=True)
            return
        call.events.put_nowait(TransferRequested(leg, user, request))

    def _notify(self, leg: Leg, status: int, reason: str, *, final: bool = False) -> None:
        if leg.ended or leg.dialog is None:
            return
        state = "terminated;reason=noresource" if final else "active;expires=60"
        request = self.m.in_dialog_request(leg, "NOTIFY", body=sipfrag(status, reason),
                                          content_type="message/sipfrag;version=2.0",
                                          headers=[("Event", "refer"), ("Subscription-State", state)])
        self.m.send_in_dialog(leg, request)

    def _attended_transfer(self, transferor: Leg, transferee: Leg, replaces: ReplacesTarget) -> None:
        """Attended transfer: the transferor's other call (named by Replaces) supplies the party to join.

        Both of the transferor's dialogs end at us, so the Replaces names one of our legs: the transferee is
        bridged with the far party of that other call and both of the transferor's legs are hung up.
        """
        replaced = self.m.find_leg_by_dialog(replaces.call_id, replaces.to_tag, replaces.from_tag)
        if replaced is None:
            self._notify(transferor, 481, "Call Does Not Exist", final=True)
            return
        other_call = replaced.call
        far = other_call.b if replaced is other_call.a else other_call.a
        if far is None or far.ended or far.channel is None or transferee.channel is None:
            self._notify(transferor, 481, "Call Does Not Exist", final=True)
            return
        self._notify(transferor, 200, "OK", final=True)
        self._join(transferor, transferee, replaced, far)

    def _join(self, transferor: Leg, keep: Leg, replaced: Leg, far: Leg) -> None:
        """Bridge ``keep`` (of transferor's call) with ``far`` (of the replaced call); hang up the others."""
        call, other_call = keep.call, far.call
        engine = self.m.engine
        for c in (call, other_call):
            if c.bridge_id is not None:
                with contextlib.suppress(Exception):
                    engine.destroy(c.bridge_id)
                c.bridge_id = None
            for ch in list(c.moh):
                with contextlib.suppress(Exception):
                    engine.stop_play(ch)
            c.moh.clear()
        # a new call carries the CDR chain on: the two old ones end as transferred
        joined = self.m.new_call(keep, call.caller, call.dialled, parent=call)
        joined.destination = far.peer
        joined.b = far
        joined.answered_at = time.time()
        for c in (call, other_call):
            c.transfers.append(joined.id)
            c.legs = [x for x in c.legs if x is not keep and x is not far]
            c.b = None if c.b in (keep, far) else c.b
        joined.legs = [keep, far]
        keep.call = joined
        far.call = joined
        keep.held_by_remote = far.held_by_remote = False
        assert keep.channel is not None and far.channel is not None
        joined.bridge_id = engine.bridge(keep.channel, far.channel)
        self.m.calls[joined.id] = joined
        self.m.stats.calls += 1
        self.m.stats.active += 1
        self.m.cdr_begin(joined)
        for c, leg in ((call, transferor), (other_call, replaced)):
            c.hangup_side = HangupSide.CALLER
            if leg.up:
                self.m.send_bye(leg)
            self.m.close_leg(leg)
            self.m.end_call(c, HangupSide.CALLER, None)
        self.m.spawn(self.m.converse(joined) if self.m.converse is not None else self._watch_joined(joined))
        log.info("call.transfer.attended", call=joined.id, kept=keep.peer, far=far.peer)

    async def _watch_joined(self, call: Call) -> None:
        while not call.finished:
            event = await call.wait_event()
            if isinstance(event, CallEnded):
                return

    async def blind_transfer(self, request: TransferRequested, targets: Sequence[DialTarget], timeout_ms: int,
                             label: str) -> Call | None:
        """Carry out a blind transfer routing has resolved: ring ``targets`` for the transferee.

        The transferee hears music on hold while the target rings and moves to a new call whose CDR names the
        old one as its parent. The transferor gets NOTIFY progress (sipfrag, RFC 3515 §2.4.5): on answer a
        final 200, then our BYE (unless it hung up already); on failure the final status, and if it is still
        there it is bridged back to the transferee, as a phone user expects. Returns the new call, or None.
        """
        transferor = request.transferor
        call = transferor.call
        transferee = self._transferee(transferor)
        if transferee is None or transferee.channel is None:
            return None
        engine = self.m.engine
        if call.bridge_id is not None:
            with contextlib.suppress(Exception):
                engine.destroy(call.bridge_id)
            call.bridge_id = None
        call.moh.pop(transferee.channel, None)
        engine.play(transferee.channel, MusicOnHold(self.m.moh_pcm))
        # the transferee leaves the old call at once, so the transferor hanging up now ends only its own leg
        was_a = call.a is transferee
        new = self._split_off(call, transferee, request.target, label)
        try:
            outcome = await new.dial(targets, timeout_ms, label=label)
        except CallHangup:
            outcome = DialOutcome(None, (487,))
        if outcome.answered is not None:
            self._release_transferor(call, transferor)
            log.info("call.transfer.blind", call=new.id, target=label)
            return new
        status = outcome.best_status
        self._notify(transferor, status, reason_for(status), final=True)
        log.info("call.transfer.failed", target=label, status=status)
        if transferor.up and not transferee.ended and transferee.channel is not None and transferor.channel is not None:
            # back to where they were: the transfer attempt leaves a failed record of its own
            new.legs = [x for x in new.legs if x is not transferee]
            new.hangup_status = status
            self.m.end_call(new, HangupSide.SYSTEM, status)
            transferee.call = call
            call.legs.append(transferee)
            if was_a:
                call.a = transferee
            else:
                call.b = transferee
            engine.stop_play(transferee.channel)
            call.bridge_id = engine.bridge(transferee.channel, transferor.channel)
            call.transfers.remove(new.id)
            return None
        new.hangup_status = status
        self.m.end_call(new, HangupSide.SYSTEM, status)
        if not transferor.ended:
            self.m.end_call(call, HangupSide.SYSTEM, status)
        return None

    def _split_off(self, call: Call, leg: Leg, dialled: str, label: str) -> Call:
        """Move ``leg`` out of ``call`` into a new call whose CDR continues the chain (``parent_call_id``)."""
        new = self.m.new_call(leg, Party(leg.peer), dialled, parent=call)
        new.destination = label
        new.data = dict(call.data)
        call.legs = [x for x in call.legs if x is not leg]
        if call.b is leg:
            call.b = None
        leg.call = new
        self.m.calls[new.id] = new
        self.m.stats.calls += 1
        self.m.stats.active += 1
        call.transfers.append(new.id)
        self.m.cdr_begin(new)
        return new

    def hand_over(self, request: TransferRequested, label: str) -> Call | None:
        """Complete a blind transfer at once: the transferee moves to a new call (returned, for routing to
        serve), the transferor gets NOTIFY 200 and BYE. None (and NOTIFY 481) when there is nobody to move."""
        transferor = request.transferor
        call = transferor.call
        transferee = self._transferee(transferor)
        if transferee is None or transferee.channel is None:
            return None
        if call.bridge_id is not None:
            with contextlib.suppress(Exception):
                self.m.engine.destroy(call.bridge_id)
            call.bridge_id = None
        if call.moh.pop(transferee.channel, None) is not None:
            self.m.engine.stop_play(transferee.channel)
        new = self._split_off(call, transferee, request.target, label)
        self._release_transferor(call, transferor)
        log.info("call.transfer.handed_over", call=new.id, target=label)
        return new

    def _release_transferor(self, call: Call, transferor: Leg) -> None:
        """The transfer succeeded: final NOTIFY 200 (RFC 3515 §2.4.5), BYE to the transferor, its call ends."""
        self._notify(transferor, 200, "OK", final=True)
        call.hangup_side = call.hangup_side or (HangupSide.CALLER if transferor is call.a else HangupSide.CALLEE)
        if transferor.up:
            self.m.send_bye(transferor)
        self.m.close_leg(transferor)
        self.m.end_call(call, call.hangup_side, None)

    def _transferee(self, transferor: Leg) -> Leg | None:
        """The party the transferor is talking to, or None (and NOTIFY 481) when it is gone."""
        call = transferor.call
        transferee = call.b if transferor is call.a else call.a
        if transferee is None or transferee.ended or transferee.channel is None:
            self._notify(transferor, 481, "Call Does Not Exist", final=True)
            return None
        return transferee

    def transfer_progress(self, transferor: Leg, status: int, reason: str, *, final: bool = False) -> None:
        """NOTIFY the transferor of a REFER's progress (RFC 3515 §2.4.5, a sipfrag status line)."""
        self._notify(transferor, status, reason, final=final)
