"""SIP transactions (RFC 3261 §17, amended by RFC 6026): a sans-IO layer of four state machines.

The layer owns every client and server transaction of one endpoint. It is a pure core (ARCHITECTURE.md):

- inputs change state and return nothing: ``receive``, ``send_request``, ``send_response``,
  ``send_stateless``, ``handle_timer``, ``transport_error``;
- outputs are drained: ``events()`` (past-tense dataclasses for the transaction user) and
  ``outgoing()`` (``(bytes, destination)`` pairs for the transports);
- time is integer monotonic milliseconds passed in as ``now``; the layer keeps one deadline heap with lazy
  deletion, so the asyncio edge arms a single ``loop.call_at(next_deadline())``.

Each machine is a transition table ``{(state, input): (effect, next_state)}`` (the shape of h2's
``connection.py``). A pair missing from a table is a programming error (``SipLocalError``); every input that
can come from the network is present in every live state, so a stray retransmission is absorbed, never raised.

Beyond §17, the server INVITE transaction also carries the UAS core's 2xx retransmission (§13.3.1.4): after a
2xx it re-sends the response at T1, 2·T1, … capped at T2 until an ACK of the same dialog arrives (Call-ID,
CSeq number and To tag: the ACK for a 2xx has a branch of its own), and reports ``AckTimedOut`` when none has
arrived after 64·T1, so the TU can send BYE.

It carries the UAS side of RFC 3262 §3 the same way: a reliable provisional response (``send_reliable_provisional``)
is re-sent at T1, 2·T1, 4·T1, … (doubling, no cap) over an unreliable transport until the TU reports its PRACK
(``acknowledge_provisional``) or a final response goes out, and ``PrackTimedOut`` is reported when no PRACK has
come after 64·T1, so the TU can reject the INVITE with a 5xx. One reliable provisional is outstanding at a time
(§3); the TU queues the next. Choosing RSeq and matching RAck are the TU's: this layer only keeps the timers.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, TypeVar

from ccpbx.pbx.sip.errors import SipLocalError
from ccpbx.pbx.sip.headers import Headers, Via
from ccpbx.pbx.sip.message import MAGIC_COOKIE, Request, Response, make_response
from ccpbx.pbx.sip.uri import parse_uri

# RFC 3261 §17.1.1.1 and Table 4.
T1_MS = 500  # round-trip time estimate
T2_MS = 4_000  # maximum retransmission interval of non-INVITE requests and INVITE responses
T4_MS = 5_000  # maximum time a message stays in the network
TIMER_D_UNRELIABLE_MS = 32_000  # §17.1.1.2: "at least 32 seconds" for unreliable transports
# The server's linger_grain_ms (see TransactionLayer): at 1,000 REGISTERs a second, 250 of them end in one callback
# (a few ms); at a few calls a second, the transactions of a call end together instead of in five wake-ups
LINGER_GRAIN_MS = 250
# §17.2.1: a server INVITE transaction sends 100 Trying when its TU has sent no response for 200 ms. A phone that
# rings or answers before (what a call to a registered phone does) then costs one datagram less each way: no
# 100 built, sent, and read by the caller. A retransmitted INVITE meanwhile gets the 100 at once.
TRYING_DELAY_MS = 200
# ... falling due on a grain of this many ms, at most a grain early: the INVITEs of one grain share the due time, so
# the one loop timer of the transactions' next deadline is not moved (and moved back when the timer is cancelled
# by the callee's ring) for each INVITE, only once a grain
TRYING_GRAIN_MS = 50

_Due = TypeVar("_Due", int, float)


def on_grain(due: _Due, grain: _Due) -> _Due:
    """``due`` rounded up to the next multiple of ``grain`` (unchanged when ``grain`` is 0): the linger grain of
    the transactions here and of the call manager's closed legs."""
    return -(-due // grain) * grain if grain else due


# Bounded state. Every transaction ends by a timer of §17 within 64·T1 of its final response; these bound the
# rest: how many may be alive at once (each costs a few kB: the request, the last response's bytes), and how
# long a non-INVITE server transaction may wait for its TU (the client gave up at Timer F, 64·T1).
MAX_TRANSACTIONS = 20_000  # live at once, client and server (~5 kB each: the request kept, the response bytes);
# past it the oldest quiet one goes (it only absorbs retransmissions), else the new request gets 503
EVICTION_SCAN = 64  # oldest transactions looked at for one to evict before a new request is refused
TU_WAIT_MS = 64 * T1_MS + T4_MS  # a non-INVITE server transaction without a final response ends after this
OVERLOAD_RETRY_AFTER_S = 5  # Retry-After of the 503 a request gets when the table is full of live transactions
ACK_MAX_FORWARDS = 70  # §8.1.1.6

Destination = tuple[str, str, int]
"""Where a message goes or came from: ``(transport, host, port)``, transport one of ``TRANSPORTS``."""

TRANSPORTS = frozenset({"udp", "tcp", "tls", "ws", "wss"})


class _IdentityHashEnum(Enum):
    """Members hash by identity (in C) instead of ``Enum.__hash__``'s Python call: the state tables are probed
    with (state, input) keys a few dozen times per call. Members are singletons and compare by identity, so
    the two agree."""

    __hash__ = object.__hash__


class TransactionKind(_IdentityHashEnum):
    CLIENT_INVITE = "client-invite"
    CLIENT_NON_INVITE = "client-non-invite"
    SERVER_INVITE = "server-invite"
    SERVER_NON_INVITE = "server-non-invite"


class TransactionState(_IdentityHashEnum):
    """The states of Figures 5-8 of RFC 3261 plus ``ACCEPTED`` of RFC 6026 §7."""

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class TransactionInput(_IdentityHashEnum):
    """What can happen to a transaction: a message from the network, a call of the TU, a timer."""

    # from the network
    REQUEST = "request"  # a retransmission of the request that created a server transaction
    ACK = "ack"  # an ACK matching a server INVITE transaction (by branch, or by dialog after a 2xx)
    RESPONSE_1XX = "1xx"
    RESPONSE_2XX = "2xx"
    RESPONSE_FINAL = "300-699"
    TRANSPORT_ERROR = "transport-error"
    # from the transaction user
    TU_1XX = "tu-1xx"
    TU_2XX = "tu-2xx"
    TU_FINAL = "tu-300-699"
    TU_RELIABLE_1XX = "tu-reliable-1xx"  # RFC 3262 §3: a 1xx with Require: 100rel and RSeq
    TU_PRACKED = "tu-pracked"  # the TU matched a PRACK to the outstanding reliable 1xx
    # timers (§17, Table 4; L and M from RFC 6026; the last two are the §13.3.1.4 service)
    TIMER_A = "timer-A"
    TIMER_B = "timer-B"
    TIMER_D = "timer-D"
    TIMER_E = "timer-E"
    TIMER_F = "timer-F"
    TIMER_G = "timer-G"
    TIMER_H = "timer-H"
    TIMER_I = "timer-I"
    TIMER_J = "timer-J"
    TIMER_K = "timer-K"
    TIMER_L = "timer-L"
    TIMER_M = "timer-M"
    RETRANSMIT_2XX = "retransmit-2xx"
    ACK_WAIT = "ack-wait"
    RETRANSMIT_1XX = "retransmit-1xx"  # RFC 3262 §3: the reliable 1xx, T1 doubling
    PRACK_WAIT = "prack-wait"  # RFC 3262 §3: 64·T1 without a PRACK
    TU_WAIT = "tu-wait"  # TU_WAIT_MS without a final response from the TU: the transaction is abandoned
    TIMER_TRYING = "timer-trying"  # a server INVITE transaction's TU sent nothing for trying_delay_ms: 100 Trying


NETWORK_INPUTS = frozenset({
    TransactionInput.REQUEST, TransactionInput.ACK, TransactionInput.RESPONSE_1XX,
    TransactionInput.RESPONSE_2XX, TransactionInput.RESPONSE_FINAL, TransactionInput.TRANSPORT_ERROR,
})

_TIMER_INPUTS = {member.value: member for member in TransactionInput}  # a heap entry's str -> its timer
_TRYING = TransactionInput.TIMER_TRYING.value


class Effect(_IdentityHashEnum):
    """What a transition does before it enters its next state (dispatched in ``TransactionLayer``)."""

    ABSORB = "absorb"
    RETRANSMIT_REQUEST = "retransmit-request"  # Timer A: interval doubles, no cap
    RETRANSMIT_REQUEST_CAPPED = "retransmit-request-capped"  # Timer E in Trying: min(2·interval, T2)
    RETRANSMIT_REQUEST_T2 = "retransmit-request-t2"  # Timer E in Proceeding: T2
    PASS_PROVISIONAL = "pass-provisional"
    PASS_RESPONSE = "pass-response"
    PASS_INVITE_2XX = "pass-invite-2xx"  # → Accepted, Timer M
    PASS_INVITE_FINAL_AND_ACK = "pass-invite-final-and-ack"  # → Completed, Timer D
    PASS_FINAL = "pass-final"  # non-INVITE → Completed, Timer K
    RESEND_ACK = "resend-ack"
    RESEND_RESPONSE = "resend-response"
    RESEND_RESPONSE_CAPPED = "resend-response-capped"  # Timer G
    RESEND_2XX = "resend-2xx"  # §13.3.1.4
    SEND_RESPONSE = "send-response"
    SEND_RELIABLE_1XX = "send-reliable-1xx"  # RFC 3262 §3: retransmitted until PRACKed
    RESEND_1XX = "resend-1xx"
    ACKNOWLEDGE_1XX = "acknowledge-1xx"  # PRACKed: stop retransmitting
    REPORT_PRACK_TIMEOUT = "report-prack-timeout"
    SEND_INVITE_2XX = "send-invite-2xx"  # → Accepted, Timer L and the 2xx retransmission
    SEND_INVITE_FINAL = "send-invite-final"  # → Completed, Timers G and H
    SEND_FINAL = "send-final"  # non-INVITE → Completed, Timer J
    CONFIRM = "confirm"  # ACK of a non-2xx: → Confirmed, Timer I
    ACKNOWLEDGE_2XX = "acknowledge-2xx"  # ACK of a 2xx: stop retransmitting, pass the ACK to the TU
    REPORT_ACK_TIMEOUT = "report-ack-timeout"
    TIME_OUT = "time-out"
    FAIL_TRANSPORT = "fail-transport"
    TERMINATE = "terminate"
    ABANDON = "abandon"  # the TU never answered (TU_WAIT_MS): counted, terminated without a response
    SEND_TRYING = "send-trying"  # §17.2.1: 100 Trying, when the TU has sent nothing yet (else its last 1xx again)


S = TransactionState
In = TransactionInput
E = Effect
Table = dict[tuple[TransactionState, TransactionInput], tuple[Effect, TransactionState]]


def _absorb_all(states: tuple[TransactionState, ...], inputs: tuple[TransactionInput, ...]) -> Table:
    return {(s, i): (E.ABSORB, s) for s in states for i in inputs}


# Figure 5 (§17.1.1) with RFC 6026 §8.4.
CLIENT_INVITE_TABLE: Table = {
    **_absorb_all((S.CALLING, S.PROCEEDING, S.COMPLETED, S.ACCEPTED), (In.REQUEST, In.ACK)),
    (S.CALLING, In.TIMER_A): (E.RETRANSMIT_REQUEST, S.CALLING),
    (S.CALLING, In.TIMER_B): (E.TIME_OUT, S.TERMINATED),
    (S.CALLING, In.RESPONSE_1XX): (E.PASS_PROVISIONAL, S.PROCEEDING),
    (S.CALLING, In.RESPONSE_2XX): (E.PASS_INVITE_2XX, S.ACCEPTED),
    (S.CALLING, In.RESPONSE_FINAL): (E.PASS_INVITE_FINAL_AND_ACK, S.COMPLETED),
    (S.CALLING, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.PROCEEDING, In.RESPONSE_1XX): (E.PASS_PROVISIONAL, S.PROCEEDING),
    (S.PROCEEDING, In.RESPONSE_2XX): (E.PASS_INVITE_2XX, S.ACCEPTED),
    (S.PROCEEDING, In.RESPONSE_FINAL): (E.PASS_INVITE_FINAL_AND_ACK, S.COMPLETED),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.COMPLETED, In.RESPONSE_1XX): (E.ABSORB, S.COMPLETED),
    (S.COMPLETED, In.RESPONSE_2XX): (E.ABSORB, S.COMPLETED),
    (S.COMPLETED, In.RESPONSE_FINAL): (E.RESEND_ACK, S.COMPLETED),
    (S.COMPLETED, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.COMPLETED, In.TIMER_D): (E.TERMINATE, S.TERMINATED),
    (S.ACCEPTED, In.RESPONSE_1XX): (E.ABSORB, S.ACCEPTED),
    (S.ACCEPTED, In.RESPONSE_2XX): (E.PASS_RESPONSE, S.ACCEPTED),  # retransmissions and forks go to the TU
    (S.ACCEPTED, In.RESPONSE_FINAL): (E.ABSORB, S.ACCEPTED),
    (S.ACCEPTED, In.TRANSPORT_ERROR): (E.ABSORB, S.ACCEPTED),  # the TU sends the ACK, not us
    (S.ACCEPTED, In.TIMER_M): (E.TERMINATE, S.TERMINATED),
}

