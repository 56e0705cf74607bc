"""``MediaEngine.forward``, the relay path taken at a packet's arrival, against :meth:`MediaEngine.receive`.

Two engines in the same state (same random source) are fed the same generated packets, ticks and topology
changes; one takes every packet through ``receive`` and its queue, the other through ``forward`` (sending what
it returns first, then its queue). Every datagram sent, every event and every channel's statistics must match.
"""

from __future__ import annotations

import itertools
import random
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccpbx.media.engine import Direction, MediaEngine, RtpTimeout
from ccpbx.media.g711 import Codec
from ccpbx.media.prompts import PromptPlayer
from ccpbx.media.rtp import RtpPacket

# Documentation addresses (RFC 5737): nothing leaves the process.
PHONE = [("192.0.2.1", 40000), ("192.0.2.2", 40002)]
ELSEWHERE = ("198.51.100.7", 50000)
HEADER = struct.Struct("!BBHII")

# How a packet may differ from the steady stream (most packets are steady: that is the fast path).
VARIANTS = ("steady",) * 8 + ("marker", "size80", "size240", "pcma", "event", "ssrc", "elsewhere", "csrc",
                             "extension", "padding", "version", "short", "reorder", "unknown_pt")
CHANGES = ("play", "stop_play", "detect", "undetect", "recvonly", "sendrecv", "remote", "tick_late")


class Side:
    def __init__(self, ch: int, index: int) -> None:
        self.ch = ch
        self.addr = PHONE[index]
        self.seq = 1000 * (index + 1)
        self.ts = 50_000 * (index + 1)
        self.ssrc = 0x5000 + index

    def packet(self, variant: str, k: int) -> tuple[bytes, tuple[str, int]]:
        payload = bytes((k + i) & 0xFF for i in range(160))
        pt, b0, marker, source = 0, 0x80, 0, self.addr
        extra = b""
        if variant == "marker":
            marker = 0x80
        elif variant == "size80":
            payload = payload[:80]
        elif variant == "size240":
            payload = payload + payload[:80]
        elif variant == "pcma":
            pt = 8
        elif variant == "event":
            pt, payload = 101, bytes((5, 0x0A, 0, 160))
        elif variant == "ssrc":  # a new source: its own random numbering
            self.ssrc += 1
            self.seq += 7919
            self.ts += 1_234_567
        elif variant == "elsewhere":
            source = ELSEWHERE
        # The next three keep the steady packet's length: only the first byte tells them apart.
        elif variant == "csrc":
            b0, extra, payload = 0x81, struct.pack("!I", 77), payload[4:]
        elif variant == "extension":
            b0, extra, payload = 0x90, struct.pack("!HHI", 0xBEDE, 1, 0), payload[8:]
        elif variant == "padding":
            b0, payload = 0xA0, payload[:156] + b"\x00\x00\x00\x04"
        elif variant == "version":
            b0 = 0x40
        elif variant == "unknown_pt":
            pt = 33
        seq = self.seq - 2 if variant == "reorder" else self.seq
        data = HEADER.pack(b0, marker | pt, seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc) + extra + payload
        if variant == "short":
            data = data[:9]
        self.seq += 1
        self.ts += 160
        return data, source


def apply_change(eng: MediaEngine, what: str, ch: int, remote: tuple[str, int]) -> None:
    """One of :data:`CHANGES` (but ``tick_late``, which is only a later tick) to channel ``ch``."""
    if what == "play":
        eng.play(ch, PromptPlayer(np.full(800, 300, dtype=np.int16)), mix=True)
    elif what == "stop_play":
        eng.stop_play(ch)
    elif what in ("detect", "undetect"):
        eng.enable_dtmf_detection(ch, what == "detect")
    elif what in ("recvonly", "sendrecv"):
        eng.set_direction(ch, Direction.RECVONLY if what == "recvonly" else Direction.SENDRECV)
    elif what == "remote":  # the same address again (a re-INVITE that restates it)
        eng.set_remote(ch, remote)


