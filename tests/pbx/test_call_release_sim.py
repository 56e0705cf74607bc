"""A finished call is released once its legs have left the indexes: the call and its legs are freed by reference
counting, not left as cycles for a full collection of the garbage collector (at 300 calls/s the server grew to
1 GB before one came, which then stopped the event loop for 4.4 s)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from ccpbx.pbx import calls as calls_mod
from ccpbx.pbx.calls import CallError, Leg
from ccpbx.pbx.sip.transaction import LINGER_GRAIN_MS
from tests.pbx.simnet import answered_call, sim_pbx, until

USERS = {"1001": "pw-1001-release", "1002": "pw-1002-release"}
pytestmark = pytest.mark.timeout(30)


async def test_a_finished_call_is_released_after_the_late_retransmission_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls_mod, "ACK_WAIT_MS", 300)  # the window late retransmissions have, shortened
    async with sim_pbx(tmp_path, "[admin]\nenabled = false\n", USERS) as pbx:
        a, call, ours = await answered_call(pbx, USERS)
        caller, callee = ours.a, ours.b
        assert callee is not None
        sip_call_id = caller.sip_call_id
        gc.disable()  # what is freed below is freed by reference counting alone
        try:
            callee_ref = weakref.ref(callee)
            del callee
            await a.hangup(call)
            await until(lambda: not pbx.calls.calls, timeout=5)
            assert callee_ref() is not None  # ended, but still in the indexes for late retransmissions
            await until(lambda leg=caller: leg.forgotten, timeout=5)
            await asyncio.sleep(0)
            assert callee_ref() is None  # freed the moment its call was released
        finally:
            gc.enable()
        # what an application still holding the call reads is there
        assert ours.finished and ours.a is caller and ours.legs == [caller] and ours.b is None
        assert caller.sip_call_id == sip_call_id and caller.ended and caller.dialog is None
        with pytest.raises(CallError):
            await caller.answered
        assert not pbx.calls.by_dialog and not pbx.calls.by_client
        assert caller.call is ours  # weakly now, while someone holds the call
        # nothing ties the released call and its first leg in a cycle: dropping them frees both, no collector
        gc.disable()
        try:
            refs = weakref.ref(ours), weakref.ref(caller)
            del ours, caller
            assert [ref() for ref in refs] == [None, None]
        finally:
            gc.enable()


def test_a_leg_whose_call_was_released_and_dropped_says_so() -> None:
    """Only a leg outliving its released call (an application kept the leg, not the call) finds it gone: a clear
    error, not a call from nowhere."""
    call = object.__new__(calls_mod.Call)  # bare objects: only the leg's reference to its call is looked at
    leg = object.__new__(Leg)
    leg.id = "0123456789ab"
    leg.call = call
    assert leg.call is call
    leg.let_call_go()
    assert leg.call is call  # held elsewhere (here): still reachable
    del call
    with pytest.raises(RuntimeError, match="released"):
        _ = leg.call


async def test_a_leg_still_in_its_window_keeps_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call is released only when every leg has left the indexes: one forgotten leg releases nothing."""
    monkeypatch.setattr(calls_mod, "ACK_WAIT_MS", 300)
    async with sim_pbx(tmp_path, "[admin]\nenabled = false\n", USERS) as pbx:
        a, call, ours = await answered_call(pbx, USERS)
        callee: Leg | None = ours.b
        assert callee is not None
        await a.hangup(call)
        await until(lambda: not pbx.calls.calls, timeout=5)
        pbx.calls._forget(callee)  # one leg's window ends first
        assert ours.b is callee and callee.dialog is not None and len(ours.legs) == 2
        await until(lambda: ours.a.forgotten, timeout=5)
        assert ours.b is None and callee.dialog is None


async def test_an_ended_leg_drops_its_sdp_at_once_and_keeps_its_dialog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What negotiated the media goes when a leg ends (young objects, freed at once); the dialog and the ACK that
    late retransmissions need stay until the window is over, one timer forgetting the legs in the order due."""
    monkeypatch.setattr(calls_mod, "ACK_WAIT_MS", 400)
    async with sim_pbx(tmp_path, "[admin]\nenabled = false\n", USERS) as pbx:
        a, call, ours = await answered_call(pbx, USERS)
        caller, callee = ours.a, ours.b
        assert callee is not None
        assert caller.remote_offer is not None and caller.local_answer is not None
        assert callee.sdp.last_local is not None
        await a.hangup(call)
        await until(lambda: not pbx.calls.calls, timeout=5)
        for leg in (caller, callee):
            assert leg.ended and not leg.forgotten
            assert leg.remote_offer is None and leg.local_offer is None and leg.local_answer is None
            assert leg.sdp.last_local is None
            assert leg.dialog is not None and pbx.calls.by_dialog.get(leg.dialog.id) is leg
        assert callee.ack is not None  # a retransmitted 2xx from the callee is still ACKed
        assert len(pbx.calls._closed_legs) == 2 and pbx.calls._forget_timer is not None
        grain = LINGER_GRAIN_MS / 1000  # due on the transactions' grain: calls ending together are forgotten together
        assert all(due / grain == int(due / grain) for due, _, _ in pbx.calls._closed_legs)
        await until(lambda: caller.forgotten and callee.forgotten, timeout=5)
        assert not pbx.calls._closed_legs and pbx.calls._forget_timer is None
        assert not pbx.calls.by_dialog and not pbx.calls.by_client


async def test_an_ended_call_keeps_little_while_late_retransmissions_may_come(tmp_path: Path) -> None:
    """An ended call's legs stay indexed ACK_WAIT_MS (32 s: 16,000 calls at 500 calls/s), so what they hold is
    memory times the call rate: no per-leg dict (slots), no Event or Queue unless someone waited on one."""
    async with sim_pbx(tmp_path, "[admin]\nenabled = false\n", USERS) as pbx:
        a, call, ours = await answered_call(pbx, USERS)
        caller, callee = ours.a, ours.b
        assert callee is not None
        await a.hangup(call)
        await until(lambda: not pbx.calls.calls, timeout=5)
        for leg in (caller, callee):
            assert leg.ended and not hasattr(leg, "__dict__")
            assert leg._gone is None  # nobody waited on it: never made
            assert leg.gone.is_set()  # made now, it says what happened
        assert isinstance(ours.events, calls_mod.CallEvents) and not hasattr(ours, "__dict__")


async def test_a_calls_events_come_in_order_to_the_task_that_waits() -> None:
    from ccpbx.pbx.calls import CallEnded, CallEvents, LegLeft
    from ccpbx.pbx.cdr import HangupSide

    events = CallEvents()
    with pytest.raises(asyncio.QueueEmpty):
        events.get_nowait()
    first, second = LegLeft(None), CallEnded(HangupSide.CALLER, None)  # type: ignore[arg-type]
    events.put_nowait(first)
    events.put_nowait(second)
    assert events.qsize() == 2 and await events.get() is first and events.get_nowait() is second
    assert events.empty()
    # a waiter woken and then cancelled hands the event on to the next waiter instead of losing it
    loop = asyncio.get_running_loop()
    cancelled = loop.create_task(events.get())
    waiting = loop.create_task(events.get())
    await asyncio.sleep(0)
    events.put_nowait(first)
    cancelled.cancel()
    assert await asyncio.wait_for(waiting, 2) is first
    assert cancelled.cancelled() and events.empty()
