"""Queueing predictions for a staffed queue: Erlang B, Erlang C (M/M/c) and Erlang A (M/M/c+M, Palm's model
with exponential patience).

All in floating point and stable for hundreds of agents: Erlang B by its recursion
``B(0) = 1, B(k) = A B(k-1) / (k + A B(k-1))`` (no factorials or powers), Erlang C from Erlang B, and Erlang A
from the birth-death chain's stationary distribution computed in log space, with the waiting customer's
progress to a server (or its own abandonment) as a small absorbing chain solved by recursion and, for the
service level, by uniformization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Prediction:
    """``service_level``: fraction of arrivals answered within the threshold; ``asa_s``: mean wait of answered
    contacts (0 for those answered at once); ``occupancy``: busy fraction of the agents; ``abandon_rate``:
    fraction of arrivals that abandon; ``p_wait``: fraction that wait at all."""

    service_level: float
    asa_s: float
    occupancy: float
    abandon_rate: float
    p_wait: float


def erlang_b(agents: int, erlangs: float) -> float:
    """Blocking probability of ``agents`` servers offered ``erlangs`` of traffic (ITU-T E.501's Erlang B)."""
    if agents < 0 or erlangs < 0:
        raise ValueError("agents and traffic must be non-negative")
    b = 1.0
    for k in range(1, agents + 1):
        b = erlangs * b / (k + erlangs * b)
    return b


def erlang_c(agents: int, erlangs: float) -> float:
    """Probability that an arrival waits (M/M/c); 1 when the load is at or above the number of agents."""
    if erlangs >= agents:
        return 1.0
    b = erlang_b(agents, erlangs)
    return agents * b / (agents - erlangs * (1.0 - b))


def erlang_c_prediction(agents: int, arrivals_per_hour: float, aht_s: float, sl_seconds: float) -> Prediction:
    """Service level, ASA and occupancy of an M/M/c queue (infinite patience)."""
    erlangs = arrivals_per_hour * aht_s / 3600.0
    if erlangs >= agents:
        return Prediction(0.0, math.inf, 1.0, 0.0, 1.0)
    c = erlang_c(agents, erlangs)
    rate = (agents - erlangs) / aht_s  # per second: how fast the queue drains beyond arrivals
    return Prediction(
        service_level=1.0 - c * math.exp(-rate * sl_seconds),
        asa_s=c / rate,
        occupancy=erlangs / agents,
        abandon_rate=0.0,
        p_wait=c,
    )


def _stationary(agents: int, lam: float, mu: float, theta: float) -> tuple[list[float], float]:
    """Stationary distribution of the M/M/c+M chain (truncated where negligible) and P(n < agents)."""
    logs = [0.0]
    n = 0
    peak = 0.0
    while True:
        n += 1
        death = min(n, agents) * mu + max(n - agents, 0) * theta
        logs.append(logs[-1] + math.log(lam) - math.log(death))
        peak = max(peak, logs[-1])
        if n > agents and logs[-1] < peak - 40.0 and logs[-1] < logs[-2]:
            break
        if n > agents + 1_000_000:  # pragma: no cover - unreachable with theta > 0
            break
    weights = [math.exp(x - peak) for x in logs]
    total = sum(weights)
    p = [w / total for w in weights]
    return p, sum(p[:agents])


def erlang_a_prediction(agents: int, arrivals_per_hour: float, aht_s: float, patience_s: float,
                        sl_seconds: float) -> Prediction:
    """M/M/c+M: exponential patience with mean ``patience_s`` (Palm; Garnett, Mandelbaum and Reiman 2002)."""
    lam = arrivals_per_hour / 3600.0
    mu = 1.0 / aht_s
    theta = 1.0 / patience_s
    if lam <= 0:
        return Prediction(1.0, 0.0, 0.0, 0.0, 0.0)
    p, p_no_wait = _stationary(agents, lam, mu, theta)
    waiting = p[agents:]  # an arrival finding n = agents + j waits with j ahead of it
    served_rate = agents * mu
    # s[j]: P(served | j ahead), m[j]: E[wait; served | j ahead]
    s: list[float] = []
    m: list[float] = []
    prev_s, prev_m = 1.0, 0.0
    for j in range(len(waiting)):
        advance = served_rate + j * theta
        out = advance + theta
        sj = advance / out * prev_s
        mj = sj / out + advance / out * prev_m
        s.append(sj)
        m.append(mj)
        prev_s, prev_m = sj, mj
    p_answered = p_no_wait + sum(w * sj for w, sj in zip(waiting, s, strict=True))
    wait_answered = sum(w * mj for w, mj in zip(waiting, m, strict=True))
    within = p_no_wait + _served_within(waiting, served_rate, theta, sl_seconds)
    return Prediction(
        service_level=within,
        asa_s=wait_answered / p_answered if p_answered > 0 else math.inf,
        occupancy=lam * p_answered * aht_s / agents,
        abandon_rate=1.0 - p_answered,
        p_wait=1.0 - p_no_wait,
    )


def _served_within(initial: list[float], served_rate: float, theta: float, t: float) -> float:
    """P(served by time ``t``) for a waiting customer with ``initial[j]`` the probability of ``j`` ahead:
    states j -> j-1 at ``served_rate + j theta``, 0 -> served at ``served_rate``, own abandonment at ``theta``.
    Uniformization: a Poisson number of steps of the discrete chain at rate ``big``."""
    if t <= 0 or not initial:
        return 0.0
    k = len(initial) - 1
    big = served_rate + k * theta + theta
    v = list(initial)
    served = 0.0
    result = 0.0
    log_term = -big * t  # log of the Poisson(big t) probability of n steps
    n = 0
    horizon = big * t + 10.0 * math.sqrt(big * t + 1.0) + 20.0
    while n <= horizon:
        result += math.exp(log_term) * served  # served: absorbed in "served" within n steps
        new = [0.0] * len(v)
        served += v[0] * served_rate / big
        for j, x in enumerate(v):
            if x == 0.0:
                continue
            advance = (served_rate + j * theta) / big
            new[j] += x * (1.0 - advance - theta / big)
            if j > 0:
                new[j - 1] += x * advance
        v = new
        n += 1
        log_term += math.log(big * t) - math.log(n)
    return result
