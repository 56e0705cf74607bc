"""The ACD's configuration vocabulary: channels, strategies, queues, agents, overflow targets, aging rules.

Everything here is a frozen value the engine is given; the engine's mutable state lives in
:mod:`ccpbx.acd.engine`. Times are integer milliseconds, as everywhere in the pure cores.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ccpbx.acd.errors import AcdStateError

MAX_SKILL_LEVEL = 10


class Channel(enum.Enum):
    """A media channel; an agent has a capacity per channel (one voice call, several chats)."""

    VOICE = "voice"
    CHAT = "chat"
    EMAIL = "email"


class Strategy(enum.Enum):
    """How a queue picks among the free, qualified agents of its lowest penalty tier."""

    RING_ALL = "ring-all"  # offer to every one of them at once; the first to answer wins
    LINEAR = "linear"  # always in member order
    ROUND_ROBIN = "round-robin"  # member order, starting after the last agent offered (rrmemory)
    LONGEST_IDLE = "longest-idle"  # the agent idle the longest (since its last contact ended, or login)
    FEWEST_CALLS = "fewest-calls"  # the agent that answered the fewest contacts of this queue
    RANDOM = "random"  # uniform, from the injected RNG
    WEIGHTED_RANDOM = "weighted-random"  # proportional to the membership's weight
    SKILLS_BASED = "skills-based"  # highest sum of levels in the required skills, then longest idle


class CallbackMode(enum.Enum):
    """Who is called first when a kept place comes up."""

    AGENT_FIRST = "agent-first"  # offer to the agent; when it answers, dial the customer
    CUSTOMER_FIRST = "customer-first"  # reserve the agent, dial the customer; when they answer, ring the agent


@dataclass(frozen=True, slots=True)
class ToQueue:
    """Overflow into another queue (the contact keeps its arrival order and effective priority)."""

    queue: str


@dataclass(frozen=True, slots=True)
class ToDestination:
    """Overflow out of the engine to an opaque dial-plan destination (``voicemail:100``, ``ivr:closed``)."""

    destination: str


@dataclass(frozen=True, slots=True)
class ToCallback:
    """Turn the caller into a callback that keeps its place (needs the contact's ``callback_number``)."""


OverflowTarget = ToQueue | ToDestination | ToCallback


@dataclass(frozen=True, slots=True)
class AgingStep:
    """After ``after_ms`` in the queue: add priority, relax the skill requirement, or escalate to a queue.

    ``relax_levels`` is the total relaxation from the contact's original requirement, not an increment:
    ``AgingStep(60_000, relax_levels=2)`` accepts level >= n-2 (never below 1) after 60 s.
    """

    after_ms: int
    add_priority: int = 0
    relax_levels: int = 0
    to_queue: str | None = None


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """One queue.

    Priority aging: a waiting contact's effective priority is ``priority + waited_ms / aging_ms_per_point``
    (``aging_ms_per_point = 0``: no linear aging) plus the ``add_priority`` of every step passed. The rate is
    common to the queue, so the order of waiting contacts never changes by itself and is kept in sorted lists.

    Overflow: each rule is active when its target is set. ``max_wait_ms``/``on_max_wait`` (from entering this
    queue, exactly at the threshold); ``max_length``/``on_max_length`` (an arrival that finds ``max_length``
    contacts waiting or ringing); ``join_empty=False`` / ``leave_when_empty=True`` with ``on_empty`` (no staffed
    agent: logged in and not paused); ``on_closed`` for arrivals while the queue is closed (``QueueClosed``).
    """

    name: str
    strategy: Strategy = Strategy.LONGEST_IDLE
    channel: Channel = Channel.VOICE
    ring_timeout_ms: int = 15_000
    aging_ms_per_point: int = 0
    aging_steps: tuple[AgingStep, ...] = ()
    max_wait_ms: int | None = None
    on_max_wait: OverflowTarget | None = None
    max_length: int | None = None
    on_max_length: OverflowTarget | None = None
    join_empty: bool = True
    leave_when_empty: bool = False
    on_empty: OverflowTarget | None = None
    on_closed: OverflowTarget | None = None
    callback_mode: CallbackMode = CallbackMode.AGENT_FIRST
    callback_attempts: int = 3
    callback_retry_ms: int = 60_000
    announce_on_join: bool = False
    announce_interval_ms: int = 0
    service_level_ms: int = 20_000
    handle_time_window: int = 50
    default_handle_ms: int = 180_000

    def __post_init__(self) -> None:
        if self.aging_ms_per_point < 0 or self.ring_timeout_ms <= 0:
            raise AcdStateError(f"queue {self.name}: negative aging rate or non-positive ring timeout")
        if any(s.add_priority < 0 or s.relax_levels < 0 or s.after_ms < 0 for s in self.aging_steps):
            raise AcdStateError(f"queue {self.name}: aging steps may only raise priority and relax requirements")
        if self.callback_attempts < 1 or self.handle_time_window < 1 or self.announce_interval_ms < 0:
            raise AcdStateError(f"queue {self.name}: callback_attempts and handle_time_window must be >= 1")


@dataclass(frozen=True, slots=True)
class Membership:
    """An agent's place in one queue: ``penalty`` (lower is offered first, Asterisk's sense) and ``weight``."""

    penalty: int = 0
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """An agent: skills (name -> level 1..10), queues, capacity per channel, wrap-up after each contact."""

    agent_id: str
    skills: Mapping[str, int] = field(default_factory=dict)
    queues: Mapping[str, Membership] = field(default_factory=dict)
    capacity: Mapping[Channel, int] = field(default_factory=lambda: {Channel.VOICE: 1})
    wrap_up_ms: int = 0
    auto_pause_after: int | None = None  # consecutive missed offers; None: the engine's default

    def __post_init__(self) -> None:
        for skill, level in self.skills.items():
            if not 1 <= level <= MAX_SKILL_LEVEL:
                raise AcdStateError(f"agent {self.agent_id}: skill {skill} level {level} is not within 1..10")
        if self.capacity.get(Channel.VOICE, 0) > 1:
            raise AcdStateError(f"agent {self.agent_id}: at most one voice contact at a time")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine-wide settings.

    ``no_answer_rest_ms``: after a missed or rejected offer the agent gets nothing for this long, so the
    contact goes to the next agent (Asterisk's ``retry``). ``auto_pause_after``: consecutive missed offers
    that pause the agent with ``auto_pause_reason`` (0: never).
    """

    no_answer_rest_ms: int = 5_000
    auto_pause_after: int = 3
    auto_pause_reason: str = "missed-offers"
