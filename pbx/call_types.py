"""The value types of call control: parties, dial targets and outcomes, call events, the SIP port it drives.

Kept apart from :mod:`ccpbx.pbx.calls` so that the dialog-usage modules (:mod:`ccpbx.pbx.transfer`,
:mod:`ccpbx.pbx.session_timer`) and applications can use them without importing the manager.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ccpbx.pbx.cdr import HangupSide
from ccpbx.pbx.sip.errors import SipError
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.sip.uri import SipUri

if TYPE_CHECKING:
    from ccpbx.pbx.calls import Leg

__all__ = [
    "RELIABLE_PROVISIONAL",
    "CallEnded",
    "CallError",
    "CallEvent",
    "DialOutcome",
    "DialTarget",
    "DigitReceived",
    "LegLeft",
    "LegState",
    "Party",
    "SipPort",
    "TransferRequested",
]


RELIABLE_PROVISIONAL = ("off", "supported", "required")
"""The values of ``DialTarget.reliable_provisional`` (RFC 3262: what our INVITE says about 100rel)."""


class CallError(SipError):
    """A call could not proceed; ``status_hint`` is the SIP status the caller should get."""


class LegState(enum.Enum):
    CALLING = "calling"  # outbound INVITE sent, nothing back yet
    PROCEEDING = "proceeding"  # inbound INVITE received / outbound got 1xx without tag
    EARLY = "early"  # an early dialog (18x with a To tag)
    ANSWERED = "answered"  # 2xx sent (inbound) waiting for ACK
    CONFIRMED = "confirmed"
    ENDED = "ended"


class SipPort(Protocol):
    """What call control needs from the SIP edge; every method sends at once (the edge pumps)."""

    def now(self) -> int: ...

    def respond(self, request: Request, status: int, *, reason: str | None = None,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None,
                to_tag: str | None = None) -> Response: ...

    def respond_reliably(self, request: Request, status: int, *, headers: Iterable[tuple[str, str]] = (),
                         body: bytes = b"", content_type: str | None = None,
                         to_tag: str | None = None) -> Response:
        """A reliable provisional response (RFC 3262 §3), re-sent until :meth:`acknowledge_provisional`."""

    def acknowledge_provisional(self, key: ServerKey) -> None:
        """The PRACK of INVITE transaction ``key``'s reliable provisional response arrived."""

    def send_request(self, request: Request, destination: Destination) -> ClientKey: ...

    def send_stateless(self, message: Request, destination: Destination) -> None: ...

    def local_address(self, destination: Destination) -> tuple[str, int]: ...


@dataclass(frozen=True, slots=True)
class Party:
    """Who a leg talks to, as shown in From/To and in CDRs: ``number`` is the user part (an extension name)."""

    number: str
    name: str = ""
    restricted: bool = False


@dataclass(frozen=True, slots=True)
class DialTarget:
    """One contact to ring: the Request-URI, where to send it (a registration's real source), a CDR label."""

    uri: SipUri
    destination: Destination
    label: str
    to: Party
    device: str | None = None  # the extension whose phone this contact is (device state, BLF)
    # RFC 3262 100rel on our INVITE: "off" (nothing said), "supported" (Supported: 100rel) or "required"
    # (Require: 100rel, for gateways and providers that insist); a reliable 1xx is PRACKed whatever this says
    reliable_provisional: str = "off"
    credentials: tuple[str, str] | None = None  # (user, password) to answer a 401/407 from it (trunks)
    trunk: str | None = None  # the [[trunk]] this call leaves through (channel counts, CDR legs)
    from_uri: SipUri | None = None  # From of the INVITE (a trunk's caller ID at its domain); None: caller@domain
    headers: tuple[tuple[str, str], ...] = ()  # extra INVITE headers (P-Asserted-Identity, Diversion...)
    codecs: tuple[str, ...] = ()  # codec names offered, preferred first; (): the server's
    dtmf: str = "rfc4733"  # how keys are sent on this leg: rfc4733, info (SIP INFO) or inband
    early_media: bool = True  # bridge its 183 early media to the caller (False: the caller hears ringing)
    # SRTP on this leg (pbx.sdp.SrtpUse values: off, accept, offer, required); None: [sip] srtp for its transport
    srtp: str | None = None

    def __post_init__(self) -> None:
        if self.reliable_provisional not in RELIABLE_PROVISIONAL:
            raise ValueError(f"reliable_provisional must be one of {', '.join(RELIABLE_PROVISIONAL)}, "
                             f"not {self.reliable_provisional!r}")
        if self.srtp not in (None, "off", "accept", "offer", "required"):
            raise ValueError(f"srtp must be off, accept, offer or required, not {self.srtp!r}")


@dataclass(frozen=True, slots=True)
class DialOutcome:
    """What ``Call.dial`` ended with: the answering leg, or the final statuses of those that failed."""

    answered: Leg | None
    statuses: tuple[int, ...]

    @property
    def busy(self) -> bool:
        return self.answered is None and (486 in self.statuses or 600 in self.statuses)

    @property
    def best_status(self) -> int:
        """RFC 3261 §16.7 step 6, simplified: 6xx wins, then the lowest class, 486 preferred within 4xx."""
        if not self.statuses:
            return 480
        six = [s for s in self.statuses if s >= 600]
        if six:
            return six[0]
        if 486 in self.statuses:
            return 486
        return min(self.statuses, key=lambda s: (s // 100, s == 408 or s == 487, s))


# ---- call events for routing ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CallEnded:
    side: HangupSide
    status: int | None = None


@dataclass(frozen=True, slots=True)
class TransferRequested:
    """A party asked (REFER, RFC 3515) to send the other party to ``target`` (a blind transfer)."""

    transferor: Leg
    target: str
    refer: Request


@dataclass(frozen=True, slots=True)
class DigitReceived:
    leg: Leg
    digit: str


@dataclass(frozen=True, slots=True)
class LegLeft:
    """A leg hung up without ending its call (the call's ``end_when`` names other legs)."""

    leg: Leg


CallEvent = CallEnded | TransferRequested | DigitReceived | LegLeft
