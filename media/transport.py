"""The asyncio edge of the media engine: RTP ports, one UDP socket per channel, the 20 ms tick.

All media logic is in :class:`~ccpbx.media.engine.MediaEngine`; this module only moves datagrams and time:

- :class:`PortAllocator` hands out even RTP ports and keeps ``port + 1`` for RTCP (RFC 3550 §11);
- :class:`MediaServer` binds one non-blocking UDP socket per channel for RTP and one on ``port + 1`` for RTCP
  (RFC 3550 §11; no rtcp-mux); a closed channel's pair is parked in a pool (what arrives is dropped) and
  reused by a later channel once it has idled ``POOL_QUARANTINE_S``, so a leg costs no socket creation; it reads
  each RTP socket itself (``add_reader``, one datagram per system call) and feeds each datagram to
  ``engine.forward`` (a relayed pair's steady packet comes back rewritten and leaves at once; the rest goes on
  to ``engine.receive``) with the loop's monotonic clock in milliseconds. On a connected socket (below) a
  datagram that matches the channel's route (``engine.routes``, kept by ``engine.forward``) is read into one
  buffer, given its new header there and sent from the peer's socket without any other object: the relay's
  steady state. A channel's socket is connected to its
  phone's latched address once its audio has settled there (strict source: other senders are dropped by the
  kernel until the engine is given a new remote or the channel closes; see :class:`_RtpReader`). It runs
  the tick at ``t0 + k * 20 ms`` (drift-free: lateness never accumulates; a tick more than one period late
  skips ahead and is counted; when RTP floods in and the timer is held up, an RTP packet's callback runs the
  overdue tick), sends ``engine`` output from the channel's own socket (symmetric RTP, RFC 4961) and hands the
  engine's events to the owner (a callback or an :class:`asyncio.Queue`). RTCP datagrams go to
  ``engine.receive_rtcp`` and the engine's ``outgoing_rtcp`` reports (and the BYE on close) leave from the
  channel's RTCP socket.
- SRTP/SRTCP (RFC 3711) is applied here, never in the engine: :meth:`MediaServer.set_srtp` gives a channel an
  :class:`~ccpbx.media.srtp.SrtpContext`; its datagrams are unprotected before ``engine.forward`` and the
  engine's packets protected just before ``sendto``. A packet that fails authentication is dropped and counted
  (``srtp_errors``).

The loop is the caller's: run under uvloop for speed (``uvloop.run(main())``), nothing here installs a policy.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import ctypes
import ipaddress
import math
import os
import random
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from .engine import (
    NTP_UNIX_OFFSET_S,
    ROUTE,
    ROUTE_BYTES,
    ROUTE_TAIL,
    ROUTE_TAIL_OFFSET,
    RTP_VERSION_BITS,
    Address,
    MediaEngine,
    MediaEvent,
)
from .errors import MediaConfigError, MediaError
from .g711 import Codec
from .rtp import RTP_HEADER
from .source import FRAME_MS
from .srtp import SrtpContext, SrtpParameters

__all__ = ["MediaServer", "OpenedChannel", "PortAllocator", "PortsExhaustedError", "TickDurations", "TickStats",
           "address_family", "bind_rtp_pair", "disconnect_udp", "pool_limit"]

POOL_QUARANTINE_S = 2.0  # a closed channel's sockets idle this long before a new channel reuses them
# idle socket pairs kept for reuse (2 s of legs at 1,000 calls/s); a pair past it is closed. At 1,024 (250 calls/s)
# a 450 calls/s load bound and passed new pairs for 4 legs in 10, and cost ~5% more CPU a call.
POOL_MAX_IDLE = 4096
FILES_PER_POOLED_PAIR = 8  # of the open-files limit, per pair a pool may keep (calls need theirs first)
LATE_TICK_MS = 5.0  # a tick starting this much after its due time is counted late
INLINE_TICK_MS = 2.0  # a tick this overdue when an RTP packet arrives runs from the packet's callback
# A tick due within this much runs now rather than after a sleep: uvloop's clock and timers count whole
# milliseconds, so a sleep of less than one returned at once and the loop spun up to 1 ms before a tick (about
# 30 sleeps a tick).
TICK_SLACK_S = 0.001
BIND_ATTEMPTS = 64
# Upper bounds (seconds) of the tick-duration histogram: a tick must finish well inside its 20 ms period.
TICK_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
RECEIVE_BYTES = 4096  # an RTP datagram longer than this is cut short (a 20 ms G.711 packet is 172 bytes)


class PortsExhaustedError(MediaError):
    """No even RTP port is free in the configured range."""


class PortAllocator:
    """Even RTP ports in ``[lo, hi]``, each with ``port + 1`` reserved for RTCP (RFC 3550 §11).

    Released ports go to the back of the queue so a port is not reused right away (late packets of the
    previous call would land in the next one).
    """

    __slots__ = ("_free", "_in_use", "hi", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        first = lo + (lo & 1)
        if not 0 < lo <= hi <= 65535 or first + 1 > hi:
            raise MediaConfigError(f"RTP port range {lo}-{hi} holds no even port with its RTCP port")
        self.lo = lo
        self.hi = hi
        self._free: collections.deque[int] = collections.deque(range(first, hi, 2))
        # Start at a random place: servers (or tests) sharing a range do not all fight over its first ports.
        self._free.rotate(random.randrange(len(self._free)))
        self._in_use: set[int] = set()

    def allocate(self) -> int:
        """Return a free even port (its odd neighbour is reserved with it)."""
        if not self._free:
            raise PortsExhaustedError(f"all {len(self._in_use)} RTP ports of {self.lo}-{self.hi} are in use")
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        if port not in self._in_use:
            raise MediaConfigError(f"port {port} is not allocated")
        self._in_use.remove(port)
        self._free.append(port)

    def scatter(self) -> None:
        """Start the next allocation at a random free port (after a bind failed: its neighbours may be taken)."""
        if self._free:
            self._free.rotate(random.randrange(len(self._free)))

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._in_use)


@dataclass(frozen=True, slots=True)
class OpenedChannel:
    channel: int
    port: int  # local RTP port, for the SDP offer/answer


@dataclass(frozen=True, slots=True)
class TickStats:
    ticks: int
    late: int
    skipped: int
    send_errors: int
    max_late_ms: float


class TickDurations:
    """How long the work of each tick took (engine tick + sending its RTP and RTCP), as a histogram.

    Cheap enough to update on every tick (a bisect and three additions); read by the admin API's /metrics.
    ``counts[i]`` counts ticks with ``bounds[i-1] < seconds <= bounds[i]``; the last slot is above every bound.
    """

    __slots__ = ("bounds", "count", "counts", "total_s")

    def __init__(self, bounds: tuple[float, ...] = TICK_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.total_s += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, ticks at or below it)`` for each bound, then ``(inf, all ticks)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


# The connected sockets' reads: one buffer (the relay rewrites a datagram's header in place and sends it from
# there before the next read) and a view of each length sent from it.
_BUFFER = bytearray(RECEIVE_BYTES)
ROUTED_CLOCK_MASK = 15
_WHOLE = memoryview(_BUFFER)
_VIEWS: dict[int, memoryview] = {}
_route_of = ROUTE.unpack_from
_header_of = RTP_HEADER.unpack_from
_write_header = RTP_HEADER.pack_into
_write_tail = ROUTE_TAIL.pack_into


def _view(n: int) -> memoryview:
    view = _VIEWS[n] = _WHOLE[:n]
    return view


class _RtpReader:
    """Reads one channel's RTP socket from the loop (``add_reader``): one datagram per readiness, one system call.

    While the socket is unconnected every datagram comes with its sender's address, which the engine latches
    onto (symmetric RTP). Once the channel's own steady audio takes the relay fast path, from the address it is
    latched to, or (a channel the engine mixes, plays to or records) the engine says its stream has settled
    there, the socket is **connected** to that address (:meth:`lock`): the kernel then drops other
    senders' datagrams (strict source, as Asterisk's ``strictrtp``), reads need no address and sends to it need
    none either, which saves the formatting and parsing of an address string on every packet. A new remote
    (a re-INVITE's SDP) or the channel's close connects it to nothing again (:meth:`unlock`), and latching
    resumes.
    """

    __slots__ = ("ch", "engine", "fed_by", "forward", "lock_failed", "peer", "readers", "recv_into", "recvfrom",
                 "send", "senders", "server", "sock", "srtp", "time", "v6")

    def __init__(self, server: MediaServer, sock: socket.socket, ch: int) -> None:
        self.server = server
        self.engine = server.engine
        self.forward = server.engine.forward
        self.readers = server._readers
        self.sock = sock
        self.recv_into = sock.recv_into
        self.recvfrom = sock.recvfrom
        self.senders = server._senders
        self.fed_by = -1  # the channel whose route sends from this socket (see senders), -1 for none
        self.send = sock.send
        self.ch = ch
        self.peer: Address | None = None  # the address the socket is connected to
        self.lock_failed = False
        self.v6 = sock.family == socket.AF_INET6
        self.time = asyncio.get_running_loop().time
        self.srtp: SrtpContext | None = None

    def readable(self) -> None:
        # Bound methods kept in slots are read into locals before the call: a call straight on the attribute
        # (self.recv_into(...)) takes CPython's unspecialized method look-up through the slot descriptor.
        peer = self.peer
        if peer is None or self.srtp is not None:
            self._readable_unconnected()
            return
        recv_into = self.recv_into
        buffer = _BUFFER
        try:
            n = recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ICMP port unreachable, reported on a connected socket: the RTP timeout decides
            self.server.recv_errors += 1
            return
        ch = self.ch
        if ch < 0:  # parked in the pool: a late packet of the channel's last call
            return
        # The route (engine.routes): the relayed pair's steady audio, as forward() last passed it. The socket is
        # connected to the address it was made from (the kernel drops other senders), and the engine forgets it
        # whenever anything it was made of changes.
        routes = self.engine.routes
        at = ch * ROUTE_BYTES
        size, pt, out_pt, seq_off, nxt, count, in_ssrc, ts_off, out_ssrc, _peer_ch = _route_of(routes, at)
        if n == size and buffer[0] == RTP_VERSION_BITS:
            send = self.senders[ch]
            _b0, b1, seq, ts, ssrc = _header_of(buffer)
            if b1 & 0x7F == pt and ssrc == in_ssrc and send is not None:
                seq = (seq + seq_off) & 0xFFFF
                if ((seq + 1 - nxt) & 0xFFFF) < 0x8000:  # the peer's next number follows it
                    nxt = (seq + 1) & 0xFFFF
                _write_tail(routes, at + ROUTE_TAIL_OFFSET, nxt, (count + 1) & 0xFFFFFFFF)
                _write_header(buffer, 0, RTP_VERSION_BITS, (b1 & 0x80) | out_pt, seq, (ts + ts_off) & 0xFFFFFFFF,
                              out_ssrc)
                try:
                    send(_VIEWS.get(n) or _view(n))
                except OSError:  # a full buffer or an unreachable peer loses the packet
                    self.server.send_errors += 1
                if not count & ROUTED_CLOCK_MASK:
                    # The clock, for a tick the timer is late for (as below), read at one packet in 16 of each
                    # route: with many routes that is every 16 packets or so, ~0.15 ms at full load.
                    clock = self.time
                    now = clock()
                    server = self.server
                    if now > server._overdue:
                        server.inline_ticks += 1
                        server._tick(now)
                return
        self._datagram(bytes(_WHOLE[:n]), peer)

    def _readable_unconnected(self) -> None:
        peer = self.peer
        try:
            if peer is None:
                recvfrom = self.recvfrom
                data, addr = recvfrom(RECEIVE_BYTES)
                if self.v6 and not addr[3]:  # (host, port, flowinfo, 0): the engine's addresses are (host, port)
                    addr = (addr[0], addr[1])
            else:  # connected, with SRTP
                n = self.recv_into(_BUFFER)
                data = bytes(_WHOLE[:n])
                addr = peer
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ICMP port unreachable, reported on a connected socket: the RTP timeout decides
            self.server.recv_errors += 1
            return
        if self.ch < 0:  # parked in the pool: a late packet of the channel's last call
            return
        if self.srtp is not None:
            try:
                data = self.srtp.unprotect(data)
            except Exception:  # pylibsrtp.Error: forged, replayed, or keyed with something else
                self.server.srtp_errors += 1
                return
        self._datagram(data, addr)

    def _datagram(self, data: bytes, addr: Address) -> None:
        """A datagram no route took, for an open channel: the engine's relay path (which makes the route) or its
        general path."""
        ch = self.ch
        peer = self.peer
        server = self.server
        clock = self.time
        now = clock()
        forward = self.forward
        out = forward(ch, data, addr, int(now * 1000.0))
        if out is not None:  # relay fast path: forward at arrival time
            peer_ch, data, dest = out
            other = self.readers.get(peer_ch)
            if server._srtp or other is None:
                self.senders[ch] = None
                server.send(peer_ch, data, dest)
            else:
                # The route goes from the peer's socket when that is connected to where the packet goes.
                connected = other.peer == dest  # (dest is never None here)
                self.senders[ch] = other.send if connected else None
                if connected:
                    other.fed_by = ch
                try:
                    if connected:
                        send = other.send
                        send(data)
                    else:
                        other.sock.sendto(data, dest)
                except OSError:  # as in send: a full buffer or an unreachable peer loses the packet
                    server.send_errors += 1
            if peer is None and not self.lock_failed:
                self.lock(addr)  # steady audio from the latched address: only it is heard from now on
        else:
            if self.engine.has_outgoing:  # relayed on the engine's general path (or a packet it answers at once)
                server.flush()
            if peer is None and not self.lock_failed and self.engine.settled(ch, addr):
                self.lock(addr)  # a leg the engine mixes, plays to or records: the same strict source
        if now > server._overdue:
            # The loop is busy with datagrams (a poll turn can hand over thousands of ready sockets before
            # timers run): the tick that is due runs here rather than after the whole turn.
            server.inline_ticks += 1
            server._tick(now)

    def lock(self, addr: Address) -> None:
        """Connect the socket to ``addr`` (the channel's latched remote); on failure it stays unconnected."""
        if _libc_connect is None:  # no way to undo it: never connect
            self.lock_failed = True
            return
        try:
            self.sock.connect(addr)
        except OSError:
            self.lock_failed = True
            return
        self.peer = addr
        self.server.locked += 1

    def unlock(self) -> None:
        """Connect the socket to nothing again: every sender is heard (and latched onto) once more. Done even
        when this reader did not connect it: a media worker shares its sockets with the signalling process and,
        during a move, with the worker the channel moves to."""
        self.lock_failed = False
        self.peer = None
        if self.fed_by >= 0:  # a route sending from here goes another way until it is made again (the engine
            self.senders[self.fed_by] = None  # forgets it too when it sees why; this holds whatever the why)
            self.fed_by = -1
        disconnect_udp(self.sock)


class _RtcpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("ch", "engine", "server", "srtp", "time")

    def __init__(self, server: MediaServer, ch: int) -> None:
        self.server = server
        self.engine = server.engine
        self.ch = ch
        self.time = asyncio.get_running_loop().time
        self.srtp: SrtpContext | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.ch < 0:  # parked in the pool
            return
        if self.srtp is not None:
            try:
                data = self.srtp.unprotect_rtcp(data)
            except Exception:  # pylibsrtp.Error
                self.server.srtp_errors += 1
                return
        self.engine.receive_rtcp(self.ch, data, addr, int(self.time() * 1000.0))  # type: ignore[arg-type]

    def error_received(self, exc: Exception) -> None:
        pass  # the far end does not listen for RTCP: reports are advisory, RTP timeout decides


@dataclass(slots=True)
class _Bound:
    """A bound RTP/RTCP socket pair with its transports: a channel's, or parked in the pool between channels."""

    port: int
    sock: socket.socket
    rtcp_sock: socket.socket
    loop: asyncio.AbstractEventLoop
    rtcp_transport: asyncio.DatagramTransport
    rtp: _RtpReader
    rtcp: _RtcpProtocol
    adopted: bool = False  # sockets bound by another process (a media worker's): closed, never pooled
    closed: bool = False

    @property
    def broken(self) -> bool:
        return self.closed or self.rtcp_transport.is_closing()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        self.rtcp_transport.close()


def _find_libc_connect() -> Callable[[int, bytes, int], int] | None:
    try:
        connect = ctypes.CDLL(None, use_errno=True).connect
    except (OSError, AttributeError):  # no C library to call (not a POSIX system)
        return None
    connect.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    connect.restype = ctypes.c_int
    return connect


_libc_connect = _find_libc_connect()
_UNSPECIFIED = bytes(16)  # a struct sockaddr whose family is AF_UNSPEC (0)


def disconnect_udp(sock: socket.socket) -> None:
    """Dissolve a UDP socket's association with its peer (``connect`` to an ``AF_UNSPEC`` address, POSIX): it
    then receives from anyone again and keeps its address and port, when it was bound to a port of its own
    choosing as every media socket is (one bound to port 0 loses its port). Python's ``connect`` cannot express
    this, so the C library's is called. Harmless on a socket that is not connected; raises ``OSError`` on failure."""
    if _libc_connect is None:
        raise OSError("no C library connect() to dissolve a UDP association with")
    if _libc_connect(sock.fileno(), _UNSPECIFIED, len(_UNSPECIFIED)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def address_family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][0]


def pool_limit() -> int:
    """How many idle pairs a pool keeps: :data:`POOL_MAX_IDLE`, or fewer under a low open-files limit. A parked pair
    holds two descriptors in this process (and two in a media worker); a pool that took them all would leave new
    calls "Too many open files" rather than a port."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return POOL_MAX_IDLE
    return min(POOL_MAX_IDLE, max(16, soft // FILES_PER_POOLED_PAIR))


def bind_rtp_pair(host: str, family: socket.AddressFamily, ports: PortAllocator) -> tuple[socket.socket, socket.socket]:
    """Bind an even RTP port and its RTCP port + 1 (RFC 3550 §11), both or neither (non-blocking)."""
    last: OSError | None = None
    for _ in range(min(BIND_ATTEMPTS, ports.available + ports.in_use)):
        port = ports.allocate()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        rtcp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            rtcp.setblocking(False)
            sock.bind((host, port))
            rtcp.bind((host, port + 1))
            return sock, rtcp
        except OSError as exc:  # taken by another process: try another even port
            sock.close()
            rtcp.close()
            ports.release(port)
            # Another process binds its ports in a run, as we do: the next try jumps to a random place,
            # or 64 tries could all fall inside its block while most of the range is free.
            ports.scatter()
            last = exc
    raise PortsExhaustedError(f"could not bind an RTP port on {host}: {last}")


class MediaServer:
    """Owns one :class:`MediaEngine` and its sockets; see the module docstring.

    Parameters
    ----------
    host : local address to bind RTP sockets on (IPv4 or IPv6 literal or name)
    ports : the RTP port range
    engine : an engine to drive (a new one by default)
    on_event : called with each engine event; when ``None`` the events go to :attr:`events`
    """

    def __init__(
        self,
        host: str,
        ports: PortAllocator,
        *,
        engine: MediaEngine | None = None,
        on_event: Callable[[MediaEvent], None] | None = None,
        tick_ms: int = FRAME_MS,
    ) -> None:
        self.host = host
        self.ports = ports
        self.engine = engine if engine is not None else MediaEngine()
        self.on_event = on_event
        self.events: asyncio.Queue[MediaEvent] = asyncio.Queue()
        self.tick_ms = tick_ms
        self._family = address_family(host)
        self._socks: dict[int, socket.socket] = {}
        self._rtcp_socks: dict[int, socket.socket] = {}
        self._rtcp_transports: dict[int, asyncio.DatagramTransport] = {}
        self._readers: dict[int, _RtpReader] = {}
        # By channel: the send of the socket its route's packets leave from (the peer's, connected to where they
        # go), None where they go another way (see _RtpReader.readable).
        self._senders: list[Callable[[memoryview | bytes], int] | None] = []
        self._ports: dict[int, int] = {}
        self._protocols: dict[int, tuple[_RtpReader, _RtcpProtocol]] = {}
        self._srtp: dict[int, SrtpContext] = {}
        # Sockets of closed channels, oldest first, with when they were parked: binding two sockets and creating
        # their transports was ~5% of a call's CPU; a parked pair drops what arrives until a channel takes it.
        self._idle: collections.deque[tuple[float, _Bound]] = collections.deque()
        # Adopted pairs whose channel closed, by port, kept for the signalling process to reopen (it pools them
        # and keeps the quarantine): reopening one costs no descriptor passing and no new transports.
        self._kept: dict[int, _Bound] = {}
        self._bound: dict[int, _Bound] = {}
        self.pool_max = pool_limit()
        self.pool_reused = 0
        self.pool_early_reused = 0  # of pool_reused: taken before their quarantine was over (no port was left)
        self.srtp_errors = 0
        self._task: asyncio.Task[None] | None = None
        # The tick schedule (the loop's clock): tick k is due at t0 + k * period; _overdue is when a datagram
        # callback runs it instead of the timer (inf until the tick task starts).
        self._t0 = 0.0
        self._k = 0
        self._due = float("inf")
        self._overdue = float("inf")
        self.ticks = 0
        self.inline_ticks = 0  # ticks run from an RTP packet's callback because the timer was held up
        self.late_ticks = 0
        self.skipped_ticks = 0
        self.send_errors = 0
        self.recv_errors = 0
        self.max_late_ms = 0.0
        self.tick_durations = TickDurations()
        self.locked = 0  # RTP sockets connected to their channel's latched address (see _RtpReader)
        self.unlock_errors = 0
        self.stale_locks = 0  # pooled pairs found still connected to a phone when reused (see _hear_anyone)
        self.last_stale_lock: tuple[int, str] | None = None
        self.engine.on_remote = self._remote_set
        self.engine.on_wake = self._wake_up
        self._woken = asyncio.Event()  # set by the first channel opened while the tick sleeps (engine idle)
        self.idle_pauses = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            # NTP wall clock of the engine's monotonic milliseconds, for RTCP sender reports (RFC 3550 §6.4.1).
            loop_ms = asyncio.get_running_loop().time() * 1000.0
            self.engine.ntp_offset_ms = int((time.time() + NTP_UNIX_OFFSET_S) * 1000.0 - loop_ms)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-tick")

    async def stop(self) -> None:
        """Stop ticking, send what is pending, close every channel and socket."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._due = self._overdue = float("inf")
        self.flush()
        for ch in list(self._socks):
            self.close_channel(ch)
        while self._idle:
            self._discard(self._idle.popleft()[1])
        for bound in self._kept.values():
            bound.close()
        self._kept.clear()
        self.engine.close()
        self._dispatch_events()

    async def __aenter__(self) -> MediaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- channels --------------------------------------------------------------------------------------------

    async def open_channel(
        self,
        codec: Codec,
        remote: Address | None,
        telephone_event_pt: int | None = 101,
        ptime_ms: int = FRAME_MS,
        *,
        near: int | None = None,
    ) -> OpenedChannel:
        """Take a pooled socket pair (or bind a new one) and open an engine channel on it.

        ``near`` names a channel this one will be bridged with (the other leg of its call); one engine holds
        them all here, so it only matters to :class:`~ccpbx.media.workers.MediaWorkers`.
        """
        bound = self._reuse(time.monotonic())
        if bound is None:
            try:
                bound = await self._bind_new()
            except PortsExhaustedError:
                # every port is in a call or parked: a pair parked less than the quarantine, rather than no call
                bound = self._reuse(math.inf)
                if bound is None:
                    raise
                self.pool_early_reused += 1
        try:
            ch = self.engine.open_channel(codec, remote, telephone_event_pt, ptime_ms)
        except BaseException:
            self._idle.appendleft((float("-inf"), bound))
            raise
        self._attach(ch, bound)
        return OpenedChannel(ch, bound.port)

    async def adopt_channel(self, sock: socket.socket, rtcp_sock: socket.socket, codec: Codec,
                            remote: Address | None, telephone_event_pt: int | None = 101) -> int:
        """Open an engine channel on a socket pair bound elsewhere (a media worker's, passed by the signalling
        process); :meth:`close_channel` closes them instead of pooling them."""
        sock.setblocking(False)
        rtcp_sock.setblocking(False)
        try:
            disconnect_udp(sock)  # a worker it moved from may have connected it to its phone: start from no one
        except OSError:
            sock.close()
            rtcp_sock.close()
            raise
        bound = await self._endpoints(sock, rtcp_sock, sock.getsockname()[1], release=False)
        bound.adopted = True
        try:
            ch = self.engine.open_channel(codec, remote, telephone_event_pt)
        except BaseException:
            bound.close()
            raise
        self._attach(ch, bound)
        return ch

    def reopen_kept(self, port: int, codec: Codec, remote: Address | None,
                    telephone_event_pt: int | None = 101) -> int:
        """Open an engine channel on the adopted pair kept at ``port`` by :meth:`close_channel` (``keep=True``)."""
        bound = self._kept.get(port)
        if bound is None:
            raise MediaConfigError(f"no kept socket pair on port {port}")
        if bound.broken:
            del self._kept[port]
            bound.close()
            raise MediaError(f"the kept socket pair on port {port} is broken")
        try:
            self._hear_anyone(bound)
        except OSError as exc:
            del self._kept[port]
            bound.close()
            raise MediaError(f"the kept socket pair on port {port} cannot be reused: {exc}") from None
        ch = self.engine.open_channel(codec, remote, telephone_event_pt)
        del self._kept[port]
        self._attach(ch, bound)
        return ch

    def _hear_anyone(self, bound: _Bound) -> None:
        """Before a pooled pair serves a new channel: its socket must not be connected (latched) to anyone, or
        the new phone's packets are dropped by the kernel while ours still reach it (one-way audio). Closing
        the channel disconnected it; found connected anyway, it is counted in ``stale_locks`` (with the port
        and peer in ``last_stale_lock``) and disconnected here. Raises ``OSError`` when it cannot be."""
        try:
            peer = bound.sock.getpeername()
        except OSError:
            return  # not connected: as close_channel left it
        self.stale_locks += 1
        self.last_stale_lock = (bound.port, f"{peer[0]}:{peer[1]}")
        bound.rtp.unlock()

    @property
    def kept(self) -> int:
        """Adopted pairs kept for reopening."""
        return len(self._kept)

    async def sync(self, channel: int | None = None) -> None:
        """Wait until every command given so far has taken effect (here they all have: one process)."""

    def _attach(self, ch: int, bound: _Bound) -> None:
        bound.rtp.ch = ch
        bound.rtcp.ch = ch
        self._bound[ch] = bound
        self._protocols[ch] = (bound.rtp, bound.rtcp)
        self._socks[ch] = bound.sock
        self._rtcp_socks[ch] = bound.rtcp_sock
        self._readers[ch] = bound.rtp
        senders = self._senders
        if len(senders) <= ch:
            senders.extend([None] * (ch + 1 - len(senders)))
        senders[ch] = None
        self._rtcp_transports[ch] = bound.rtcp_transport
        self._ports[ch] = bound.port

    @property
    def pooled(self) -> int:
        """Socket pairs parked for reuse (their ports stay allocated)."""
        return len(self._idle)

    def _reuse(self, now: float) -> _Bound | None:
        """The oldest parked pair, once it has idled :data:`POOL_QUARANTINE_S` (late packets of its last call
        are dropped meanwhile, not played into the next one)."""
        idle = self._idle
        while idle and idle[0][0] <= now - POOL_QUARANTINE_S:
            bound = idle.popleft()[1]
            if bound.broken:
                self._discard(bound)
                continue
            try:
                self._hear_anyone(bound)
            except OSError:
                self._discard(bound)
                continue
            self.pool_reused += 1
            return bound
        return None

    async def _bind_new(self) -> _Bound:
        sock, rtcp_sock = self._bind()
        return await self._endpoints(sock, rtcp_sock, sock.getsockname()[1], release=True)

    async def _endpoints(self, sock: socket.socket, rtcp_sock: socket.socket, port: int, *, release: bool) -> _Bound:
        """The pair's transports; on failure both sockets close (and ``port`` goes back when ``release``)."""
        loop = asyncio.get_running_loop()
        reading = False
        try:
            rtp = _RtpReader(self, sock, -1)
            loop.add_reader(sock.fileno(), rtp.readable)
            reading = True
            rtcp_transport, rtcp = await loop.create_datagram_endpoint(lambda: _RtcpProtocol(self, -1),
                                                                       sock=rtcp_sock)
        except BaseException:
            if reading:
                loop.remove_reader(sock.fileno())
            sock.close()
            rtcp_sock.close()
            if release:
                self.ports.release(port)
            raise
        return _Bound(port, sock, rtcp_sock, loop, rtcp_transport, rtp, rtcp)

    def _discard(self, bound: _Bound) -> None:
        bound.close()
        self.ports.release(bound.port)

    def set_srtp(self, ch: int, parameters: SrtpParameters | None) -> None:
        """Protect channel ``ch`` with SRTP/SRTCP from now on (``None``: plain RTP again).

        Setting the parameters it already has keeps the running context (its rollover counters and replay
        windows), so a re-INVITE that restates the keys changes nothing.
        """
        protocols = self._protocols.get(ch)
        if protocols is None:
            raise MediaConfigError(f"channel {ch} is not open")
        current = self._srtp.get(ch)
        if parameters is None:
            self._srtp.pop(ch, None)
            context = None
        elif current is not None and current.parameters == parameters:
            return
        else:
            context = self._srtp[ch] = SrtpContext(parameters)
        for protocol in protocols:
            protocol.srtp = context
        self.engine.unroute(ch)  # a route's packets leave unprotected: made again (or not) from the next one

    def srtp_of(self, ch: int) -> SrtpParameters | None:
        context = self._srtp.get(ch)
        return None if context is None else context.parameters

    def _remote_set(self, ch: int, addr: Address | None) -> None:
        """The engine was given a new remote for ``ch``: a socket connected to another address hears anyone
        again, so that the new address's packets arrive (and are latched onto)."""
        reader = self._readers.get(ch)
        if reader is None:
            return
        if reader.peer is None or reader.peer != addr:  # (the same address again keeps the lock)
            try:
                reader.unlock()
            except OSError:  # cannot be undone: the channel keeps hearing only its old address
                self.unlock_errors += 1

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        return bind_rtp_pair(self.host, self._family, self.ports)

    def close_channel(self, ch: int, *, keep: bool = False) -> None:
        """Close the engine channel (which queues its RTCP BYE, RFC 3550 §6.6), send that, park the sockets.

        An adopted pair is closed, or with ``keep`` kept for :meth:`reopen_kept` (dropping what arrives).
        """
        with contextlib.suppress(MediaConfigError):
            self.engine.close_channel(ch)
        self.flush_rtcp()
        self._srtp.pop(ch, None)
        self._protocols.pop(ch, None)
        self._readers.pop(ch, None)
        self._rtcp_transports.pop(ch, None)
        self._socks.pop(ch, None)
        self._rtcp_socks.pop(ch, None)
        self._ports.pop(ch, None)
        bound = self._bound.pop(ch, None)
        if bound is None:
            return
        bound.rtp.ch = bound.rtcp.ch = -1
        bound.rtp.srtp = bound.rtcp.srtp = None
        # The next channel on these sockets hears (and latches onto) anyone again. An adopted pair that leaves
        # this process is left as it is: the worker it moves to may already have connected it (another process
        # holding the same socket), and the signalling process's pool connects it to nothing before reuse.
        if not bound.adopted or keep:
            try:
                bound.rtp.unlock()
            except OSError:  # still connected to this call's phone: never reused
                bound.close()
        if bound.adopted:  # the signalling process keeps (and pools) its own copies of these sockets
            if keep and self._task is not None and not bound.broken:
                self._kept[bound.port] = bound
            else:
                bound.close()
            return
        if self._task is None or bound.broken:  # stopping (or broken): nothing to keep it for
            self._discard(bound)
            return
        if len(self._idle) >= self.pool_max:  # full: the pool keeps its older pairs, reusable sooner
            self._discard(bound)
            return
        self._idle.append((time.monotonic(), bound))

    def port(self, ch: int) -> int:
        return self._ports[ch]

    # -- the tick ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._align(loop.time())
        while True:
            delay = self._due - loop.time()
            if delay >= TICK_SLACK_S:
                await asyncio.sleep(delay)
                continue  # a datagram callback may have run this tick meanwhile: look again
            self._tick(loop.time())
            if self.engine.idle:  # checked after a tick, which sent what the last channels queued as they closed
                # No channel: stop ticking until one opens (an idle media process woke 50 times a second
                # for nothing, 1.4% of a core). The engine's on_wake realigns the ticks and sets the event.
                self._due = self._overdue = float("inf")
                self.idle_pauses += 1
                self._woken.clear()
                await self._woken.wait()

    def _align(self, now: float) -> None:
        """Ticks from ``now`` on, the first one period later."""
        self._t0 = now
        self._k = 1
        self._due = now + self.tick_ms / 1000.0
        self._overdue = self._due + INLINE_TICK_MS / 1000.0

    def _wake_up(self) -> None:
        """A channel opened on the idle engine: the next tick is one period from now."""
        if self._task is None or self._due != float("inf"):
            return  # not sleeping (the engine went idle between ticks and is busy again before the next one)
        self._align(asyncio.get_running_loop().time())
        self._woken.set()

    def _tick(self, now: float) -> None:
        """Run the tick that was due at :attr:`_due` (``now`` is the loop's clock) and schedule the next one."""
        period = self.tick_ms / 1000.0
        late = now - self._due
        if late * 1000.0 > LATE_TICK_MS:
            self.late_ticks += 1
            self.max_late_ms = max(self.max_late_ms, late * 1000.0)
            if late >= period:
                skip = int(late // period)
                self._k += skip
                self.skipped_ticks += skip
        self._k += 1
        self._due = self._t0 + self._k * period
        self._overdue = self._due + INLINE_TICK_MS / 1000.0
        work_started = time.perf_counter()
        self.engine.tick(int(now * 1000.0))
        self.ticks += 1
        self.flush()
        self.flush_rtcp()
        self.tick_durations.observe(time.perf_counter() - work_started)
        self._dispatch_events()

    def flush(self) -> None:
        """Send everything the engine has queued, each packet from its channel's socket."""
        send = self.send
        for ch, data, addr in self.engine.outgoing_by_channel():
            send(ch, data, addr)

    def send(self, ch: int, data: bytes, addr: Address) -> None:
        """Send one RTP packet from channel ``ch``'s socket, SRTP-protected when the channel has a context."""
        sock = self._socks.get(ch)
        if sock is None:
            return
        if self._srtp:
            context = self._srtp.get(ch)
            if context is not None:
                try:
                    data = context.protect(data)
                except Exception:  # pylibsrtp.Error: never send it in the clear
                    self.srtp_errors += 1
                    return
        try:
            sock.sendto(data, addr)
        except OSError:  # socket buffer full (BlockingIOError) or unreachable: the packet is lost
            self.send_errors += 1

    def flush_rtcp(self) -> None:
        """Send the engine's queued RTCP compounds, each from its channel's RTCP socket."""
        socks = self._rtcp_socks
        srtp = self._srtp
        for ch, data, addr in self.engine.outgoing_rtcp():
            sock = socks.get(ch)
            if sock is None:
                continue
            context = srtp.get(ch)
            if context is not None:
                try:
                    data = context.protect_rtcp(data)
                except Exception:  # pylibsrtp.Error
                    self.srtp_errors += 1
                    continue
            try:
                sock.sendto(data, addr)
            except OSError:
                self.send_errors += 1

    def _dispatch_events(self) -> None:
        events = self.engine.events()
        if not events:
            return
        if self.on_event is not None:
            for ev in events:
                self.on_event(ev)
        else:
            for ev in events:
                self.events.put_nowait(ev)

    @property
    def tick_stats(self) -> TickStats:
        return TickStats(self.ticks, self.late_ticks, self.skipped_ticks, self.send_errors, self.max_late_ms)
