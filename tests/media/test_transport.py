"""MediaServer over real loopback UDP, and the RTP port allocator."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time

import numpy as np
import pytest

from ccpbx.media.engine import MediaEngine, SourceChanged
from ccpbx.media.errors import MediaConfigError
from ccpbx.media.g711 import Codec, ulaw_encode
from ccpbx.media.rtp import RtpPacket
from ccpbx.media.tones import ToneKind, tone_source
from ccpbx.media.transport import MediaServer, PortAllocator, PortsExhaustedError, bind_rtp_pair

F = 160
RATE = 8000
pytestmark = pytest.mark.timeout(30)


def test_port_allocator_even_exhaustion_release() -> None:
    pa = PortAllocator(10001, 10010)
    got = [pa.allocate() for _ in range(4)]
    # Any start in the range (the allocator may rotate its queue), every even port once; 10010 has no room
    # for its RTCP port 10011.
    assert sorted(got) == [10002, 10004, 10006, 10008]
    assert all(p % 2 == 0 for p in got)
    with pytest.raises(PortsExhaustedError):
        pa.allocate()
    pa.release(10004)
    assert pa.available == 1 and pa.in_use == 3
    assert pa.allocate() == 10004
    with pytest.raises(MediaConfigError):
        pa.release(10003)
    with pytest.raises(MediaConfigError):
        PortAllocator(5001, 5001)


def test_port_allocator_does_not_reuse_immediately() -> None:
    pa = PortAllocator(20000, 20009)
    first = pa.allocate()
    pa.release(first)
    assert pa.allocate() != first


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append(RtpPacket.parse(data))


def _tone(freq: float, frames: int, amp: float = 6000.0) -> np.ndarray:
    n = np.arange(frames * F)
    return (amp * np.sin(2 * np.pi * freq * n / RATE)).astype(np.int16).reshape(frames, F)


def _dominant(packets: list[RtpPacket]) -> float:
    codes = np.frombuffer(b"".join(p.payload for p in packets), dtype=np.uint8).copy()
    pcm = Codec.PCMU.decode(codes).astype(np.float64)
    mag = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / RATE)[int(np.argmax(mag))])


def _seq_gaps(packets: list[RtpPacket]) -> int:
    seqs = sorted(p.sequence for p in packets)  # no wrap within 100 packets from a fresh start is not guaranteed
    diffs = [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)]
    return sum(d - 1 for d in diffs if 1 < d < 1000)


def _port_range() -> PortAllocator:
    lo = random.randrange(20000, 60000, 2)
    return PortAllocator(lo, lo + 200)


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "mixed"])
async def test_loopback_bridge_both_directions(relay: bool) -> None:
    loop = asyncio.get_running_loop()
    server = MediaServer("127.0.0.1", _port_range(), engine=MediaEngine(relay=relay))
    ta, pa = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
    tb, pb = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
    try:
        async with asyncio.timeout(20), server:
            addr_a = ta.get_extra_info("sockname")
            addr_b = tb.get_extra_info("sockname")
            ca = await server.open_channel(Codec.PCMU, addr_a)
            cb = await server.open_channel(Codec.PCMU, addr_b)
            server.engine.bridge(ca.channel, cb.channel)
            assert server.engine.relaying(ca.channel) is relay
            sig_a, sig_b = ulaw_encode(_tone(1000, 50)), ulaw_encode(_tone(400, 50))
            for k in range(50):
                ta.sendto(RtpPacket(0, k, k * F, 0xA, sig_a[k].tobytes(), k == 0).serialize(), ("127.0.0.1", ca.port))
                tb.sendto(RtpPacket(0, 7 + k, 99 + k * F, 0xB, sig_b[k].tobytes()).serialize(), ("127.0.0.1", cb.port))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            got_b = [p for p in pb.packets if p.payload_type == 0]
            got_a = [p for p in pa.packets if p.payload_type == 0]
            assert abs(_dominant(got_b[-35:]) - 1000) < 10
            assert abs(_dominant(got_a[-35:]) - 400) < 10
            assert {p.ssrc for p in got_b} == {server.engine.ssrc(cb.channel)}
            st_a = server.engine.stats(ca.channel)
            assert st_a.packets_in == 50 and st_a.bad == 0
            if relay:
                assert len(got_b) == 50 and len(got_a) == 50
                assert _seq_gaps(got_b) == 0 and _seq_gaps(got_a) == 0
            else:
                assert st_a.lost == 0
                assert len(got_b) >= 45  # one packet per tick while the test ran
            assert server.tick_stats.ticks > 40
            server.close_channel(ca.channel)
            assert server.ports.in_use - server.pooled == 1  # the closed channel's sockets are parked for reuse
        assert server.ports.in_use == 0
    finally:
        ta.close()
        tb.close()


async def test_latching_event_and_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("::1 not configured")
    loop = asyncio.get_running_loop()
    events: list[object] = []
    server = MediaServer("::1", _port_range(), on_event=events.append)
    tp, _phone = await loop.create_datagram_endpoint(Collector, local_addr=("::1", 0))
    try:
        async with asyncio.timeout(10), server:
            ch = await server.open_channel(Codec.PCMU, None)
            other = await server.open_channel(Codec.PCMU, None)
            server.engine.bridge(ch.channel, other.channel)
            me = tp.get_extra_info("sockname")
            for k in range(5):
                tp.sendto(RtpPacket(0, k, k * F, 1, bytes(F)).serialize(), ("::1", ch.port))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert SourceChanged(ch.channel, (me[0], me[1])) in events
            assert server.engine.remote(ch.channel) == (me[0], me[1])
            assert server.engine.stats(ch.channel).packets_in == 5
    finally:
        tp.close()


async def test_events_queue_and_graceful_stop() -> None:
    server = MediaServer("127.0.0.1", _port_range(), engine=MediaEngine(rtp_timeout_ms=60))
    async with asyncio.timeout(10):
        await server.start()
        opened = await server.open_channel(Codec.PCMA, ("127.0.0.1", 9))
        ev = await asyncio.wait_for(server.events.get(), 5)
        assert ev.channel == opened.channel  # RtpTimeout: nothing arrived
        await server.stop()
    assert server.ports.in_use == 0
    assert server.engine.channel_count == 0


async def test_a_tick_overdue_when_a_packet_arrives_runs_from_the_packets_callback() -> None:
    """Under a flood of RTP, one turn of the loop can run thousands of datagram callbacks before any timer (uvloop
    polls up to 48 x 1,024 ready sockets a turn): the tick that falls due meanwhile must not wait for all of them.
    Here the loop is held past a tick's due time with a packet waiting; its callback runs the tick."""
    server = MediaServer("127.0.0.1", _port_range())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    async with asyncio.timeout(10):
        await server.start()
        try:
            opened = await server.open_channel(Codec.PCMU, tx.getsockname())
            while server.ticks < 3:
                await asyncio.sleep(0.005)
            for seq in range(20):
                before, inline = server.ticks, server.inline_ticks
                tx.sendto(RtpPacket(0, seq, seq * F, 7, bytes(F)).serialize(), ("127.0.0.1", opened.port))
                time.sleep(0.03)  # a busy loop: the next tick is overdue when the packet is read
                while server.engine.stats(opened.channel).packets_in <= seq:
                    await asyncio.sleep(0)
                if server.inline_ticks > inline:
                    assert server.ticks > before
                    break
            else:
                pytest.fail("no tick ran from a packet's callback in 20 tries")
            assert server.late_ticks >= 1  # held 30 ms: it was late, and counted so
            # Not busy: the timer runs every tick, on time, and no callback needs to.
            inline, ticks = server.inline_ticks, server.ticks
            await asyncio.sleep(0.2)
            assert server.ticks > ticks and server.inline_ticks == inline
        finally:
            await server.stop()
            tx.close()


