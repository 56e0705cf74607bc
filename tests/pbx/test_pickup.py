"""Call pickup's decisions without a network: which ringing call, what an INVITE with Replaces gets."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ccpbx.pbx.calls import CallManager
from ccpbx.pbx.config import parse_config
from ccpbx.pbx.dialplan import DialPlan
from ccpbx.pbx.pickup import Pickup, decide_replaces
from ccpbx.pbx.sip.dialog import ReplacesTarget


def _plan(toml: str = "") -> DialPlan:
    return DialPlan.from_config(parse_config(toml, "ccpbx.toml"))


GROUPS = _plan("""
[[group]]
name = "desk"
members = ["1002", "1003"]

[[group]]
name = "back"
members = ["1003", "1004"]

[[group]]
name = "other"
members = ["1005", "1006"]
""")


def _leg(device: str | None, *, started: float, call_started: float, caller: str = "1001", inbound: bool = False,
         up: bool = False, ended: bool = False, ringing: bool = True, finished: bool = False,
         provisional: bool = True) -> Any:
    loop = asyncio.new_event_loop()
    try:
        pickup = loop.create_future() if ringing else None
    finally:
        loop.close()
    call = SimpleNamespace(pickup=pickup, finished=finished, started=call_started,
                           a=SimpleNamespace(device=caller))
    return SimpleNamespace(device=device, started=started, inbound=inbound, up=up, ended=ended, call=call,
                           provisional=provisional)


def _manager(*legs: Any, found: Any = None) -> CallManager:
    return cast(CallManager, SimpleNamespace(legs=lambda: list(legs), find_leg_by_dialog=lambda *a: found))


def test_group_pickup_covers_every_group_of_the_picker() -> None:
    pickup = Pickup(_manager(), GROUPS)
    assert pickup.group_devices("1003") == {"1002", "1003", "1004"}
    assert pickup.group_devices("1002") == {"1002", "1003"}
    assert pickup.group_devices("1009") == set()


def test_the_oldest_ringing_call_wins() -> None:
    newer = _leg("1002", started=5.0, call_started=5.0)
    older = _leg("1004", started=9.0, call_started=1.0)  # a group hunt: its current leg is new, the call is old
    other = _leg("1005", started=0.0, call_started=0.0)
    pickup = Pickup(_manager(newer, older, other), GROUPS)
    assert pickup.ringing(pickup.group_devices("1003"), picker="1003") is older
    assert pickup.ringing({"1002"}, picker="1003") is newer
    assert pickup.ringing({"1007"}, picker="1003") is None


@pytest.mark.parametrize("state", [
    {"up": True}, {"ended": True}, {"inbound": True}, {"ringing": False}, {"finished": True}, {"caller": "1003"},
    {"provisional": False},  # INVITE sent, nothing back yet: not ringing
])
def test_what_is_not_a_ringing_call_to_pick_up(state: dict[str, Any]) -> None:
    leg = _leg("1002", started=1.0, call_started=1.0, **state)
    assert Pickup(_manager(leg), GROUPS).ringing({"1002"}, picker="1003") is None


def test_replaces_naming_nothing_of_ours_is_481() -> None:
    decision = decide_replaces(_manager(found=None), ReplacesTarget("x@h", "a", "b"))
    assert (decision.leg, decision.status) == (None, 481)


def test_replaces_naming_a_ringing_leg_of_ours_picks_it_up() -> None:
    leg = _leg("1002", started=1.0, call_started=1.0)
    assert decide_replaces(_manager(found=leg), ReplacesTarget("x@h", "a", "b")).leg is leg
    assert decide_replaces(_manager(found=leg), ReplacesTarget("x@h", "a", "b", early_only=True)).leg is leg


def test_replaces_naming_an_early_dialog_we_did_not_initiate_is_481() -> None:
    caller_leg = _leg(None, started=1.0, call_started=1.0, inbound=True)  # the caller's own INVITE, unanswered
    assert decide_replaces(_manager(found=caller_leg), ReplacesTarget("x@h", "a", "b")).status == 481
    stopped = _leg("1002", started=1.0, call_started=1.0, ringing=False)  # its dial is over
    assert decide_replaces(_manager(found=stopped), ReplacesTarget("x@h", "a", "b")).status == 481


def test_replaces_naming_a_confirmed_dialog() -> None:
    leg = _leg("1002", started=1.0, call_started=1.0, up=True, ringing=False)
    assert decide_replaces(_manager(found=leg), ReplacesTarget("x@h", "a", "b")).leg is leg
    refused = decide_replaces(_manager(found=leg), ReplacesTarget("x@h", "a", "b", early_only=True))
    assert (refused.leg, refused.status) == (None, 486)  # RFC 3891 §3
