"""Hypothesis state machine over the engine: random events and time jumps, with the ACD invariants checked
after every step against a model rebuilt only from the engine's output (queue log and actions).

Invariants: no contact lost or duplicated and exactly one terminal outcome each; no agent offered while
logged out, paused, in wrap-up or rest, or with its device unavailable, and never two voice contacts at once;
within a queue, an agent is offered the contact with the best (effective priority, arrival) it qualifies for;
work-conserving after each step; effective priority never decreases; max-wait overflow exactly at the
threshold; a callback keeps its position.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ccpbx.acd.engine import AcdEngine, ContactState
from ccpbx.acd.events import (
    Action,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentPaused,
    AgentReady,
    AgentUnpaused,
    CallbackAnswered,
    CallbackFailed,
    CallbackRequested,
    CancelOffer,
    ContactAbandoned,
    ContactArrived,
    ContactEnded,
    ContactTransferred,
    DeviceStateChanged,
    EndedBy,
    Event,
    LogKind,
    OfferAnswered,
    OfferRejected,
    OverflowContact,
    QueueLog,
    StartCallback,
    TimerFired,
)
from ccpbx.acd.model import (
    AgentProfile,
    AgingStep,
    CallbackMode,
    EngineConfig,
    Membership,
    QueueConfig,
    Strategy,
    ToDestination,
    ToQueue,
)

REST_MS = 3_000
MAX_WAIT_RING = 60_000
MAX_WAIT_AGE = 90_000
QUEUES = [
    QueueConfig("ring", strategy=Strategy.RING_ALL, ring_timeout_ms=10_000, max_wait_ms=MAX_WAIT_RING,
                on_max_wait=ToQueue("lin")),
    QueueConfig("lin", strategy=Strategy.ROUND_ROBIN, ring_timeout_ms=8_000,
                callback_mode=CallbackMode.CUSTOMER_FIRST, callback_attempts=2, callback_retry_ms=20_000),
    QueueConfig("age", strategy=Strategy.SKILLS_BASED, aging_ms_per_point=5_000, max_wait_ms=MAX_WAIT_AGE,
                on_max_wait=ToDestination("voicemail:1"), callback_attempts=2, callback_retry_ms=15_000),
    QueueConfig("step", strategy=Strategy.LONGEST_IDLE, aging_steps=(
        AgingStep(20_000, add_priority=3), AgingStep(40_000, relax_levels=2), AgingStep(80_000, to_queue="lin"))),
]
MAX_WAIT = {"ring": MAX_WAIT_RING, "age": MAX_WAIT_AGE}


def _m(penalty: int = 0) -> Membership:
    return Membership(penalty=penalty)


AGENTS = [
    AgentProfile("a0", skills={"s1": 5}, queues={"ring": _m(), "lin": _m(), "step": _m()}, wrap_up_ms=2_000),
    AgentProfile("a1", skills={"s1": 2, "s2": 7}, queues={"lin": _m(), "age": _m()}),
    AgentProfile("a2", skills={"s2": 3}, queues={"age": _m(), "ring": _m(), "step": _m()}),
    AgentProfile("a3", skills={"s1": 9, "s2": 9}, queues={q.name: _m(1) for q in QUEUES}, wrap_up_ms=5_000),
    AgentProfile("a4", queues={"ring": _m(), "age": _m(), "step": _m(2)}, auto_pause_after=2),
]
PROFILES = {a.agent_id: a for a in AGENTS}
TERMINAL_LOGS = {LogKind.COMPLETE_AGENT, LogKind.COMPLETE_CALLER, LogKind.TRANSFER, LogKind.ABANDON,
                 LogKind.CALLBACK_EXHAUSTED}


class CheckedEngine(AcdEngine):
    """The engine, with the priority-order invariant asserted at the instant of every offer decision."""

    def _offer(self, c: Any, agents: list[Any]) -> None:
        q = self._queues[c.queue]
        assert c.entry is not None
        for a in agents:
            for entry in q.waiting:
                if entry >= c.entry:
                    break
                w = self._contacts[entry[2]]
                assert not (w.channel in a.offerable and self._qualifies(a, w.class_key)), (
                    f"{a.profile.agent_id} offered {c.id} while {w.id} ahead of it qualifies")
        super()._offer(c, agents)


class AcdMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = CheckedEngine(QUEUES, AGENTS, config=EngineConfig(no_answer_rest_ms=REST_MS,
                                                                        auto_pause_after=3),
                                    rng=random.Random(1))
        self.now = 0
        self.n = 0
        self.arrived: set[str] = set()
        self.terminal: Counter[str] = Counter()
        self.offers: set[tuple[str, str]] = set()  # (contact, agent) ringing
        self.connected: dict[str, str] = {}
        self.dialing: set[str] = set()
        # the agent model, from the output only
        self.logged_in: set[str] = set()
        self.paused: set[str] = set()
        self.device_down: set[str] = set()
        self.wrap_until: dict[str, int] = defaultdict(int)
        self.rest_until: dict[str, int] = defaultdict(int)
        self.load: dict[str, set[str]] = defaultdict(set)
        self.entered: dict[str, tuple[str, int]] = {}
        self.last_priority: dict[str, float] = {}

    # -- driving --------------------------------------------------------------------------------------------

    def step(self, event: Event, dt: int = 0) -> list[Action]:
        self.now += dt
        if isinstance(event, OfferAnswered | OfferRejected):
            self.offers.discard((event.contact_id, event.agent_id))
        if isinstance(event, CallbackAnswered | CallbackFailed):
            self.dialing.discard(event.contact_id)
        out = self.engine.handle(event, self.now)
        self.observe(event, out)
        if isinstance(event, OfferAnswered | OfferRejected):
            # The ring timeout may fall due at this very moment: the engine fires it first, cancels the offer and
            # offers the contact to the same agent again — and the answer (or refusal) then settles that new offer.
            self.offers.discard((event.contact_id, event.agent_id))
        return out

    def observe(self, event: Event, out: list[Action]) -> None:
        customer_first_answer = isinstance(event, CallbackAnswered)
        for action in out:
            if isinstance(action, QueueLog):
                self.observe_log(action, customer_first_answer)
            elif isinstance(action, CancelOffer):
                self.offers.discard((action.contact_id, action.agent_id))
                self.load[action.agent_id].discard(action.contact_id)
            elif isinstance(action, OverflowContact):
                self.terminal[action.contact_id] += 1
                self.forget(action.contact_id)
            elif isinstance(action, StartCallback):
                cid, aid = action.contact_id, action.agent_id
                if cid not in self.load[aid]:  # customer-first: the agent is held now
                    self.assert_offerable(aid, cid, self.now)
                self.load[aid].add(cid)
                self.dialing.add(cid)
            elif type(action).__name__ == "ConnectContact":
                self.connected[action.contact_id] = action.agent_id  # type: ignore[union-attr]
                self.dialing.discard(action.contact_id)  # type: ignore[union-attr]

    def observe_log(self, rec: QueueLog, customer_first_answer: bool) -> None:
        k, aid, cid = rec.kind, rec.agent_id, rec.contact_id
        if k is LogKind.LOGIN:
            assert aid is not None
            self.logged_in.add(aid)
            self.paused.discard(aid)
        elif k is LogKind.LOGOUT:
            assert aid is not None
            self.logged_in.discard(aid)
            self.paused.discard(aid)
            self.wrap_until[aid] = self.rest_until[aid] = 0
        elif k is LogKind.PAUSE:
            assert aid is not None
            self.paused.add(aid)
        elif k is LogKind.UNPAUSE:
            assert aid is not None
            self.paused.discard(aid)
        elif k is LogKind.DEVICE_UNAVAILABLE:
            assert aid is not None
            self.device_down.add(aid)
        elif k is LogKind.DEVICE_AVAILABLE:
            assert aid is not None
            self.device_down.discard(aid)
        elif k is LogKind.ENTER:
            assert cid is not None and rec.queue is not None
            self.arrived.add(cid)
            self.entered[cid] = (rec.queue, rec.time_ms)
        elif k is LogKind.OFFER:
            assert cid is not None and aid is not None
            held = customer_first_answer and self.load[aid] == {cid}
            if not held:
                self.assert_offerable(aid, cid, rec.time_ms)
            self.load[aid].add(cid)
            self.offers.add((cid, aid))
        elif k in (LogKind.RING_NO_ANSWER, LogKind.OFFER_REJECTED):
            assert cid is not None and aid is not None
            self.offers.discard((cid, aid))
            self.load[aid].discard(cid)
            if aid in self.logged_in:
                self.rest_until[aid] = rec.time_ms + REST_MS
        elif k is LogKind.CALLBACK_FAILED:
            assert cid is not None and aid is not None
            self.load[aid].discard(cid)
            self.dialing.discard(cid)
        elif k is LogKind.OVERFLOW and rec.reason == "max-wait":
            assert cid is not None and rec.queue is not None
            queue, at = self.entered[cid]
            assert queue == rec.queue and rec.time_ms == at + MAX_WAIT[queue], "overflow off its threshold"
        if k in TERMINAL_LOGS:
            assert cid is not None
            self.terminal[cid] += 1
            if k in (LogKind.COMPLETE_AGENT, LogKind.COMPLETE_CALLER, LogKind.TRANSFER):
                assert aid is not None
                if aid in self.logged_in:
                    self.wrap_until[aid] = rec.time_ms + PROFILES[aid].wrap_up_ms
            self.forget(cid)

    def forget(self, cid: str) -> None:
        for held in self.load.values():
            held.discard(cid)
        self.offers = {(c, a) for c, a in self.offers if c != cid}
        self.connected.pop(cid, None)
        self.dialing.discard(cid)

    def available(self, aid: str, t: int) -> bool:
        return (aid in self.logged_in and aid not in self.paused and aid not in self.device_down
                and t >= self.wrap_until[aid] and t >= self.rest_until[aid] and not self.load[aid])

    def assert_offerable(self, aid: str, cid: str, t: int) -> None:
        assert self.available(aid, t), (
            f"{cid} offered to {aid} at {t}: logged_in={aid in self.logged_in} paused={aid in self.paused} "
            f"device_down={aid in self.device_down} wrap_until={self.wrap_until[aid]} "
            f"rest_until={self.rest_until[aid]} load={self.load[aid]}")

    def live(self, *states: ContactState) -> list[str]:
        return sorted(c for c in self.arrived if self.engine.has_contact(c)
                      and self.engine.contact_state(c) in states)

    # -- rules ----------------------------------------------------------------------------------------------

    @initialize(logged_out=st.sets(st.sampled_from(sorted(PROFILES)), max_size=2))
    def staff(self, logged_out: set[str]) -> None:
        for aid in sorted(PROFILES):
            if aid not in logged_out:
                self.step(AgentLoggedIn(aid))

    @rule(queue=st.sampled_from([q.name for q in QUEUES]), priority=st.integers(0, 3),
          skills=st.sampled_from([{}, {"s1": 3}, {"s1": 6}, {"s2": 5}, {"s1": 1, "s2": 8}]),
          number=st.booleans(), dt=st.sampled_from([0, 0, 1, 500, 4_000]))
    def arrive(self, queue: str, priority: int, skills: dict[str, int], number: bool, dt: int) -> None:
        self.n += 1
        self.step(ContactArrived(f"c{self.n}", queue, priority=priority, skills=skills,
                                 callback_number="555" if number else None), dt)

    @precondition(lambda self: self.offers)
    @rule(data=st.data(), dt=st.sampled_from([0, 1, 3_000]))
    def answer(self, data: st.DataObject, dt: int) -> None:
        cid, aid = data.draw(st.sampled_from(sorted(self.offers)))
        self.step(OfferAnswered(cid, aid), dt)

    @precondition(lambda self: self.offers)
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        cid, aid = data.draw(st.sampled_from(sorted(self.offers)))
        self.step(OfferRejected(cid, aid, "busy"), 1)

    @precondition(lambda self: self.connected)
    @rule(data=st.data(), how=st.sampled_from(["agent", "caller", "transfer"]), dt=st.sampled_from([1, 10_000]))
    def end(self, data: st.DataObject, how: str, dt: int) -> None:
        cid = data.draw(st.sampled_from(sorted(self.connected)))
        if how == "transfer":
            self.step(ContactTransferred(cid, "extension:9"), dt)
        else:
            self.step(ContactEnded(cid, EndedBy.AGENT if how == "agent" else EndedBy.CALLER), dt)

    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        candidates = self.live(ContactState.WAITING, ContactState.OFFERED, ContactState.CALLBACK_RETRY)
        if candidates:
            self.step(ContactAbandoned(data.draw(st.sampled_from(candidates))), 1)

    @rule(data=st.data())
    def request_callback(self, data: st.DataObject) -> None:
        candidates = [c for c in self.live(ContactState.WAITING) if not self.engine._contacts[c].is_callback]
        if not candidates:
            return
        cid = data.draw(st.sampled_from(candidates))
        before = self.engine.position(cid)
        self.step(CallbackRequested(cid, "777"), 0)
        if self.engine.has_contact(cid) and self.engine.contact_state(cid) is ContactState.WAITING:
            assert self.engine.position(cid) == before, "a callback must keep its place"

    @precondition(lambda self: self.dialing)
    @rule(data=st.data(), ok=st.booleans())
    def callback_outcome(self, data: st.DataObject, ok: bool) -> None:
        cid = data.draw(st.sampled_from(sorted(self.dialing)))
        self.step(CallbackAnswered(cid) if ok else CallbackFailed(cid), 2_000)

    @rule(aid=st.sampled_from(sorted(PROFILES)),
          what=st.sampled_from(["login", "logout", "pause", "unpause", "ready", "device-off", "device-on"]))
    def agent_event(self, aid: str, what: str) -> None:
        event: Event
        if what == "login":
            event = AgentLoggedIn(aid)
        elif what == "logout":
            event = AgentLoggedOut(aid)
        elif what == "pause":
            if aid not in self.logged_in:
                return
            event = AgentPaused(aid, "break")
        elif what == "unpause":
            event = AgentUnpaused(aid)
        elif what == "ready":
            self.wrap_until[aid] = 0
            event = AgentReady(aid)
        else:
            event = DeviceStateChanged(aid, what == "device-on", "not-registered")
        self.step(event, 0)

    @rule(dt=st.sampled_from([1, 999, 2_000, 5_000, 15_000, 40_000]))
    def wait(self, dt: int) -> None:
        self.step(TimerFired(), dt)

    @precondition(lambda self: self.engine.next_deadline() is not None)
    @rule(offset=st.sampled_from([-1, 0]))
    def until_deadline(self, offset: int) -> None:
        deadline = self.engine.next_deadline()
        assert deadline is not None
        self.step(TimerFired(), max(0, deadline + offset - self.now))

    # -- invariants -----------------------------------------------------------------------------------------

    @invariant()
    def each_contact_once(self) -> None:
        assert all(n == 1 for n in self.terminal.values()), self.terminal
        for cid in self.arrived:
            assert self.engine.has_contact(cid) == (self.terminal[cid] == 0), cid
        seen: list[str] = []
        for q in QUEUES:
            seen.extend(self.engine.waiting_contacts(q.name))
        assert len(seen) == len(set(seen)), "a contact waits twice"
        for cid in seen:
            assert self.engine.contact_state(cid) is ContactState.WAITING
            assert all(cid not in held for held in self.load.values()), f"{cid} waits while held by an agent"

    @invariant()
    def one_voice_contact_per_agent(self) -> None:
        for aid, held in self.load.items():
            assert len(held) <= 1, (aid, held)

    @invariant()
    def work_conserving(self) -> None:
        for q in QUEUES:
            for cid in self.engine.waiting_contacts(q.name):
                reqs = self.engine._contacts[cid].reqs
                for aid, profile in PROFILES.items():
                    if q.name in profile.queues and self.available(aid, self.now):
                        qualified = all(profile.skills.get(s, 0) >= lvl for s, lvl in reqs)
                        assert not qualified, f"{aid} idles while {cid} waits in {q.name}"

    @invariant()
    def aging_is_monotone_and_overflow_on_time(self) -> None:
        for q in QUEUES:
            for cid in self.engine.waiting_contacts(q.name):
                eff = self.engine.effective_priority(cid, self.now)
                assert eff >= self.last_priority.get(cid, float("-inf")), cid
                self.last_priority[cid] = eff
                c = self.engine._contacts[cid]
                if q.name in MAX_WAIT and not c.is_callback:
                    assert self.now - c.entered_ms < MAX_WAIT[q.name], f"{cid} waited past max wait"


AcdMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestAcdStateMachine = AcdMachine.TestCase
