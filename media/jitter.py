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

from dataclasses import dataclass

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
