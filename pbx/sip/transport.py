"""SIP transports (RFC 3261 §18): the asyncio edge for UDP and TCP over IPv4 and IPv6.

It frames bytes and hands them on; it knows nothing of transactions. Datagrams go to ``on_datagram`` whole;
stream bytes go through ``StreamFramer`` and each item to ``on_stream_item``. ``send`` routes by
``Destination``: UDP from the listening socket of the right address family (so replies leave from the port
phones registered to, which NAT bindings need), TCP or TLS over the connection the peer opened, or a new one.
TLS (RFC 3261 §26) is the same stream framing over an :class:`ssl.SSLContext`: a listener with the server
context (:func:`server_context`), and outbound connections for ``("tls", host, port)`` with the client context
(:func:`client_context`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from ccpbx.pbx.sip.framing import PONG, FramingError, KeepAlive, StreamFramer, StreamItem
from ccpbx.pbx.sip.steering import attach_request_steering, reuse_port_socket
from ccpbx.pbx.sip.transaction import Destination

DatagramSink = Callable[[bytes, Destination], None]
StreamSink = Callable[[StreamItem, Destination], None]

log = structlog.get_logger("ccpbx.sip.transport")

MAX_TCP_CONNECTIONS = 10_000
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # bursts of REGISTERs (a site's phones rebooting) queue, not drop
TCP_CONNECT_TIMEOUT_S = 5.0
TLS_HANDSHAKE_TIMEOUT_S = 10.0


class TlsSetupError(Exception):
    """A certificate, key or CA file that cannot be loaded (the message names the file)."""


def server_context(certificate: Path, private_key: Path) -> ssl.SSLContext:
    """The listener's context: TLS 1.2 or later, our certificate chain; clients are not asked for one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot load TLS certificate {certificate} with key {private_key}: {exc}") from exc
    return context