async def test_a_block_of_ports_taken_by_another_process_is_skipped() -> None:
    """Another server (or a benchmark) holding a run of ports in our range must not make calls fail with
    "no media ports" while most of the range is free."""
    lo = random.randrange(20000, 58000, 2)
    squatters = []
    try:
        for port in range(lo, lo + 600):  # 300 even/odd pairs in a row, the first half of the range
            sq = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sq.bind(("127.0.0.1", port))
            except OSError:
                sq.close()
                continue
            squatters.append(sq)
        ports = PortAllocator(lo, lo + 1200)
        ports._free.rotate(-ports._free.index(lo))  # type: ignore[attr-defined]  # start inside the taken block
        server = MediaServer("127.0.0.1", ports)
        async with asyncio.timeout(10), server:
            opened = [await server.open_channel(Codec.PCMU, None) for _ in range(50)]
            assert all(c.port >= lo + 600 for c in opened) and len({c.port for c in opened}) == 50
    finally:
        for sq in squatters:
            sq.close()


async def test_closed_channels_sockets_are_reused_after_quarantine_and_drop_late_packets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ccpbx.media.transport as transport

    server = MediaServer("127.0.0.1", _port_range())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        phone.bind(("127.0.0.1", 0))
        async with asyncio.timeout(10), server:
            first = await server.open_channel(Codec.PCMU, phone.getsockname())
            sock = server._socks[first.channel]  # type: ignore[attr-defined]
            server.close_channel(first.channel)
            assert server.pooled == 1
            # a late packet of the closed call reaches the parked socket: dropped, counted nowhere
            phone.sendto(RtpPacket(0, 1, F, 0xA, bytes(F)).serialize(), ("127.0.0.1", first.port))
            await asyncio.sleep(0.05)
            fresh = await server.open_channel(Codec.PCMU, None)  # still in quarantine: a new port
            assert fresh.port != first.port and server.pooled == 1
            monkeypatch.setattr(transport, "POOL_QUARANTINE_S", 0.0)
            reused = await server.open_channel(Codec.PCMU, None)
            assert reused.port == first.port and server._socks[reused.channel] is sock  # type: ignore[attr-defined]
            assert server.pooled == 0 and server.pool_reused == 1
            assert server.engine.stats(reused.channel).packets_in == 0  # the late packet did not leak in
            phone.sendto(RtpPacket(0, 2, 2 * F, 0xB, bytes(F)).serialize(), ("127.0.0.1", reused.port))
            for _ in range(100):
                if server.engine.stats(reused.channel).packets_in:
                    break
                await asyncio.sleep(0.01)
            assert server.engine.stats(reused.channel).packets_in == 1  # the reused socket feeds its new channel
    assert server.ports.in_use == 0 and server.pooled == 0


