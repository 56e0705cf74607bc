"""SIP dialogs (RFC 3261 §12): the state one call leg of the B2BUA keeps between transactions.

A dialog is identified by Call-ID, local tag and remote tag (§12) and carries the local and remote sequence
numbers, URIs, remote target and route set. This module is pure: it builds in-dialog requests (§12.2.1.1),
checks and applies incoming requests (§12.2.2) and responses (§12.1.2, §12.2.1.2, §13.2.2.4), and picks the next
hop (§8.1.2 and RFC 3263 without DNS). It also carries the small grammars of call transfer: ``Replaces``
(RFC 3891), ``Refer-To`` with an embedded Replaces (RFC 3515, RFC 3891 §5) and ``message/sipfrag`` status
lines for the NOTIFYs of a REFER (RFC 3420, RFC 3515 §2.4.5).

Errors: ``DialogError`` when a message does not fit the dialog (its ``status_hint`` is the response to send),
``SipLocalError`` when the API is misused, ``SipParseError`` when a header the dialog needs is malformed.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple
from urllib.parse import quote, unquote

from ccpbx.pbx.sip.errors import SipError, SipLocalError, SipParseError
from ccpbx.pbx.sip.grammar import STATUS_LINE_RE, TOKEN_RE, WORD
from ccpbx.pbx.sip.headers import Headers, Via, canonical_name, extra_headers
from ccpbx.pbx.sip.message import (
    Request,
    Response,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    random_hex,
    reason_for,
    via_text,
)
from ccpbx.pbx.sip.transaction import ACK_MAX_FORWARDS, TRANSPORTS, Destination
from ccpbx.pbx.sip.uri import NameAddr, SipUri, has_param, parse_params, remove_param, set_param

DEFAULT_MAX_FORWARDS = 70  # RFC 3261 §8.1.1.6
MAX_CSEQ = 2**31 - 1  # §8.1.1.5: the sequence number is below 2**31
INITIAL_LOCAL_SEQ_LIMIT = 2**15  # a random start leaves ample room below MAX_CSEQ
SIP_PORT = 5060  # RFC 3261 §19.1.2
SIPS_PORT = 5061
WS_PORT = 80  # RFC 7118 §5.2
WSS_PORT = 443

# Requests whose Contact replaces the remote target (RFC 3261 §12.2, RFC 3311 UPDATE, RFC 6665 §4.1.2
# SUBSCRIBE/NOTIFY, RFC 3515 REFER); we put our Contact in these.
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
# Responses to an in-dialog request after which the UAC ends the dialog (§12.2.1.2).
DIALOG_ENDING_STATUSES = frozenset({408, 481})
# Headers the dialog writes itself; passing them as extra headers is a misuse.
DIALOG_HEADERS = frozenset({
    "via", "route", "max-forwards", "from", "to", "call-id", "cseq", "content-length", "content-type",
})
# §19.1.1 table: ``method`` and URI headers are not allowed in a Request-URI.
REQUEST_URI_FORBIDDEN_PARAMS = ("method",)
SIPFRAG_CONTENT_TYPE = "message/sipfrag;version=2.0"  # RFC 3515 §2.4.5

_CALL_ID_RE = re.compile(rf"^{WORD}(?:@{WORD})?$")  # RFC 3261 §25.1 callid


class DialogState(enum.Enum):
    """§12: a dialog is early after a provisional response with a tag, confirmed after a 2xx.

    A UAC leg made with ``Dialog.new_uac`` is ``EARLY`` with an empty remote tag until a response names the peer.
    """

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogError(SipError):
    """A request or response does not fit the dialog (the peer's error); ``status_hint`` is the answer.

    481 when no such dialog exists (§12.2.2), 500 for an out-of-order CSeq (§12.2.2), 400 for a request that
    cannot create a dialog.
    """

    status_hint = 481


class DialogId(NamedTuple):
    """Call-ID, local tag, remote tag (§12): the key of a dialog as one side names it.

    An empty tag stands for a peer that sent none (RFC 2543, §12.1.2 "a value of null"). A named tuple: hashed
    and compared in C (a frozen dataclass's ``__hash__`` and ``__eq__`` run in Python, on every look-up of a
    leg by its dialog).
    """

    call_id: str
    local_tag: str
    remote_tag: str

    def reversed(self) -> DialogId:
        """The same dialog as the peer names it (its local tag is our remote tag)."""
        return DialogId(self.call_id, self.remote_tag, self.local_tag)


def dialog_id_of_request(request: Request) -> DialogId:
    """UAS view of an incoming request: local tag = To tag, remote tag = From tag (§12.2.2)."""
    return DialogId(request.call_id, request.to.tag or "", request.from_.tag or "")


def dialog_id_of_response(response: Response) -> DialogId:
    """UAC view of a response: local tag = From tag, remote tag = To tag (§12.2.1.2)."""
    return DialogId(response.call_id, response.from_.tag or "", response.to.tag or "")


def uas_dialog_id(request: Request, local_tag: str) -> DialogId:
    """The id of the dialog a UAS creates for ``request`` with its own ``local_tag`` (§12.1.1)."""
    return DialogId(request.call_id, local_tag, request.from_.tag or "")


def uri_destination(uri: SipUri) -> Destination:
    """Where a request for ``uri`` goes: (transport, host, port), RFC 3263 §4 without DNS.

    ``maddr`` overrides the host; the transport comes from ``;transport=`` (``udp`` by default, ``tls`` for a
    SIPS URI); the port defaults to 5060, 5061 for TLS, 80/443 for WebSocket (RFC 7118). A host name is returned
    as is: the edge resolves it.

    Raises
    ------
    DialogError
        The URI names a transport we do not have (status 503, RFC 3263 §4.1 "no server").
    """
    transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    if uri.scheme == "sips" and transport == "tcp":
        transport = "tls"  # RFC 3261 §26.2.2: sips over "tcp" means TLS over TCP
    if transport not in TRANSPORTS:
        raise DialogError(f"unsupported transport {transport!r} in {uri}", 503)
    maddr = uri.param("maddr")
    host = maddr.strip("[]") if maddr else uri.host
    default = {"tls": SIPS_PORT, "ws": WS_PORT, "wss": WSS_PORT}.get(transport, SIP_PORT)
    return transport, host, uri.port or default


def _without_tag(addr: NameAddr) -> NameAddr:
    return NameAddr(addr.uri, addr.display_name, remove_param(addr.params, "tag"))


def _request_uri(uri: SipUri) -> SipUri:
    """``uri`` made fit for a Request-URI (§12.2.1.1 "stripping any parameters that are not allowed")."""
    forbidden = REQUEST_URI_FORBIDDEN_PARAMS
    if not uri.headers and not any(k.lower() in forbidden for k, _ in uri.params):
        return uri  # the usual case: nothing to strip, no new URI
    params = tuple((k, v) for k, v in uri.params if k.lower() not in forbidden)
    return replace(uri, params=params, headers=())


def _route_uris(routes: Iterable[NameAddr]) -> list[NameAddr]:
    out = list(routes)
    for route in out:
        route.sip_uri  # noqa: B018  (raises SipParseError 416 for a route that is not a SIP URI)
    return out


@functools.lru_cache(maxsize=64)  # ours: the same few for every dialog
def _check_local_contact(contact: str) -> None:
    try:
        NameAddr.parse(contact)
    except SipParseError as exc:
        raise SipLocalError(f"bad local Contact {contact!r}: {exc}") from exc


def _contact_target(message: Request | Response) -> SipUri | None:
    contacts = message.contacts
    return contacts[0].sip_uri if contacts else None


def _initial_local_seq() -> int:
    return int(random_hex(2), 16) % INITIAL_LOCAL_SEQ_LIMIT + 1  # the pooled bytes: no system call per dialog


@dataclass(slots=True, kw_only=True, eq=False)
class Dialog:
    """The state of one dialog (RFC 3261 §12.1): one call leg of the B2BUA. Mutable; no I/O.

    Attributes
    ----------
    call_id, local_tag, remote_tag : str
        The dialog id; ``remote_tag`` is ``""`` until a UAC leg hears from the peer (or when the peer sends none).
    local_seq : int
        The CSeq number of the last request we sent; the next one gets ``local_seq + 1``.
    remote_seq : int or None
        The CSeq number of the last request the peer sent, None before the first (§12.1.2).
    local_uri, remote_uri : NameAddr
        Our and the peer's From/To addresses without their tags.
    remote_target : SipUri
        The peer's Contact URI: the Request-URI of our in-dialog requests (§12.2.1.1).
    route_set : list of NameAddr
        Record-Route as the UAS received it, reversed for the UAC (§12.1.1, §12.1.2).
    secure : bool
        The dialog was made with a SIPS Request-URI (§12.1.1).
    state : DialogState
    local_contact : str
        Our Contact header value, sent in target refresh requests and dialog-creating responses.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_seq: int
    remote_seq: int | None
    local_uri: NameAddr
    remote_uri: NameAddr
    remote_target: SipUri
    local_contact: str
    route_set: list[NameAddr] = field(default_factory=list)
    secure: bool = False
    state: DialogState = DialogState.CONFIRMED
    # our From and To as text, with the URI and tag they were made from (see _address_text)
    _texts: dict[str, tuple[NameAddr, str, str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.local_seq <= MAX_CSEQ:
            raise SipLocalError(f"local sequence number {self.local_seq} out of range")
        if not self.call_id:
            raise SipLocalError("a dialog needs a Call-ID")
        _check_local_contact(self.local_contact)

    # ---- creation ------------------------------------------------------------------------------------------
    @classmethod
    def from_uas(cls, request: Request, local_tag: str, local_contact: str, *, early: bool = False,
                 local_seq: int | None = None) -> Dialog:
        """The dialog a UAS creates when it answers ``request`` with a 1xx/2xx carrying ``local_tag`` (§12.1.1).

        Route set = Record-Route as received, in order; remote target = the request's Contact; remote sequence
        number = the request's CSeq; the local sequence number starts at ``local_seq`` (random when None).
        ``early=True`` for a dialog made by a provisional response; call ``confirm()`` when the 2xx is sent.

        Raises
        ------
        DialogError
            The request has no Contact (400, §8.1.1.8).
        SipParseError
            A Contact or Record-Route that is not a SIP URI (416) or malformed (400).
        """
        if not local_tag:
            raise SipLocalError("a UAS dialog needs a local tag")
        target = _contact_target(request)
        if target is None:
            raise DialogError(f"{request.method} without a Contact cannot create a dialog", 400)
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_seq=_initial_local_seq() if local_seq is None else local_seq,
            remote_seq=request.cseq.seq,
            local_uri=_without_tag(request.to),
            remote_uri=_without_tag(request.from_),
            remote_target=target,
            local_contact=local_contact,
            route_set=_route_uris(request.record_routes),
            secure=request.uri.scheme == "sips",
            state=DialogState.EARLY if early else DialogState.CONFIRMED,
        )

    @classmethod
    def from_uac(cls, request: Request, response: Response, local_contact: str) -> Dialog:
        """The dialog a UAC creates from a 1xx (with a To tag) or 2xx ``response`` to ``request`` (§12.1.2).

        Route set = Record-Route of the response reversed; remote target = the response's Contact (the request's
        Request-URI when the peer sent none); remote sequence number empty; local sequence number = the
        request's CSeq. A 2xx without a To tag makes a dialog with an empty remote tag (§12.1.2).

        Raises
        ------
        SipLocalError
            ``response`` cannot create a dialog (100, a 1xx without a To tag, or a final non-2xx).
        """
        if not 101 <= response.status <= 299:
            raise SipLocalError(f"a {response.status} response creates no dialog")
        remote_tag = response.to.tag or ""
        if response.status < 200 and not remote_tag:
            raise SipLocalError("a provisional response without a To tag creates no dialog")
        local_tag = request.from_.tag
        if not local_tag:
            raise SipLocalError("our request has no From tag")
        target = _contact_target(response) or request.sip_uri
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_seq=request.cseq.seq,
            remote_seq=None,
            local_uri=_without_tag(request.from_),
            remote_uri=_without_tag(request.to),
            remote_target=target,
            local_contact=local_contact,
            route_set=_route_uris(reversed(response.record_routes)),
            secure=request.uri.scheme == "sips",
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
        )

    @classmethod
    def new_uac(cls, *, local_uri: NameAddr, remote_uri: NameAddr, remote_target: SipUri, local_contact: str,
                call_id: str | None = None, route_set: Sequence[NameAddr] = (), local_tag: str | None = None,
                local_seq: int | None = None) -> Dialog:
        """An outgoing leg before any response (§8.1.1, §12.1.2): build its INVITE with ``create_request``.

        Generates the Call-ID and local tag unless given; the remote tag is ``""`` and the state ``EARLY`` until
        ``receive_response`` hears a 1xx with a tag or a 2xx. ``route_set`` is a preloaded route (§8.1.1.1),
        e.g. an outbound proxy: with ``;lr`` it goes in Route headers.
        """
        return cls(
            call_id=call_id or new_call_id(),
            local_tag=local_tag or new_tag(),
            remote_tag="",
            local_seq=_initial_local_seq() - 1 if local_seq is None else local_seq,
            remote_seq=None,
            local_uri=_without_tag(local_uri),
            remote_uri=_without_tag(remote_uri),
            remote_target=remote_target,
            local_contact=local_contact,
            route_set=_route_uris(route_set),
            secure=remote_target.scheme == "sips",
            state=DialogState.EARLY,
        )

    # ---- identity ------------------------------------------------------------------------------------------
    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    @property
    def local_address(self) -> NameAddr:
        """Our From (as UAC) / To (as UAS) with our tag."""
        return self.local_uri.with_tag(self.local_tag)

    @property
    def remote_address(self) -> NameAddr:
        """The peer's address with its tag, when it has one."""
        return self.remote_uri.with_tag(self.remote_tag) if self.remote_tag else self.remote_uri

    # ---- requests we send ----------------------------------------------------------------------------------
    def create_request(self, method: str, *, via_host: str, via_port: int, transport: str, body: bytes = b"",
                       content_type: str | None = None, headers: Iterable[tuple[str, str]] = (),
                       max_forwards: int = DEFAULT_MAX_FORWARDS) -> Request:
        """A request within the dialog (§12.2.1.1); increments ``local_seq`` for its CSeq.

        Request-URI and Route: with loose routing (empty route set, or a first route with ``;lr``) the
        Request-URI is the remote target and the route set becomes the Route headers; with a strict router first,
        the Request-URI is that router's URI and the Route headers are the rest of the route set and the remote
        target. Via gets a fresh ``z9hG4bK`` branch and ``rport`` (RFC 3581). Target refresh methods carry our
        Contact unless ``headers`` has one. ``headers`` are added after the dialog's own, in order; they may not
        name Via, Route, Max-Forwards, From, To, Call-ID, CSeq or Content-Length/Type. ACK and CANCEL are built
        by ``create_ack`` and ``create_cancel``.

        Raises
        ------
        SipLocalError
            ACK/CANCEL, a terminated dialog, a body without ``content_type``, a reserved extra header, a bad
            method or transport, or a sequence number past 2**31 - 1.
        """
        method = self._check_method(method)
        if method in ("ACK", "CANCEL"):
            raise SipLocalError(f"build {method} with create_{method.lower()}()")
        if self.local_seq >= MAX_CSEQ:
            raise SipLocalError("local CSeq exhausted")
        extra = self._check_extra(headers, body, content_type, max_forwards)
        self.local_seq += 1
        return self._build(method, self.local_seq, self._via(via_host, via_port, transport), body, content_type,
                           extra, max_forwards, contact=method in TARGET_REFRESH_METHODS)

    def create_ack(self, invite: Request, body: bytes = b"", content_type: str | None = None) -> Request:
        """The ACK of a 2xx to ``invite`` (§13.2.2.4): a request of the dialog with the INVITE's CSeq number.

        It has a new branch (on the sent-by and transport of the INVITE's top Via), the route set like any
        in-dialog request, and the INVITE's credentials (Authorization, Proxy-Authorization). ``local_seq`` is
        not changed. Call it after ``receive_response`` has taken the 2xx (which sets the remote tag).
        """
        if invite.method != "INVITE" or invite.call_id != self.call_id:
            raise SipLocalError("create_ack needs an INVITE of this dialog")
        if self.state is DialogState.TERMINATED:
            raise SipLocalError("the dialog is terminated")
        extra = self._check_extra((), body, content_type, ACK_MAX_FORWARDS)
        for name in ("authorization", "proxy-authorization"):
            extra.extend((name, value) for value in invite.headers.get_all(name))
        top = invite.via
        via = Via(top.transport, top.host, top.port, (("branch", new_branch()), ("rport", None)))
        return self._build("ACK", invite.cseq.seq, via, body, content_type, extra, ACK_MAX_FORWARDS,
                           contact=False)

    def create_cancel(self, invite: Request) -> Request:
        """The CANCEL of our pending ``invite`` (§9.1): its Request-URI, top Via (same branch), Route, From,
        To, Call-ID and CSeq number, method CANCEL. Independent of the dialog's state."""
        if invite.method != "INVITE":
            raise SipLocalError("only an INVITE is cancelled")
        headers = Headers()
        headers.add("Via", invite.headers.get("via") or "")
        for route in invite.headers.get_all("route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        headers.add("From", invite.headers.get("from") or "")
        headers.add("To", invite.headers.get("to") or "")
        headers.add("Call-ID", invite.call_id)
        headers.add("CSeq", f"{invite.cseq.seq} CANCEL")
        headers.add("Content-Length", "0")
        return Request(headers=headers, method="CANCEL", uri=invite.uri)

    def create_response(self, request: Request, status: int, reason: str | None = None, *, body: bytes = b"",
                        content_type: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A response of this dialog's UAS to ``request`` (§8.2.6, §12.1.1): To tag = our local tag, and our
        Contact on a 101-299 to a target refresh request. Changes no state: call ``confirm()`` when a 2xx to
        the initial INVITE is sent, ``terminate()`` after a final non-2xx to it."""
        if body and not content_type:
            raise SipLocalError("a body needs a Content-Type")
        response = make_response(request, status, reason, to_tag=self.local_tag, body=body,
                                 content_type=content_type)
        extra = list(headers)
        if 100 < status < 300 and request.method in TARGET_REFRESH_METHODS and not any(
                canonical_name(n) == "contact" for n, _ in extra):
            response.headers.add("Contact", self.local_contact)
        for name, value in extra:
            response.headers.add(name, value)
        response.headers.set("Content-Length", str(len(body)))
        return response

    def next_hop(self) -> Destination:
        """Where our in-dialog requests go (§8.1.2): the first route's URI, else the remote target.

        See ``uri_destination`` for the transport and port defaults; a host name is returned unresolved.
        """
        uri = self.route_set[0].sip_uri if self.route_set else self.remote_target
        return uri_destination(uri)

    # ---- what we receive -----------------------------------------------------------------------------------
    def receive_request(self, request: Request) -> None:
        """Apply an incoming in-dialog request (§12.2.2).

        Checks the dialog id (Call-ID, From tag = remote tag, To tag = local tag; CANCEL is matched by its
        transaction, not its To tag), then the CSeq: except for ACK and CANCEL, a number not above
        ``remote_seq`` is out of order. Takes the new ``remote_seq``, replaces the remote target from the
        Contact of a target refresh request, and ends the dialog on BYE.

        Raises
        ------
        DialogError
            481 for a request of another or a terminated dialog, 500 for an out-of-order CSeq. The dialog is
            unchanged.
        """
        if self.state is DialogState.TERMINATED:
            raise DialogError("the dialog is terminated", 481)
        method = request.method
        if request.call_id != self.call_id or (request.from_.tag or "") != self.remote_tag:
            raise DialogError("request of another dialog", 481)
        if method != "CANCEL" and (request.to.tag or "") != self.local_tag:
            raise DialogError("request of another dialog", 481)
        seq = request.cseq.seq
        if method in ("ACK", "CANCEL"):
            return  # they repeat the CSeq number of their INVITE (§12.2.2, §9.1)
        if self.remote_seq is not None and seq <= self.remote_seq:
            raise DialogError(f"CSeq {seq} is not above {self.remote_seq}", 500)
        target = _contact_target(request) if method in TARGET_REFRESH_METHODS else None
        self.remote_seq = seq
        if target is not None:
            self.remote_target = target
        if method == "BYE":
            self.state = DialogState.TERMINATED

    def receive_response(self, request: Request, response: Response) -> None:
        """Apply a response to ``request``, the dialog's initial INVITE or one of its in-dialog requests.

        Initial INVITE (the dialog is early): a 1xx with a To tag or a 2xx fixes the remote tag; the first of them
        sets the route set (Record-Route reversed, §12.1.2) and a 2xx recomputes it (§13.2.2.4); the Contact
        of each, or of a later reliable 1xx (RFC 3262), becomes the remote target; a 2xx confirms the dialog and
        a final non-2xx terminates it (§12.3). In-dialog requests: a 2xx (or reliable 1xx) with a Contact
        refreshes the target of a target refresh request; 481 or 408 terminates the dialog (§12.2.1.2), and so
        does any final response to BYE (§15.1.1). Responses after termination are ignored.

        Raises
        ------
        DialogError
            A 1xx/2xx whose To tag names another dialog (a fork of the INVITE: make it with ``from_uac``).
        SipLocalError
            ``request`` is not of this dialog, or ``response`` does not answer it.
        """
        if request.call_id != self.call_id or response.call_id != self.call_id:
            raise SipLocalError("request or response of another dialog")
        if response.cseq != request.cseq:
            raise SipLocalError("the response does not answer the request")
        status = response.status
        if self.state is DialogState.TERMINATED or status == 100:
            return
        tag = response.to.tag or ""
        initial = request.method == "INVITE" and self.state is DialogState.EARLY
        if status >= 300:
            if initial or request.method == "BYE" or status in DIALOG_ENDING_STATUSES:
                self.state = DialogState.TERMINATED
            return
        if initial and not self.remote_tag and not tag and status < 200:
            return  # a provisional without a To tag (a proxy's, or a peer's mistake) names no dialog
        if initial and not self.remote_tag:
            # The first response to name the peer establishes the dialog (§12.1.2).
            self.remote_tag = tag
            self.route_set = _route_uris(reversed(response.record_routes))
            self.remote_target = _contact_target(response) or self.remote_target
            if status >= 200:
                self.state = DialogState.CONFIRMED
            return
        if tag != self.remote_tag:
            if status < 200 and not tag:
                return  # a provisional from a proxy: no dialog information
            raise DialogError(f"response of another dialog (To tag {tag!r}, ours {self.remote_tag!r})", 481)
        refresh = status >= 200 or "rseq" in response.headers
        target = _contact_target(response) if refresh and request.method in TARGET_REFRESH_METHODS else None
        if initial and status >= 200:
            self.route_set = _route_uris(reversed(response.record_routes))
            self.state = DialogState.CONFIRMED
        if target is not None:
            self.remote_target = target
        if request.method == "BYE" and status >= 200:
            self.state = DialogState.TERMINATED

    def confirm(self) -> None:
        """The UAS sent a 2xx to the INVITE of its early dialog (§12.1.1)."""
        if self.state is DialogState.TERMINATED:
            raise SipLocalError("the dialog is terminated")
        self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        """End the dialog (BYE sent or received, transaction timeout, final non-2xx sent, §12.3)."""
        self.state = DialogState.TERMINATED

    # ---- helpers -------------------------------------------------------------------------------------------
    def _check_method(self, method: str) -> str:
        if not TOKEN_RE.match(method):
            raise SipLocalError(f"bad method {method!r}")
        if self.state is DialogState.TERMINATED:
            raise SipLocalError("the dialog is terminated")
        return method

    @staticmethod
    def _check_extra(headers: Iterable[tuple[str, str]], body: bytes, content_type: str | None,
                     max_forwards: int) -> list[tuple[str, str]]:
        if body and not content_type:
            raise SipLocalError("a body needs a Content-Type")
        if not 0 <= max_forwards <= 255:
            raise SipLocalError(f"Max-Forwards {max_forwards} out of range")
        return extra_headers(headers, DIALOG_HEADERS)

    @staticmethod
    def _via(host: str, port: int, transport: str) -> Via:
        if transport.lower() not in TRANSPORTS:
            raise SipLocalError(f"unknown transport {transport!r}")
        if not 0 < port < 65536:
            raise SipLocalError(f"bad Via port {port}")
        return Via(transport.upper(), host.strip("[]"), port, (("branch", new_branch()), ("rport", None)))

    def _build(self, method: str, seq: int, via: Via, body: bytes, content_type: str | None,
               extra: list[tuple[str, str]], max_forwards: int, *, contact: bool) -> Request:
        target = _request_uri(self.remote_target)
        routes = [str(r) for r in self.route_set]
        if self.route_set and not _has_lr(self.route_set[0]):
            # A strict router first (§12.2.1.1): it gets the Request-URI, the remote target goes last in Route.
            target = _request_uri(self.route_set[0].sip_uri)
            routes = [*routes[1:], str(NameAddr(self.remote_target))]
        # the fields as the parser makes them (canonical name, spelling, value): no look-up per header
        fields = [("via", "Via", via_text(via))]
        for route in routes:
            fields.append(("route", "Route", route))
        fields.append(("max-forwards", "Max-Forwards", str(max_forwards)))
        fields.append(("from", "From", self._address_text("from", self.local_uri, self.local_tag)))
        fields.append(("to", "To", self._address_text("to", self.remote_uri, self.remote_tag)))
        fields.append(("call-id", "Call-ID", self.call_id))
        fields.append(("cseq", "CSeq", f"{seq} {method}"))
        if contact and not any(canonical_name(n) == "contact" for n, _ in extra):
            fields.append(("contact", "Contact", self.local_contact))
        if not extra:
            if content_type:
                fields.append(("content-type", "Content-Type", content_type))
            fields.append(("content-length", "Content-Length", str(len(body))))
            return Request(headers=Headers._from_parsed(fields), body=body, method=method, uri=target)
        headers = Headers._from_parsed(fields)
        for name, value in extra:
            headers.add(name, value)
        if content_type:
            headers.add("Content-Type", content_type)
        headers.add("Content-Length", str(len(body)))
        return Request(headers=headers, body=body, method=method, uri=target)

    def _address_text(self, which: str, uri: NameAddr, tag: str) -> str:
        """``str(local_address)`` (``which`` "from") or ``str(remote_address)`` ("to"), made again only when
        the URI or the tag changed: every request of the dialog carries the same two (a NameAddr built and
        written out each time before)."""
        held = self._texts.get(which)
        if held is not None and held[0] is uri and held[1] == tag:
            return held[2]
        text = str(uri.with_tag(tag)) if tag or which == "from" else str(uri)
        self._texts[which] = (uri, tag, text)
        return text


def _has_lr(route: NameAddr) -> bool:
    """``;lr`` is a URI parameter; a Route written without brackets puts it among the header parameters."""
    return has_param(route.sip_uri.params, "lr") or has_param(route.params, "lr")


# ---- RFC 3891 Replaces -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReplacesTarget:
    """``Replaces: callid;to-tag=…;from-tag=…[;early-only]`` (RFC 3891 §6.1).

    The tags name the dialog as its recipient sees it: ``to_tag`` is the recipient's local tag, ``from_tag``
    its remote tag (RFC 3891 §3).
    """

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    def dialog_id(self) -> DialogId:
        """The id of the dialog to replace, in the recipient's own terms (look it up in its dialog table)."""
        return DialogId(self.call_id, self.to_tag, self.from_tag)

    def __str__(self) -> str:
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}" + (
            ";early-only" if self.early_only else "")


def parse_replaces(value: str) -> ReplacesTarget:
    """Parse a Replaces header value (RFC 3891 §6.1); unknown generic parameters are ignored.

    Raises
    ------
    SipParseError
        No Call-ID, a missing or repeated ``to-tag``/``from-tag``, or a bad parameter.
    """
    call_id, semi, rest = value.strip().partition(";")
    call_id = call_id.strip()
    if not _CALL_ID_RE.match(call_id):
        raise SipParseError(f"bad Call-ID in Replaces {value!r}")
    params = parse_params(";" + rest) if semi else ()
    tags: dict[str, str] = {}
    early_only = False
    for name, param in params:
        lname = name.lower()
        if lname in ("to-tag", "from-tag"):
            if lname in tags or not param or not TOKEN_RE.match(param):
                raise SipParseError(f"bad or repeated {lname} in Replaces {value!r}")
            tags[lname] = param
        elif lname == "early-only":
            early_only = True
    if len(tags) != 2:
        raise SipParseError(f"Replaces needs to-tag and from-tag: {value!r}")
    return ReplacesTarget(call_id, tags["to-tag"], tags["from-tag"], early_only)


def replaces_target(dialog_id: DialogId, *, early_only: bool = False) -> ReplacesTarget:
    """The Replaces that names our dialog ``dialog_id`` to its peer (to-tag = our remote tag)."""
    return ReplacesTarget(dialog_id.call_id, dialog_id.remote_tag, dialog_id.local_tag, early_only)


def replaces_header(dialog_id: DialogId, *, early_only: bool = False) -> str:
    """The Replaces header value naming our dialog ``dialog_id`` as the peer sees it (RFC 3891 §6.1)."""
    return str(replaces_target(dialog_id, early_only=early_only))


# ---- RFC 3515 Refer-To ---------------------------------------------------------------------------------------

def parse_refer_to(value: str) -> tuple[NameAddr, ReplacesTarget | None]:
    """Parse a Refer-To value (RFC 3515 §2.1) and the Replaces embedded in its URI (RFC 3891 §5).

    The Replaces URI header is URL-escaped (``%3B`` ``%3D`` ``%40``); it is unescaped, parsed, and removed from
    the returned address, whose URI is then the target of the INVITE the REFER asks for. Other URI headers stay.

    Raises
    ------
    SipParseError
        A malformed address or Replaces.
    """
    addr = NameAddr.parse(value)
    uri = addr.uri
    if not isinstance(uri, SipUri):
        return addr, None
    raw = next((v for k, v in uri.headers if k.lower() == "replaces"), None)
    if raw is None:
        return addr, None
    target = parse_replaces(unquote(raw))
    headers = tuple((k, v) for k, v in uri.headers if k.lower() != "replaces")
    return replace(addr, uri=replace(uri, headers=headers)), target


def refer_to_header(target: NameAddr | SipUri, replaces: ReplacesTarget | None = None) -> str:
    """A Refer-To value for ``target``, with ``replaces`` escaped into its URI (RFC 3891 §5, attended transfer)."""
    addr = target if isinstance(target, NameAddr) else NameAddr(target)
    if replaces is not None:
        uri = addr.sip_uri
        headers = set_param(uri.headers, "Replaces", quote(str(replaces), safe=""))
        addr = replace(addr, uri=replace(uri, headers=headers))
    return str(addr)


# ---- RFC 3420 message/sipfrag --------------------------------------------------------------------------------

def sipfrag(status: int, reason: str | None = None) -> bytes:
    """The ``message/sipfrag`` body of a NOTIFY reporting a REFER's progress (RFC 3515 §2.4.5).

    ``SIPFRAG_CONTENT_TYPE`` is its Content-Type. ``reason`` defaults to the standard phrase.
    """
    if not 100 <= status <= 699:
        raise SipLocalError(f"bad status {status}")
    phrase = reason_for(status) if reason is None else reason
    if "\r" in phrase or "\n" in phrase:
        raise SipLocalError("line break in reason phrase")
    return f"SIP/2.0 {status} {phrase}\r\n".encode()


def parse_sipfrag(body: bytes) -> tuple[int, str]:
    """The status code and reason of a ``message/sipfrag`` NOTIFY body (RFC 3420, RFC 3515 §2.4.5).

    Raises
    ------
    SipParseError
        The body does not start with a SIP status line.
    """
    line = body.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    m = STATUS_LINE_RE.match(line)
    if not m:
        raise SipParseError(f"not a sipfrag status line: {line[:80]!r}")
    return int(m.group(2)), m.group(3) or ""
