"""A SIP worker process: it shares the server's UDP port, answers the challenges of phones it knows and their
REGISTER refreshes, and passes every other request on to the server in the order it came.

Started and commanded by :class:`ccpbx.pbx.sip_workers.SipWorkers` over a :class:`~ccpbx.media.link.Link`; its
UDP sockets come from the server (already in the port's reuse-port group), and the kernel gives them every
datagram that is neither a response nor a BYE (:mod:`ccpbx.pbx.sip.steering`), by the sender's port when there
are several workers, so all of a phone's requests meet the same worker. A worker answers these itself:

- **the challenge** (401) of a REGISTER without credentials, when its sender's address is not banned, its
  endpoint (transport, address, port) authenticated to the server within the hour (the server says so; the
  rate limit spares such endpoints too, so a scanner's first requests still meet the rate limit and the flood
  bans in the server), it parses as a REGISTER with a SIP Request-URI, a To user, no ``Require``, and its
  sender is not in a trusted network (where the server may admit without credentials). The 401 is stateless,
  with a To tag stable across retransmissions. Its nonce is the worker's own (:mod:`ccpbx.pbx.sip.auth`: it
  names this worker process) when the phone holds a lease (below), else the server's kind, which the server
  verifies (same secret);
- **the challenge** (407) of a new call's INVITE without credentials, on the same terms, from an endpoint whose
  INVITE the server admitted with digest within the hour and which is not a trunk's (the server says so:
  :meth:`Challenger.learn_callers`; it forgets it again when a credential from there fails), with a Request-URI
  user, no To tag, no ``Require`` and Max-Forwards left. The 407's To tag is the one the server answers the call
  with (:func:`~ccpbx.pbx.sip_handlers.stable_to_tag`), its nonce the server's kind, and the worker remembers the
  INVITE's branch for Timer H (32 s): the **ACK of that 407** (same branch, same sender) ends here too. The
  INVITE that answers the challenge goes to the server, which verifies it and places the call: per call, two
  of the server's eight datagrams (the challenge's INVITE and ACK) stay in the worker. While the server is
  refusing new work for a sustained backlog (``[sip] overload_reject_ms``: it says so) new INVITEs go to it
  unchallenged, so that it can answer them 503;
- **the refresh** under a :class:`Lease`: after answering a REGISTER 200, the server leases the binding to the
  workers (the user's HA1s, the request's terms: Request-URI, Contact, Expires, User-Agent, sender) when it is
  the address-of-record's only binding. A REGISTER from the same sender, for the same user, with credentials on
  this worker's own nonce, the same terms and nothing else the registrar would look at (only the headers in
  :data:`LEASE_HEADERS`, no body), is verified here (nonce MAC, age and nonce-count, kept here: only this
  process accepts its nonces for REGISTER) and answered 200 with the Contact and Date the server would send;
  the server is told (``refreshed``) and updates and stores the binding. Anything else goes to the server:
  a wrong password (counted there: lock-outs and bans see every guess), a replayed or expired nonce (the server
  answers ``stale``), other terms (an unregister, another Expires), no lease. When such a request carries this
  worker's nonce, unexpired and with a nonce-count not used before, the worker keeps the count and vouches for
  the nonce as it passes the request on, so the server verifies it without a second challenge. The server
  revokes a lease whenever the binding changes otherwise, expires, the user's data changes, or a credential
  fails for it.

  A refresh answered here is written to SQLite by the server afterwards (its next group commit), not before
  the 200 as the server's own answers are: a ``kill -9`` in between keeps the binding stored with the expiry
  of the registration before, which the phone refreshes again before it runs out.

A REGISTER or new INVITE of the shape phones send most is read quickly (:mod:`ccpbx.pbx.sip.quick_read`: no
message objects) and its 401, 200 or 407 written as text, the same answer byte for byte as the full parser's way
gives; one off that shape, or one the quick way does not answer, takes the full way from the start.

Everything else is passed to the server whole and in order, which handles it as if it had read it: bans, rate
limits, admission, the registrar, calls. When the server falls behind (its link's backlog past
:data:`FORWARD_BACKLOG_BYTES`) new requests are dropped here as a full socket would drop them (their senders
retransmit); what finishes work in progress (ACK, CANCEL, PRACK...) is held back only past
:data:`URGENT_BACKLOG_BYTES`.

The worker ignores SIGINT and SIGTERM (the server stops it) and exits when its control socket closes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, NamedTuple

from ccpbx.media.link import Link, run_worker_process
from ccpbx.pbx.sip.auth import AuthOutcome, DigestAuthenticator, nonce_issuer
from ccpbx.pbx.sip.endpoint import stamp_received
from ccpbx.pbx.sip.framing import CREDENTIALS_RE, MAX_HEAD_SCAN, NEW_WORK_METHODS
from ccpbx.pbx.sip.message import Request, make_response, parse_message, reason_for
from ccpbx.pbx.sip.quick_read import QuickRequest, answer_head, read_credentials, read_request
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip.uri import SipUri
from ccpbx.pbx.sip_handlers import stable_tag, stable_to_tag

__all__ = ["CHALLENGE_ACK_WAIT_MS", "COUNTS_INTERVAL_S", "LEASE_HEADERS", "MAX_KNOWN", "NONCE_CLOCK_MARGIN_MS",
           "Challenger", "Counts", "Lease", "WorkerSetup", "main", "may_pass_on"]

COUNTS_INTERVAL_S = 1.0
# Nonces are stamped this much in the past: the server reads the clock once per turn of its loop, and a nonce
# stamped after the server's "now" would be refused as not yet issued (a second challenge for nothing).
NONCE_CLOCK_MARGIN_MS = 1_000
MAX_KNOWN = 100_000
# What the server has not read yet of what was passed to it; past this the worker drops what it would pass on
# (as a full socket buffer would: the sender retransmits), instead of queueing work the server sees too late.
FORWARD_BACKLOG_BYTES = 256 * 1024
URGENT_BACKLOG_BYTES = 1024 * 1024  # the same for what finishes work in progress (never new requests)
# How long the ACK of a 407 sent here may take to come (Timer H, 64*T1), and how many are awaited at most
CHALLENGE_ACK_WAIT_MS = 32_000
MAX_CHALLENGES_AWAITED = 100_000
# The top Via's branch, read off the bytes (an ACK is matched to a challenge here without parsing it)
TOP_BRANCH_RE = re.compile(rb"\n(?:via|v)[ \t]*:[^\r\n]*?;[ \t]*branch[ \t]*=[ \t]*([^;,\s]+)", re.IGNORECASE)
# The headers a leased refresh may carry: those the registrar and the UAS core read (their values are compared
# with the lease's where they matter) and those no part of the server acts on for a REGISTER.
LEASE_HEADERS = frozenset({"via", "from", "to", "call-id", "cseq", "contact", "expires", "max-forwards",
                           "content-length", "authorization", "user-agent", "allow", "supported", "allow-events",
                           "accept", "accept-language", "accept-encoding", "date"})
# The header a challenge's values go in, by status
CHALLENGE_HEADERS = {401: "WWW-Authenticate", 407: "Proxy-Authenticate"}
# Headers that send a new INVITE to the server whole (read quickly or not)
INVITE_DECLINED = frozenset({"require", "proxy-authorization", "authorization"})


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What the server tells a worker at its start (its sockets travel with the message)."""

    realm: str
    algorithms: tuple[str, ...]
    qop: str
    nonce_ttl_ms: int
    secret: bytes
    opaque: str
    server_header: str
    trusted_networks: tuple[str, ...]
    known_ms: int
    sockets: int
    issuer: str = ""  # this worker's nonces name it (a new one for each process the server starts)


