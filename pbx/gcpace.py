"""The cyclic garbage collector, tuned for a server that keeps the last half-minute of calls.

CPython's collector starts a young collection when its allocation count (tracked objects made minus tracked
objects freed, any generation) passes a threshold. A server in a steady state frees about as many old objects
(calls that ended half a minute ago, their transactions and dialogs) as it makes new ones, so that count hovers
near zero: young collections then come only now and then, and each walks everything made since the last one
(pauses of 100-250 ms at 200 calls/s). Nothing in the count says how big the young generation has grown.

- :func:`tune_garbage_collector`, once the server is up: what start-up made leaves the collector's view
  (``gc.freeze``) and the thresholds become :data:`GC_THRESHOLDS`.
- :class:`GcPacer` collects the young generation on time as well: at each tick, when no collection ran
  meanwhile and at least ``young_min`` objects wait in it, it runs the collection CPython would have run (with
  :data:`GC_THRESHOLDS`, always a middle one, which walks the young objects and moves the survivors to the
  oldest generation: each object is walked once). Full collections stay CPython's own decision, considered once
  every ``threshold2`` middle ones and only when a quarter of the oldest generation is new.
- Its ticks come every ``interval_s`` (20 ms) under load and less often without it (:meth:`GcPacer.pace`): a
  tick that finds four times ``young_min`` objects waiting halves the wait for the next (down to
  ``interval_s``); one that finds fewer than ``young_min``, or finds that CPython's count started a collection
  meanwhile (then the count does the pacer's work), doubles it (up to ``max_interval_s``, 320 ms). An idle
  server woke 50 times a second for nothing before, at ~0.1 ms of CPU a wake-up on a virtual machine.

The decisions (:meth:`GcPacer.choose`, :meth:`GcPacer.pace`) are pure; :meth:`GcPacer.start` and :meth:`GcPacer.stop` (a
:class:`~ccpbx.pbx.loopwatch.PeriodicGcHook`) are the asyncio edge.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Mapping

from ccpbx.pbx.loopwatch import PeriodicGcHook

__all__ = ["CLASSIC_GENERATIONS", "GC_THRESHOLDS", "MAX_PACE_INTERVAL_S", "PACE_INTERVAL_S", "YOUNG_MIN", "GcPacer",
           "tune_garbage_collector"]

# The thresholds once the server is up; CPython's are (700, 10, 10).
# - a collection every 2,000 net allocations, and every 20 ms by the pacer: each looks at the few thousand
#   objects made since the last one (1-2 ms);
# - every collection is a middle one (threshold1 -1: CPython collects the middle generation when its count
#   of young collections *exceeds* threshold1, and 0 does): the middle generation stays empty, so a collection
#   walks the young objects only, and what survives it moves straight to the oldest generation. With
#   (2,000, 10, ...) an object that lived past one collection (a call in progress, a transaction waiting out
#   its timer) was walked twice: young, then again in the middle collection up to ten later (~20,000 objects,
#   12-27 ms with calls held 1 s, the longest pauses under load). The middle generation only ever freed cyclic
#   garbage made of objects that were still alive at their first collection; the calls leave none (a call and
#   its legs are freed by reference counting: no unreachable object after 200 calls, and tests/pbx/test_gcpace.py
#   checks ten), so what it found now waits for a full collection.
# - a full collection walks every object the server holds: at 200 calls/s the last half-minute of calls is
#   half a million objects, 0.56 s with the event loop stopped. So it is considered only once every 30,000
#   middle collections (as 3,000 middle ones of ten young each were: at 300 calls/s about 20 collections ran a
#   second, so at most one full collection in 25 minutes), and
#   CPython also waits until a quarter of the oldest generation is new since the last one.
# Python 3.14's collector may be incremental, with a young and an old generation only, and threshold1 meaning
# how fast the old one is scanned: there the thresholds stay what they were before (every tenth collection a
# middle one).
CLASSIC_GENERATIONS = sys.version_info < (3, 14)
GC_THRESHOLDS = (2_000, -1, 30_000) if CLASSIC_GENERATIONS else (2_000, 10, 3_000)
PACE_INTERVAL_S = 0.02
MAX_PACE_INTERVAL_S = 0.32  # the pacer's ticks when the server makes few objects (at rest: three a second)
YOUNG_MIN = 256  # fewer objects in the young generation: not worth a collection (an idle server makes none)


def tune_garbage_collector() -> None:
    """Once the server is up: what start-up made (modules, tables, the configuration) moves out of the cyclic
    collector's view (``gc.freeze``), and the thresholds become :data:`GC_THRESHOLDS`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class GcPacer(PeriodicGcHook):
    """Young collections on time as well as on count (see the module docstring)."""

    def __init__(self, *, interval_s: float = PACE_INTERVAL_S, max_interval_s: float = MAX_PACE_INTERVAL_S,
                 young_min: int = YOUNG_MIN, collect: Callable[[int], object] = gc.collect,
                 young_size: Callable[[], int] = lambda: len(gc.get_objects(0))) -> None:
        if young_min < 0:
            raise ValueError("young_min must not be negative")
        super().__init__(interval_s)
        if max_interval_s < interval_s:
            raise ValueError("max_interval_s must be at least interval_s")
        self.max_interval_s = max_interval_s
        self.young_min = young_min
        self.interval_now = interval_s  # the seconds to the next tick (see pace)
        self._collect = collect
        self._young_size = young_size
        self.paced = [0, 0]  # collections the pacer ran, young and middle
        self._collected = False  # a collection started since the last tick (CPython's or ours)

    # ---- the decision (pure) -------------------------------------------------------------------------------
    def gc_phase(self, phase: str, info: Mapping[str, int]) -> None:
        """A ``gc.callbacks`` entry: any collection that starts makes the next tick's unnecessary."""
        if phase == "start":
            self._collected = True

    def choose(self, young: int, middle_count: int, middle_threshold: int) -> int | None:
        """The generation to collect at this tick, None for none: ``young`` objects wait in the young generation,
        ``middle_count`` young collections ran since the last middle one (``gc.get_count()[1]``), whose
        threshold is ``middle_threshold``. Called once per tick: it also consumes "a collection ran"."""
        collected, self._collected = self._collected, False
        if collected or young < self.young_min:
            return None
        return 1 if middle_count + 1 > middle_threshold else 0

    def pace(self, interval_s: float, young: int, collected: bool) -> float:
        """The seconds to the next tick after a tick ``interval_s`` after the last that found ``young`` objects in
        the young generation, or found that a collection had started meanwhile (``collected``; ``young`` is then
        not counted): half as long (down to ``interval_s``) when four times ``young_min`` came, twice as long (up to
        ``max_interval_s``) when fewer than ``young_min`` came or the allocation count collects on its own, the
        same otherwise."""
        if not collected and young >= 4 * self.young_min:
            return max(self.interval_s, interval_s / 2)
        if collected or young < self.young_min:
            return min(self.max_interval_s, interval_s * 2)
        return interval_s

    # ---- the asyncio edge (PeriodicGcHook) ------------------------------------------------------------------
    def on_tick(self) -> None:
        collected = self._collected
        young = 0 if collected else self._young_size()
        generation = self.choose(young, gc.get_count()[1], gc.get_threshold()[1])
        if generation is not None:
            self._collect(generation)
            self.paced[generation] += 1
        self.interval_now = self.pace(self.interval_now, young, collected)

    def next_interval(self) -> float:
        return self.interval_now

    def stopped(self) -> None:
        self.interval_now = self.interval_s  # a start again begins at the short interval
