"""The engine's rules one at a time: aging, overflow, callbacks, wrap-up, auto-pause, devices, EWT, statistics."""

from __future__ import annotations

import pytest

from ccpbx.acd.engine import ContactState
from ccpbx.acd.errors import AcdStateError
from ccpbx.acd.events import (
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
    LogKind,
    MoveContact,
    OfferAnswered,
    OfferContact,
    OfferRejected,
    OverflowContact,
    QueueClosed,
    QueueOpened,
    ReleaseForCallback,
    StartCallback,
    StatisticsReset,
    TimerFired,
)
from ccpbx.acd.model import (
    AgentProfile,
    AgingStep,
    CallbackMode,
    Channel,
    EngineConfig,
    Membership,
    QueueConfig,
    Strategy,
    ToCallback,
    ToDestination,
    ToQueue,
)
from ccpbx.acd.stats import AgentState

from .helpers import agent, engine, logs, of

# -- priority and aging -------------------------------------------------------------------------------------


def test_higher_priority_first_and_fifo_among_equals() -> None:
    e = engine([QueueConfig("q")], [agent("a")], login=False)
    for i, prio in enumerate([0, 5, 0, 5]):
        e.handle(ContactArrived(f"c{i}", "q", priority=prio), i)
    assert e.waiting_contacts("q") == ["c1", "c3", "c0", "c2"]
    assert [e.position(c) for c in ("c1", "c3", "c0", "c2")] == [1, 2, 3, 4]


def test_linear_aging_lets_a_long_waiter_overtake_a_higher_base_priority() -> None:
    e = engine([QueueConfig("q", aging_ms_per_point=10_000)], [agent("a")], login=False)
    e.handle(ContactArrived("old", "q", priority=0), 0)
    e.handle(ContactArrived("vip", "q", priority=2), 15_000)  # old has aged 1.5 points: vip is ahead
    assert e.waiting_contacts("q") == ["vip", "old"]
    e.handle(ContactArrived("vip2", "q", priority=2), 25_000)  # old now 2.5 > 2: ahead of the newcomer
    assert e.waiting_contacts("q") == ["vip", "old", "vip2"]
    assert e.effective_priority("old", 25_000) == pytest.approx(2.5)
    assert e.effective_priority("old", 35_000) > e.effective_priority("old", 25_000)


def test_aging_step_adds_priority_at_its_threshold() -> None:
    q = QueueConfig("q", aging_steps=(AgingStep(30_000, add_priority=10),))
    e = engine([q], [agent("a")], login=False)
    e.handle(ContactArrived("early", "q"), 0)
    e.handle(ContactArrived("vip", "q", priority=5), 1_000)
    assert e.waiting_contacts("q") == ["vip", "early"]
    assert e.next_deadline() == 30_000
    e.handle(TimerFired(), 29_999)
    assert e.waiting_contacts("q") == ["vip", "early"]
    out = e.handle(TimerFired(), 30_000)
    assert e.waiting_contacts("q") == ["early", "vip"]
    assert logs(out, LogKind.ESCALATE)[0].contact_id == "early"


def test_aging_step_widens_the_skill_requirement() -> None:
    q = QueueConfig("q", aging_steps=(AgingStep(60_000, relax_levels=2),))
    e = engine([q], [agent("junior", skills={"fr": 3})])
    assert of(e.handle(ContactArrived("c", "q", skills={"fr": 5}), 0), OfferContact) == []
    assert of(e.handle(TimerFired(), 59_999), OfferContact) == []
    offers = of(e.handle(TimerFired(), 60_000), OfferContact)
    assert [o.agent_id for o in offers] == ["junior"]


def test_aging_step_escalates_into_another_queue() -> None:
    q = QueueConfig("q", aging_ms_per_point=1_000, aging_steps=(AgingStep(60_000, to_queue="experts"),))
    e = engine([q, QueueConfig("experts")], [agent("x", queues=["experts"])], login=False)
    e.handle(ContactArrived("c", "q", priority=1), 0)
    out = e.handle(TimerFired(), 60_000)
    assert of(out, MoveContact) == [MoveContact("c", "q", "experts", "escalation")]
    assert e.waiting_contacts("experts") == ["c"]
    assert e.effective_priority("c", 60_000) == pytest.approx(61.0)  # carried: aging never goes backwards
    offers = of(e.handle(AgentLoggedIn("x"), 61_000), OfferContact)
    assert offers[0].queue == "experts"


