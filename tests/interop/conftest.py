"""Interop fixtures: a real ``ccpbx serve`` on loopback that every test stops with SIGTERM."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.server import RunningServer, serving

LOG_TAIL_LINES = 300

USERS = {"2001": "secret-2001-pw", "2002": "secret-2002-pw", "alice": "alice-secret-pw"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(tmp_path / "data", config_text="[registrar]\nmin_expires = 10\n", extensions=USERS) as srv:
        yield srv


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "interop" in str(item.fspath):
            item.add_marker(pytest.mark.interop)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed interop test shows the tail of each server's log it used (the test's own lines are last): a
    failure seen once in CI can then be read from CI's output, after the temporary folders are gone."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        # a fixture may be the server or a tuple holding it (test_tls_srtp_baresip's: server, TLS port, cert)
        for server in value if isinstance(value, tuple) else (value,):
            if isinstance(server, RunningServer):
                lines = server.log.splitlines()[-LOG_TAIL_LINES:]
                report.sections.append((f"ccpbx serve log, fixture {name!r} (last {len(lines)} lines)",
                                        "\n".join(lines)))