class Twin:
    """One engine with a bridged pair, fed one way."""

    def __init__(self, fast: bool) -> None:
        self.fast = fast
        # A short RTP timeout, so that a packet not counted as received shows as a timeout event.
        self.eng = MediaEngine(rng=random.Random(11), rtp_timeout_ms=300)
        self.a = self.eng.open_channel(Codec.PCMU, PHONE[0])
        self.b = self.eng.open_channel(Codec.PCMU, PHONE[1])
        self.eng.set_codec(self.a, Codec.PCMU, 101, also=((8, Codec.PCMA),))
        self.eng.bridge(self.a, self.b)
        self.sent: list[tuple[int, bytes, Any]] = []

    def packet(self, ch: int, data: bytes, source: tuple[str, int], now: int) -> None:
        if self.fast:
            out = self.eng.forward(ch, data, source, now)
            if out is not None:
                self.sent.append(out)
        else:
            assert self.eng.receive(ch, data, source, now) is None
        self.drain()

    def drain(self) -> None:
        self.sent.extend(self.eng.outgoing_by_channel())
        self.sent.extend(self.eng.outgoing_rtcp())

    def change(self, what: str, ch: int, now: int) -> None:
        apply_change(self.eng, what, ch, PHONE[0] if ch == self.a else PHONE[1])
        self.eng.tick(now)
        self.drain()

    def state(self) -> tuple[Any, ...]:
        eng = self.eng
        return (self.sent, eng.events(), eng.stats(self.a), eng.stats(self.b), eng.relaying(self.a),
                eng.relaying(self.b))


