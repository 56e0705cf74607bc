"""Interop fixtures: a real ``ccpbx serve`` on loopback that every test stops with SIGTERM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.server import RunningServer, serving

USERS = {"2001": "secret-2001-pw", "2002": "secret-2002-pw", "alice": "alice-secret-pw"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(tmp_path / "data", config_text="[registrar]\nmin_expires = 10\n", extensions=USERS) as srv:
        yield srv


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "interop" in str(item.fspath):
            item.add_marker(pytest.mark.interop)
