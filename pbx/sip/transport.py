"""SIP transports (RFC 3261 §18): the asyncio edge for UDP and TCP over IPv4 and IPv6.

It frames bytes and hands them on; it knows nothing of transactions. Datagrams go to ``on_datagram`` whole;
stream bytes go through ``StreamFramer`` and each item to ``on_stream_item``. ``send`` routes by
``Destination``: UDP from the listening socket of the right address family (so replies leave from the port
phones registered to, which NAT bindings need), TCP over the connection the peer opened, or a new one.
TLS (RFC 3261 §26) plugs in as another stream listener with an ``ssl`` context.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ccpbx.pbx.sip.framing import PONG, FramingError, KeepAlive, StreamFramer, StreamItem
from ccpbx.pbx.sip.transaction import Destination

DatagramSink = Callable[[bytes, Destination], None]
StreamSink = Callable[[StreamItem, Destination], None]

log = structlog.get_logger("ccpbx.sip.transport")

MAX_TCP_CONNECTIONS = 10_000
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # bursts of REGISTERs (a site's phones rebooting) queue, not drop
TCP_CONNECT_TIMEOUT_S = 5.0


def is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
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
                 on_send_failed: Callable[[Destination], None] | None = None) -> None:
        self.on_datagram = on_datagram
        self.on_stream_item = on_stream_item
        self.on_send_failed = on_send_failed
        self.connections: dict[Destination, _Stream] = {}
        self._udp: dict[int, _Datagram] = {}  # address family -> protocol
        self._servers: list[asyncio.Server] = []
        self._pending: dict[Destination, list[bytes]] = {}
        self.listening: list[ListenAddress] = []
        self.datagrams_in = 0
        self.errors = 0

    async def listen(self, host: str, port: int, transports: tuple[str, ...] = ("udp", "tcp")) -> int:
        """Bind ``host:port`` for each transport; port 0 picks one free port shared by all. Returns it."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
        if "udp" in transports:
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
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Stream(self, destination[0]), destination[1], destination[2]),
                TCP_CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
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

