"""What goes into the engine (events, past tense) and what comes out (actions, imperative; queue-log records).

The full contract, with the order in which an adapter sees things, is in :mod:`ccpbx.acd.engine`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ccpbx.acd.model import Channel

# -- events (inputs) ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactArrived:
    """A contact (call, chat, e-mail) enters ``queue``. ``skills``: required skill -> minimum level;
    ``preferred_skills`` win ties between agents; ``callback_number`` is what a callback dials."""

    contact_id: str
    queue: str
    priority: int = 0
    channel: Channel | None = None  # None: the queue's channel
    skills: Mapping[str, int] = field(default_factory=dict)
    preferred_skills: frozenset[str] = frozenset()
    data: Mapping[str, object] = field(default_factory=dict)
    callback_number: str | None = None


@dataclass(frozen=True, slots=True)
class OfferAnswered:
    """The agent answered an ``OfferContact`` (for a callback offered agent-first, too)."""

    contact_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class OfferRejected:
    """The agent declined the offer or its device could not be rung (busy, 480...); counts as a missed offer."""

    contact_id: str
    agent_id: str
    reason: str = "rejected"


class EndedBy(enum.Enum):
    AGENT = "agent"
    CALLER = "caller"


@dataclass(frozen=True, slots=True)
class ContactEnded:
    """A connected contact ended normally; the agent goes to wrap-up."""

    contact_id: str
    ended_by: EndedBy


@dataclass(frozen=True, slots=True)
class ContactTransferred:
    """The agent transferred a connected contact away (it leaves the engine); the agent goes to wrap-up."""

    contact_id: str
    destination: str


@dataclass(frozen=True, slots=True)
class ContactAbandoned:
    """The caller left before being connected (waiting or ringing), or a kept callback was cancelled."""

    contact_id: str


@dataclass(frozen=True, slots=True)
class CallbackRequested:
    """A waiting caller asked to be called back at ``number`` (None: the contact's ``callback_number``).
    The contact keeps its place; the adapter hangs the caller up after this event."""

    contact_id: str
    number: str | None = None


@dataclass(frozen=True, slots=True)
class CallbackAnswered:
    """The customer answered the call placed for a ``StartCallback``."""

    contact_id: str


@dataclass(frozen=True, slots=True)
class CallbackFailed:
    """The call placed for a ``StartCallback`` was not answered (busy, no answer, failed)."""

    contact_id: str
    reason: str = "no-answer"


@dataclass(frozen=True, slots=True)
class AgentLoggedIn:
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentLoggedOut:
    """Offers still ringing are withdrawn; contacts in progress continue to their end."""

    agent_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AgentPaused:
    agent_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AgentUnpaused:
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentReady:
    """The agent ends its wrap-up early."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class DeviceStateChanged:
    """The agent's voice device became (un)available: not registered, or in use by a call not from this engine.
    Offers already ringing are left to the adapter (it reports ``OfferRejected`` if the ring fails)."""

    agent_id: str
    available: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class QueueOpened:
    queue: str


@dataclass(frozen=True, slots=True)
class QueueClosed:
    """Outside the queue's schedule: arrivals take ``on_closed``; contacts already waiting are still served."""

    queue: str


@dataclass(frozen=True, slots=True)
class StatisticsReset:
    """Reset the answered/abandoned/service-level counters (of one queue, or all with None), e.g. at midnight."""

    queue: str | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    """Nothing happened but time passed: the adapter's one timer for ``next_deadline()`` went off."""


Event = (
    ContactArrived | OfferAnswered | OfferRejected | ContactEnded | ContactTransferred | ContactAbandoned
    | CallbackRequested | CallbackAnswered | CallbackFailed | AgentLoggedIn | AgentLoggedOut | AgentPaused
    | AgentUnpaused | AgentReady | DeviceStateChanged | QueueOpened | QueueClosed | StatisticsReset | TimerFired
)

# -- actions (outputs) --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfferContact:
    """Ring the agent with the contact for at most ``timeout_ms``; answer with ``OfferAnswered`` or
    ``OfferRejected`` (the engine itself withdraws it with ``CancelOffer`` on timeout). ``callback_number`` is
    set when this is an agent-first callback: the customer is not on the line yet."""

    contact_id: str
    agent_id: str
    queue: str
    timeout_ms: int
    callback_number: str | None = None


class CancelReason(enum.Enum):
    TIMEOUT = "timeout"  # ring-no-answer
    ANSWERED_ELSEWHERE = "answered-elsewhere"  # ring-all: another agent answered
    CALLER_LEFT = "caller-left"
    AGENT_LOGGED_OUT = "agent-logged-out"
    OVERFLOW = "overflow"
    CALLBACK = "callback"  # the caller asked for a callback while an offer rang


@dataclass(frozen=True, slots=True)
class CancelOffer:
    """Stop ringing the agent with the contact."""

    contact_id: str
    agent_id: str
    reason: CancelReason


@dataclass(frozen=True, slots=True)
class ConnectContact:
    """Bridge the contact with the agent (after an ``OfferAnswered``; for a callback, once both are up)."""

    contact_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class OverflowContact:
    """Take the contact out of the engine and send it to ``destination`` (a dial-plan destination string)."""

    contact_id: str
    queue: str
    destination: str
    reason: str


@dataclass(frozen=True, slots=True)
class MoveContact:
    """The contact now waits in ``to_queue`` (overflow or escalation); informational (music, announcements)."""

    contact_id: str
    from_queue: str
    to_queue: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReleaseForCallback:
    """Overflow to a callback: tell the caller it will be called back at ``number`` and hang up. The contact
    stays in the engine with its place."""

    contact_id: str
    number: str


@dataclass(frozen=True, slots=True)
class StartCallback:
    """Dial the customer at ``number`` for the contact; answer with ``CallbackAnswered`` or ``CallbackFailed``.
    Agent-first: ``agent_id`` answered already and waits on the line. Customer-first: ``agent_id`` is reserved
    (not rung); the engine rings it with an ``OfferContact`` once the customer answers."""

    contact_id: str
    agent_id: str
    number: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Announce:
    """Tell the waiting caller its position (1 = next) and estimated wait (None: no staffed agent)."""

    contact_id: str
    position: int
    ewt_s: int | None


class LogKind(enum.Enum):
    """Queue-log record kinds (the adapter stores one row per record)."""

    ENTER = "enter"
    OFFER = "offer"
    RING_NO_ANSWER = "ring-no-answer"
    OFFER_REJECTED = "offer-rejected"
    CONNECT = "connect"
    COMPLETE_AGENT = "complete-agent"
    COMPLETE_CALLER = "complete-caller"
    ABANDON = "abandon"
    TRANSFER = "transfer"
    OVERFLOW = "overflow"
    ESCALATE = "escalate"
    CALLBACK_REQUESTED = "callback-requested"
    CALLBACK_ATTEMPTED = "callback-attempted"
    CALLBACK_FAILED = "callback-failed"
    CALLBACK_COMPLETED = "callback-completed"
    CALLBACK_EXHAUSTED = "callback-exhausted"
    LOGIN = "login"
    LOGOUT = "logout"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    DEVICE_UNAVAILABLE = "device-unavailable"
    DEVICE_AVAILABLE = "device-available"


@dataclass(frozen=True, slots=True)
class QueueLog:
    """One queue-log record. Fields not meaningful for a kind are None.

    ``wait_ms``: since the contact arrived in the engine; ``talk_ms``: connect to end; ``ring_ms``: offer to
    answer or timeout; ``position``: 1-based place among the queue's waiting contacts (ENTER, ABANDON);
    ``target``: overflow destination or queue, transfer destination; ``reason``: pause/logout/device reason,
    overflow rule; ``attempt``: callback attempt number.
    """

    time_ms: int
    kind: LogKind
    queue: str | None = None
    contact_id: str | None = None
    agent_id: str | None = None
    wait_ms: int | None = None
    talk_ms: int | None = None
    ring_ms: int | None = None
    position: int | None = None
    target: str | None = None
    reason: str | None = None
    attempt: int | None = None


Action = (
    OfferContact | CancelOffer | ConnectContact | OverflowContact | MoveContact | ReleaseForCallback | StartCallback
    | Announce | QueueLog
)