@dataclass(slots=True)
class Lease:
    """A binding the server lets a worker refresh (see the module docstring); ``call_id`` and ``cseq`` follow
    the refreshes. The 200's Contact is ``answer_contact[0]`` + seconds granted + ``answer_contact[1]``."""

    aor: str
    key: str  # the binding's key in the server's location service
    source: Destination
    ha1s: dict[str, str]
    request_uri: str
    contact: str  # the REGISTER's Contact field, as sent
    expires: str | None  # its Expires field
    user_agent: str | None
    granted: int  # seconds
    answer_contact: tuple[str, str]
    call_id: str
    cseq: int

    @property
    def contact_answered(self) -> str:
        """The 200's Contact value: the binding with the seconds granted."""
        return f"{self.answer_contact[0]}{self.granted}{self.answer_contact[1]}"


class Counts(NamedTuple):
    """What a worker did since its last report."""

    challenged: int  # REGISTERs answered 401
    forwarded: int  # datagrams passed on to the server
    dropped: int  # from banned addresses
    shed: int  # not passed on: the server was behind
    refreshes: int  # leased refreshes answered 200
    invites_challenged: int = 0  # INVITEs answered 407
    acks_absorbed: int = 0  # ACKs of those 407s
    quick: int = 0  # REGISTERs and INVITEs answered (401, 200, 407) from the quick reading, of those above


