"""The collector's pacer: young collections on time as well as on count (``pbx/gcpace.py``)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from ccpbx.pbx.gcpace import CLASSIC_GENERATIONS, GC_THRESHOLDS, GcPacer
from tests.pbx.simnet import registered, sim_pbx, until

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
    gc.collect()  # the ticks read the process's own counts: a young collection is due, not a middle one
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


@pytest.mark.skipif(not CLASSIC_GENERATIONS, reason="three generations (CPython before 3.14)")
def test_with_the_servers_thresholds_every_collection_moves_survivors_to_the_oldest_generation() -> None:
    """GC_THRESHOLDS: each automatic collection is a middle one, so an object that outlives it (a call in
    progress) is walked once and lands in the oldest generation; the middle generation stays empty."""
    before = gc.get_threshold()
    gc.collect()
    try:
        gc.set_threshold(*GC_THRESHOLDS)
        middles = gc.get_count()[2]
        keep = [[i] for i in range(3 * GC_THRESHOLDS[0])]  # alive through the collections they trigger
        assert gc.get_count()[2] >= middles + 2  # CPython's own collections, each a middle one
        assert gc.get_objects(generation=1) == []
        young = {id(o) for o in gc.get_objects(generation=0)}
        survivors = sum(1 for o in keep if id(o) not in young)
        assert survivors >= 2 * GC_THRESHOLDS[0] - 100  # past a collection: in the oldest generation now
        # and the pacer's tick picks the same: a middle collection
        assert GcPacer(young_min=1).choose(young=10, middle_count=0, middle_threshold=GC_THRESHOLDS[1]) == 1
        del keep
    finally:
        gc.set_threshold(*before)


async def test_a_call_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """What lets the middle generation go (GC_THRESHOLDS): calls set up, answered and hung up leave nothing that
    only the cyclic collector would free, so none waits in the oldest generation for a full collection."""
    users = {"1001": "pw-1001-gc", "1002": "pw-1002-gc"}
    async with sim_pbx(tmp_path, "[admin]\nenabled = false\n", users) as server:
        a = await registered(server, "1001", users["1001"])
        await registered(server, "1002", users["1002"], auto_answer=True)
        call = await a.call("1002")  # the first call makes the caches and pools the others reuse
        await a.hangup(call)
        await until(lambda: not server.calls.calls)
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                call = await a.call("1002")
                assert call.final is not None and call.final.status == 200
                assert (await a.hangup(call)).status == 200
            await until(lambda: not server.calls.calls)
            assert gc.collect() == 0
        finally:
            gc.enable()