steps = st.lists(
    st.one_of(
        st.tuples(st.just("packet"), st.integers(0, 1), st.sampled_from(VARIANTS), st.integers(0, 25)),
        st.tuples(st.just("change"), st.integers(0, 1), st.sampled_from(CHANGES), st.integers(0, 25)),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_forward_sends_and_counts_what_receive_does(script: list[tuple[str, int, str, int]]) -> None:
    slow, fast = Twin(False), Twin(True)
    sides = [[Side(t.a, 0), Side(t.b, 1)] for t in (slow, fast)]
    now = 0
    for k, (kind, who, what, gap) in enumerate(script):
        now += gap
        if kind == "packet":
            for twin, side in zip((slow, fast), sides, strict=True):
                data, source = side[who].packet(what, k)
                twin.packet(side[who].ch, data, source, now)
        else:
            for twin in (slow, fast):
                twin.change(what, twin.a if who == 0 else twin.b, now + (25 if what == "tick_late" else 0))
        assert slow.state() == fast.state()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_a_tick_with_only_relayed_channels_sends_and_reports_what_the_full_tick_does(
        script: list[tuple[str, int, str, int]]) -> None:
    """The relay-only tick (no channel on the audio path: clocks, RTCP and timeouts only) against every stage run
    on nothing, with a tick after every step: the same datagrams, events and statistics, through the pair's moves
    between the relay and the audio path (a prompt, detection, a direction)."""
    full, short = Twin(True), Twin(True)
    full.eng.relay_only_ticks = False
    sides = [[Side(t.a, 0), Side(t.b, 1)] for t in (full, short)]
    now = 0
    for k, (kind, who, what, gap) in enumerate(script):
        now += gap
        for twin, side in zip((full, short), sides, strict=True):
            if kind == "packet":
                data, source = side[who].packet(what, k)
                twin.packet(side[who].ch, data, source, now)
                twin.eng.tick(now + 10)
                twin.drain()
            else:
                twin.change(what, twin.a if who == 0 else twin.b, now + (25 if what == "tick_late" else 0))
        now += 10
        assert full.state() == short.state()
    for tick in range(now + 20, now + 2_000, 20):  # long enough for timeouts and RTCP reports on both paths
        for twin in (full, short):
            twin.eng.tick(tick)
            twin.drain()
    assert full.state() == short.state()


def test_steady_packets_of_a_relayed_pair_take_the_fast_path() -> None:
    twin = Twin(True)
    side = Side(twin.a, 0)
    twin.eng.tick(0)
    first = twin.eng.forward(twin.a, *side.packet("steady", 0), 0)
    assert first is None  # the first packet sets the stream's offsets on the general path
    assert len(twin.eng.outgoing()) == 1
    for k in range(1, 50):
        out = twin.eng.forward(twin.a, *side.packet("steady", k), 20 * k)
        assert out is not None and out[0] == twin.b and out[2] == PHONE[1]
        sent = RtpPacket.parse(out[1])
        assert sent.ssrc == twin.eng.ssrc(twin.b) and len(sent.payload) == 160
        assert not twin.eng.has_outgoing
    assert twin.eng.stats(twin.a).packets_in == 50 and twin.eng.stats(twin.b).relayed == 50
    twin.eng.tick(1000)  # only B, which sent nothing, has been silent for the RTP timeout
    assert [e.channel for e in twin.eng.events() if isinstance(e, RtpTimeout)] == [twin.b]
    # A packet from elsewhere, or once the pair is no longer relayed, goes the general way.
    assert twin.eng.forward(twin.a, *side.packet("elsewhere", 50), 1000) is None
    twin.eng.enable_dtmf_detection(twin.a, True)
    assert twin.eng.forward(twin.a, *side.packet("steady", 51), 1020) is None


def test_a_packet_from_the_latched_address_ends_a_candidates_run() -> None:
    """Symmetric RTP re-latches after consecutive packets from a new address: one from the latched address
    between them starts the count again, on either path."""
    slow, fast = Twin(False), Twin(True)
    for twin in (slow, fast):
        side = Side(twin.a, 0)
        for k, variant in enumerate(("steady", "steady", "elsewhere", "elsewhere", "steady", "elsewhere",
                                     "elsewhere", "steady", "remote", "steady", "steady", "elsewhere")):
            if variant == "remote":  # the SDP names the same address again: the next packet latches anew
                twin.eng.set_remote(twin.a, PHONE[0])
            else:
                twin.packet(twin.a, *side.packet(variant, k), 20 * k)
    assert slow.state() == fast.state()
    assert not any(type(e).__name__ == "SourceChanged" for e in fast.eng.events())
    assert fast.eng.remote(fast.a) == PHONE[0]


@pytest.mark.parametrize("ch", [-1, 2, 99])
def test_forward_ignores_channels_that_are_not_open(ch: int) -> None:
    twin = Twin(True)
    assert twin.eng.forward(ch, bytes(172), PHONE[0], 0) is None
    assert not twin.eng.has_outgoing


def test_relayed_numbering_and_arrival_times_survive_growth_and_reach_the_tick() -> None:
    """The packet path writes a channel's next sequence number and last arrival one element at a time (into the
    memory the tick reads as arrays): after the arrays grow, the relay goes on numbering where it stood, the
    engine's own packets continue that numbering, and a channel fed only by the fast path does not time out."""
    eng = MediaEngine(rng=random.Random(5), capacity=2, rtp_timeout_ms=300)
    a = eng.open_channel(Codec.PCMU, PHONE[0])
    b = eng.open_channel(Codec.PCMU, PHONE[1])
    eng.bridge(a, b)
    side = Side(a, 0)
    eng.tick(0)
    seqs: list[int] = []

    def feed(k: int) -> None:
        out = eng.forward(a, *side.packet("steady", k), 20 * k)
        sent = [out] if out is not None else [p for p in eng.outgoing_by_channel() if p[0] == b]
        seqs.extend(RtpPacket.parse(data).sequence for _ch, data, _addr in sent)

    for k in range(10):
        feed(k)
    for i in range(6):  # 2 -> 4 -> 8 rows: every array is reallocated twice
        eng.open_channel(Codec.PCMA, ("192.0.2.50", 41000 + 2 * i))
    assert eng.capacity >= 8
    for k in range(10, 20):
        feed(k)
    assert len(seqs) == 20
    assert all((later - earlier) & 0xFFFF == 1 for earlier, later in itertools.pairwise(seqs))
    eng.tick(20 * 19 + 1)  # 380 ms after the relay began: A was heard 20 ms ago, through the fast path only
    assert not [e for e in eng.events() if isinstance(e, RtpTimeout) and e.channel == a]
    eng.play(b, PromptPlayer(np.full(800, 300, dtype=np.int16)), mix=True)  # the relay ends; the engine sends
    eng.tick(400)
    own = [RtpPacket.parse(data).sequence for ch, data, _addr in eng.outgoing_by_channel() if ch == b]
    assert own and own[0] == (seqs[-1] + 1) & 0xFFFF