# -- overflow -----------------------------------------------------------------------------------------------


def test_max_wait_overflows_exactly_at_the_threshold() -> None:
    q = QueueConfig("q", max_wait_ms=120_000, on_max_wait=ToDestination("voicemail:100"))
    e = engine([q], [agent("a")], login=False)
    e.handle(ContactArrived("c", "q"), 5_000)
    assert e.next_deadline() == 125_000
    assert of(e.handle(TimerFired(), 124_999), OverflowContact) == []
    out = e.handle(TimerFired(), 125_001)
    assert of(out, OverflowContact) == [OverflowContact("c", "q", "voicemail:100", "max-wait")]
    assert logs(out, LogKind.OVERFLOW)[0].time_ms == 125_000
    assert not e.has_contact("c")


def test_max_wait_cancels_a_ringing_offer() -> None:
    q = QueueConfig("q", max_wait_ms=10_000, on_max_wait=ToQueue("other"), ring_timeout_ms=30_000)
    e = engine([q, QueueConfig("other")], [agent("a")])
    assert of(e.handle(ContactArrived("c", "q"), 0), OfferContact)
    out = e.handle(TimerFired(), 10_000)
    assert of(out, CancelOffer) == [CancelOffer("c", "a", CancelReason.OVERFLOW)]
    assert e.waiting_contacts("other") == ["c"]


def test_max_length_overflows_the_arrival() -> None:
    q = QueueConfig("q", max_length=2, on_max_length=ToDestination("hangup:busy"))
    e = engine([q], [agent("a")], login=False)
    e.handle(ContactArrived("c1", "q"), 0)
    e.handle(ContactArrived("c2", "q"), 1)
    out = e.handle(ContactArrived("c3", "q"), 2)
    assert of(out, OverflowContact)[0].contact_id == "c3"
    assert e.waiting_contacts("q") == ["c1", "c2"]


def test_join_empty_and_leave_when_empty() -> None:
    q = QueueConfig("q", join_empty=False, leave_when_empty=True, on_empty=ToDestination("voicemail:1"))
    e = engine([q], [agent("a")], login=False)
    assert of(e.handle(ContactArrived("c1", "q"), 0), OverflowContact)
    e.handle(AgentLoggedIn("a"), 1)
    e.handle(AgentPaused("a", "lunch"), 2)  # paused agents do not staff the queue
    assert of(e.handle(ContactArrived("c2", "q"), 3), OverflowContact)
    e.handle(AgentUnpaused("a"), 4)
    e.handle(ContactArrived("c3", "q"), 5)
    e.handle(OfferAnswered("c3", "a"), 6)
    e.handle(ContactArrived("c4", "q"), 7)
    assert e.waiting_contacts("q") == ["c4"]
    out = e.handle(AgentLoggedOut("a"), 8)  # the last agent leaves: c4 follows leave_when_empty
    assert of(out, OverflowContact) == [OverflowContact("c4", "q", "voicemail:1", "empty")]


def test_closed_queue_overflows_arrivals_but_serves_those_waiting() -> None:
    q = QueueConfig("q", on_closed=ToDestination("ivr:closed"))
    e = engine([q], [agent("a")], login=False)
    e.handle(ContactArrived("c1", "q"), 0)
    e.handle(QueueClosed("q"), 1)
    assert of(e.handle(ContactArrived("c2", "q"), 2), OverflowContact)[0].destination == "ivr:closed"
    assert of(e.handle(AgentLoggedIn("a"), 3), OfferContact)[0].contact_id == "c1"
    e.handle(QueueOpened("q"), 4)
    assert not of(e.handle(ContactArrived("c3", "q"), 5), OverflowContact)