async def test_a_full_pool_keeps_its_older_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    import ccpbx.media.transport as transport

    monkeypatch.setattr(transport, "POOL_MAX_IDLE", 2)
    server = MediaServer("127.0.0.1", _port_range())
    async with asyncio.timeout(10), server:
        opened = [await server.open_channel(Codec.PCMU, None) for _ in range(3)]
        for c in opened:
            server.close_channel(c.channel)
        assert server.pooled == 2
        monkeypatch.setattr(transport, "POOL_QUARANTINE_S", 0.0)
        again = [await server.open_channel(Codec.PCMU, None) for _ in range(2)]
        # the first two closed come back (the soonest out of quarantine); the third pair was closed, its port freed
        assert [c.port for c in again] == [opened[0].port, opened[1].port]
    assert server.ports.in_use == 0


async def test_with_every_port_taken_a_pair_is_reused_before_its_quarantine_is_over() -> None:
    """The pool must not cost calls: with the range all in calls or parked, the oldest parked pair is taken early
    (late packets of its last call may still come) rather than failing the call with no port."""
    lo = random.randrange(20000, 60000, 2)
    server = MediaServer("127.0.0.1", PortAllocator(lo, lo + 3))  # two pairs: lo and lo + 2
    async with asyncio.timeout(10), server:
        first = await server.open_channel(Codec.PCMU, None)
        second = await server.open_channel(Codec.PCMU, None)
        server.close_channel(first.channel)
        assert server.pooled == 1 and server.ports.available == 0
        early = await server.open_channel(Codec.PCMU, None)  # in quarantine still, but the only pair there is
        assert early.port == first.port and server.pool_reused == server.pool_early_reused == 1
        with pytest.raises(PortsExhaustedError):  # nothing parked: no port at all
            await server.open_channel(Codec.PCMU, None)
        server.close_channel(second.channel)
        server.close_channel(early.channel)
    assert server.ports.in_use == 0