# Figure 6 (§17.1.2).
CLIENT_NON_INVITE_TABLE: Table = {
    **_absorb_all((S.TRYING, S.PROCEEDING, S.COMPLETED), (In.REQUEST, In.ACK)),
    (S.TRYING, In.TIMER_E): (E.RETRANSMIT_REQUEST_CAPPED, S.TRYING),
    (S.TRYING, In.TIMER_F): (E.TIME_OUT, S.TERMINATED),
    (S.TRYING, In.RESPONSE_1XX): (E.PASS_PROVISIONAL, S.PROCEEDING),
    (S.TRYING, In.RESPONSE_2XX): (E.PASS_FINAL, S.COMPLETED),
    (S.TRYING, In.RESPONSE_FINAL): (E.PASS_FINAL, S.COMPLETED),
    (S.TRYING, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.PROCEEDING, In.TIMER_E): (E.RETRANSMIT_REQUEST_T2, S.PROCEEDING),
    (S.PROCEEDING, In.TIMER_F): (E.TIME_OUT, S.TERMINATED),
    (S.PROCEEDING, In.RESPONSE_1XX): (E.PASS_PROVISIONAL, S.PROCEEDING),
    (S.PROCEEDING, In.RESPONSE_2XX): (E.PASS_FINAL, S.COMPLETED),
    (S.PROCEEDING, In.RESPONSE_FINAL): (E.PASS_FINAL, S.COMPLETED),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.COMPLETED, In.RESPONSE_1XX): (E.ABSORB, S.COMPLETED),
    (S.COMPLETED, In.RESPONSE_2XX): (E.ABSORB, S.COMPLETED),
    (S.COMPLETED, In.RESPONSE_FINAL): (E.ABSORB, S.COMPLETED),
    (S.COMPLETED, In.TRANSPORT_ERROR): (E.ABSORB, S.COMPLETED),  # nothing is sent in Completed
    (S.COMPLETED, In.TIMER_K): (E.TERMINATE, S.TERMINATED),
}

