"""The sans-IO SIP endpoint: bytes in, transactions, events out (RFC 3261 §8, §17, §18).

It parses what the transport hands it, answers what cannot be parsed with a 400 where the message reads
as a request (§8.2 / §16.3 spirit: never crash, never go silent on a request we could answer), stamps
``received``/``rport`` on the top Via (§18.2.1, RFC 3581 §4) and feeds the transaction layer. The
application drains ``events()`` and ``outgoing()`` and arms one timer at ``next_deadline()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.framing import BadMessage
from ccpbx.pbx.sip.message import Request, Response, SipMessage, make_response, parse_message, reason_for
from ccpbx.pbx.sip.transaction import Destination, ServerKey, TransactionEvent, TransactionLayer

# Header lines a salvaged error response copies, compact forms included (§7.3.3).
_SALVAGE = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
            "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}


@dataclass(frozen=True, slots=True)
class MalformedMessageReceived:
    """Bytes that did not parse; ``answered`` says whether a 4xx went back."""

    source: Destination
    error: SipParseError
    answered: bool


EndpointEvent = TransactionEvent | MalformedMessageReceived


class SipEndpoint:
    def __init__(self, transactions: TransactionLayer | None = None, *, server_header: str = "ccpbx") -> None:
        self.transactions = transactions or TransactionLayer()
        self.server_header = server_header
        self._events: list[EndpointEvent] = []
        self._outgoing: list[tuple[bytes, Destination]] = []
        self.malformed = 0

    # ---- inputs -------------------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, source: Destination, now: int) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive CRLFs over UDP (some phones send them): nothing to answer
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self._malformed(data, source, exc)
            return
        self.receive_message(message, source, now)

    def receive_stream_item(self, item: SipMessage | BadMessage, source: Destination, now: int) -> None:
        if isinstance(item, BadMessage):
            self._malformed(item.data, source, item.error)
            return
        self.receive_message(item, source, now)

    def receive_message(self, message: SipMessage, source: Destination, now: int) -> None:
        if isinstance(message, Request) and message.method != "ACK":
            # (an ACK gets no response: the Via that would route one back needs no received/rport)
            stamp_received(message, source)
        self.transactions.receive(message, source, now)
        self._drain()

    def handle_timer(self, now: int) -> None:
        self.transactions.handle_timer(now)
        self._drain()

    def transport_error(self, destination: Destination, now: int) -> None:
        self.transactions.transport_error(destination, now)
        self._drain()

    # ---- actions ------------------------------------------------------------------------------------------
    def respond(self, request: Request, status: int, now: int, *, reason: str | None = None,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None,
                to_tag: str | None = None) -> Response:
        """Answer ``request`` through its server transaction (built per §8.2.6)."""
        response = make_response(request, status, reason, to_tag=to_tag, body=body, content_type=content_type)
        for name, value in headers:
            response.headers.add(name, value)
        response.headers.add("Server", self.server_header)
        self.transactions.send_response(response, now, self.transactions.server_key_for(request))
        self._drain()
        return response

    def respond_reliably(self, request: Request, status: int, now: int, *, reason: str | None = None,
                         headers: Iterable[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None,
                         to_tag: str | None = None) -> Response:
        """A reliable provisional response to ``request`` (RFC 3262 §3), re-sent until ``acknowledge_provisional``;
        ``headers`` carry its ``Require: 100rel`` and ``RSeq``."""
        response = make_response(request, status, reason, to_tag=to_tag, body=body, content_type=content_type)
        for name, value in headers:
            response.headers.add(name, value)
        response.headers.add("Server", self.server_header)
        self.transactions.send_reliable_provisional(response, now, self.transactions.server_key_for(request))
        self._drain()
        return response

    def acknowledge_provisional(self, key: ServerKey, now: int) -> None:
        """The PRACK of the reliable provisional response of INVITE transaction ``key`` arrived (RFC 3262 §3)."""
        self.transactions.acknowledge_provisional(key, now)
        self._drain()

    def send_response(self, response: Response, now: int) -> None:
        self.transactions.send_response(response, now)
        self._drain()

    def send_request(self, request: Request, destination: Destination, now: int) -> object:
        key = self.transactions.send_request(request, destination, now)
        self._drain()
        return key

    def send_stateless(self, message: SipMessage, destination: Destination) -> None:
        self.transactions.send_stateless(message, destination)
        self._drain()

    # ---- outputs ------------------------------------------------------------------------------------------
    def events(self) -> list[EndpointEvent]:
        out, self._events = self._events, []
        return out

    def outgoing(self) -> list[tuple[bytes, Destination]]:
        out, self._outgoing = self._outgoing, []
        return out

    def take(self) -> tuple[list[tuple[bytes, Destination]], list[EndpointEvent]]:
        """``outgoing()`` and ``events()`` in one call (the edge drains both after every input)."""
        out = self._outgoing, self._events
        self._outgoing, self._events = [], []
        return out

    def next_deadline(self) -> int | None:
        return self.transactions.next_deadline()

    # ---- internals ----------------------------------------------------------------------------------------
    def _drain(self) -> None:
        outgoing, events = self.transactions.take()
        if events:
            self._events.extend(events)
        if outgoing:
            self._outgoing.extend(outgoing)

    def _malformed(self, data: bytes, source: Destination, error: SipParseError) -> None:
        self.malformed += 1
        reply = salvage_error_response(data, error.status_hint, str(error), self.server_header)
        if reply is not None:
            self._outgoing.append((reply, source))
        self._events.append(MalformedMessageReceived(source, error, reply is not None))


def stamp_received(request: Request, source: Destination) -> None:
    """Add ``received`` (and fill ``rport``) on the top Via, RFC 3261 §18.2.1 and RFC 3581 §4."""
    via = request.via
    host, port = source[1], source[2]
    changed = via
    if via.wants_rport:
        changed = changed.stamped(host, port)
    elif via.host != host:
        changed = changed.with_param("received", host)
    if changed is not via:
        request.set_top_via(changed)


def salvage_error_response(data: bytes, status: int, reason: str, server: str) -> bytes | None:
    """A best-effort error response to bytes that look like a request but did not parse.

    Copies the Via, From, To, Call-ID and CSeq lines as they are; returns None for anything that looks like
    a response or lacks a Via (there is nowhere sensible to answer, §18.1.2).
    """
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.decode("utf-8", "replace").replace("\r", "").split("\n")
    if not lines or lines[0].startswith("SIP/") or " " not in lines[0]:
        return None
    if lines[0].split(" ", 1)[0].upper() == "ACK":
        return None  # never answer an ACK (§17.2.3)
    copied: list[str] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        canonical = _SALVAGE.get(name.strip().lower())
        if colon and canonical:
            copied.append(f"{canonical}: {value.strip()}")
    if not any(line.startswith("Via:") for line in copied):
        return None
    reason = reason.replace("\r", " ").replace("\n", " ")[:120] or reason_for(status)
    text = "\r\n".join([f"SIP/2.0 {status} {reason}", *copied, f"Server: {server}", "Content-Length: 0", "", ""])
    return text.encode("utf-8", "replace")