def test_a_low_open_files_limit_makes_the_pool_smaller(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    import ccpbx.media.transport as transport

    limits = {"soft": 1024}
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (limits["soft"], resource.RLIM_INFINITY))
    assert transport.pool_limit() == 1024 // transport.FILES_PER_POOLED_PAIR  # room left for the calls' own
    limits["soft"] = 1 << 20
    assert transport.pool_limit() == transport.POOL_MAX_IDLE
    limits["soft"] = resource.RLIM_INFINITY
    assert transport.pool_limit() == transport.POOL_MAX_IDLE
    limits["soft"] = 64
    assert transport.pool_limit() == 16  # a few still, or every call binds anew
    assert MediaServer("127.0.0.1", _port_range()).pool_max == 16


async def test_an_adopted_pair_is_closed_or_kept_for_reopening_by_port() -> None:
    from ccpbx.media.transport import bind_rtp_pair

    ports = _port_range()
    server = MediaServer("127.0.0.1", PortAllocator(10000, 10002))  # a worker's: the pairs come bound
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        phone.bind(("127.0.0.1", 0))
        async with asyncio.timeout(10), server:
            sock, rtcp = bind_rtp_pair("127.0.0.1", socket.AF_INET, ports)
            port = sock.getsockname()[1]
            ch = await server.adopt_channel(sock.dup(), rtcp.dup(), Codec.PCMU, phone.getsockname())
            server.close_channel(ch, keep=True)
            assert server.kept == 1 and server.pooled == 0
            # a late packet reaches the kept pair: dropped, not played into the next channel
            phone.sendto(RtpPacket(0, 1, F, 0xA, bytes(F)).serialize(), ("127.0.0.1", port))
            await asyncio.sleep(0.05)
            with pytest.raises(MediaConfigError, match="no kept socket pair"):
                server.reopen_kept(port + 2, Codec.PCMU, None)
            again = server.reopen_kept(port, Codec.PCMA, phone.getsockname())
            assert server.kept == 0 and server.port(again) == port
            assert server.engine.stats(again).packets_in == 0
            phone.sendto(RtpPacket(8, 2, 2 * F, 0xB, bytes(F)).serialize(), ("127.0.0.1", port))
            for _ in range(100):
                if server.engine.stats(again).packets_in:
                    break
                await asyncio.sleep(0.01)
            assert server.engine.stats(again).packets_in == 1  # the kept transports feed the new channel
            server.close_channel(again)  # not kept: the worker's copies are closed
            assert server.kept == 0 and server.pooled == 0
            ch = await server.adopt_channel(sock.dup(), rtcp.dup(), Codec.PCMU, None)
            server.close_channel(ch, keep=True)
        assert server.kept == 0  # stopping closed what was kept
    sock.close()
    rtcp.close()


