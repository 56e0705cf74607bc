"""JitterStore (the engine's multi-channel jitter buffer) against JitterBuffer, the single-stream reference.

The store must make exactly the same playout decisions and keep exactly the same statistics as one
JitterBuffer per row, whatever the input: shuffled, duplicated, lost, late, SSRC changes, sequence jumps.
"""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.media.jitter import JitterBuffer, JitterStore

PT = 20
TS = 160


def _payload(row: int, i: int) -> bytes:
    return bytes([row]) + i.to_bytes(4, "big")


def _arrivals(rnd: random.Random, n: int, start_seq: int, window: int, p_loss: float, p_dup: float,
              ssrc_change_at: int | None, jump_at: int | None,
              stall: bool = False) -> dict[int, list[tuple[int, int, int]]]:
    """tick -> [(index, seq, ssrc)]: packet i sent at tick i, delayed 0..window ticks, some lost/duplicated;
    with ``stall`` packets 20..44 are held and delivered in one burst and 50..74 arrive early (overflow
    trimming both after an underrun and while playing)."""
    out: dict[int, list[tuple[int, int, int]]] = {}
    for i in range(n):
        if rnd.random() < p_loss:
            continue
        ssrc = 2 if ssrc_change_at is not None and i >= ssrc_change_at else 1
        seq = start_seq + i + (5000 if jump_at is not None and i >= jump_at else 0)
        copies = 2 if rnd.random() < p_dup else 1
        for _ in range(copies):
            if stall and 20 <= i < 45:
                at = 45  # held by the network, then a burst
            elif stall and 50 <= i < 75:
                at = 40  # ahead of time (a sender clock running fast): more than max_ms queued while playing
            else:
                at = i + rnd.randint(0, window)
            out.setdefault(at, []).append((i, seq & 0xFFFF, ssrc))
    for lst in out.values():
        rnd.shuffle(lst)
    return out


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(0, 2**16 - 1),
    st.integers(0, 6),
    st.floats(0.0, 0.3),
    st.floats(0.0, 0.3),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_store_matches_one_jitter_buffer_per_row(
    rows: int, start_seq: int, window: int, p_loss: float, p_dup: float, ssrc_change: bool, jump: bool,
    stall: bool, rnd: random.Random,
) -> None:
    n = 90
    ticks = n + 30
    store = JitterStore(rows)
    refs = [JitterBuffer() for _ in range(rows)]
    plans = [
        _arrivals(rnd, n, (start_seq + 977 * r) & 0xFFFF, window, p_loss, p_dup,
                  60 if ssrc_change else None, 70 if jump else None, stall)
        for r in range(rows)
    ]
    active = np.arange(rows, dtype=np.intp)
    for t in range(ticks):
        for r in range(rows):
            for idx, seq, ssrc in plans[r].get(t, []):
                arrival = t * PT + rnd.randint(0, PT - 1)
                store.push(r, seq, (idx * TS) & 0xFFFFFFFF, ssrc, _payload(r, idx), arrival, False)
                refs[r].push(seq, (idx * TS) & 0xFFFFFFFF, ssrc, _payload(r, idx), arrival, False)
        expected = [ref.pop() for ref in refs]
        got, data = store.pop_rows(active)
        assert got.tolist() == [r for r in range(rows) if expected[r] is not None]
        assert data == b"".join(p for p in expected if p is not None)
    for r in range(rows):
        assert store.stats(r) == refs[r].stats
        assert store.buffered(r) == refs[r].buffered


def test_store_in_order_stream_and_subset_of_rows() -> None:
    store = JitterStore(4)
    for t in range(30):
        for r in (1, 3):
            store.push(r, (65530 + t) & 0xFFFF, t * TS, 9, _payload(r, t), t * PT)
        got, data = store.pop_rows(np.array([1, 3], dtype=np.intp))
        if t == 0:
            assert got.size == 0  # still filling to the initial 40 ms depth
        else:
            assert got.tolist() == [1, 3]
            assert data == _payload(1, t - 1) + _payload(3, t - 1)
    assert store.stats(1).lost == 0 and store.stats(1).received == 30
    assert store.stats(0).received == 0


def test_store_reset_and_grow_keep_other_rows() -> None:
    store = JitterStore(1)
    for t in range(5):
        store.push(0, t, t * TS, 1, _payload(0, t), t * PT)
        store.pop(0)
    store.grow(3)
    assert store.capacity == 3
    assert store.stats(0).received == 5 and store.stats(2).received == 0
    store.reset(0)
    assert store.stats(0).received == 0 and store.buffered(0) == 0
    assert store.pop(0) is None
