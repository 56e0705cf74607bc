"""``ccpbx queue log`` over a store we fill; ``ccpbx queue show`` and ``ccpbx agent ...`` against a real admin
API (served from a thread) over a fake queue control."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from ccpbx.acd.events import LogKind
from ccpbx.pbx.admin import AdminServer, write_state
from ccpbx.pbx.queue_api import AgentAction
from ccpbx.pbx.store import QueueLogRow, Store
from tests.pbx.test_admin import FakeLiveView
from tests.pbx.test_admin_queues import FakeQueueControl
from tests.test_cli import run


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# -- queue log -------------------------------------------------------------------------------------------------


def _fill(data_dir: Path, rows: list[QueueLogRow]) -> None:
    async def write() -> None:
        async with await Store.open(data_dir / "ccpbx.sqlite3") as store:
            await store.append_queue_log(rows)

    asyncio.run(write())


@pytest.fixture
def queue_log(data_dir: Path) -> list[QueueLogRow]:
    now = time.time()
    rows = [
        QueueLogRow(now - 7200, LogKind.LOGIN.value, queue="support", agent="2001"),
        QueueLogRow(now - 600, LogKind.ENTER.value, queue="support", call_id="0123456789abcdef", position=1),
        QueueLogRow(now - 590, LogKind.OFFER.value, queue="support", call_id="0123456789abcdef", agent="2001"),
        QueueLogRow(now - 585, LogKind.CONNECT.value, queue="support", call_id="0123456789abcdef", agent="2001",
                    wait_ms=15_000, ring_ms=5_000),
        QueueLogRow(now - 400, LogKind.ENTER.value, queue="sales", call_id="fedcba9876543210", position=2),
        QueueLogRow(now - 300, LogKind.ABANDON.value, queue="sales", call_id="fedcba9876543210", wait_ms=100_400,
                    position=1),
        QueueLogRow(now - 285, LogKind.COMPLETE_CALLER.value, queue="support", call_id="0123456789abcdef",
                    agent="2001", talk_ms=300_000),
        QueueLogRow(now - 60, LogKind.PAUSE.value, queue=None, agent="2001", reason="lunch break"),
    ]
    _fill(data_dir, rows)
    return rows


def test_queue_log_table_oldest_first(data_dir: Path, queue_log: list[QueueLogRow]) -> None:
    result = run(["queue", "log"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "QUEUE", "CALL", "AGENT", "EVENT", "WAIT", "TALK", "POS", "DETAIL"]
    assert len(lines) == 1 + len(queue_log)
    first = lines[1].split()
    assert first[0] + " " + first[1] == datetime.fromtimestamp(queue_log[0].time).strftime("%Y-%m-%d %H:%M:%S")
    assert first[2:] == ["support", "-", "2001", "login", "-", "-", "-", "-"]
    assert lines[4].split()[2:] == ["support", "01234567", "2001", "connect", "15.0", "-", "-", "ring=5.0s"]
    assert lines[6].split()[2:] == ["sales", "fedcba98", "-", "abandon", "100.4", "-", "1", "-"]
    assert lines[7].split()[2:8] == ["support", "01234567", "2001", "complete-caller", "-", "300.0"]
    assert lines[8].split()[2:] == ["-", "-", "2001", "pause", "-", "-", "-", "reason=lunch", "break"]
    assert result.stderr == ""


def test_queue_log_filters_and_limit(data_dir: Path, queue_log: list[QueueLogRow]) -> None:
    result = run(["queue", "log", "--queue", "sales"], data_dir=data_dir)
    assert [line.split()[5] for line in result.stdout.splitlines()[1:]] == ["enter", "abandon"]
    result = run(["queue", "log", "--since", "9m"], data_dir=data_dir)
    assert [line.split()[5] for line in result.stdout.splitlines()[1:]] == [
        "enter", "abandon", "complete-caller", "pause"]
    since = datetime.fromtimestamp(queue_log[3].time - 1).strftime("%Y-%m-%dT%H:%M:%S")  # local, no offset
    result = run(["queue", "log", "--since", since, "--queue", "support"], data_dir=data_dir)
    assert [line.split()[5] for line in result.stdout.splitlines()[1:]] == ["connect", "complete-caller"]
    result = run(["queue", "log", "--limit", "2"], data_dir=data_dir)
    assert [line.split()[5] for line in result.stdout.splitlines()[1:]] == ["complete-caller", "pause"]
    assert "showing the newest 2 queue events" in result.stderr
    assert "showing" not in run(["queue", "log", "--limit", "8"], data_dir=data_dir).stderr


def test_queue_log_json_has_every_field(data_dir: Path, queue_log: list[QueueLogRow]) -> None:
    result = run(["queue", "log", "--json", "--queue", "support", "--limit", "1"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    (event,) = json.loads(result.stdout)
    assert event == {"id": 7, "time": queue_log[6].time, "event": "complete-caller", "queue": "support",
                     "call_id": "0123456789abcdef", "agent": "2001", "wait_ms": None, "talk_ms": 300_000,
                     "ring_ms": None, "position": None, "target": None, "reason": None, "attempt": None}


def test_queue_log_when_empty_and_bad_arguments(data_dir: Path) -> None:
    result = run(["queue", "log"], data_dir=data_dir)
    assert result.exit_code == 0 and result.stdout == "" and "no queue events" in result.stderr
    assert json.loads(run(["queue", "log", "--json"], data_dir=data_dir).stdout) == []
    result = run(["queue", "log", "--since", "yesterday"], data_dir=data_dir)
    assert result.exit_code == 2 and "is not a date" in result.output
    assert run(["queue", "log", "--limit", "0"], data_dir=data_dir).exit_code == 2


# -- queue show and agent: through the admin API -------------------------------------------------------------


@pytest.fixture
def served(data_dir: Path) -> Iterator[AdminServer]:
    """A real admin API over a fake queue control, served from a thread, with its files in ``data_dir``."""
    data_dir.mkdir(parents=True)
    loop = asyncio.new_event_loop()
    admin = AdminServer(FakeLiveView(), token="cli-test-token", queues=FakeQueueControl())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        url = asyncio.run_coroutine_threadsafe(admin.start(), loop).result(10)
        write_state(data_dir, url, "cli-test-token")
        yield admin
    finally:
        asyncio.run_coroutine_threadsafe(admin.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _control(admin: AdminServer) -> FakeQueueControl:
    assert isinstance(admin.queues, FakeQueueControl)
    return admin.queues


def test_queue_show_tables(data_dir: Path, served: AdminServer) -> None:
    result = run(["queue", "show"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("queues at ") and "counting since 2025-12-04" in lines[0]
    assert lines[1].split() == ["QUEUE", "WAITING", "LONGEST", "STAFFED", "ANSWERED", "ABANDONED", "SL", "ASA",
                                "AGENTS"]
    assert lines[2].split() == ["support", "3", "0:01:12", "4", "120", "4", "89.5%<20s", "0:00:14",
                                "available:1", "on-contact:2", "paused:1"]
    assert lines[3].split() == ["sales", "0", "-", "0", "0", "0", "-", "-", "-"]
    agents = lines[lines.index("") + 1:]
    assert agents[0].split() == ["AGENT", "STATE", "IN", "STATE", "ANSWERED", "QUEUES", "PAUSE", "REASON", "DEVICE"]
    assert agents[1].split() == ["2001", "on-contact", "0:01:35", "12", "support", "-", "available"]
    assert agents[2].split() == ["2002", "paused", "0:10:00", "12", "support", "lunch", "break", "available"]
    assert agents[3].split() == ["2003", "unreachable", "0:01:35", "12", "support,sales", "-", "unavailable",
                                 "(not", "registered)"]


def test_queue_show_json_and_empty(data_dir: Path, served: AdminServer) -> None:
    result = run(["queue", "show", "--json"], data_dir=data_dir)
    assert json.loads(result.stdout) == _control(served).figures
    _control(served).figures = {"queues": [], "agents": [], "since": None}
    result = run(["queue", "show"], data_dir=data_dir)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1:] == ["no queues", "", "no agents"]


def test_queue_show_watch_redraws_until_ctrl_c(data_dir: Path, served: AdminServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import ccpbx.cli.main as cli

    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_sleep", sleep)
    result = run(["queue", "show", "--watch"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert naps == [2.0, 2.0, 2.0]
    assert result.stdout.count("QUEUE  ") == 3
    naps.clear()
    result = run(["queue", "show", "--watch", "0.5", "--json"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert naps == [0.5, 0.5, 0.5]
    assert [json.loads(line)["since"] for line in result.stdout.splitlines()] == ["2025-12-04T00:00:00+00:00"] * 3


def test_queue_show_without_a_server_or_without_queues(data_dir: Path) -> None:
    result = run(["queue", "show"], data_dir=data_dir)
    assert result.exit_code == 1
    assert "no running ccpbx found" in result.output
    data_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    admin = AdminServer(FakeLiveView(), token="t")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        write_state(data_dir, asyncio.run_coroutine_threadsafe(admin.start(), loop).result(10), "t")
        for args in (["queue", "show"], ["agent", "login", "2001"]):
            result = run(args, data_dir=data_dir)
            assert result.exit_code == 1
            assert "no queues configured" in result.output
    finally:
        asyncio.run_coroutine_threadsafe(admin.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize(("args", "expected", "said"), [
    (["login", "2001"], ("2001", AgentAction.LOGIN, None, None), "agent 2001 logged in"),
    (["login", "2001", "--queue", "sales"], ("2001", AgentAction.LOGIN, "sales", None),
     "agent 2001 logged in to queue sales"),
    (["logout", "2002", "--reason", "end of shift"], ("2002", AgentAction.LOGOUT, None, "end of shift"),
     "agent 2002 logged out (reason: end of shift)"),
    (["pause", "2003", "--reason", "lunch", "--queue", "support"],
     ("2003", AgentAction.PAUSE, "support", "lunch"), "agent 2003 paused in queue support (reason: lunch)"),
    (["unpause", "2003"], ("2003", AgentAction.UNPAUSE, None, None), "agent 2003 unpaused"),
])
def test_agent_commands(data_dir: Path, served: AdminServer, args: list[str],
                        expected: tuple[str, AgentAction, str | None, str | None], said: str) -> None:
    result = run(["agent", *args], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    # (the last line: the server, in this process, logs through an unconfigured structlog to the same stdout)
    assert result.stdout.splitlines()[-1] == said
    assert _control(served).commands == [expected]


def test_refused_agent_commands_exit_1_with_the_servers_reason(data_dir: Path, served: AdminServer) -> None:
    result = run(["agent", "login", "9999"], data_dir=data_dir)
    assert result.exit_code == 1
    assert "9999 is no agent" in result.output
    result = run(["agent", "pause", "2001", "--queue", "nosuch"], data_dir=data_dir)
    assert result.exit_code == 1
    assert "does not serve queue 'nosuch'" in result.output
    result = run(["agent", "login", "a/b"], data_dir=data_dir)  # quoted into one path segment, then refused
    assert result.exit_code == 1 and "a/b is no agent" in result.output
    assert run(["agent", "login", "2001", "--reason", "x"], data_dir=data_dir).exit_code == 2
    assert _control(served).commands == []


def test_agent_without_a_server_exits_1(data_dir: Path) -> None:
    result = run(["agent", "pause", "2001"], data_dir=data_dir)
    assert result.exit_code == 1
    assert "no running ccpbx found" in result.output
