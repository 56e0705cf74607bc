"""Jitter buffer: ordering, duplicates, loss, lateness, SSRC change, wrap-around, adaptive depth."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.media.jitter import JitterBuffer

PT = 20
TS = 160


def _payload(i: int) -> bytes:
    return i.to_bytes(4, "big")


def _drive(jb: JitterBuffer, arrivals: dict[int, list[tuple[int, int, int]]], ticks: int) -> list[int | None]:
    """arrivals[tick] = [(index, seq, ssrc)]; push then pop once per tick; return decoded indices."""
    out: list[int | None] = []
    for t in range(ticks):
        for idx, seq, ssrc in arrivals.get(t, []):
            jb.push(seq, (idx * TS) & 0xFFFFFFFF, ssrc, _payload(idx), t * PT)
        p = jb.pop()
        out.append(None if p is None else int.from_bytes(p, "big"))
    return out


def _played(out: list[int | None]) -> list[int]:
    return [x for x in out if x is not None]


def test_in_order_stream_plays_in_order() -> None:
    jb = JitterBuffer(min_ms=40, max_ms=200)
    arrivals = {t: [(t, t, 1)] for t in range(50)}
    out = _drive(jb, arrivals, 60)
    assert _played(out) == list(range(50))
    s = jb.stats
    assert (s.received, s.lost, s.late, s.duplicates, s.reordered) == (50, 0, 0, 0, 0)
    # The buffer holds depth_ms before the first frame plays.
    assert out[0] is None and out[1] == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16 - 1), st.integers(1, 4), st.randoms(use_true_random=False))
def test_shuffled_within_depth_comes_out_in_order_and_complete(
    start_seq: int, window: int, rnd: random.Random
) -> None:
    n = 120
    jb = JitterBuffer(min_ms=(window + 1) * PT, max_ms=200)
    # Packet i is sent at tick i and delayed by 0..window ticks (so it can overtake its neighbours).
    arrivals: dict[int, list[tuple[int, int, int]]] = {}
    for i in range(n):
        arrivals.setdefault(i + rnd.randint(0, window), []).append((i, (start_seq + i) & 0xFFFF, 7))
    for lst in arrivals.values():
        rnd.shuffle(lst)
    out = _drive(jb, arrivals, n + 20)
    assert _played(out) == list(range(n))
    assert jb.stats.lost == 0 and jb.stats.late == 0


@settings(max_examples=30, deadline=None)
@given(st.sets(st.integers(1, 98), max_size=30), st.integers(0, 2**16 - 1))
def test_lost_packets_counted_exactly(dropped: set[int], start_seq: int) -> None:
    jb = JitterBuffer(min_ms=40, max_ms=200)
    arrivals = {i: [(i, (start_seq + i) & 0xFFFF, 3)] for i in range(100) if i not in dropped}
    out = _drive(jb, arrivals, 110)
    assert _played(out) == [i for i in range(100) if i not in dropped]
    assert jb.stats.lost == len(dropped)
    assert jb.stats.received == 100 - len(dropped)


def test_duplicates_removed_and_counted() -> None:
    jb = JitterBuffer(min_ms=40, max_ms=200)
    arrivals: dict[int, list[tuple[int, int, int]]] = {t: [(t, t, 1)] for t in range(40)}
    for t in (5, 10, 11, 30):
        arrivals[t].append((t, t, 1))  # immediate duplicate (still buffered)
    arrivals[25].append((20, 20, 1))  # duplicate of an already played packet
    out = _drive(jb, arrivals, 50)
    assert _played(out) == list(range(40))
    assert jb.stats.duplicates == 5
    assert jb.stats.late == 0


def test_late_packet_dropped_counted_and_not_lost() -> None:
    jb = JitterBuffer(min_ms=40, max_ms=40)
    arrivals = {t: [(t, t, 1)] for t in range(30) if t != 10}
    arrivals[20].append((10, 10, 1))  # 10 ticks late: far outside the 40 ms depth
    out = _drive(jb, arrivals, 40)
    assert 10 not in _played(out)
    assert _played(out) == [i for i in range(30) if i != 10]
    s = jb.stats
    assert s.late == 1
    assert s.lost == 0  # it did arrive (RFC 3550 counts it received)


def test_ssrc_change_resyncs() -> None:
    jb = JitterBuffer(min_ms=40, max_ms=200)
    arrivals = {t: [(t, 1000 + t, 0xAAAA)] for t in range(20)}
    for t in range(20, 40):
        arrivals[t] = [(t, 5 + t, 0xBBBB)]  # new source, unrelated sequence numbers
    out = _drive(jb, arrivals, 50)
    played = _played(out)
    assert played[:19] == list(range(19))
    assert played[-20:] == list(range(20, 40))
    assert jb.stats.ssrc_changes == 1
    assert jb.stats.lost == 0


def test_wraparound_at_65535() -> None:
    jb = JitterBuffer(min_ms=60, max_ms=200)
    arrivals: dict[int, list[tuple[int, int, int]]] = {}
    for i in range(40):
        seq = (65520 + i) & 0xFFFF
        arrivals.setdefault(i + (1 if i % 3 == 0 else 0), []).append((i, seq, 9))
    out = _drive(jb, arrivals, 60)
    assert _played(out) == list(range(40))
    assert jb.stats.lost == 0 and jb.stats.resyncs == 0


def test_sequence_restart_needs_two_packets() -> None:
    jb = JitterBuffer(min_ms=20, max_ms=200)
    arrivals = {t: [(t, t, 1)] for t in range(10)}
    arrivals[10] = [(99, 40000, 1)]  # one stray packet far away: dropped
    arrivals[11] = [(10, 10, 1)]
    for t in range(12, 20):
        arrivals[t] = [(t, 30000 + t, 1)]  # a real restart of the numbering
    out = _drive(jb, arrivals, 25)
    played = _played(out)
    assert 99 not in played
    assert played[:11] == list(range(11))
    assert played[-7:] == list(range(13, 20))
    assert jb.stats.resyncs == 1


def test_silence_suppression_is_not_loss() -> None:
    jb = JitterBuffer(min_ms=20, max_ms=200)
    arrivals = {t: [(t, t, 1)] for t in range(10)}
    # The sender stops for 1 s; the sequence number continues, the timestamp jumps (RFC 3551 section 4.1).
    for k in range(10):
        t = 60 + k
        arrivals[t] = [(t, 10 + k, 1)]
    out: list[int | None] = []
    for t in range(80):
        for idx, seq, ssrc in arrivals.get(t, []):
            jb.push(seq, idx * TS, ssrc, _payload(idx), t * PT, marker=(seq == 10))
        p = jb.pop()
        out.append(None if p is None else int.from_bytes(p, "big"))
    assert _played(out) == list(range(10)) + list(range(60, 70))
    assert jb.stats.lost == 0
    assert jb.stats.jitter_ms < 1.0  # the jump is not counted as network jitter


def test_adaptive_depth_grows_with_jitter_and_stays_bounded() -> None:
    rnd = random.Random(5)
    jb = JitterBuffer(min_ms=20, max_ms=120)
    assert jb.stats.depth_ms == 40
    t_arr = 0.0
    for i in range(400):
        arrival = i * PT + rnd.uniform(0, 60)  # up to 60 ms of jitter
        t_arr = max(t_arr, arrival)
        jb.push(i & 0xFFFF, i * TS, 1, b"x", int(arrival))
        jb.pop()
    s = jb.stats
    assert 8.0 < s.jitter_ms < 40.0
    assert 40 <= s.depth_ms <= 120
    # Talkspurt boundary (underrun) re-adapts; the depth stays in bounds.
    for _ in range(20):
        jb.pop()
    assert 20 <= jb.stats.depth_ms <= 120


def test_bad_bounds_rejected() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(min_ms=100, max_ms=20)
    with pytest.raises(ValueError):
        JitterBuffer(min_ms=20, max_ms=2000)


def test_overflow_bounds_the_delay() -> None:
    jb = JitterBuffer(min_ms=20, max_ms=100, initial_ms=20)
    jb.push(0, 0, 1, _payload(0), 0)
    assert jb.pop() == _payload(0)
    # A burst of 20 frames at once (after a network stall): the oldest are discarded.
    for i in range(1, 21):
        jb.push(i, i * TS, 1, _payload(i), 400)
    first = jb.pop()
    assert first is not None and int.from_bytes(first, "big") > 10
    assert jb.stats.overflows > 0
    assert jb.buffered <= 100 // PT + 2
