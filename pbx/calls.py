"""B2BUA call control: calls made of legs, each leg one SIP dialog whose media is anchored in the engine.

RFC 3261 §12-§15 (dialogs, INVITE, CANCEL, BYE), RFC 3264 (offer/answer, hold), RFC 3311 (UPDATE),
RFC 4028 (session timers), RFC 3515 + RFC 3891 (REFER, Replaces), RFC 4733 (DTMF relayed between legs),
RFC 3262 (reliable provisional responses: 100rel and PRACK, on both sides of the B2BUA).

Every leg is a dialog of its own: the outbound leg gets a fresh Call-ID, tags, CSeq space and SDP session,
and nothing of one leg's signalling is forwarded unchanged to the other (the 481 trap of naive B2BUAs). The
media of both legs terminates in the media engine; a plain same-codec bridge takes its relay fast path.

The manager is driven by the application's SIP edge (``on_request``, ``on_response``, ``on_transaction_failed``,
``on_media_event``) and drives it back through :class:`SipPort`. What a call does (ring whom, for how long,
forward where) is decided above, in ``routing``, through the :class:`Call` API: ``ring``, ``answer``,
``reject``, ``dial``, ``wait_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import os
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from ccpbx.ivr.errors import CallHangup as CallHangup  # re-exported: the name routing and apps catch
from ccpbx.ivr.flow import QueueRequest
from ccpbx.media.dtmf import generate_digits
from ccpbx.media.engine import Direction as MediaDirection
from ccpbx.media.engine import DtmfReceived, DtmfSource, MediaEvent, PlaybackFinished, RtpTimeout
from ccpbx.media.errors import MediaError
from ccpbx.media.g711 import Codec
from ccpbx.media.prompts import MusicOnHold, PromptPlayer
from ccpbx.media.source import AudioSource
from ccpbx.media.workers import AnyEngine, AnyMedia, ChannelLost, RemoteEngine
from ccpbx.pbx.call_types import (
    CallEnded as CallEnded,
)
from ccpbx.pbx.call_types import (
    CallError as CallError,
)
from ccpbx.pbx.call_types import (
    CallEvent as CallEvent,
)
from ccpbx.pbx.call_types import (
    DialOutcome as DialOutcome,
)
from ccpbx.pbx.call_types import (
    DialTarget as DialTarget,
)
from ccpbx.pbx.call_types import (
    DigitReceived as DigitReceived,
)
from ccpbx.pbx.call_types import (
    LegLeft as LegLeft,
)
from ccpbx.pbx.call_types import (
    LegState as LegState,
)
from ccpbx.pbx.call_types import (
    Party as Party,
)
from ccpbx.pbx.call_types import (
    SipPort as SipPort,
)
from ccpbx.pbx.call_types import (
    TransferRequested as TransferRequested,
)
from ccpbx.pbx.cdr import CallRecord, Disposition, HangupSide, LegRecord
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.sdes import new_master_key
from ccpbx.pbx.sdp import (
    Direction,
    LocalMedia,
    NegotiatedAudio,
    SdpError,
    SdpSession,
    SessionDescription,
    SrtpUse,
)
from ccpbx.pbx.session_timer import (
    DEFAULT_SESSION_EXPIRES_S,
    MIN_SE_S,
    SUPPORTED,
    SessionTimers,
    session_expires,
)
from ccpbx.pbx.sip.auth import choose_challenge, client_authorization
from ccpbx.pbx.sip.dialog import Dialog, DialogError, DialogId
from ccpbx.pbx.sip.errors import SipLocalError, reason_text
from ccpbx.pbx.sip.headers import AuthParams
from ccpbx.pbx.sip.message import Request, Response, new_tag, random_hex
from ccpbx.pbx.sip.transaction import LINGER_GRAIN_MS, T1_MS, ClientKey, Destination, ServerKey, on_grain
from ccpbx.pbx.sip.uri import NameAddr, SipUri
from ccpbx.pbx.transfer import Transfers

log = get_logger("ccpbx.calls")

SDP = "application/sdp"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, REFER, NOTIFY, INFO, PRACK"
SUPPORTED_100REL = f"{SUPPORTED}, 100rel"  # our responses, and INVITEs of targets that use RFC 3262
PRACK_WAIT_MS = 64 * T1_MS  # RFC 3262 §3: how long a reliable 1xx may wait for its PRACK
RSEQ_MAX = 2 ** 31 - 1  # RFC 3262 §3: the first RSeq is chosen in 1..2**31-1
MAX_FORWARDS = 70
ACK_WAIT_MS = 32_000  # also how long a closed leg's dialog and client-transaction indexes stay (late retransmissions)
MAX_CALLS = 5_000  # calls at once (the media engine's ports give out earlier); a new INVITE past it gets 503
DIGIT_QUEUE_MAX = 64  # key presses kept per leg for an application that has not read them yet
DUPLICATE_DIGIT_MS = 300  # the same key reported by a second path (INFO and RFC 4733) within this is one press
DEFAULT_RTP_TIMEOUT_S = 30
RTP_TIMEOUT_NEVER_MS = 10 ** 12  # [rtp] timeout = 0: the engine never reports silence


# ---- a call's events ----------------------------------------------------------------------------------------

class CallEvents:
    """A call's events in order, for the routing task that waits on them: ``asyncio.Queue``'s ``put_nowait``,
    ``get``, ``get_nowait``, ``empty`` and ``qsize`` without its three deques and Event (~3 KB, which every call
    held until ACK_WAIT_MS after its end)."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[CallEvent] = []
        self._waiters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, event: CallEvent) -> None:
        self._items.append(event)
        self._wake_one()

    async def get(self) -> CallEvent:
        while not self._items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if waiter.done() and not waiter.cancelled() and self._items:
                    self._wake_one()  # woken, then cancelled: the event goes to the next waiter
                raise
        return self._items.pop(0)

    def get_nowait(self) -> CallEvent:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


# ---- legs -------------------------------------------------------------------------------------------------

class Leg:
    """One side of a call: a SIP dialog (RFC 3261 §12) plus its media channel in the engine."""

    # Slots, not a dict: a leg has some 60 attributes, past what CPython's shared-key instance dicts hold, so each
    # leg's dict was ~1.5 KB, kept with the ended leg for ACK_WAIT_MS (32 s of calls). (``__weakref__``: tests
    # check with a weak reference that an ended leg is freed.)
    __slots__ = ("__weakref__", "_call", "_closed", "_digits", "_gone", "_gone_future", "_held_by_remote", "_pracked",
                 "_released_call", "_srtp_key", "_state", "ack", "acked", "answer_pracked", "answered", "answered_at",
                 "audio", "cancel_pending", "challenged", "channel", "client_key", "client_keys", "codecs",
                 "credentials", "destination", "device", "dialog", "direction", "dtmf", "early_media", "ended_at",
                 "final_status", "forgotten", "id", "inbound", "invite", "invite_headers", "last_digit", "local_answer",
                 "local_offer", "local_tag", "manager", "max_forwards", "next_rseq", "peer", "peer_allows_update",
                 "pending", "provisional", "provisionals", "reinvite_out", "reliable_provisional", "reliable_queue",
                 "remote_offer", "remote_rseq", "responded", "role", "rtp_port", "sdp", "server_key", "session_expires",
                 "sips", "srtp", "srtp_active", "started", "timer", "trunk", "unacked", "we_refresh")

    def __init__(self, manager: CallManager, call: Call, *, inbound: bool, role: str, peer: str,
                 destination: Destination) -> None:
        self.id = f"{random.getrandbits(48):012x}"  # names the leg in logs and the live view; no system call
        self.manager = manager
        self._call: Call | None = call
        self._released_call: weakref.ref[Call] | None = None  # once released: the call, while someone holds it
        self.inbound = inbound
        self.role = role
        self.peer = peer
        self.destination = destination
        self.sips = False  # a SIPS URI began this leg's dialog (RFC 5630): our Contact is sips: too
        self.srtp: SrtpUse | None = None  # SRTP on this leg; None: the server's policy for its transport
        self._srtp_key: bytes | None = None  # our SDES master key and salt, made when first offered or answered
        self.srtp_active = False  # its media channel is protected now (SRTP negotiated)
        self.device: str | None = None  # the extension whose phone this leg reaches (device state, BLF)
        self.trunk: str | None = None  # the [[trunk]] this leg talks to (inbound from it, or out through it)
        self.codecs: tuple[Codec, ...] | None = None  # offered on this leg instead of the server's (a trunk's)
        self.dtmf = "rfc4733"  # how keys are sent to this leg: rfc4733, info or inband (a trunk profile's)
        self.early_media = True  # its early media reaches the caller (a trunk profile may turn it off)
        self.credentials: tuple[str, str] | None = None  # answer one 401/407 of the far end with these
        self.challenged = False  # a 401/407 was answered already: a second one fails the leg
        self.invite_headers: list[tuple[str, str]] = []  # the extra headers of our INVITE (resent with credentials)
        self.max_forwards = MAX_FORWARDS
        self._state = LegState.PROCEEDING if inbound else LegState.CALLING
        self._held_by_remote = False
        self.dialog: Dialog | None = None
        self.invite: Request | None = None
        self.server_key: ServerKey | None = None
        self.client_key: ClientKey | None = None
        self.local_tag = new_tag()
        self.channel: int | None = None
        self.rtp_port = 0
        self.sdp = SdpSession()
        self.remote_offer: SessionDescription | None = None  # inbound: the INVITE's offer
        self.local_offer: SessionDescription | None = None  # our offer awaiting an answer
        self.local_answer: SessionDescription | None = None
        self.audio: NegotiatedAudio | None = None
        self.direction = Direction.SENDRECV  # what we want on this leg (SENDONLY while we hold it)
        self.final_status: int | None = None
        self.started = time.time()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.provisional = False  # any 1xx received (outbound), so CANCEL may be sent (§9.1)
        self.responded = False  # any response at all to our INVITE (even 100): the far end is alive
        self.cancel_pending = False
        self.answered: asyncio.Future[Leg] = asyncio.get_running_loop().create_future()
        self.ack: Request | None = None  # our ACK of the 2xx (resent on 2xx retransmissions)
        self.acked: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.pending: dict[ClientKey, Request] = {}
        self.client_keys: set[ClientKey] = set()  # every key of ours in the manager's by_client (for _forget)
        self.reinvite_out: ClientKey | None = None
        self.session_expires: int | None = None
        self.we_refresh = False
        self.timer: asyncio.TimerHandle | None = None
        self.peer_allows_update = False
        self._gone: asyncio.Event | None = None  # made on use (an Event is ~0.8 KB): see gone
        self._closed = False  # close_leg has run: gone is set
        self._gone_future: asyncio.Future[None] | None = None  # made on use: see gone_future()
        self.provisionals: set[tuple[int, bool]] = set()  # (status, with SDP) 1xx already sent on this leg
        # RFC 3262. Inbound: "required" when the INVITE said Require: 100rel (every 18x then goes reliably),
        # "supported"/"off" otherwise; outbound: what our INVITE said (DialTarget.reliable_provisional)
        self.reliable_provisional = "off"
        self.next_rseq = random.getrandbits(31) % RSEQ_MAX + 1  # the RSeq of our next reliable 1xx (§3)
        self.unacked: tuple[int, int, bool] | None = None  # (RSeq, status, with SDP) of ours awaiting PRACK
        self.reliable_queue: list[tuple[int, bool]] = []  # (status, with SDP) 18x waiting their turn (§3)
        self._pracked: asyncio.Event | None = None  # made on use (RFC 3262 calls only): see ``pracked``
        self.answer_pracked = False  # our SDP answer went in a PRACKed 1xx: the 2xx carries none (§5)
        self.remote_rseq: dict[str, int] = {}  # outbound: the RSeq last PRACKed, per To tag (§4)
        self._digits: asyncio.Queue[str] | None = None  # key presses, every path merged, each once (made on use)
        self.forgotten = False  # closed, and out of the indexes that match late retransmissions
        self.last_digit: tuple[str, str, float] | None = None  # (digit, path, monotonic s) of the last press

    def __repr__(self) -> str:
        return f"<Leg {self.id} {self.role} {self.peer} {self.state.value}>"

    @property
    def call(self) -> Call:
        """The call this leg is part of (a transfer or a move may change it)."""
        call = self._call
        if call is None:
            call = self._released_call() if self._released_call is not None else None
            if call is None:
                raise RuntimeError(f"leg {self.id}: its call finished and was released; hold the Call, not the Leg")
        return call

    @call.setter
    def call(self, call: Call) -> None:
        self._call = call
        self._released_call = None

    def let_call_go(self) -> None:
        """The last link of the cycle between a released call and its first leg (the call keeps ``a``): the leg
        refers to its call weakly from now on, so the pair is freed by reference counting."""
        if self._call is not None:
            self._released_call = weakref.ref(self._call)
            self._call = None

    def release(self) -> None:
        """Its call has been released (:meth:`Call.release`): the dialog state no late message can reach any more
        goes (the negotiation went when the leg ended), keeping what describes the leg (its INVITE, times, status,
        peer)."""
        # its futures hold the leg itself (the answer's result) or an exception whose traceback holds the frames
        # that awaited them: both are cycles back to the leg, so they are swapped for settled ones holding nothing
        loop = self.answered.get_loop()
        answered: asyncio.Future[Leg] = loop.create_future()
        answered.set_exception(CallError("leg released", self.final_status or 487))
        answered.exception()  # retrieved: nobody waits on a released leg
        acked: asyncio.Future[bool] = loop.create_future()
        acked.set_result(self.acked.done() and not self.acked.cancelled() and self.acked.exception() is None
                         and self.acked.result())
        self.answered, self.acked = answered, acked
        self.dialog = None
        self.ack = None
        self.pending.clear()
        self.invite_headers = []  # its SDP went when it ended (close_leg: drop_negotiation)

    def drop_negotiation(self) -> None:
        """The leg has ended: the SDP it negotiated and its provisional responses' bookkeeping go at once (no
        late message renegotiates an ended leg). Dropped while still young, these objects are freed by reference
        counting instead of waiting ACK_WAIT_MS in the old generation that the garbage collector walks."""
        self.sdp.end()
        self.remote_offer = self.local_offer = self.local_answer = None
        self.provisionals.clear()
        self.reliable_queue.clear()

    # Made on first use: most legs never see a key press or SRTP, and a leg is built for every call.
    @property
    def srtp_key(self) -> bytes:
        """Our SDES master key and salt, the same for the leg's life."""
        if self._srtp_key is None:
            self._srtp_key = new_master_key()
        return self._srtp_key

    @property
    def pracked(self) -> asyncio.Event:
        """Set whenever no reliable 1xx of ours awaits its PRACK (RFC 3262)."""
        if self._pracked is None:
            self._pracked = asyncio.Event()
            self._pracked.set()
        return self._pracked

    @property
    def gone(self) -> asyncio.Event:
        """Set once the leg has ended (made on first use: most legs are never waited on this way)."""
        event = self._gone
        if event is None:
            event = self._gone = asyncio.Event()
            if self._closed:
                event.set()
        return event

    def gone_future(self) -> asyncio.Future[None]:
        """Done once the leg has ended, like ``gone``: what a wait on several things at once watches, with no
        task for ``gone.wait()``. Shared by every waiter: never cancel it."""
        fut = self._gone_future
        if fut is None:
            fut = self._gone_future = self.answered.get_loop().create_future()
            if self._closed:
                fut.set_result(None)
        return fut

    @property
    def digits(self) -> asyncio.Queue[str]:
        if self._digits is None:
            self._digits = asyncio.Queue()
        return self._digits

    @property
    def state(self) -> LegState:
        return self._state

    @state.setter
    def state(self, value: LegState) -> None:
        if value is not self._state:
            self._state = value
            self.manager.leg_changed(self)

    @property
    def held_by_remote(self) -> bool:
        """The peer put this leg on hold (its SDP said sendonly/inactive or c=0.0.0.0)."""
        return self._held_by_remote

    @held_by_remote.setter
    def held_by_remote(self, value: bool) -> None:
        if value != self._held_by_remote:
            self._held_by_remote = value
            self.manager.leg_changed(self)

    @property
    def sip_call_id(self) -> str:
        return self.invite.call_id if self.invite is not None else ""

    @property
    def up(self) -> bool:
        return self._state in (LegState.ANSWERED, LegState.CONFIRMED)

    @property
    def ended(self) -> bool:
        return self._state is LegState.ENDED

    def record(self) -> LegRecord:
        return LegRecord(role=self.role, sip_call_id=self.sip_call_id, peer=self.peer, start=self.started,
                         answer=self.answered_at, end=self.ended_at, status=self.final_status)


