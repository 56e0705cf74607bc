"""The event loop's watch: lateness of a probe due every 20 ms, the collector's pauses, stalls logged."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ccpbx.pbx.loopwatch import LAG_BUCKETS_S, LoopWatch


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lateness_goes_into_buckets_and_a_stall_is_counted_and_logged_with_the_collectors_share() -> None:
    clock = FakeClock()
    watch = LoopWatch(clock=clock, stall_s=0.25)
    for late in (-0.0005, 0.0015, 0.004, 0.04):  # early (the timer's rounding) counts as on time
        watch.observe_lateness(late)
    assert watch.lag.cumulative()[:2] == [(0.002, 2), (0.005, 3)]
    assert (watch.stalls, watch.max_lag_s) == (0, 0.04)

    watch.gc_phase("start", {"generation": 1})
    clock.now += 0.12
    watch.gc_phase("stop", {"generation": 1, "collected": 0})
    with capture_logs() as logs:
        watch.observe_lateness(0.3)
        watch.observe_lateness(0.26)  # the collection was the first stall's, not this one's
    assert watch.stalls == 2 and watch.max_lag_s == 0.3
    assert [(e["event"], e["late_ms"], e["gc_ms"]) for e in logs] == [
        ("loop.stalled", 300.0, 120.0), ("loop.stalled", 260.0, 0.0)]
    assert all(e["log_level"] == "warning" for e in logs)
    assert watch.lag.count == 6 and watch.lag.total_s == pytest.approx(0.0015 + 0.004 + 0.04 + 0.3 + 0.26)
    # 2 of 6 probes within 2 ms, 3 within 5 ms, 4 within 50 ms, all within 500 ms
    assert [watch.lag_quantile_bound(q) for q in (0.3, 0.5, 0.6, 0.99, 1.0)] == [0.002, 0.005, 0.05, 0.5, 0.5]
    assert LoopWatch().lag_quantile_bound(0.99) == 0.0  # no probe yet
    watch.observe_lateness(9.0)  # past the last bound
    assert watch.lag_quantile_bound(1.0) == float("inf")


def test_collections_are_timed_by_generation_and_a_stop_without_its_start_is_ignored() -> None:
    clock = FakeClock()
    watch = LoopWatch(clock=clock)
    watch.gc_phase("stop", {"generation": 0, "collected": 0})  # began before the watch did
    for generation, pause in ((0, 0.001), (0, 0.0015), (2, 0.6)):
        watch.gc_phase("start", {"generation": generation})
        clock.now += pause
        watch.gc_phase("stop", {"generation": generation, "collected": 3})
    assert watch.gc_pauses.count == 3
    assert watch.gc_seconds_by_generation == [pytest.approx(0.0025), 0.0, pytest.approx(0.6)]
    assert watch.gc_pauses.cumulative()[0] == (LAG_BUCKETS_S[0], 2)
    assert watch.gc_pauses.cumulative()[-1] == (float("inf"), 3)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LoopWatch(interval_s=0)
    with pytest.raises(ValueError):
        LoopWatch(stall_s=-1)
    with pytest.raises(ValueError):
        LoopWatch(rest_interval_s=0)
    with pytest.raises(ValueError):
        LoopWatch(rest_after_s=-1)


def test_probes_come_less_often_once_the_server_has_had_no_work_for_a_while_and_often_again_with_the_next() -> None:
    watch = LoopWatch(interval_s=0.02, rest_interval_s=0.1, rest_after_s=1.0, activity=lambda: 0)
    assert watch.interval_for(5, now=10.0) == 0.02 and not watch.resting  # first reading: work was seen
    assert watch.interval_for(5, now=10.9) == 0.02  # unchanged for less than a second
    assert watch.interval_for(5, now=11.0) == 0.1 and watch.resting  # a second without work: at rest
    assert watch.interval_for(5, now=60.0) == 0.1
    assert watch.interval_for(6, now=60.1) == 0.02 and not watch.resting  # one SIP message: probing again
    assert watch.interval_for(6, now=60.5) == 0.02
    assert LoopWatch().next_interval() == 0.02  # without an activity count: never at rest


async def test_on_a_running_loop_the_watch_rests_without_work_and_wakes_with_it() -> None:
    work = [0]
    watch = LoopWatch(interval_s=0.005, rest_interval_s=0.05, rest_after_s=0.03, activity=lambda: work[0])
    watch.start()
    try:
        for _ in range(200):  # bounded: 2 s at most
            if watch.resting:
                break
            await asyncio.sleep(0.01)
        assert watch.resting
        probes = watch.lag.count
        await asyncio.sleep(0.2)
        assert watch.lag.count - probes <= 5  # ~4 probes at 50 ms, not ~40 at 5 ms
        work[0] += 1  # the server handled a message
        for _ in range(200):
            if not watch.resting:
                break
            await asyncio.sleep(0.01)
        assert not watch.resting  # the probe that saw the message armed the next at 5 ms again
    finally:
        watch.stop()


async def test_a_held_loop_is_seen_as_a_stall_and_a_collection_as_a_pause_until_stopped() -> None:
    watch = LoopWatch(interval_s=0.01, stall_s=0.25)
    watch.start()
    watch.start()  # idempotent: one probe, one collector callback
    try:
        assert gc.callbacks.count(watch.gc_phase) == 1 and watch.running
        for _ in range(200):  # bounded: until a few probes ran
            if watch.lag.count >= 3:
                break
            await asyncio.sleep(0.01)
        assert watch.lag.count >= 3
        with capture_logs() as logs:
            time.sleep(0.3)  # a callback that holds the loop: the probe due meanwhile runs >= 290 ms late
            for _ in range(200):
                if watch.stalls:
                    break
                await asyncio.sleep(0.01)
        assert watch.stalls >= 1 and watch.max_lag_s >= 0.25
        assert any(e["event"] == "loop.stalled" for e in logs)
        gc.collect()
        assert watch.gc_pauses.count >= 1 and watch.gc_seconds_by_generation[2] > 0
    finally:
        watch.stop()
    assert watch.gc_phase not in gc.callbacks and not watch.running
    probes = watch.lag.count
    await asyncio.sleep(0.05)
    assert watch.lag.count == probes  # no probe after stop
    watch.stop()  # twice is harmless


async def test_a_running_server_watches_its_loop_and_lets_go_when_it_stops(tmp_path: Path) -> None:
    from ccpbx.pbx.app import SipServer
    from ccpbx.pbx.config import parse_config
    from ccpbx.pbx.liveview import ServerLiveView
    from ccpbx.pbx.store import Store

    config = parse_config(f'[server]\ndata_dir = "{tmp_path}"\nlog_level = "warning"\n[admin]\nenabled = false\n'
                          '[rtp]\nworkers = 0\n', base_dir=tmp_path)
    store = await Store.open(tmp_path / "ccpbx.sqlite3")
    server = SipServer(config.with_overrides(sip_workers=0), store)  # SIP workers: test_sip_workers.py
    try:
        await server.start("127.0.0.1", 0)
        try:
            assert server.loop_watch.running and server.loop_watch.gc_phase in gc.callbacks
            for _ in range(200):
                if server.loop_watch.lag.count >= 2:
                    break
                await asyncio.sleep(0.01)
            metrics = ServerLiveView(server).metrics()
            assert metrics.loop_lag_buckets[-1][0] == float("inf") and metrics.loop_lag_buckets[-1][1] >= 2
        finally:
            await server.stop()
        assert not server.loop_watch.running and server.loop_watch.gc_phase not in gc.callbacks
    finally:
        await store.close()
