"""A relayed channel's RTP socket is connected to its phone once steady audio flows (strict source), and lets
go again for a new remote, on close, and after a worker that held it died."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest

from ccpbx.media.engine import MediaEngine
from ccpbx.media.g711 import Codec
from ccpbx.media.rtp import RtpPacket
from ccpbx.media.transport import MediaServer, PortAllocator, bind_rtp_pair, disconnect_udp
from ccpbx.media.workers import MediaWorkers

F = 160
pytestmark = pytest.mark.timeout(30)


def _udp(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.setblocking(False)
    return s


def _udp_on_a_port_of_its_own() -> socket.socket:
    """Bound to a port it names, as the media sockets are (one bound to port 0 loses it on disconnect)."""
    probe = _udp()
    port = probe.getsockname()[1]
    probe.close()
    return _udp(port)


def _drain(s: socket.socket) -> list[RtpPacket]:
    out = []
    while True:
        try:
            out.append(RtpPacket.parse(s.recv(2048)))
        except BlockingIOError:
            return out


def _peer(s: socket.socket) -> tuple[str, int] | None:
    try:
        host, port = s.getpeername()
    except OSError:  # not connected
        return None
    return host, port


def test_disconnect_udp_hears_everyone_again_on_the_same_port() -> None:
    me, friend, stranger = _udp_on_a_port_of_its_own(), _udp(), _udp()
    try:
        port = me.getsockname()
        me.connect(friend.getsockname())
        stranger.sendto(b"dropped", port)
        friend.sendto(b"heard", port)
        me.settimeout(2.0)
        assert me.recv(100) == b"heard"  # the kernel dropped the stranger's datagram
        disconnect_udp(me)
        disconnect_udp(me)  # harmless when not connected
        assert _peer(me) is None and me.getsockname() == port
        stranger.sendto(b"now heard", port)
        assert me.recvfrom(100) == (b"now heard", stranger.getsockname())
    finally:
        for s in (me, friend, stranger):
            s.close()


async def _send(s: socket.socket, port: int, ssrc: int, seqs: range, payload: bytes = bytes(F)) -> None:
    for k in seqs:
        s.sendto(RtpPacket(0, k, k * F, ssrc, payload).serialize(), ("127.0.0.1", port))
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)


async def test_a_relayed_channel_hears_only_its_phone_until_its_remote_changes_or_it_closes() -> None:
    lo = random.randrange(20000, 60000, 2)
    server = MediaServer("127.0.0.1", PortAllocator(lo, lo + 200))
    phone_a, phone_b, stranger = _udp(), _udp(), _udp()
    try:
        async with asyncio.timeout(20), server:
            ca = await server.open_channel(Codec.PCMU, phone_a.getsockname())
            cb = await server.open_channel(Codec.PCMU, phone_b.getsockname())
            server.engine.bridge(ca.channel, cb.channel)
            sock_a = server._socks[ca.channel]
            assert _peer(sock_a) is None  # nothing heard yet: anyone may be latched onto
            await _send(phone_a, ca.port, 0xA, range(10))
            await _send(phone_b, cb.port, 0xB, range(10))
            assert len(_drain(phone_b)) == 10 and len(_drain(phone_a)) == 10
            assert _peer(sock_a) == phone_a.getsockname()
            assert _peer(server._socks[cb.channel]) == phone_b.getsockname()
            assert server.locked == 2

            # Strict source: a stranger's packets, however many, never reach B nor move the latch.
            await _send(stranger, ca.port, 0x5, range(10), b"\x55" * F)
            await _send(phone_a, ca.port, 0xA, range(10, 15))
            to_b = _drain(phone_b)
            assert len(to_b) == 5 and all(p.payload == bytes(F) for p in to_b)
            assert server.engine.remote(ca.channel) == phone_a.getsockname()
            assert server.engine.stats(ca.channel).packets_in == 15

            # A re-INVITE moves A's media: the socket hears the new address and locks onto it.
            server.engine.set_remote(ca.channel, stranger.getsockname())
            assert _peer(sock_a) is None
            await _send(stranger, ca.port, 0x5, range(10, 20), b"\x55" * F)
            to_b = _drain(phone_b)
            assert len(to_b) == 10 and all(p.payload == b"\x55" * F for p in to_b)
            assert _peer(sock_a) == stranger.getsockname()
            await _send(phone_b, cb.port, 0xB, range(10, 13))
            assert len(_drain(stranger)) == 3 and _drain(phone_a) == []  # B's audio follows A's new address

            # The same address again keeps the lock; another remote (or none) lets go.
            server.engine.set_remote(ca.channel, stranger.getsockname())
            assert _peer(sock_a) == stranger.getsockname()
            server.engine.set_remote(ca.channel, None)
            assert _peer(sock_a) is None

            # A phone that went away: ICMP port unreachable surfaces on the connected socket's next read
            # and is counted, and the server keeps relaying the other way.
            sock_b = server._socks[cb.channel]
            phone_b_addr = phone_b.getsockname()
            phone_b.close()
            server.engine.set_remote(ca.channel, phone_a.getsockname())
            await _send(phone_a, ca.port, 0xA, range(20, 25))  # relayed to B's closed port
            assert _peer(sock_b) == phone_b_addr
            assert server.recv_errors + server.send_errors >= 1
            phone_b = _udp()  # the old port may be anyone's now; B is only checked for what reaches A below
            server.engine.set_remote(cb.channel, phone_b.getsockname())
            await _send(phone_b, cb.port, 0xB, range(20, 25))
            assert len(_drain(phone_a)) == 5

            # Closing parks the sockets unconnected: the next call's phone is heard.
            server.close_channel(ca.channel)
            assert _peer(sock_a) is None
            assert server.unlock_errors == 0
    finally:
        for s in (phone_a, phone_b, stranger):
            s.close()


def test_a_pair_left_by_a_dead_worker_is_passed_on_unconnected() -> None:
    """A worker that died before closing a channel left its socket connected to that call's phone (the
    signalling process holds the same socket); the shared pool connects it to nothing before passing it on."""
    lo = random.randrange(20000, 60000, 2)
    ports = PortAllocator(lo, lo + 20)
    workers = MediaWorkers("127.0.0.1", ports, 1)  # never started: only its pool is used
    sock, rtcp = bind_rtp_pair("127.0.0.1", socket.AF_INET, ports)
    phone = _udp()
    try:
        sock.connect(phone.getsockname())
        port = sock.getsockname()[1]
        workers._idle.append((time.monotonic() - 60.0, port, sock, rtcp))
        assert workers._take_sockets() == (port, sock, rtcp)
        assert _peer(sock) is None and sock.getsockname() == ("127.0.0.1", port)
    finally:
        for s in (sock, rtcp, phone):
            s.close()


async def test_an_ipv6_relayed_pair_takes_the_fast_path_and_locks() -> None:
    """IPv6 senders come as (host, port, flowinfo, scope): compared as (host, port), as the engine keeps them."""
    try:
        phone_a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        phone_a.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 not configured")
    phone_b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    phone_b.bind(("::1", 0))
    for s in (phone_a, phone_b):
        s.setblocking(False)
    lo = random.randrange(20000, 60000, 2)
    server = MediaServer("::1", PortAllocator(lo, lo + 200))
    try:
        async with asyncio.timeout(20), server:
            addr_a, addr_b = phone_a.getsockname()[:2], phone_b.getsockname()[:2]
            ca = await server.open_channel(Codec.PCMU, addr_a)
            cb = await server.open_channel(Codec.PCMU, addr_b)
            server.engine.bridge(ca.channel, cb.channel)
            for k in range(10):
                phone_a.sendto(RtpPacket(0, k, k * F, 0xA, bytes(F)).serialize(), ("::1", ca.port))
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            assert len(_drain(phone_b)) == 10
            assert server._socks[ca.channel].getpeername()[:2] == addr_a
    finally:
        phone_a.close()
        phone_b.close()


async def test_an_adopted_pair_is_connected_to_no_one_when_adopted_and_left_alone_when_it_leaves() -> None:
    """A media worker shares its sockets with the signalling process and, while a channel moves, with the
    worker it moves to: that one may connect the socket before this one closes its channel, so a close that
    hands the pair on leaves it as it is; adopting one starts from no one; a pair kept here is let go."""
    lo = random.randrange(20000, 60000, 2)
    ports = PortAllocator(lo, lo + 40)
    server = MediaServer("127.0.0.1", PortAllocator(lo + 100, lo + 140))
    phone_a, phone_b = _udp(), _udp()
    pairs = [bind_rtp_pair("127.0.0.1", socket.AF_INET, ports) for _ in range(2)]
    try:
        async with asyncio.timeout(20), server:
            a = await server.adopt_channel(pairs[0][0].dup(), pairs[0][1].dup(), Codec.PCMU, phone_a.getsockname())
            b = await server.adopt_channel(pairs[1][0].dup(), pairs[1][1].dup(), Codec.PCMU, phone_b.getsockname())
            server.engine.bridge(a, b)
            port_a = pairs[0][0].getsockname()[1]
            await _send(phone_a, port_a, 0xA, range(10))
            assert len(_drain(phone_b)) == 10
            assert _peer(pairs[0][0]) == phone_a.getsockname()  # the same socket, seen through our copy
            server.close_channel(a)  # handed on (a move, or to the signalling process): left connected
            server.close_channel(b)
            assert _peer(pairs[0][0]) == phone_a.getsockname()
            again = await server.adopt_channel(pairs[0][0].dup(), pairs[0][1].dup(), Codec.PCMU,
                                               phone_a.getsockname())
            assert _peer(pairs[0][0]) is None  # adopted: hears anyone
            b = await server.adopt_channel(pairs[1][0].dup(), pairs[1][1].dup(), Codec.PCMU, phone_b.getsockname())
            server.engine.bridge(again, b)
            await _send(phone_a, port_a, 0xA, range(10, 20))
            assert len(_drain(phone_b)) == 10 and _peer(pairs[0][0]) == phone_a.getsockname()
            server.close_channel(again, keep=True)  # kept here for a reopen: let go
            assert _peer(pairs[0][0]) is None and server.kept == 1
    finally:
        for s in (phone_a, phone_b, *(x for pair in pairs for x in pair)):
            s.close()


async def test_a_mixed_channel_locks_once_its_stream_settles() -> None:
    """A channel the engine mixes (no relay) is connected after two packets from its latched address: a
    stranger's packets then never reach the mix nor move the latch."""
    lo = random.randrange(20000, 60000, 2)
    server = MediaServer("127.0.0.1", PortAllocator(lo, lo + 200), engine=MediaEngine(relay=False))
    phone_a, phone_b, stranger = _udp(), _udp(), _udp()
    try:
        async with asyncio.timeout(20), server:
            ca = await server.open_channel(Codec.PCMU, None)  # no SDP address yet: latched from the first packet
            cb = await server.open_channel(Codec.PCMU, phone_b.getsockname())
            server.engine.bridge(ca.channel, cb.channel)
            assert not server.engine.relaying(ca.channel)
            await _send(phone_a, ca.port, 0xA, range(1))
            assert _peer(server._socks[ca.channel]) is None  # one packet: latched, not settled
            await _send(phone_a, ca.port, 0xA, range(1, 10))
            assert _peer(server._socks[ca.channel]) == phone_a.getsockname()
            await _send(stranger, ca.port, 0x5, range(10), b"\x55" * F)
            assert server.engine.remote(ca.channel) == phone_a.getsockname()
            assert server.engine.stats(ca.channel).packets_in == 10
    finally:
        for s in (phone_a, phone_b, stranger):
            s.close()
