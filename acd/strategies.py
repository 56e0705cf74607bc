"""Routing strategies: which of several free, qualified agents gets the contact.

The engine narrows the field first (the lowest penalty tier among the free agents, then the agents with the
most of the contact's preferred skills); a strategy chooses within what is left. Candidates arrive in member
order, so every strategy is deterministic given the injected RNG.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ccpbx.acd.errors import AcdStateError
from ccpbx.acd.model import Strategy


@dataclass(frozen=True, slots=True)
class Candidate:
    """What a strategy may look at: member ``order`` in the queue, idle since, answered count, weight and the
    sum of the agent's levels in the contact's required skills."""

    agent_id: str
    order: int
    idle_since_ms: int
    calls: int
    weight: float
    skill_score: int


def choose(strategy: Strategy, candidates: Sequence[Candidate], last_order: int, rng: random.Random) -> Candidate:
    """One candidate (``RING_ALL`` is not a choice: the engine offers to all). ``last_order`` is the member
    order of the agent the queue offered last (round-robin memory; -1 at first)."""
    if not candidates:
        raise AcdStateError("no candidate to choose from")
    if strategy is Strategy.LINEAR or strategy is Strategy.RING_ALL:
        return min(candidates, key=lambda c: c.order)
    if strategy is Strategy.ROUND_ROBIN:
        # The first member after the last one offered, wrapping around.
        after = [c for c in candidates if c.order > last_order]
        return min(after or candidates, key=lambda c: c.order)
    if strategy is Strategy.LONGEST_IDLE:
        return min(candidates, key=lambda c: (c.idle_since_ms, c.order))
    if strategy is Strategy.FEWEST_CALLS:
        return min(candidates, key=lambda c: (c.calls, c.idle_since_ms, c.order))
    if strategy is Strategy.RANDOM:
        return candidates[rng.randrange(len(candidates))]
    if strategy is Strategy.WEIGHTED_RANDOM:
        total = sum(max(c.weight, 0.0) for c in candidates)
        if total <= 0:
            return candidates[rng.randrange(len(candidates))]
        point = rng.random() * total
        for c in candidates:
            point -= max(c.weight, 0.0)
            if point < 0:
                return c
        return candidates[-1]
    if strategy is Strategy.SKILLS_BASED:
        return min(candidates, key=lambda c: (-c.skill_score, c.idle_since_ms, c.order))
    raise AcdStateError(f"unknown strategy {strategy}")  # pragma: no cover
