"""Busy-aware ring groups and call waiting in routing, with a fake call and device states (no sockets)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from ccpbx.pbx.calls import DialOutcome, DialTarget
from ccpbx.pbx.config import parse_config
from ccpbx.pbx.destinations import Finished, Redirect
from ccpbx.pbx.devicestate import DeviceState
from ccpbx.pbx.dialplan import DialPlan
from ccpbx.pbx.location import Binding, LocationService
from ccpbx.pbx.routing import CallRouter
from ccpbx.pbx.store import ExtensionFeatures

CONFIG = """
[[group]]
name = "all"
number = "601"
members = ["2002", "alice"]
ring_time = 5

[[group]]
name = "everyone"
number = "602"
members = ["2002", "alice"]
ring_busy = true
"""


@dataclass
class FakeCall:
    dialled: str = "601"
    rung: list[list[str]] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)

    async def ring(self) -> None:
        pass

    async def dial(self, targets: Sequence[DialTarget], timeout_ms: int, *, label: str = "") -> DialOutcome:
        self.rung.append([t.device or "" for t in targets])
        return DialOutcome(None, (480,))

    async def reject(self, status: int, reason: str | None = None) -> None:
        self.rejected.append(status)


class FakeStore:
    def __init__(self, **features: ExtensionFeatures) -> None:
        self.features = features

    async def get_features(self, ext: str) -> ExtensionFeatures:
        return self.features.get(ext, ExtensionFeatures(ext))


def router(states: dict[str, DeviceState], store: FakeStore | None = None) -> CallRouter:
    location = LocationService()
    for i, ext in enumerate(("2002", "alice")):
        location.put(Binding(ext, f"sip:{ext}@127.0.0.1:{5070 + i}", time.time() + 300, f"c{i}", 1, "udp",
                             "127.0.0.1", 5070 + i))
    r = CallRouter(DialPlan.from_config(parse_config(CONFIG)), location, store or FakeStore(),  # type: ignore[arg-type]
                   extensions=lambda: {"2001", "2002", "alice"})
    r.device_state = lambda ext: states.get(ext, DeviceState.IDLE)
    return r


@pytest.mark.parametrize("busy", [DeviceState.IN_USE, DeviceState.ON_HOLD])
def test_ringall_group_skips_a_member_on_a_call(busy: DeviceState) -> None:
    call = FakeCall()
    outcome = asyncio.run(router({"2002": busy})._group(call, "all"))  # type: ignore[arg-type]
    assert call.rung == [["alice"]]
    assert isinstance(outcome, Redirect)


def test_ringing_and_idle_members_ring_and_ring_busy_rings_everyone() -> None:
    call = FakeCall()
    asyncio.run(router({"2002": DeviceState.RINGING})._group(call, "all"))  # type: ignore[arg-type]
    assert call.rung == [["2002", "alice"]]
    call = FakeCall(dialled="602")
    asyncio.run(router({"2002": DeviceState.IN_USE})._group(call, "everyone"))  # type: ignore[arg-type]
    assert call.rung == [["2002", "alice"]]


def test_without_call_waiting_a_busy_extension_is_busy_or_forwarded() -> None:
    store = FakeStore(**{"2002": ExtensionFeatures("2002", call_waiting=False)})
    call = FakeCall(dialled="2002")
    outcome = asyncio.run(router({"2002": DeviceState.ON_HOLD}, store)._extension(call, "2002"))  # type: ignore[arg-type]
    assert (call.rung, call.rejected, outcome) == ([], [486], Finished())
    store = FakeStore(**{"2002": ExtensionFeatures("2002", call_waiting=False, forward_busy="alice")})
    outcome = asyncio.run(router({"2002": DeviceState.IN_USE}, store)._extension(call, "2002"))  # type: ignore[arg-type]
    assert isinstance(outcome, Redirect) and outcome.destination.target == "alice"


def test_with_call_waiting_a_busy_extension_still_rings() -> None:
    call = FakeCall(dialled="2002")
    asyncio.run(router({"2002": DeviceState.IN_USE})._extension(call, "2002"))  # type: ignore[arg-type]
    assert call.rung == [["2002"]]


def test_a_whole_group_rung_at_once_skips_busy_and_dnd_members_unless_ring_busy() -> None:
    """A blind transfer to a group or a call placed to it (originate, call_out) rings its free members only."""
    devices = lambda targets: [t.device for t in targets]  # noqa: E731
    assert devices(asyncio.run(router({"2002": DeviceState.IN_USE}).dial_targets("group:all", "2001"))) == ["alice"]
    assert devices(asyncio.run(router({"2002": DeviceState.IN_USE}).dial_targets("group:everyone", "2001"))) == [
        "2002", "alice"]
    dnd = FakeStore(alice=ExtensionFeatures("alice", dnd=True))
    assert devices(asyncio.run(router({}, dnd).dial_targets("601", "2001"))) == ["2002"]
