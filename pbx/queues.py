"""The ACD on real calls: ``queue:NAME`` destinations, agents' phones, callbacks and the queue log.

The decisions are the pure engine's (:mod:`ccpbx.acd`); this adapter turns call and device events into engine
events, carries out its actions, arms one timer for its ``next_deadline()`` and writes every ``QueueLog``
record to SQLite *before* acting on the actions that came with it (so nothing the log says happened is lost,
and nothing happens the log does not say). Events are fed through one queue and handled one at a time.

- A caller reaching ``queue:NAME`` is answered and hears music (or the queue's ``music`` prompt), its position
  and estimated wait when it joins and every ``announce_interval``; the callback key turns it into a callback
  that keeps its place; hanging up is an abandon (position and wait in the log).
- ``OfferContact`` rings the agent's extension as a new leg of the caller's call (caller's number shown,
  queue and attached data in ``X-CCPBX-*`` headers); the answer is bridged when the engine says
  ``ConnectContact``; the engine's own ring timeout cancels it. A leg answered for an offer the engine had
  already withdrawn is hung up.
- The end of a connected call (who hung up first) or the agent's transfer is reported, which starts wrap-up.
- Agents' device state follows registrations and calls: an agent whose phone is unregistered, or busy with a
  call that is not the queue's, is not offered (the engine logs the reason).
- Callbacks: agent-first rings the agent with the customer's number, then dials the customer from that call;
  customer-first dials the customer and offers it like a caller when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ccpbx.acd import events as ev
from ccpbx.acd.engine import AcdEngine
from ccpbx.acd.errors import AcdStateError
from ccpbx.acd.model import (
    AgentProfile,
    AgingStep,
    CallbackMode,
    EngineConfig,
    Membership,
    Strategy,
    ToCallback,
    ToDestination,
)
from ccpbx.acd.model import QueueConfig as EngineQueue
from ccpbx.acd.stats import AgentState
from ccpbx.ivr.flow import number_prompts
from ccpbx.media.source import AudioSource
from ccpbx.pbx.call_types import Party
from ccpbx.pbx.calls import Call, CallError, CallHangup, Leg
from ccpbx.pbx.config import AgentConfig, Config, QueueConfig
from ccpbx.pbx.destinations import Connected, Finished, Outcome, Redirect
from ccpbx.pbx.devicestate import DeviceState
from ccpbx.pbx.dialplan import FeatureCode, FeatureRequest
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.queue_api import AgentAction, AgentCommandError
from ccpbx.pbx.routing import CallRouter

__all__ = ["Queues", "agent_profiles", "engine_queue"]

log = get_logger("ccpbx.acd")

PromptSource = Callable[[str], Awaitable[AudioSource]]
#: writes queue-log records (with their wall-clock time) durably, returning once they are committed
LogSink = Callable[[list[tuple[float, ev.QueueLog]]], Awaitable[None]]
TERMINAL = frozenset({ev.LogKind.COMPLETE_AGENT, ev.LogKind.COMPLETE_CALLER, ev.LogKind.TRANSFER, ev.LogKind.ABANDON,
                      ev.LogKind.OVERFLOW, ev.LogKind.CALLBACK_EXHAUSTED})
MAX_DATA_HEADER = 900  # bytes of attached data shown to the agent's phone
TRANSFER_SETTLE_S = 0.3  # after the agent's leg ends: is the caller still up (transferred) or gone too?

_STRATEGIES = {s.value: s for s in Strategy}


def _parse_levels(items: Iterable[str]) -> dict[str, int]:
    levels: dict[str, int] = {}
    for item in items:
        name, _, level = item.partition(":")
        levels[name] = int(level) if level else 1
    return levels


def _members(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        ext, _, penalty = item.partition(":")
        out[ext] = int(penalty) if penalty else 0
    return out


def engine_queue(q: QueueConfig) -> EngineQueue:
    """The engine's view of a ``[[queue]]``."""
    overflow: ToDestination | ToCallback | None = None
    if q.overflow_to_callback:
        overflow = ToCallback()
    elif q.overflow is not None:
        overflow = ToDestination(str(q.overflow))
    steps: list[AgingStep] = []
    if q.escalate_after is not None and q.escalate_to is not None:
        steps.append(AgingStep(q.escalate_after * 1000, to_queue=q.escalate_to))
    if q.relax_after is not None and q.relax_levels:
        steps.append(AgingStep(q.relax_after * 1000, relax_levels=q.relax_levels))
    return EngineQueue(
        name=q.name, strategy=_STRATEGIES[q.strategy.value], ring_timeout_ms=q.ring_timeout * 1000,
        aging_ms_per_point=q.aging * 1000, aging_steps=tuple(sorted(steps, key=lambda s: s.after_ms)),
        max_wait_ms=None if q.max_wait is None else q.max_wait * 1000,
        on_max_wait=overflow if q.max_wait is not None else None,
        max_length=q.max_length, on_max_length=overflow if q.max_length is not None else None,
        join_empty=q.join_empty, leave_when_empty=q.leave_when_empty,
        on_empty=overflow if (not q.join_empty or q.leave_when_empty) else None,
        on_closed=overflow if q.schedule is not None else None,
        callback_mode=CallbackMode(q.callback_order.value), callback_attempts=q.callback_attempts,
        callback_retry_ms=q.callback_retry * 1000,
        announce_on_join=q.announce_position, announce_interval_ms=q.announce_interval * 1000
        if q.announce_position else 0,
        service_level_ms=q.service_level * 1000,
    )


