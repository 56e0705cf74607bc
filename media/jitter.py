"""Adaptive jitter buffer for one inbound RTP audio stream (RFC 3550 timing).

Packets are stored in a fixed-size ring indexed by the extended sequence number modulo the ring size, so
``push`` and ``pop`` are O(1) with no sorting. Playout is sequence-driven: the engine calls :meth:`pop`
once per frame tick and gets the payload due for that frame, or ``None`` when the frame is missing (the
engine conceals it) or while the buffer is still filling.

Timing rules (why the buffer behaves the way it does):

- Sequence numbers are extended to 32+ bits as in RFC 3550 §A.1 so wrap-around at 65535 is invisible.
- Interarrival jitter is the RFC 3550 §6.4.1 / §A.8 estimator ``J += (|D| - J) / 16`` in timestamp units.
- The playout delay (``depth_ms``) is chosen as ``JITTER_DEPTH_FACTOR`` times the measured jitter, rounded up
  to whole frames and clamped to ``[min_ms, max_ms]``. A new delay takes effect only when playout (re)starts:
  at the start of the stream, after an underrun (the sender went silent, e.g. silence suppression per
  RFC 3551 §4.1 where the sequence number continues but the timestamp jumps, or a marker bit), so audio is
  never cut in the middle of a talkspurt. A late packet raises the target by one frame immediately, by
  holding playout for one tick (one concealed frame).
- ``lost`` follows RFC 3550 §6.4.1: a frame missing at its playout time counts as lost, and a packet that
  arrives after its playout time counts as ``late`` and is taken back out of ``lost`` (it was received).
- An SSRC change (a new source, RFC 3550 §8.2) or a sequence jump wider than the ring flushes the buffer
  and restarts from the new packet.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SEQ_MOD = 1 << 16
SEQ_HALF = 1 << 15
RING_SIZE = 64  # slots; must exceed max_ms / ptime_ms plus the reorder window
RING_MASK = RING_SIZE - 1
JITTER_DEPTH_FACTOR = 4.0  # playout delay = 4 x interarrival jitter, a common rule of thumb
DEFAULT_MIN_MS = 20
DEFAULT_MAX_MS = 200
DEFAULT_INITIAL_MS = 40


@dataclass(frozen=True, slots=True)
class JitterStats:
    """Counters of one jitter buffer.

    Attributes
    ----------
    received : packets accepted or counted (including duplicates and late ones)
    duplicates : packets seen twice (dropped)
    late : packets that arrived after their playout time (dropped)
    lost : frames never received (RFC 3550 §6.4.1 cumulative lost, never negative)
    reordered : packets that arrived after a higher sequence number
    jitter_ms : RFC 3550 §A.8 interarrival jitter in milliseconds
    depth_ms : the current target playout delay in milliseconds
    ssrc_changes : resynchronisations caused by a new SSRC
    resyncs : all restarts (SSRC change or sequence jump)
    overflows : frames discarded because the buffer held more than ``max_ms``
    """

    received: int
    duplicates: int
    late: int
    lost: int
    reordered: int
    jitter_ms: float
    depth_ms: int
    ssrc_changes: int
    resyncs: int
    overflows: int


class JitterBuffer:
    """Jitter buffer for one stream; ``push`` per packet, ``pop`` per frame tick.

    Parameters
    ----------
    min_ms, max_ms : bounds of the adaptive playout delay, in milliseconds (multiples of ``ptime_ms``)
    ptime_ms : frame duration, milliseconds (one packet carries one frame)
    clock_rate : RTP timestamp rate, Hz (8000 for G.711)
    initial_ms : starting playout delay before any jitter has been measured
    """

    __slots__ = (
        "_duplicates",
        "_has_ts",
        "_highest",
        "_hold",
        "_jitter",
        "_jump_seq",
        "_late",
        "_lost",
        "_lost_seq",
        "_max_frames",
        "_min_frames",
        "_next",
        "_overflows",
        "_payload",
        "_played_any",
        "_played_seq",
        "_prefill",
        "_prev_transit",
        "_received",
        "_reordered",
        "_resyncs",
        "_slot_seq",
        "_ssrc",
        "_ssrc_changes",
        "_started",
        "_steady",
        "_target_frames",
        "_ts_per_ms",
        "clock_rate",
        "max_ms",
        "min_ms",
        "ptime_ms",
    )

    def __init__(
        self,
        *,
        min_ms: int = DEFAULT_MIN_MS,
        max_ms: int = DEFAULT_MAX_MS,
        ptime_ms: int = 20,
        clock_rate: int = 8000,
        initial_ms: int = DEFAULT_INITIAL_MS,
    ) -> None:
        if ptime_ms <= 0 or not 0 < min_ms <= max_ms:
            raise ValueError(f"bad jitter bounds min_ms={min_ms} max_ms={max_ms} ptime_ms={ptime_ms}")
        if max_ms // ptime_ms + 2 >= RING_SIZE // 2:
            raise ValueError(f"max_ms={max_ms} too deep for a ring of {RING_SIZE} frames")
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.ptime_ms = ptime_ms
        self.clock_rate = clock_rate
        self._ts_per_ms = clock_rate / 1000.0
        self._min_frames = max(1, -(-min_ms // ptime_ms))
        self._max_frames = max(self._min_frames, max_ms // ptime_ms)
        self._target_frames = min(max(-(-initial_ms // ptime_ms), self._min_frames), self._max_frames)
        self._payload: list[bytes | None] = [None] * RING_SIZE
        self._slot_seq: list[int] = [-1] * RING_SIZE
        self._played_seq: list[int] = [-1] * RING_SIZE
        self._lost_seq: list[int] = [-1] * RING_SIZE
        self._ssrc = -1
        self._started = False
        self._next = 0  # extended sequence number due at the next pop
        self._highest = -1  # highest extended sequence number stored
        self._prefill = 0  # ticks waited since playout (re)started; playing once >= target
        self._jump_seq = -1  # the sequence number that confirms a far jump
        self._played_any = False
        self._steady = False  # playing with nothing pending: pop() may take the fast path
        self._hold = 0  # extra concealed ticks requested to grow the delay
        self._jitter = 0.0  # timestamp units
        self._prev_transit = 0.0
        self._has_ts = False
        self._received = 0
        self._duplicates = 0
        self._late = 0
        self._lost = 0
        self._reordered = 0
        self._ssrc_changes = 0
        self._resyncs = 0
        self._overflows = 0

    # -- input ---------------------------------------------------------------------------------------------

    def push(
        self, seq: int, timestamp: int, ssrc: int, payload: bytes, arrival_ms: int, marker: bool = False
    ) -> None:
        """Store one packet.

        Parameters
        ----------
        seq : RTP sequence number, 0..65535
        timestamp : RTP timestamp, 0..2**32-1
        ssrc : RTP synchronisation source
        payload : the encoded frame
        arrival_ms : monotonic arrival time in milliseconds
        marker : the RTP marker bit (start of a talkspurt, RFC 3551 §4.1)
        """
        self._received += 1
        if ssrc != self._ssrc or not self._started:
            if self._started:
                self._ssrc_changes += 1
            self._restart(seq, ssrc)
            ext = self._next
        else:
            # RFC 3550 §A.1: unwrap against the highest sequence seen so far.
            delta = (seq - self._highest) & 0xFFFF
            if delta >= SEQ_HALF:
                delta -= SEQ_MOD
            ext = self._highest + delta
            if ext >= self._next + RING_SIZE or ext < self._next - RING_SIZE:
                # Far outside the window. RFC 3550 §A.1 probation: a single stray packet is dropped, two in
                # sequence mean the sender restarted its numbering, so resynchronise on the second one.
                if seq != self._jump_seq:
                    self._jump_seq = (seq + 1) & 0xFFFF
                    self._late += 1
                    return
                self._restart(seq, ssrc)
                ext = self._next
            self._jump_seq = -1

        # RFC 3550 §A.8 interarrival jitter, in timestamp units.
        transit = arrival_ms * self._ts_per_ms - timestamp
        if self._has_ts:
            d = transit - self._prev_transit
            # A timestamp jump (silence suppression, a new talkspurt) is not network jitter.
            if not marker and -4 * self.clock_rate < d < 4 * self.clock_rate:
                self._jitter += (abs(d) - self._jitter) / 16.0
        self._prev_transit = transit
        self._has_ts = True

        slot = ext & RING_MASK
        if ext < self._next and not self._played_any and self._highest - ext < RING_SIZE // 2:
            # Reordered before the first packet of the stream and nothing played yet: start earlier.
            self._next = ext
        if ext < self._next:
            if self._played_seq[slot] == ext:
                self._duplicates += 1
            else:
                self._late += 1
                if self._lost_seq[slot] == ext:
                    self._lost_seq[slot] = -1
                    self._lost -= 1
                # Playout is behind the network by at least one frame: deepen by one frame.
                if self._target_frames < self._max_frames:
                    self._target_frames += 1
                    self._hold += 1
                    self._steady = False
            return
        if self._slot_seq[slot] == ext:
            self._duplicates += 1
            return
        if ext < self._highest:
            self._reordered += 1
        else:
            self._highest = ext
        self._slot_seq[slot] = ext
        self._payload[slot] = payload

    def _restart(self, seq: int, ssrc: int) -> None:
        if self._started:
            self._resyncs += 1
        self._ssrc = ssrc
        self._started = True
        for i in range(RING_SIZE):
            self._payload[i] = None
            self._slot_seq[i] = -1
            self._played_seq[i] = -1
            self._lost_seq[i] = -1
        # Extended numbers start one cycle up so a packet reordered before the first one stays >= 0.
        self._next = SEQ_MOD + seq
        self._highest = self._next
        self._prefill = 0
        self._hold = 0
        self._steady = False
        self._jump_seq = -1
        self._played_any = False
        self._has_ts = False

    # -- output --------------------------------------------------------------------------------------------

    def pop(self) -> bytes | None:
        """Return the payload due for this frame, or ``None`` (missing or still buffering). Call once per tick."""
        if self._steady:
            # Fast path (the common case): playing, nothing to hold or trim, and the frame is here.
            nxt = self._next
            slot = nxt & RING_MASK
            if self._slot_seq[slot] == nxt and self._highest - nxt <= self._max_frames:
                self._next = nxt + 1
                self._played_seq[slot] = nxt
                return self._payload[slot]
        return self._pop_slow()

    def _pop_slow(self) -> bytes | None:
        self._steady = False
        if not self._started:
            return None
        nxt = self._next
        if self._highest < nxt:
            # Underrun: nothing buffered. The sender paused (silence suppression) or the network stalled;
            # re-buffer with a delay adapted to the jitter measured so far. Not a loss: nothing is due yet.
            self._prefill = 0
            self._hold = 0
            self._adapt()
            return None
        if self._prefill < self._target_frames:
            self._prefill += 1
            if self._prefill < self._target_frames:
                return None
        if self._hold:
            self._hold -= 1
            return None
        if self._highest - nxt >= self._max_frames + 2:
            # More than max_ms buffered (a burst after a stall): drop the oldest frames to bound the delay.
            keep_from = self._highest - self._target_frames + 1
            while nxt < keep_from:
                slot = nxt & RING_MASK
                if self._slot_seq[slot] == nxt:
                    self._payload[slot] = None
                    self._slot_seq[slot] = -1
                    self._played_seq[slot] = nxt
                    self._overflows += 1
                else:
                    self._lost_seq[slot] = nxt
                    self._lost += 1
                nxt += 1
        slot = nxt & RING_MASK
        self._next = nxt + 1
        self._played_any = True
        self._steady = True
        if self._slot_seq[slot] == nxt:
            payload = self._payload[slot]
            self._payload[slot] = None
            self._slot_seq[slot] = -1
            self._played_seq[slot] = nxt
            return payload
        self._played_seq[slot] = -1
        self._lost_seq[slot] = nxt
        self._lost += 1
        return None

    def _adapt(self) -> None:
        jitter_ms = self._jitter / self._ts_per_ms
        frames = -(-int(JITTER_DEPTH_FACTOR * jitter_ms + 0.999) // self.ptime_ms)
        self._target_frames = min(max(frames, self._min_frames), self._max_frames)

    # -- inspection ----------------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Number of frames between the playout point and the highest sequence stored (inclusive)."""
        return max(0, self._highest - self._next + 1) if self._started else 0

    @property
    def stats(self) -> JitterStats:
        """A snapshot of the counters."""
        return JitterStats(
            received=self._received,
            duplicates=self._duplicates,
            late=self._late,
            lost=self._lost,
            reordered=self._reordered,
            jitter_ms=self._jitter / self._ts_per_ms,
            depth_ms=self._target_frames * self.ptime_ms,
            ssrc_changes=self._ssrc_changes,
            resyncs=self._resyncs,
            overflows=self._overflows,
        )