def test_overflow_to_callback_releases_the_caller_and_keeps_the_place() -> None:
    q = QueueConfig("q", max_wait_ms=60_000, on_max_wait=ToCallback())
    e = engine([q], [agent("a")], login=False)
    e.handle(ContactArrived("c1", "q", callback_number="+33123"), 0)
    e.handle(ContactArrived("c2", "q"), 1)
    out = e.handle(TimerFired(), 60_000)
    assert of(out, ReleaseForCallback) == [ReleaseForCallback("c1", "+33123")]
    assert e.waiting_contacts("q") == ["c1", "c2"]
    out = e.handle(TimerFired(), 60_001)  # c2 has no number: it keeps waiting
    assert e.waiting_contacts("q") == ["c1", "c2"]


# -- callbacks ----------------------------------------------------------------------------------------------


def test_callback_agent_first_keeps_its_position_then_rings_the_agent_then_dials() -> None:
    e = engine([QueueConfig("q")], [agent("a")], login=False)
    for i in range(3):
        e.handle(ContactArrived(f"c{i}", "q"), i)
    out = e.handle(CallbackRequested("c0", "+4930"), 10)
    assert logs(out, LogKind.CALLBACK_REQUESTED)[0].position == 1
    assert e.position("c0") == 1 and e.waiting_contacts("q") == ["c0", "c1", "c2"]
    offers = of(e.handle(AgentLoggedIn("a"), 20), OfferContact)
    assert offers == [OfferContact("c0", "a", "q", 15_000, "+4930")]
    out = e.handle(OfferAnswered("c0", "a"), 21)
    assert of(out, StartCallback) == [StartCallback("c0", "a", "+4930", 1)]
    assert of(out, ConnectContact) == []
    out = e.handle(CallbackAnswered("c0"), 30)
    assert of(out, ConnectContact) == [ConnectContact("c0", "a")]
    assert logs(out, LogKind.CALLBACK_COMPLETED)


def test_callback_customer_first_reserves_the_agent_then_rings_it() -> None:
    e = engine([QueueConfig("q", callback_mode=CallbackMode.CUSTOMER_FIRST)], [agent("a")], login=False)
    e.handle(ContactArrived("c0", "q", callback_number="555"), 0)
    e.handle(CallbackRequested("c0"), 1)
    out = e.handle(AgentLoggedIn("a"), 2)
    assert of(out, OfferContact) == []
    assert of(out, StartCallback) == [StartCallback("c0", "a", "555", 1)]
    assert e.agent_state("a") is AgentState.RESERVED
    e.handle(ContactArrived("c1", "q"), 3)  # the reserved agent is not offered anything else
    assert e.contact_state("c1") is ContactState.WAITING
    out = e.handle(CallbackAnswered("c0"), 10)
    assert of(out, OfferContact) == [OfferContact("c0", "a", "q", 15_000, None)]
    assert of(e.handle(OfferAnswered("c0", "a"), 12), ConnectContact) == [ConnectContact("c0", "a")]


def test_callback_retries_then_gives_up() -> None:
    q = QueueConfig("q", callback_attempts=2, callback_retry_ms=30_000)
    e = engine([q], [agent("a")])
    e.handle(ContactArrived("c0", "q", callback_number="555"), 0)
    e.handle(OfferAnswered("c0", "a"), 1)
    e.handle(ContactArrived("c1", "q"), 2)  # waits behind the busy agent
    e.handle(ContactArrived("c2", "q"), 3)
    e.handle(CallbackRequested("c1", "555"), 4)
    e.handle(ContactEnded("c0", EndedBy.AGENT), 100)
    # c1 (callback, first in line) is offered agent-first; the customer does not answer.
    e.handle(OfferAnswered("c1", "a"), 101)
    out = e.handle(CallbackFailed("c1", "no-answer"), 130)
    assert logs(out, LogKind.CALLBACK_FAILED)[0].attempt == 1
    assert of(out, OfferContact)[0].contact_id == "c2"  # the agent is free again meanwhile
    e.handle(OfferAnswered("c2", "a"), 131)
    e.handle(ContactArrived("c3", "q"), 140)
    out = e.handle(TimerFired(), 30_130)
    assert e.waiting_contacts("q") == ["c1", "c3"]  # back in its place, ahead of the later c3
    e.handle(ContactEnded("c2", EndedBy.CALLER), 30_200)
    e.handle(OfferAnswered("c1", "a"), 30_201)
    out = e.handle(CallbackFailed("c1"), 30_230)
    assert logs(out, LogKind.CALLBACK_EXHAUSTED)[0].attempt == 2
    assert not e.has_contact("c1")