# Figure 7 (§17.2.1) with RFC 6026 §8.5-8.7, and the §13.3.1.4 2xx retransmission in Accepted.
SERVER_INVITE_TABLE: Table = {
    **_absorb_all((S.PROCEEDING, S.COMPLETED, S.CONFIRMED, S.ACCEPTED),
                  (In.RESPONSE_1XX, In.RESPONSE_2XX, In.RESPONSE_FINAL)),
    (S.PROCEEDING, In.REQUEST): (E.SEND_TRYING, S.PROCEEDING),  # the client heard nothing yet: a 100 now
    (S.PROCEEDING, In.TIMER_TRYING): (E.SEND_TRYING, S.PROCEEDING),
    (S.PROCEEDING, In.ACK): (E.ABSORB, S.PROCEEDING),
    (S.PROCEEDING, In.TU_1XX): (E.SEND_RESPONSE, S.PROCEEDING),
    (S.PROCEEDING, In.TU_RELIABLE_1XX): (E.SEND_RELIABLE_1XX, S.PROCEEDING),
    (S.PROCEEDING, In.RETRANSMIT_1XX): (E.RESEND_1XX, S.PROCEEDING),
    (S.PROCEEDING, In.PRACK_WAIT): (E.REPORT_PRACK_TIMEOUT, S.PROCEEDING),
    # a PRACK may come after the final response (one without SDP need not wait for it, RFC 3262 §3)
    **{(state, In.TU_PRACKED): (E.ACKNOWLEDGE_1XX, state)
       for state in (S.PROCEEDING, S.COMPLETED, S.CONFIRMED, S.ACCEPTED)},
    (S.PROCEEDING, In.TU_2XX): (E.SEND_INVITE_2XX, S.ACCEPTED),
    (S.PROCEEDING, In.TU_FINAL): (E.SEND_INVITE_FINAL, S.COMPLETED),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.COMPLETED, In.REQUEST): (E.RESEND_RESPONSE, S.COMPLETED),
    (S.COMPLETED, In.ACK): (E.CONFIRM, S.CONFIRMED),
    (S.COMPLETED, In.TIMER_G): (E.RESEND_RESPONSE_CAPPED, S.COMPLETED),
    (S.COMPLETED, In.TIMER_H): (E.TIME_OUT, S.TERMINATED),
    (S.COMPLETED, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.CONFIRMED, In.REQUEST): (E.ABSORB, S.CONFIRMED),
    (S.CONFIRMED, In.ACK): (E.ABSORB, S.CONFIRMED),
    (S.CONFIRMED, In.TIMER_I): (E.TERMINATE, S.TERMINATED),
    (S.CONFIRMED, In.TRANSPORT_ERROR): (E.TERMINATE, S.TERMINATED),
    (S.ACCEPTED, In.REQUEST): (E.ABSORB, S.ACCEPTED),  # RFC 6026 §8.7: retransmitted INVITEs are absorbed
    (S.ACCEPTED, In.ACK): (E.ACKNOWLEDGE_2XX, S.ACCEPTED),
    (S.ACCEPTED, In.TU_2XX): (E.SEND_RESPONSE, S.ACCEPTED),  # RFC 6026 §8.6: passed through
    (S.ACCEPTED, In.RETRANSMIT_2XX): (E.RESEND_2XX, S.ACCEPTED),
    (S.ACCEPTED, In.ACK_WAIT): (E.REPORT_ACK_TIMEOUT, S.ACCEPTED),
    (S.ACCEPTED, In.TIMER_L): (E.TERMINATE, S.TERMINATED),
    (S.ACCEPTED, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
}

# Figure 8 (§17.2.2).
SERVER_NON_INVITE_TABLE: Table = {
    **_absorb_all((S.TRYING, S.PROCEEDING, S.COMPLETED),
                  (In.ACK, In.RESPONSE_1XX, In.RESPONSE_2XX, In.RESPONSE_FINAL)),
    (S.TRYING, In.REQUEST): (E.ABSORB, S.TRYING),  # nothing to re-send yet
    (S.TRYING, In.TU_WAIT): (E.ABANDON, S.TERMINATED),
    (S.PROCEEDING, In.TU_WAIT): (E.ABANDON, S.TERMINATED),
    (S.TRYING, In.TU_1XX): (E.SEND_RESPONSE, S.PROCEEDING),
    (S.TRYING, In.TU_2XX): (E.SEND_FINAL, S.COMPLETED),
    (S.TRYING, In.TU_FINAL): (E.SEND_FINAL, S.COMPLETED),
    (S.TRYING, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.PROCEEDING, In.REQUEST): (E.RESEND_RESPONSE, S.PROCEEDING),
    (S.PROCEEDING, In.TU_1XX): (E.SEND_RESPONSE, S.PROCEEDING),
    (S.PROCEEDING, In.TU_2XX): (E.SEND_FINAL, S.COMPLETED),
    (S.PROCEEDING, In.TU_FINAL): (E.SEND_FINAL, S.COMPLETED),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
    (S.COMPLETED, In.REQUEST): (E.RESEND_RESPONSE, S.COMPLETED),
    (S.COMPLETED, In.TU_2XX): (E.ABSORB, S.COMPLETED),  # §17.2.2: further finals are discarded
    (S.COMPLETED, In.TU_FINAL): (E.ABSORB, S.COMPLETED),
    (S.COMPLETED, In.TIMER_J): (E.TERMINATE, S.TERMINATED),
    (S.COMPLETED, In.TRANSPORT_ERROR): (E.FAIL_TRANSPORT, S.TERMINATED),
}

TABLES: dict[TransactionKind, Table] = {
    TransactionKind.CLIENT_INVITE: CLIENT_INVITE_TABLE,
    TransactionKind.CLIENT_NON_INVITE: CLIENT_NON_INVITE_TABLE,
    TransactionKind.SERVER_INVITE: SERVER_INVITE_TABLE,
    TransactionKind.SERVER_NON_INVITE: SERVER_NON_INVITE_TABLE,
}

LIVE_STATES: dict[TransactionKind, tuple[TransactionState, ...]] = {
    TransactionKind.CLIENT_INVITE: (S.CALLING, S.PROCEEDING, S.COMPLETED, S.ACCEPTED),
    TransactionKind.CLIENT_NON_INVITE: (S.TRYING, S.PROCEEDING, S.COMPLETED),
    TransactionKind.SERVER_INVITE: (S.PROCEEDING, S.COMPLETED, S.CONFIRMED, S.ACCEPTED),
    TransactionKind.SERVER_NON_INVITE: (S.TRYING, S.PROCEEDING, S.COMPLETED),
}


# ---- keys ------------------------------------------------------------------------------------------------
# Named tuples rather than frozen dataclasses: a key is hashed and compared in C. A call hashed its keys ~40 times
# on the way through (the transaction table, the call manager's indexes), each a Python-level __hash__ before.
# A ClientKey never equals a ServerKey (their lengths differ), and the tables hold nothing but keys.

class ClientKey(NamedTuple):
    """A client transaction: the branch of the top Via it sent and the CSeq method (§17.1.3)."""

    branch: str
    method: str


class ServerKey(NamedTuple):
    """A server transaction (§17.2.3): branch, sent-by and method, ACK counted as INVITE.

    ``legacy`` is empty for RFC 3261 peers. For an RFC 2543 peer (a branch without the magic cookie) it holds
    the fields that identify the transaction instead: Request-URI, To tag, From tag, Call-ID, CSeq number and
    the top Via, and ``branch`` is then the (possibly absent) branch as received.
    """

    branch: str
    sent_by: tuple[str, int]
    method: str
    legacy: tuple[str, ...] = ()


TransactionKey = ClientKey | ServerKey


