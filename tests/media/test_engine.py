"""MediaEngine driven with explicit now_ms and in-memory packets (no sockets)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.media.dtmf import generate_digits
from ccpbx.media.engine import (
    Direction,
    DtmfReceived,
    DtmfSource,
    MediaEngine,
    PlaybackFinished,
    Role,
    RtpTimeout,
    SourceChanged,
)
from ccpbx.media.errors import MediaConfigError
from ccpbx.media.g711 import Codec, alaw_encode, ulaw_decode, ulaw_encode
from ccpbx.media.prompts import PromptPlayer
from ccpbx.media.rtp import RtpPacket
from ccpbx.media.telephone_event import TelephoneEvent

F = 160
RATE = 8000
TE_PT = 101
# Documentation addresses (RFC 5737): nothing is sent anywhere, packets stay in memory.
ADDR = {i: (f"192.0.2.{i + 1}", 40000 + 2 * i) for i in range(8)}


def tone(freq: float, frames: int, amp: float = 6000.0, start: int = 0) -> np.ndarray:
    n = np.arange(start * F, (start + frames) * F)
    return (amp * np.sin(2 * np.pi * freq * n / RATE)).astype(np.int16).reshape(frames, F)


def spectrum(pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = pcm.astype(np.float64).ravel()
    mag = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.fft.rfftfreq(x.size, 1 / RATE), mag


def dominant(pcm: np.ndarray) -> float:
    freqs, mag = spectrum(pcm)
    return float(freqs[int(np.argmax(mag))])


def level_at(pcm: np.ndarray, f: float) -> float:
    freqs, mag = spectrum(pcm)
    k = int(np.argmin(np.abs(freqs - f)))
    return float(mag[max(0, k - 2) : k + 3].max() / mag.max())


class Phone:
    """One far end: sends RTP for a channel and collects what the engine sends to it."""

    def __init__(self, eng: MediaEngine, ch: int, addr: tuple[str, int], codec: Codec = Codec.PCMU) -> None:
        self.eng, self.ch, self.addr, self.codec = eng, ch, addr, codec
        self.ssrc = 0x1000 + ch
        self.seq = 100 * ch
        self.ts = 1000 * ch
        self.received: list[RtpPacket] = []

    def send_pcm(self, frame: np.ndarray, now: int) -> None:
        enc = ulaw_encode(frame) if self.codec is Codec.PCMU else alaw_encode(frame)
        self.send(self.codec.payload_type, enc.tobytes(), now)

    def send(self, pt: int, payload: bytes, now: int, marker: bool = False, ts: int | None = None) -> None:
        pkt = RtpPacket(pt, self.seq & 0xFFFF, (self.ts if ts is None else ts) & 0xFFFFFFFF, self.ssrc, payload, marker)
        self.eng.receive(self.ch, pkt.serialize(), self.addr, now)
        self.seq += 1
        if ts is None:
            self.ts += F

    def audio(self) -> np.ndarray:
        frames = [p for p in self.received if p.payload_type == self.codec.payload_type]
        codes = np.frombuffer(b"".join(p.payload for p in frames), dtype=np.uint8)
        return self.codec.decode(codes.copy())


def deliver(eng: MediaEngine, phones: list[Phone]) -> None:
    by_addr = {p.addr: p for p in phones}
    for data, addr in eng.outgoing():
        by_addr[addr].received.append(RtpPacket.parse(data))


def run(eng: MediaEngine, phones: list[Phone], signals: dict[int, np.ndarray], frames: int, t0: int = 0) -> int:
    """Each phone in ``signals`` sends its frame k at tick k; the engine ticks; output is delivered."""
    now = t0
    for k in range(frames):
        now = t0 + k * 20
        for p in phones:
            if p.ch in signals:
                p.send_pcm(signals[p.ch][k], now)
        eng.tick(now)
        deliver(eng, phones)
    return now


def engine(**kw: object) -> MediaEngine:
    kw.setdefault("rng", random.Random(7))
    return MediaEngine(**kw)  # type: ignore[arg-type]


def test_bridge_each_hears_the_other_with_transcoding() -> None:
    eng = engine(relay=False)
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    b = eng.open_channel(Codec.PCMA, ADDR[1])
    pa, pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1], Codec.PCMA)
    eng.bridge(a, b)
    run(eng, [pa, pb], {a: tone(1000, 60), b: tone(400, 60)}, 60)
    assert abs(dominant(pa.audio()[-40 * F :]) - 400) < 5
    assert abs(dominant(pb.audio()[-40 * F :]) - 1000) < 5
    assert level_at(pa.audio()[-40 * F :], 1000) < 0.01  # A does not hear itself
    assert all(p.payload_type == 8 for p in pb.received)
    assert eng.stats(a).packets_in == 60 and eng.stats(b).packets_out == len(pb.received)


def test_output_continuity_ssrc_seq_timestamp_marker() -> None:
    eng = engine(relay=False)
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    b = eng.open_channel(Codec.PCMU, ADDR[1])
    pa, pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1])
    eng.bridge(a, b)
    run(eng, [pa, pb], {a: tone(1000, 30), b: tone(400, 30)}, 30)
    for p, ch in ((pa, a), (pb, b)):
        got = p.received
        assert len(got) == 30
        assert {q.ssrc for q in got} == {eng.ssrc(ch)}
        assert all(q.ssrc != p.ssrc for q in got)  # never a foreign SSRC
        for x, y in itertools.pairwise(got):
            assert (y.sequence - x.sequence) & 0xFFFF == 1
            assert (y.timestamp - x.timestamp) & 0xFFFFFFFF == F
        assert got[0].marker and not any(q.marker for q in got[1:])
        assert all(len(q.payload) == F for q in got)


def test_relay_fast_path_forwards_at_arrival_with_own_numbering() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    b = eng.open_channel(Codec.PCMU, ADDR[1])
    pa, pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1])
    eng.bridge(a, b)
    assert eng.relaying(a) and eng.relaying(b)
    frames = tone(1000, 20)
    for k in range(20):
        pa.send_pcm(frames[k], k * 20)
        deliver(eng, [pa, pb])  # forwarded before any tick
        assert len(pb.received) == k + 1
        eng.tick(k * 20)
        deliver(eng, [pa, pb])
    assert not pa.received or all(q.payload_type != 0 for q in pa.received)  # B was silent: nothing back
    got = pb.received
    assert b"".join(q.payload for q in got) == ulaw_encode(frames).tobytes()
    assert {q.ssrc for q in got} == {eng.ssrc(b)}
    assert all((y.sequence - x.sequence) & 0xFFFF == 1 for x, y in itertools.pairwise(got))
    assert all((y.timestamp - x.timestamp) & 0xFFFFFFFF == F for x, y in itertools.pairwise(got))
    assert eng.stats(b).relayed == 20

    # In-band DTMF detection takes the bridge off the fast path; B's numbering continues without a gap.
    eng.enable_dtmf_detection(a, True)
    assert not eng.relaying(a) and not eng.relaying(b)
    last = got[-1]
    for k in range(20, 30):
        pa.send_pcm(tone(1000, 1, start=k)[0], k * 20)
        eng.tick(k * 20)
        deliver(eng, [pa, pb])
    after = pb.received[20:]
    assert after and (after[0].sequence - last.sequence) & 0xFFFF == 1
    assert after[0].marker


def test_relayed_bridges_are_left_out_of_the_mix_plan() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    b = eng.open_channel(Codec.PCMU, ADDR[1])
    eng.bridge(a, b)
    assert eng.relaying(a) and eng._mixer.plan.empty  # packets are relayed: nothing to mix
    eng.play(b, ConstSource(500, 10), mix=True)
    assert sorted(eng._mixer.plan.listener_rows.tolist()) == sorted([a, b])  # mixed again
    eng.stop_play(b)
    assert eng._mixer.plan.empty


def test_relay_ends_when_a_player_attaches() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    b = eng.open_channel(Codec.PCMU, ADDR[1])
    eng.bridge(a, b)
    assert eng.relaying(a)
    eng.play(b, ConstSource(500, 10), mix=True)
    assert not eng.relaying(a)
    eng.stop_play(b)
    assert eng.relaying(a)
    c = eng.open_channel(Codec.PCMA, ADDR[2])
    d = eng.open_channel(Codec.PCMU, ADDR[3])
    eng.bridge(c, d)
    assert not eng.relaying(c)  # different codecs must be transcoded


def _bins_present(pcm: np.ndarray, present: list[float], absent: list[float]) -> None:
    for f in present:
        assert level_at(pcm, f) > 0.3, f"{f} Hz missing"
    for f in absent:
        assert level_at(pcm, f) < 0.02, f"{f} Hz should not be heard"


def test_conference_of_three_mix_minus() -> None:
    eng = engine()
    chans = [eng.open_channel(Codec.PCMU, ADDR[i]) for i in range(3)]
    phones = [Phone(eng, ch, ADDR[i]) for i, ch in enumerate(chans)]
    freqs = [500.0, 1000.0, 1500.0]
    eng.conference(chans)
    run(eng, phones, {ch: tone(f, 60, amp=4000) for ch, f in zip(chans, freqs, strict=True)}, 60)
    for i, p in enumerate(phones):
        others = [f for j, f in enumerate(freqs) if j != i]
        _bins_present(p.audio()[-40 * F :], others, [freqs[i]])


def test_whisper_coach_heard_by_agent_only() -> None:
    eng = engine()
    cust, agent, coach = (eng.open_channel(Codec.PCMU, ADDR[i]) for i in range(3))
    phones = [Phone(eng, ch, ADDR[i]) for i, ch in enumerate((cust, agent, coach))]
    gid = eng.bridge(cust, agent)
    eng.add_to_conference(gid, coach, Role.WHISPER_TO(agent))
    assert not eng.relaying(cust)
    sig = {cust: tone(500, 60, 4000), agent: tone(1000, 60, 4000), coach: tone(1500, 60, 4000)}
    run(eng, phones, sig, 60)
    pc, pa, pco = (p.audio()[-40 * F :] for p in phones)
    _bins_present(pc, [1000], [500, 1500])
    _bins_present(pa, [500, 1500], [1000])
    _bins_present(pco, [500, 1000], [1500])


def test_listen_only_monitor_and_barge() -> None:
    eng = engine()
    a, b, sup = (eng.open_channel(Codec.PCMU, ADDR[i]) for i in range(3))
    phones = [Phone(eng, ch, ADDR[i]) for i, ch in enumerate((a, b, sup))]
    gid = eng.bridge(a, b)
    eng.add_to_conference(gid, sup, Role.LISTEN_ONLY)
    sig = {a: tone(500, 120, 4000), b: tone(1000, 120, 4000), sup: tone(1500, 120, 4000)}
    run(eng, phones, {k: v[:60] for k, v in sig.items()}, 60)
    _bins_present(phones[0].audio()[-40 * F :], [1000], [1500])
    _bins_present(phones[2].audio()[-40 * F :], [500, 1000], [1500])
    eng.add_to_conference(gid, sup, Role.SPEAKER)  # barge
    for p in phones:
        p.received.clear()
    run(eng, phones, {k: v[60:] for k, v in sig.items()}, 60, t0=1200)
    _bins_present(phones[0].audio()[-40 * F :], [1000, 1500], [500])
    _bins_present(phones[1].audio()[-40 * F :], [500, 1500], [1000])


class ConstSource:
    """A finite (or endless) sine source implementing AudioSource."""

    def __init__(self, freq: float, frames: int | None, amp: float = 5000.0) -> None:
        self.freq, self.left, self.k, self.amp = freq, frames, 0, amp

    def read_frame(self) -> np.ndarray | None:
        if self.left is not None:
            if self.left == 0:
                return None
            self.left -= 1
        frame = tone(self.freq, 1, self.amp, start=self.k)[0]
        self.k += 1
        return frame


def test_hold_with_music_on_hold() -> None:
    eng = engine()
    a, b = (eng.open_channel(Codec.PCMU, ADDR[i]) for i in range(2))
    pa, pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1])
    eng.bridge(a, b)
    # A puts B on hold: nothing is sent to A (recvonly on A's leg), B hears music on hold only.
    eng.set_direction(a, Direction.RECVONLY)
    eng.set_direction(b, Direction.SENDONLY)
    eng.play(b, ConstSource(700, None))
    run(eng, [pa, pb], {a: tone(1000, 50), b: tone(400, 50)}, 50)
    assert pa.received == []
    heard = pb.audio()[-30 * F :]
    assert abs(dominant(heard) - 700) < 5
    assert level_at(heard, 1000) < 0.02
    # Resume: back to the bridge.
    eng.stop_play(b)
    eng.set_direction(a, Direction.SENDRECV)
    eng.set_direction(b, Direction.SENDRECV)
    pb.received.clear()
    run(eng, [pa, pb], {a: tone(1000, 50), b: tone(400, 50)}, 50, t0=1000)
    assert abs(dominant(pb.audio()[-30 * F :]) - 1000) < 5
    assert abs(dominant(pa.audio()[-30 * F :]) - 400) < 5


def test_prompt_played_then_finished_event() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    pa = Phone(eng, a, ADDR[0])
    src = ConstSource(440, 10)
    pid = eng.play(a, src)
    run(eng, [pa], {}, 12)
    events = eng.events()
    assert events == [PlaybackFinished(a, pid)]
    audio = pa.audio()
    expected = ulaw_decode(ulaw_encode(tone(440, 10, 5000.0).ravel()))
    np.testing.assert_array_equal(audio[: 10 * F], expected)
    assert np.all(np.abs(audio[10 * F :]) <= 8)  # silence (mu-law zero) afterwards


def test_rfc4733_digits_in() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0], telephone_event_pt=TE_PT)
    pa = Phone(eng, a, ADDR[0])
    now = 0
    for digit_index, _digit in ((1, "1"), (11, "#"), (1, "1")):
        ts = pa.ts
        for i in range(5):
            ev = TelephoneEvent(digit_index, end=i >= 3, volume=10, duration=160 * (i + 1))
            pa.send(TE_PT, ev.serialize(), now, marker=i == 0, ts=ts)
            now += 20
        pa.ts += 800
        eng.tick(now)
        now += 500
    got = [e for e in eng.events() if isinstance(e, DtmfReceived)]
    assert [e.digit for e in got] == ["1", "#", "1"]
    assert all(e.source is DtmfSource.RFC4733 for e in got)
    assert all(e.channel == a for e in got)


def test_inband_digits_detected() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    pa = Phone(eng, a, ADDR[0])
    eng.enable_dtmf_detection(a, True)
    pcm = generate_digits("159#", tone_ms=80, pause_ms=80)
    pad = (-pcm.size) % F + 10 * F
    frames = np.concatenate([pcm, np.zeros(pad, np.int16)]).reshape(-1, F)
    run(eng, [pa], {a: frames}, frames.shape[0])
    got = [e for e in eng.events() if isinstance(e, DtmfReceived)]
    assert "".join(e.digit for e in got) == "159#"
    assert all(e.source is DtmfSource.INBAND for e in got)


def test_inband_detection_unpaired_only_pauses_in_a_plain_bridge() -> None:
    """A phone without telephone-event: its tones are detected while it is alone (an application serves it);
    bridged with one other party they travel as audio and the bridge keeps the relay fast path."""
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    b, c = eng.open_channel(Codec.PCMU, None), eng.open_channel(Codec.PCMU, None)
    eng.enable_dtmf_detection(a, True, unpaired_only=True)
    pa = Phone(eng, a, ADDR[0])
    frames = np.concatenate([generate_digits("7", tone_ms=100, pause_ms=100), np.zeros(F * 8, np.int16)])
    frames = frames[: frames.size // F * F].reshape(-1, F)
    run(eng, [pa], {a: frames}, frames.shape[0])
    assert [e.digit for e in eng.events() if isinstance(e, DtmfReceived)] == ["7"]
    gid = eng.bridge(a, b)
    assert eng.relaying(a) and eng.relaying(b)
    eng.add_to_conference(gid, c)  # three parties: back to decoding, and detecting
    assert not eng.relaying(a)
    eng.remove_from_conference(gid, c)
    assert eng.relaying(a)
    eng.destroy(gid)
    eng.enable_dtmf_detection(b, True)  # plain detection stays on in a bridge
    eng.bridge(a, b)
    assert not eng.relaying(a) and not eng.relaying(b)


def test_inband_and_rfc4733_of_one_press_reported_once() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    pa = Phone(eng, a, ADDR[0])
    eng.enable_dtmf_detection(a, True)
    frames = np.concatenate([generate_digits("5", tone_ms=100, pause_ms=100), np.zeros(F * 8, np.int16)])
    frames = frames[: frames.size // F * F].reshape(-1, F)
    ts0 = pa.ts
    for k in range(frames.shape[0]):
        if k < 3:  # the phone also sends RFC 4733 for the same key, on the same RTP clock
            ev = TelephoneEvent(5, end=False, volume=10, duration=160 * (k + 1))
            pa.seq += 0
            pkt = RtpPacket(TE_PT, (pa.seq + 5000) & 0xFFFF, ts0, pa.ssrc, ev.serialize(), k == 0)
            eng.receive(a, pkt.serialize(), pa.addr, k * 20)
        pa.send_pcm(frames[k], k * 20)
        eng.tick(k * 20)
    got = [e for e in eng.events() if isinstance(e, DtmfReceived)]
    assert [e.digit for e in got] == ["5"]
    assert got[0].source is DtmfSource.RFC4733


def test_send_dtmf_rfc4733_packets() -> None:
    eng = engine(relay=False)
    a = eng.open_channel(Codec.PCMU, ADDR[0], telephone_event_pt=TE_PT)
    b = eng.open_channel(Codec.PCMU, ADDR[1])
    pa, pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1])
    eng.bridge(a, b)
    run(eng, [pa, pb], {b: tone(400, 5)}, 5)
    eng.send_dtmf(a, "7", duration_ms=100)
    run(eng, [pa, pb], {b: tone(400, 15, start=5)}, 15, t0=100)
    te = [q for q in pa.received if q.payload_type == TE_PT]
    assert te, "no telephone-event packets"
    events = [TelephoneEvent.parse(q.payload) for q in te]
    assert all(e.event == 7 for e in events)
    assert te[0].marker and not any(q.marker for q in te[1:])
    assert len({q.timestamp for q in te}) == 1
    assert sum(e.end for e in events) == 3 and all(e.end for e in events[-3:])
    assert events[-1].duration == 800
    # Audio is muted while the digit is sent, and the sequence numbers interleave without a gap.
    seqs = [q.sequence for q in pa.received]
    assert all((y - x) & 0xFFFF == 1 for x, y in itertools.pairwise(seqs))
    first_te = pa.received.index(te[0])
    last_te = pa.received.index(te[-1])
    assert all(q.payload_type == TE_PT for q in pa.received[first_te : last_te + 1])
    resumed = pa.received[last_te + 1]
    assert resumed.payload_type == 0 and resumed.marker


def test_symmetric_rtp_latching() -> None:
    eng = engine(relay=False)
    a = eng.open_channel(Codec.PCMU, ("198.51.100.7", 5004))  # the private/SDP address
    b = eng.open_channel(Codec.PCMU, ADDR[1])
    eng.bridge(a, b)
    nat = ("203.0.113.9", 31000)
    pa = Phone(eng, a, nat)
    pa.send_pcm(tone(1000, 1)[0], 0)
    assert eng.remote(a) == nat
    assert eng.events() == [SourceChanged(a, nat)]
    # A single packet from elsewhere does not move us; interleaved old-source packets reset the count.
    other = ("203.0.113.10", 32000)
    for k, src in enumerate([other, other, nat, other, other]):
        pa.addr = src
        pa.send_pcm(tone(1000, 1)[0], 20 * (k + 1))
    assert eng.remote(a) == nat and eng.events() == []
    pa.send_pcm(tone(1000, 1)[0], 200)  # third consecutive
    assert eng.remote(a) == other
    assert eng.events() == [SourceChanged(a, other)]
    eng.tick(220)
    assert {addr for _, addr in eng.outgoing() if addr != ADDR[1]} == {other}


def test_garbage_packets_counted_not_raised() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    good = RtpPacket(0, 1, 160, 5, bytes(F)).serialize()
    bad = [
        b"",
        b"\x80",
        b"\x00" * 20,  # version 0
        bytes([0x80, 96]) + good[2:],  # unknown payload type
        bytes([0x80, 72]) + good[2:],  # RTCP SR sent to the RTP port
        bytes([0x9F]) + good[1:12],  # claims 15 CSRCs, has none
        bytes([0x90]) + good[1:12] + b"\x00\x00\xff\xff",  # extension longer than the packet
        RtpPacket(0, 1, 160, 5, bytes(481)).serialize(),  # over 60 ms of G.711 (RFC 3551 §4.5 asks 10-60)
        bytes([0xA0]) + good[1:-1] + b"\xff",  # padding count larger than the payload
    ]
    for i, pkt in enumerate(bad):
        eng.receive(a, pkt, ADDR[0], i)
    eng.receive(a, good, ADDR[0], 20)
    assert eng.stats(a).bad == len(bad)
    assert eng.stats(a).packets_in == 1 + 1  # the good one and the long packet (counted, then rejected)
    eng.receive(99, good, ADDR[0], 30)  # unknown channel: ignored
    eng.tick(40)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_receive_never_raises(data: bytes) -> None:
    eng = _FUZZ_ENGINE
    eng.receive(_FUZZ_CH, data, ADDR[0], 0)
    eng.receive(_FUZZ_CH, b"\x80\x65" + data, ADDR[0], 0)  # as a telephone-event packet


_FUZZ_ENGINE = MediaEngine(rng=random.Random(3))
_FUZZ_CH = _FUZZ_ENGINE.open_channel(Codec.PCMU, ADDR[0])


def test_rtp_timeout_reported_once_and_rearmed() -> None:
    eng = engine(rtp_timeout_ms=1000)
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    pa = Phone(eng, a, ADDR[0])
    pa.send_pcm(tone(100, 1)[0], 0)
    for now in range(0, 3000, 20):
        eng.tick(now)
    assert eng.events() == [RtpTimeout(a)]
    pa.send_pcm(tone(100, 1)[0], 3000)
    for now in range(3000, 3500, 20):
        eng.tick(now)
    assert eng.events() == []
    eng.set_direction(a, Direction.INACTIVE)  # not expecting media: no timeout
    for now in range(3500, 6000, 20):
        eng.tick(now)
    assert eng.events() == []


def test_loss_and_stats() -> None:
    eng = engine(relay=False)
    a, b = (eng.open_channel(Codec.PCMU, ADDR[i]) for i in range(2))
    pa, _pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1])
    eng.bridge(a, b)
    sig = tone(1000, 50)
    for k in range(50):
        if k % 10 != 5:
            pa.send_pcm(sig[k], k * 20)
        else:
            pa.seq += 1
            pa.ts += F
        eng.tick(k * 20)
    for k in range(50, 55):
        eng.tick(k * 20)
    s = eng.stats(a)
    assert s.lost == 5 and s.packets_in == 45 and s.late == 0


def test_many_channels_grow_by_doubling() -> None:
    eng = engine(capacity=2, relay=False)
    chans = [eng.open_channel(Codec.PCMU, (f"192.0.2.{i % 250 + 1}", 10000 + i)) for i in range(40)]
    assert eng.capacity >= 40 and eng.channel_count == 40
    for i in range(0, 40, 2):
        eng.bridge(chans[i], chans[i + 1])
    phones = [Phone(eng, ch, (f"192.0.2.{i % 250 + 1}", 10000 + i)) for i, ch in enumerate(chans)]
    sig = {ch: tone(500 + 25 * i, 20) for i, ch in enumerate(chans)}
    run(eng, phones, sig, 20)
    for i in range(0, 40, 2):
        assert abs(dominant(phones[i].audio()[-10 * F :]) - (500 + 25 * (i + 1))) < 15
    eng.close_channel(chans[3])
    assert eng.open_channel(Codec.PCMA, None) == chans[3]  # the freed slot is reused


class FakeSink:
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.closed = False

    def write(self, frames: np.ndarray) -> None:
        self.frames.append(frames.copy())

    def close(self) -> None:
        self.closed = True


def test_recording_stereo_and_mono() -> None:
    sinks: dict[str, tuple[FakeSink, int]] = {}

    def factory(path: object, channels: int) -> FakeSink:
        sink = FakeSink()
        sinks[str(path)] = (sink, channels)
        return sink

    eng = engine(recorder_factory=factory)
    a, b = (eng.open_channel(Codec.PCMU, ADDR[i]) for i in range(2))
    pa, pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1])
    eng.bridge(a, b)
    r1 = eng.record([a, b], "call.wav", stereo=True)
    eng.record([a, b], "mono.wav", stereo=False)
    assert not eng.relaying(a)
    run(eng, [pa, pb], {a: tone(1000, 40), b: tone(400, 40)}, 40)
    st_sink, nch = sinks["call.wav"]
    assert nch == 2
    stereo = np.concatenate(st_sink.frames)
    assert stereo.shape == (40 * F, 2)
    assert abs(dominant(stereo[-20 * F :, 0]) - 1000) < 5
    assert abs(dominant(stereo[-20 * F :, 1]) - 400) < 5
    mono = np.concatenate(sinks["mono.wav"][0].frames)
    assert mono.shape == (40 * F,)
    _bins_present(mono[-20 * F :], [1000, 400], [])
    eng.stop_record(r1)
    assert st_sink.closed
    with pytest.raises(MediaConfigError):
        eng.record([a], "x.wav", stereo=True)


def test_recording_what_a_channel_hears_includes_prompts() -> None:
    """A caller's view: left what it says, right what it hears — the other party, then a prompt over the mix."""
    sinks: dict[str, FakeSink] = {}

    def factory(path: object, channels: int) -> FakeSink:
        sinks[str(path)] = FakeSink()
        return sinks[str(path)]

    eng = engine(recorder_factory=factory)
    a, b = (eng.open_channel(Codec.PCMU, ADDR[i]) for i in range(2))
    pa, pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1])
    eng.bridge(a, b)
    eng.record([a], "view.wav", stereo=True, heard=[a])
    run(eng, [pa, pb], {a: tone(1000, 30), b: tone(400, 30)}, 30)
    eng.play(a, PromptPlayer(tone(1800, 30).reshape(-1)), mix=False)  # a prompt replaces what a hears
    run(eng, [pa, pb], {a: tone(1000, 30, start=30), b: tone(400, 30, start=30)}, 30, t0=600)
    view = np.concatenate(sinks["view.wav"].frames)
    assert abs(dominant(view[10 * F:30 * F, 0]) - 1000) < 5  # a says
    assert abs(dominant(view[10 * F:30 * F, 1]) - 400) < 5  # a hears b
    assert abs(dominant(view[-20 * F:, 1]) - 1800) < 5  # a hears the prompt
    with pytest.raises(MediaConfigError):
        eng.record([a, b], "x.wav", stereo=True, heard=[a])