def client_context(ca: Path | None = None, certificate: Path | None = None,
                   private_key: Path | None = None) -> ssl.SSLContext:
    """The context of our own connections: with ``ca``, the peer's certificate must chain to it (its name is
    not checked: we connect to resolved addresses); without, the peer is not verified but the channel is still
    encrypted. Our certificate is offered to peers that ask (mutual TLS with trunks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    if ca is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"cannot load TLS CA file {ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    if certificate is not None and private_key is not None:
        try:
            context.load_cert_chain(certificate, private_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"cannot load TLS certificate {certificate}: {exc}") from exc
    return context


def is_ipv6(host: str) -> bool:
    """An IPv6 literal (bare or bracketed): the only hosts with a colon. Asked for every datagram sent, so no
    ``ipaddress`` parse (5% of a loaded server's CPU)."""
    return ":" in host


def _enlarge_receive_buffer(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
    except OSError:
        pass  # the kernel caps it at net.core.rmem_max; what we got is still the best available


@dataclass(frozen=True, slots=True)
class ListenAddress:
    transport: str
    host: str
    port: int


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransports) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        self.owner.datagrams_in += 1
        try:
            self.owner.on_datagram(data, ("udp", addr[0], addr[1]))
        except Exception:  # a task root: one bad datagram never stops the listener
            self.owner.errors += 1
            log.exception("sip.udp.handler_failed", source=f"{addr[0]}:{addr[1]}")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the endpoint learns through transaction timeouts.
        self.owner.errors += 1


class _Stream(asyncio.Protocol):
    def __init__(self, owner: SipTransports, name: str = "tcp") -> None:
        self.owner = owner
        self.name = name
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Destination = (name, "", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (self.name, peer[0], peer[1])
        if len(self.owner.connections) >= MAX_TCP_CONNECTIONS:
            transport.close()
            return
        self.owner.connections[self.peer] = self

    def data_received(self, data: bytes) -> None:
        for item in self.framer.feed(data):
            if isinstance(item, KeepAlive):
                self.write(PONG)  # RFC 5626 §4.4.1
            elif isinstance(item, FramingError):
                log.info("sip.tcp.framing_error", peer=f"{self.peer[1]}:{self.peer[2]}", error=str(item.error))
                if self.transport is not None:
                    self.transport.close()
                return
            else:
                try:
                    self.owner.on_stream_item(item, self.peer)
                except Exception:
                    self.owner.errors += 1
                    log.exception("sip.tcp.handler_failed", peer=f"{self.peer[1]}:{self.peer[2]}")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner.connections.get(self.peer) is self:
            del self.owner.connections[self.peer]


class SipTransports:
    """All listening sockets and TCP connections of one SIP server."""

    def __init__(self, on_datagram: DatagramSink, on_stream_item: StreamSink,
                 on_send_failed: Callable[[Destination], None] | None = None, *,
                 server_ssl: ssl.SSLContext | None = None, client_ssl: ssl.SSLContext | None = None) -> None:
        self.on_datagram = on_datagram
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.on_stream_item = on_stream_item
        self.on_send_failed = on_send_failed
        self.connections: dict[Destination, _Stream] = {}
        self._udp: dict[int, _Datagram] = {}  # address family -> protocol
        self._servers: list[asyncio.Server] = []
        self._pending: dict[Destination, list[bytes]] = {}
        self.listening: list[ListenAddress] = []
        self.datagrams_in = 0
        self.errors = 0

    async def listen(self, host: str, port: int, transports: tuple[str, ...] = ("udp", "tcp"),
                     tls_port: int = 5061, udp_workers: int = 0) -> int:
        """Bind ``host:port`` for UDP and TCP (port 0 picks one free port shared by both; returned) and
        ``host:tls_port`` for TLS (port 0: its own free port, see :attr:`listening`).

        With ``udp_workers``, the UDP socket heads a reuse-port group whose requests go to that many worker
        sockets joining it later (:mod:`ccpbx.pbx.sip.steering`)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
        if "udp" in transports:
            if udp_workers:
                sock = reuse_port_socket(host, port, family)
                try:
                    attach_request_steering(sock, udp_workers)
                except OSError:
                    sock.close()
                    raise
                _, proto = await loop.create_datagram_endpoint(lambda: _Datagram(self), sock=sock)
            else:
                _, proto = await loop.create_datagram_endpoint(lambda: _Datagram(self), local_addr=(host, port),
                                                               family=family)
            assert proto.transport is not None
            port = proto.transport.get_extra_info("sockname")[1]
            _enlarge_receive_buffer(proto.transport.get_extra_info("socket"))
            self._udp.setdefault(family, proto)
            self.listening.append(ListenAddress("udp", host, port))
        if "tcp" in transports:
            server = await loop.create_server(lambda: _Stream(self, "tcp"), host, port, family=family,
                                              reuse_address=True)
            port = server.sockets[0].getsockname()[1]
            self._servers.append(server)
            self.listening.append(ListenAddress("tcp", host, port))
        if "tls" in transports:
            if self.server_ssl is None:
                raise TlsSetupError("listening on TLS needs a certificate and key")
            server = await loop.create_server(lambda: _Stream(self, "tls"), host, tls_port, family=family,
                                              reuse_address=True, ssl=self.server_ssl,
                                              ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
            self._servers.append(server)
            self.listening.append(ListenAddress("tls", host, server.sockets[0].getsockname()[1]))
        return port

    def send(self, data: bytes, destination: Destination) -> None:
        transport, host, port = destination
        if transport == "udp":
            family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
            proto = self._udp.get(family) or next(iter(self._udp.values()), None)
            if proto is None or proto.transport is None:
                self._failed(destination)
                return
            try:
                proto.transport.sendto(data, (host, port))
            except OSError:
                self._failed(destination)
            return
        conn = self.connections.get(destination)
        if conn is not None:
            conn.write(data)
            return
        pending = self._pending.get(destination)
        if pending is not None:
            pending.append(data)
            return
        self._pending[destination] = [data]
        asyncio.get_running_loop().create_task(self._connect(destination))

    async def _connect(self, destination: Destination) -> None:
        loop = asyncio.get_running_loop()
        name, host, port = destination
        try:
            if name == "tls":
                context = self.client_ssl or client_context()
                connecting = loop.create_connection(lambda: _Stream(self, name), host, port, ssl=context,
                                                    server_hostname=host,
                                                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
                timeout = TCP_CONNECT_TIMEOUT_S + TLS_HANDSHAKE_TIMEOUT_S
            else:
                connecting = loop.create_connection(lambda: _Stream(self, name), host, port)
                timeout = TCP_CONNECT_TIMEOUT_S
            _, proto = await asyncio.wait_for(connecting, timeout)
        except (OSError, TimeoutError):  # ssl.SSLError (a failed handshake or verification) is an OSError
            log.info("sip.connect.failed", transport=name, peer=f"{host}:{port}")
            self._pending.pop(destination, None)
            self._failed(destination)
            return
        for data in self._pending.pop(destination, []):
            proto.write(data)
        if proto.peer != destination:  # e.g. an IPv6 peer name with scope: keep it findable by what was asked
            self.connections[destination] = proto

    def _failed(self, destination: Destination) -> None:
        self.errors += 1
        if self.on_send_failed is not None:
            self.on_send_failed(destination)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for proto in self._udp.values():
            if proto.transport is not None:
                proto.transport.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                pass
        self._servers.clear()
        self._udp.clear()
        self.connections.clear()