class JitterStore:
    """The jitter buffers of many channels in one struct of arrays, popped for all channels at once.

    Same algorithm and statistics as :class:`JitterBuffer` (RFC 3550 §A.1 sequence extension, §A.8 jitter,
    §6.4.1 loss; see the module docstring), laid out for the media engine's tick: :meth:`push` stays a
    per-packet Python call on plain lists, while :meth:`pop_rows` takes the steady-state frame of every
    channel with a few vector operations and falls back to the per-channel logic only for the channels that
    are filling, holding, trimming or missing their frame.

    The ring of channel ``ch`` occupies flat slots ``ch * RING_SIZE .. ch * RING_SIZE + RING_SIZE - 1``:
    ``slot_seq`` (``ndarray, shape (capacity * RING_SIZE,), int64``) holds the extended sequence number stored
    in each slot (-1 when empty) and the payloads are in a flat list beside it. A slot keeps its number after
    the frame is played (or dropped by an overflow trim), which is how a later copy of that packet is told to
    be a duplicate rather than late (:class:`JitterBuffer` keeps a separate ``played`` ring for that).

    Parameters
    ----------
    capacity : number of channels (rows); :meth:`grow` enlarges it
    min_ms, max_ms, ptime_ms, clock_rate, initial_ms : as for :class:`JitterBuffer`, shared by all rows
    """

    __slots__ = (
        "_base",
        "_capacity",
        "_duplicates",
        "_has_ts",
        "_highest",
        "_hold",
        "_initial_frames",
        "_jitter",
        "_jump_seq",
        "_late",
        "_lost",
        "_lost_seq",
        "_max_frames",
        "_min_frames",
        "_next",
        "_overflows",
        "_payload",
        "_played_any",
        "_prefill",
        "_prev_transit",
        "_received",
        "_received_src",
        "_reordered",
        "_resyncs",
        "_slot_seq",
        "_ssrc",
        "_ssrc_changes",
        "_started",
        "_steady",
        "_target_frames",
        "_ts_per_ms",
        "clock_rate",
        "max_ms",
        "min_ms",
        "ptime_ms",
    )

    def __init__(
        self,
        capacity: int,
        *,
        min_ms: int = DEFAULT_MIN_MS,
        max_ms: int = DEFAULT_MAX_MS,
        ptime_ms: int = 20,
        clock_rate: int = 8000,
        initial_ms: int = DEFAULT_INITIAL_MS,
    ) -> None:
        if ptime_ms <= 0 or not 0 < min_ms <= max_ms:
            raise ValueError(f"bad jitter bounds min_ms={min_ms} max_ms={max_ms} ptime_ms={ptime_ms}")
        if max_ms // ptime_ms + 2 >= RING_SIZE // 2:
            raise ValueError(f"max_ms={max_ms} too deep for a ring of {RING_SIZE} frames")
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.ptime_ms = ptime_ms
        self.clock_rate = clock_rate
        self._ts_per_ms = clock_rate / 1000.0
        self._min_frames = max(1, -(-min_ms // ptime_ms))
        self._max_frames = max(self._min_frames, max_ms // ptime_ms)
        self._initial_frames = min(max(-(-initial_ms // ptime_ms), self._min_frames), self._max_frames)
        self._capacity = 0
        self._slot_seq: npt.NDArray[np.int64] = np.full(0, -1, dtype=np.int64)
        self._payload: list[bytes | None] = []
        self._lost_seq: list[int] = []
        self._ssrc: list[int] = []
        self._started: list[bool] = []
        self._next: list[int] = []
        self._highest: list[int] = []
        self._prefill: list[int] = []
        self._jump_seq: list[int] = []
        self._played_any: list[bool] = []
        self._steady: list[bool] = []
        self._hold: list[int] = []
        self._jitter: list[float] = []
        self._prev_transit: list[float] = []
        self._has_ts: list[bool] = []
        self._target_frames: list[int] = []
        self._received: list[int] = []
        self._duplicates: list[int] = []
        self._late: list[int] = []
        self._lost: list[int] = []
        self._reordered: list[int] = []
        self._ssrc_changes: list[int] = []
        self._resyncs: list[int] = []
        self._overflows: list[int] = []
        self._base: list[int] = []  # extended sequence number of the current source's first packet
        self._received_src: list[int] = []  # packets accepted from the current source (RFC 3550 §A.3)
        self.grow(capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    def grow(self, capacity: int) -> None:
        """Enlarge to ``capacity`` rows (new rows are reset; existing rows keep their state)."""
        extra = capacity - self._capacity
        if extra <= 0:
            return
        self._slot_seq = np.concatenate([self._slot_seq, np.full(extra * RING_SIZE, -1, dtype=np.int64)])
        self._payload.extend([None] * (extra * RING_SIZE))
        self._lost_seq.extend([-1] * (extra * RING_SIZE))
        for name in (
            "_ssrc", "_next", "_highest", "_prefill", "_jump_seq", "_hold", "_received", "_duplicates", "_late",
            "_lost", "_reordered", "_ssrc_changes", "_resyncs", "_overflows", "_base", "_received_src",
        ):  # fmt: skip
            getattr(self, name).extend([0] * extra)
        for name in ("_started", "_played_any", "_steady", "_has_ts"):
            getattr(self, name).extend([False] * extra)
        self._jitter.extend([0.0] * extra)
        self._prev_transit.extend([0.0] * extra)
        self._target_frames.extend([0] * extra)
        old = self._capacity
        self._capacity = capacity
        for ch in range(old, capacity):
            self.reset(ch)

    def reset(self, ch: int) -> None:
        """Forget everything about row ``ch`` (a new channel, or back from the relay path)."""
        base = ch * RING_SIZE
        self._slot_seq[base : base + RING_SIZE] = -1
        self._payload[base : base + RING_SIZE] = [None] * RING_SIZE
        self._lost_seq[base : base + RING_SIZE] = [-1] * RING_SIZE
        self._ssrc[ch] = -1
        self._started[ch] = False
        self._next[ch] = 0
        self._highest[ch] = -1
        self._prefill[ch] = 0
        self._jump_seq[ch] = -1
        self._played_any[ch] = False
        self._steady[ch] = False
        self._hold[ch] = 0
        self._jitter[ch] = 0.0
        self._prev_transit[ch] = 0.0
        self._has_ts[ch] = False
        self._target_frames[ch] = self._initial_frames
        self._base[ch] = 0
        self._received_src[ch] = 0
        for counters in (
            self._received, self._duplicates, self._late, self._lost, self._reordered, self._ssrc_changes,
            self._resyncs, self._overflows,
        ):  # fmt: skip
            counters[ch] = 0

    # -- input ---------------------------------------------------------------------------------------------

    def push(
        self, ch: int, seq: int, timestamp: int, ssrc: int, payload: bytes, arrival_ms: int, marker: bool = False
    ) -> None:
        """Store one packet of row ``ch`` (parameters as :meth:`JitterBuffer.push`)."""
        self._received[ch] += 1
        if ssrc != self._ssrc[ch] or not self._started[ch]:
            if self._started[ch]:
                self._ssrc_changes[ch] += 1
            self._restart(ch, seq, ssrc)
            ext = self._next[ch]
        else:
            # RFC 3550 §A.1: unwrap against the highest sequence seen so far.
            highest = self._highest[ch]
            delta = (seq - highest) & 0xFFFF
            if delta >= SEQ_HALF:
                delta -= SEQ_MOD
            ext = highest + delta
            nxt = self._next[ch]
            if ext >= nxt + RING_SIZE or ext < nxt - RING_SIZE:
                # RFC 3550 §A.1 probation: one stray packet is dropped, two in sequence resynchronise.
                if seq != self._jump_seq[ch]:
                    self._jump_seq[ch] = (seq + 1) & 0xFFFF
                    self._late[ch] += 1
                    return
                self._restart(ch, seq, ssrc)
                ext = self._next[ch]
            self._jump_seq[ch] = -1
        self._received_src[ch] += 1

        # RFC 3550 §A.8 interarrival jitter, in timestamp units.
        transit = arrival_ms * self._ts_per_ms - timestamp
        if self._has_ts[ch]:
            d = transit - self._prev_transit[ch]
            # A timestamp jump (silence suppression, a new talkspurt) is not network jitter.
            if not marker and -4 * self.clock_rate < d < 4 * self.clock_rate:
                self._jitter[ch] += (abs(d) - self._jitter[ch]) / 16.0
        self._prev_transit[ch] = transit
        self._has_ts[ch] = True

        flat = ch * RING_SIZE + (ext & RING_MASK)
        if ext < self._next[ch] and not self._played_any[ch] and self._highest[ch] - ext < RING_SIZE // 2:
            self._next[ch] = ext  # reordered before the first packet and nothing played yet: start earlier
        if ext < self._base[ch]:
            self._base[ch] = ext
        stored = int(self._slot_seq[flat])
        if ext < self._next[ch]:
            if stored == ext:
                self._duplicates[ch] += 1  # played (or trimmed) already
            else:
                self._late[ch] += 1
                if self._lost_seq[flat] == ext:
                    self._lost_seq[flat] = -1
                    self._lost[ch] -= 1
                if self._target_frames[ch] < self._max_frames:
                    self._target_frames[ch] += 1
                    self._hold[ch] += 1
                    self._steady[ch] = False
            return
        if stored == ext:
            self._duplicates[ch] += 1
            return
        if ext < self._highest[ch]:
            self._reordered[ch] += 1
        else:
            self._highest[ch] = ext
        self._slot_seq[flat] = ext
        self._payload[flat] = payload

    def _restart(self, ch: int, seq: int, ssrc: int) -> None:
        if self._started[ch]:
            self._resyncs[ch] += 1
        self._ssrc[ch] = ssrc
        self._started[ch] = True
        base = ch * RING_SIZE
        self._slot_seq[base : base + RING_SIZE] = -1
        self._payload[base : base + RING_SIZE] = [None] * RING_SIZE
        self._lost_seq[base : base + RING_SIZE] = [-1] * RING_SIZE
        # Extended numbers start one cycle up so a packet reordered before the first one stays >= 0.
        self._next[ch] = SEQ_MOD + seq
        self._highest[ch] = SEQ_MOD + seq
        self._base[ch] = SEQ_MOD + seq
        self._received_src[ch] = 0
        self._prefill[ch] = 0
        self._hold[ch] = 0
        self._steady[ch] = False
        self._jump_seq[ch] = -1
        self._played_any[ch] = False
        self._has_ts[ch] = False

    # -- output --------------------------------------------------------------------------------------------

    def next_sequence(self, ch: int) -> int | None:
        """The 16-bit sequence number of the frame row ``ch`` plays next, None before its first packet."""
        return self._next[ch] & 0xFFFF if self._started[ch] else None

    def pop_rows(self, rows: npt.NDArray[np.intp]) -> tuple[npt.NDArray[np.intp], bytes]:
        """Take the frame due now from every row in ``rows`` (once per tick).

        Parameters
        ----------
        rows : ndarray, shape (k,), intp
            The rows to play out, ascending.

        Returns
        -------
        got : ndarray, shape (m,), intp
            The rows (a subsequence of `rows`) that have a frame; the others are missing or buffering.
        payloads : bytes
            The ``m`` payloads concatenated in the order of `got`.
        """
        if rows.size == 0:
            return rows, b""
        k = rows.size
        dense = int(rows[-1]) == k - 1  # rows 0..k-1 (rows are ascending and unique): slices instead of gathers
        if dense:
            nxt = np.array(self._next[:k], dtype=np.int64)
            steady = np.array(self._steady[:k], dtype=bool)
            highest = np.array(self._highest[:k], dtype=np.int64)
        else:
            rows_l: list[int] = rows.tolist()
            nxt = np.array([self._next[r] for r in rows_l], dtype=np.int64)
            steady = np.array([self._steady[r] for r in rows_l], dtype=bool)
            highest = np.array([self._highest[r] for r in rows_l], dtype=np.int64)
        flat = rows * RING_SIZE + (nxt & RING_MASK)
        # The steady state of JitterBuffer.pop for all rows at once: playing, nothing held, frame present,
        # no more than max_frames queued behind it.
        fast = steady & (self._slot_seq[flat] == nxt) & (highest - nxt <= self._max_frames)
        if fast.all():
            got = rows
            picked = flat
            if dense:
                self._next[:k] = (nxt + 1).tolist()
            else:
                next_l = self._next
                for r in rows_l:
                    next_l[r] += 1
        else:
            slow_at = np.flatnonzero(~fast)
            chosen = flat.copy()
            chosen[slow_at] = [self._pop_slow(r) for r in rows[slow_at].tolist()]
            keep = chosen >= 0
            got = rows[keep]
            picked = chosen[keep]
            next_l = self._next
            for r in rows[fast].tolist():
                next_l[r] += 1
        if picked.size == 0:
            return got, b""
        if picked.size == 1:
            return got, self._payload[int(picked[0])] or b""
        # A played slot keeps its payload until a packet 64 frames later overwrites it, so one gather after
        # the slow path serves both paths.
        return got, b"".join(operator.itemgetter(*picked.tolist())(self._payload))

    def pop(self, ch: int) -> bytes | None:
        """The frame due now for row ``ch`` alone (what :meth:`pop_rows` does for one row)."""
        got, data = self.pop_rows(np.array([ch], dtype=np.intp))
        return data if got.size else None

    def _pop_slow(self, ch: int) -> int:
        """:meth:`JitterBuffer._pop_slow` for row ``ch``: the flat slot of the frame to play, or -1."""
        self._steady[ch] = False
        if not self._started[ch]:
            return -1
        nxt = self._next[ch]
        highest = self._highest[ch]
        if highest < nxt:
            # Underrun: the sender paused or the network stalled; re-buffer with an adapted delay.
            self._prefill[ch] = 0
            self._hold[ch] = 0
            self._adapt(ch)
            return -1
        if self._prefill[ch] < self._target_frames[ch]:
            self._prefill[ch] += 1
            if self._prefill[ch] < self._target_frames[ch]:
                return -1
        if self._hold[ch]:
            self._hold[ch] -= 1
            return -1
        base = ch * RING_SIZE
        slot_seq = self._slot_seq
        if highest - nxt >= self._max_frames + 2:
            # More than max_ms buffered (a burst after a stall): drop the oldest frames to bound the delay.
            keep_from = highest - self._target_frames[ch] + 1
            while nxt < keep_from:
                flat = base + (nxt & RING_MASK)
                if slot_seq[flat] == nxt:
                    self._payload[flat] = None
                    self._overflows[ch] += 1
                else:
                    self._lost_seq[flat] = nxt
                    self._lost[ch] += 1
                nxt += 1
        flat = base + (nxt & RING_MASK)
        self._next[ch] = nxt + 1
        self._played_any[ch] = True
        self._steady[ch] = True
        if slot_seq[flat] == nxt:
            return flat
        self._lost_seq[flat] = nxt
        self._lost[ch] += 1
        return -1

    def _adapt(self, ch: int) -> None:
        jitter_ms = self._jitter[ch] / self._ts_per_ms
        frames = -(-int(JITTER_DEPTH_FACTOR * jitter_ms + 0.999) // self.ptime_ms)
        self._target_frames[ch] = min(max(frames, self._min_frames), self._max_frames)

    # -- inspection ----------------------------------------------------------------------------------------

    def buffered(self, ch: int) -> int:
        """Frames between row ``ch``'s playout point and the highest sequence stored (inclusive)."""
        return max(0, self._highest[ch] - self._next[ch] + 1) if self._started[ch] else 0

    def reception(self, ch: int) -> tuple[int, int, int, int, int] | None:
        """What an RTCP reception report (RFC 3550 §6.4.1, §A.3) says about row ``ch``'s current source.

        Returns
        -------
        tuple or None
            ``(ssrc, extended_highest_sequence, expected, received, jitter)`` with the jitter in timestamp
            units, or None before the first packet. Extended numbers count cycles from the source's first
            packet (RFC 3550 §A.1).
        """
        if not self._started[ch]:
            return None
        highest = self._highest[ch]
        return (
            self._ssrc[ch],
            (highest - SEQ_MOD) & 0xFFFFFFFF,
            highest - self._base[ch] + 1,
            self._received_src[ch],
            int(self._jitter[ch]),
        )

    def stats(self, ch: int) -> JitterStats:
        """A snapshot of row ``ch``'s counters."""
        return JitterStats(
            received=self._received[ch],
            duplicates=self._duplicates[ch],
            late=self._late[ch],
            lost=self._lost[ch],
            reordered=self._reordered[ch],
            jitter_ms=self._jitter[ch] / self._ts_per_ms,
            depth_ms=self._target_frames[ch] * self.ptime_ms,
            ssrc_changes=self._ssrc_changes[ch],
            resyncs=self._resyncs[ch],
            overflows=self._overflows[ch],
        )