def test_api_validation() -> None:
    eng = engine()
    with pytest.raises(MediaConfigError):
        eng.open_channel(Codec.PCMU, None, ptime_ms=30)
    with pytest.raises(MediaConfigError):
        eng.close_channel(5)
    a = eng.open_channel(Codec.PCMU, None, telephone_event_pt=None)
    with pytest.raises(MediaConfigError):
        eng.send_dtmf(a, "1")
    with pytest.raises(MediaConfigError):
        eng.destroy(12345)
    assert eng.direction(a) is Direction.SENDRECV
    assert eng.next_deadline() == 0
    eng.tick(100)
    assert eng.next_deadline() == 120
    assert eng.outgoing() == []  # no remote address yet: nothing to send


def test_nothing_is_sent_toward_a_leg_whose_peer_is_silent() -> None:
    """Audio goes only where something plays: a leg bridged to a phone that sends no RTP gets no packets (not
    50 a second of our silence); it gets them again, a talkspurt marked, when its peer speaks."""
    eng = engine(relay=False)
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    b = eng.open_channel(Codec.PCMU, ADDR[1])
    pa, pb = Phone(eng, a, ADDR[0]), Phone(eng, b, ADDR[1])
    eng.bridge(a, b)
    now = run(eng, [pa, pb], {a: tone(1000, 50)}, 50)  # only A talks, for 1 s
    assert len(pb.received) >= 45  # B hears A
    assert len(pa.received) <= 5  # A hears nothing but the first ticks' concealment of B (never started)
    pa.received.clear()
    pb.received.clear()
    now = run(eng, [pa, pb], {b: tone(400, 20)}, 20, t0=now + 20)  # now B talks, A is quiet
    assert len(pa.received) >= 15 and pa.received[0].marker and not any(q.marker for q in pa.received[1:])
    assert abs(dominant(pa.audio()) - 400) < 10
    # when A stopped, B kept hearing A's fading concealment for MAX_CONCEAL_FRAMES ticks, then nothing
    assert len(pb.received) <= 6
    seqs = [q.sequence for q in pa.received]
    assert all((y - x) & 0xFFFF == 1 for x, y in itertools.pairwise(seqs))
    pa.received.clear()
    pb.received.clear()
    run(eng, [pa, pb], {}, 30, t0=now + 20)  # nobody talks
    assert len(pa.received) <= 6 and len(pb.received) <= 6
    pa.received.clear()
    eng.play(a, PromptPlayer(tone(700, 10).ravel()))  # something plays to A: A gets packets again
    run(eng, [pa, pb], {}, 10, t0=now + 1000)
    assert len(pa.received) >= 9