class Challenger:
    """The decisions of a worker over datagrams (no sockets here: ``send`` and ``forward`` do the I/O)."""

    def __init__(self, setup: WorkerSetup, send: Any, forward: Any, refreshed: Any = None) -> None:
        self.setup = setup
        self.auth = DigestAuthenticator(setup.realm, algorithms=setup.algorithms, nonce_ttl_ms=setup.nonce_ttl_ms,
                                        qop=setup.qop, secret=setup.secret, opaque=setup.opaque)
        # this worker's nonces (leased refreshes): their counts are remembered here only
        self.own_auth = DigestAuthenticator(setup.realm, algorithms=setup.algorithms,
                                            nonce_ttl_ms=setup.nonce_ttl_ms, qop=setup.qop, secret=setup.secret,
                                            opaque=setup.opaque, issuer=setup.issuer,
                                            owned_methods=frozenset({"REGISTER"}))
        self.leases: dict[str, Lease] = {}  # aor -> its one binding's lease
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in setup.trusted_networks)
        self.send = send  # (bytes, (host, port)) -> None
        self.forward = forward  # (bytes, Destination, now ms, vouched nonce) -> bool: False when it was dropped
        self.refreshed = refreshed  # (Lease, expires_at wall s) -> None: the server updates its binding
        self.known: collections.OrderedDict[Destination, int] = collections.OrderedDict()  # -> since (ms)
        # endpoints whose INVITEs the server admitted (digest), not a trunk's -> since (ms)
        self.callers: collections.OrderedDict[Destination, int] = collections.OrderedDict()
        # (branch, sender) of INVITEs answered 407 here -> until (ms), oldest first: their ACKs end here
        self.awaiting_ack: dict[tuple[bytes, Destination], int] = {}
        self.overloaded = False  # the server refuses new work (503): new calls go to it unchallenged
        self.banned: dict[str, int] = {}  # ip -> until (ms)
        self.challenged = 0
        self.forwarded = 0
        self.dropped = 0  # from banned addresses
        self.shed = 0  # not passed on: the server was behind
        self.refreshes = 0  # leased refreshes answered 200
        self.invites_challenged = 0  # INVITEs answered 407
        self.acks_absorbed = 0  # ACKs of those 407s
        self.quick = 0  # REGISTERs and INVITEs answered from the quick reading (counted above too)
        self._vouched: str | None = None  # this worker's nonce in the datagram being passed on, its count kept
        self._date = (0, "")  # the Date header of this second

    # -- what the server says --------------------------------------------------------------------------------
    def learn(self, endpoints: list[tuple[Destination, int]]) -> None:
        """Endpoints that authenticated (digest) at these times: their plain REGISTERs are challenged here."""
        _remember(self.known, endpoints)

    def learn_callers(self, endpoints: list[tuple[Destination, int]]) -> None:
        """Endpoints whose INVITE the server admitted (digest) at these times: their new calls are challenged
        here."""
        _remember(self.callers, endpoints)

    def forget_caller(self, endpoint: Destination) -> None:
        """A credential from ``endpoint`` failed: its INVITEs go to the server (lock-out, counting) again."""
        self.callers.pop(endpoint, None)

    def lease(self, lease: Lease) -> None:
        self.leases[lease.aor] = lease

    def unlease(self, aors: list[str] | None) -> None:
        """End the leases of ``aors`` (None: all)."""
        if aors is None:
            self.leases.clear()
            return
        for aor in aors:
            self.leases.pop(aor, None)

    def ban(self, ip: str, until: int) -> None:
        self.banned[ip] = until

    def unban(self, ip: str) -> None:
        self.banned.pop(ip, None)

    # -- datagrams -------------------------------------------------------------------------------------------
    def datagram(self, data: bytes, source: Destination, now: int) -> None:
        host = source[1]
        until = self.banned.get(host)
        if until is not None:
            if now < until:
                self.dropped += 1
                return
            del self.banned[host]
        self._vouched = None
        if not self._answer(data, source, now):
            if self.forward(data, source, now, self._vouched):
                self.forwarded += 1
            else:
                self.shed += 1

    def _answer(self, data: bytes, source: Destination, now: int) -> bool:
        """Answer ``data`` here if it is one of the module docstring's; False: the server's to answer."""
        if data.startswith(b"REGISTER "):
            since = self.known.get(source)
            return since is not None and now - since < self.setup.known_ms and self._register(data, source, now)
        if data.startswith(b"INVITE "):
            if self.overloaded:
                return False
            since = self.callers.get(source)
            return since is not None and now - since < self.setup.known_ms and self._invite(data, source, now)
        if data.startswith(b"ACK "):
            return bool(self.awaiting_ack) and self._ack(data, source, now)
        return False

    def _register(self, data: bytes, source: Destination, now: int) -> bool:
        """Answer a plain REGISTER (401) or a leased refresh (200); False: not answered, the server's to answer
        (``_vouched`` then names this worker's nonce it carries, if any)."""
        quick = read_request(data, "REGISTER", LEASE_HEADERS)
        if quick is not None and self._quick_register(quick, source, now):
            return True
        try:
            request = parse_message(data)
            if (not isinstance(request, Request) or request.method != "REGISTER"
                    or not isinstance(request.uri, SipUri) or "require" in request.headers):
                return False
            to_uri = request.to.uri
            if not isinstance(to_uri, SipUri) or not to_uri.user:
                return False
            lease = self.leases.get(to_uri.user_unescaped or "")
            if lease is not None and lease.source != source:
                lease = None
            if "authorization" in request.headers:
                if lease is not None and self._refresh(request, source, lease, now):
                    return True
                self._vouch(request, now)
                return False
            if self.trusted and self._trusted(source[1]):
                return False
            stamp_received(request, source)
            host, port = request.via.response_address((source[1], source[2]))
        except Exception:  # whatever does not parse or look plain is the server's to answer
            return False
        self._challenge(request, 401, self.own_auth if lease is not None else self.auth, now, (host, port))
        self.challenged += 1
        return True

    def _quick_register(self, request: QuickRequest, source: Destination, now: int) -> bool:
        """:meth:`_register` of a REGISTER read quickly (:mod:`ccpbx.pbx.sip.quick_read`): the same 401 or
        200, byte for byte, without parsing it. False: nothing was done, the full reading decides."""
        lease = self.leases.get(request.to_user)
        if lease is not None and lease.source != source:
            lease = None
        authorization = request.fields.get("authorization")
        if authorization is not None:
            return lease is not None and self._quick_refresh(request, authorization, source, lease, now)
        if self.trusted and self._trusted(source[1]):
            return False
        self._quick_challenge(request, 401, self.own_auth if lease is not None else self.auth, now, source,
                              stable_tag(request.fields["call-id"], request.cseq, request.from_tag))
        self.challenged += 1
        return True

    def _quick_invite(self, request: QuickRequest, source: Destination, now: int) -> bool:
        """:meth:`_invite` of an INVITE read quickly: the same 407, byte for byte. False: nothing was done."""
        max_forwards = request.max_forwards
        if (max_forwards is not None and max_forwards <= 0) or not request.uri_user:
            return False
        if self.trusted and self._trusted(source[1]):
            return False
        branch = request.branch
        if not branch:
            return False
        self._quick_challenge(request, 407, self.auth, now, source,
                              stable_tag(request.fields["call-id"], "", request.from_tag))
        self._await_ack(branch.encode(), source, now)
        self.invites_challenged += 1
        return True

    def _quick_challenge(self, request: QuickRequest, status: int, auth: DigestAuthenticator, now: int,
                         source: Destination, to_tag: str) -> None:
        """What :meth:`_challenge` sends, written from a request read quickly."""
        head, destination = answer_head(request, f"SIP/2.0 {status} {reason_for(status)}", to_tag, source)
        name = CHALLENGE_HEADERS[status]
        lines = [head]
        lines.extend(f"{name}: {c}\r\n" for c in auth.challenges(now - NONCE_CLOCK_MARGIN_MS))
        lines.append(f"Server: {self.setup.server_header}\r\nContent-Length: 0\r\n\r\n")
        self.send("".join(lines).encode(), destination)
        self.quick += 1

    def _quick_refresh(self, request: QuickRequest, authorization: str, source: Destination, lease: Lease,
                       now: int) -> bool:
        """:meth:`_refresh` of a REGISTER read quickly; False: nothing was done (no nonce count kept either)."""
        fields = request.fields
        if (fields.get("contact") != lease.contact or fields.get("expires") != lease.expires
                or fields.get("user-agent") != lease.user_agent or request.uri != lease.request_uri):
            return False
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            return False
        call_id, cseq = fields["call-id"], request.cseq
        if call_id == lease.call_id and cseq <= lease.cseq:
            return False
        creds = read_credentials(authorization, self.setup.realm)
        if (creds is None or creds.username != lease.aor or creds.uri != request.uri
                or nonce_issuer(creds.nonce) != self.setup.issuer):
            return False
        if self.own_auth.verify_credentials(creds, "REGISTER", True, lease.ha1s, now).outcome is not AuthOutcome.OK:
            return False
        wall = time.time()
        lease.call_id, lease.cseq = call_id, cseq
        head, destination = answer_head(request, "SIP/2.0 200 OK", stable_tag(call_id, cseq, request.from_tag),
                                        source)
        self.send(f"{head}Contact: {lease.contact_answered}\r\nDate: {self._date_of(wall)}\r\n"
                  f"Server: {self.setup.server_header}\r\nContent-Length: 0\r\n\r\n".encode(), destination)
        self.refreshes += 1
        self.quick += 1
        if self.refreshed is not None:
            self.refreshed(lease, wall + lease.granted)
        return True

    def _date_of(self, wall: float) -> str:
        """The Date header's value for this wall-clock time (formatted once a second)."""
        second = int(wall)
        if second != self._date[0]:
            self._date = (second, formatdate(second, usegmt=True))
        return self._date[1]

    def _invite(self, data: bytes, source: Destination, now: int) -> bool:
        """Answer a new call's INVITE without credentials with 407 (the module docstring); False: the server's."""
        if CREDENTIALS_RE.search(data, 0, MAX_HEAD_SCAN) is not None:
            return False  # it answers a challenge: the server verifies it and places the call, unparsed here
        quick = read_request(data, "INVITE", declined=INVITE_DECLINED)
        if quick is not None and self._quick_invite(quick, source, now):
            return True
        try:
            request = parse_message(data)
            if (not isinstance(request, Request) or request.method != "INVITE" or request.to.tag is not None
                    or "require" in request.headers or "proxy-authorization" in request.headers
                    or not request.sip_uri.user_unescaped):
                return False
            max_forwards = request.max_forwards
            if max_forwards is not None and max_forwards <= 0:
                return False
            request.from_.display_name  # noqa: B018 (parsed: one the server would refuse is the server's)
            if self.trusted and self._trusted(source[1]):
                return False
            stamp_received(request, source)
            via = request.via
            branch = via.branch
            if not branch:
                return False  # no branch, no matching its ACK here
            host, port = via.response_address((source[1], source[2]))
        except Exception:
            return False
        self._challenge(request, 407, self.auth, now, (host, port))
        self._await_ack(branch.encode("utf-8", "surrogateescape"), source, now)
        self.invites_challenged += 1
        return True

    def _await_ack(self, branch: bytes, source: Destination, now: int) -> None:
        """The ACK of the 407 just sent for the INVITE with this top branch from ``source`` ends here."""
        awaiting = self.awaiting_ack
        if awaiting:  # one out (the oldest, once its ACK can no longer come) for each one in
            oldest = next(iter(awaiting))
            if awaiting[oldest] <= now or len(awaiting) >= MAX_CHALLENGES_AWAITED:
                del awaiting[oldest]
        awaiting[(branch, source)] = now + CHALLENGE_ACK_WAIT_MS

    def _ack(self, data: bytes, source: Destination, now: int) -> bool:
        """The ACK of a 407 sent here (its top branch and sender): it ends here. False: the server's."""
        match = TOP_BRANCH_RE.search(data, 0, MAX_HEAD_SCAN)
        if match is None:
            return False
        until = self.awaiting_ack.get((match.group(1), source))
        if until is None or until <= now:
            return False
        self.acks_absorbed += 1
        return True

    def _challenge(self, request: Request, status: int, auth: DigestAuthenticator, now: int,
                   destination: tuple[str, int]) -> None:
        response = make_response(request, status, to_tag=stable_to_tag(request))
        headers = response.headers
        name = CHALLENGE_HEADERS[status]
        for challenge in auth.challenges(now - NONCE_CLOCK_MARGIN_MS):
            headers.add(name, challenge)
        headers.add("Server", self.setup.server_header)
        self.send(response.serialize(), destination)

    def _vouch(self, request: Request, now: int) -> None:
        """Credentials on this worker's nonce, passed on: its count checked and kept here, so the server may
        accept the nonce (a replayed count is passed on without, and the server answers ``stale``)."""
        creds = self.own_auth.credentials(request)
        if creds is not None and self.own_auth.use_nonce(creds, now):
            self._vouched = creds.nonce

    def _refresh(self, request: Request, source: Destination, lease: Lease, now: int) -> bool:
        """Answer a refresh under ``lease`` with 200 if its terms are the lease's and its credentials, on this
        worker's nonce, are right; False: the server's to answer (and to count, if they are wrong)."""
        headers = request.headers
        if request.body or not headers.names() <= LEASE_HEADERS:
            return False
        contacts = headers.get_all("contact")
        if (len(contacts) != 1 or contacts[0] != lease.contact or headers.get("expires") != lease.expires
                or headers.get("user-agent") != lease.user_agent or str(request.uri) != lease.request_uri):
            return False
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            return False
        call_id, cseq = request.call_id, request.cseq.seq
        if call_id == lease.call_id and cseq <= lease.cseq:
            return False  # out of order: the server answers 400
        creds = self.own_auth.credentials(request)
        if creds is None or creds.username != lease.aor or nonce_issuer(creds.nonce) != self.setup.issuer:
            return False
        # the nonce's age and count are checked (and the count kept) with the password; a request passed on
        # instead is vouched for by _vouch, which checks and keeps its count the same way
        if self.own_auth.verify(request, lease.ha1s, now, credentials=creds).outcome is not AuthOutcome.OK:
            return False
        stamp_received(request, source)
        host, port = request.via.response_address((source[1], source[2]))
        wall = time.time()
        lease.call_id, lease.cseq = call_id, cseq
        response = make_response(request, 200, to_tag=stable_to_tag(request))
        answer = response.headers
        answer.add("Contact", lease.contact_answered)
        answer.add("Date", self._date_of(wall))
        answer.add("Server", self.setup.server_header)
        self.send(response.serialize(), (host, port))
        self.refreshes += 1
        if self.refreshed is not None:
            self.refreshed(lease, wall + lease.granted)
        return True

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def take_counts(self) -> Counts:
        """What was done since the last call."""
        counts = Counts(self.challenged, self.forwarded, self.dropped, self.shed, self.refreshes,
                        self.invites_challenged, self.acks_absorbed, self.quick)
        self.challenged = self.forwarded = self.dropped = self.shed = self.refreshes = 0
        self.invites_challenged = self.acks_absorbed = self.quick = 0
        return counts


