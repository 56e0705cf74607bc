"""Each routing strategy, through the engine: which free agent gets the contact."""

from __future__ import annotations

from collections import Counter

from ccpbx.acd.events import (
    CancelOffer,
    CancelReason,
    ContactArrived,
    ContactEnded,
    EndedBy,
    OfferAnswered,
    OfferContact,
)
from ccpbx.acd.model import AgentProfile, EngineConfig, Membership, QueueConfig, Strategy

from .helpers import agent, engine, of

AGENTS = [agent("a1"), agent("a2"), agent("a3")]


def _serve(e, n: int, start: int = 1000, talk: int = 100) -> list[str]:  # type: ignore[no-untyped-def]
    """Offer n contacts one at a time, answering and ending each; return who got them."""
    got = []
    now = start
    for i in range(n):
        offers = of(e.handle(ContactArrived(f"c{i}", "q"), now), OfferContact)
        assert len(offers) == 1
        got.append(offers[0].agent_id)
        e.handle(OfferAnswered(f"c{i}", offers[0].agent_id), now + 1)
        e.handle(ContactEnded(f"c{i}", EndedBy.AGENT), now + talk)
        now += talk + 10
    return got


def test_ring_all_rings_every_free_agent_and_the_first_answer_wins() -> None:
    e = engine([QueueConfig("q", strategy=Strategy.RING_ALL)], AGENTS)
    offers = of(e.handle(ContactArrived("c", "q"), 10), OfferContact)
    assert sorted(o.agent_id for o in offers) == ["a1", "a2", "a3"]
    out = e.handle(OfferAnswered("c", "a2"), 20)
    assert sorted((c.agent_id, c.reason) for c in of(out, CancelOffer)) == [
        ("a1", CancelReason.ANSWERED_ELSEWHERE), ("a3", CancelReason.ANSWERED_ELSEWHERE)]


def test_linear_always_starts_with_the_first_member() -> None:
    e = engine([QueueConfig("q", strategy=Strategy.LINEAR)], AGENTS)
    assert _serve(e, 3) == ["a1", "a1", "a1"]


def test_round_robin_remembers_where_it_stopped() -> None:
    e = engine([QueueConfig("q", strategy=Strategy.ROUND_ROBIN)], AGENTS)
    assert _serve(e, 5) == ["a1", "a2", "a3", "a1", "a2"]


def test_longest_idle_takes_the_agent_idle_longest() -> None:
    e = engine([QueueConfig("q", strategy=Strategy.LONGEST_IDLE)], AGENTS)
    # Each contact ends before the next arrives, so the agent who just finished is idle the shortest.
    assert _serve(e, 4) == ["a1", "a2", "a3", "a1"]


def test_fewest_calls_evens_out_the_answered_counts() -> None:
    e = engine([QueueConfig("q", strategy=Strategy.FEWEST_CALLS)], AGENTS)
    got = _serve(e, 9)
    assert Counter(got) == {"a1": 3, "a2": 3, "a3": 3}


def test_random_is_reproducible_with_the_injected_seed_and_uses_everyone() -> None:
    runs = [_serve(engine([QueueConfig("q", strategy=Strategy.RANDOM)], AGENTS, seed=7), 30) for _ in range(2)]
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"a1", "a2", "a3"}
    other = _serve(engine([QueueConfig("q", strategy=Strategy.RANDOM)], AGENTS, seed=8), 30)
    assert other != runs[0]


def test_weighted_random_follows_the_weights() -> None:
    agents = [AgentProfile("heavy", queues={"q": Membership(weight=9.0)}),
              AgentProfile("light", queues={"q": Membership(weight=1.0)}),
              AgentProfile("never", queues={"q": Membership(weight=0.0)})]
    got = Counter(_serve(engine([QueueConfig("q", strategy=Strategy.WEIGHTED_RANDOM)], agents, seed=3), 400))
    assert got["never"] == 0
    assert 0.8 < got["heavy"] / 400 < 0.97


def test_skills_based_takes_the_best_match_then_longest_idle_and_preferences_break_ties() -> None:
    agents = [agent("low", skills={"fr": 3}), agent("high", skills={"fr": 9}),
              agent("high2", skills={"fr": 9, "vip": 1})]
    e = engine([QueueConfig("q", strategy=Strategy.SKILLS_BASED)], agents)
    offers = of(e.handle(ContactArrived("c1", "q", skills={"fr": 2}), 10), OfferContact)
    assert [o.agent_id for o in offers] == ["high"]  # 9 beats 3; high and high2 tie, high idle longer (order)
    e.handle(OfferAnswered("c1", "high"), 11)
    offers = of(e.handle(ContactArrived("c2", "q", skills={"fr": 2}, preferred_skills=frozenset({"low-x"})), 20),
                OfferContact)
    assert [o.agent_id for o in offers] == ["high2"]
    e2 = engine([QueueConfig("q", strategy=Strategy.SKILLS_BASED)], agents, config=EngineConfig())
    offers = of(e2.handle(ContactArrived("c", "q", skills={"fr": 2}, preferred_skills=frozenset({"vip"})), 10),
                OfferContact)
    assert [o.agent_id for o in offers] == ["high2"]  # the preferred skill wins the tie


def test_lower_penalty_tier_first_whatever_the_strategy() -> None:
    agents = [agent("backup", penalty=5), agent("main", penalty=0)]
    e = engine([QueueConfig("q", strategy=Strategy.LINEAR)], agents)
    offers = of(e.handle(ContactArrived("c1", "q"), 10), OfferContact)
    assert [o.agent_id for o in offers] == ["main"]
    e.handle(OfferAnswered("c1", "main"), 11)
    offers = of(e.handle(ContactArrived("c2", "q"), 12), OfferContact)
    assert [o.agent_id for o in offers] == ["backup"]  # the main agent is busy: the next tier takes it


def test_agents_missing_a_required_skill_level_are_not_offered() -> None:
    agents = [agent("a", skills={"de": 4}), agent("b", skills={"de": 7})]
    e = engine([QueueConfig("q", strategy=Strategy.LINEAR)], agents)
    offers = of(e.handle(ContactArrived("c", "q", skills={"de": 5}), 10), OfferContact)
    assert [o.agent_id for o in offers] == ["b"]
    assert of(e.handle(ContactArrived("c2", "q", skills={"es": 1}), 11), OfferContact) == []
