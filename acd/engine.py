"""The ACD decision engine: pure, clock-injected, events in and actions out, one next deadline.

Use::

    engine = AcdEngine(queues=[QueueConfig("sales")], agents=[AgentProfile("a1", queues={"sales": Membership()})])
    actions = engine.handle(AgentLoggedIn("a1"), now_ms)
    actions = engine.handle(ContactArrived("call-1", "sales"), now_ms)   # -> [QueueLog(ENTER), OfferContact, ...]
    deadline = engine.next_deadline()       # arm one timer; when it fires: engine.handle(TimerFired(), now_ms)

``now`` is integer monotonic milliseconds and never goes backwards. Every ``handle`` first runs the timers due
at ``now`` (ring timeouts, overflow, aging steps, announcements, wrap-up and rest ends, callback retries), then
the event, then routes until no free qualified agent and waiting contact remain (work-conserving). The returned
list is ordered; ``QueueLog`` records are in it where they happen, and the adapter writes them before acting.

Events (``ccpbx.acd.events``) the adapter sends
-----------------------------------------------
``ContactArrived(contact_id, queue, priority=0, channel=None, skills={}, preferred_skills=frozenset(), data={},
callback_number=None)``
    A call/chat/e-mail enters a queue. ``skills`` maps each required skill to a minimum level 1..10.
``OfferAnswered(contact_id, agent_id)`` / ``OfferRejected(contact_id, agent_id, reason)``
    The agent answered / declined (or could not be rung) an ``OfferContact``. A rejection counts as a miss.
``ContactEnded(contact_id, ended_by: EndedBy.AGENT|CALLER)`` / ``ContactTransferred(contact_id, destination)``
    A connected contact ended or was transferred away by the agent; the agent goes to wrap-up.
``ContactAbandoned(contact_id)``
    The caller hung up before being connected (also: a waiting callback cancelled).
``CallbackRequested(contact_id, number=None)``
    A waiting caller pressed the callback key; it keeps its place; the adapter then hangs the caller up.
``CallbackAnswered(contact_id)`` / ``CallbackFailed(contact_id, reason)``
    The outcome of a ``StartCallback``.
``AgentLoggedIn(agent_id)``, ``AgentLoggedOut(agent_id, reason)``, ``AgentPaused(agent_id, reason)``,
``AgentUnpaused(agent_id)``, ``AgentReady(agent_id)`` (ends wrap-up early),
``DeviceStateChanged(agent_id, available, reason)``
    Agents are configured with ``AgentProfile`` (constructor or ``set_agent``) and start logged out.
``QueueOpened(queue)`` / ``QueueClosed(queue)``
    The schedule, decided elsewhere. Queues start open.
``StatisticsReset(queue=None)``, ``TimerFired()``
    Counters reset (midnight); the adapter's timer for ``next_deadline()`` went off.

Actions the adapter carries out
-------------------------------
``OfferContact(contact_id, agent_id, queue, timeout_ms, callback_number)``
    Ring the agent (``callback_number`` set: an agent-first callback, the customer is not on the line).
``CancelOffer(contact_id, agent_id, reason: CancelReason)``
    Stop ringing that agent (timeout, answered elsewhere, caller left, logged out, overflow, callback).
``ConnectContact(contact_id, agent_id)``
    Bridge the two.
``OverflowContact(contact_id, queue, destination, reason)``
    The contact has left the engine: route the caller to the dial-plan destination.
``MoveContact(contact_id, from_queue, to_queue, reason)``
    The contact now waits in another queue (overflow or escalation); it stays in the engine.
``ReleaseForCallback(contact_id, number)``
    Overflow to callback: tell the caller it will be called back, hang up; the contact keeps its place.
``StartCallback(contact_id, agent_id, number, attempt)``
    Dial the customer. Agent-first: the agent answered and waits. Customer-first: the agent is held, not rung;
    after ``CallbackAnswered`` the engine sends an ``OfferContact`` to it and proceeds as for a live caller.
``Announce(contact_id, position, ewt_s)``
    Tell the caller its position and estimated wait, at join and every ``announce_interval_ms``.
``QueueLog(time_ms, kind: LogKind, queue, contact_id, agent_id, wait_ms, talk_ms, ring_ms, position, target,
reason, attempt)``
    One queue-log row: enter, offer, ring-no-answer, offer-rejected, connect, complete-agent/-caller, abandon,
    transfer, overflow, escalate, callback-requested/-attempted/-failed/-completed/-exhausted, login, logout,
    pause, unpause, device-unavailable/-available.

Every contact ends in exactly one terminal record: ``COMPLETE_AGENT``, ``COMPLETE_CALLER``, ``TRANSFER``,
``ABANDON``, ``OVERFLOW`` to a destination (``OverflowContact``) or ``CALLBACK_EXHAUSTED``; after it the engine
forgets the id. Races with the engine's own timers are tolerated: an ``OfferAnswered``/``OfferRejected`` for an
offer the engine withdrew, or a ``ContactAbandoned`` for a contact it just overflowed, is ignored (the adapter
has the ``CancelOffer``/``OverflowContact`` in the same or an earlier list; it hangs the answering agent up).
Any other event naming an unknown or ended contact or agent raises :class:`AcdStateError`.

Model notes: a contact is offered only to agents that are logged in, not paused, not in wrap-up or rest, below
their capacity on the contact's channel (voice: one), with an available device (voice), members of the queue,
and holding every required skill at its level. Among those, the lowest penalty tier, then those with the most
preferred skills, then the queue's strategy. An agent becoming free takes the best contact it qualifies for:
lowest penalty queue first, then highest effective priority, then earliest arrival.

Indexes: each queue keeps its waiting contacts in a sorted list keyed ``(key, seq)``, where ``key`` is
``entered_ms - priority * aging_ms_per_point`` (or ``-priority`` without aging). Linear aging at one rate per queue
never reorders contacts, so nothing is re-sorted as time passes; steps (more priority, relaxed skills, another
queue) are deadlines that remove and reinsert one contact. Contacts are also kept per requirement class
(channel, required skills), so a freed agent looks at the head of each class it qualifies for, not at every
contact; free agents are kept per queue and channel.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from ccpbx.acd.errors import AcdStateError
from ccpbx.acd.events import (
    Action,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentPaused,
    AgentReady,
    AgentUnpaused,
    Announce,
    CallbackAnswered,
    CallbackFailed,
    CallbackRequested,
    CancelOffer,
    CancelReason,
    ConnectContact,
    ContactAbandoned,
    ContactArrived,
    ContactEnded,
    ContactTransferred,
    DeviceStateChanged,
    EndedBy,
    Event,
    LogKind,
    MoveContact,
    OfferAnswered,
    OfferContact,
    OfferRejected,
    OverflowContact,
    QueueClosed,
    QueueLog,
    QueueOpened,
    ReleaseForCallback,
    StartCallback,
    StatisticsReset,
    TimerFired,
)
from ccpbx.acd.model import (
    AgentProfile,
    CallbackMode,
    Channel,
    EngineConfig,
    Membership,
    OverflowTarget,
    QueueConfig,
    Strategy,
    ToCallback,
    ToDestination,
)
from ccpbx.acd.stats import (
    AgentSnapshot,
    AgentState,
    EngineSnapshot,
    HandleTimes,
    QueueCounters,
    QueueSnapshot,
    estimated_wait_ms,
)
from ccpbx.acd.strategies import Candidate, choose

ClassKey = tuple[str, tuple[tuple[str, int], ...]]  # (channel value, required skills): plain str hashes fast
_K = TypeVar("_K")
_RECENT = 4_096  # how many ended contacts and withdrawn offers are remembered for races
Entry = tuple[float, int, str]  # (key, seq, contact_id): the sort order of waiting contacts


class ContactState(enum.Enum):
    WAITING = "waiting"  # in its queue's lists (a live caller, or a callback keeping its place)
    OFFERED = "offered"  # ringing one agent (several with ring-all)
    CALLBACK_DIALING = "callback-dialing"  # StartCallback sent
    CALLBACK_RETRY = "callback-retry"  # the customer did not answer; back in the queue at the retry deadline
    CONNECTED = "connected"


class _TimerKind(enum.Enum):
    OFFER_TIMEOUT = 1
    MAX_WAIT = 2
    AGING_STEP = 3
    ANNOUNCE = 4
    WRAP_END = 5
    REST_END = 6
    CALLBACK_RETRY = 7


class _Timer:
    __slots__ = ("agent", "at", "cancelled", "contact", "kind", "step")

    def __init__(self, at: int, kind: _TimerKind, contact: _Contact | None, agent: _Agent | None,
                 step: int = 0) -> None:
        self.at = at
        self.kind = kind
        self.contact = contact
        self.agent = agent
        self.step = step
        self.cancelled = False


class _Contact:
    __slots__ = (
        "agent", "arrived_ms", "attempts", "callback_number", "channel", "class_key", "connected_ms", "data",
        "entered_ms", "entry", "id", "is_callback", "offers", "preferred", "priority", "queue", "relax",
        "reqs", "reqs_orig", "seq", "state", "steps_done", "timers",
    )

    def __init__(self, event: ContactArrived, channel: Channel, seq: int, now: int) -> None:
        self.id = event.contact_id
        self.queue = event.queue
        self.channel = channel
        self.priority = float(event.priority)
        self.reqs_orig = tuple(sorted(event.skills.items()))
        self.reqs = self.reqs_orig
        self.relax = 0
        self.class_key: ClassKey = (channel.value, self.reqs)
        self.preferred = event.preferred_skills
        self.data = event.data
        self.callback_number = event.callback_number
        self.is_callback = False
        self.attempts = 0
        self.seq = seq
        self.arrived_ms = now
        self.entered_ms = now
        self.entry: Entry | None = None
        self.state = ContactState.WAITING
        self.offers: dict[str, int] = {}  # agent id -> offered at
        self.agent: str | None = None  # connected, dialing or reserved agent
        self.connected_ms = 0
        self.steps_done = 0
        self.timers: list[_Timer] = []


class _Agent:
    __slots__ = (
        "answered", "contacts", "device_ok", "device_reason", "idle_since", "load", "logged_in", "missed_row",
        "offerable", "offerable_values", "offers", "pause_reason", "paused", "profile", "qual", "qual_classes",
        "reserved", "rest_timer", "staffed", "state", "state_since", "wrap_timer",
    )

    def __init__(self, profile: AgentProfile) -> None:
        self.profile = profile
        self.logged_in = False
        self.paused = False
        self.pause_reason: str | None = None
        self.device_ok = True
        self.device_reason = ""
        self.wrap_timer: _Timer | None = None
        self.rest_timer: _Timer | None = None
        self.load: dict[Channel, int] = {}
        self.offers: set[str] = set()  # ringing
        self.reserved: set[str] = set()  # held for a customer-first callback being dialled
        self.contacts: set[str] = set()  # connected, or on the line while an agent-first callback dials
        self.idle_since = 0
        self.missed_row = 0
        self.answered = 0
        self.offerable: frozenset[Channel] = frozenset()
        self.offerable_values: frozenset[str] = frozenset()
        self.staffed = False
        self.state = AgentState.LOGGED_OUT
        self.state_since = 0
        self.qual: dict[ClassKey, bool] = {}
        # (queue, skill) -> (classes of that index skill scanned, those qualified for)
        self.qual_classes: dict[tuple[str, str], tuple[int, list[ClassKey]]] = {}


@dataclass(slots=True)
class _Queue:
    config: QueueConfig
    waiting: list[Entry] = field(default_factory=list)
    classes: dict[ClassKey, list[Entry]] = field(default_factory=dict)
    # classes by their first required skill ("" for none): an agent looks only under the skills it has
    class_index: dict[str, list[ClassKey]] = field(default_factory=dict)
    members: dict[str, Membership] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)
    available: dict[Channel, dict[str, None]] = field(default_factory=dict)
    offered: set[str] = field(default_factory=set)
    staffed: int = 0
    open: bool = True
    rr_last: int = -1
    calls: dict[str, int] = field(default_factory=dict)  # agent -> answered here (fewest-calls)
    counters: QueueCounters = field(default_factory=QueueCounters)
    handle_times: HandleTimes = field(init=False)
    next_order: int = 0

    def __post_init__(self) -> None:
        self.handle_times = HandleTimes(self.config.handle_time_window, self.config.default_handle_ms)

    def key(self, c: _Contact) -> float:
        rate = self.config.aging_ms_per_point
        return c.entered_ms - c.priority * rate if rate else -c.priority

    def effective_priority(self, c: _Contact, now: int) -> float:
        rate = self.config.aging_ms_per_point
        return c.priority + (now - c.entered_ms) / rate if rate else c.priority


class AcdEngine:
    """The engine; see the module docstring for the event/action contract."""

    def __init__(self, queues: Iterable[QueueConfig] = (), agents: Iterable[AgentProfile] = (),
                 config: EngineConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or EngineConfig()
        self._rng = rng or random.Random(0)
        self._queues: dict[str, _Queue] = {}
        self._agents: dict[str, _Agent] = {}
        self._contacts: dict[str, _Contact] = {}
        self._timers: list[tuple[int, int, _Timer]] = []
        self._seq = 0
        self._timer_seq = 0
        self._now = 0
        self._out: list[Action] = []
        self._pending_agents: dict[str, None] = {}
        self._pending_contacts: dict[str, None] = {}
        self._joined: list[_Contact] = []
        # What the engine itself ended or withdrew recently: an event naming it lost a race with a timer of
        # the same ``handle`` call (an answer just after the ring timeout), so it is ignored, not an error.
        self._gone: dict[str, None] = {}
        self._withdrawn: dict[tuple[str, str], None] = {}
        for q in queues:
            self.add_queue(q)
        for a in agents:
            self.set_agent(a)

    # -- configuration --------------------------------------------------------------------------------------

    def add_queue(self, config: QueueConfig) -> None:
        """Add a queue or replace its configuration (waiting contacts keep their order only if the aging rate
        is unchanged)."""
        old = self._queues.get(config.name)
        if old is not None:
            if old.config.aging_ms_per_point != config.aging_ms_per_point and old.waiting:
                raise AcdStateError(f"queue {config.name}: aging rate changed with contacts waiting")
            old.config = config
            return
        joining = [a for a in self._agents.values() if config.name in a.profile.queues]
        for a in joining:  # take them out of the indexes, then put them back with the new queue
            self._set_offerable(a, frozenset())
            self._set_staffed(a, False)
        q = _Queue(config)
        self._queues[config.name] = q
        for a in joining:
            self._join_queue(a, q)
            self._refresh(a)
        self._dispatch()

    def set_agent(self, profile: AgentProfile) -> None:
        """Add an agent (logged out) or change its skills, queues and capacity (in any state)."""
        a = self._agents.get(profile.agent_id)
        if a is None:
            a = _Agent(profile)
            self._agents[profile.agent_id] = a
        else:
            self._set_offerable(a, frozenset())
            self._set_staffed(a, False)
            for name in a.profile.queues:
                q = self._queues.get(name)
                if q is not None:
                    q.members.pop(a.profile.agent_id, None)
            a.profile = profile
            a.qual.clear()
            a.qual_classes.clear()
        for name in profile.queues:
            q = self._queues.get(name)
            if q is not None:
                self._join_queue(a, q)
        self._refresh(a)
        self._dispatch()

    def _join_queue(self, a: _Agent, q: _Queue) -> None:
        aid = a.profile.agent_id
        q.members[aid] = a.profile.queues[q.config.name]
        if aid not in q.order:
            q.order[aid] = q.next_order
            q.next_order += 1

    # -- the contract ---------------------------------------------------------------------------------------

    def handle(self, event: Event, now: int) -> list[Action]:
        """Apply ``event`` at ``now`` (after the timers due by then) and return what to do, in order."""
        if now < self._now:
            raise AcdStateError(f"time went backwards: {now} < {self._now}")
        out = self._out = []
        self._run_timers(now)
        self._now = now
        self._apply(event, now)
        self._dispatch()
        self._announce_joined()
        return out

    def update_agent(self, profile: AgentProfile, now: int) -> list[Action]:
        """:meth:`set_agent` while the engine runs (a login to one queue, a changed skill): the offers its
        re-dispatch makes are returned, in order, as :meth:`handle` returns them."""
        if now < self._now:
            raise AcdStateError(f"time went backwards: {now} < {self._now}")
        out = self._out = []
        self._run_timers(now)
        self._now = now
        self.set_agent(profile)
        self._announce_joined()
        return out

    def next_deadline(self) -> int | None:
        """When the engine next needs ``TimerFired`` (monotonic ms), or None."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def has_contact(self, contact_id: str) -> bool:
        return contact_id in self._contacts

    def contact_state(self, contact_id: str) -> ContactState:
        return self._contact(contact_id).state

    def agent_state(self, agent_id: str) -> AgentState:
        return self._agent(agent_id).state

    # -- queries ---------------------------------------------------------------------------------------------

    def position(self, contact_id: str) -> int | None:
        """1-based place among its queue's waiting contacts (callbacks keeping their place count), or None."""
        c = self._contact(contact_id)
        if c.entry is None:
            return None
        return bisect.bisect_left(self._queues[c.queue].waiting, c.entry) + 1

    def effective_priority(self, contact_id: str, now: int) -> float:
        c = self._contact(contact_id)
        return self._queues[c.queue].effective_priority(c, now)

    def estimated_wait_ms(self, queue: str | None = None, contact_id: str | None = None) -> int | None:
        """For a contact: by its position; for a queue: for a contact joining now. None: nobody staffed."""
        if contact_id is not None:
            c = self._contact(contact_id)
            q = self._queues[c.queue]
            pos = self.position(contact_id)
            if pos is None:
                return 0
            return estimated_wait_ms(pos, q.staffed, q.handle_times.mean_ms)
        if queue is None:
            raise AcdStateError("estimated_wait_ms needs a queue or a contact")
        q = self._queue(queue)
        if not q.waiting and q.available.get(q.config.channel):
            return 0
        return estimated_wait_ms(len(q.waiting) + 1, q.staffed, q.handle_times.mean_ms)

    def waiting_contacts(self, queue: str) -> list[str]:
        """The queue's waiting contacts, next first."""
        return [cid for _, _, cid in self._queue(queue).waiting]

    def snapshot(self, now: int) -> EngineSnapshot:
        """Plain dataclasses for live statistics (a scan of the queues' contacts and members: not per event)."""
        queues = []
        for q in self._queues.values():
            by_state = dict.fromkeys(AgentState, 0)
            for aid in q.members:
                by_state[self._agents[aid].state] += 1
            longest = 0
            callbacks = 0
            for _, _, cid in q.waiting:
                c = self._contacts[cid]
                callbacks += c.is_callback
                longest = max(longest, now - c.arrived_ms)
            for cid in q.offered:
                longest = max(longest, now - self._contacts[cid].arrived_ms)
            k = q.counters
            done = k.answered + k.abandoned
            ewt = self.estimated_wait_ms(q.config.name)
            queues.append(QueueSnapshot(
                name=q.config.name, open=q.open, waiting=len(q.waiting), callbacks_waiting=callbacks,
                ringing=len(q.offered), longest_wait_ms=longest, staffed=q.staffed, agents_by_state=by_state,
                answered=k.answered, answered_within_sl=k.answered_within_sl, abandoned=k.abandoned,
                overflowed=k.overflowed, callbacks_requested=k.callbacks_requested,
                callbacks_completed=k.callbacks_completed,
                service_level=k.answered_within_sl / done if done else None,
                asa_ms=k.answer_wait_ms / k.answered if k.answered else None,
                mean_handle_ms=q.handle_times.mean_ms, ewt_s=None if ewt is None else round(ewt / 1000)))
        agents = tuple(
            AgentSnapshot(
                agent_id=a.profile.agent_id, state=a.state, time_in_state_ms=now - a.state_since,
                pause_reason=a.pause_reason if a.paused else None, device_available=a.device_ok,
                device_reason=a.device_reason, answered=a.answered, missed_in_row=a.missed_row,
                contacts=tuple(sorted(a.contacts | a.offers | a.reserved)), queues=tuple(a.profile.queues))
            for a in self._agents.values())
        return EngineSnapshot(time_ms=now, queues=tuple(queues), agents=agents)

    # -- lookups --------------------------------------------------------------------------------------------

    def _contact(self, contact_id: str) -> _Contact:
        c = self._contacts.get(contact_id)
        if c is None:
            raise AcdStateError(f"unknown contact {contact_id!r}")
        return c

    def _agent(self, agent_id: str) -> _Agent:
        a = self._agents.get(agent_id)
        if a is None:
            raise AcdStateError(f"unknown agent {agent_id!r}")
        return a

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            raise AcdStateError(f"unknown queue {name!r}")
        return q

    def _log(self, kind: LogKind, **fields: object) -> None:
        self._out.append(QueueLog(self._now, kind, **fields))  # type: ignore[arg-type]

    # -- timers ---------------------------------------------------------------------------------------------

    def _schedule(self, at: int, kind: _TimerKind, contact: _Contact | None = None, agent: _Agent | None = None,
                  step: int = 0) -> _Timer:
        t = _Timer(at, kind, contact, agent, step)
        self._timer_seq += 1
        heapq.heappush(self._timers, (at, self._timer_seq, t))
        if contact is not None:
            contact.timers.append(t)
        return t

    @staticmethod
    def _cancel_timers(c: _Contact, keep: tuple[_TimerKind, ...] = ()) -> None:
        kept = []
        for t in c.timers:
            if t.kind in keep and not t.cancelled:
                kept.append(t)
            else:
                t.cancelled = True
        c.timers = kept

    def _run_timers(self, now: int) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, t = heapq.heappop(timers)
            if t.cancelled:
                continue
            t.cancelled = True
            self._now = t.at  # the timer's own instant: an overflow at max wait is logged at exactly it
            self._fire(t, t.at)
            self._dispatch()

    def _fire(self, t: _Timer, at: int) -> None:
        kind = t.kind
        c = t.contact
        if c is not None:
            c.timers = [x for x in c.timers if x is not t]
        if kind is _TimerKind.OFFER_TIMEOUT:
            assert c is not None and t.agent is not None
            self._offer_failed(c, t.agent, "timeout", cancel=CancelReason.TIMEOUT)
        elif kind is _TimerKind.MAX_WAIT:
            assert c is not None
            target = self._queues[c.queue].config.on_max_wait
            if target is not None and not c.is_callback and c.state in (ContactState.WAITING, ContactState.OFFERED):
                self._overflow(c, target, "max-wait")
        elif kind is _TimerKind.AGING_STEP:
            assert c is not None
            self._aging_step(c, t.step)
        elif kind is _TimerKind.ANNOUNCE:
            assert c is not None
            q = self._queues[c.queue]
            if c.state is ContactState.WAITING and not c.is_callback:
                self._announce(c)
            if q.config.announce_interval_ms:
                self._schedule(at + q.config.announce_interval_ms, _TimerKind.ANNOUNCE, c)
        elif kind is _TimerKind.WRAP_END:
            assert t.agent is not None
            if t.agent.wrap_timer is t:
                t.agent.wrap_timer = None
                self._refresh(t.agent)
        elif kind is _TimerKind.REST_END:
            assert t.agent is not None
            if t.agent.rest_timer is t:
                t.agent.rest_timer = None
                self._refresh(t.agent)
        elif kind is _TimerKind.CALLBACK_RETRY:
            assert c is not None
            if c.state is ContactState.CALLBACK_RETRY:
                c.state = ContactState.WAITING
                self._insert(c)
                self._pending_contacts[c.id] = None

    # -- events ---------------------------------------------------------------------------------------------

    def _apply(self, event: Event, now: int) -> None:
        if isinstance(event, TimerFired):
            return
        if isinstance(event, ContactArrived):
            self._arrive(event, now)
        elif isinstance(event, OfferAnswered | OfferRejected) and (
                (event.contact_id, event.agent_id) in self._withdrawn or event.contact_id in self._gone):
            return  # withdrawn by the engine: the adapter already has the CancelOffer
        elif isinstance(event, ContactAbandoned) and event.contact_id in self._gone:
            return  # the engine overflowed it at the same instant
        elif isinstance(event, OfferAnswered):
            self._answered(self._contact(event.contact_id), self._agent(event.agent_id), now)
        elif isinstance(event, OfferRejected):
            c, a = self._contact(event.contact_id), self._agent(event.agent_id)
            if a.profile.agent_id not in c.offers:
                raise AcdStateError(f"no offer of {c.id} to {a.profile.agent_id} to reject")
            self._offer_failed(c, a, event.reason, cancel=None)
        elif isinstance(event, ContactEnded | ContactTransferred):
            self._ended(event, now)
        elif isinstance(event, ContactAbandoned):
            self._abandoned(self._contact(event.contact_id), now)
        elif isinstance(event, CallbackRequested):
            c = self._contact(event.contact_id)
            if c.state not in (ContactState.WAITING, ContactState.OFFERED) or c.is_callback:
                raise AcdStateError(f"contact {c.id} cannot ask for a callback in state {c.state.value}")
            number = event.number or c.callback_number
            if not number:
                raise AcdStateError(f"contact {c.id} asked for a callback with no number")
            c.callback_number = number
            self._make_callback(c, "requested", release=False)
        elif isinstance(event, CallbackAnswered):
            self._callback_answered(self._contact(event.contact_id), now)
        elif isinstance(event, CallbackFailed):
            self._callback_failed(self._contact(event.contact_id), event.reason, now)
        elif isinstance(event, AgentLoggedIn | AgentLoggedOut | AgentPaused | AgentUnpaused | AgentReady
                        | DeviceStateChanged):
            self._agent_event(event, now)
        elif isinstance(event, QueueOpened):
            self._queue(event.queue).open = True
        elif isinstance(event, QueueClosed):
            self._queue(event.queue).open = False
        elif isinstance(event, StatisticsReset):
            targets = [self._queue(event.queue)] if event.queue is not None else list(self._queues.values())
            for q in targets:
                q.counters = QueueCounters()
                q.calls.clear()
        else:  # pragma: no cover
            raise AcdStateError(f"unknown event {event!r}")

    def _arrive(self, e: ContactArrived, now: int) -> None:
        if e.contact_id in self._contacts:
            raise AcdStateError(f"contact {e.contact_id!r} is already in the engine")
        q = self._queue(e.queue)
        for skill, level in e.skills.items():
            if not 1 <= level <= 10:
                raise AcdStateError(f"contact {e.contact_id}: skill {skill} level {level} is not within 1..10")
        self._seq += 1
        c = _Contact(e, e.channel or q.config.channel, self._seq, now)
        self._contacts[c.id] = c
        cfg = q.config
        present = len(q.waiting) + len(q.offered)
        self._insert(c)
        self._log(LogKind.ENTER, queue=cfg.name, contact_id=c.id, position=self.position(c.id))
        rule: tuple[OverflowTarget, str] | None = None
        if not q.open and cfg.on_closed is not None:
            rule = (cfg.on_closed, "closed")
        elif cfg.max_length is not None and cfg.on_max_length is not None and present >= cfg.max_length:
            rule = (cfg.on_max_length, "max-length")
        elif q.staffed == 0 and cfg.on_empty is not None and (not cfg.join_empty or cfg.leave_when_empty):
            rule = (cfg.on_empty, "empty")
        self._schedule_queue_timers(c, q)
        if rule is not None:
            self._overflow(c, rule[0], rule[1])
            if c.id in self._contacts and c.state is ContactState.WAITING:
                self._pending_contacts[c.id] = None
            return
        self._pending_contacts[c.id] = None
        if cfg.announce_on_join:
            self._joined.append(c)

    def _schedule_queue_timers(self, c: _Contact, q: _Queue) -> None:
        cfg = q.config
        if cfg.max_wait_ms is not None and cfg.on_max_wait is not None:
            self._schedule(c.entered_ms + cfg.max_wait_ms, _TimerKind.MAX_WAIT, c)
        c.steps_done = 0
        if cfg.aging_steps:
            self._schedule(c.entered_ms + cfg.aging_steps[0].after_ms, _TimerKind.AGING_STEP, c, step=0)
        if cfg.announce_interval_ms:
            self._schedule(c.entered_ms + cfg.announce_interval_ms, _TimerKind.ANNOUNCE, c)

    def _announce_joined(self) -> None:
        for c in self._joined:
            if c.state is ContactState.WAITING and not c.is_callback and c.id in self._contacts:
                self._announce(c)
        self._joined.clear()

    def _announce(self, c: _Contact) -> None:
        pos = self.position(c.id)
        assert pos is not None
        q = self._queues[c.queue]
        ewt = estimated_wait_ms(pos, q.staffed, q.handle_times.mean_ms)
        self._out.append(Announce(c.id, pos, None if ewt is None else round(ewt / 1000)))

    def _answered(self, c: _Contact, a: _Agent, now: int) -> None:
        aid = a.profile.agent_id
        offered_at = c.offers.pop(aid, None)
        if offered_at is None or c.state is not ContactState.OFFERED:
            raise AcdStateError(f"no offer of {c.id} to {aid} to answer")
        q = self._queues[c.queue]
        for other in list(c.offers):
            self._release_offer(c, self._agents[other])
            self._out.append(CancelOffer(c.id, other, CancelReason.ANSWERED_ELSEWHERE))
            self._remember(self._withdrawn, (c.id, other))
        c.offers.clear()
        q.offered.discard(c.id)
        a.offers.discard(c.id)
        a.contacts.add(c.id)
        a.missed_row = 0
        c.agent = aid
        self._cancel_timers(c, keep=(_TimerKind.CALLBACK_RETRY,))
        if c.is_callback:  # agent-first: the agent waits on the line while we dial the customer
            c.state = ContactState.CALLBACK_DIALING
            self._start_callback(c, a, q)
        else:
            self._connect(c, a, q, now, ring_ms=now - offered_at)
        self._refresh(a)

    def _connect(self, c: _Contact, a: _Agent, q: _Queue, now: int, ring_ms: int | None) -> None:
        aid = a.profile.agent_id
        c.state = ContactState.CONNECTED
        c.connected_ms = now
        wait = now - c.arrived_ms
        k = q.counters
        k.answered += 1
        k.answer_wait_ms += wait
        if wait <= q.config.service_level_ms:
            k.answered_within_sl += 1
        q.calls[aid] = q.calls.get(aid, 0) + 1
        a.answered += 1
        self._out.append(ConnectContact(c.id, aid))
        self._log(LogKind.CONNECT, queue=q.config.name, contact_id=c.id, agent_id=aid, wait_ms=wait, ring_ms=ring_ms)

    def _start_callback(self, c: _Contact, a: _Agent, q: _Queue) -> None:
        assert c.callback_number is not None
        c.attempts += 1
        self._out.append(StartCallback(c.id, a.profile.agent_id, c.callback_number, c.attempts))
        self._log(LogKind.CALLBACK_ATTEMPTED, queue=q.config.name, contact_id=c.id, agent_id=a.profile.agent_id,
                  attempt=c.attempts, target=c.callback_number)

    def _callback_answered(self, c: _Contact, now: int) -> None:
        if c.state is not ContactState.CALLBACK_DIALING or c.agent is None:
            raise AcdStateError(f"contact {c.id} has no callback being dialled")
        q = self._queues[c.queue]
        a = self._agents[c.agent]
        q.counters.callbacks_completed += 1
        self._log(LogKind.CALLBACK_COMPLETED, queue=q.config.name, contact_id=c.id, agent_id=c.agent,
                  attempt=c.attempts)
        c.is_callback = False
        if c.id in a.reserved:  # customer-first: now ring the held agent (the hold becomes the ring)
            a.reserved.discard(c.id)
            self._unload(a, c.channel)
            c.agent = None
            self._ring(c, q, a)
        else:
            self._connect(c, a, q, now, ring_ms=None)
            self._refresh(a)

    def _callback_failed(self, c: _Contact, reason: str, now: int) -> None:
        if c.state is not ContactState.CALLBACK_DIALING or c.agent is None:
            raise AcdStateError(f"contact {c.id} has no callback being dialled")
        q = self._queues[c.queue]
        a = self._agents[c.agent]
        a.reserved.discard(c.id)
        a.contacts.discard(c.id)
        self._unload(a, c.channel)
        c.agent = None
        self._refresh(a)
        self._log(LogKind.CALLBACK_FAILED, queue=q.config.name, contact_id=c.id, agent_id=a.profile.agent_id,
                  attempt=c.attempts, reason=reason)
        if c.attempts >= q.config.callback_attempts:
            self._log(LogKind.CALLBACK_EXHAUSTED, queue=q.config.name, contact_id=c.id, attempt=c.attempts,
                      wait_ms=now - c.arrived_ms)
            self._forget(c)
            return
        c.state = ContactState.CALLBACK_RETRY
        self._schedule(now + q.config.callback_retry_ms, _TimerKind.CALLBACK_RETRY, c)

    def _ended(self, e: ContactEnded | ContactTransferred, now: int) -> None:
        c = self._contact(e.contact_id)
        if c.state is not ContactState.CONNECTED or c.agent is None:
            raise AcdStateError(f"contact {c.id} is not connected")
        q = self._queues[c.queue]
        a = self._agents[c.agent]
        talk = now - c.connected_ms
        if isinstance(e, ContactTransferred):
            self._log(LogKind.TRANSFER, queue=q.config.name, contact_id=c.id, agent_id=c.agent,
                      wait_ms=c.connected_ms - c.arrived_ms, talk_ms=talk, target=e.destination)
        else:
            kind = LogKind.COMPLETE_AGENT if e.ended_by is EndedBy.AGENT else LogKind.COMPLETE_CALLER
            self._log(kind, queue=q.config.name, contact_id=c.id, agent_id=c.agent,
                      wait_ms=c.connected_ms - c.arrived_ms, talk_ms=talk)
        q.handle_times.add(talk + a.profile.wrap_up_ms)
        a.contacts.discard(c.id)
        self._unload(a, c.channel)
        a.idle_since = now
        if a.profile.wrap_up_ms > 0 and a.logged_in:
            if a.wrap_timer is not None:
                a.wrap_timer.cancelled = True
            a.wrap_timer = self._schedule(now + a.profile.wrap_up_ms, _TimerKind.WRAP_END, agent=a)
        self._forget(c)
        self._refresh(a)

    def _abandoned(self, c: _Contact, now: int) -> None:
        if c.state is ContactState.CONNECTED:
            raise AcdStateError(f"contact {c.id} is connected: it ends, it does not abandon")
        q = self._queues[c.queue]
        position = self.position(c.id)
        agent_id = c.agent
        if c.state is ContactState.CALLBACK_DIALING and c.agent is not None:
            a = self._agents[c.agent]
            a.reserved.discard(c.id)
            a.contacts.discard(c.id)
            self._unload(a, c.channel)
            self._refresh(a)
        self._cancel_offers(c, CancelReason.CALLER_LEFT)
        q.counters.abandoned += 1
        self._log(LogKind.ABANDON, queue=q.config.name, contact_id=c.id, agent_id=agent_id, position=position,
                  wait_ms=now - c.arrived_ms)
        self._forget(c)

    def _agent_event(self, e: AgentLoggedIn | AgentLoggedOut | AgentPaused | AgentUnpaused | AgentReady
                     | DeviceStateChanged, now: int) -> None:
        a = self._agent(e.agent_id)
        aid = a.profile.agent_id
        if isinstance(e, AgentLoggedIn):
            if not a.logged_in:
                a.logged_in = True
                a.paused = False
                a.pause_reason = None
                a.missed_row = 0
                a.idle_since = now
                self._log(LogKind.LOGIN, agent_id=aid)
        elif isinstance(e, AgentLoggedOut):
            if a.logged_in:
                a.logged_in = False
                a.paused = False
                for t in (a.wrap_timer, a.rest_timer):
                    if t is not None:
                        t.cancelled = True
                a.wrap_timer = a.rest_timer = None
                for cid in list(a.offers):
                    c = self._contacts[cid]
                    self._out.append(CancelOffer(cid, aid, CancelReason.AGENT_LOGGED_OUT))
                    self._remember(self._withdrawn, (cid, aid))
                    c.offers.pop(aid, None)
                    self._release_offer(c, a)
                    self._requeue_if_unoffered(c)
                self._log(LogKind.LOGOUT, agent_id=aid, reason=e.reason or None)
        elif isinstance(e, AgentPaused):
            if not a.logged_in:
                raise AcdStateError(f"agent {aid} is logged out: it cannot pause")
            a.paused = True
            a.pause_reason = e.reason
            self._log(LogKind.PAUSE, agent_id=aid, reason=e.reason)
        elif isinstance(e, AgentUnpaused):
            if a.paused:
                a.paused = False
                a.pause_reason = None
                a.missed_row = 0
                self._log(LogKind.UNPAUSE, agent_id=aid)
        elif isinstance(e, AgentReady):
            if a.wrap_timer is not None:
                a.wrap_timer.cancelled = True
                a.wrap_timer = None
        elif e.available != a.device_ok:
            a.device_ok = e.available
            a.device_reason = e.reason
            kind = LogKind.DEVICE_AVAILABLE if e.available else LogKind.DEVICE_UNAVAILABLE
            self._log(kind, agent_id=aid, reason=e.reason or None)
        else:
            a.device_reason = e.reason
        self._refresh(a)

    # -- contacts in queues -------------------------------------------------------------------------------

    def _insert(self, c: _Contact) -> None:
        q = self._queues[c.queue]
        entry: Entry = (q.key(c), c.seq, c.id)
        c.entry = entry
        bisect.insort(q.waiting, entry)
        lst = q.classes.get(c.class_key)
        if lst is None:
            lst = q.classes[c.class_key] = []
            q.class_index.setdefault(c.reqs[0][0] if c.reqs else "", []).append(c.class_key)
        bisect.insort(lst, entry)

    def _remove(self, c: _Contact) -> None:
        entry = c.entry
        if entry is None:
            return
        q = self._queues[c.queue]
        for lst in (q.waiting, q.classes[c.class_key]):
            i = bisect.bisect_left(lst, entry)
            assert lst[i] == entry
            del lst[i]
        c.entry = None

    def _forget(self, c: _Contact) -> None:
        self._remove(c)
        self._queues[c.queue].offered.discard(c.id)
        self._cancel_timers(c)
        self._pending_contacts.pop(c.id, None)
        del self._contacts[c.id]
        self._remember(self._gone, c.id)

    @staticmethod
    def _remember(recent: dict[_K, None], key: _K) -> None:
        recent[key] = None
        if len(recent) > _RECENT:
            del recent[next(iter(recent))]

    def _requeue_if_unoffered(self, c: _Contact) -> None:
        if c.state is ContactState.OFFERED and not c.offers:
            c.state = ContactState.WAITING
            self._queues[c.queue].offered.discard(c.id)
            self._insert(c)
            self._pending_contacts[c.id] = None

    def _cancel_offers(self, c: _Contact, reason: CancelReason) -> None:
        for aid in list(c.offers):
            self._out.append(CancelOffer(c.id, aid, reason))
            self._remember(self._withdrawn, (c.id, aid))
            self._release_offer(c, self._agents[aid])
        c.offers.clear()

    def _release_offer(self, c: _Contact, a: _Agent) -> None:
        if c.id in a.offers:
            a.offers.discard(c.id)
            self._unload(a, c.channel)
            self._refresh(a)

    def _unload(self, a: _Agent, channel: Channel) -> None:
        a.load[channel] -= 1

    def _offer_failed(self, c: _Contact, a: _Agent, reason: str, cancel: CancelReason | None) -> None:
        aid = a.profile.agent_id
        offered_at = c.offers.pop(aid, None)
        if offered_at is None:
            return
        q = self._queues[c.queue]
        for t in c.timers:
            if t.kind is _TimerKind.OFFER_TIMEOUT and t.agent is a:
                t.cancelled = True
        if cancel is not None:
            self._out.append(CancelOffer(c.id, aid, cancel))
            self._remember(self._withdrawn, (c.id, aid))
        kind = LogKind.RING_NO_ANSWER if cancel is CancelReason.TIMEOUT else LogKind.OFFER_REJECTED
        self._log(kind, queue=q.config.name, contact_id=c.id, agent_id=aid, ring_ms=self._now - offered_at,
                  reason=reason)
        a.missed_row += 1
        limit = a.profile.auto_pause_after
        limit = self.config.auto_pause_after if limit is None else limit
        if limit and a.missed_row >= limit and not a.paused and a.logged_in:
            a.paused = True
            a.pause_reason = self.config.auto_pause_reason
            self._log(LogKind.PAUSE, agent_id=aid, reason=self.config.auto_pause_reason)
        if self.config.no_answer_rest_ms > 0 and a.logged_in:
            if a.rest_timer is not None:
                a.rest_timer.cancelled = True
            a.rest_timer = self._schedule(self._now + self.config.no_answer_rest_ms, _TimerKind.REST_END, agent=a)
        self._release_offer(c, a)
        self._requeue_if_unoffered(c)

    def _make_callback(self, c: _Contact, reason: str, release: bool) -> None:
        q = self._queues[c.queue]
        self._cancel_offers(c, CancelReason.CALLBACK)
        self._requeue_if_unoffered(c)
        c.is_callback = True
        self._cancel_timers(c, keep=(_TimerKind.AGING_STEP,))
        q.counters.callbacks_requested += 1
        self._log(LogKind.CALLBACK_REQUESTED, queue=q.config.name, contact_id=c.id, position=self.position(c.id),
                  target=c.callback_number, reason=reason)
        if release:
            assert c.callback_number is not None
            self._out.append(ReleaseForCallback(c.id, c.callback_number))

    def _overflow(self, c: _Contact, target: OverflowTarget, reason: str) -> None:
        q = self._queues[c.queue]
        if isinstance(target, ToCallback):
            if c.is_callback or not c.callback_number:
                return  # nothing to convert, or no number to call: the contact keeps waiting
            self._make_callback(c, reason, release=True)
            return
        self._cancel_offers(c, CancelReason.OVERFLOW)
        q.counters.overflowed += 1
        wait = self._now - c.arrived_ms
        if isinstance(target, ToDestination):
            self._log(LogKind.OVERFLOW, queue=q.config.name, contact_id=c.id, target=target.destination,
                      reason=reason, wait_ms=wait)
            self._out.append(OverflowContact(c.id, q.config.name, target.destination, reason))
            self._forget(c)
            return
        self._log(LogKind.OVERFLOW, queue=q.config.name, contact_id=c.id, target=f"queue:{target.queue}",
                  reason=reason, wait_ms=wait)
        self._move(c, target.queue, reason)

    def _move(self, c: _Contact, to_queue: str, reason: str) -> None:
        old = self._queues[c.queue]
        new = self._queue(to_queue)
        self._cancel_offers(c, CancelReason.OVERFLOW)
        self._remove(c)
        old.offered.discard(c.id)
        self._cancel_timers(c, keep=(_TimerKind.CALLBACK_RETRY,))
        c.priority = max(c.priority, old.effective_priority(c, self._now))  # aging never goes backwards
        c.queue = to_queue
        c.entered_ms = self._now
        c.relax = 0
        self._set_reqs(c, c.reqs_orig)
        self._out.append(MoveContact(c.id, old.config.name, to_queue, reason))
        if c.state is not ContactState.CALLBACK_RETRY:
            c.state = ContactState.WAITING
            self._insert(c)
            self._pending_contacts[c.id] = None
        self._log(LogKind.ENTER, queue=to_queue, contact_id=c.id, position=self.position(c.id), reason=reason)
        if not c.is_callback:
            self._schedule_queue_timers(c, new)
        elif new.config.aging_steps:
            self._schedule(c.entered_ms + new.config.aging_steps[0].after_ms, _TimerKind.AGING_STEP, c, step=0)

    def _set_reqs(self, c: _Contact, reqs: tuple[tuple[str, int], ...]) -> None:
        c.reqs = reqs
        c.class_key = (c.channel.value, reqs)

    def _aging_step(self, c: _Contact, index: int) -> None:
        q = self._queues[c.queue]
        steps = q.config.aging_steps
        step = steps[index]
        c.steps_done = index + 1
        if index + 1 < len(steps):
            self._schedule(c.entered_ms + steps[index + 1].after_ms, _TimerKind.AGING_STEP, c, step=index + 1)
        if step.to_queue is not None and step.to_queue != c.queue:
            if c.state in (ContactState.WAITING, ContactState.OFFERED, ContactState.CALLBACK_RETRY):
                self._log(LogKind.ESCALATE, queue=q.config.name, contact_id=c.id, target=f"queue:{step.to_queue}",
                          reason="aging", wait_ms=self._now - c.arrived_ms)
                self._move(c, step.to_queue, "escalation")
            return
        waiting = c.entry is not None
        if waiting:
            self._remove(c)
        c.priority += step.add_priority
        if step.relax_levels > c.relax:
            c.relax = step.relax_levels
            self._set_reqs(c, tuple((s, max(1, lvl - c.relax)) for s, lvl in c.reqs_orig))
        if waiting:
            self._insert(c)
            self._pending_contacts[c.id] = None
        if step.add_priority or step.relax_levels:
            self._log(LogKind.ESCALATE, queue=q.config.name, contact_id=c.id, reason=(
                f"priority+{step.add_priority} relax-{c.relax}"), wait_ms=self._now - c.arrived_ms)

    # -- agents' availability -----------------------------------------------------------------------------

    def _refresh(self, a: _Agent) -> None:
        """Recompute what the agent can be offered and its displayed state; keep the queues' indexes in step."""
        staffed = a.logged_in and not a.paused
        self._set_staffed(a, staffed)
        ready = staffed and a.wrap_timer is None and a.rest_timer is None
        channels: frozenset[Channel] = frozenset()
        if ready:
            channels = frozenset(
                ch for ch, cap in a.profile.capacity.items()
                if a.load.get(ch, 0) < cap and (ch is not Channel.VOICE or a.device_ok))
        gained = channels - a.offerable
        self._set_offerable(a, channels)
        if gained:
            self._pending_agents[a.profile.agent_id] = None
        if a.contacts:
            state = AgentState.ON_CONTACT
        elif a.offers or a.reserved:
            state = AgentState.RESERVED
        elif not a.logged_in:
            state = AgentState.LOGGED_OUT
        elif a.paused:
            state = AgentState.PAUSED
        elif a.wrap_timer is not None:
            state = AgentState.WRAP_UP
        elif a.rest_timer is not None:
            state = AgentState.RESTING
        elif Channel.VOICE in a.profile.capacity and not a.device_ok and not channels:
            state = AgentState.UNREACHABLE
        else:
            state = AgentState.AVAILABLE
        if state is not a.state:
            a.state = state
            a.state_since = self._now

    def _set_offerable(self, a: _Agent, channels: frozenset[Channel]) -> None:
        if channels == a.offerable:
            return
        aid = a.profile.agent_id
        for name in a.profile.queues:
            q = self._queues.get(name)
            if q is None:
                continue
            for ch in a.offerable - channels:
                q.available.get(ch, {}).pop(aid, None)
            for ch in channels - a.offerable:
                q.available.setdefault(ch, {})[aid] = None
        a.offerable = channels
        a.offerable_values = frozenset(ch.value for ch in channels)

    def _set_staffed(self, a: _Agent, staffed: bool) -> None:
        if staffed == a.staffed:
            return
        a.staffed = staffed
        emptied = []
        for name in a.profile.queues:
            q = self._queues.get(name)
            if q is None:
                continue
            q.staffed += 1 if staffed else -1
            if q.staffed == 0:
                emptied.append(q)
        for q in emptied:
            cfg = q.config
            if cfg.leave_when_empty and cfg.on_empty is not None:
                for _, _, cid in list(q.waiting):
                    c = self._contacts[cid]
                    if not c.is_callback:
                        self._overflow(c, cfg.on_empty, "empty")

    # -- matching -----------------------------------------------------------------------------------------

    def _qualifies(self, a: _Agent, key: ClassKey) -> bool:
        ok = a.qual.get(key)
        if ok is None:
            skills = a.profile.skills
            ok = all(skills.get(s, 0) >= lvl for s, lvl in key[1])
            a.qual[key] = ok
        return ok

    def _qualified_classes(self, a: _Agent, q: _Queue) -> list[list[ClassKey]]:
        """The queue's requirement classes the agent qualifies for, in groups by index skill (cached; only
        classes created since the last look are checked)."""
        name = q.config.name
        groups = []
        for skill in ("", *a.profile.skills):
            order = q.class_index.get(skill)
            if not order:
                continue
            scanned, found = a.qual_classes.get((name, skill), (0, []))
            if scanned < len(order):
                found = found + [k for k in order[scanned:] if self._qualifies(a, k)]
                a.qual_classes[(name, skill)] = (len(order), found)
            if found:
                groups.append(found)
        return groups

    def _best_contact(self, a: _Agent) -> _Contact | None:
        """The contact the agent should take next: lowest penalty queue, highest effective priority, earliest."""
        best: tuple[int, float, int] | None = None
        best_contact: _Contact | None = None
        offerable = a.offerable_values
        for name, membership in a.profile.queues.items():
            q = self._queues.get(name)
            if q is None or not q.waiting:
                continue
            head: Entry | None = None
            classes = q.classes
            for group in self._qualified_classes(a, q):
                for key in group:
                    if key[0] not in offerable:
                        continue
                    lst = classes[key]
                    if lst and (head is None or lst[0] < head):
                        head = lst[0]
            if head is None:
                continue
            c = self._contacts[head[2]]
            rank = (membership.penalty, -q.effective_priority(c, self._now), c.seq)
            if best is None or rank < best:
                best, best_contact = rank, c
        return best_contact

    def _dispatch(self) -> None:
        """Route until no free agent is qualified for a waiting contact."""
        agents, contacts = self._pending_agents, self._pending_contacts
        while agents or contacts:
            if agents:
                aid = next(iter(agents))
                del agents[aid]
                self._match_agent(self._agents[aid])
            else:
                cid = next(iter(contacts))
                del contacts[cid]
                c = self._contacts.get(cid)
                if c is not None and c.state is ContactState.WAITING:
                    self._match_contact(c)

    def _match_agent(self, a: _Agent) -> None:
        while a.offerable:
            c = self._best_contact(a)
            if c is None:
                return
            self._offer(c, [a])

    def _candidates(self, c: _Contact, q: _Queue) -> list[_Agent]:
        avail = q.available.get(c.channel)
        if not avail:
            return []
        key = c.class_key
        tier: list[_Agent] = []
        best_penalty = 0
        members = q.members
        for aid in avail:
            a = self._agents[aid]
            if not self._qualifies(a, key):
                continue
            penalty = members[aid].penalty
            if not tier or penalty < best_penalty:
                tier, best_penalty = [a], penalty
            elif penalty == best_penalty:
                tier.append(a)
        if c.preferred and len(tier) > 1:
            scores = [sum(1 for s in c.preferred if s in a.profile.skills) for a in tier]
            top = max(scores)
            tier = [a for a, s in zip(tier, scores, strict=True) if s == top]
        tier.sort(key=lambda a: q.order[a.profile.agent_id])
        return tier

    def _match_contact(self, c: _Contact) -> None:
        q = self._queues[c.queue]
        while c.state is ContactState.WAITING:
            tier = self._candidates(c, q)
            if not tier:
                return
            if q.config.strategy is Strategy.RING_ALL and not c.is_callback:
                mine = [a for a in tier if self._best_contact(a) is c]
                for a in tier:
                    if a not in mine:
                        self._match_agent(a)  # it owes a better contact first
                if mine:
                    self._offer(c, mine)
                continue
            reqs = c.reqs
            cands = [
                Candidate(a.profile.agent_id, q.order[a.profile.agent_id], a.idle_since,
                          q.calls.get(a.profile.agent_id, 0), q.members[a.profile.agent_id].weight,
                          sum(a.profile.skills.get(s, 0) for s, _ in reqs))
                for a in tier]
            chosen = choose(q.config.strategy, cands, q.rr_last, self._rng)
            # The chosen agent takes its best contact: this one, or a better one that is also pending.
            self._match_agent(self._agents[chosen.agent_id])

    def _offer(self, c: _Contact, agents: list[_Agent]) -> None:
        q = self._queues[c.queue]
        self._remove(c)
        self._pending_contacts.pop(c.id, None)
        if c.is_callback and q.config.callback_mode is CallbackMode.CUSTOMER_FIRST:
            a = agents[0]
            c.state = ContactState.CALLBACK_DIALING
            c.agent = a.profile.agent_id
            a.reserved.add(c.id)
            a.load[c.channel] = a.load.get(c.channel, 0) + 1
            q.rr_last = q.order[a.profile.agent_id]
            self._start_callback(c, a, q)
            self._refresh(a)
            return
        for a in agents:
            self._ring(c, q, a)

    def _ring(self, c: _Contact, q: _Queue, a: _Agent) -> None:
        aid = a.profile.agent_id
        if c.state is not ContactState.OFFERED:
            c.state = ContactState.OFFERED
            q.offered.add(c.id)
        c.offers[aid] = self._now
        self._withdrawn.pop((c.id, aid), None)  # offered again: an answer now is for this offer
        a.offers.add(c.id)
        a.load[c.channel] = a.load.get(c.channel, 0) + 1
        q.rr_last = q.order[aid]
        timeout = q.config.ring_timeout_ms
        self._out.append(OfferContact(c.id, aid, q.config.name, timeout, c.callback_number if c.is_callback else None))
        self._log(LogKind.OFFER, queue=q.config.name, contact_id=c.id, agent_id=aid)
        self._schedule(self._now + timeout, _TimerKind.OFFER_TIMEOUT, c, a)
        self._refresh(a)