def may_pass_on(data: bytes, backlog_bytes: int) -> bool:
    """Whether ``data`` may join a link to the server that has ``backlog_bytes`` unread: a new request not past
    :data:`FORWARD_BACKLOG_BYTES`, what finishes work in progress not past :data:`URGENT_BACKLOG_BYTES`."""
    if backlog_bytes <= FORWARD_BACKLOG_BYTES:
        return True
    return backlog_bytes <= URGENT_BACKLOG_BYTES and not data.startswith(NEW_WORK_METHODS)


def _remember(table: collections.OrderedDict[Destination, int], endpoints: list[tuple[Destination, int]]) -> None:
    for endpoint, since in endpoints:
        table.pop(endpoint, None)
        table[endpoint] = since
    while len(table) > MAX_KNOWN:
        table.popitem(last=False)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        worker = self.worker
        if worker.challenger is None:
            return
        worker.current = self
        worker.challenger.datagram(data, ("udp", addr[0], addr[1]), int(worker.loop.time() * 1000))

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for a challenge sent: nothing to do (the phone retransmits)


class Worker:
    """The process's state: the control link, the sockets, the challenger."""

    def __init__(self, ctl: socket.socket) -> None:
        self.loop = asyncio.get_running_loop()
        self.link = Link(ctl, self._messages, self._closed)
        self.challenger: Challenger | None = None
        self.current: _Datagrams | None = None  # the socket whose datagram is being handled: answers leave by it
        self.protocols: list[_Datagrams] = []
        self.done = asyncio.Event()

    def _messages(self, messages: list[Any]) -> None:
        for message in messages:
            kind = message[0]
            if kind == "setup":
                self.challenger = Challenger(message[1], self._send, self._forward, self._refreshed)
            elif kind == "sockets" and self.challenger is not None:
                fds = self.link.take_fds(self.challenger.setup.sockets)
                self.loop.create_task(self._listen([socket.socket(fileno=fd) for fd in fds]))
            elif kind == "known" and self.challenger is not None:
                self.challenger.learn(message[1])
            elif kind == "callers" and self.challenger is not None:
                self.challenger.learn_callers(message[1])
            elif kind == "forget_caller" and self.challenger is not None:
                self.challenger.forget_caller(message[1])
            elif kind == "overloaded" and self.challenger is not None:
                self.challenger.overloaded = message[1]
            elif kind == "lease" and self.challenger is not None:
                for lease in message[1]:
                    self.challenger.lease(lease)
            elif kind == "unlease" and self.challenger is not None:
                self.challenger.unlease(message[1])
            elif kind == "ban" and self.challenger is not None:
                self.challenger.ban(message[1], message[2])
            elif kind == "unban" and self.challenger is not None:
                self.challenger.unban(message[1])
            elif kind == "stop":
                self.done.set()

    async def _listen(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            sock.setblocking(False)
            _, protocol = await self.loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)
            self.protocols.append(protocol)
        self.link.send(("ready", os.getpid()))
        self.loop.create_task(self._report())

    def _send(self, data: bytes, address: tuple[str, int]) -> None:
        protocol = self.current
        if protocol is not None and protocol.transport is not None:
            try:
                protocol.transport.sendto(data, address)
            except OSError:
                pass  # the phone retransmits

    def _forward(self, data: bytes, source: Destination, now: int, vouched: str | None) -> bool:
        if not may_pass_on(data, self.link.pending_bytes):
            return False
        self.link.send(("fwd", data, source, now, vouched))
        return True

    def _refreshed(self, lease: Lease, expires_at: float) -> None:
        self.link.send(("refreshed", lease.aor, lease.key, lease.call_id, lease.cseq, expires_at, lease.source))

    async def _report(self) -> None:
        while not self.done.is_set():
            await asyncio.sleep(COUNTS_INTERVAL_S)
            if self.challenger is not None:
                counts = self.challenger.take_counts()
                if any(counts):
                    self.link.send(("counts", tuple(counts)))  # a plain tuple: this module is __main__ here

    def _closed(self) -> None:
        self.done.set()

    async def run(self) -> None:
        await self.done.wait()
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        self.link.flush()


async def _main(fd: int) -> None:
    worker = Worker(socket.socket(fileno=fd))
    await worker.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccpbx.pbx.sip_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the control socket's descriptor (inherited)")
    parser.add_argument("--uvloop", action="store_true", help="run under uvloop")
    args = parser.parse_args(argv)
    run_worker_process(lambda: _main(args.fd), args.uvloop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
