"""Keep-alive probing with OPTIONS (RFC 3261 §11): is a peer (a trunk's provider, a gateway) reachable?

A sans-IO core, with the same shape as ``RegistrationClient``: the edge calls ``start``/``stop``, hands it the
final responses and transaction failures of the OPTIONS it sent and the timer firings, drains ``outgoing()``
(requests to send to ``destination``) and ``events()``, and arms one timer at ``next_deadline()``.

Any final response, even 404, 405 or 501, shows that the peer's SIP stack is alive (§11.2: a UAS answers
OPTIONS as it would an INVITE), so the peer is ``UP``; ``down_after`` probes in a row without a final response
(transaction timeout, transport error, or no answer within ``timeout_ms``) make it ``DOWN``. One probe is
outstanding at a time; each is a request of its own (§11.1): a fresh Call-ID, From tag and Via branch, CSeq 1,
Max-Forwards 70 and ``Accept: application/sdp``. Probes go out every ``interval_s`` seconds, counted from the
start of the previous one. Times are monotonic milliseconds passed in as ``now``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from ccpbx.pbx.sip.dialog import DEFAULT_MAX_FORWARDS, uri_destination
from ccpbx.pbx.sip.errors import SipLocalError, SipParseError
from ccpbx.pbx.sip.headers import Headers, Via, extra_headers
from ccpbx.pbx.sip.message import Request, Response, new_branch, new_call_id, new_tag, via_text
from ccpbx.pbx.sip.transaction import T1_MS, TRANSPORTS, Destination
from ccpbx.pbx.sip.uri import NameAddr, SipUri

__all__ = ["OptionsPinger", "PeerState", "PeerStateChanged", "PingStatus"]

DEFAULT_TIMEOUT_MS = 64 * T1_MS  # Timer F (§17.1.2.2): the transaction layer's own verdict comes first
_OWN_HEADERS = frozenset({
    "via", "max-forwards", "from", "to", "call-id", "cseq", "contact", "accept", "user-agent", "content-length",
    "content-type",
})


class PeerState(enum.Enum):
    UNKNOWN = "unknown"  # no verdict yet (not started, or fewer than ``down_after`` misses and no answer)
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class PingStatus:
    """A snapshot: the peer's state, the round trip of the last answered probe, when the state last changed
    (None: never), misses in a row, and the last final status seen."""

    state: PeerState
    last_rtt_ms: int | None = None
    last_change_ms: int | None = None
    misses: int = 0
    last_status: int | None = None
    outstanding: bool = False


@dataclass(frozen=True, slots=True)
class PeerStateChanged:
    """The peer went ``previous`` -> ``state`` at ``at_ms`` (``rtt_ms`` for UP, ``misses`` for DOWN)."""

    state: PeerState
    previous: PeerState
    at_ms: int
    rtt_ms: int | None
    misses: int


@dataclass(frozen=True, slots=True)
class _Probe:
    call_id: str
    sent_at: int


class OptionsPinger:
    """Probes ``target_uri`` with OPTIONS every ``interval_s`` seconds (RFC 3261 §11).

    Parameters
    ----------
    target_uri : SipUri
        The Request-URI and To (§11.1), e.g. the provider's ``sip:sip.example.net``; ``destination`` resolves it.
    interval_s : int
        Seconds from the start of one probe to the next.
    down_after : int
        Probes in a row without a final response that make the peer DOWN.
    timeout_ms : int
        How long to wait for a final response before counting a miss, at most Timer F's 32 s by default; a
        response arriving later is ignored (the edge's transaction may still be running).
    via_host, via_port, transport : str, int, str
        Our sent-by and transport for Via; each OPTIONS gets a fresh ``z9hG4bK`` branch and ``rport``.
    from_uri : SipUri or None
        From (§11.1); by default ``sip:ccpbx@via_host:via_port``.
    contact : str or None
        A Contact header value to include (§11.1 allows it), or None for none.
    user_agent : str
        The User-Agent header value; empty for none.
    headers : iterable of (str, str)
        Extra headers for every OPTIONS.
    """

    def __init__(self, target_uri: SipUri, interval_s: int, *, down_after: int = 2,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS, via_host: str, via_port: int, transport: str = "udp",
                 from_uri: SipUri | None = None, contact: str | None = None, user_agent: str = "",
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        if interval_s < 1:
            raise SipLocalError(f"interval_s must be at least 1, not {interval_s}")
        if down_after < 1:
            raise SipLocalError(f"down_after must be at least 1, not {down_after}")
        if timeout_ms < 1:
            raise SipLocalError(f"timeout_ms must be positive, not {timeout_ms}")
        if transport.lower() not in TRANSPORTS:
            raise SipLocalError(f"unknown transport {transport!r}")
        if not 0 < via_port < 65536:
            raise SipLocalError(f"bad Via port {via_port}")
        if contact is not None:
            try:
                NameAddr.parse(contact)
            except SipParseError as exc:
                raise SipLocalError(f"bad Contact {contact!r}: {exc}") from exc
        extra = extra_headers(headers, _OWN_HEADERS)
        self.target_uri = target_uri
        self.interval_ms = interval_s * 1000
        self.down_after = down_after
        self.timeout_ms = timeout_ms
        self.via_host = via_host.strip("[]")
        self.via_port = via_port
        self.transport = transport.upper()
        self.from_uri = from_uri or SipUri(user="ccpbx", host=self.via_host, port=via_port)
        self.contact = contact
        self.user_agent = user_agent
        self._extra = extra
        self._active = False
        self._state = PeerState.UNKNOWN
        self._probe: _Probe | None = None
        self._next_probe: int | None = None
        self._rtt: int | None = None
        self._changed_at: int | None = None
        self._misses = 0
        self._last_status: int | None = None
        self._outgoing: list[Request] = []
        self._events: list[PeerStateChanged] = []

    # ---- outputs ----------------------------------------------------------------------------------------------
    def outgoing(self) -> list[Request]:
        """The OPTIONS to send to ``destination`` (at most one), drained."""
        out, self._outgoing = self._outgoing, []
        return out

    def events(self) -> list[PeerStateChanged]:
        """State changes since the last call, drained."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> int | None:
        """The outstanding probe's timeout, else the next probe; None when stopped."""
        if self._probe is not None:
            return self._probe.sent_at + self.timeout_ms
        return self._next_probe if self._active else None

    @property
    def destination(self) -> Destination:
        """``target_uri`` resolved as RFC 3263 §4 without DNS (see ``uri_destination``)."""
        return uri_destination(self.target_uri)

    @property
    def status(self) -> PingStatus:
        return PingStatus(self._state, self._rtt, self._changed_at, self._misses, self._last_status,
                          self._probe is not None)

    # ---- inputs -----------------------------------------------------------------------------------------------
    def start(self, now: int) -> None:
        """Probe now and every ``interval_s`` after. Idempotent."""
        if self._active:
            return
        self._active = True
        if self._probe is None:
            self._send(now)

    def stop(self, now: int) -> None:
        """Probe no more; an outstanding probe is forgotten. The state stays as it was."""
        self._active = False
        self._probe = None
        self._next_probe = None

    def receive_response(self, response: Response, now: int) -> None:
        """A response to our outstanding probe: any final one means UP. Others are ignored."""
        probe = self._probe
        if probe is None or response.status < 200:
            return
        try:
            if response.call_id != probe.call_id or response.cseq.method != "OPTIONS":
                return
        except SipParseError:
            return
        self._probe = None
        self._misses = 0
        self._last_status = response.status
        self._rtt = max(0, now - probe.sent_at)
        self._change(PeerState.UP, now)
        self._schedule(probe, now)

    def transaction_failed(self, now: int, request: Request | None = None) -> None:
        """The outstanding probe got no final response. ``request``, when given, must be that probe."""
        probe = self._probe
        if probe is None:
            return
        if request is not None:
            try:
                if request.call_id != probe.call_id:
                    return
            except SipParseError:
                return
        self._miss(probe, now)

    def handle_timer(self, now: int) -> None:
        """Count a probe unanswered within ``timeout_ms`` as a miss; send the next probe when due."""
        probe = self._probe
        if probe is not None:
            if now >= probe.sent_at + self.timeout_ms:
                self._miss(probe, now)
            return
        if self._active and self._next_probe is not None and now >= self._next_probe:
            self._send(now)

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _miss(self, probe: _Probe, now: int) -> None:
        self._probe = None
        self._misses += 1
        if self._misses >= self.down_after:
            self._change(PeerState.DOWN, now)
        self._schedule(probe, now)

    def _schedule(self, probe: _Probe, now: int) -> None:
        if not self._active:
            return
        due = probe.sent_at + self.interval_ms
        if due <= now:
            self._send(now)  # the probe took longer than the interval: the next goes at once
        else:
            self._next_probe = due

    def _change(self, state: PeerState, now: int) -> None:
        if state is self._state:
            return
        self._events.append(PeerStateChanged(state, self._state, now, self._rtt if state is PeerState.UP else None,
                                             self._misses))
        self._state = state
        self._changed_at = now

    def _send(self, now: int) -> None:
        call_id = new_call_id()
        headers = Headers()
        via = Via(self.transport, self.via_host, self.via_port, (("branch", new_branch()), ("rport", None)))
        headers.add("Via", via_text(via))
        headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        headers.add("From", str(NameAddr(self.from_uri).with_tag(new_tag())))
        headers.add("To", str(NameAddr(self.target_uri)))
        headers.add("Call-ID", call_id)
        headers.add("CSeq", "1 OPTIONS")
        if self.contact is not None:
            headers.add("Contact", self.contact)
        headers.add("Accept", "application/sdp")
        if self.user_agent:
            headers.add("User-Agent", self.user_agent)
        for name, value in self._extra:
            headers.add(name, value)
        headers.add("Content-Length", "0")
        self._probe = _Probe(call_id, now)
        self._next_probe = None
        self._outgoing.append(Request(headers=headers, method="OPTIONS", uri=self.target_uri))
