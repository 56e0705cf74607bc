"""The destination registry: kinds registered at start-up, dispatch, and the configuration checked against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccpbx.pbx.config import ConfigError, Destination, DestinationKind, load_config
from ccpbx.pbx.destinations import Connected, DestinationRegistry, Finished, Outcome, Redirect
from ccpbx.pbx.wiring import check_destinations


async def test_dispatch_reaches_the_registered_handler() -> None:
    seen: list[tuple[object, str, str]] = []

    async def rooms(call: object, target: str, number: str) -> Outcome:
        seen.append((call, target, number))
        return Finished()

    registry = DestinationRegistry()
    registry.register(DestinationKind.GROUP, rooms)
    call = object()
    outcome = await registry.dispatch(call, Destination.parse("group:sales"), "600")  # type: ignore[arg-type]
    assert outcome == Finished()
    assert seen == [(call, "sales", "600")]
    assert DestinationKind.GROUP in registry and DestinationKind.IVR not in registry


def test_a_kind_has_one_handler() -> None:
    async def handler(call: object, target: str, number: str) -> Outcome:
        return Connected()

    registry = DestinationRegistry()
    registry.register(DestinationKind.IVR, handler)
    with pytest.raises(ValueError, match="already has a handler"):
        registry.register(DestinationKind.IVR, handler)
    registry.register(DestinationKind.IVR, handler, replace=True)


def test_problem_names_missing_kinds_and_bad_targets() -> None:
    async def handler(call: object, target: str, number: str) -> Outcome:
        return Redirect(Destination.parse("hangup:486"), number)

    registry = DestinationRegistry()
    registry.register(DestinationKind.GROUP, handler, validate=lambda t: None if t == "sales" else "no such group")
    assert registry.problem(Destination.parse("group:sales")) is None
    assert registry.problem(Destination.parse("group:nope")) == "no such group"
    assert registry.problem(Destination.parse("group:{number}")) is None  # templates are resolved per call
    problem = registry.problem(Destination.parse("ivr:nosuch"))
    assert problem is not None and "no ivr destinations" in problem and "group" in problem


def test_config_naming_a_missing_destination_fails_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ccpbx.toml"
    path.write_text('[dialplan]\n\n[[dialplan.rule]]\nmatch = "500"\ndestination = "extension:1001"\n\n'
                    '[[dialplan.rule]]\nmatch = "700"\ndestination = "ivr:nosuch"\n')
    config = load_config(path)  # well-formed: the registry is what knows ivr: has no handler
    with pytest.raises(ConfigError) as info:
        check_destinations(config)
    assert info.value.line == 9
    assert "ivr" in str(info.value) and str(path) in str(info.value)


def test_default_config_reaches_every_destination() -> None:
    check_destinations(load_config(None))
