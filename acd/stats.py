"""Live statistics: per-queue counters, the handle-time window behind estimated waits, and the plain snapshot
dataclasses the PBX shows (``ccpbx show queues``, a wallboard)."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field


class AgentState(enum.Enum):
    LOGGED_OUT = "logged-out"
    AVAILABLE = "available"
    RESERVED = "reserved"  # ringing, or held for a customer-first callback
    ON_CONTACT = "on-contact"
    WRAP_UP = "wrap-up"
    PAUSED = "paused"
    RESTING = "resting"  # just missed an offer: nothing for ``no_answer_rest_ms``
    UNREACHABLE = "unreachable"  # logged in, but its voice device is unavailable


@dataclass(slots=True)
class QueueCounters:
    """Counters since the last ``StatisticsReset``."""

    answered: int = 0
    answered_within_sl: int = 0
    answer_wait_ms: int = 0
    abandoned: int = 0
    overflowed: int = 0
    callbacks_requested: int = 0
    callbacks_completed: int = 0


class HandleTimes:
    """A moving window of recent handle times (talk plus wrap-up), for the estimated wait."""

    __slots__ = ("_default_ms", "_sum_ms", "_window")

    def __init__(self, size: int, default_ms: int) -> None:
        self._window: deque[int] = deque(maxlen=size)
        self._sum_ms = 0
        self._default_ms = default_ms

    def add(self, handle_ms: int) -> None:
        if len(self._window) == self._window.maxlen:
            self._sum_ms -= self._window[0]
        self._window.append(handle_ms)
        self._sum_ms += handle_ms

    @property
    def mean_ms(self) -> float:
        return self._sum_ms / len(self._window) if self._window else float(self._default_ms)


def estimated_wait_ms(position: int, staffed: int, mean_handle_ms: float) -> int | None:
    """Expected wait of the contact at ``position`` (1 = next) when ``staffed`` agents each finish a contact
    every ``mean_handle_ms`` on average: the queue drains at ``staffed / mean_handle_ms``. None when unstaffed."""
    if staffed <= 0:
        return None
    return round(position * mean_handle_ms / staffed)


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """One queue now. ``service_level``: answered within ``service_level_ms`` / (answered + abandoned);
    ``asa_ms``: average speed of answer; both None before anything counted."""

    name: str
    open: bool
    waiting: int
    callbacks_waiting: int
    ringing: int
    longest_wait_ms: int
    staffed: int
    agents_by_state: Mapping[AgentState, int]
    answered: int
    answered_within_sl: int
    abandoned: int
    overflowed: int
    callbacks_requested: int
    callbacks_completed: int
    service_level: float | None
    asa_ms: float | None
    mean_handle_ms: float
    ewt_s: int | None


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    agent_id: str
    state: AgentState
    time_in_state_ms: int
    pause_reason: str | None
    device_available: bool
    device_reason: str
    answered: int
    missed_in_row: int
    contacts: tuple[str, ...]
    queues: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    time_ms: int
    queues: tuple[QueueSnapshot, ...]
    agents: tuple[AgentSnapshot, ...] = field(default_factory=tuple)