def test_callback_counts_in_positions_and_estimated_wait() -> None:
    e = engine([QueueConfig("q", default_handle_ms=60_000)], [agent("a")])
    e.handle(ContactArrived("busy", "q"), 0)
    e.handle(OfferAnswered("busy", "a"), 1)
    e.handle(ContactArrived("c0", "q", callback_number="1"), 2)
    e.handle(CallbackRequested("c0"), 3)
    e.handle(ContactArrived("c1", "q"), 4)
    assert e.position("c1") == 2
    assert e.estimated_wait_ms(contact_id="c1") == 120_000
    assert e.snapshot(5).queues[0].callbacks_waiting == 1


# -- agents -------------------------------------------------------------------------------------------------


def test_ring_timeout_goes_to_the_next_agent() -> None:
    e = engine([QueueConfig("q", strategy=Strategy.LINEAR, ring_timeout_ms=10_000)], [agent("a1"), agent("a2")])
    assert of(e.handle(ContactArrived("c", "q"), 0), OfferContact)[0].agent_id == "a1"
    out = e.handle(TimerFired(), 10_000)
    assert of(out, CancelOffer) == [CancelOffer("c", "a1", CancelReason.TIMEOUT)]
    assert logs(out, LogKind.RING_NO_ANSWER)[0].ring_ms == 10_000
    assert [o.agent_id for o in of(out, OfferContact)] == ["a2"]


def test_wrap_up_blocks_offers_in_every_queue_of_the_agent() -> None:
    names = [f"q{i}" for i in range(6)]
    e = engine([QueueConfig(n) for n in names], [agent("a", queues=names, wrap_up_ms=30_000)])
    e.handle(ContactArrived("c", "q0"), 0)
    e.handle(OfferAnswered("c", "a"), 1)
    e.handle(ContactEnded("c", EndedBy.CALLER), 1_000)
    assert e.agent_state("a") is AgentState.WRAP_UP
    for i, n in enumerate(names):
        assert of(e.handle(ContactArrived(f"w{i}", n), 2_000 + i), OfferContact) == []
    out = e.handle(TimerFired(), 31_000)
    assert [o.contact_id for o in of(out, OfferContact)] == ["w0"]  # the earliest, across queues
    e.handle(OfferAnswered("w0", "a"), 31_001)
    e.handle(ContactEnded("w0", EndedBy.AGENT), 32_000)
    assert of(e.handle(AgentReady("a"), 33_000), OfferContact)[0].contact_id == "w1"  # ready ends wrap-up


def test_auto_pause_after_consecutive_misses_and_a_paused_agent_stays_paused() -> None:
    cfg = EngineConfig(no_answer_rest_ms=0, auto_pause_after=3)
    e = engine([QueueConfig("q", ring_timeout_ms=1_000)], [agent("a")], config=cfg)
    e.handle(ContactArrived("c", "q"), 0)
    e.handle(TimerFired(), 1_000)
    e.handle(TimerFired(), 2_000)
    out = e.handle(TimerFired(), 3_000)
    assert logs(out, LogKind.PAUSE)[0].reason == "missed-offers"
    assert e.agent_state("a") is AgentState.PAUSED
    assert of(out, OfferContact) == []
    e.handle(AgentUnpaused("a"), 4_000)
    e.handle(OfferAnswered("c", "a"), 4_001)  # offered again on unpause; a hit resets the count
    e.handle(ContactEnded("c", EndedBy.AGENT), 5_000)
    # An agent who went on a break while ringing stays on it after the miss.
    e.handle(ContactArrived("d", "q"), 6_000)
    e.handle(AgentPaused("a", "break"), 6_100)
    out = e.handle(TimerFired(), 7_000)
    assert logs(out, LogKind.RING_NO_ANSWER)
    snap = {s.agent_id: s for s in e.snapshot(7_000).agents}["a"]
    assert snap.state is AgentState.PAUSED and snap.pause_reason == "break"


