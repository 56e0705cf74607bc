"""A discrete-event simulation that drives the real engine: Poisson arrivals, exponential (or log-normal)
handle times, optional exponential patience, ``now`` jumping from one event to the next.

Agents answer every offer at once and have no wrap-up, so the model is M/M/c (M/M/c+M with patience) and the
result can be set beside :mod:`ccpbx.acd.erlang`. The first ``warmup_fraction`` of the run fills the queue from
empty and is not counted; arrivals stop at the horizon and the contacts still in the system finish.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ccpbx.acd.engine import AcdEngine
from ccpbx.acd.events import (
    Action,
    AgentLoggedIn,
    ConnectContact,
    ContactAbandoned,
    ContactArrived,
    ContactEnded,
    EndedBy,
    Event,
    OfferAnswered,
    OfferContact,
    TimerFired,
)
from ccpbx.acd.model import AgentProfile, EngineConfig, Membership, QueueConfig, Strategy

MS_PER_HOUR = 3_600_000
QUEUE = "sim"


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    agents: int
    arrivals_per_hour: float
    aht_s: float
    hours: float
    patience_s: float | None = None
    seed: int = 0
    lognormal: bool = False
    sl_seconds: float = 20.0
    warmup_fraction: float = 0.1
    strategy: Strategy = Strategy.LONGEST_IDLE


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Figures over the contacts that arrived after the warm-up (``occupancy`` over the same window)."""

    arrivals: int
    answered: int
    abandoned: int
    service_level: float
    asa_s: float
    occupancy: float
    abandon_rate: float
    engine_calls: int
    simulated_hours: float


_ARRIVAL, _END, _PATIENCE = 0, 1, 2


def simulate(config: SimulationConfig, progress: Callable[[int], None] | None = None) -> SimulationResult:
    """Run the simulation; ``progress(simulated_ms)`` is called about every simulated minute."""
    if config.agents < 1 or config.arrivals_per_hour <= 0 or config.aht_s <= 0 or config.hours <= 0:
        raise ValueError("agents, arrivals per hour, handle time and hours must be positive")
    arrivals_rng = random.Random(config.seed)
    service_rng = random.Random(config.seed + 1)
    patience_rng = random.Random(config.seed + 2)
    engine = AcdEngine(
        queues=[QueueConfig(QUEUE, strategy=config.strategy, ring_timeout_ms=MS_PER_HOUR)],
        agents=[AgentProfile(f"agent-{i}", queues={QUEUE: Membership()}) for i in range(config.agents)],
        config=EngineConfig(no_answer_rest_ms=0, auto_pause_after=0),
        rng=random.Random(config.seed + 3),
    )
    horizon = round(config.hours * MS_PER_HOUR)
    warmup = round(horizon * config.warmup_fraction)
    mean_gap_ms = MS_PER_HOUR / config.arrivals_per_hour
    aht_ms = config.aht_s * 1000.0
    sigma2 = math.log(2.0)  # log-normal with the same mean and a coefficient of variation of 1
    mu_log = math.log(aht_ms) - sigma2 / 2

    def service_ms() -> int:
        if config.lognormal:
            return max(1, round(service_rng.lognormvariate(mu_log, math.sqrt(sigma2))))
        return max(1, round(service_rng.expovariate(1.0 / aht_ms)))

    heap: list[tuple[int, int, int, str]] = []
    seq = 0

    def push(at: int, kind: int, ref: str) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at, seq, kind, ref))

    arrived_at: dict[str, int] = {}
    connected: set[str] = set()
    counted: set[str] = set()
    answered = abandoned = within = 0
    wait_total_ms = 0
    busy = 0
    busy_area = 0.0  # agent-ms busy inside the measurement window
    last_t = 0
    calls = 0
    sl_ms = config.sl_seconds * 1000.0
    next_progress = 0

    def advance(t: int) -> None:
        nonlocal busy_area, last_t
        lo, hi = max(last_t, warmup), min(t, horizon)
        if hi > lo:
            busy_area += busy * (hi - lo)
        last_t = t

    def run(event: Event, now: int) -> None:
        nonlocal calls, answered, within, wait_total_ms, busy
        todo: list[Event] = [event]
        while todo:
            actions: list[Action] = engine.handle(todo.pop(0), now)
            calls += 1
            for action in actions:
                if isinstance(action, OfferContact):
                    todo.append(OfferAnswered(action.contact_id, action.agent_id))
                elif isinstance(action, ConnectContact):
                    cid = action.contact_id
                    connected.add(cid)
                    busy += 1
                    push(now + service_ms(), _END, cid)
                    if cid in counted:
                        wait = now - arrived_at[cid]
                        answered += 1
                        wait_total_ms += wait
                        within += wait <= sl_ms

    push(round(arrivals_rng.expovariate(1.0 / mean_gap_ms)), _ARRIVAL, "")
    for i in range(config.agents):
        run(AgentLoggedIn(f"agent-{i}"), 0)
    n = 0
    while heap:
        deadline = engine.next_deadline()
        at, _, kind, ref = heap[0]
        if deadline is not None and deadline < at:
            advance(deadline)
            run(TimerFired(), deadline)
            continue
        heapq.heappop(heap)
        advance(at)
        if progress is not None and at >= next_progress:
            progress(min(at, horizon))
            next_progress = at + 60_000
        if kind == _ARRIVAL:
            if at >= horizon:
                continue
            n += 1
            cid = f"c{n}"
            arrived_at[cid] = at
            if at >= warmup:
                counted.add(cid)
            push(at + round(arrivals_rng.expovariate(1.0 / mean_gap_ms)), _ARRIVAL, "")
            if config.patience_s is not None:
                push(at + round(patience_rng.expovariate(1.0 / (config.patience_s * 1000.0))), _PATIENCE, cid)
            run(ContactArrived(cid, QUEUE), at)
        elif kind == _END:
            connected.discard(ref)
            arrived_at.pop(ref, None)
            busy -= 1
            run(ContactEnded(ref, EndedBy.CALLER), at)
        elif ref in arrived_at and ref not in connected:
            arrived_at.pop(ref)
            if ref in counted:
                abandoned += 1
            run(ContactAbandoned(ref), at)
    if progress is not None:
        progress(horizon)
    total = answered + abandoned
    window_ms = max(horizon - warmup, 1)
    return SimulationResult(
        arrivals=total,
        answered=answered,
        abandoned=abandoned,
        service_level=within / total if total else 1.0,
        asa_s=wait_total_ms / answered / 1000.0 if answered else 0.0,
        occupancy=busy_area / (config.agents * window_ms),
        abandon_rate=abandoned / total if total else 0.0,
        engine_calls=calls,
        simulated_hours=config.hours,
    )
