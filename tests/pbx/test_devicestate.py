"""Device state: the one rule (pure, over plain leg data) and the tracker fed by legs and registrations."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccpbx.pbx.calls import LegState
from ccpbx.pbx.devicestate import DeviceState, DeviceStates, LegView, device_state

_ids = itertools.count()

UP = (LegState.ANSWERED, LegState.CONFIRMED)
NOT_UP = (LegState.CALLING, LegState.PROCEEDING, LegState.EARLY)


@dataclass
class FakeLeg:
    """The attributes of ``calls.Leg`` the tracker reads."""

    device: str | None
    inbound: bool
    state: LegState
    held_by_remote: bool = False
    id: str = field(default_factory=lambda: f"leg{next(_ids)}")


def view(state: LegState, *, inbound: bool = False, held: bool = False) -> LegView:
    return LegView(inbound=inbound, state=state, held=held)


# ---- the rule -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("registered", "legs", "expected"), [
    (False, [], DeviceState.UNAVAILABLE),
    (True, [], DeviceState.IDLE),
    (True, [view(LegState.CALLING)], DeviceState.RINGING),
    (True, [view(LegState.EARLY)], DeviceState.RINGING),
    (True, [view(LegState.PROCEEDING, inbound=True)], DeviceState.IN_USE),  # dialling out
    (True, [view(LegState.CONFIRMED)], DeviceState.IN_USE),
    (True, [view(LegState.ANSWERED, inbound=True)], DeviceState.IN_USE),
    (True, [view(LegState.CONFIRMED, held=True)], DeviceState.ON_HOLD),
    # two calls on one phone, one held, one active: in use (the busy lamp that was wrong once)
    (True, [view(LegState.CONFIRMED, held=True), view(LegState.CONFIRMED, inbound=True)], DeviceState.IN_USE),
    (True, [view(LegState.CONFIRMED, held=True), view(LegState.CONFIRMED, held=True)], DeviceState.ON_HOLD),
    # a held call and a second one ringing in (call waiting): the phone is still holding a call
    (True, [view(LegState.CONFIRMED, held=True), view(LegState.EARLY)], DeviceState.ON_HOLD),
    (True, [view(LegState.CONFIRMED), view(LegState.EARLY)], DeviceState.IN_USE),
    (True, [view(LegState.ENDED)], DeviceState.IDLE),
    (False, [view(LegState.ENDED)], DeviceState.UNAVAILABLE),
    (False, [view(LegState.CONFIRMED)], DeviceState.IN_USE),  # its registration lapsed mid-call
])
def test_device_state_rule(registered: bool, legs: list[LegView], expected: DeviceState) -> None:
    assert device_state(registered, legs) is expected


leg_views = st.builds(LegView, inbound=st.booleans(), state=st.sampled_from(list(LegState)), held=st.booleans())


@given(st.booleans(), st.lists(leg_views, max_size=6), st.randoms(use_true_random=False))
def test_device_state_ignores_leg_order(registered: bool, legs: list[LegView], rnd: object) -> None:
    shuffled = list(legs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert device_state(registered, legs) is device_state(registered, shuffled)


@given(st.booleans(), st.lists(leg_views, max_size=6))
def test_device_state_invariants(registered: bool, legs: list[LegView]) -> None:
    state = device_state(registered, legs)
    live = [leg for leg in legs if leg.state is not LegState.ENDED]
    if any(leg.state in UP and not leg.held for leg in live):
        assert state is DeviceState.IN_USE
    if not live:
        assert state is (DeviceState.IDLE if registered else DeviceState.UNAVAILABLE)
    if state is DeviceState.RINGING:
        assert all(not leg.inbound and leg.state in NOT_UP for leg in live)
    # adding an ended leg never changes anything
    assert device_state(registered, [*legs, view(LegState.ENDED)]) is state


# ---- the tracker ----------------------------------------------------------------------------------------------

class Registrations:
    def __init__(self) -> None:
        self.live: set[str] = set()

    def __call__(self, ext: str) -> bool:
        return ext in self.live


def tracker() -> tuple[DeviceStates, Registrations, list[tuple[str, DeviceState, DeviceState]]]:
    regs = Registrations()
    states = DeviceStates(regs)
    changes: list[tuple[str, DeviceState, DeviceState]] = []
    states.add_listener(lambda ext, old, new: changes.append((ext, old, new)))
    return states, regs, changes


def test_registration_makes_an_extension_idle_and_its_loss_unavailable() -> None:
    states, regs, changes = tracker()
    assert states.state("1001") is DeviceState.UNAVAILABLE
    regs.live.add("1001")
    states.registration_changed("1001")
    states.registration_changed("1001")  # a refresh changes nothing: no second report
    assert states.state("1001") is DeviceState.IDLE
    regs.live.clear()
    states.registration_changed("1001")
    assert changes == [("1001", DeviceState.UNAVAILABLE, DeviceState.IDLE),
                       ("1001", DeviceState.IDLE, DeviceState.UNAVAILABLE)]


def test_a_call_rings_then_talks_then_ends() -> None:
    states, regs, changes = tracker()
    regs.live.add("1002")
    states.seed(["1002"])
    leg = FakeLeg("1002", inbound=False, state=LegState.CALLING)
    states.leg_changed(leg)  # type: ignore[arg-type]
    leg.state = LegState.EARLY
    states.leg_changed(leg)  # type: ignore[arg-type]  # still ringing: not reported again
    leg.state = LegState.CONFIRMED
    states.leg_changed(leg)  # type: ignore[arg-type]
    assert states.legs("1002") == [leg]
    leg.state = LegState.ENDED
    states.leg_changed(leg)  # type: ignore[arg-type]
    assert states.legs("1002") == []
    assert [new for _, _, new in changes] == [DeviceState.RINGING, DeviceState.IN_USE, DeviceState.IDLE]
    assert changes[0][1] is DeviceState.IDLE  # seeded: the first change starts from idle


def test_two_calls_on_one_phone_hold_and_resume() -> None:
    states, regs, changes = tracker()
    regs.live.add("1001")
    states.seed(["1001"])
    first = FakeLeg("1001", inbound=True, state=LegState.CONFIRMED)
    states.leg_changed(first)  # type: ignore[arg-type]
    first.held_by_remote = True
    states.leg_changed(first)  # type: ignore[arg-type]
    assert states.state("1001") is DeviceState.ON_HOLD
    second = FakeLeg("1001", inbound=True, state=LegState.PROCEEDING)  # dials a second call while holding
    states.leg_changed(second)  # type: ignore[arg-type]
    assert states.state("1001") is DeviceState.ON_HOLD
    second.state = LegState.CONFIRMED
    states.leg_changed(second)  # type: ignore[arg-type]
    assert states.state("1001") is DeviceState.IN_USE  # one held, one active: in use
    second.state = LegState.ENDED
    states.leg_changed(second)  # type: ignore[arg-type]
    assert states.state("1001") is DeviceState.ON_HOLD
    first.held_by_remote = False
    states.leg_changed(first)  # type: ignore[arg-type]
    first.state = LegState.ENDED
    states.leg_changed(first)  # type: ignore[arg-type]
    assert [new for _, _, new in changes] == [DeviceState.IN_USE, DeviceState.ON_HOLD, DeviceState.IN_USE,
                                              DeviceState.ON_HOLD, DeviceState.IN_USE, DeviceState.IDLE]


def test_legs_of_other_phones_and_without_device_do_not_mix() -> None:
    states, regs, changes = tracker()
    regs.live.update({"1001", "1002"})
    states.seed(["1001", "1002"])
    states.leg_changed(FakeLeg(None, inbound=False, state=LegState.CONFIRMED))  # type: ignore[arg-type]
    states.leg_changed(FakeLeg("1002", inbound=False, state=LegState.EARLY))  # type: ignore[arg-type]
    assert states.snapshot(["1003"]) == {"1001": DeviceState.IDLE, "1002": DeviceState.RINGING,
                                         "1003": DeviceState.UNAVAILABLE}
    assert changes == [("1002", DeviceState.IDLE, DeviceState.RINGING)]


def test_a_failing_listener_does_not_stop_the_others() -> None:
    states, regs, changes = tracker()

    def broken(ext: str, old: DeviceState, new: DeviceState) -> None:
        raise RuntimeError("observer bug")

    states._listeners.insert(0, broken)
    regs.live.add("1001")
    states.registration_changed("1001")
    assert changes == [("1001", DeviceState.UNAVAILABLE, DeviceState.IDLE)]


fake_legs = st.builds(FakeLeg, st.just("1009"), st.booleans(), st.sampled_from(list(LegState)), st.booleans())


@given(st.booleans(), st.lists(fake_legs, max_size=5))
def test_the_tracker_gives_what_the_rule_gives_and_asks_the_registrar_only_when_idle(
        registered: bool, legs: list[FakeLeg]) -> None:
    asked: list[str] = []

    def registrations(ext: str) -> bool:
        asked.append(ext)
        return registered

    states = DeviceStates(registrations)
    for leg in legs:
        states.leg_changed(leg)  # type: ignore[arg-type]
    live = [view(leg.state, inbound=leg.inbound, held=leg.held_by_remote) for leg in legs
            if leg.state is not LegState.ENDED]
    expected = device_state(registered, live)
    assert states.state("1009") is expected
    if legs and expected not in (DeviceState.IDLE, DeviceState.UNAVAILABLE):
        asked.clear()
        states.leg_changed(legs[-1])  # type: ignore[arg-type]
        assert asked == []  # a phone on a call: its registration is not looked up at each leg change


def test_an_answered_leg_ends_the_look_at_an_extensions_legs() -> None:
    """A busy extension (a trunk's, a callee's with hundreds of calls) is in use from its first answered leg on:
    the tracker reads no further, so a leg change costs the same with 300 legs as with one."""
    read: list[int] = []

    class CountingLeg(FakeLeg):
        def __getattribute__(self, name: str) -> object:
            if name == "held_by_remote":
                read.append(1)
            return super().__getattribute__(name)

    devices = DeviceStates(lambda ext: True)
    legs = [CountingLeg("1001", inbound=False, state=LegState.CONFIRMED) for _ in range(300)]
    for leg in legs:
        devices.leg_changed(leg)  # type: ignore[arg-type]
    read.clear()
    devices.leg_changed(legs[-1])  # type: ignore[arg-type]
    assert devices.state("1001") is DeviceState.IN_USE
    assert len(read) == 1