def test_rejected_offer_rests_the_agent_then_retries() -> None:
    e = engine([QueueConfig("q")], [agent("a")], config=EngineConfig(no_answer_rest_ms=5_000))
    e.handle(ContactArrived("c", "q"), 0)
    out = e.handle(OfferRejected("c", "a", "busy"), 100)
    assert logs(out, LogKind.OFFER_REJECTED)[0].reason == "busy"
    assert e.agent_state("a") is AgentState.RESTING
    assert of(e.handle(TimerFired(), 5_100), OfferContact)[0].agent_id == "a"


def test_device_unavailable_agent_is_not_offered_and_the_reason_is_logged() -> None:
    e = engine([QueueConfig("q", strategy=Strategy.LINEAR)], [agent("a1"), agent("a2")])
    out = e.handle(DeviceStateChanged("a1", False, "not-registered"), 0)
    assert logs(out, LogKind.DEVICE_UNAVAILABLE)[0].reason == "not-registered"
    assert e.agent_state("a1") is AgentState.UNREACHABLE
    assert of(e.handle(ContactArrived("c1", "q"), 1), OfferContact)[0].agent_id == "a2"
    e.handle(ContactArrived("c2", "q"), 2)
    out = e.handle(DeviceStateChanged("a1", True), 3)
    assert logs(out, LogKind.DEVICE_AVAILABLE)
    assert of(out, OfferContact)[0].agent_id == "a1"


def test_chat_capacity_lets_an_agent_take_several_chats_but_one_call() -> None:
    profile = AgentProfile("a", queues={"chat": Membership(), "voice": Membership()},
                           capacity={Channel.VOICE: 1, Channel.CHAT: 3})
    e = engine([QueueConfig("chat", channel=Channel.CHAT), QueueConfig("voice")], [profile])
    for i in range(4):
        e.handle(ContactArrived(f"chat{i}", "chat"), i)
    assert e.waiting_contacts("chat") == ["chat3"]
    e.handle(ContactArrived("v1", "voice"), 10)
    e.handle(ContactArrived("v2", "voice"), 11)
    assert e.waiting_contacts("voice") == ["v2"]


def test_logout_withdraws_ringing_offers() -> None:
    e = engine([QueueConfig("q")], [agent("a")])
    e.handle(ContactArrived("c", "q"), 0)
    out = e.handle(AgentLoggedOut("a", "shift end"), 1)
    assert of(out, CancelOffer) == [CancelOffer("c", "a", CancelReason.AGENT_LOGGED_OUT)]
    assert logs(out, LogKind.LOGOUT)[0].reason == "shift end"
    assert e.waiting_contacts("q") == ["c"]


# -- estimated wait, announcements, statistics -------------------------------------------------------------


def test_estimated_wait_from_recent_handle_times_and_staffed_agents() -> None:
    q = QueueConfig("q", handle_time_window=2, default_handle_ms=100_000)
    e = engine([q], [agent("a1"), agent("a2")])
    assert e.estimated_wait_ms("q") == 0  # free agents, nobody waiting
    now = 0
    for i, talk in enumerate([30_000, 50_000, 70_000]):
        offer = of(e.handle(ContactArrived(f"c{i}", "q"), now), OfferContact)[0]
        e.handle(OfferAnswered(f"c{i}", offer.agent_id), now)
        now += talk
        e.handle(ContactEnded(f"c{i}", EndedBy.AGENT), now)
    # The window keeps the last two handle times: mean 60 s; two staffed agents.
    for i in range(2):
        e.handle(ContactArrived(f"b{i}", "q"), now)
    e.handle(ContactArrived("w", "q"), now)
    assert e.estimated_wait_ms(contact_id="w") == 30_000
    assert e.estimated_wait_ms("q") == 60_000