def agent_profiles(queues: Sequence[QueueConfig], agents: Sequence[AgentConfig],
                   joined: dict[str, set[str]] | None = None) -> dict[str, AgentProfile]:
    """Every agent named by a queue's members or agents, with the queues it serves now (``joined``: the
    queues each dynamic agent logged in to; static members always serve theirs)."""
    by_ext = {a.extension: a for a in agents}
    memberships: dict[str, dict[str, Membership]] = {}
    wrap: dict[str, int] = {}
    for q in queues:
        for ext, penalty in (_members(q.members) | _members(q.agents)).items():
            memberships.setdefault(ext, {})
            wrap[ext] = max(wrap.get(ext, 0), q.wrap_up)
            static = ext in _members(q.members)
            if static or joined is None or q.name in joined.get(ext, set()):
                memberships[ext][q.name] = Membership(penalty=penalty)
    profiles = {}
    for ext, queues_of in memberships.items():
        cfg = by_ext.get(ext)
        wrap_s = cfg.wrap_up if cfg is not None and cfg.wrap_up is not None else wrap.get(ext, 0)
        profiles[ext] = AgentProfile(
            agent_id=ext, skills=_parse_levels(cfg.skills) if cfg is not None else {}, queues=queues_of,
            wrap_up_ms=wrap_s * 1000, auto_pause_after=cfg.auto_pause_after if cfg is not None else None)
    return profiles


@dataclass(eq=False)
class _Contact:
    id: str
    queue: str
    call: Call | None  # the call the customer is on (None: a callback waiting for its turn)
    customer: Leg | None
    number: str  # the customer's number (callbacks dial it)
    data: dict[str, object]
    done: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ringing: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    answered: dict[str, Leg] = field(default_factory=dict)
    agent: str | None = None
    agent_leg: Leg | None = None
    connected: bool = False
    announcing: asyncio.Task[None] | None = None
    released: bool = False  # the caller hung up for a callback: its leg ending is no abandon
    transferred: bool = False  # reported as transferred (the caller reached a queue again)


