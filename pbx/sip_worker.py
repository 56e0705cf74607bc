"""A SIP worker process: it shares the server's UDP port and answers the digest challenge of REGISTER refreshes.

Started and commanded by :class:`ccpbx.pbx.sip_workers.SipWorkers` over a :class:`~ccpbx.media.link.Link`; its
UDP sockets come from the server (already in the port's reuse-port group), and the kernel gives them every
datagram that starts with ``REGISTER`` (:mod:`ccpbx.pbx.sip.steering`). Half the datagrams of a registration
are the first REGISTER and its 401; those of phones the server already knows are answered here, on another
core. The worker answers a datagram itself only when all of these hold:

- its sender's address is not banned, and its endpoint (transport, address, port) authenticated to the server
  within the hour (the server says so; the rate limit spares such endpoints too, so a scanner's first requests
  still meet the rate limit and the flood bans in the server);
- it parses as a REGISTER with a SIP Request-URI, a To user, no ``Authorization`` and no ``Require``;
- its sender is not in a trusted network (where the server may admit without credentials).

The answer is then a 401 carrying the server's own kind of nonce (the same secret: the server verifies it) and
a To tag stable across retransmissions; it is stateless (a retransmitted REGISTER gets a fresh challenge).
Everything else is passed to the server whole, which handles it as if it had read it: bans, rate limits,
admission, the registrar. Credentials are never checked here, so every guess reaches the server, where
lock-outs and bans count it.

The worker ignores SIGINT and SIGTERM (the server stops it) and exits when its control socket closes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from ccpbx.media.link import Link, run_worker_process
from ccpbx.pbx.sip.auth import DigestAuthenticator
from ccpbx.pbx.sip.endpoint import stamp_received
from ccpbx.pbx.sip.message import Request, make_response, parse_message
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip.uri import SipUri
from ccpbx.pbx.sip_handlers import stable_to_tag

__all__ = ["COUNTS_INTERVAL_S", "NONCE_CLOCK_MARGIN_MS", "RegisterChallenger", "WorkerSetup", "main"]

COUNTS_INTERVAL_S = 1.0
# Nonces are stamped this much in the past: the server reads the clock once per turn of its loop, and a nonce
# stamped after the server's "now" would be refused as not yet issued (a second challenge for nothing).
NONCE_CLOCK_MARGIN_MS = 1_000
MAX_KNOWN = 100_000
# What the server has not read yet of what was passed to it; past this the worker drops what it would pass on
# (as a full socket buffer would: the sender retransmits), instead of queueing work the server sees too late.
FORWARD_BACKLOG_BYTES = 256 * 1024


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


class RegisterChallenger:
    """The decisions of a worker over datagrams (no sockets here: ``send`` and ``forward`` do the I/O)."""

    def __init__(self, setup: WorkerSetup, send: Any, forward: Any) -> None:
        self.setup = setup
        self.auth = DigestAuthenticator(setup.realm, algorithms=setup.algorithms, nonce_ttl_ms=setup.nonce_ttl_ms,
                                        qop=setup.qop, secret=setup.secret, opaque=setup.opaque)
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in setup.trusted_networks)
        self.send = send  # (bytes, (host, port)) -> None
        self.forward = forward  # (bytes, Destination, now ms) -> bool: False when it had to be dropped
        self.known: collections.OrderedDict[Destination, int] = collections.OrderedDict()  # -> since (ms)
        self.banned: dict[str, int] = {}  # ip -> until (ms)
        self.challenged = 0
        self.forwarded = 0
        self.dropped = 0  # from banned addresses
        self.shed = 0  # not passed on: the server was behind

    # -- what the server says --------------------------------------------------------------------------------
    def learn(self, endpoints: list[tuple[Destination, int]]) -> None:
        known = self.known
        for endpoint, since in endpoints:
            known.pop(endpoint, None)
            known[endpoint] = since
        while len(known) > MAX_KNOWN:
            known.popitem(last=False)

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
        since = self.known.get(source)
        if since is None or now - since >= self.setup.known_ms or not self._challenge(data, source, now):
            if self.forward(data, source, now):
                self.forwarded += 1
            else:
                self.shed += 1

    def _challenge(self, data: bytes, source: Destination, now: int) -> bool:
        """Answer ``data`` with a 401 if it is a plain REGISTER (see the module docstring); False: not answered."""
        try:
            request = parse_message(data)
            if (not isinstance(request, Request) or request.method != "REGISTER"
                    or not isinstance(request.uri, SipUri) or "authorization" in request.headers
                    or "require" in request.headers):
                return False
            to_uri = request.to.uri
            if not isinstance(to_uri, SipUri) or not to_uri.user:
                return False
            if self.trusted and self._trusted(source[1]):
                return False
            stamp_received(request, source)
            host, port = request.via.response_address((source[1], source[2]))
        except Exception:  # whatever does not parse or look plain is the server's to answer
            return False
        response = make_response(request, 401, to_tag=stable_to_tag(request))
        headers = response.headers
        for challenge in self.auth.challenges(now - NONCE_CLOCK_MARGIN_MS):
            headers.add("WWW-Authenticate", challenge)
        headers.add("Server", self.setup.server_header)
        self.send(response.serialize(), (host, port))
        self.challenged += 1
        return True

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def take_counts(self) -> tuple[int, int, int, int]:
        """Challenged, forwarded, dropped (banned) and shed since the last call."""
        counts = (self.challenged, self.forwarded, self.dropped, self.shed)
        self.challenged = self.forwarded = self.dropped = self.shed = 0
        return counts


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
        self.challenger: RegisterChallenger | None = None
        self.current: _Datagrams | None = None  # the socket whose datagram is being handled: answers leave by it
        self.protocols: list[_Datagrams] = []
        self.done = asyncio.Event()

    def _messages(self, messages: list[Any]) -> None:
        for message in messages:
            kind = message[0]
            if kind == "setup":
                self.challenger = RegisterChallenger(message[1], self._send, self._forward)
            elif kind == "sockets" and self.challenger is not None:
                fds = self.link.take_fds(self.challenger.setup.sockets)
                self.loop.create_task(self._listen([socket.socket(fileno=fd) for fd in fds]))
            elif kind == "known" and self.challenger is not None:
                self.challenger.learn(message[1])
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

    def _forward(self, data: bytes, source: Destination, now: int) -> bool:
        if self.link.pending_bytes > FORWARD_BACKLOG_BYTES:
            return False
        self.link.send(("fwd", data, source, now))
        return True

    async def _report(self) -> None:
        while not self.done.is_set():
            await asyncio.sleep(COUNTS_INTERVAL_S)
            if self.challenger is not None:
                counts = self.challenger.take_counts()
                if any(counts):
                    self.link.send(("counts", *counts))

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