def test_announcements_at_join_and_every_interval() -> None:
    q = QueueConfig("q", announce_on_join=True, announce_interval_ms=30_000, default_handle_ms=60_000)
    e = engine([q], [agent("a")])
    e.handle(ContactArrived("busy", "q"), 0)
    out = e.handle(ContactArrived("c", "q"), 500)
    assert of(out, Announce) == [Announce("c", 1, 60)]  # the agent is ringing for busy
    e.handle(OfferAnswered("busy", "a"), 1_000)
    out = e.handle(ContactArrived("d", "q"), 2_000)
    assert of(out, Announce) == [Announce("d", 2, 120)]
    out = e.handle(TimerFired(), 30_500)
    assert of(out, Announce) == [Announce("c", 1, 60)]
    out = e.handle(TimerFired(), 32_000)
    assert of(out, Announce) == [Announce("d", 2, 120)]
    assert e.next_deadline() == 60_500


def test_snapshot_counters_service_level_asa_and_reset() -> None:
    e = engine([QueueConfig("q", service_level_ms=20_000)], [agent("a")])
    e.handle(ContactArrived("fast", "q"), 0)
    e.handle(OfferAnswered("fast", "a"), 5_000)
    e.handle(ContactArrived("slow", "q"), 6_000)
    e.handle(ContactArrived("gone", "q"), 7_000)
    e.handle(ContactAbandoned("gone"), 9_000)
    e.handle(ContactEnded("fast", EndedBy.CALLER), 40_000)
    e.handle(OfferAnswered("slow", "a"), 46_000)
    snap = e.snapshot(50_000).queues[0]
    assert (snap.answered, snap.abandoned, snap.answered_within_sl) == (2, 1, 1)
    assert snap.service_level == pytest.approx(1 / 3)
    assert snap.asa_ms == pytest.approx((5_000 + 40_000) / 2)
    assert snap.agents_by_state[AgentState.ON_CONTACT] == 1
    e.handle(StatisticsReset(), 60_000)
    snap = e.snapshot(60_000).queues[0]
    assert (snap.answered, snap.abandoned, snap.service_level) == (0, 0, None)
    out = e.handle(ContactTransferred("slow", "extension:2000"), 61_000)
    assert logs(out, LogKind.TRANSFER)[0].target == "extension:2000"


def test_abandon_is_logged_with_position_and_wait() -> None:
    e = engine([QueueConfig("q")], [agent("a")], login=False)
    e.handle(ContactArrived("c1", "q"), 0)
    e.handle(ContactArrived("c2", "q"), 1_000)
    out = e.handle(ContactAbandoned("c2"), 4_000)
    rec = logs(out, LogKind.ABANDON)[0]
    assert (rec.position, rec.wait_ms) == (2, 3_000)


def test_programming_errors_raise_acd_state_error() -> None:
    e = engine([QueueConfig("q")], [agent("a")])
    with pytest.raises(AcdStateError):
        e.handle(ContactAbandoned("nobody"), 0)
    with pytest.raises(AcdStateError):
        e.handle(ContactArrived("c", "nosuch"), 0)
    e.handle(ContactArrived("c", "q"), 10)
    with pytest.raises(AcdStateError):
        e.handle(ContactArrived("c", "q"), 11)
    with pytest.raises(AcdStateError):
        e.handle(OfferAnswered("c", "ghost"), 12)
    with pytest.raises(AcdStateError):
        e.handle(TimerFired(), 5)
    with pytest.raises(AcdStateError):
        AgentProfile("x", skills={"s": 11})


def test_an_answer_that_arrives_as_the_ring_timeout_falls_due_is_too_late() -> None:
    """The timer fires first: the offer is cancelled (the agent's phone stops ringing) and the answer that raced
    it connects nothing — the pbx adapter then hangs up the agent leg it no longer wants."""
    e = engine([QueueConfig("q", ring_timeout_ms=10_000)], [agent("a1")])
    assert of(e.handle(ContactArrived("c", "q"), 0), OfferContact)[0].agent_id == "a1"
    out = e.handle(OfferAnswered("c", "a1"), 10_000)
    assert of(out, CancelOffer) == [CancelOffer("c", "a1", CancelReason.TIMEOUT)]
    assert of(out, ConnectContact) == []
    assert e.contact_state("c") is ContactState.WAITING