class Queues:
    """The ``queue`` destination handler and the ACD's runtime (see the module docstring)."""

    def __init__(self, router: CallRouter, config: Config) -> None:
        self.router = router
        self.config = config
        self.sink: LogSink | None = None
        self.prompts: PromptSource | None = None
        self.settings = {q.name: q for q in config.queue}
        self.static = {ext for q in config.queue for ext in _members(q.members)}
        self.joined: dict[str, set[str]] = {}  # dynamic agent -> queues it is logged in to
        self.profiles = agent_profiles(config.queue, config.agent, self.joined)
        self.engine = AcdEngine(queues=[engine_queue(q) for q in config.queue],
                                agents=list(self.profiles.values()), config=EngineConfig())
        self.contacts: dict[str, _Contact] = {}
        self.device_sent: dict[str, bool] = {}
        self._events: asyncio.Queue[tuple[ev.Event, asyncio.Future[list[ev.Action]] | None]] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seq = itertools.count(1)
        self._opened: dict[str, bool] = {}
        self._t0 = time.monotonic()
        self._wall0 = time.time()
        self.devices: Callable[[str], DeviceState] | None = None
        self.reset_at = self._wall0
        self._lock = asyncio.Lock()  # one engine step at a time (the pump, agent re-configuration)
        self.save_logins: Callable[[dict[str, list[str]]], Awaitable[None]] | None = None

    # -- wiring ---------------------------------------------------------------------------------------------
    def validate(self, target: str) -> str | None:
        if target not in self.settings:
            known = ", ".join(sorted(self.settings)) or "none"
            return f"names queue {target!r}, which is not defined (queues: {known})"
        return None

    async def start(self, *, sink: LogSink, prompts: PromptSource,
                    devices: Callable[[str], DeviceState] | None = None,
                    logins: Mapping[str, Sequence[str]] | None = None,
                    save_logins: Callable[[dict[str, list[str]]], Awaitable[None]] | None = None) -> None:
        """Begin serving: static members log in, dynamic agents logged in before a restart (``logins``: agent ->
        queues) log in again, device states are taken, the event pump runs. ``save_logins`` keeps them."""
        self.sink = sink
        self.prompts = prompts
        self.save_logins = save_logins
        for ext, queues in (logins or {}).items():
            serves = {q.name for q in self.config.queue if ext in _members(q.agents)}
            if set(queues) & serves:
                self.joined[ext] = set(queues) & serves
        if self.joined:
            self.profiles = agent_profiles(self.config.queue, self.config.agent, self.joined)
            for profile in self.profiles.values():
                self.engine.set_agent(profile)
        self.devices = devices
        self._events = asyncio.Queue()
        self._pump = asyncio.get_running_loop().create_task(self._run())
        self._midnight()
        for ext in sorted(self.profiles):
            if devices is not None:
                self.device_changed(ext, devices(ext))
            if ext in self.static or self.joined.get(ext):
                self.feed(ev.AgentLoggedIn(ext))

    def _midnight(self) -> None:
        """Statistics count "since midnight" (local time): reset them then, and every midnight after."""
        now = datetime.now().astimezone()
        tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        self._reset_timer = asyncio.get_running_loop().call_later(
            max(1.0, (tomorrow - now).total_seconds()), self._reset_statistics)

    def _reset_statistics(self) -> None:
        self.feed(ev.StatisticsReset())
        self.reset_at = time.time()
        self._midnight()

    async def stop(self) -> None:
        if self._reset_timer is not None:
            self._reset_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        for task in list(self._tasks):
            task.cancel()

    # -- the event pump ---------------------------------------------------------------------------------------
    def _now(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _wall(self, ms: int) -> float:
        return self._wall0 + ms / 1000

    def feed(self, event: ev.Event) -> None:
        """Hand the engine an event (handled in order, after what is already queued)."""
        if self._events is not None:
            self._events.put_nowait((event, None))

    async def ask(self, event: ev.Event) -> list[ev.Action]:
        """Feed ``event`` and wait until it has been handled (its log rows written); its actions."""
        assert self._events is not None
        done: asyncio.Future[list[ev.Action]] = asyncio.get_running_loop().create_future()
        self._events.put_nowait((event, done))
        return await done

    async def _run(self) -> None:
        assert self._events is not None
        while True:
            event, done = await self._events.get()
            try:
                actions = await self._handle(event)
            except Exception as exc:  # one bad event must not stop the ACD
                log.exception("acd.event.failed", event=type(event).__name__)
                if done is not None and not done.done():
                    done.set_exception(exc)
                continue
            if done is not None and not done.done():
                done.set_result(actions)

    async def _handle(self, event: ev.Event | None, profile: AgentProfile | None = None) -> list[ev.Action]:
        async with self._lock:
            return await self._step(event, profile)

    async def _step(self, event: ev.Event | None, profile: AgentProfile | None) -> list[ev.Action]:
        now = self._now()
        try:
            if profile is not None:
                actions = self.engine.update_agent(profile, now)
            else:
                assert event is not None
                actions = self.engine.handle(event, now)
        except AcdStateError as exc:
            log.warning("acd.event.refused", event=type(event).__name__, error=str(exc))
            raise AgentCommandError(str(exc)) from exc
        rows = [a for a in actions if isinstance(a, ev.QueueLog)]
        if rows and self.sink is not None:
            await self.sink([(self._wall(r.time_ms), r) for r in rows])  # durable before acting
        for row in rows:
            fields = {"queue": row.queue, "contact": row.contact_id, "agent": row.agent_id, "wait_ms": row.wait_ms,
                      "talk_ms": row.talk_ms, "ring_ms": row.ring_ms, "position": row.position,
                      "reason": row.reason, "target": row.target, "attempt": row.attempt}
            log.info(f"acd.{row.kind.value}", **{k: v for k, v in fields.items() if v is not None})
        for action in actions:
            if not isinstance(action, ev.QueueLog):
                self._carry_out(action)
        if isinstance(event, ev.OfferAnswered):
            self._drop_unwanted_answer(event, actions)
        for row in rows:
            if row.kind in TERMINAL and row.contact_id is not None:
                self.contacts.pop(row.contact_id, None)
        self._arm()
        return actions

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.engine.next_deadline()
        if deadline is None:
            return
        delay = max(0.0, (deadline - self._now()) / 1000)
        self._timer = asyncio.get_running_loop().call_later(delay + 0.001, self.feed, ev.TimerFired())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    # -- the destination --------------------------------------------------------------------------------------
    async def __call__(self, call: Call, target: str, number: str) -> Outcome:
        settings = self.settings.get(target)
        if settings is None or self._events is None:
            await call.reject(404 if settings is None else 503)
            return Finished()
        request, call.queue_request = call.queue_request, None
        for old in self.contacts.values():  # an agent's transfer into a queue: the old contact ends first
            if old.connected and old.customer is call.a and not old.transferred:
                old.transferred = True
                self.feed(ev.ContactTransferred(old.id, f"queue:{target}"))
        await call.answer()
        contact = _Contact(id=f"{call.id}-{next(self._seq)}", queue=target, call=call, customer=call.a,
                           number=call.caller.number, data=call.data)
        self.contacts[contact.id] = contact
        self._music(contact)
        self._check_schedule(settings)
        skills = _parse_levels(settings.skills) | (dict(request.skills) if request is not None else {})
        priority = request.priority if request is not None and request.priority is not None else 0
        self.feed(ev.ContactArrived(contact.id, target, priority=priority, skills=skills, data=dict(call.data),
                                    callback_number=call.caller.number or None))
        return await self._wait(contact)

    async def _wait(self, contact: _Contact) -> Outcome:
        call, leg = contact.call, contact.customer
        assert call is not None and leg is not None
        key = self.settings[contact.queue].callback_key
        gone: asyncio.Future[Any] = asyncio.ensure_future(leg.gone.wait())
        try:
            while not contact.done.done():
                digit: asyncio.Future[Any] = asyncio.ensure_future(call.next_digit(leg))
                waits: set[asyncio.Future[Any]] = {contact.done, gone, digit}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not digit.done():
                    digit.cancel()
                    with contextlib.suppress(asyncio.CancelledError, CallHangup):
                        await digit
                elif not digit.cancelled():
                    digit.exception()  # retrieved (a CallHangup when the caller left): no "never retrieved" noise
                if contact.done.done():
                    break
                if gone.done() or leg.ended:
                    if not contact.released:
                        self.feed(ev.ContactAbandoned(contact.id))
                    return Finished()
                pressed = digit.result() if digit.done() and not digit.cancelled() and not digit.exception() \
                    else None
                if key and pressed == key and not contact.released:
                    contact.released = True
                    self.feed(ev.CallbackRequested(contact.id, number=contact.number))
                    await self._goodbye(contact, "queue-callback-confirmed")
                    return Finished()
        finally:
            gone.cancel()
        return contact.done.result()

    async def _goodbye(self, contact: _Contact, prompt: str) -> None:
        call = contact.call
        contact.call, contact.customer = None, None
        if call is None:
            return
        with contextlib.suppress(CallHangup, Exception):
            if self.prompts is not None:
                await call.play(await self.prompts(prompt))
        if not call.finished:
            call.hangup()

    def _music(self, contact: _Contact) -> None:
        call, leg = contact.call, contact.customer
        if call is None or leg is None or leg.ended or contact.connected:
            return
        settings = self.settings[contact.queue]
        if settings.music and self.prompts is not None:
            self._spawn(self._loop_prompt(contact, settings.music))
            return
        with contextlib.suppress(CallHangup):
            call.park(leg)

    async def _loop_prompt(self, contact: _Contact, name: str) -> None:
        assert self.prompts is not None
        while contact.call is not None and contact.customer is not None and not contact.connected \
                and not contact.customer.ended and contact.announcing is None:
            try:
                await contact.call.play(await self.prompts(name), leg=contact.customer)
            except CallHangup:
                return

    def _check_schedule(self, settings: QueueConfig) -> None:
        if settings.schedule is None:
            return
        try:
            is_open = self.router.in_schedule(settings.schedule)
        except KeyError:
            return
        if self._opened.get(settings.name, True) != is_open:
            self._opened[settings.name] = is_open
            self.feed(ev.QueueOpened(settings.name) if is_open else ev.QueueClosed(settings.name))

    # -- actions ----------------------------------------------------------------------------------------------
    def _carry_out(self, action: ev.Action) -> None:
        contact = self.contacts.get(getattr(action, "contact_id", ""))
        if contact is None:
            return  # a contact this adapter no longer tracks (ended on our side first)
        match action:
            case ev.OfferContact():
                self._offer(contact, action)
            case ev.CancelOffer():
                self._cancel_offer(contact, action.agent_id)
            case ev.ConnectContact():
                self._connect(contact, action.agent_id)
            case ev.OverflowContact():
                self._overflow(contact, action.destination)
            case ev.MoveContact():
                contact.queue = action.to_queue
            case ev.ReleaseForCallback():
                if contact.call is not None:
                    contact.released = True
                    self._spawn(self._goodbye(contact, "queue-callback-confirmed"))
            case ev.StartCallback():
                self._spawn(self._callback(contact, action))
            case ev.Announce():
                self._announce(contact, action.position, action.ewt_s)
            case _:
                pass

    def _offer(self, contact: _Contact, offer: ev.OfferContact) -> None:
        if offer.callback_number is not None and contact.call is None:
            task = asyncio.ensure_future(self._ring_for_callback(contact, offer))
        else:
            task = asyncio.ensure_future(self._ring(contact, offer))
        contact.ringing[offer.agent_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    def _headers(self, contact: _Contact) -> list[tuple[str, str]]:
        headers = [("X-CCPBX-Queue", contact.queue), ("X-CCPBX-Contact", contact.id)]
        if contact.data:
            text = json.dumps(contact.data, separators=(",", ":"), default=str, ensure_ascii=True)
            if len(text) <= MAX_DATA_HEADER:
                headers.append(("X-CCPBX-Data", text))
        return headers

    async def _ring(self, contact: _Contact, offer: ev.OfferContact) -> None:
        call = contact.call
        if call is None:
            self.feed(ev.OfferRejected(contact.id, offer.agent_id, "caller gone"))
            return
        try:
            # the engine's own timer ends the ring (CancelOffer); ours only backs it up
            leg = await call.call_out(f"extension:{offer.agent_id}", timeout_s=offer.timeout_ms / 1000 + 5,
                                      headers=self._headers(contact))
        except CallHangup:
            return  # the caller left: the waiting loop reports the abandon
        except CallError as exc:
            self.feed(ev.OfferRejected(contact.id, offer.agent_id, f"{exc.status_hint}"))
            return
        finally:
            contact.ringing.pop(offer.agent_id, None)
        contact.answered[offer.agent_id] = leg
        self.feed(ev.OfferAnswered(contact.id, offer.agent_id))

    def _cancel_offer(self, contact: _Contact, agent: str) -> None:
        task = contact.ringing.pop(agent, None)
        if task is not None and not task.done():
            task.cancel()
        leg = contact.answered.pop(agent, None)
        if leg is not None and contact.call is not None:
            self._hang_up_leg(contact.call, leg)

    def _drop_unwanted_answer(self, answered: ev.OfferAnswered, actions: list[ev.Action]) -> None:
        """An agent who answered an offer the engine had withdrawn (the caller left, another agent won)."""
        wanted = any(isinstance(a, ev.ConnectContact | ev.StartCallback) and a.contact_id == answered.contact_id
                     and a.agent_id == answered.agent_id for a in actions)
        contact = self.contacts.get(answered.contact_id)
        if wanted or contact is None:
            return
        leg = contact.answered.pop(answered.agent_id, None)
        if leg is not None and contact.call is not None:
            self._hang_up_leg(contact.call, leg)

    @staticmethod
    def _hang_up_leg(call: Call, leg: Leg) -> None:
        if leg.ended:
            return
        if leg.call is not call or leg is call.a:
            leg.call.hangup()
            return
        manager = call.manager
        manager.send_bye(leg)
        manager.close_leg(leg)

    def _connect(self, contact: _Contact, agent: str) -> None:
        leg = contact.answered.pop(agent, None)
        call, customer = contact.call, contact.customer
        if leg is None or call is None or customer is None or customer.ended or leg.ended:
            # one side left between the answer and now: the contact ends at once
            if leg is not None and call is not None:
                self._hang_up_leg(call, leg)
            agent_first = leg is not None and leg.ended and (customer is None or not customer.ended or (
                leg.ended_at or 0) <= (customer.ended_at or 0))
            self.feed(ev.ContactEnded(contact.id, ev.EndedBy.AGENT if agent_first else ev.EndedBy.CALLER))
            return
        if contact.announcing is not None:
            contact.announcing.cancel()
            contact.announcing = None
        contact.connected = True
        contact.agent, contact.agent_leg = agent, leg
        call.stop_play(customer)
        call.bridge(customer, leg)
        call.end_when(customer, leg)
        if not contact.done.done():
            contact.done.set_result(Connected())
        self._spawn(self._watch(contact, customer, leg))

    async def _watch(self, contact: _Contact, customer: Leg, agent_leg: Leg) -> None:
        """Report how a connected contact ends: who hung up first, or the agent's transfer."""
        first = await _first_gone(customer, agent_leg)
        if contact.transferred:
            return
        if first is agent_leg:
            if customer.ended or customer.call is contact.call:  # not handed over (yet): a moment to tell
                await asyncio.sleep(TRANSFER_SETTLE_S)
            if contact.transferred:
                return
            if not customer.ended:
                contact.transferred = True
                self.feed(ev.ContactTransferred(contact.id, customer.call.destination or "transfer"))
                self.contacts.pop(contact.id, None)
                return
        self.feed(ev.ContactEnded(contact.id, ev.EndedBy.AGENT if first is agent_leg else ev.EndedBy.CALLER))
        self.contacts.pop(contact.id, None)

    def _overflow(self, contact: _Contact, destination: str) -> None:
        self.contacts.pop(contact.id, None)
        if contact.done.done():
            return
        try:
            target, number = self.router.resolve(destination, contact.number)
        except ValueError:
            log.warning("acd.overflow.unroutable", destination=destination)
            contact.done.set_result(Finished())
            return
        contact.done.set_result(Redirect(target, number))

    # -- announcements ------------------------------------------------------------------------------------------
    def _announce(self, contact: _Contact, position: int, ewt_s: int | None) -> None:
        if contact.call is None or contact.connected or self.prompts is None or contact.announcing is not None:
            return
        contact.announcing = asyncio.ensure_future(self._say_position(contact, position, ewt_s))
        self._tasks.add(contact.announcing)
        contact.announcing.add_done_callback(self._tasks.discard)

    async def _say_position(self, contact: _Contact, position: int, ewt_s: int | None) -> None:
        assert self.prompts is not None
        names = ["queue-position", *number_prompts(position)]
        if ewt_s is not None:
            minutes = (ewt_s + 59) // 60
            names += ["queue-wait", *(["queue-less-than-minute"] if ewt_s < 60 else
                                      [*number_prompts(minutes), "minute" if minutes == 1 else "minutes"])]
        key = self.settings[contact.queue].callback_key
        if key:
            names += ["queue-callback-offer", {"*": "star", "#": "pound"}.get(key, key)]
        try:
            for name in names:
                call, leg = contact.call, contact.customer
                if call is None or leg is None or contact.connected:
                    return
                await call.play(await self.prompts(name), leg=leg)
        except (CallHangup, asyncio.CancelledError):
            return
        finally:
            contact.announcing = None
            if not contact.connected:
                self._music(contact)

    # -- callbacks --------------------------------------------------------------------------------------------
    async def _ring_for_callback(self, contact: _Contact, offer: ev.OfferContact) -> None:
        """Agent-first: ring the agent (showing the customer's number) on a call of its own."""
        try:
            call = await self.router.originate(
                f"extension:{offer.agent_id}", caller=Party(contact.number, "Callback"),
                timeout_s=offer.timeout_ms / 1000 + 5, headers=self._headers(contact), data=dict(contact.data))
        except CallError as exc:
            self.feed(ev.OfferRejected(contact.id, offer.agent_id, f"{exc.status_hint}"))
            return
        finally:
            contact.ringing.pop(offer.agent_id, None)
        contact.call = call
        contact.answered[offer.agent_id] = call.a
        self.feed(ev.OfferAnswered(contact.id, offer.agent_id))

    async def _callback(self, contact: _Contact, start: ev.StartCallback) -> None:
        agent_leg = contact.answered.get(start.agent_id)
        if agent_leg is not None and contact.call is not None:  # agent-first: the agent waits on its call
            call = contact.call
            try:
                call.park(agent_leg)
                leg = await call.call_out(start.number, timeout_s=30)
            except (CallError, CallHangup) as exc:
                contact.answered.pop(start.agent_id, None)
                if not call.finished:
                    call.hangup()
                contact.call = None
                self.feed(ev.CallbackFailed(contact.id, str(getattr(exc, "status_hint", "hangup"))))
                return
            contact.answered[start.agent_id] = agent_leg
            contact.customer = leg
            self.feed(ev.CallbackAnswered(contact.id))
            return
        try:  # customer-first: the customer on a call of its own, offered like a caller when it answers
            call = await self.router.originate(start.number, caller=Party(contact.queue, "Callback"),
                                               timeout_s=30, data=dict(contact.data))
        except CallError as exc:
            self.feed(ev.CallbackFailed(contact.id, str(exc.status_hint)))
            return
        contact.call, contact.customer, contact.released = call, call.a, False
        call.caller = Party(contact.number, "Callback")  # what the agent's phone shows when it is offered
        self._music(contact)
        self.feed(ev.CallbackAnswered(contact.id))
        self._spawn(self._serve_callback(contact))

    async def _serve_callback(self, contact: _Contact) -> None:
        call = contact.call
        assert call is not None
        outcome = await self._wait(contact)
        if isinstance(outcome, Connected):
            await self.router.converse(call)
        if not call.finished:
            call.hangup()

    # -- agents: devices, commands, feature codes ----------------------------------------------------------------
    def device_changed(self, ext: str, state: DeviceState) -> None:
        """A device-state listener: an agent whose phone is unregistered or busy outside the queue is skipped."""
        if ext not in self.profiles:
            return
        engaged = any(ext in c.ringing or ext in c.answered or c.agent == ext for c in self.contacts.values())
        if state is DeviceState.UNAVAILABLE:
            available, reason = False, "not registered"
        elif state is DeviceState.IDLE or engaged:
            available, reason = True, "registered"
        else:
            available, reason = False, f"in use ({state.value})"
        if self.device_sent.get(ext) != available:
            self.device_sent[ext] = available
            self.feed(ev.DeviceStateChanged(ext, available, reason))

    async def agent_command(self, extension: str, action: AgentAction, *, queue: str | None = None,
                            reason: str | None = None) -> None:
        if extension not in self.profiles:
            raise AgentCommandError(f"{extension} is not an agent of any queue")
        if queue is not None and queue not in self.settings:
            raise AgentCommandError(f"no queue {queue!r}")
        serves = {q.name for q in self.config.queue if extension in _members(q.members) | _members(q.agents)}
        if queue is not None and queue not in serves:
            raise AgentCommandError(f"{extension} is not an agent of queue {queue}")
        state = self.engine.agent_state(extension)
        if action in (AgentAction.LOGIN, AgentAction.LOGOUT) and extension not in self.static:
            joined = self.joined.setdefault(extension, set())
            if action is AgentAction.LOGIN:
                joined |= {queue} if queue is not None else serves
            else:
                joined -= {queue} if queue is not None else serves
            self.profiles = agent_profiles(self.config.queue, self.config.agent, self.joined)
            await self._ask_update(self.profiles[extension])
            if self.save_logins is not None:  # dynamic logins survive a restart
                await self.save_logins({ext: sorted(qs) for ext, qs in self.joined.items() if qs})
            if action is AgentAction.LOGIN and state is AgentState.LOGGED_OUT:
                await self.ask(ev.AgentLoggedIn(extension))
            elif action is AgentAction.LOGOUT and not joined and state is not AgentState.LOGGED_OUT:
                await self.ask(ev.AgentLoggedOut(extension, reason or "logout"))
            return
        if action is AgentAction.LOGIN:
            if state is AgentState.LOGGED_OUT:
                await self.ask(ev.AgentLoggedIn(extension))
        elif action is AgentAction.LOGOUT:
            if state is not AgentState.LOGGED_OUT:
                await self.ask(ev.AgentLoggedOut(extension, reason or "logout"))
        elif action is AgentAction.PAUSE:
            if state is AgentState.LOGGED_OUT:
                raise AgentCommandError(f"{extension} is not logged in")
            await self.ask(ev.AgentPaused(extension, reason or "break"))
        elif action is AgentAction.UNPAUSE:
            if state is AgentState.PAUSED:
                await self.ask(ev.AgentUnpaused(extension))

    async def _ask_update(self, profile: AgentProfile) -> None:
        """Change an agent's queues (after the events already queued, one engine step at a time)."""
        await self.ask(ev.TimerFired())
        await self._handle(None, profile)

    async def feature(self, call: Call, request: FeatureRequest) -> None:
        """The agent feature codes: *61 login, *62 logout (+ a queue number: that queue), *63 pause (+ reason
        digits), *64 unpause. The phone hears a confirmation, then the call ends."""
        ext = call.caller.number
        action = {FeatureCode.AGENT_LOGIN: AgentAction.LOGIN, FeatureCode.AGENT_LOGOUT: AgentAction.LOGOUT,
                  FeatureCode.AGENT_PAUSE: AgentAction.PAUSE, FeatureCode.AGENT_UNPAUSE: AgentAction.UNPAUSE}[
            request.code]
        queue = None
        reason = None
        if action in (AgentAction.LOGIN, AgentAction.LOGOUT) and request.argument:
            queue = next((q.name for q in self.config.queue if q.number == request.argument), request.argument)
        elif action is AgentAction.PAUSE and request.argument:
            reason = f"code-{request.argument}"
        try:
            await self.agent_command(ext, action, queue=queue, reason=reason)
            prompt = {AgentAction.LOGIN: "agent-logged-in", AgentAction.LOGOUT: "agent-logged-out",
                      AgentAction.PAUSE: "agent-paused", AgentAction.UNPAUSE: "agent-unpaused"}[action]
        except AgentCommandError as exc:
            log.info("acd.agent.refused", ext=ext, action=action.value, error=str(exc))
            prompt = "agent-not-agent"
        try:
            await call.answer()
            if self.prompts is not None:
                await call.play(await self.prompts(prompt))
        except CallHangup:
            return
        call.hangup()

    # -- live figures -------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        snap = self.engine.snapshot(self._now())
        queues = []
        for q in snap.queues:
            queues.append({
                "name": q.name, "open": q.open, "waiting": q.waiting, "callbacks_waiting": q.callbacks_waiting,
                "ringing": q.ringing, "longest_wait_s": round(q.longest_wait_ms / 1000, 1), "staffed": q.staffed,
                "agents": {state.value: n for state, n in q.agents_by_state.items() if n},
                "answered": q.answered, "answered_within_sl": q.answered_within_sl, "abandoned": q.abandoned,
                "overflowed": q.overflowed, "callbacks_requested": q.callbacks_requested,
                "callbacks_completed": q.callbacks_completed, "service_level": q.service_level,
                "service_level_s": self.settings[q.name].service_level if q.name in self.settings else None,
                "asa_s": None if q.asa_ms is None else round(q.asa_ms / 1000, 1), "ewt_s": q.ewt_s,
            })
        agents = []
        for a in snap.agents:
            profile = self.profiles.get(a.agent_id)
            agents.append({
                "extension": a.agent_id, "state": a.state.value,
                "time_in_state_s": round(a.time_in_state_ms / 1000, 1), "pause_reason": a.pause_reason,
                "device_available": a.device_available, "device_reason": a.device_reason, "answered": a.answered,
                "queues": sorted(profile.queues) if profile is not None else [],
            })
        return {"queues": queues, "agents": agents,
                "since": datetime.fromtimestamp(self.reset_at, UTC).isoformat(timespec="seconds")}


async def _first_gone(*legs: Leg) -> Leg:
    """The leg that ended first (its ``gone`` was set first: the one that sent BYE, before the call ended
    the others in the same step)."""
    first: asyncio.Future[Leg] = asyncio.get_running_loop().create_future()
    waits = []

    def ended(leg: Leg) -> Callable[[asyncio.Future[Any]], None]:
        return lambda _w: None if first.done() else first.set_result(leg)

    for leg in legs:
        wait = asyncio.ensure_future(leg.gone.wait())
        wait.add_done_callback(ended(leg))
        waits.append(wait)
    try:
        return await first
    finally:
        for w in waits:
            w.cancel()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("acd.task.failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