# ---- events ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU. ``key`` is None for an ACK of a 2xx, which belongs to no transaction."""

    request: Request
    source: Destination
    key: ServerKey | None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the TU from client transaction ``key`` (every 2xx of an INVITE, forks included)."""

    response: Response
    key: ClientKey


@dataclass(frozen=True, slots=True)
class StrayResponseReceived:
    """A response no client transaction matches, e.g. a 2xx retransmitted after Timer M (§17.1.3)."""

    response: Response
    source: Destination


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B or F fired (no final response), or Timer H (the ACK of our non-2xx final never came)."""

    key: TransactionKey
    request: Request


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport could not deliver for this transaction (§17.1.4, §17.2.4); it is terminated."""

    key: TransactionKey
    request: Request


@dataclass(frozen=True, slots=True)
class AckTimedOut:
    """No ACK of our 2xx to ``request`` within 64·T1 (§13.3.1.4): the TU should send BYE."""

    key: ServerKey
    request: Request


@dataclass(frozen=True, slots=True)
class PrackTimedOut:
    """No PRACK of our reliable provisional response to ``request`` within 64·T1 (RFC 3262 §3): the TU should
    reject the INVITE with a 5xx."""

    key: ServerKey
    request: Request


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction is gone; always the last event for ``key``."""

    key: TransactionKey


TransactionEvent = (RequestReceived | ResponseReceived | StrayResponseReceived | TransactionTimedOut
                    | TransportFailed | AckTimedOut | PrackTimedOut | TransactionTerminated)


# ---- the transactions ------------------------------------------------------------------------------------

class _Transaction:
    """State of one transaction; behaviour lives in the tables and ``TransactionLayer``'s effects."""

    __slots__ = (
        "ack_bytes",
        "ack_waits",
        "destination",
        "interval",
        "key",
        "kind",
        "last_response_bytes",
        "provisional_bytes",
        "provisional_interval",
        "reliable",
        "request",
        "request_bytes",
        "sent_to_tag",
        "state",
        "summary",
        "timers",
    )

    def __init__(self, key: TransactionKey, kind: TransactionKind, state: TransactionState, request: Request,
                 destination: Destination) -> None:
        self.key = key
        self.kind = kind
        self.state = state
        self.request: Request | None = request  # None once let go (_let_go): only ``summary`` is left
        # method, Request-URI, Call-ID, CSeq of a let-go request: strings only, which the collector stops tracking
        self.summary: tuple[str, str, str, str] | None = None
        self.destination = destination  # client: where requests go; server: where responses go
        self.reliable = destination[0] != "udp"
        self.request_bytes = b""
        self.sent_to_tag: str | None = None  # the To tag of the last response sent (RFC 2543 ACK matching)
        self.last_response_bytes = b""
        self.ack_bytes = b""
        self.interval = 0  # the retransmission interval currently in use, ms
        # armed timer (its TransactionInput's value) -> token of its heap entry. Keyed by the str, not the enum
        # member: a dict of strs and ints is untracked by the cyclic collector, and a completed transaction
        # waits 32 s (Timer J) with this dict, at 1,000 registrations/s 64,000 of them
        self.timers: dict[str, int] = {}
        self.ack_waits: list[tuple[str, int, str | None]] | None = None  # dialog keys of 2xx awaiting ACK
        self.provisional_bytes = b""  # the reliable 1xx awaiting its PRACK (RFC 3262 §3)
        self.provisional_interval = 0  # its retransmission interval, ms


def _let_go(txn: _Transaction) -> None:
    """A transaction waiting out its timer (Completed, Confirmed, Accepted) needs its request no more: it re-sends
    bytes or absorbs. Kept, the parsed request (a few dozen objects: headers, URIs, Via) lived 32 s after each
    REGISTER, BYE and call for the cyclic collector to walk at every collection; only a summary stays, for a
    transport failure's event (:func:`_request_of`)."""
    request = txn.request
    if request is not None:
        txn.summary = (request.method, str(request.uri), request.call_id, request.headers.get("cseq") or "")
        txn.request = None
        txn.request_bytes = b""  # a client request is not re-sent once answered


def _request_of(txn: _Transaction) -> Request:
    """The request of ``txn`` for an event: itself, or once let go a stand-in with its method, Request-URI,
    Call-ID and CSeq (what the transaction user's failure handling and the log read)."""
    if txn.request is not None:
        return txn.request
    assert txn.summary is not None
    method, uri, call_id, cseq = txn.summary
    headers = Headers()
    headers.add("Call-ID", call_id)
    headers.add("CSeq", cseq)
    return Request(method=method, uri=parse_uri(uri), headers=headers)


def _is_rfc3261_branch(branch: str | None) -> bool:
    return branch is not None and branch.startswith(MAGIC_COOKIE)


def _sent_by(via: Via) -> tuple[str, int]:
    host, port = via.sent_by
    return host.lower(), port


def _legacy_fields(request: Request, via: Via) -> tuple[str, ...]:
    """The §17.2.3 RFC 2543 matching fields: Request-URI, To tag, From tag, Call-ID, CSeq number, top Via."""
    return (str(request.uri), request.to.tag or "", request.from_.tag or "", request.call_id,
            str(request.cseq.seq), str(via))


def _check_destination(destination: Destination) -> None:
    if (not isinstance(destination, tuple) or len(destination) != 3 or destination[0] not in TRANSPORTS
            or not isinstance(destination[2], int)):
        raise SipLocalError(f"bad destination {destination!r}: expected (transport, host, port)")


