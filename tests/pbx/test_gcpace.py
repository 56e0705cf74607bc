"""The collector's pacer: young collections on time as well as on count (``pbx/gcpace.py``)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from ccpbx.pbx.gcpace import GC_THRESHOLDS, GcPacer

pytestmark = pytest.mark.timeout(30)


def test_a_tick_collects_the_young_generation_once_it_holds_enough() -> None:
    pacer = GcPacer(young_min=100)
    assert pacer.choose(young=99, middle_count=0, middle_threshold=10) is None
    assert pacer.choose(young=100, middle_count=0, middle_threshold=10) == 0
    assert pacer.choose(young=5_000, middle_count=8, middle_threshold=10) == 0


def test_the_middle_generation_comes_every_threshold1_th_collection_as_cpython_counts() -> None:
    pacer = GcPacer(young_min=1)
    # gc.get_count()[1] young collections since the last middle one: the next would pass the threshold
    assert pacer.choose(young=10, middle_count=9, middle_threshold=10) == 0
    assert pacer.choose(young=10, middle_count=10, middle_threshold=10) == 1
    assert pacer.choose(young=10, middle_count=GC_THRESHOLDS[1], middle_threshold=GC_THRESHOLDS[1]) == 1


def test_a_collection_since_the_last_tick_makes_the_next_unnecessary() -> None:
    pacer = GcPacer(young_min=1)
    pacer.gc_phase("start", {"generation": 0})
    pacer.gc_phase("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    assert pacer.choose(young=10_000, middle_count=0, middle_threshold=10) is None  # CPython's own ran
    assert pacer.choose(young=10_000, middle_count=0, middle_threshold=10) == 0  # consumed: the next tick may


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        GcPacer(interval_s=0)
    with pytest.raises(ValueError):
        GcPacer(young_min=-1)
    with pytest.raises(ValueError):
        GcPacer(interval_s=0.02, max_interval_s=0.01)


def test_ticks_come_less_often_while_few_objects_are_made_and_every_interval_under_load() -> None:
    pacer = GcPacer(interval_s=0.02, max_interval_s=0.32, young_min=100)
    assert pacer.pace(0.02, young=99, collected=False) == 0.04  # too few: wait twice as long
    assert pacer.pace(0.32, young=0, collected=False) == 0.32  # at rest: no longer than max_interval_s
    assert pacer.pace(0.08, young=100, collected=False) == 0.08  # enough, not many more: the same
    assert pacer.pace(0.08, young=399, collected=False) == 0.08
    assert pacer.pace(0.08, young=400, collected=False) == 0.04  # four times as many: twice as often
    assert pacer.pace(0.02, young=50_000, collected=False) == 0.02  # no shorter than interval_s
    assert pacer.pace(0.04, young=0, collected=True) == 0.08  # CPython's count collects on its own


def test_the_pace_follows_what_each_tick_found_and_starts_again_short() -> None:
    young = [0]
    ran: list[int] = []
    pacer = GcPacer(interval_s=0.02, max_interval_s=0.16, young_min=100, collect=ran.append,
                    young_size=lambda: young[0])
    assert pacer.next_interval() == 0.02
    for expected in (0.04, 0.08, 0.16, 0.16):  # idle
        pacer.on_tick()
        assert pacer.next_interval() == expected
    young[0] = 1_000
    for expected in (0.08, 0.04, 0.02, 0.02):  # objects pile up: back to every 20 ms, a collection each tick
        pacer.on_tick()
        assert pacer.next_interval() == expected
    assert ran == [0, 0, 0, 0]
    pacer.gc_phase("start", {"generation": 0})  # CPython's own collection ran before the tick
    pacer.on_tick()
    assert pacer.next_interval() == 0.04 and len(ran) == 4
    pacer.stopped()
    assert pacer.next_interval() == 0.02


async def test_on_a_running_loop_it_collects_and_stops_cleanly() -> None:
    ran: list[int] = []
    pacer = GcPacer(interval_s=0.005, young_min=10, collect=ran.append, young_size=lambda: 10)
    pacer.start()
    pacer.start()  # idempotent: one timer, one callback
    try:
        assert pacer.running and gc.callbacks.count(pacer.gc_phase) == 1
        for _ in range(400):  # bounded: 2 s at most
            if ran:
                break
            await asyncio.sleep(0.005)
        assert ran and set(ran) <= {0, 1} and sum(pacer.paced) == len(ran)
    finally:
        pacer.stop()
    assert not pacer.running and pacer.gc_phase not in gc.callbacks
    count = len(ran)
    await asyncio.sleep(0.03)
    assert len(ran) == count  # stopped: no tick after stop()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


async def test_it_frees_cyclic_garbage_that_the_allocation_count_never_reaches() -> None:
    """Automatic collection off (as if frees kept the count below its threshold): the pacer alone finds the
    young generation grown and collects it, freeing a cycle that reference counting cannot."""
    pacer = GcPacer(interval_s=0.005, young_min=50)
    gc.disable()
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        keep = [[i] for i in range(200)]  # young objects, so the generation is worth a collection
        del a, b
        assert ref() is not None  # a cycle: reference counting alone does not free it
        pacer.start()
        for _ in range(400):  # bounded: 2 s at most
            if ref() is None:
                break
            await asyncio.sleep(0.005)
        assert ref() is None and sum(pacer.paced) >= 1
        del keep
    finally:
        pacer.stop()
        gc.enable()