async def test_an_idle_media_server_stops_ticking_until_a_channel_opens() -> None:
    """With no channel the tick sleeps (an idle media process woke 50 times a second for nothing); the first
    channel starts it again, aligned to its opening, and the last one to close gets its tick (its RTCP BYE)."""
    server = MediaServer("127.0.0.1", _port_range())
    rx, rx_rtcp = bind_rtp_pair("127.0.0.1", socket.AF_INET, _port_range())  # the phone
    rx_rtcp.settimeout(5)
    async with asyncio.timeout(10):
        await server.start()
        try:
            while not server.idle_pauses:
                await asyncio.sleep(0.005)
            ticks = server.ticks
            await asyncio.sleep(0.2)  # ten periods
            assert server.ticks == ticks
            opened = await server.open_channel(Codec.PCMU, rx.getsockname())
            while server.ticks < ticks + 3:
                await asyncio.sleep(0.005)
            # realigned at the opening: the ticks the pause left out are not counted as late and skipped (ten or
            # more here); a short stall of a busy machine may still skip one or two
            assert server.skipped_ticks < 5
            server.engine.play(opened.channel, tone_source(ToneKind.RINGBACK))
            while server.engine.stats(opened.channel).packets_out < 1:
                await asyncio.sleep(0.005)
            pauses = server.idle_pauses
            server.close_channel(opened.channel)
            while server.idle_pauses == pauses:
                await asyncio.sleep(0.005)
            bye = b""
            while not bye or bye[1] != 203:  # any report first, then the RTCP compound ending in a BYE (PT 203)
                data = rx_rtcp.recv(2048)  # already queued: the pause came after the tick that sent it (5 s at most)
                bye = data[-8:] if len(data) >= 8 else b""
            assert server.engine.idle
        finally:
            await server.stop()
            rx.close()
            rx_rtcp.close()


async def test_a_reused_pair_still_connected_to_an_old_phone_is_disconnected_first() -> None:
    """One-way audio after pool reuse: a kept (or pooled) pair whose socket is still connected to the phone of an
    earlier call drops the new phone's packets in the kernel while ours still reach it. Reuse disconnects it
    and counts it (``stale_locks``), whatever left it connected."""
    server = MediaServer("127.0.0.1", PortAllocator(10000, 10002))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as old, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        old.bind(("127.0.0.1", 0))
        phone.bind(("127.0.0.1", 0))
        async with asyncio.timeout(10), server:
            sock, rtcp = bind_rtp_pair("127.0.0.1", socket.AF_INET, _port_range())
            port = sock.getsockname()[1]
            ch = await server.adopt_channel(sock.dup(), rtcp.dup(), Codec.PCMU, None)
            server.close_channel(ch, keep=True)
            sock.connect(old.getsockname())  # as if latched to the old phone after the close
            again = server.reopen_kept(port, Codec.PCMU, phone.getsockname())
            assert server.stale_locks == 1 and server.last_stale_lock == (port, f"127.0.0.1:{old.getsockname()[1]}")
            phone.sendto(RtpPacket(0, 1, F, 0xB, bytes(F)).serialize(), ("127.0.0.1", port))
            for _ in range(100):
                if server.engine.stats(again).packets_in:
                    break
                await asyncio.sleep(0.01)
            assert server.engine.stats(again).packets_in == 1  # the new phone is heard
            server.close_channel(again, keep=True)
            again = server.reopen_kept(port, Codec.PCMU, None)  # closed as usual: nothing to undo
            assert server.stale_locks == 1
    sock.close()
    rtcp.close()


async def test_a_pooled_pair_still_connected_is_disconnected_before_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    import ccpbx.media.transport as transport

    server = MediaServer("127.0.0.1", _port_range())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as old, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        old.bind(("127.0.0.1", 0))
        phone.bind(("127.0.0.1", 0))
        async with asyncio.timeout(10), server:
            opened = await server.open_channel(Codec.PCMU, None)
            sock = server._socks[opened.channel]  # type: ignore[attr-defined]
            server.close_channel(opened.channel)
            sock.connect(old.getsockname())
            monkeypatch.setattr(transport, "POOL_QUARANTINE_S", 0.0)
            again = await server.open_channel(Codec.PCMU, phone.getsockname())
            assert again.port == opened.port and server.stale_locks == 1
            phone.sendto(RtpPacket(0, 1, F, 0xB, bytes(F)).serialize(), ("127.0.0.1", again.port))
            for _ in range(100):
                if server.engine.stats(again.channel).packets_in:
                    break
                await asyncio.sleep(0.01)
            assert server.engine.stats(again.channel).packets_in == 1
