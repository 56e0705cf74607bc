"""RTCP on the wire (RFC 3550 §6): reports every interval, parsing into stats, RTT, loss, BYE on close.

Sans-IO first (two engines wired together with explicit time, a one-way delay and loss), then two
MediaServers over real loopback UDP with RTCP on RTP port + 1.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from ccpbx.media.engine import MediaEngine
from ccpbx.media.g711 import Codec
from ccpbx.media.rtp import Bye, ReceiverReport, SenderReport, SourceDescription, parse_rtcp
from ccpbx.media.tones import ToneKind, tone_source
from ccpbx.media.transport import MediaServer, PortAllocator

pytestmark = pytest.mark.timeout(30)

A_ADDR = ("10.0.0.1", 40000)
B_ADDR = ("10.0.0.2", 50000)


def _pair(interval_ms: int = 1000) -> tuple[MediaEngine, int, MediaEngine, int]:
    a = MediaEngine(rng=random.Random(1), rtcp_interval_ms=interval_ms)
    b = MediaEngine(rng=random.Random(2), rtcp_interval_ms=interval_ms)
    ca, cb = a.open_channel(Codec.PCMU, B_ADDR), b.open_channel(Codec.PCMU, A_ADDR)
    # each side plays a tone: the engine sends audio only where something plays (a lone channel is quiet)
    a.play(ca, tone_source(ToneKind.DIAL))
    b.play(cb, tone_source(ToneKind.DIAL))
    return a, ca, b, cb


def _run(a: MediaEngine, ca: int, b: MediaEngine, cb: int, ticks: int, delay_ms: int,
         drop_a_to_b: set[int] = frozenset()) -> list[tuple[str, bytes, tuple[str, int]]]:  # type: ignore[assignment]
    """Tick both engines every 20 ms for ``ticks`` ticks; deliver RTP and RTCP after ``delay_ms``; drop the
    listed RTP packet indices from a to b. Returns every RTCP datagram sent as (sender, data, dest)."""
    in_flight: list[tuple[int, str, bool, bytes, tuple[str, int]]] = []  # (due, to, is_rtcp, data, source)
    rtcp_log: list[tuple[str, bytes, tuple[str, int]]] = []
    sent_ab = 0
    for k in range(ticks):
        now = k * 20
        for item in [x for x in in_flight if x[0] <= now]:
            in_flight.remove(item)
            _, to, is_rtcp, data, src = item
            eng, ch = (a, ca) if to == "a" else (b, cb)
            if is_rtcp:
                eng.receive_rtcp(ch, data, src, now)
            else:
                eng.receive(ch, data, src, now)
        for name, eng, src_rtp in (("a", a, A_ADDR), ("b", b, B_ADDR)):
            eng.tick(now)
            to = "b" if name == "a" else "a"
            for _ch, data, _dest in eng.outgoing_by_channel():
                if name == "a":
                    sent_ab += 1
                    if sent_ab in drop_a_to_b:
                        continue
                in_flight.append((now + delay_ms, to, False, data, src_rtp))
            for _ch, data, dest in eng.outgoing_rtcp():
                rtcp_log.append((name, data, dest))
                in_flight.append((now + delay_ms, to, True, data, (src_rtp[0], src_rtp[1] + 1)))
    return rtcp_log


def test_reports_sent_to_rtp_port_plus_one_about_every_interval() -> None:
    a, ca, b, cb = _pair(interval_ms=1000)
    log = _run(a, ca, b, cb, ticks=500, delay_ms=20)  # 10 s
    from_a = [(d, dest) for name, d, dest in log if name == "a"]
    # First report after 0.25-0.75 s, then every 0.5-1.5 s: between 6 and 20 reports in 10 s.
    assert 6 <= len(from_a) <= 20
    assert all(dest == (B_ADDR[0], B_ADDR[1] + 1) for _, dest in from_a)
    for data, _ in from_a:
        pkts = parse_rtcp(data)
        assert isinstance(pkts[0], SenderReport | ReceiverReport)  # compound starts with SR/RR (§6.1)
        assert pkts[0].ssrc == a.ssrc(ca)
        sdes = pkts[1]
        assert isinstance(sdes, SourceDescription) and sdes.chunks[0].cname == a.cname
    last = parse_rtcp(from_a[-1][0])[0]
    assert isinstance(last, SenderReport)  # a sends audio, so it reports as a sender
    # The last report went out at most 1.5 s (75 packets) before the end and counted what was sent by then.
    sent = a.stats(ca).packets_out
    assert sent - 75 <= last.packet_count <= sent
    assert last.octet_count == 160 * last.packet_count
    assert last.reports and last.reports[0].ssrc == b.ssrc(cb)


def test_rtt_loss_and_jitter_from_the_far_end_reports() -> None:
    a, ca, b, cb = _pair(interval_ms=1000)
    dropped = set(range(100, 400, 10))  # 10% of a's packets in the middle of the run
    _run(a, ca, b, cb, ticks=500, delay_ms=40, drop_a_to_b=dropped)
    sa, sb = a.stats(ca), b.stats(cb)
    assert sa.rtcp_received > 0 and sb.rtcp_received > 0
    # One-way delay 40 ms both ways: RTT 80 ms (LSR/DLSR in 1/65536 s and 20 ms delivery granularity).
    assert sa.rtt_ms is not None and 79.0 <= sa.rtt_ms <= 81.0
    assert sb.rtt_ms is not None and 79.0 <= sb.rtt_ms <= 81.0
    # b lost exactly the dropped packets of a's stream and says so in its reports.
    assert sb.lost == len(dropped)
    assert sa.remote_lost == len(dropped)
    assert sa.remote_jitter is not None and sa.remote_jitter < 1.0  # a perfectly paced sender
    assert sa.remote_fraction_lost is not None and 0.0 <= sa.remote_fraction_lost < 0.2
    # Nothing was lost from b to a.
    assert sb.remote_lost == 0 and sb.remote_fraction_lost == 0.0


def test_fraction_lost_reported_for_the_interval() -> None:
    a, ca, b, cb = _pair(interval_ms=2000)
    dropped = set(range(1, 600, 4))  # 25% all along
    _run(a, ca, b, cb, ticks=400, delay_ms=20, drop_a_to_b=dropped)
    frac = a.stats(ca).remote_fraction_lost
    assert frac is not None and 0.2 <= frac <= 0.3


def test_stats_are_none_until_a_report_arrives() -> None:
    a, ca, _b, _cb = _pair()
    s = a.stats(ca)
    assert (s.rtt_ms, s.remote_fraction_lost, s.remote_jitter, s.remote_lost) == (None, None, None, None)
    assert s.rtcp_received == 0 and not s.remote_bye


def test_bye_on_close_and_received_bye() -> None:
    a, ca, b, cb = _pair()
    _run(a, ca, b, cb, ticks=20, delay_ms=20)
    ssrc = a.ssrc(ca)
    a.close_channel(ca)
    out = a.outgoing_rtcp()
    assert len(out) == 1
    ch, data, dest = out[0]
    assert ch == ca and dest == (B_ADDR[0], B_ADDR[1] + 1)
    pkts = parse_rtcp(data)
    assert isinstance(pkts[0], SenderReport | ReceiverReport)
    assert isinstance(pkts[-1], Bye) and pkts[-1].ssrcs == (ssrc,)
    b.receive_rtcp(cb, data, (A_ADDR[0], A_ADDR[1] + 1), 1000)
    assert b.stats(cb).remote_bye


def test_no_bye_from_a_channel_that_never_sent_rtp_or_rtcp() -> None:
    # RFC 3550 §6.3.7: a participant that never sent an RTP or RTCP packet must not send a BYE. A channel that
    # only received (nothing played to it: the engine sends nothing) and closed before its first report is one.
    a = MediaEngine(rng=random.Random(1), rtcp_interval_ms=5000)
    b = MediaEngine(rng=random.Random(2), rtcp_interval_ms=5000)
    ca, cb = a.open_channel(Codec.PCMU, B_ADDR), b.open_channel(Codec.PCMU, A_ADDR)
    b.play(cb, tone_source(ToneKind.DIAL))
    for k in range(10):  # 200 ms: b talks, a listens, no report is due yet
        b.tick(k * 20)
        a.tick(k * 20)
        for _, data, _dest in b.outgoing_by_channel():
            a.receive(ca, data, B_ADDR, k * 20)
    assert a.stats(ca).packets_in > 0 and a.stats(ca).packets_out == 0 and a.stats(ca).rtcp_sent == 0
    a.close_channel(ca)
    assert a.outgoing_rtcp() == []
    b.close_channel(cb)  # b sent RTP: its BYE goes
    out = b.outgoing_rtcp()
    assert len(out) == 1 and isinstance(parse_rtcp(out[0][1])[-1], Bye)


def test_garbage_rtcp_only_counts() -> None:
    a, ca, _b, _cb = _pair()
    for junk in (b"", b"\x00" * 3, b"\x80\xc8\x00\x10" + b"\x00" * 4, bytes(range(256))):
        a.receive_rtcp(ca, junk, B_ADDR, 0)
    assert a.stats(ca).bad == 4 and a.stats(ca).rtcp_received == 0
    a.receive_rtcp(99, b"", B_ADDR, 0)  # unknown channel: ignored


def test_rtcp_remote_override_and_latching() -> None:
    a, ca, _b, _cb = _pair(interval_ms=100)
    a.set_rtcp_remote(ca, ("10.9.9.9", 7001))
    for k in range(20):
        a.tick(k * 20)
    assert {dest for _, _, dest in a.outgoing_rtcp()} == {("10.9.9.9", 7001)}


async def test_rtcp_over_loopback_udp_both_ways_and_bye() -> None:
    lo = random.randrange(30000, 50000, 2)
    sa = MediaServer("127.0.0.1", PortAllocator(lo, lo + 40), engine=MediaEngine(rtcp_interval_ms=200))
    sb = MediaServer("127.0.0.1", PortAllocator(lo + 100, lo + 140), engine=MediaEngine(rtcp_interval_ms=200))
    async with sa, sb:
        oa = await sa.open_channel(Codec.PCMU, None)
        ob = await sb.open_channel(Codec.PCMU, ("127.0.0.1", oa.port))
        sa.engine.set_remote(oa.channel, ("127.0.0.1", ob.port))
        sa.engine.play(oa.channel, tone_source(ToneKind.DIAL))  # senders: their reports carry the RTT's SR
        sb.engine.play(ob.channel, tone_source(ToneKind.DIAL))
        for _ in range(100):  # at most 2 s
            await asyncio.sleep(0.02)
            st_a, st_b = sa.engine.stats(oa.channel), sb.engine.stats(ob.channel)
            if st_a.rtt_ms is not None and st_b.rtt_ms is not None:
                break
        assert st_a.rtcp_received > 0 and st_b.rtcp_received > 0
        assert st_a.rtt_ms is not None and 0.0 <= st_a.rtt_ms < 100.0
        assert st_b.rtt_ms is not None and 0.0 <= st_b.rtt_ms < 100.0
        assert st_a.remote_lost == 0 and st_a.remote_fraction_lost == 0.0
        sa.close_channel(oa.channel)
        for _ in range(50):  # at most 1 s
            await asyncio.sleep(0.02)
            if sb.engine.stats(ob.channel).remote_bye:
                break
        assert sb.engine.stats(ob.channel).remote_bye