def test_a_lone_channel_hears_a_player_only_while_it_plays() -> None:
    eng = engine()
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    pa = Phone(eng, a, ADDR[0])
    run(eng, [pa], {}, 20)
    assert pa.received == []  # open, nothing plays: nothing sent
    eng.play(a, PromptPlayer(tone(500, 15).ravel()))
    run(eng, [pa], {}, 30, t0=1000)
    assert 14 <= len(pa.received) <= 16 and pa.received[0].marker


def test_an_idle_engine_wakes_its_driver_and_restarts_its_clocks_on_the_first_channel() -> None:
    """A driver may stop ticking an idle engine (no channel, no recording); the first channel opened afterwards
    calls ``on_wake`` (once), and its silence and first RTCP report count from the next tick, not from the last
    tick before the pause (an RTP timeout at once, for a call that just started, was the risk)."""
    eng = engine(rtp_timeout_ms=1000)
    woken: list[int] = []
    eng.on_wake = lambda: woken.append(eng.ticks)
    assert eng.idle
    a = eng.open_channel(Codec.PCMU, ADDR[0])
    assert woken == [0] and not eng.idle
    for now in range(0, 200, 20):
        eng.tick(now)
    eng.close_channel(a)
    eng.tick(200)
    assert eng.idle
    eng.outgoing_rtcp()
    eng.events()
    b = eng.open_channel(Codec.PCMU, ADDR[1])  # an hour later, the engine not ticked meanwhile
    c = eng.open_channel(Codec.PCMU, ADDR[2])
    assert woken == [0, 11]  # the second channel found it busy
    hour = 3_600_000
    eng.tick(hour)
    assert eng.events() == [] and eng.outgoing_rtcp() == []
    for now in range(hour + 20, hour + 1000, 20):
        eng.tick(now)
    assert eng.events() == []
    for now in range(hour + 1000, hour + 1100, 20):
        eng.tick(now)
    assert sorted(e.channel for e in eng.events() if isinstance(e, RtpTimeout)) == [b, c]


def test_an_idle_tick_does_nothing_but_count() -> None:
    eng = engine()
    eng.tick(0)
    eng.tick(20)
    assert eng.ticks == 2 and eng.idle
    assert eng.outgoing() == [] and eng.outgoing_rtcp() == [] and eng.events() == []