# ---- calls ------------------------------------------------------------------------------------------------

async def _first_done(futures: Sequence[asyncio.Future[Any]], timeout: float) -> None:
    """Return once any of ``futures`` is done or ``timeout`` seconds have passed: ``asyncio.wait`` with
    FIRST_COMPLETED for futures alone, without its sets, its checks of each awaitable and its task wrapping
    (about fifty Python calls less for a call that rings). The futures are not cancelled."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for fut in futures:
        fut.add_done_callback(wake)
    timer = loop.call_later(timeout, wake, None)
    try:
        await waiter
    finally:
        timer.cancel()
        for fut in futures:
            fut.remove_done_callback(wake)


class Capture:
    """A running :meth:`Call.capture`; ``stop()`` closes its file (idempotent)."""

    def __init__(self, engine: AnyEngine, rid: int, path: Path) -> None:
        self.engine = engine
        self.rid: int | None = rid
        self.path = path

    def stop(self) -> None:
        if self.rid is not None:
            rid, self.rid = self.rid, None
            with contextlib.suppress(MediaError):
                self.engine.stop_record(rid)


class Call:
    """A call as routing sees it: the caller's leg ``a`` and whatever ``dial`` connects it to."""

    # Slots, not a dict (~1.6 KB a call, kept until ACK_WAIT_MS after its end); ``__weakref__``: a released call's
    # first leg refers to it weakly
    __slots__ = ("__weakref__", "_recorder", "a", "answered_at", "b", "bridge_id", "caller", "data", "destination",
                 "dialled", "disposition", "diversion", "end_reason", "ended_at", "ends_with", "events", "finished",
                 "hangup_side", "hangup_status", "id", "legs", "manager", "moh", "originated", "parent_id", "pickup",
                 "queue_request", "recording", "released", "started", "transfers", "trunk")

    @property
    def sip_call_id(self) -> str:
        """The Call-ID of the caller's leg ("" while there is none: an originated call whose leg never came up)."""
        a: Leg | None = self.a
        return a.sip_call_id if a is not None else ""

    def __init__(self, manager: CallManager, a: Leg | None, caller: Party, dialled: str,
                 parent: Call | None = None) -> None:
        self.id = random_hex(16)  # 128 random bits, as uuid4().hex was, without a system call per call
        self.manager = manager
        self.a: Leg = a  # type: ignore[assignment]  # set right after construction for a new inbound call
        self.b: Leg | None = None
        self.caller = caller
        self.dialled = dialled
        self.destination = ""
        self.legs: list[Leg] = [] if a is None else [a]
        self.bridge_id: int | None = None
        self.events: CallEvents = CallEvents()
        self.started = time.time()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.disposition: Disposition | None = None
        self.hangup_side: HangupSide | None = None
        self.hangup_status: int | None = None
        self.transfers: list[str] = []
        self.parent_id = parent.id if parent is not None else None
        self.finished = False
        self.moh: dict[int, int] = {}  # channel -> player id of music on hold it hears
        # attached data (IVR input, queue, account number...): follows transfers, lands in the CDR as JSON
        self.data: dict[str, object] = {}
        # what an IVR's transfer(..., priority=, skills=) asks of the queue the call goes to next
        self.queue_request: QueueRequest | None = None
        # call forwarding: (RFC 5806 reason, the extension that forwarded), for voicemail's greeting
        self.diversion: tuple[str, str] | None = None
        self.end_reason: str | None = None  # why the system ended it ("rtp_timeout", "session_expired"...)
        self.recording: str | None = None  # the file of the call's recording (named in the CDR)
        self.trunk: str | None = None  # the [[trunk]] the call came in from (None: an internal caller)
        self.originated = False  # placed by an application (originate), not by an INVITE to us
        self.ends_with: set[Leg] | None = None  # legs whose hang-up ends the call; None: ``a`` or ``b``
        self.released = False  # finished and its legs out of every index: see release()
        self._recorder: int | None = None
        # while ``dial`` rings: resolved with a leg of another phone that picked the call up (see ``picked_up``)
        self.pickup: asyncio.Future[Leg] | None = None

    # -- what routing calls ---------------------------------------------------------------------------------
    async def ring(self) -> None:
        """Tell the caller it is ringing (180, §13.3.1.1)."""
        self._check_alive()
        self.manager.send_provisional(self.a, 180)

    async def early_media(self, source: AudioSource) -> None:
        """183 Session Progress with our answer, then play ``source`` to the caller (tones, announcements)."""
        self._check_alive()
        a = self.a
        if a.remote_offer is None:
            self.manager.send_provisional(a, 180)  # late offer: no SDP may go in an unreliable 1xx
            return
        self.manager.send_provisional(a, 183, sdp=True)
        assert a.channel is not None
        self.manager.start_play(a, source)

    async def answer(self) -> None:
        """Answer the caller (200 with our SDP) and wait for the ACK; a lost ACK ends the call (§13.3.1.4)."""
        self._check_alive()
        a = self.a
        if a.up:
            return
        await self.manager.wait_for_prack(a)
        self.manager.answer_inbound(a)
        self.answered_at = self.answered_at or time.time()
        ok = await a.acked
        if not ok:
            raise CallHangup("the caller never acknowledged the answer")

    async def reject(self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Refuse the call with a final response; a caller already answered (a transferee, a call an
        application answered) is hung up instead, the status kept for the CDR."""
        a = self.a
        if a.ended:
            return
        if a.up:
            self.hangup_status = status
            self.manager.end_call(self, HangupSide.SYSTEM, status)
            return
        self.manager.reject_inbound(a, status, reason, headers)
        self.hangup_status = status
        self.hangup_side = HangupSide.SYSTEM
        self.disposition = _disposition_for(status)

    async def dial(self, targets: Sequence[DialTarget], timeout_ms: int, *, label: str = "",
                   headers: Sequence[tuple[str, str]] = (), response_timeout_ms: int | None = None) -> DialOutcome:
        """Ring ``targets`` in parallel for ``timeout_ms``; the first to answer is bridged with the caller.

        The caller hears 180 while targets ring (or the callee's own early media on 183 with SDP). Losing
        legs get CANCEL (a 2xx racing the CANCEL gets ACK and BYE). Raises :class:`CallHangup` when the
        caller cancels or hangs up meanwhile. ``response_timeout_ms``: a target that has not answered at all
        (not even 100 Trying) by then is given up with 408 — a dead trunk fails over in seconds, not after
        the 32 s of Timer B.
        """
        self._check_alive()
        if label:
            self.destination = label
        winner, statuses = await self._ring(targets, timeout_ms, headers, watch=self.a,
                                            response_timeout_ms=response_timeout_ms)
        if winner is None:
            return DialOutcome(None, statuses)
        await self._connect(winner)
        return DialOutcome(winner, statuses)

    async def _ring(self, targets: Sequence[DialTarget], timeout_ms: int, headers: Sequence[tuple[str, str]],
                    *, watch: Leg | None, response_timeout_ms: int | None = None
                    ) -> tuple[Leg | None, tuple[int, ...]]:
        """INVITE every target; the first 2xx wins, the others are cancelled. ``watch`` leaving raises
        :class:`CallHangup`. Returns the winning leg (or None) and the final statuses of the others."""
        legs: list[Leg] = []
        statuses: list[int] = []
        for target in targets:
            try:
                legs.append(await self.manager.originate_leg(self, target, headers))
            except CallError as exc:
                statuses.append(exc.status_hint)
        if not legs:
            return None, tuple(statuses)
        pending: set[asyncio.Future[Any]] = {leg.answered for leg in legs}
        winner: Leg | None = None
        loop = asyncio.get_running_loop()
        gone = watch.gone_future() if watch is not None else loop.create_future()  # the latter: never done
        picked = self.pickup = loop.create_future()
        deadline = loop.time() + timeout_ms / 1000
        silent_by = loop.time() + response_timeout_ms / 1000 if response_timeout_ms is not None else None
        try:
            while pending and winner is None:
                now = loop.time()
                remaining = deadline - now
                if remaining <= 0:
                    break
                if silent_by is not None:
                    if now >= silent_by:
                        silent_by = None
                        for leg in legs:
                            if not leg.responded and not leg.ended:
                                self.manager.give_up_silent(leg)
                        pending = {fut for fut in pending if not fut.done()}
                        if not pending:
                            break
                        continue
                    remaining = min(remaining, silent_by - now)
                await _first_done((*pending, gone, picked), remaining)
                if gone.done():
                    raise CallHangup("caller left while ringing")
                if picked.done():
                    winner = picked.result()
                    break
                done = [fut for fut in pending if fut.done()]
                pending.difference_update(done)
                for fut in done:
                    if fut.exception() is None:
                        result = fut.result()
                        if isinstance(result, Leg):
                            winner = result
                            break
        finally:
            if watch is None:
                gone.cancel()  # ours alone (a watched leg's is shared)
            self._stop_pickup(picked)
            for leg in legs:
                if leg is winner or leg.ended:
                    continue
                if leg.up:  # answered in the same instant as the winner: it lost, hang it up
                    self.manager.send_bye(leg)
                    self.manager.close_leg(leg)
                else:
                    self.manager.cancel_outbound(leg, 487 if winner is None else 200)
        for leg in legs:
            if leg is not winner and leg.final_status is not None:
                statuses.append(leg.final_status)
            elif leg is not winner:
                statuses.append(408)
        return winner, tuple(statuses)

    def record(self, path: str | os.PathLike[str] | None = None, *, stereo: bool = False,
               leg: Leg | None = None) -> Path:
        """Start recording the call, as ``leg`` (the caller, ``a``, by default) lives it, to a WAV file (default
        ``<data dir>/recordings/YYYY/MM/DD/<call id>.wav``); the file is named in the CDR. Returns its path.

        Mono mixes what the party says with what it hears — the other parties, prompts, music, all of it;
        ``stereo`` puts what it says on the left and what it hears on the right.
        """
        leg = leg or self.a
        if leg is None or leg.ended or leg.channel is None:
            raise CallHangup("nobody left to record")
        self.stop_recording()
        target = Path(path) if path is not None else self.manager.recording_path(self)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._recorder = self.manager.engine.record([leg.channel], target, stereo=stereo, heard=[leg.channel])
        self.recording = str(target)
        self.manager.cdr_update(self)
        log.info("call.recording.started", call=self.id, path=str(target), stereo=stereo)
        return target

    def stop_recording(self) -> None:
        """Stop the call's recording (the file stays complete and playable)."""
        if self._recorder is not None:
            rid, self._recorder = self._recorder, None
            with contextlib.suppress(MediaError):
                self.manager.engine.stop_record(rid)

    def capture(self, path: str | os.PathLike[str], *, leg: Leg | None = None,
                monitor: Callable[[npt.NDArray[np.int16]], None] | None = None) -> Capture:
        """Record only what ``leg`` (the caller by default) says into ``path`` (8 kHz mono WAV), beside any call
        recording and not named in the CDR: a voicemail message, an answer to an IVR's question.

        ``monitor`` sees each 20 ms frame as it is written (silence detection). Stop with ``Capture.stop()``;
        the file is complete up to then, also when the party hangs up first.
        """
        leg = leg or self.a
        if leg is None or leg.ended or leg.channel is None:
            raise CallHangup("nobody left to record")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        rid = self.manager.engine.record([leg.channel], target, monitor=monitor)
        return Capture(self.manager.engine, rid, target)

    # -- legs as building blocks: what queues, conferences and the dialer compose calls from ----------------------
    async def call_out(self, destination: str, *, timeout_s: float = 30.0,
                       headers: Sequence[tuple[str, str]] = ()) -> Leg:
        """Ring ``destination`` (``extension:X``, ``group:Y`` or a number) as a new leg of this call and return
        it answered, NOT bridged: the caller keeps hearing what it hears until :meth:`bridge` (an agent offer:
        the agent answers, hears a whisper, then is bridged). Raises :class:`CallError` with the final status
        when nobody answers, :class:`CallHangup` when the caller leaves meanwhile."""
        self._check_alive()
        resolver = self.manager.target_resolver
        if resolver is None:
            raise CallError("no router to resolve destinations with", 503)
        targets = await resolver(destination, self.caller.number)
        winner, statuses = await self._ring(targets, int(timeout_s * 1000), headers, watch=self.a)
        if winner is None:
            status = DialOutcome(None, statuses).best_status
            raise CallError(f"{destination} did not answer ({status})", status)
        return winner

    def adopt(self, leg: Leg) -> None:
        """Move ``leg`` (answered, from another call: an originated agent call, a parked party) into this call.

        The leg's old call loses it; if nothing live is left there it ends, its record naming this one.
        """
        old = leg.call
        if old is self:
            return
        if leg.ended or leg.channel is None:
            raise CallHangup("the leg to adopt has gone")
        self.manager.move_leg(leg, self)
        if self.b is None and leg is not self.a:
            self.b = leg
        old.transfers.append(self.id)
        self.transfers.append(old.id)
        if not any(not x.ended for x in old.legs):
            old.hangup_side = old.hangup_side or HangupSide.SYSTEM
            old.end_reason = old.end_reason or "moved"
            self.manager.end_call(old, HangupSide.SYSTEM, None)
        self.manager.cdr_update(self)
        log.info("call.leg.moved", leg=leg.id, to=self.id, from_call=old.id)

    def bridge(self, x: Leg, y: Leg) -> None:
        """Let ``x`` and ``y`` (legs of this call, answered) hear each other; whatever either was hearing (a
        player, another bridge) stops. ``y`` becomes the call's ``b`` when ``x`` is its ``a``."""
        for leg in (x, y):
            if leg.call is not self:
                raise CallError(f"leg {leg.id} belongs to another call: adopt it first", 500)
            if leg.ended or leg.channel is None:
                raise CallHangup("a leg to bridge has gone")
        engine = self.manager.engine
        for leg in (x, y):
            self.manager.unbridge_leg(self, leg)
            self.manager.stop_play(leg)
        assert x.channel is not None and y.channel is not None
        self.bridge_id = engine.bridge(x.channel, y.channel)
        if x is self.a:
            self.b = y
        elif y is self.a:
            self.b = x
        if self.answered_at is None and x.up and y.up:
            self.answered_at = time.time()
        self.manager.cdr_update(self)
        self.manager.apply_hold(self)

    def unbridge(self) -> None:
        """Take the call's bridge apart: its parties stay on the call and hear silence (or what they are played)."""
        if self.bridge_id is not None:
            with contextlib.suppress(MediaError):
                self.manager.engine.destroy(self.bridge_id)
            self.bridge_id = None

    def park(self, leg: Leg, source: AudioSource | None = None) -> None:
        """Take ``leg`` out of any bridge and let it hear ``source`` (music on hold by default) until moved on."""
        if leg.ended or leg.channel is None:
            raise CallHangup("the leg to park has gone")
        self.manager.unbridge_leg(self, leg)
        self.manager.start_play(leg, source or MusicOnHold(self.manager.moh_pcm))

    def conference(self, legs: Sequence[Leg]) -> int:
        """Join ``legs`` (of this call) in a conference: each hears all the others (mix-minus). Returns its id."""
        channels = []
        for leg in legs:
            if leg.call is not self or leg.ended or leg.channel is None:
                raise CallError(f"leg {leg.id} cannot join: not a live leg of this call", 500)
            self.manager.unbridge_leg(self, leg)
            self.manager.stop_play(leg)
            channels.append(leg.channel)
        self.bridge_id = self.manager.engine.conference(channels)
        return self.bridge_id

    def end_when(self, *legs: Leg) -> None:
        """Which hang-ups end the call: any of ``legs`` (no argument: today's rule, ``a`` or ``b``). Another
        leg hanging up just leaves (a :class:`LegLeft` event)."""
        self.ends_with = set(legs) if legs else None

    def picked_up(self, leg: Leg, label: str) -> bool:
        """Call pickup: ``leg`` (an answered inbound leg of another call, the picking phone) wins the ``dial``
        ringing now, which bridges it with the caller (answered if need be) and CANCELs the ringing legs with
        ``Reason: SIP;cause=200`` ("Call completed elsewhere"). ``label`` becomes the CDR destination.

        The leg moves into this call and is its ``b`` at once, so a 200 from a ringing phone racing the pickup
        gets ACK and BYE. False (nothing changed) when no dial is ringing any more.
        """
        fut = self.pickup
        if fut is None or fut.done() or self.finished or self.b is not None or self.a.ended or leg.ended:
            return False
        self.manager.move_leg(leg, self)
        self.b = leg
        self.destination = label
        fut.set_result(leg)
        return True

    def _stop_pickup(self, picked: asyncio.Future[Leg]) -> None:
        self.pickup = None
        if not picked.done():
            picked.cancel()

    def drop_others(self) -> None:
        """Hang up every leg but the caller's (``a``): it is about to go somewhere else."""
        for leg in list(self.legs):
            if leg is self.a or leg.ended:
                continue
            if leg.up:
                self.manager.send_bye(leg)
            elif not leg.inbound:
                self.manager.cancel_outbound(leg, 487)
            self.manager.close_leg(leg)
        self.legs = [self.a]
        self.b = None
        if self.bridge_id is not None:
            with contextlib.suppress(Exception):
                self.manager.engine.destroy(self.bridge_id)
            self.bridge_id = None

    async def transfer(self, destination: str) -> bool:
        """Send the caller to ``destination``: ``"queue:support"``, ``"ivr:flows:main"``, ``"extension:1002"``,
        or a number the dial plan routes. Anyone bridged with the caller is hung up. Returns True when the
        caller ended up connected to someone, False when the destination served or refused it."""
        self._check_alive()
        handler = self.manager.transfer_handler
        if handler is None:
            raise CallError("no router to transfer with", 503)
        return await handler(self, destination)

    def decline_transfer(self, request: TransferRequested, status: int = 603, reason: str = "Declined") -> None:
        """Refuse a REFER the application will not carry out (a conference member's phone tried to transfer):
        the transferor gets the final NOTIFY with ``status`` (RFC 3515 §2.4.5) and the call goes on."""
        self.manager.transfers.transfer_progress(request.transferor, status, reason, final=True)

    async def wait_event(self) -> CallEvent:
        """The next thing routing must react to: the end of the call, a transfer request, a digit."""
        return await self.events.get()

    def hangup(self, side: HangupSide = HangupSide.SYSTEM, status: int | None = None) -> None:
        """End every leg of the call (BYE for those answered, CANCEL or a final response for the others)."""
        self.manager.end_call(self, side, status)

    def release(self) -> None:
        """The call has finished and its legs have left every index (ACK_WAIT_MS after their end): drop what
        ties the legs and the call together, so the whole call is freed at once by reference counting. ``a``
        stays (with its request and record), so an application still holding the call reads what it did; ``a``
        refers back to the call weakly from now on (:meth:`Leg.let_call_go`).

        Left as a cycle, each call (about 30 objects) waited in the oldest generation for a full collection of
        the garbage collector, then considered once every four million allocations: at 300 calls/s the server
        grew to 1 GB before one came, and it then walked 1.5 million objects for 4.4 s with the event loop
        stopped. Freed here instead, the call's frees count against the young generation's allocation count,
        so young collections are also paced by time (:mod:`ccpbx.pbx.gcpace`)."""
        if self.released:
            return
        self.released = True
        legs = [leg for leg in self.legs if leg is not self.a]
        self.legs[:] = [self.a]
        self.b = None
        self.ends_with = None
        while not self.events.empty():
            self.events.get_nowait()
        for leg in (self.a, *legs):
            leg.release()
        self.a.let_call_go()

    async def play(self, source: AudioSource, *, leg: Leg | None = None, interruptible: bool = False) -> str | None:
        """Play ``source`` (a prompt, a tone) to ``leg`` (the caller by default) and return when it has played.

        With ``interruptible`` a key press stops it early and is returned (it stays consumed); otherwise None.
        Raises :class:`CallHangup` when the leg goes away meanwhile. A source that never ends (music) only
        returns on a digit or a hang-up.
        """
        leg = leg or self.a
        self._check_leg(leg)
        done = self.manager.start_play(leg, source)
        waiters: set[asyncio.Future[Any]] = {done, asyncio.ensure_future(leg.gone.wait())}
        digit_wait: asyncio.Future[str] | None = None
        if interruptible:
            digit_wait = asyncio.ensure_future(leg.digits.get())
            waiters.add(digit_wait)
        try:
            finished, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                if w is not done and not w.done():
                    w.cancel()
        if digit_wait is not None and digit_wait in finished:
            self.manager.stop_play(leg)
            return digit_wait.result()
        if done not in finished or leg.ended:
            raise CallHangup("the party left during the prompt")
        return None

    def stop_play(self, leg: Leg | None = None) -> None:
        """Stop what ``leg`` (the caller by default) is hearing from a player."""
        self.manager.stop_play(leg or self.a)

    async def next_digit(self, leg: Leg | None = None, timeout: float | None = None) -> str | None:
        """The next key pressed on ``leg`` (the caller by default): RFC 4733, SIP INFO or in-band tones alike.

        None when ``timeout`` seconds pass first; :class:`CallHangup` when the leg goes away.
        """
        leg = leg or self.a
        if not leg.digits.empty():
            return leg.digits.get_nowait()
        self._check_leg(leg)
        getter = asyncio.ensure_future(leg.digits.get())
        gone = asyncio.ensure_future(leg.gone.wait())
        try:
            finished, _ = await asyncio.wait({getter, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not getter.done():
                getter.cancel()
        if getter in finished:
            return getter.result()
        if gone in finished:
            raise CallHangup("the party left while we waited for a digit")
        return None

    def flush_digits(self, leg: Leg | None = None) -> None:
        """Forget key presses not read yet (type-ahead before a new menu)."""
        queue = (leg or self.a).digits
        while not queue.empty():
            queue.get_nowait()

    def _check_leg(self, leg: Leg) -> None:
        if leg.ended or leg.channel is None:
            raise CallHangup("the party has gone")

    # -- internals --------------------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.a.ended or self.finished:
            raise CallHangup("the caller has gone")

    async def _connect(self, b: Leg) -> None:
        """Answer the caller if needed and bridge the two legs' media."""
        self.b = b
        engine = self.manager.engine
        a = self.a
        if b.ended:
            # the callee's BYE overtook its own 200 on the way to this bridge: the caller is answered as the
            # callee was (a BYE only after the ACK, §15) and the call ends from the callee's side
            if not a.up:
                await self.answer()
            self.answered_at = self.answered_at or time.time()
            self.manager.end_call(self, HangupSide.CALLEE, None)
            return
        assert a.channel is not None and b.channel is not None
        engine.stop_play(a.channel)
        if self.bridge_id is not None:
            with contextlib.suppress(Exception):
                engine.destroy(self.bridge_id)
        logged = log.is_enabled_for(logging.INFO)
        if logged and isinstance(engine, RemoteEngine):
            # the worker decides relaying as it carries the bridge out, and says what it decided
            self.bridge_id = engine.bridge(a.channel, b.channel, decided=functools.partial(self._log_bridged, a, b))
        else:
            self.bridge_id = engine.bridge(a.channel, b.channel)
        if not a.up:
            await self.answer()  # may re-decide the caller's codec to match the callee's (a late answer)
        self.answered_at = self.answered_at or time.time()
        if logged and not isinstance(engine, RemoteEngine):
            self._log_bridged(a, b, engine.relaying(a.channel))
        self.manager.cdr_update(self)
        self.manager.apply_hold(self)

    def _log_bridged(self, a: Leg, b: Leg, relay: bool) -> None:
        """The bridge's line; from a media worker's report it may come after the call ended, and is dropped then
        (its relay is gone). It names the call itself: a worker's report is read outside the call's task."""
        if self.finished or a.ended or b.ended:
            return
        log.info("call.media.bridged", call=self.id, call_id=self.a.sip_call_id,
                 codec_a=a.audio.codec.name if a.audio is not None else None,
                 codec_b=b.audio.codec.name if b.audio is not None else None, relay=relay)


# ---- the manager --------------------------------------------------------------------------------------------

Router = Callable[[Call], Awaitable[None]]
# A call's record goes to the sink as its call id, the record or what builds it, and whether it is the final one.
# The records of a call in progress are built when written (the writer keeps only the newest state of each call
# of a batch, so under load most are never built: three builds a call became one or two); the final record is
# built as the call ends, so that it says what the call was then, whenever it is written.
CdrSink = Callable[[str, "CallRecord | Callable[[], CallRecord]", bool], None]


@dataclass(slots=True)
class CallsConfig:
    domain: str = "ccpbx"
    user_agent: str = "ccpbx"
    session_expires_s: int = DEFAULT_SESSION_EXPIRES_S
    min_se_s: int = MIN_SE_S
    codecs: tuple[Codec, ...] = (Codec.PCMU, Codec.PCMA)
    moh: npt.NDArray[np.int16] | None = None  # int16 8 kHz mono; a generated melody when None
    rtp_host: str | None = None  # the address written in SDP; None = the SIP address the peer reaches
    rtp_timeout_s: int = DEFAULT_RTP_TIMEOUT_S  # no RTP from an answered, unheld party this long ends the call
    recordings_dir: Path | None = None  # where Call.record puts files by default (None: ./recordings)
    srtp: str = "optional"  # [sip] srtp: off, optional (answer SRTP; offer it over TLS) or required (over TLS)


@dataclass(slots=True)
class CallStats:
    calls: int = 0
    active: int = 0
    answered: int = 0
    failed: int = 0
    refused_over_cap: int = 0  # INVITEs answered 503 because MAX_CALLS calls were up
    by_status: dict[int, int] = field(default_factory=dict)


class CallManager:
    """All calls and legs; see the module docstring."""

    def __init__(self, sip: SipPort, media: AnyMedia, router: Router, *, config: CallsConfig | None = None,
                 cdr: CdrSink | None = None) -> None:
        self.sip = sip
        self.media = media
        self.engine: AnyEngine = media.engine
        self.router = router
        self.config = config or CallsConfig()
        self.cdr = cdr
        self.stats = CallStats()
        self.max_calls = MAX_CALLS
        self.calls: dict[str, Call] = {}
        self.by_dialog: dict[DialogId, Leg] = {}
        self.by_invite: dict[ServerKey, Leg] = {}
        self.by_client: dict[ClientKey, Leg] = {}
        self.by_channel: dict[int, Leg] = {}
        self.outbound_call_ids: set[str] = set()
        # closed legs awaiting _forget: (loop time due, order, leg), one timer for the earliest
        self._closed_legs: list[tuple[float, int, Leg]] = []
        self._closed_seq = itertools.count()
        self._forget_timer: asyncio.TimerHandle | None = None
        self.awaiting_ack: dict[tuple[str, str], Leg] = {}  # (Call-ID, caller's From tag) of 2xx sent, not ACKed
        self.tasks: set[asyncio.Task[None]] = set()
        # what follows a call joined by an attended transfer (routing's loop: more transfers, the end)
        self.converse: Callable[[Call], Awaitable[None]] | None = None
        # Call.transfer's executor: routing through the destination registry (set by the composition root)
        self.transfer_handler: Callable[[Call, str], Awaitable[bool]] | None = None
        # destination string -> contacts to ring, for Call.call_out (routing's resolver)
        self.target_resolver: Callable[[str, str], Awaitable[list[DialTarget]]] | None = None
        self._moh_pcm = self.config.moh if self.config.moh is not None else default_music_on_hold()
        self._leg_listeners: list[Callable[[Leg], None]] = []
        self.transfers = Transfers(self)  # REFER, Replaces, blind and attended transfers (RFC 3515, RFC 3891)
        self.session_timers = SessionTimers(self)  # RFC 4028
        self._playing: dict[int, tuple[int, asyncio.Future[None]]] = {}  # channel -> (player, finished)
        rtp_timeout_s = self.config.rtp_timeout_s
        self.engine.rtp_timeout_ms = rtp_timeout_s * 1000 if rtp_timeout_s > 0 else RTP_TIMEOUT_NEVER_MS

    # ==== observers ===============================================================================================
    def add_leg_listener(self, listener: Callable[[Leg], None]) -> None:
        """Call ``listener(leg)`` whenever a leg appears, changes state, is held or resumed, or ends.

        Device state (busy lamps, busy-aware groups, agent availability) is computed from these; a listener
        must not raise and must not drive calls from inside the callback (schedule work instead).
        """
        self._leg_listeners.append(listener)

    def leg_changed(self, leg: Leg) -> None:
        for listener in self._leg_listeners:
            try:
                listener(leg)
            except Exception:  # an observer's bug must not break call control
                log.exception("call.listener.failed")

    @property
    def moh_pcm(self) -> npt.NDArray[np.int16]:
        return self._moh_pcm

    def unbridge_leg(self, call: Call, leg: Leg) -> None:
        """Take ``leg`` out of ``call``'s bridge/conference (the bridge goes when fewer than two remain)."""
        gid = call.bridge_id
        if gid is None or leg.channel is None:
            return
        try:
            members = self.engine.members(gid)
        except MediaError:
            call.bridge_id = None
            return
        if leg.channel not in members:
            return
        if len(members) <= 2:
            self.engine.destroy(gid)
            call.bridge_id = None
        else:
            self.engine.remove_from_conference(gid, leg.channel)

    def new_call(self, a: Leg | None, caller: Party, dialled: str, *, parent: Call | None = None) -> Call:
        """A call object of this manager (not yet registered in ``calls``): for transfers and joins."""
        return Call(self, a, caller, dialled, parent=parent)

    # ==== players ===============================================================================================
    def start_play(self, leg: Leg, source: AudioSource, *, mix: bool = False) -> asyncio.Future[None]:
        """Play ``source`` to ``leg``; the future completes when it has played, was replaced or stopped."""
        assert leg.channel is not None
        self._finish_play(leg.channel)
        pid = self.engine.play(leg.channel, source, mix=mix)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._playing[leg.channel] = (pid, done)
        return done

    def stop_play(self, leg: Leg) -> None:
        if leg.channel is None:
            return
        self._finish_play(leg.channel)
        with contextlib.suppress(MediaError):
            self.engine.stop_play(leg.channel)

    def _finish_play(self, channel: int, player: int | None = None) -> None:
        entry = self._playing.get(channel)
        if entry is None or (player is not None and entry[0] != player):
            return
        del self._playing[channel]
        if not entry[1].done():
            entry[1].set_result(None)

    async def originate(self, targets: Sequence[DialTarget], *, caller: Party, dialled: str, timeout_ms: int,
                        headers: Sequence[tuple[str, str]] = (), data: dict[str, object] | None = None,
                        label: str = "") -> Call:
        """Place a call with no inbound leg (callbacks, agent offers, the dialer, wake-up calls).

        ``targets`` ring in parallel for ``timeout_ms`` with ``caller`` as From and ``headers`` added to each
        INVITE; the first to answer becomes the call's ``a`` leg and the call is returned, answered, for the
        application to play to, record, bridge or transfer. Raises :class:`CallError` (``status_hint`` = the
        best final status) when nobody answers; the attempt leaves a CDR either way.
        """
        call = Call(self, None, caller, dialled)
        call.destination = label or dialled
        call.originated = True
        if data:
            call.data.update(data)
        self.calls[call.id] = call
        self.stats.calls += 1
        self.stats.active += 1
        self.cdr_begin(call)
        try:
            winner, statuses = await call._ring(targets, timeout_ms, headers, watch=None)
        except BaseException:
            self.end_call(call, HangupSide.SYSTEM, 487)
            raise
        if winner is None:
            status = DialOutcome(None, statuses).best_status
            call.hangup_status = status
            self.end_call(call, HangupSide.SYSTEM, status)
            raise CallError(f"nobody answered ({status})", status)
        call.a = winner
        call.answered_at = time.time()
        self.cdr_update(call)
        log.info("call.originated", call=call.id, to=winner.peer, caller=caller.number)
        return call

    def recording_path(self, call: Call) -> Path:
        day = time.strftime("%Y/%m/%d", time.gmtime(call.started))
        return (self.config.recordings_dir or Path("recordings")) / day / f"{call.id}.wav"

    def legs(self) -> list[Leg]:
        """Every live leg of every call."""
        return [leg for call in self.calls.values() for leg in call.legs if not leg.ended]

    def find_leg_by_dialog(self, call_id: str, tag1: str, tag2: str) -> Leg | None:
        """The live leg whose dialog is ``call_id`` with these two tags, in either order (a Replaces names the
        dialog as we see it, to-tag = ours; phones that subscribe to a dialog package often swap them)."""
        for local, remote in ((tag1, tag2), (tag2, tag1)):
            leg = self.by_dialog.get(DialogId(call_id, local, remote))
            if leg is not None and not leg.ended:
                return leg
        return None

    def move_leg(self, leg: Leg, to: Call) -> None:
        """Take ``leg`` out of its call (and that call's bridge) into ``to``; roles in ``to`` are the caller's."""
        source = leg.call
        self.unbridge_leg(source, leg)
        source.legs = [x for x in source.legs if x is not leg]
        if source.b is leg:
            source.b = None
        leg.call = to
        to.legs.append(leg)

    def replace_leg(self, old: Leg, new: Leg) -> bool:
        """RFC 3891 §3: ``new`` (an answered inbound leg of another call) takes the place of ``old``, a confirmed
        leg: it is bridged with ``old``'s peer, and ``old`` gets BYE. False (nothing changed) without a peer."""
        call = old.call
        peer = call.b if old is call.a else call.a if old is call.b else None
        if (old.ended or not old.up or peer is None or peer.ended or peer.channel is None or new.channel is None
                or new.ended):
            return False
        self.move_leg(new, call)
        if old is call.a:
            call.a = new
        else:
            call.b = new
        engine = self.engine
        if call.bridge_id is not None:
            with contextlib.suppress(Exception):
                engine.destroy(call.bridge_id)
        if call.moh.pop(peer.channel, None) is not None:
            engine.stop_play(peer.channel)
        call.bridge_id = engine.bridge(peer.channel, new.channel)
        self.send_bye(old)
        self.close_leg(old)
        self.cdr_update(call)
        self.apply_hold(call)
        log.info("call.leg.replaced", call=call.id, old=old.id, new=new.id)
        return True

    # ==== entry points from the SIP edge =======================================================================
    def on_invite(self, request: Request, source: Destination, key: ServerKey, caller: Party,
                  dialled: str, *, local_tag: str | None = None, device: str | None = None,
                  router: Router | None = None, trunk: str | None = None,
                  codecs: Sequence[str] = (), dtmf: str = "rfc4733") -> Call | None:
        """A new INVITE (no To tag) the application has authenticated: start a call for it, served by
        ``router`` (default: the manager's, the dial plan; call pickup passes its own); None when the INVITE
        was refused here (bad SDP...).

        ``trunk``: the call came in from that ``[[trunk]]`` (routed by its rules only); ``codecs`` and ``dtmf``
        are the trunk profile's."""
        if len(self.calls) >= self.max_calls:
            # the hard cap on calls (and so on legs, dialogs and their indexes): shed load, never grow
            self.stats.refused_over_cap += 1
            self.sip.respond(request, 503, reason="Too many calls", headers=[("Retry-After", "5")],
                             to_tag=new_tag())
            return None
        try:
            self._check_invite(request)
        except CallError as exc:
            headers = [("Min-SE", str(self.config.min_se_s))] if exc.status_hint == 422 else []
            self.sip.respond(request, exc.status_hint, reason=str(exc)[:80], headers=headers, to_tag=new_tag())
            return None
        offer: SessionDescription | None = None
        if request.body:
            ctype = (request.content_type or "").split(";")[0].strip().lower()
            if ctype != SDP:
                self.sip.respond(request, 415, headers=[("Accept", SDP)], to_tag=new_tag())
                return None
            try:
                offer = SessionDescription.parse(request.body)
            except SdpError as exc:
                self.sip.respond(request, exc.status_hint, reason=reason_text(exc), to_tag=new_tag())
                return None
        destination = source
        contacts = request.contacts if request.headers.get("contact") else []
        if contacts and isinstance(contacts[0].uri, SipUri):
            destination = reachable_at(contacts[0].uri, source)
        call = Call(self, None, caller, dialled)
        a = Leg(self, call, inbound=True, role="caller", peer=caller.number, destination=destination)
        a.invite = request
        a.server_key = key
        a.sips = source[0] == "tls" and isinstance(request.uri, SipUri) and request.uri.scheme == "sips"
        if local_tag:
            a.local_tag = local_tag
        a.remote_offer = offer
        a.device = device
        a.trunk = trunk
        a.dtmf = dtmf
        if codecs:
            a.codecs = tuple(Codec[name.upper()] for name in codecs)
        call.trunk = trunk
        a.reliable_provisional = _reliable_provisional_of(request)
        call.a = a
        call.legs.append(a)
        self.calls[call.id] = call
        self.by_invite[key] = a
        self.leg_changed(a)
        self.stats.calls += 1
        self.stats.active += 1
        self.spawn(self._run_call(call, request, router or self.router))
        return call

    def on_request(self, request: Request, source: Destination, key: ServerKey | None) -> bool:
        """An in-dialog request or CANCEL; returns False when no leg of ours matches it (the caller answers 481)."""
        method = request.method
        if method == "CANCEL":
            return self._on_cancel(request)
        tag = request.to.tag
        leg = self.by_dialog.get(DialogId(request.call_id, tag or "", request.from_.tag or ""))
        if leg is None and method == "ACK":
            # An ACK whose To tag is not ours (pyVoIP invents one) still acknowledges our 2xx: the Call-ID
            # and the caller's From tag name the one leg waiting for it.
            leg = self.awaiting_ack.get((request.call_id, request.from_.tag or ""))
        if leg is None:
            log.info("call.request.no_dialog", method=method, call_id=request.call_id)
            return method == "ACK"  # a stray ACK is dropped silently (§17.2.3); others get 481
        if method == "ACK":
            self._on_ack(leg, request)
            return True
        assert leg.dialog is not None
        try:
            leg.dialog.receive_request(request)
        except DialogError as exc:
            log.info("call.request.refused", method=method, status=exc.status_hint, error=str(exc))
            self.sip.respond(request, exc.status_hint, reason=reason_text(exc))
            return True
        if method == "BYE":
            self.sip.respond(request, 200)
            caller_side = leg is leg.call.a and not leg.call.originated
            self.leg_ended(leg, HangupSide.CALLER if caller_side else HangupSide.CALLEE, None)
        elif method in ("INVITE", "UPDATE"):
            self._on_offer(leg, request)
        elif method == "REFER":
            self.transfers.on_refer(leg, request)
        elif method == "INFO":
            self._on_info(leg, request)
        elif method == "PRACK":
            self._on_prack(leg, request)
        elif method in ("OPTIONS", "NOTIFY"):
            self.sip.respond(request, 200, headers=[("Allow", ALLOW)])
        else:
            self.sip.respond(request, 405, headers=[("Allow", ALLOW)])
        return True

    def on_response(self, response: Response, key: ClientKey) -> bool:
        leg = self.by_client.get(key)
        if leg is None:
            return False
        request = leg.pending.get(key)
        if key == leg.client_key:
            self._on_invite_response(leg, response)
        elif request is not None:
            if response.status >= 200:
                leg.pending.pop(key, None)
                self.by_client.pop(key, None)
            self._on_in_dialog_response(leg, request, response, key)
        return True

    def on_stray_response(self, response: Response) -> None:
        """A 2xx retransmission after the INVITE transaction ended: our ACK was lost, send it again."""
        if response.cseq.method != "INVITE" or not 200 <= response.status < 300:
            return
        leg = self.by_dialog.get(DialogId(response.call_id, response.from_.tag or "", response.to.tag or ""))
        if leg is not None and leg.ack is not None:
            self.sip.send_stateless(leg.ack, self._hop(leg))

    def on_transaction_failed(self, key: ClientKey | ServerKey, request: Request) -> bool:
        """Timer B/F fired or the transport failed for a request of ours; or our 2xx was never ACKed.

        Returns False when the transaction was none of call control's."""
        if isinstance(key, ServerKey):
            if request.method != "INVITE":
                return False
            # by index (a junk INVITE's 407 that is never ACKed ends here too: no scan of every call)
            leg = self.by_invite.get(key) or self.awaiting_ack.get((request.call_id, request.from_.tag or ""))
            if leg is not None and leg.invite is not request:
                leg = None
            if leg is not None and not leg.acked.done():
                leg.acked.set_result(False)
                self.end_call(leg.call, HangupSide.SYSTEM, 408)
            return leg is not None
        leg = self.by_client.pop(key, None)
        if leg is None:
            return False
        if key == leg.client_key:
            self._outbound_failed(leg, 408)
        else:
            leg.pending.pop(key, None)
            if request.method in ("INVITE", "UPDATE", "BYE") and not leg.ended:
                # §12.2.1.2: no answer to an in-dialog request: the dialog is gone
                self.end_call(leg.call, HangupSide.SYSTEM, 408)
        return True

    def on_media_event(self, event: MediaEvent | ChannelLost) -> None:
        if isinstance(event, ChannelLost):  # its media worker died: dead air from now on, so the call ends
            leg = self.by_channel.get(event.channel)
            if leg is not None and not leg.ended:
                log.error("call.media.lost", leg=leg.id, peer=leg.peer, reason=event.reason)
                leg.call.end_reason = leg.call.end_reason or event.reason
                self.end_call(leg.call, HangupSide.SYSTEM, 503)
        elif isinstance(event, DtmfReceived):
            leg = self.by_channel.get(event.channel)
            if leg is not None:
                self._digit(leg, event.digit, event.source.value)
        elif isinstance(event, PlaybackFinished):
            self._finish_play(event.channel, event.player)
        elif isinstance(event, RtpTimeout):
            leg = self.by_channel.get(event.channel)
            if leg is not None:
                self._rtp_timeout(leg)

    def _rtp_timeout(self, leg: Leg) -> None:
        """No RTP from an answered party for ``rtp_timeout_s``: the phone is gone (crashed, unplugged, NAT
        mapping lost). Legs on hold are exempt: a held phone may rightly send nothing."""
        if not self.config.rtp_timeout_s or not leg.up or leg.held_by_remote or leg.ended:
            return
        if leg.answered_at is not None and time.time() - leg.answered_at < self.config.rtp_timeout_s - 1:
            if leg.channel is not None:  # silence counted from before the answer: count it from now
                self.engine.restart_rtp_timeout(leg.channel)
            return
        call = leg.call
        log.warning("call.rtp.timeout", leg=leg.id, peer=leg.peer, timeout_s=self.config.rtp_timeout_s)
        call.end_reason = call.end_reason or "rtp_timeout"
        self.end_call(call, HangupSide.SYSTEM, 408)

    def _digit(self, leg: Leg, digit: str, path: str) -> None:
        """A key press on ``leg`` (``path``: rfc4733, inband or info): queued once for the application, relayed
        to the bridged party and reported to routing.

        Relaying: RFC 4733 on a relayed bridge was forwarded as packets and in-band tones travel in the audio,
        so only the other paths are re-sent — as RFC 4733 when the peer negotiated telephone-event, else as
        in-band tones mixed into what it hears.
        """
        now = time.monotonic()
        last = leg.last_digit
        leg.last_digit = (digit, path, now)
        if last is not None and last[0] == digit and last[1] != path and now - last[2] < DUPLICATE_DIGIT_MS / 1000:
            return  # the phone sent this press two ways (INFO and RFC 4733, say): report it once
        call = leg.call
        peer = call.b if leg is call.a else call.a if leg is call.b else None
        relayed = path == DtmfSource.INBAND.value or (
            path == DtmfSource.RFC4733.value and leg.channel is not None and self.engine.relaying(leg.channel))
        if (peer is not None and peer.channel is not None and peer.up and call.bridge_id is not None
                and not relayed):
            self._send_digit(peer, digit)
        if leg.digits.qsize() >= DIGIT_QUEUE_MAX:
            leg.digits.get_nowait()
        leg.digits.put_nowait(digit)
        call.events.put_nowait(DigitReceived(leg, digit))

    def _send_digit(self, leg: Leg, digit: str) -> None:
        assert leg.channel is not None
        if leg.dtmf == "info" and leg.dialog is not None:  # a trunk that takes keys only as SIP INFO
            body = f"Signal={digit}\r\nDuration=160\r\n".encode()
            self.in_dialog_request(leg, "INFO", body=body, content_type="application/dtmf-relay")
            return
        try:
            if leg.dtmf == "rfc4733" and leg.audio is not None and leg.audio.telephone_event_pt is not None:
                self.engine.send_dtmf(leg.channel, digit)
            else:
                self.engine.play(leg.channel, PromptPlayer(generate_digits(digit, tone_ms=100, pause_ms=40)),
                                 mix=True)
        except MediaError as exc:
            log.info("call.dtmf.unsent", leg=leg.id, digit=digit, error=str(exc))

    async def stop(self) -> None:
        """End every call (BYE/CANCEL/503) and wait briefly for the call tasks to finish."""
        for call in list(self.calls.values()):
            self.end_call(call, HangupSide.SYSTEM, 503)
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2.0)
        for task in list(self.tasks):
            task.cancel()

    # ==== call lifecycle ==========================================================================================
    async def _run_call(self, call: Call, request: Request, router: Router) -> None:
        a = call.a
        structlog.contextvars.bind_contextvars(call=call.id, call_id=request.call_id)
        log.info("call.started", caller=call.caller.number, dialled=call.dialled)
        try:
            self.cdr_begin(call)  # every attempt leaves a record, refused ones included
            try:
                await self._open_media(a)
                if a.remote_offer is not None:
                    self._answer_offer(a, a.remote_offer)
            except SdpError as exc:
                await call.reject(exc.status_hint, reason_text(exc))
                return
            except MediaError as exc:  # no RTP port left (or the range is misconfigured): busy everywhere
                log.warning("call.media.unavailable", error=str(exc))
                await call.reject(503, "No media ports available")
                return
            await router(call)
            if not call.finished and a.up:
                # routing returned with the call up (e.g. after a bridge it did not wait on): wait for its end
                while not call.finished:
                    event = await call.wait_event()
                    if isinstance(event, CallEnded):
                        break
        except CallHangup:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a task root: this call ends, the server goes on
            log.exception("call.failed")
            if not a.up and not a.ended:
                await call.reject(500, "Internal error")
        finally:
            if not call.finished:
                if not a.up and not a.ended:
                    await call.reject(480)
                self.end_call(call, call.hangup_side or HangupSide.SYSTEM, call.hangup_status)
            structlog.contextvars.unbind_contextvars("call", "call_id")

    def end_call(self, call: Call, side: HangupSide, status: int | None) -> None:
        if call.finished:
            return
        call.finished = True
        call.stop_recording()
        call.hangup_side = call.hangup_side or side
        call.hangup_status = call.hangup_status if call.hangup_status is not None else status
        for leg in list(call.legs):
            if leg.ended:
                continue
            if leg.inbound and leg.state is LegState.ANSWERED and not leg.acked.done():
                self.spawn(self._bye_when_acked(leg))  # RFC 3261 §15: no BYE before the ACK of our 2xx
                continue
            if leg.up:
                self.send_bye(leg)
            elif leg.inbound:
                self.reject_inbound(leg, status if status and status >= 300 else 480, None, ())
            else:
                self.cancel_outbound(leg, 487)
            self.close_leg(leg)
        call.ended_at = time.time()
        if call.disposition is None:
            if call.answered_at is not None:
                call.disposition = Disposition.ANSWERED
            else:
                call.disposition = _disposition_for(call.hangup_status)
        if call.answered_at is not None:
            call.disposition = Disposition.ANSWERED
        self.calls.pop(call.id, None)
        self.stats.active -= 1
        if call.disposition is Disposition.ANSWERED:
            self.stats.answered += 1
        else:
            self.stats.failed += 1
        call.events.put_nowait(CallEnded(call.hangup_side or side, call.hangup_status))
        self._cdr_finish(call)
        # Named here, not only by the call task's context: a BYE or CANCEL ends the call from the SIP handler's.
        log.info("call.ended", call=call.id, call_id=call.sip_call_id, disposition=call.disposition._value_,
                 side=(call.hangup_side or side)._value_, status=call.hangup_status,
                 duration=round(call.ended_at - call.started, 3))

    async def _bye_when_acked(self, leg: Leg) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(leg.acked), ACK_WAIT_MS / 1000)
        if not leg.ended:
            self.send_bye(leg)
            self.close_leg(leg)

    def leg_ended(self, leg: Leg, side: HangupSide, status: int | None) -> None:
        """``leg`` is gone (BYE received, failure): a two-party call ends with it."""
        if leg.ended:
            return
        self.close_leg(leg)
        call = leg.call
        ends_call = leg in call.ends_with if call.ends_with is not None else (leg is call.a or leg is call.b)
        if not ends_call:
            self._leg_left(call, leg)
            return
        if leg is call.a or leg is call.b or call.ends_with is not None:
            call.hangup_side = call.hangup_side or side
            if status is not None and call.hangup_status is None:
                call.hangup_status = status
            self.end_call(call, side, status)

    def _leg_left(self, call: Call, leg: Leg) -> None:
        """A leg whose hang-up does not end its call (``Call.end_when``): it leaves, the others stay."""
        if call.b is leg:
            call.b = None
        if call.bridge_id is not None and leg.channel is None:
            with contextlib.suppress(MediaError):
                if not self.engine.members(call.bridge_id):
                    self.engine.destroy(call.bridge_id)
        call.events.put_nowait(LegLeft(leg))
        self.cdr_update(call)
        log.info("call.leg.left", leg=leg.id, peer=leg.peer)

    def close_leg(self, leg: Leg) -> None:
        leg.state = LegState.ENDED
        leg.ended_at = leg.ended_at or time.time()
        leg._closed = True
        if leg._gone is not None:
            leg._gone.set()
        gone = leg._gone_future
        if gone is not None and not gone.done():
            gone.set_result(None)
        if leg.timer is not None:
            leg.timer.cancel()
            leg.timer = None
        if not leg.answered.done():
            leg.answered.set_exception(CallError("leg ended", leg.final_status or 487))
            leg.answered.exception()  # mark retrieved: nobody may be waiting any more
        if not leg.acked.done():
            leg.acked.set_result(False)
        if leg.channel is not None:
            self.by_channel.pop(leg.channel, None)
            self._finish_play(leg.channel)
            with contextlib.suppress(Exception):
                self.media.close_channel(leg.channel)
            leg.channel = None
        if leg.server_key is not None:
            self.by_invite.pop(leg.server_key, None)
        if leg.invite is not None and leg.inbound:
            self.awaiting_ack.pop((leg.invite.call_id, leg.invite.from_.tag or ""), None)
        leg.drop_negotiation()
        # dialog and client-transaction indexes stay a while: late BYE/200 retransmissions still match. One timer
        # for all closed legs, not a handle each (a handle, its timer, context and bound method per leg stayed
        # alive for ACK_WAIT_MS, objects the garbage collector walked)
        # (on the transactions' linger grain: the legs of the calls that end within one are forgotten together)
        loop = asyncio.get_running_loop()
        due = on_grain(loop.time() + ACK_WAIT_MS / 1000, LINGER_GRAIN_MS / 1000)
        heapq.heappush(self._closed_legs, (due, next(self._closed_seq), leg))
        if self._forget_timer is None:
            self._forget_timer = loop.call_at(self._closed_legs[0][0], self._forget_due)

    def _forget_due(self) -> None:
        """Forget the closed legs whose ACK_WAIT_MS is over; the timer is set again for the next one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        closed = self._closed_legs
        while closed and closed[0][0] <= now:
            self._forget(heapq.heappop(closed)[2])
        self._forget_timer = loop.call_at(closed[0][0], self._forget_due) if closed else None

    def _index_client(self, leg: Leg, key: ClientKey) -> None:
        self.by_client[key] = leg
        leg.client_keys.add(key)

    def _forget(self, leg: Leg) -> None:
        """Drop the indexes a closed leg kept for late retransmissions: O(its own keys), not O(every leg)."""
        if leg.forgotten:  # closed twice, so due twice: its call may be released and gone by the second time
            return
        if leg.dialog is not None and self.by_dialog.get(leg.dialog.id) is leg:
            del self.by_dialog[leg.dialog.id]
        for key in leg.client_keys:
            if self.by_client.get(key) is leg:
                del self.by_client[key]
        leg.client_keys.clear()
        if leg.invite is not None and not leg.inbound:
            self.outbound_call_ids.discard(leg.invite.call_id)
        leg.forgotten = True
        call = leg.call
        if call.finished and all(other.forgotten for other in call.legs):
            call.release()

    # ==== media ===================================================================================================
    async def _open_media(self, leg: Leg) -> None:
        # beside the call's other legs: with media workers, a call's legs share one (no move when bridged)
        near = next((other.channel for other in leg.call.legs if other is not leg and other.channel is not None),
                    None)
        opened = await self.media.open_channel(Codec.PCMU, None, near=near)
        leg.channel = opened.channel
        leg.rtp_port = opened.port
        self.by_channel[opened.channel] = leg

    def local_media(self, leg: Leg) -> LocalMedia:
        """Our media for ``leg``. When the other leg of its call already has a codec, that codec comes first in
        our offer and is the one an answer picks when offered: both legs alike means the engine relays packets
        instead of transcoding them."""
        host = self.config.rtp_host or self.sip.local_address(leg.destination)[0]
        codecs = leg.codecs or self.config.codecs
        other = _other_leg(leg)
        preferred = other.audio.codec if other is not None and other.audio is not None else None
        if preferred is not None and preferred in codecs:
            codecs = (preferred, *(c for c in codecs if c is not preferred))
        srtp = self.srtp_use(leg)
        return LocalMedia(address=host, port=leg.rtp_port, codecs=codecs, direction=leg.direction,
                          telephone_event=leg.dtmf == "rfc4733", preferred=preferred,
                          srtp=srtp, srtp_key=leg.srtp_key if srtp is not SrtpUse.OFF else b"")

    def srtp_use(self, leg: Leg) -> SrtpUse:
        """What ``leg`` does about SRTP: its own setting (a dial target's), else ``[sip] srtp`` for its transport.

        Keys are offered only over TLS (SDES keys travel in the SDP: over UDP or TCP anyone on the path reads
        them); an SRTP offer that arrives in the clear is still answered with SRTP (the offerer chose)."""
        if leg.srtp is not None:
            return leg.srtp
        policy = self.config.srtp
        if policy == "off":
            return SrtpUse.OFF
        if leg.destination[0] != "tls":
            return SrtpUse.ACCEPT
        return SrtpUse.REQUIRED if policy == "required" else SrtpUse.OFFER

    def _answer_offer(self, leg: Leg, offer: SessionDescription) -> None:
        answer, audio = leg.sdp.answer(offer, self.local_media(leg))
        leg.local_answer = answer
        self._apply_audio(leg, audio)

    def _apply_audio(self, leg: Leg, audio: NegotiatedAudio) -> None:
        leg.audio = audio
        if leg.channel is None:
            return
        engine = self.engine
        # every format both sides listed may arrive (RFC 3264 §5.1), also a dynamic payload type for our codec
        also = ((audio.payload_type, audio.codec), *audio.receive_formats)
        engine.set_codec(leg.channel, audio.codec, audio.telephone_event_pt, also=also)
        engine.set_send_ptime(leg.channel, audio.remote_ptime_ms)  # the packet time the peer asked for
        engine.set_remote(leg.channel, audio.remote)
        engine.set_direction(leg.channel, _media_direction(audio.direction))
        if audio.srtp is not None or leg.srtp_active:
            self.media.set_srtp(leg.channel, audio.srtp)  # the same keys again keep the running context
            if leg.srtp_active != (audio.srtp is not None):
                log.info("call.media.srtp", leg=leg.role, suite=audio.srtp.suite.value if audio.srtp else "off")
            leg.srtp_active = audio.srtp is not None
        # a phone that negotiated no telephone-event can only send its keys as tones: listen for them (Q.24)
        # while an application serves it; in a plain bridge the tones reach the other party as audio
        engine.enable_dtmf_detection(leg.channel, audio.telephone_event_pt is None, unpaired_only=True)
        was_held = leg.held_by_remote
        leg.held_by_remote = audio.held_by_remote
        if was_held != leg.held_by_remote and leg.call.b is not None:
            log.info("call.hold" if leg.held_by_remote else "call.resume", leg=leg.role)
            self.apply_hold(leg.call)

    def apply_hold(self, call: Call) -> None:
        """Music on hold to whoever the other party has put on hold (media anchored: no re-INVITE needed)."""
        a, b = call.a, call.b
        if b is None:
            return
        for holder, held in ((a, b), (b, a)):
            if held.channel is None:
                continue
            if holder.held_by_remote and not held.ended:
                if held.channel not in call.moh:
                    call.moh[held.channel] = self.engine.play(held.channel, MusicOnHold(self._moh_pcm))
            elif held.channel in call.moh:
                del call.moh[held.channel]
                self.engine.stop_play(held.channel)

    # ==== inbound leg: responses ==================================================================================
    def _ensure_uas_dialog(self, leg: Leg, early: bool) -> None:
        if leg.dialog is None:
            assert leg.invite is not None
            leg.dialog = Dialog.from_uas(leg.invite, leg.local_tag, self.contact(leg), early=early)
            self.by_dialog[leg.dialog.id] = leg
        if not early:
            leg.dialog.confirm()

    def send_provisional(self, leg: Leg, status: int, *, sdp: bool = False) -> None:
        """18x to the caller; reliably (RFC 3262 §3: Require: 100rel, RSeq, re-sent until PRACKed) when its
        INVITE required 100rel, one at a time: a second waits in ``reliable_queue`` for the first's PRACK."""
        if leg.ended or leg.up or leg.invite is None or (status, sdp) in leg.provisionals:
            return  # (the same 18x twice says nothing new: routing rings, then the callee's 180 arrives)
        reliable = leg.reliable_provisional == "required"
        if reliable and leg.unacked is not None:
            if (status, sdp) not in leg.reliable_queue:
                leg.reliable_queue.append((status, sdp))
            return
        leg.provisionals.add((status, sdp))
        self._ensure_uas_dialog(leg, early=True)
        body = b""
        if sdp and leg.local_answer is not None:
            body = leg.local_answer.serialize()
        headers = [("Contact", self.contact(leg)), ("Allow", ALLOW)]
        if reliable:
            rseq = leg.next_rseq
            headers += [("Require", "100rel"), ("RSeq", str(rseq))]
            try:
                self.sip.respond_reliably(leg.invite, status, headers=headers, body=body,
                                          content_type=SDP if body else None, to_tag=leg.local_tag)
            except SipLocalError as exc:  # the INVITE transaction is gone (a CANCEL or a final overtook it)
                log.info("call.provisional.unsent", leg=leg.id, status=status, error=str(exc))
                return
            leg.next_rseq += 1
            leg.unacked = (rseq, status, bool(body))
            leg.pracked.clear()
        else:
            self.sip.respond(leg.invite, status, headers=headers, body=body, content_type=SDP if body else None,
                             to_tag=leg.local_tag)
        if leg.state is LegState.PROCEEDING:
            leg.state = LegState.EARLY

    def _on_prack(self, leg: Leg, prack: Request) -> None:
        """RFC 3262 §3: a PRACK whose RAck names our outstanding reliable 1xx (its RSeq, the INVITE's CSeq number
        and method) gets 200 and stops the 1xx's retransmission, and the next queued 18x goes out; any other
        PRACK gets 481. A PRACK's own offer (§5) is not taken up: our answer always went in the 1xx."""
        pending, invite = leg.unacked, leg.invite
        rack = _parse_rack(prack.headers.get("rack") or "")
        if pending is None or invite is None or rack != (pending[0], invite.cseq.seq, "INVITE"):
            log.info("call.prack.unmatched", leg=leg.id, rack=prack.headers.get("rack"))
            self.sip.respond(prack, 481, reason="No Matching Provisional Response")
            return
        leg.unacked = None
        if pending[2]:
            leg.answer_pracked = True
        if leg.server_key is not None:
            self.sip.acknowledge_provisional(leg.server_key)
        self.sip.respond(prack, 200)
        log.info("call.prack.received", leg=leg.id, rseq=pending[0], status=pending[1])
        while leg.reliable_queue and leg.unacked is None and not leg.up and not leg.ended:
            status, sdp = leg.reliable_queue.pop(0)
            self.send_provisional(leg, status, sdp=sdp)
        if leg.unacked is None:
            leg.pracked.set()

    async def wait_for_prack(self, leg: Leg) -> None:
        """RFC 3262 §3: no 2xx while a reliable 1xx of ours with SDP is unacknowledged. Waits (at most 64·T1: the
        transaction then reports the missing PRACK and the call is rejected) and drops 18x still queued."""
        leg.reliable_queue.clear()
        if leg.unacked is None or not leg.unacked[2]:
            return
        waiters = {asyncio.ensure_future(leg.pracked.wait()), asyncio.ensure_future(leg.gone.wait())}
        try:
            await asyncio.wait(waiters, timeout=PRACK_WAIT_MS / 1000, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if leg.ended:
            raise CallHangup("the caller left before acknowledging our provisional response")

    def on_prack_timed_out(self, key: ServerKey) -> None:
        """No PRACK of our reliable 1xx within 64·T1 (RFC 3262 §3): the INVITE is rejected with a 5xx."""
        leg = self.by_invite.get(key)
        if leg is None or leg.ended or leg.up:
            return
        call = leg.call
        log.warning("call.prack.timeout", leg=leg.id, status=leg.unacked[1] if leg.unacked else None)
        call.end_reason = call.end_reason or "no_prack"
        call.hangup_status = 500
        self.reject_inbound(leg, 500, "Provisional Response Not Acknowledged", ())
        self.end_call(call, HangupSide.SYSTEM, 500)

    def answer_inbound(self, leg: Leg) -> None:
        assert leg.invite is not None
        if leg.ended:
            raise CallHangup("caller gone")
        self._ensure_uas_dialog(leg, early=False)
        assert leg.dialog is not None
        self._late_answer(leg)
        if leg.answer_pracked:
            body = b""  # RFC 3262 §5 / RFC 6337 §3.1: the answer went in a PRACKed 1xx; the 2xx repeats none
        elif leg.local_answer is not None:
            body = leg.local_answer.serialize()
        else:  # late offer (RFC 3261 §13.2.1): our offer goes in the 2xx, the answer comes in the ACK
            leg.local_offer = leg.sdp.offer(self.local_media(leg))
            body = leg.local_offer.serialize()
        headers = [("Contact", self.contact(leg)), ("Allow", ALLOW), ("Supported", SUPPORTED_100REL)]
        headers += self.session_timers.uas_headers(leg, leg.invite)
        self.sip.respond(leg.invite, 200, headers=headers, body=body, content_type=SDP if body else None,
                         to_tag=leg.local_tag)
        leg.state = LegState.ANSWERED
        leg.answered_at = time.time()
        leg.final_status = 200
        if leg.channel is not None:
            self.engine.restart_rtp_timeout(leg.channel)  # the ringing time was no silence of the phone's
        self.awaiting_ack[(leg.invite.call_id, leg.invite.from_.tag or "")] = leg
        if leg.server_key is not None:
            self.by_invite.pop(leg.server_key, None)
        self.stats.by_status[200] = self.stats.by_status.get(200, 0) + 1

    def _late_answer(self, leg: Leg) -> None:
        """Re-decide our answer to the caller's offer just before the 200 when the caller has not seen it yet
        (no 1xx carried it): the callee has answered by now, and its codec, if the caller offered it, makes the
        bridge a packet relay rather than a transcoder (RFC 3264 §6.1 leaves the choice among offered codecs
        to the answerer)."""
        other = _other_leg(leg)
        if (leg.remote_offer is None or leg.local_answer is None or leg.audio is None or other is None
                or other.audio is None or other.audio.codec is leg.audio.codec
                or any(with_sdp for _, with_sdp in leg.provisionals)):
            return
        try:
            self._answer_offer(leg, leg.remote_offer)
        except SdpError as exc:  # cannot happen for an offer answered once already; keep the first answer
            log.info("call.late_answer.failed", leg=leg.id, error=str(exc))

    def reject_inbound(self, leg: Leg, status: int, reason: str | None,
                        headers: Iterable[tuple[str, str]]) -> None:
        if leg.invite is None or leg.ended or leg.up:
            return
        leg.final_status = status
        self.sip.respond(leg.invite, status, reason=reason, headers=headers, to_tag=leg.local_tag)
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        self.close_leg(leg)

    def _on_ack(self, leg: Leg, ack: Request) -> None:
        if leg.invite is not None:
            self.awaiting_ack.pop((leg.invite.call_id, leg.invite.from_.tag or ""), None)
        if leg.state is LegState.ANSWERED:
            leg.state = LegState.CONFIRMED
        if leg.local_offer is not None and ack.body:
            offer, leg.local_offer = leg.local_offer, None
            try:
                audio = leg.sdp.process_answer(offer, SessionDescription.parse(ack.body))
            except SdpError as exc:
                log.info("call.ack.bad_answer", error=str(exc))
                self.end_call(leg.call, HangupSide.SYSTEM, 488)
                return
            self._apply_audio(leg, audio)
        if not leg.acked.done():
            leg.acked.set_result(True)
        if leg.session_expires:
            self.session_timers.arm(leg)

    def _on_cancel(self, cancel: Request) -> bool:
        key = self._server_key_for_cancel(cancel)
        leg = self.by_invite.get(key) if key is not None else None
        if key is None:
            return False
        self.sip.respond(cancel, 200)  # §9.2: the CANCEL itself always succeeds once it matches
        if leg is not None and not leg.up and not leg.ended:
            call = leg.call
            call.hangup_side = HangupSide.CALLER
            call.hangup_status = 487
            call.disposition = Disposition.CANCELLED
            self.reject_inbound(leg, 487, None, ())
            self.end_call(call, HangupSide.CALLER, 487)
        return True

    def _server_key_for_cancel(self, cancel: Request) -> ServerKey | None:
        branch = cancel.via.branch or ""
        for key in self.by_invite:  # §9.2: the CANCEL's top Via branch is its INVITE's
            if key.branch == branch:
                return key
        return None

    # ==== outbound legs ===========================================================================================
    async def originate_leg(self, call: Call, target: DialTarget, extra: Sequence[tuple[str, str]] = ()) -> Leg:
        """Send an INVITE to ``target`` on a new dialog (fresh Call-ID, tags and SDP session)."""
        a = call.a
        leg = Leg(self, call, inbound=False, role="callee", peer=target.label or target.to.number,
                  destination=target.destination)
        leg.device = target.device
        leg.sips = target.destination[0] == "tls" and target.uri.scheme == "sips"
        if target.srtp is not None:
            leg.srtp = SrtpUse(target.srtp)
        leg.credentials = target.credentials
        leg.trunk = target.trunk
        leg.dtmf = target.dtmf
        leg.early_media = target.early_media
        if target.codecs:
            leg.codecs = tuple(Codec[name.upper()] for name in target.codecs)
        leg.reliable_provisional = target.reliable_provisional
        try:
            await self._open_media(leg)
        except MediaError as exc:  # no RTP port left: this target cannot be called now, a busy one (others may)
            log.warning("call.media.unavailable", leg=leg.id, target=leg.peer, error=str(exc))
            raise CallError("no media ports available", 503) from exc
        call.legs.append(leg)
        self.leg_changed(leg)
        local_host, local_port = self.sip.local_address(target.destination)
        domain = self.config.domain
        caller = call.caller
        from_uri = target.from_uri or SipUri(user=caller.number or "anonymous", host=domain)
        if caller.restricted and target.from_uri is None:
            from_addr = NameAddr(SipUri(user="anonymous", host="anonymous.invalid"), "Anonymous")
        else:
            from_addr = NameAddr(from_uri, None if caller.restricted else caller.name or None)
        to_host = target.uri.host if target.trunk is not None else domain  # a provider expects its own domain
        to_addr = NameAddr(SipUri(user=target.to.number, host=to_host), target.to.name or None)
        leg.dialog = Dialog.new_uac(local_uri=from_addr, remote_uri=to_addr, remote_target=target.uri,
                                    local_contact=self.contact(leg), local_tag=leg.local_tag)
        leg.local_offer = leg.sdp.offer(self.local_media(leg))
        max_forwards = MAX_FORWARDS
        if a is not None and a.invite is not None and a.invite.max_forwards is not None:
            max_forwards = max(0, a.invite.max_forwards - 1)
        supported = SUPPORTED if target.reliable_provisional == "off" else SUPPORTED_100REL
        headers = [("Allow", ALLOW), ("Supported", supported), ("User-Agent", self.config.user_agent), *extra,
                   *target.headers]
        if target.reliable_provisional == "required":
            headers.append(("Require", "100rel"))  # RFC 3262 §4
        if caller.restricted:
            headers.append(("Privacy", "id"))
        invite = leg.dialog.create_request("INVITE", via_host=local_host, via_port=local_port,
                                           transport=target.destination[0], body=leg.local_offer.serialize(),
                                           content_type=SDP, headers=headers, max_forwards=max_forwards)
        leg.invite = invite
        leg.invite_headers = headers
        leg.max_forwards = max_forwards
        self.outbound_call_ids.add(invite.call_id)
        try:
            leg.client_key = self.sip.send_request(invite, target.destination)
        except Exception as exc:
            self.close_leg(leg)
            raise CallError(f"could not send to {target.destination}: {exc}", 480) from exc
        self._index_client(leg, leg.client_key)
        log.info("call.leg.calling", leg=leg.id, target=str(target.uri), via=f"{target.destination}")
        return leg

    def _on_invite_response(self, leg: Leg, response: Response) -> None:
        leg.responded = True
        status = response.status
        call = leg.call
        if status < 200:
            if status == 100:
                return
            leg.provisional = True
            if leg.cancel_pending:
                self._send_cancel(leg)
                return
            if leg.ended:
                return
            rseq = _reliable_rseq(response)
            if rseq is not None:
                # RFC 3262 §4: a retransmission (or an RSeq out of order) is neither PRACKed nor processed
                tag = response.to.tag or ""
                last = leg.remote_rseq.get(tag)
                if last is not None and rseq != last + 1:
                    log.debug("call.leg.reliable_1xx_dropped", leg=leg.id, rseq=rseq, last=last)
                    return
                leg.remote_rseq[tag] = rseq
            if response.to.tag:
                leg.state = LegState.EARLY
                self._uac_dialog(leg, response)
            if rseq is not None:
                self._send_prack(leg, response, rseq)
            if response.body and leg.local_offer is not None:
                with contextlib.suppress(SdpError):
                    audio = leg.sdp.process_answer(leg.local_offer, SessionDescription.parse(response.body))
                    self._apply_audio(leg, audio)
                    self._early_media_from(call, leg)
                    return
            if call.a is not None and call.a.state in (LegState.PROCEEDING, LegState.EARLY):
                self.send_provisional(call.a, 180)
            return
        if 200 <= status < 300:
            if leg.ack is not None:
                self.sip.send_stateless(leg.ack, self._hop(leg))  # a retransmitted 2xx: our ACK was lost
                return
            self._uac_dialog(leg, response)
            assert leg.dialog is not None and leg.invite is not None
            leg.ack = leg.dialog.create_ack(leg.invite)
            self.sip.send_stateless(leg.ack, self._hop(leg))
            if leg.ended or leg.cancel_pending or call.finished or (call.b is not None and call.b is not leg):
                # lost the race (another leg answered, or we cancelled): hang this one up at once
                leg.state = LegState.CONFIRMED
                self.send_bye(leg)
                self.close_leg(leg)
                return
            leg.state = LegState.CONFIRMED
            leg.final_status = status
            leg.answered_at = time.time()
            leg.peer_allows_update = "UPDATE" in (response.headers.get("allow") or "").upper()
            if response.body and leg.local_offer is not None:
                try:
                    audio = leg.sdp.process_answer(leg.local_offer, SessionDescription.parse(response.body))
                except SdpError as exc:
                    log.info("call.leg.bad_answer", error=str(exc))
                    self.send_bye(leg)
                    leg.final_status = 488
                    self.close_leg(leg)
                    return
                leg.local_offer = None
                self._apply_audio(leg, audio)
            self.session_timers.apply_uac(leg, response)
            if leg.channel is not None:
                self.engine.restart_rtp_timeout(leg.channel)
            if not leg.answered.done():
                leg.answered.set_result(leg)
            log.info("call.leg.answered", call=leg.call.id, call_id=leg.call.sip_call_id, leg=leg.id)
            return
        if status in (401, 407) and self._answer_challenge(leg, response):
            return
        self._outbound_failed(leg, status)

    def _send_prack(self, leg: Leg, response: Response, rseq: int) -> None:
        """RFC 3262 §7.2: PRACK a reliable 1xx in its early dialog, ``RAck: <RSeq> <CSeq number> INVITE``.

        Sent also when our INVITE did not offer 100rel (lenient: some gateways send reliably anyway). Its
        response is consumed; a failed PRACK leaves the leg to the INVITE's final response."""
        dialog = leg.dialog
        if dialog is None or not response.to.tag or dialog.remote_tag != response.to.tag:
            return  # no early dialog to send it in (no To tag, or another fork's)
        rack = f"{rseq} {response.cseq.seq} {response.cseq.method}"
        try:
            prack = self.in_dialog_request(leg, "PRACK", headers=[("RAck", rack)])
        except SipLocalError as exc:
            log.info("call.prack.unsent", leg=leg.id, error=str(exc))
            return
        self.send_in_dialog(leg, prack)
        log.info("call.prack.sent", leg=leg.id, rack=rack)

    def _answer_challenge(self, leg: Leg, response: Response) -> bool:
        """RFC 3261 §22.2: resend our INVITE once with credentials for the challenge (a provider, a gateway).

        Same dialog (Call-ID, From tag), the next CSeq, the same offer; a second challenge fails the leg."""
        if (leg.credentials is None or leg.challenged or leg.ended or leg.cancel_pending or leg.dialog is None
                or leg.invite is None or leg.local_offer is None):
            return False
        challenge = _challenge_of(response)
        if challenge is None:
            return False
        leg.challenged = True
        old_key = leg.client_key
        host, port = self.sip.local_address(leg.destination)
        invite = leg.dialog.create_request("INVITE", via_host=host, via_port=port, transport=leg.destination[0],
                                           body=leg.local_offer.serialize(), content_type=SDP,
                                           headers=leg.invite_headers, max_forwards=leg.max_forwards)
        _sign(invite, response.status, challenge, leg.credentials)
        leg.invite = invite
        leg.provisional = False
        try:
            leg.client_key = self.sip.send_request(invite, leg.destination)
        except Exception:
            return False
        if old_key is not None:
            self.by_client.pop(old_key, None)
            leg.client_keys.discard(old_key)
        self._index_client(leg, leg.client_key)
        log.info("call.leg.authenticating", leg=leg.id, status=response.status, realm=challenge.get("realm"))
        return True

    def _early_media_from(self, call: Call, leg: Leg) -> None:
        """The callee sent SDP in a 1xx: bridge its early media to the caller (183 with our answer)."""
        a = call.a
        if a is None or a.ended or a.up or a.channel is None or leg.channel is None:
            return
        if not leg.early_media:
            self.send_provisional(a, 180)
            return
        if a.remote_offer is None:
            self.send_provisional(a, 180)
            return
        self.send_provisional(a, 183, sdp=True)
        self.engine.stop_play(a.channel)
        if call.bridge_id is None:
            call.bridge_id = self.engine.bridge(a.channel, leg.channel)

    def give_up_silent(self, leg: Leg) -> None:
        """Our INVITE on ``leg`` has had no response at all: end the leg with 408 now. Nothing is sent (no
        CANCEL before a provisional, §9.1); a late answer finds no leg and is ACKed and hung up as a stray."""
        log.info("call.leg.no_response", leg=leg.id, via=f"{leg.destination}")
        leg.cancel_pending = True
        self._outbound_failed(leg, 408)

    def _outbound_failed(self, leg: Leg, status: int) -> None:
        leg.final_status = status
        if leg.call.bridge_id is not None and leg.call.b is None and leg.channel is not None:
            with contextlib.suppress(Exception):
                self.engine.destroy(leg.call.bridge_id)
            leg.call.bridge_id = None
        if not leg.answered.done():
            leg.answered.set_exception(CallError(f"callee answered {status}", status))
            leg.answered.exception()
        self.close_leg(leg)
        log.info("call.leg.failed", leg=leg.id, status=status)

    def _uac_dialog(self, leg: Leg, response: Response) -> None:
        assert leg.invite is not None and leg.dialog is not None
        had_tag = bool(leg.dialog.remote_tag)
        try:
            leg.dialog.receive_response(leg.invite, response)
        except DialogError:
            return  # another fork's tag: the B2BUA sends one INVITE per contact, so ignore a stray fork
        if not had_tag and leg.dialog.remote_tag:
            self.by_dialog[leg.dialog.id] = leg

    def cancel_outbound(self, leg: Leg, reason_status: int) -> None:
        """CANCEL an outbound INVITE (§9.1): only after a provisional response; otherwise when one comes."""
        if leg.ended or leg.up:
            return
        if leg.provisional:
            self._send_cancel(leg, reason_status)
        else:
            leg.cancel_pending = True
        leg.final_status = leg.final_status or 487
        self.close_leg(leg)

    def _send_cancel(self, leg: Leg, reason_status: int = 487) -> None:
        invite = leg.invite
        if invite is None or leg.client_key is None:
            return
        assert leg.dialog is not None
        cancel = leg.dialog.create_cancel(invite)
        if reason_status == 200:
            cancel.headers.add("Reason", 'SIP;cause=200;text="Call completed elsewhere"')
        with contextlib.suppress(Exception):
            self.sip.send_request(cancel, leg.destination)
        leg.cancel_pending = False

    # ==== in-dialog requests ======================================================================================
    def send_bye(self, leg: Leg) -> None:
        if leg.dialog is None:
            return
        leg.state = LegState.ENDED
        request = self.in_dialog_request(leg, "BYE")
        self.send_in_dialog(leg, request)

    def in_dialog_request(self, leg: Leg, method: str, *, body: bytes = b"", content_type: str | None = None,
                           headers: Iterable[tuple[str, str]] = ()) -> Request:
        assert leg.dialog is not None
        hop = self._hop(leg)
        host, port = self.sip.local_address(hop)
        extra = [("User-Agent", self.config.user_agent), *headers]
        return leg.dialog.create_request(method, via_host=host, via_port=port, transport=hop[0], body=body,
                                         content_type=content_type, headers=extra)

    def send_in_dialog(self, leg: Leg, request: Request) -> ClientKey | None:
        try:
            key = self.sip.send_request(request, self._hop(leg))
        except Exception:
            log.info("call.request.unsendable", method=request.method, leg=leg.id)
            return None
        leg.pending[key] = request
        self._index_client(leg, key)
        return key

    def _hop(self, leg: Leg) -> Destination:
        """Where in-dialog requests go: the route set's first hop, else the address the peer really uses.

        A phone behind NAT puts its private address in Contact; sending to the source of its INVITE (inbound)
        or of its REGISTER (outbound) is the Contact rewrite of RFC 3581 / RFC 5626 done at the B2BUA.
        """
        dialog = leg.dialog
        if dialog is not None and dialog.route_set:
            return dialog.next_hop()
        return leg.destination

    def _on_in_dialog_response(self, leg: Leg, request: Request, response: Response, key: ClientKey) -> None:
        if response.status in (401, 407) and self._resend_with_credentials(leg, request, response, key):
            return
        if request.method == "PRACK":
            # consumed: a refused PRACK (481 after the dialog moved on, 408) must not end the early dialog or the
            # leg; the INVITE's final response decides (RFC 3262 §4)
            if response.status >= 300:
                log.info("call.prack.refused", leg=leg.id, status=response.status)
            return
        if leg.dialog is not None and response.status >= 200:
            # The transaction matched it by branch; a wrong To tag (pyVoIP answers BYE with a fresh one) must not
            # abort handling the final response, it only leaves the dialog state as it was.
            with contextlib.suppress(DialogError):
                leg.dialog.receive_response(request, response)
        if request.method == "INVITE" and response.status >= 200:
            if leg.reinvite_out == key:
                leg.reinvite_out = None
            if 200 <= response.status < 300:
                ack = leg.dialog.create_ack(request) if leg.dialog is not None else None
                if ack is not None:
                    self.sip.send_stateless(ack, self._hop(leg))
                if response.body and leg.local_offer is not None:
                    with contextlib.suppress(SdpError):
                        self._apply_audio(leg, leg.sdp.process_answer(leg.local_offer,
                                                                      SessionDescription.parse(response.body)))
                    leg.local_offer = None
        if response.status in (408, 481) and request.method != "BYE" and not leg.ended:
            self.leg_ended(leg, HangupSide.SYSTEM, response.status)

    def _resend_with_credentials(self, leg: Leg, request: Request, response: Response, key: ClientKey) -> bool:
        """RFC 3261 §22.2 inside a dialog (providers that challenge BYE or re-INVITE): the same request, the next
        CSeq, with credentials — once: a request that carried credentials and is challenged again has failed."""
        if (leg.credentials is None or leg.dialog is None or "authorization" in request.headers
                or "proxy-authorization" in request.headers):
            return False
        challenge = _challenge_of(response)
        if challenge is None:
            return False
        extra = [(name, value) for name, value in request.headers if name.lower() not in _REBUILT_HEADERS]
        again = self.in_dialog_request(leg, request.method, body=request.body, content_type=request.content_type,
                                       headers=extra)
        _sign(again, response.status, challenge, leg.credentials)
        new_key = self.send_in_dialog(leg, again)
        if new_key is None:
            return False
        if leg.reinvite_out == key:
            leg.reinvite_out = new_key
        log.info("call.request.authenticating", leg=leg.id, method=request.method, status=response.status)
        return True

    def _on_offer(self, leg: Leg, request: Request) -> None:
        """re-INVITE or UPDATE (RFC 3311): a new offer (hold, resume, codec change) or a session refresh."""
        if request.method == "INVITE" and leg.reinvite_out is not None:
            self.sip.respond(request, 491)  # §14.2 glare: the other side retries after a random wait
            return
        if request.method == "INVITE" and leg.state is LegState.ANSWERED:
            self.sip.respond(request, 500, headers=[("Retry-After", "1")])  # §14.2: previous INVITE unACKed
            return
        headers = [("Contact", self.contact(leg)), ("Allow", ALLOW), ("Supported", SUPPORTED_100REL)]
        headers += self.session_timers.uas_headers(leg, request)
        body = b""
        if request.body:
            try:
                offer = SessionDescription.parse(request.body)
                answer, audio = leg.sdp.answer(offer, self.local_media(leg))
            except SdpError as exc:
                self.sip.respond(request, exc.status_hint, reason=reason_text(exc))
                return
            leg.local_answer = answer
            body = answer.serialize()
            self._apply_audio(leg, audio)
        elif request.method == "INVITE":
            leg.local_offer = leg.sdp.offer(self.local_media(leg))  # answer comes in the ACK
            body = leg.local_offer.serialize()
        self.sip.respond(request, 200, headers=headers, body=body, content_type=SDP if body else None)
        if request.method == "INVITE":
            leg.state = LegState.CONFIRMED  # the ACK may carry an answer; _on_ack handles it
        if leg.session_expires:
            self.session_timers.arm(leg)

    def _on_info(self, leg: Leg, request: Request) -> None:
        """SIP INFO DTMF (application/dtmf-relay, application/dtmf) is relayed to the peer as RFC 4733."""
        self.sip.respond(request, 200)
        ctype = (request.content_type or "").lower()
        digit = ""
        text = request.body.decode("utf-8", "replace")
        if "dtmf-relay" in ctype:
            for line in text.splitlines():
                name, _, value = line.partition("=")
                if name.strip().lower() == "signal":
                    digit = value.strip()[:1]
        elif "application/dtmf" in ctype:
            digit = text.strip()[:1]
        if digit and digit in "0123456789*#ABCDabcd":
            self._digit(leg, digit.upper(), "info")

    # ==== checks, helpers =========================================================================================
    def _check_invite(self, request: Request) -> None:
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            raise CallError("Too Many Hops", 483)
        if request.call_id in self.outbound_call_ids:
            raise CallError("Loop Detected", 482)  # our own outbound INVITE came back to us
        try:
            parsed = session_expires(request, strict=True)
        except ValueError:
            raise CallError("Bad Session-Expires", 400) from None
        if parsed is not None and parsed[0] < self.config.min_se_s:
            raise CallError("Session Interval Too Small", 422)

    def contact(self, leg: Leg) -> str:
        host, port = self.sip.local_address(leg.destination)
        shown = f"[{host}]" if ":" in host else host
        transport = leg.destination[0]
        if transport == "tls" and leg.sips:
            return f"<sips:ccpbx@{shown}:{port}>"  # RFC 3261 §12.1.1, RFC 5630 §3.1.3: no transport=tls
        param = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:ccpbx@{shown}:{port}{param}>"

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ==== CDRs ====================================================================================================
    def _cdr_record(self, call: Call) -> CallRecord:
        return CallRecord(
            call_id=call.id, sip_call_id=call.sip_call_id, caller=call.caller.number,
            caller_name=call.caller.name, callee=call.dialled, destination=call.destination,
            start=call.started, answer=call.answered_at, end=call.ended_at,
            disposition=call.disposition or Disposition.INCOMPLETE, hangup_side=call.hangup_side,
            hangup_status=call.hangup_status, legs=tuple(leg.record() for leg in call.legs),
            transfers=tuple(call.transfers), parent_call_id=call.parent_id, data=dict(call.data),
            end_reason=call.end_reason, recording=call.recording)

    def cdr_begin(self, call: Call) -> None:
        if self.cdr is not None:
            self.cdr(call.id, functools.partial(self._cdr_record, call), False)

    def cdr_update(self, call: Call) -> None:
        if self.cdr is not None:
            self.cdr(call.id, functools.partial(self._cdr_record, call), False)

    def _cdr_finish(self, call: Call) -> None:
        if self.cdr is not None:
            self.cdr(call.id, self._cdr_record(call), True)


def _challenge_of(response: Response) -> AuthParams | None:
    """The digest challenge of a 401 (``WWW-Authenticate``) or 407 (``Proxy-Authenticate``) we can answer."""
    header = "www-authenticate" if response.status == 401 else "proxy-authenticate"
    return choose_challenge(response.headers.get_all(header))


def _sign(request: Request, status: int, challenge: AuthParams, credentials: tuple[str, str]) -> None:
    """Add the credentials answering ``challenge`` to ``request`` (RFC 3261 §22.2 for 401, §22.3 for 407)."""
    user, password = credentials
    request.headers.add("Authorization" if status == 401 else "Proxy-Authorization",
                        client_authorization(challenge, method=request.method, uri=str(request.uri), username=user,
                                             password=password, cnonce=new_tag()))


# Headers a request rebuilt in its dialog gets anew (a resend with credentials keeps the others as they were).
_REBUILT_HEADERS = frozenset({"via", "from", "to", "call-id", "cseq", "max-forwards", "content-length",
                              "content-type", "route", "user-agent"})


def reachable_at(contact: SipUri, source: Destination) -> Destination:
    """Where to send requests for a UA whose Contact is ``contact`` and whose messages come from ``source``.

    Over UDP from the address its Contact names, the UA listens where it says (its Contact port). From any
    other address it is behind NAT: its Contact is private, so requests go to the source address and port
    the NAT opened (the Contact rewrite of RFC 3581 / RFC 5626 §5 done at the B2BUA). Connection-oriented
    transports always reuse the connection the UA opened.
    """
    transport = source[0]
    if transport == "udp" and contact.host.lower() == source[1].lower():
        return ("udp", source[1], contact.port or 5060)
    return source


def _reliable_provisional_of(invite: Request) -> str:
    """What an INVITE says about RFC 3262 100rel: ``required``, ``supported`` or ``off``."""
    if "100rel" in invite.header_tokens("require"):
        return "required"
    if "100rel" in invite.header_tokens("supported"):
        return "supported"
    return "off"


def _reliable_rseq(response: Response) -> int | None:
    """The RSeq of a reliable provisional response (RFC 3262 §7.1: a 101-199 with Require: 100rel), else None."""
    if not 100 < response.status < 200 or "100rel" not in response.header_tokens("require"):
        return None
    value = (response.headers.get("rseq") or "").strip()
    if not value.isdigit() or not 0 < int(value) <= 2 ** 32 - 1:
        return None
    return int(value)


def _parse_rack(value: str) -> tuple[int, int, str] | None:
    """``RAck: response-num CSeq-num Method`` (RFC 3262 §7.2), or None when malformed."""
    parts = value.split()
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]), parts[2].upper()


def _media_direction(direction: Direction) -> MediaDirection:
    return MediaDirection[direction._name_]  # not .name: a Python-level descriptor call


def _other_leg(leg: Leg) -> Leg | None:
    """The leg a two-party call bridges (or will bridge) ``leg`` to: the caller for every leg dialled out,
    the answered callee for the caller (None before one answered)."""
    call = leg.call
    return call.b if leg is call.a else call.a


def _disposition_for(status: int | None) -> Disposition:
    if status is None:
        return Disposition.FAILED
    if status == 486 or status == 600:
        return Disposition.BUSY
    if status == 487:
        return Disposition.CANCELLED
    if status in (408, 480):
        return Disposition.NO_ANSWER
    if status in (403, 404, 484, 488, 603, 415, 420, 422, 482, 483):
        return Disposition.REJECTED
    return Disposition.FAILED


def default_music_on_hold(seconds: float = 8.0) -> npt.NDArray[np.int16]:
    """A quiet looping arpeggio (C major, soft attack and decay) for when no WAV is configured."""
    rate = 8000
    notes = (261.63, 329.63, 392.0, 523.25, 392.0, 329.63)
    note_len = int(rate * seconds / len(notes))
    t = np.arange(note_len) / rate
    envelope = np.minimum(1.0, t / 0.03) * np.exp(-2.5 * t)
    pieces = [np.sin(2 * np.pi * f * t) * envelope + 0.3 * np.sin(4 * np.pi * f * t) * envelope for f in notes]
    wave = np.concatenate(pieces)
    pcm: npt.NDArray[np.int16] = (wave / np.max(np.abs(wave)) * 6000).astype(np.int16)
    return pcm
