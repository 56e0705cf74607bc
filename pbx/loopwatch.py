"""How late the server's event loop runs what falls due, and how long Python's cyclic collector stops it.

Everything the server does (SIP answers, timers, call control) runs on one event loop, so whatever holds the
loop (a long callback, a batch, a collection of the cyclic garbage collector) delays every answer due meanwhile:
that is the post-dial delay a caller hears under load, and what the benchmarks' p99 response time measures from
outside. :class:`LoopWatch` measures it from inside, all the time, at negligible cost:

- a **probe** due every ``interval_s`` (20 ms) records how late it ran: a sample of the wait a timer or an
  answer due at a random moment has on top of its own work (``ccpbx_loop_lag_seconds`` in ``/metrics``). At
  rest (``activity()``, the server's count of SIP messages, unchanged for ``rest_after_s``) the probe comes every
  ``rest_interval_s`` (100 ms) instead: a wake-up of an idle process costs ~0.1 ms of CPU on a virtual machine,
  and 50 of them a second were most of what an idle server spent. The first message after a rest brings the
  20 ms probe back at the next one;
- ``gc.callbacks`` time every **collection** (``ccpbx_gc_pause_seconds``; the seconds by generation too): the
  loop stands still meanwhile, whichever thread started it;
- a probe ``stall_s`` (250 ms) or more late is counted (``ccpbx_loop_stalls``) and logged as ``loop.stalled``,
  with the collector's share of the delay, which tells a collection from code that held the loop.

The bookkeeping (:meth:`LoopWatch.observe_lateness`, :meth:`LoopWatch.gc_phase`) is pure and takes the clock's
readings; :meth:`LoopWatch.start` and :meth:`LoopWatch.stop` are the asyncio edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Mapping, Sequence

from ccpbx.media.transport import TickDurations
from ccpbx.pbx.log import get_logger

__all__ = ["LAG_BUCKETS_S", "PROBE_INTERVAL_S", "REST_AFTER_S", "REST_INTERVAL_S", "STALL_S", "LoopWatch",
           "PeriodicGcHook", "quantile_bound"]

log = get_logger(__name__)

PROBE_INTERVAL_S = 0.02  # 50 probes a second: a few microseconds each, and a wake-up when idle otherwise
REST_INTERVAL_S = 0.1  # at rest: a stall of 350 ms or more is still seen as one (250 ms late at least)
REST_AFTER_S = 1.0  # no SIP message for this long: at rest
STALL_S = 0.25  # a probe at least this late is a stall: counted and logged
# upper bounds of the lateness and pause histograms; below 2 ms is the timers' own granularity (uvloop's clock
# counts whole milliseconds)
LAG_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def quantile_bound(cumulative: Sequence[tuple[float, float]], q: float) -> float | None:
    """The smallest bound of cumulative histogram buckets ``(upper bound, count)``, the last ``inf``, within which
    a fraction ``q`` of the counted values fall; None when nothing was counted."""
    total = cumulative[-1][1] if cumulative else 0
    if total <= 0:
        return None
    return next(bound for bound, count in cumulative if count >= q * total)


class PeriodicGcHook:
    """A callback due on the running loop every :meth:`next_interval` seconds (``interval_s`` unless a subclass
    says otherwise; :meth:`on_tick`) and a ``gc.callbacks`` entry (:meth:`gc_phase`), started and stopped
    together: the asyncio edge of :class:`LoopWatch` and of :class:`~ccpbx.pbx.gcpace.GcPacer`."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._handle: asyncio.TimerHandle | None = None

    def gc_phase(self, phase: str, info: Mapping[str, int]) -> None:
        """A ``gc.callbacks`` entry: ``"start"`` then ``"stop"`` around each collection."""

    def on_tick(self) -> None:
        """Called when due, every ``interval_s``."""

    def next_interval(self) -> float:
        """Seconds to the next tick (asked just after each tick and at the start)."""
        return self.interval_s

    def arming(self, interval_s: float) -> None:
        """Called just before the next tick is set, ``interval_s`` from now."""

    def stopped(self) -> None:
        """Called by :meth:`stop`."""

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Start on the running loop (idempotent)."""
        if self._handle is not None:
            return
        gc.callbacks.append(self.gc_phase)
        self._arm(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is None:
            return
        self._handle.cancel()
        self._handle = None
        self.stopped()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.gc_phase)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = self.next_interval()
        self.arming(interval)
        self._handle = loop.call_later(interval, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.on_tick()
        self._arm(loop)


class LoopWatch(PeriodicGcHook):
    """The event loop's lateness and the collector's pauses (see the module docstring)."""

    def __init__(self, *, interval_s: float = PROBE_INTERVAL_S, stall_s: float = STALL_S,
                 clock: Callable[[], float] = time.perf_counter, activity: Callable[[], int] | None = None,
                 rest_interval_s: float = REST_INTERVAL_S, rest_after_s: float = REST_AFTER_S) -> None:
        """``activity()``, when given, is a count that moves whenever the server has work (SIP messages read):
        unchanged for ``rest_after_s``, the probes come every ``rest_interval_s``; without it, never at rest."""
        if interval_s <= 0 or stall_s <= 0 or rest_interval_s <= 0 or rest_after_s < 0:
            raise ValueError("interval_s, stall_s and rest_interval_s must be positive, rest_after_s not negative")
        super().__init__(interval_s)
        self.stall_s = stall_s
        self.clock = clock
        self.activity = activity
        self.rest_interval_s = rest_interval_s
        self.rest_after_s = rest_after_s
        self.resting = False  # the probes come every rest_interval_s now
        self._last_activity: int | None = None
        self._active_at = 0.0  # the clock when activity() last moved
        self.lag = TickDurations(LAG_BUCKETS_S)  # probes by lateness
        self.gc_pauses = TickDurations(LAG_BUCKETS_S)  # collections by length
        self.gc_seconds_by_generation = [0.0, 0.0, 0.0]
        self.stalls = 0
        self.max_lag_s = 0.0
        self._gc_started: float | None = None
        self._gc_since_probe = 0.0  # pause seconds since the last probe: a stall's share of the collector
        self._due = 0.0

    # ---- the bookkeeping (pure: the clock's readings come in) ----------------------------------------------
    def gc_phase(self, phase: str, info: Mapping[str, int]) -> None:
        """A ``gc.callbacks`` entry: ``"start"`` then ``"stop"`` around each collection."""
        now = self.clock()
        if phase == "start":
            self._gc_started = now
            return
        started, self._gc_started = self._gc_started, None
        if started is None:  # a collection under way when the watch started
            return
        pause = max(0.0, now - started)
        self.gc_pauses.observe(pause)
        generation = info.get("generation", 2)
        if 0 <= generation < len(self.gc_seconds_by_generation):
            self.gc_seconds_by_generation[generation] += pause
        self._gc_since_probe += pause

    def observe_lateness(self, late_s: float) -> None:
        """A probe ran ``late_s`` after it was due (a negative value, the timer's rounding, counts as 0)."""
        late = max(0.0, late_s)
        self.lag.observe(late)
        gc_s, self._gc_since_probe = self._gc_since_probe, 0.0
        if late > self.max_lag_s:
            self.max_lag_s = late
        if late >= self.stall_s:
            self.stalls += 1
            log.warning("loop.stalled", late_ms=round(late * 1000, 1), gc_ms=round(min(gc_s, late) * 1000, 1),
                        hint="the event loop was held: every SIP answer and timer due meanwhile waited")

    def interval_for(self, activity: int, now: float) -> float:
        """The seconds to the next probe when ``activity()`` reads ``activity`` at ``now``: ``interval_s`` while it
        moved within ``rest_after_s``, ``rest_interval_s`` after that (:attr:`resting`)."""
        if activity != self._last_activity:
            self._last_activity = activity
            self._active_at = now
        self.resting = now - self._active_at >= self.rest_after_s
        return self.rest_interval_s if self.resting else self.interval_s

    def lag_quantile_bound(self, q: float) -> float:
        """The smallest bucket bound that at least a fraction ``q`` of the probes were within (``inf`` past
        the last bound, 0 before any probe): e.g. ``0.01`` for q = 0.99 means p99 lateness <= 10 ms."""
        bound = quantile_bound(self.lag.cumulative(), q)
        return 0.0 if bound is None else bound

    # ---- the asyncio edge (PeriodicGcHook) ------------------------------------------------------------------
    def next_interval(self) -> float:
        if self.activity is None:
            return self.interval_s
        return self.interval_for(self.activity(), self.clock())

    def arming(self, interval_s: float) -> None:
        self._due = self.clock() + interval_s

    def on_tick(self) -> None:
        self.observe_lateness(self.clock() - self._due)

    def stopped(self) -> None:
        self._gc_started = None