class TransactionLayer:
    """Every transaction of one SIP endpoint (RFC 3261 §17, RFC 6026), sans-IO.

    Parameters
    ----------
    t1_ms, t2_ms, t4_ms : int
        The timer values of RFC 3261 Table 4 in milliseconds.
    linger_grain_ms : int
        When above 0, the timers that only end a transaction that waits out its §17 / RFC 6026 linger (D, I, J
        and K over unreliable transports, where they are not 0; L and M over any) fall due at the next multiple
        of this many milliseconds instead of to the millisecond: the transactions of calls made within one
        grain end in one timer callback, not one each (a wake-up of an idle process costs ~0.1 ms of CPU on a
        virtual machine). A transaction then lingers up to a grain longer; nothing else waits on these timers.
        0 (the default): exact.
    trying_delay_ms : int
        How long a server INVITE transaction waits for its TU's first response before it sends 100 Trying
        itself (§17.2.1: 200 ms, :data:`TRYING_DELAY_MS`), rounded down to a multiple of :data:`TRYING_GRAIN_MS`
        when longer than that; 0 sends it as the INVITE arrives.
    report_terminations : bool
        Whether a transaction's end is an event (:class:`TransactionTerminated`, the last for its key). A user
        that never looks at them (the server's call control matches by its own indexes) passes False and saves
        an event per transaction, several per call.
    max_transactions : int
        The hard cap on live transactions. A new server transaction past it first evicts the oldest one that
        only waits out a §17 timer (Completed, Confirmed, or Accepted and ACKed): it has answered already and
        would only absorb retransmissions. When none of the ``EVICTION_SCAN`` oldest is such, the request is
        answered 503 statelessly and no transaction is made (``refused``). Client transactions (ours) always start.
    """

    def __init__(self, *, t1_ms: int = T1_MS, t2_ms: int = T2_MS, t4_ms: int = T4_MS,
                 max_transactions: int = MAX_TRANSACTIONS, linger_grain_ms: int = 0,
                 trying_delay_ms: int = TRYING_DELAY_MS, report_terminations: bool = True) -> None:
        if not 0 < t1_ms <= t2_ms or t4_ms <= 0:
            raise SipLocalError("timers need 0 < T1 <= T2 and T4 > 0")
        if max_transactions < 1:
            raise SipLocalError("max_transactions must be at least 1")
        if linger_grain_ms < 0:
            raise SipLocalError("linger_grain_ms must not be negative")
        if trying_delay_ms < 0:
            raise SipLocalError("trying_delay_ms must not be negative")
        self.linger_grain_ms = linger_grain_ms
        self.trying_delay_ms = trying_delay_ms
        self.report_terminations = report_terminations
        self.t1_ms = t1_ms
        self.t2_ms = t2_ms
        self.t4_ms = t4_ms
        self.max_transactions = max_transactions
        self.evicted = 0  # transactions ended early by the cap
        self.refused = 0  # requests answered 503 because the table was full of live transactions
        self.abandoned = 0  # non-INVITE server transactions the TU never answered (TU_WAIT_MS)
        self.peak = 0  # the most transactions alive at once
        self._transactions: dict[TransactionKey, _Transaction] = {}
        self._order: deque[TransactionKey] = deque()  # creation order, lazily purged: eviction oldest first
        self._legacy_servers: set[ServerKey] = set()
        self._ack_waiters: dict[tuple[str, int, str | None], ServerKey] = {}
        # (due, token, timer value): ints and a str, so the entries (a cancelled one stays until it reaches the
        # top) are not walked by the cyclic collector; the armed ones find their transaction through ``_armed``
        self._heap: list[tuple[int, int, str]] = []
        self._armed: dict[int, _Transaction] = {}  # token of each armed timer -> its transaction
        self._token = 0
        self._events: list[TransactionEvent] = []
        self._outgoing: list[tuple[bytes, Destination]] = []
        self._effects: dict[Effect, Callable[[_Transaction, int, Request | Response | None,
                                              Destination | None], None]] = {
            E.ABSORB: self._absorb,
            E.RETRANSMIT_REQUEST: self._retransmit_request,
            E.RETRANSMIT_REQUEST_CAPPED: self._retransmit_request_capped,
            E.RETRANSMIT_REQUEST_T2: self._retransmit_request_t2,
            E.PASS_PROVISIONAL: self._pass_provisional,
            E.PASS_RESPONSE: self._pass_response,
            E.PASS_INVITE_2XX: self._pass_invite_2xx,
            E.PASS_INVITE_FINAL_AND_ACK: self._pass_invite_final_and_ack,
            E.PASS_FINAL: self._pass_final,
            E.RESEND_ACK: self._resend_ack,
            E.RESEND_RESPONSE: self._resend_response,
            E.RESEND_RESPONSE_CAPPED: self._resend_response_capped,
            E.RESEND_2XX: self._resend_2xx,
            E.SEND_RESPONSE: self._send_response,
            E.SEND_RELIABLE_1XX: self._send_reliable_1xx,
            E.RESEND_1XX: self._resend_1xx,
            E.ACKNOWLEDGE_1XX: self._acknowledge_1xx,
            E.REPORT_PRACK_TIMEOUT: self._report_prack_timeout,
            E.SEND_INVITE_2XX: self._send_invite_2xx,
            E.SEND_INVITE_FINAL: self._send_invite_final,
            E.SEND_FINAL: self._send_final,
            E.CONFIRM: self._confirm,
            E.ACKNOWLEDGE_2XX: self._acknowledge_2xx,
            E.REPORT_ACK_TIMEOUT: self._report_ack_timeout,
            E.TIME_OUT: self._time_out,
            E.FAIL_TRANSPORT: self._fail_transport,
            E.TERMINATE: self._absorb,
            E.ABANDON: self._abandon,
            E.SEND_TRYING: self._send_trying,
        }

    # ---- introspection ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._transactions)

    @property
    def transaction_count(self) -> int:
        return len(self._transactions)

    def __contains__(self, key: object) -> bool:
        return key in self._transactions

    @property
    def heap_entries(self) -> int:
        """Timer heap entries, cancelled ones not yet compacted away included."""
        return len(self._heap)

    @property
    def ack_waiter_entries(self) -> int:
        return len(self._ack_waiters)

    def state(self, key: TransactionKey) -> TransactionState:
        """The state of a live transaction; ``TERMINATED`` once it is gone."""
        txn = self._transactions.get(key)
        return txn.state if txn is not None else S.TERMINATED

    def keys(self) -> list[TransactionKey]:
        return list(self._transactions)

    def __iter__(self) -> Iterator[TransactionKey]:
        return iter(list(self._transactions))

    # ---- outputs ---------------------------------------------------------------------------------------
    def events(self) -> list[TransactionEvent]:
        out, self._events = self._events, []
        return out

    def outgoing(self) -> list[tuple[bytes, Destination]]:
        out, self._outgoing = self._outgoing, []
        return out

    def take(self) -> tuple[list[tuple[bytes, Destination]], list[TransactionEvent]]:
        """``outgoing()`` and ``events()`` in one call (the edge drains both after every input)."""
        out = self._outgoing, self._events
        self._outgoing, self._events = [], []
        return out

    def next_deadline(self) -> int | None:
        """When ``handle_timer`` must next be called (ms), or None when no timer is armed."""
        heap, armed = self._heap, self._armed
        while heap and heap[0][1] not in armed:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # ---- inputs: the network ---------------------------------------------------------------------------
    def receive(self, message: Request | Response, source: Destination, now: int) -> None:
        """A parsed message from the transport (RFC 3261 §17.1.3, §17.2.3 matching)."""
        if isinstance(message, Response):
            self._receive_response(message, source, now)
        else:
            self._receive_request(message, source, now)

    def _receive_response(self, response: Response, source: Destination, now: int) -> None:
        branch = response.via.branch
        txn = self._transactions.get(ClientKey(branch, response.cseq.method)) if branch else None
        if txn is None:
            self._events.append(StrayResponseReceived(response, source))
            return
        if response.status < 200:
            event = In.RESPONSE_1XX
        elif response.status < 300:
            event = In.RESPONSE_2XX
        else:
            event = In.RESPONSE_FINAL
        self._apply(txn, event, now, response, source)

    def _receive_request(self, request: Request, source: Destination, now: int) -> None:
        via = request.via
        if request.method == "ACK":
            txn = self._match_ack(request, via)
            if txn is None:
                dialog = (request.call_id, request.cseq.seq, request.to.tag)
                waiter = self._ack_waiters.get(dialog)
                txn = self._transactions.get(waiter) if waiter is not None else None
            if txn is None:
                self._events.append(RequestReceived(request, source, None))
            else:
                self._apply(txn, In.ACK, now, request, source)
            return
        key = self._server_key(request, via, request.method)
        txn = self._transactions.get(key)
        if txn is not None:
            self._apply(txn, In.REQUEST, now, request, source)
            return
        self._create_server(key, request, via, source, now)

    def _server_key(self, request: Request, via: Via, method: str) -> ServerKey:
        branch = via.branch
        if _is_rfc3261_branch(branch):
            assert branch is not None
            return ServerKey(branch, _sent_by(via), method)
        return ServerKey(branch or "", _sent_by(via), method, _legacy_fields(request, via))

    def server_key_for(self, request: Request) -> ServerKey:
        """The key of the server transaction ``request`` created (§17.2.3), for answering it.

        A response cannot be matched back by its own headers alone when the peer is an RFC 2543 one: two such
        requests that differ only in Request-URI or To tag are two transactions whose responses look the same.
        """
        return self._server_key(request, request.via, request.method)

    def _match_ack(self, ack: Request, via: Via) -> _Transaction | None:
        """The server INVITE transaction an ACK belongs to by §17.2.3 (not the dialog match of a 2xx's ACK)."""
        branch = via.branch
        if _is_rfc3261_branch(branch):
            assert branch is not None
            return self._transactions.get(ServerKey(branch, _sent_by(via), "INVITE"))
        # RFC 2543: Request-URI, From tag, Call-ID, CSeq number and top Via as the INVITE's; To tag as our response's
        fields = _legacy_fields(ack, via)
        for key in self._legacy_servers:
            txn = self._transactions[key]
            if key.method != "INVITE" or key.legacy[0] != fields[0] or key.legacy[2:] != fields[2:]:
                continue
            if txn.sent_to_tag == ack.to.tag:
                return txn
        return None

    def _create_server(self, key: ServerKey, request: Request, via: Via, source: Destination, now: int) -> None:
        _check_destination(source)
        if not self._make_room():
            self.refused += 1
            response = make_response(request, 503, "Service Unavailable (overloaded)")
            response.headers.add("Retry-After", str(OVERLOAD_RETRY_AFTER_S))
            host, port = via.response_address((source[1], source[2])) if source[0] == "udp" else source[1:]
            self._outgoing.append((response.serialize(), (source[0], host, port)))
            return
        if source[0] == "udp":
            # §18.2.2 / RFC 3581: received address, rport, else the sent-by port
            host, port = via.response_address((source[1], source[2]))
            destination: Destination = ("udp", host, port)
        else:
            destination = source  # §18.2.2: back over the connection the request came on
        if request.method == "INVITE":
            txn = _Transaction(key, TransactionKind.SERVER_INVITE, S.PROCEEDING, request, destination)
        else:
            txn = _Transaction(key, TransactionKind.SERVER_NON_INVITE, S.TRYING, request, destination)
        self._add(txn)
        if key.legacy:
            self._legacy_servers.add(key)
        if request.method == "INVITE":
            # §17.2.1: a 100 Trying within 200 ms quenches the client's INVITE retransmissions; the TU's own
            # response before then makes it unnecessary (the first response emitted cancels the timer)
            if self.trying_delay_ms:
                due = now + self.trying_delay_ms
                if self.trying_delay_ms > TRYING_GRAIN_MS:
                    due -= due % TRYING_GRAIN_MS
                self._arm(txn, In.TIMER_TRYING, due)
            else:
                self._emit_response(txn, make_response(request, 100))
        else:
            self._arm(txn, In.TU_WAIT, now + TU_WAIT_MS)
        self._events.append(RequestReceived(request, source, key))

    def transport_error(self, destination: Destination, now: int) -> None:
        """Sending to ``destination`` failed (§17.1.4, §17.2.4, §18.4 via ICMP or a closed connection)."""
        for txn in [t for t in self._transactions.values() if t.destination == destination]:
            self._apply(txn, In.TRANSPORT_ERROR, now, None, None)

    # ---- inputs: the transaction user ------------------------------------------------------------------
    def send_request(self, request: Request, destination: Destination, now: int) -> ClientKey:
        """Start a client transaction for ``request`` (§17.1.1, §17.1.2) and send it.

        The top Via must already carry an RFC 3261 branch (``z9hG4bK…``); ACK is not a transaction (use
        ``send_stateless``); a CANCEL is a transaction of its own with the INVITE's branch (§9.1).
        """
        _check_destination(destination)
        if request.method == "ACK":
            raise SipLocalError("ACK is not sent in a transaction: use send_stateless")
        branch = request.via.branch
        if not _is_rfc3261_branch(branch):
            raise SipLocalError(f"top Via branch {branch!r} lacks the {MAGIC_COOKIE} magic cookie")
        assert branch is not None
        if request.cseq.method != request.method:
            raise SipLocalError(f"CSeq method {request.cseq.method} does not match {request.method}")
        key = ClientKey(branch, request.method)
        if key in self._transactions:
            raise SipLocalError(f"a client transaction {key} already exists")
        if request.method == "INVITE":
            txn = _Transaction(key, TransactionKind.CLIENT_INVITE, S.CALLING, request, destination)
            retransmit, timeout = In.TIMER_A, In.TIMER_B
        else:
            txn = _Transaction(key, TransactionKind.CLIENT_NON_INVITE, S.TRYING, request, destination)
            retransmit, timeout = In.TIMER_E, In.TIMER_F
        self._add(txn)
        txn.request_bytes = request.serialize()
        self._outgoing.append((txn.request_bytes, destination))
        if not txn.reliable:
            txn.interval = self.t1_ms
            self._arm(txn, retransmit, now + self.t1_ms)
        self._arm(txn, timeout, now + 64 * self.t1_ms)
        return key

    def has_server(self, request: Request) -> bool:
        """Is the server transaction of ``request`` still alive (it can still be answered)?"""
        return self.server_key_for(request) in self._transactions

    def send_response(self, response: Response, now: int, key: ServerKey | None = None) -> None:
        """Send ``response`` through its server transaction (§17.2), found from its Via and CSeq.

        A response no live server transaction matches raises ``SipLocalError``; use ``send_stateless``
        for responses outside a transaction.
        """
        txn = self._transactions.get(key) if key is not None else self._match_response(response)
        if txn is None or txn.kind not in (TransactionKind.SERVER_INVITE, TransactionKind.SERVER_NON_INVITE):
            raise SipLocalError(f"no server transaction for {response!r} ({response.cseq})")
        if response.status < 200:
            event = In.TU_1XX
        elif response.status < 300:
            event = In.TU_2XX
        else:
            event = In.TU_FINAL
        self._apply(txn, event, now, response, None)

    def send_reliable_provisional(self, response: Response, now: int, key: ServerKey | None = None) -> None:
        """Send a reliable provisional response (RFC 3262 §3) to a server INVITE transaction in Proceeding.

        It is re-sent at T1 doubling (over UDP) until ``acknowledge_provisional`` or a final response, and
        ``PrackTimedOut`` is reported after 64·T1 without either. The TU puts ``Require: 100rel`` and ``RSeq`` in
        it and sends the next reliable one only after this one is PRACKed (§3).
        """
        txn = self._transactions.get(key) if key is not None else self._match_response(response)
        if txn is None or txn.kind is not TransactionKind.SERVER_INVITE or not 100 < response.status < 200:
            raise SipLocalError(f"no server INVITE transaction for a reliable {response!r}")
        self._apply(txn, In.TU_RELIABLE_1XX, now, response, None)

    def acknowledge_provisional(self, key: ServerKey, now: int) -> None:
        """The TU received the PRACK of the outstanding reliable provisional response: stop re-sending it.

        Nothing happens when the transaction is gone (a PRACK that overtook nothing)."""
        txn = self._transactions.get(key)
        if txn is not None and txn.kind is TransactionKind.SERVER_INVITE:
            self._apply(txn, In.TU_PRACKED, now, None, None)

    def _match_response(self, response: Response) -> _Transaction | None:
        via = response.via
        method = response.cseq.method
        branch = via.branch
        if _is_rfc3261_branch(branch):
            assert branch is not None
            return self._transactions.get(ServerKey(branch, _sent_by(via), method))
        cseq, call_id, from_tag, top = str(response.cseq.seq), response.call_id, response.from_.tag or "", str(via)
        for key in self._legacy_servers:
            if (key.method == method and key.legacy[3] == call_id and key.legacy[4] == cseq
                    and key.legacy[2] == from_tag and key.legacy[5] == top):
                return self._transactions[key]
        return None

    def send_stateless(self, message: Request | Response, destination: Destination) -> None:
        """Send outside any transaction: the ACK of a 2xx (§13.2.2.4) or a stateless response (§8.2.7)."""
        _check_destination(destination)
        self._outgoing.append((message.serialize(), destination))

    def matching_invite(self, cancel: Request) -> ServerKey | None:
        """The live INVITE server transaction a CANCEL refers to (RFC 3261 §9.2), or None."""
        via = cancel.via
        key = self._server_key(cancel, via, "INVITE")
        return key if key in self._transactions else None

    def handle_timer(self, now: int) -> None:
        """Fire every timer due at or before ``now``, in deadline order."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            _, token, value = entry
            txn = self._armed.pop(token, None)
            if txn is None:
                continue  # cancelled, or its transaction is gone
            del txn.timers[value]
            self._apply(txn, _TIMER_INPUTS[value], now, None, None)

    # ---- the machine -----------------------------------------------------------------------------------
    def _apply(self, txn: _Transaction, event: TransactionInput, now: int, message: Request | Response | None,
               source: Destination | None) -> None:
        transition = TABLES[txn.kind].get((txn.state, event))
        if transition is None:
            raise SipLocalError(f"{txn.kind.value} transaction in {txn.state.value} has no transition for "
                                f"{event.value}")
        effect, next_state = transition
        self._effects[effect](txn, now, message, source)
        txn.state = next_state
        if next_state is S.TERMINATED:
            self._remove(txn)

    # ---- the table and its cap -------------------------------------------------------------------------
    def _add(self, txn: _Transaction) -> None:
        self._transactions[txn.key] = txn
        self._order.append(txn.key)
        self.peak = max(self.peak, len(self._transactions))

    def _compact_order(self) -> None:
        if len(self._order) > 2 * len(self._transactions) + 64:
            # keys of ended transactions linger in the order queue; drop them so it stays bounded (amortised
            # O(1): the queue halves at least each time)
            self._order = deque(k for k in self._order if k in self._transactions)

    def _quiet(self, txn: _Transaction) -> bool:
        """Whether ``txn`` only waits out a timer: its outcome is settled and the TU expects nothing more."""
        if txn.state in (S.COMPLETED, S.CONFIRMED):
            return True
        return (txn.state is S.ACCEPTED and txn.kind is TransactionKind.SERVER_INVITE
                and In.ACK_WAIT.value not in txn.timers)

    def _make_room(self) -> bool:
        """Bring the table under ``max_transactions`` by evicting the oldest quiet transaction; False if full."""
        if len(self._transactions) < self.max_transactions:
            return True
        order = self._order
        skipped: list[TransactionKey] = []
        found = False
        while order and len(skipped) < EVICTION_SCAN:
            key = order.popleft()
            txn = self._transactions.get(key)
            if txn is None:
                continue
            if self._quiet(txn):
                self.evicted += 1
                txn.state = S.TERMINATED
                self._remove(txn)
                found = True
                break
            skipped.append(key)
        order.extend(skipped)  # live ones go to the back, so the next scan looks further on
        return found

    def _remove(self, txn: _Transaction) -> None:
        del self._transactions[txn.key]
        self._compact_order()
        for token in txn.timers.values():
            del self._armed[token]
        txn.timers.clear()
        if isinstance(txn.key, ServerKey) and txn.key.legacy:
            self._legacy_servers.discard(txn.key)
        for dialog in txn.ack_waits or ():
            if self._ack_waiters.get(dialog) == txn.key:
                del self._ack_waiters[dialog]
        if self.report_terminations:
            self._events.append(TransactionTerminated(txn.key))

    # ---- timers ----------------------------------------------------------------------------------------
    def _arm(self, txn: _Transaction, timer: TransactionInput, due: int) -> None:
        self._token += 1
        token = self._token
        value = timer._value_  # the member's attribute: ``.value`` is a Python-level property (two calls)
        previous = txn.timers.get(value)
        if previous is not None:
            del self._armed[previous]  # re-armed: the earlier entry is now a cancelled one
        txn.timers[value] = token
        self._armed[token] = txn
        heapq.heappush(self._heap, (due, token, value))
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._armed):
            # lazy deletion leaves cancelled entries behind; compact so the heap stays bounded
            armed = self._armed
            self._heap = [e for e in self._heap if e[1] in armed]
            heapq.heapify(self._heap)

    def _linger(self, txn: _Transaction, timer: TransactionInput, now: int, delay: int) -> None:
        """Arm ``timer``, which only ends ``txn``, ``delay`` ms from ``now``: at once when 0 (a reliable transport),
        else rounded up to ``linger_grain_ms``."""
        self._arm(txn, timer, on_grain(now + delay, self.linger_grain_ms) if delay else now)

    def _cancel(self, txn: _Transaction, *timers: TransactionInput) -> None:
        for timer in timers:
            token = txn.timers.pop(timer._value_, None)
            if token is not None:
                del self._armed[token]

    # ---- effects ---------------------------------------------------------------------------------------
    def _absorb(self, txn: _Transaction, now: int, message: Request | Response | None,
                source: Destination | None) -> None:
        pass

    def _retransmit_request(self, txn: _Transaction, now: int, message: Request | Response | None,
                            source: Destination | None) -> None:
        self._outgoing.append((txn.request_bytes, txn.destination))
        txn.interval *= 2  # §17.1.1.2: Timer A doubles without a cap
        self._arm(txn, In.TIMER_A, now + txn.interval)

    def _retransmit_request_capped(self, txn: _Transaction, now: int, message: Request | Response | None,
                                   source: Destination | None) -> None:
        self._outgoing.append((txn.request_bytes, txn.destination))
        txn.interval = min(2 * txn.interval, self.t2_ms)  # §17.1.2.2
        self._arm(txn, In.TIMER_E, now + txn.interval)

    def _retransmit_request_t2(self, txn: _Transaction, now: int, message: Request | Response | None,
                               source: Destination | None) -> None:
        self._outgoing.append((txn.request_bytes, txn.destination))
        txn.interval = self.t2_ms  # §17.1.2.2: in Proceeding, Timer E is reset to T2
        self._arm(txn, In.TIMER_E, now + txn.interval)

    def _deliver(self, txn: _Transaction, message: Request | Response | None) -> None:
        assert isinstance(message, Response) and isinstance(txn.key, ClientKey)
        self._events.append(ResponseReceived(message, txn.key))

    def _pass_provisional(self, txn: _Transaction, now: int, message: Request | Response | None,
                          source: Destination | None) -> None:
        if txn.kind is TransactionKind.CLIENT_INVITE:
            self._cancel(txn, In.TIMER_A, In.TIMER_B)  # §17.1.1.2: no retransmission in Proceeding
        self._deliver(txn, message)

    def _pass_response(self, txn: _Transaction, now: int, message: Request | Response | None,
                       source: Destination | None) -> None:
        self._deliver(txn, message)

    def _pass_invite_2xx(self, txn: _Transaction, now: int, message: Request | Response | None,
                         source: Destination | None) -> None:
        self._cancel(txn, In.TIMER_A, In.TIMER_B)
        self._deliver(txn, message)
        self._linger(txn, In.TIMER_M, now, 64 * self.t1_ms)  # RFC 6026 §8.4
        _let_go(txn)  # Accepted: 2xx retransmissions go to the TU, the TU sends the ACK

    def _pass_invite_final_and_ack(self, txn: _Transaction, now: int, message: Request | Response | None,
                                   source: Destination | None) -> None:
        assert isinstance(message, Response)
        self._cancel(txn, In.TIMER_A, In.TIMER_B)
        self._deliver(txn, message)
        assert txn.request is not None
        txn.ack_bytes = build_ack(txn.request, message).serialize()
        self._outgoing.append((txn.ack_bytes, txn.destination))
        self._linger(txn, In.TIMER_D, now, 0 if txn.reliable else TIMER_D_UNRELIABLE_MS)
        _let_go(txn)  # Completed: only the ACK is re-sent

    def _pass_final(self, txn: _Transaction, now: int, message: Request | Response | None,
                    source: Destination | None) -> None:
        self._cancel(txn, In.TIMER_E, In.TIMER_F)
        self._deliver(txn, message)
        self._linger(txn, In.TIMER_K, now, 0 if txn.reliable else self.t4_ms)
        _let_go(txn)  # Completed: responses are absorbed

    def _resend_ack(self, txn: _Transaction, now: int, message: Request | Response | None,
                    source: Destination | None) -> None:
        self._outgoing.append((txn.ack_bytes, txn.destination))

    def _resend_response(self, txn: _Transaction, now: int, message: Request | Response | None,
                         source: Destination | None) -> None:
        if txn.last_response_bytes:
            self._outgoing.append((txn.last_response_bytes, txn.destination))

    def _resend_response_capped(self, txn: _Transaction, now: int, message: Request | Response | None,
                                source: Destination | None) -> None:
        self._outgoing.append((txn.last_response_bytes, txn.destination))
        txn.interval = min(2 * txn.interval, self.t2_ms)  # §17.2.1 Timer G
        self._arm(txn, In.TIMER_G, now + txn.interval)

    def _resend_2xx(self, txn: _Transaction, now: int, message: Request | Response | None,
                    source: Destination | None) -> None:
        self._outgoing.append((txn.last_response_bytes, txn.destination))
        txn.interval = min(2 * txn.interval, self.t2_ms)  # §13.3.1.4
        self._arm(txn, In.RETRANSMIT_2XX, now + txn.interval)

    def _emit_response(self, txn: _Transaction, response: Response) -> None:
        if txn.key.legacy if isinstance(txn.key, ServerKey) else False:
            txn.sent_to_tag = response.to.tag  # only RFC 2543 ACK matching needs it
        txn.last_response_bytes = response.serialize()
        self._outgoing.append((txn.last_response_bytes, txn.destination))
        token = txn.timers.pop(_TRYING, None)  # a response went: no 100 Trying of ours is due any more
        if token is not None:
            del self._armed[token]

    def _send_trying(self, txn: _Transaction, now: int, message: Request | Response | None,
                     source: Destination | None) -> None:
        if txn.last_response_bytes:  # (an INVITE retransmitted after the TU's 1xx: that one again)
            self._outgoing.append((txn.last_response_bytes, txn.destination))
        elif txn.request is not None:
            self._emit_response(txn, make_response(txn.request, 100))

    def _send_response(self, txn: _Transaction, now: int, message: Request | Response | None,
                       source: Destination | None) -> None:
        assert isinstance(message, Response)
        self._emit_response(txn, message)
        if txn.state is S.ACCEPTED:
            self._await_ack(txn, message)

    def _send_reliable_1xx(self, txn: _Transaction, now: int, message: Request | Response | None,
                           source: Destination | None) -> None:
        assert isinstance(message, Response)
        if In.PRACK_WAIT.value in txn.timers:
            raise SipLocalError("a reliable provisional response is still unacknowledged (RFC 3262 §3)")
        self._emit_response(txn, message)
        txn.provisional_bytes = txn.last_response_bytes
        if not txn.reliable:
            txn.provisional_interval = self.t1_ms
            self._arm(txn, In.RETRANSMIT_1XX, now + self.t1_ms)
        self._arm(txn, In.PRACK_WAIT, now + 64 * self.t1_ms)

    def _resend_1xx(self, txn: _Transaction, now: int, message: Request | Response | None,
                    source: Destination | None) -> None:
        self._outgoing.append((txn.provisional_bytes, txn.destination))
        txn.provisional_interval *= 2  # RFC 3262 §3: doubles, with no T2 cap
        self._arm(txn, In.RETRANSMIT_1XX, now + txn.provisional_interval)

    def _acknowledge_1xx(self, txn: _Transaction, now: int, message: Request | Response | None,
                         source: Destination | None) -> None:
        self._cancel(txn, In.RETRANSMIT_1XX, In.PRACK_WAIT)

    def _report_prack_timeout(self, txn: _Transaction, now: int, message: Request | Response | None,
                              source: Destination | None) -> None:
        assert isinstance(txn.key, ServerKey)
        self._cancel(txn, In.RETRANSMIT_1XX)
        self._events.append(PrackTimedOut(txn.key, _request_of(txn)))

    def _await_ack(self, txn: _Transaction, response: Response) -> None:
        assert isinstance(txn.key, ServerKey)
        dialog = (response.call_id, response.cseq.seq, response.to.tag)
        self._ack_waiters[dialog] = txn.key
        if txn.ack_waits is None:
            txn.ack_waits = [dialog]  # made only for an INVITE's 2xx: not one list per transaction
        elif dialog not in txn.ack_waits:
            txn.ack_waits.append(dialog)

    def _send_invite_2xx(self, txn: _Transaction, now: int, message: Request | Response | None,
                         source: Destination | None) -> None:
        assert isinstance(message, Response)
        self._cancel(txn, In.RETRANSMIT_1XX, In.PRACK_WAIT)  # RFC 3262 §3: a final ends the 1xx's reliability
        self._emit_response(txn, message)
        self._await_ack(txn, message)
        # ACK_WAIT is armed before L so that, due at the same instant, AckTimedOut precedes the termination
        self._arm(txn, In.ACK_WAIT, now + 64 * self.t1_ms)
        self._linger(txn, In.TIMER_L, now, 64 * self.t1_ms)  # RFC 6026 §8.7
        if not txn.reliable:
            txn.interval = self.t1_ms
            self._arm(txn, In.RETRANSMIT_2XX, now + self.t1_ms)

    def _send_invite_final(self, txn: _Transaction, now: int, message: Request | Response | None,
                           source: Destination | None) -> None:
        assert isinstance(message, Response)
        self._cancel(txn, In.RETRANSMIT_1XX, In.PRACK_WAIT)
        self._emit_response(txn, message)
        if not txn.reliable:
            txn.interval = self.t1_ms
            self._arm(txn, In.TIMER_G, now + self.t1_ms)
        self._arm(txn, In.TIMER_H, now + 64 * self.t1_ms)

    def _send_final(self, txn: _Transaction, now: int, message: Request | Response | None,
                    source: Destination | None) -> None:
        assert isinstance(message, Response)
        self._cancel(txn, In.TU_WAIT)
        self._emit_response(txn, message)
        self._linger(txn, In.TIMER_J, now, 0 if txn.reliable else 64 * self.t1_ms)
        _let_go(txn)  # Completed: only the final response is re-sent, for 32 s over UDP

    def _confirm(self, txn: _Transaction, now: int, message: Request | Response | None,
                 source: Destination | None) -> None:
        self._cancel(txn, In.TIMER_G, In.TIMER_H)
        self._linger(txn, In.TIMER_I, now, 0 if txn.reliable else self.t4_ms)
        _let_go(txn)  # Confirmed: retransmissions are absorbed

    def _acknowledge_2xx(self, txn: _Transaction, now: int, message: Request | Response | None,
                         source: Destination | None) -> None:
        assert isinstance(message, Request) and source is not None
        self._cancel(txn, In.RETRANSMIT_2XX, In.ACK_WAIT)
        self._events.append(RequestReceived(message, source, None))

    def _report_ack_timeout(self, txn: _Transaction, now: int, message: Request | Response | None,
                            source: Destination | None) -> None:
        assert isinstance(txn.key, ServerKey)
        self._cancel(txn, In.RETRANSMIT_2XX)
        self._events.append(AckTimedOut(txn.key, _request_of(txn)))

    def _abandon(self, txn: _Transaction, now: int, message: Request | Response | None,
                 source: Destination | None) -> None:
        self.abandoned += 1

    def _time_out(self, txn: _Transaction, now: int, message: Request | Response | None,
                  source: Destination | None) -> None:
        self._events.append(TransactionTimedOut(txn.key, _request_of(txn)))

    def _fail_transport(self, txn: _Transaction, now: int, message: Request | Response | None,
                        source: Destination | None) -> None:
        self._events.append(TransportFailed(txn.key, _request_of(txn)))


def build_ack(request: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response to ``request`` (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID, From and the CSeq number come from the INVITE, To from the response (with its tag),
    Via is the INVITE's top Via only, and the INVITE's Route headers are kept.
    """
    headers = Headers()
    headers.add("Via", request.headers.get("via") or "")
    for route in request.headers.get_all("route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", str(ACK_MAX_FORWARDS))
    headers.add("From", request.headers.get("from") or "")
    headers.add("To", response.headers.get("to") or "")
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", f"{request.cseq.seq} ACK")
    return Request(headers=headers, body=b"", method="ACK", uri=request.uri)
