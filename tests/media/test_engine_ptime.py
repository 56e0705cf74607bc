"""The receive path takes any packet time (RFC 3551 §4.5) and any payload type both sides listed (RFC 3264 §5.1).

Exact comparisons: canonical G.711 codes sent in on one leg of a non-relayed bridge come out on the other leg
byte for byte (PCMU decode then encode is the identity on canonical codes), re-cut into 20 ms packets.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ccpbx.media.engine import MediaEngine
from ccpbx.media.g711 import Codec
from ccpbx.media.rtp import RtpPacket

A, B = ("127.0.0.1", 40000), ("127.0.0.1", 40002)


def tone_codes(codec: Codec, seconds: float = 1.0) -> bytes:
    """Canonical codes of a sweep with noise: no two 20 ms stretches alike, so a lost, doubled or shifted
    frame cannot go unnoticed (a steady tone repeats every few samples)."""
    t = np.arange(int(8000 * seconds)) / 8000
    rng = np.random.default_rng(7)
    pcm = (6000 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + rng.normal(0, 800, t.size)).astype(np.int16)
    return codec.encode(codec.decode(codec.encode(pcm))).tobytes()


def run(engine: MediaEngine, ch: int, packets: list[tuple[int, int, int, bytes]], until_ms: int) -> list[bytes]:
    """Deliver (arrival_ms, seq, ts, payload-with-pt) packets, ticking every 20 ms; payloads sent to B."""
    out: list[bytes] = []
    queue = sorted(packets, key=lambda p: p[0])
    for now in range(0, until_ms, 20):
        while queue and queue[0][0] <= now:
            arrival, _, _, data = queue.pop(0)
            engine.receive(ch, data, A, arrival)
        engine.tick(now)
        for _, data, addr in engine.outgoing_by_channel():
            if addr == B:
                out.append(RtpPacket.parse(data).payload)
    return out


def bridge(codec_a: Codec = Codec.PCMU, codec_b: Codec = Codec.PCMU) -> tuple[MediaEngine, int, int]:
    engine = MediaEngine(relay=False)
    a = engine.open_channel(codec_a, A)
    b = engine.open_channel(codec_b, B)
    engine.bridge(a, b)
    return engine, a, b


@pytest.mark.parametrize("ptime_ms", [10, 20, 30, 40, 60])
def test_every_packet_time_arrives_sample_exact(ptime_ms: int) -> None:
    engine, a, _ = bridge()
    codes = tone_codes(Codec.PCMU)
    size = ptime_ms * 8
    packets = []
    for i, start in enumerate(range(0, len(codes), size)):
        packet = RtpPacket(0, (1000 + i) & 0xFFFF, (5000 + start) & 0xFFFFFFFF, 77, codes[start:start + size])
        packets.append((start // 8, packet.sequence, packet.timestamp, packet.serialize()))
    out = b"".join(run(engine, a, packets, 1400))
    assert all(len(p) == 160 for p in run(engine, a, [], 40))  # we send 20 ms frames
    head = out.find(codes[:400])
    assert head >= 0, "the tone never arrived"
    assert out[head:head + len(codes)] == codes  # every sample, in order, nothing lost or doubled
    assert engine.stats(a).bad == 0


def test_30ms_packets_out_of_order_still_exact() -> None:
    engine, a, _ = bridge()
    codes = tone_codes(Codec.PCMU, 0.6)
    packets = []
    for i, start in enumerate(range(0, len(codes), 240)):
        data = RtpPacket(0, i, start, 9, codes[start:start + 240]).serialize()
        arrival = start // 8
        if i % 4 == 2:  # every 4th pair swapped: this one overtakes the one before it
            arrival -= 31
        packets.append((arrival, i, start, data))
    out = b"".join(run(engine, a, packets, 1000))
    head = out.find(codes[:400])
    assert head >= 0 and out[head:head + len(codes)] == codes
    assert engine.stats(a).bad == 0


def test_a_lost_30ms_packet_leaves_exactly_its_samples_silent() -> None:
    engine, a, _ = bridge()
    codes = tone_codes(Codec.PCMU, 0.6)
    packets = []
    for i, start in enumerate(range(0, len(codes), 240)):
        if i == 5:
            continue
        packets.append((start // 8, i, start, RtpPacket(0, i, start, 9, codes[start:start + 240]).serialize()))
    out = b"".join(run(engine, a, packets, 1000))
    head = out.find(codes[:400])
    got = out[head:head + len(codes)]
    # samples 1200-1439 are gone: frame 7 (1120-1279) keeps its first half and plays the rest silent; frame 8
    # (1280-1439) never arrived and is concealed by the jitter buffer; everything else is exact and in place
    assert got[:1200] == codes[:1200]
    assert got[1200:1280] == bytes([Codec.PCMU.silence]) * 80
    assert got[1440:] == codes[1440:]


def test_a_peer_may_switch_among_the_listed_codecs_per_packet() -> None:
    engine, a, _ = bridge()
    engine.set_codec(a, Codec.PCMU, 101, also=((8, Codec.PCMA),))
    pcm_codes = tone_codes(Codec.PCMU, 0.4)
    pcma = Codec.PCMA.encode(Codec.PCMU.decode(np.frombuffer(pcm_codes, dtype=np.uint8))).tobytes()
    packets = []
    for i, start in enumerate(range(0, len(pcm_codes), 160)):
        pt, body = (8, pcma) if i % 2 else (0, pcm_codes)
        packets.append((start // 8, i, start, RtpPacket(pt, i, start, 3, body[start:start + 160]).serialize()))
    out = b"".join(run(engine, a, packets, 800))
    expected = bytearray(pcm_codes)
    as_ulaw = Codec.PCMU.encode(Codec.PCMA.decode(np.frombuffer(pcma, dtype=np.uint8))).tobytes()
    for start in range(160, len(expected), 320):  # the PCMA packets: A-law's own rounding, decoded exactly
        expected[start:start + 160] = as_ulaw[start:start + 160]
    head = out.find(bytes(expected[:400]))
    assert head >= 0 and out[head:head + len(expected)] == bytes(expected)
    assert engine.stats(a).bad == 0


def test_relay_converts_a_switched_codec_to_the_peers() -> None:
    engine = MediaEngine()
    c = engine.open_channel(Codec.PCMU, A)
    d = engine.open_channel(Codec.PCMU, B)
    engine.bridge(c, d)
    engine.set_codec(c, Codec.PCMU, 101, also=((8, Codec.PCMA),))
    assert engine.relaying(c)
    pcma = Codec.PCMA.encode(np.full(160, 1000, dtype=np.int16)).tobytes()
    engine.receive(c, RtpPacket(8, 1, 160, 5, pcma).serialize(), A, 0)
    sent = [RtpPacket.parse(data) for ch, data, _ in engine.outgoing_by_channel() if ch == d]
    assert len(sent) == 1 and sent[0].payload_type == 0
    assert sent[0].payload == Codec.PCMU.encode(Codec.PCMA.decode(np.frombuffer(pcma, dtype=np.uint8))).tobytes()


@pytest.mark.parametrize("ptime_ms", [10, 20, 30, 40, 60])
def test_we_send_at_the_packet_time_the_peer_asked(ptime_ms: int) -> None:
    engine, a, b = bridge()
    engine.set_send_ptime(b, ptime_ms)
    codes = tone_codes(Codec.PCMU, 0.6)
    packets = [(start // 8, i, start, RtpPacket(0, i, start, 9, codes[start:start + 160]).serialize())
               for i, start in enumerate(range(0, len(codes), 160))]
    sent: list[RtpPacket] = []
    queue = list(packets)
    for now in range(0, 1000, 20):
        while queue and queue[0][0] <= now:
            engine.receive(a, queue.pop(0)[3], A, now)
        engine.tick(now)
        sent += [RtpPacket.parse(data) for ch, data, _ in engine.outgoing_by_channel() if ch == b]
    assert sent and all(len(p.payload) == ptime_ms * 8 for p in sent)
    for prev, nxt in itertools.pairwise(sent):  # consecutive numbers, timestamps one packet apart
        assert (nxt.sequence - prev.sequence) & 0xFFFF == 1
        assert (nxt.timestamp - prev.timestamp) & 0xFFFFFFFF == ptime_ms * 8
    out = b"".join(p.payload for p in sent)
    head = out.find(codes[:400])
    assert head >= 0 and out[head:head + len(codes) - 480] == codes[:len(codes) - 480]


def test_the_relay_runs_only_while_each_side_sends_what_the_other_asked() -> None:
    engine = MediaEngine()
    c = engine.open_channel(Codec.PCMU, A)
    d = engine.open_channel(Codec.PCMU, B)
    engine.bridge(c, d)
    engine.receive(c, RtpPacket(0, 1, 160, 5, bytes(160)).serialize(), A, 0)
    assert engine.relaying(c)
    engine.set_send_ptime(d, 30)  # d asks 30 ms; c sends 20 ms
    assert not engine.relaying(c)
    engine.set_send_ptime(d, 20)
    assert engine.relaying(c)
    engine.receive(c, RtpPacket(0, 2, 320, 5, bytes(240)).serialize(), A, 20)  # c turns out to send 30 ms
    assert not engine.relaying(c)
    assert not [p for ch, p, _ in engine.outgoing_by_channel() if ch == d and len(p) == 12 + 240]
