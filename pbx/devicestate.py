"""Device state: what an extension's phone is doing, computed in one place for BLF, groups and the ACD.

An extension is ``unavailable`` without a live registration, ``idle`` when registered with no call, ``ringing``
while a call rings it, ``in_use`` while it talks or dials out, ``on_hold`` when every call it is talking on is
held. :func:`device_state` is the whole rule, a pure function over plain data (:class:`LegView`);
:class:`DeviceStates` keeps the current state of every extension from the call manager's leg listener and the
registrar's binding changes, and tells its listeners ``(ext, old, new)`` when a state really changes.

Every consumer (busy lamps through the ``dialog`` event package, busy-aware ring groups, call waiting, agent
availability) reads this tracker, so a phone with two calls, one held and one active, is ``in_use`` everywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ccpbx.pbx.calls import Leg, LegState
from ccpbx.pbx.log import get_logger

log = get_logger("ccpbx.devicestate")

__all__ = ["DeviceState", "DeviceStates", "LegView", "device_state", "leg_view"]


class DeviceState(enum.StrEnum):
    IDLE = "idle"
    RINGING = "ringing"
    IN_USE = "in_use"
    ON_HOLD = "on_hold"
    UNAVAILABLE = "unavailable"


BUSY_STATES = frozenset({DeviceState.IN_USE, DeviceState.ON_HOLD})

_UP = (LegState.ANSWERED, LegState.CONFIRMED)  # a tuple: members compare by identity, a set hashes in Python


class LegView(NamedTuple):
    """What device state needs of one leg that reaches a phone.

    ``inbound`` is True for a call the phone placed (our leg is its UAS side), False for one we place to the
    phone (ringing it); ``held`` is True when the phone put the call on hold. A named tuple: made (see
    :func:`leg_view`) and read in C, several times a call.
    """

    inbound: bool
    state: LegState
    held: bool = False


_new_view = tuple.__new__  # LegView(...) without its Python-level __new__


def leg_view(leg: Leg) -> LegView:
    return _new_view(LegView, (leg.inbound, leg.state, leg.held_by_remote))


def device_state(registered: bool, legs: Iterable[LegView]) -> DeviceState:
    """The state of one extension from its registration and ALL its legs.

    Any answered leg not held → ``in_use``; answered legs all held → ``on_hold``; otherwise a call the phone is
    still dialling (an inbound leg not yet answered) → ``in_use``; a call ringing it → ``ringing``; no call →
    ``idle``, or ``unavailable`` without a live registration. A phone still on a call counts as on that call
    even when its registration lapsed meanwhile: the lamp shows what the phone does, not its paperwork.
    """
    up_held: bool | None = None  # None: no answered leg
    dialling = ringing = False
    for leg in legs:
        if leg.state is LegState.ENDED:
            continue
        if leg.state in _UP:
            if not leg.held:
                return DeviceState.IN_USE
            up_held = True
        elif leg.inbound:
            dialling = True
        else:
            ringing = True
    if up_held:
        return DeviceState.ON_HOLD
    if dialling:
        return DeviceState.IN_USE
    if ringing:
        return DeviceState.RINGING
    return DeviceState.IDLE if registered else DeviceState.UNAVAILABLE


StateListener = Callable[[str, DeviceState, DeviceState], None]


class DeviceStates:
    """The current device state of every extension, kept up to date from legs and registrations.

    ``registered(ext)`` says whether ``ext`` has a live binding now. Feed :meth:`leg_changed` to
    ``CallManager.add_leg_listener`` and call :meth:`registration_changed` whenever a binding of an extension is
    saved, removed or expires. Listeners get ``(ext, old, new)`` only when the state changes.
    """

    def __init__(self, registered: Callable[[str], bool]) -> None:
        self._registered = registered
        self._legs: dict[str, dict[str, Leg]] = {}  # ext -> live legs reaching its phone, by leg id
        self._states: dict[str, DeviceState] = {}
        self._listeners: list[StateListener] = []

    # ---- reading --------------------------------------------------------------------------------------------
    def state(self, ext: str) -> DeviceState:
        """The current state of ``ext`` (computed on the spot for an extension nothing was heard of yet)."""
        known = self._states.get(ext)
        return known if known is not None else self._compute(ext)

    def snapshot(self, extensions: Iterable[str] = ()) -> dict[str, DeviceState]:
        """The state of every extension seen so far and of ``extensions``, by extension."""
        names = set(self._states) | set(extensions)
        return {ext: self.state(ext) for ext in sorted(names)}

    def legs(self, ext: str) -> list[Leg]:
        """The live legs reaching ``ext``'s phone, oldest first."""
        return list(self._legs.get(ext, {}).values())

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    # ---- feeding --------------------------------------------------------------------------------------------
    def seed(self, extensions: Iterable[str]) -> None:
        """Record the state of ``extensions`` without telling listeners (at start, from the stored bindings)."""
        for ext in extensions:
            self._states[ext] = self._compute(ext)

    def leg_changed(self, leg: Leg) -> None:
        """The call manager's leg listener: a leg appeared, changed state, was held or resumed, or ended."""
        ext = leg.device
        if ext is None:
            return
        legs = self._legs.setdefault(ext, {})
        if leg.state is LegState.ENDED:
            legs.pop(leg.id, None)
            if not legs:
                del self._legs[ext]
        else:
            legs[leg.id] = leg
        self._update(ext)

    def registration_changed(self, ext: str) -> None:
        """A binding of ``ext`` was saved, removed or expired."""
        self._update(ext)

    # ---- internals ------------------------------------------------------------------------------------------
    def _compute(self, ext: str) -> DeviceState:
        legs = self._legs.get(ext)
        # lazily, not a list: the rule stops at the first answered leg, and a trunk's or a busy callee's
        # extension may have hundreds of legs (a list made every change was quadratic in them)
        state = device_state(True, map(leg_view, legs.values())) if legs else DeviceState.IDLE
        # the registration matters only to a phone on no call (a location look-up per leg change otherwise)
        if state is DeviceState.IDLE and not self._registered(ext):
            return DeviceState.UNAVAILABLE
        return state

    def _update(self, ext: str) -> None:
        new = self._compute(ext)
        old = self._states.get(ext, DeviceState.UNAVAILABLE)
        self._states[ext] = new
        if new is old:
            return
        for listener in self._listeners:
            try:
                listener(ext, old, new)
            except Exception:  # an observer's bug must not break call control or the registrar
                log.exception("device.listener.failed", ext=ext)
