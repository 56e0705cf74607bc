"""The queue log in SQLite: migration 5, append/list round trip, filters, and durability across a killed process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.acd.events import LogKind, QueueLog
from ccpbx.pbx.store import MIGRATIONS, QueueLogRow, Store

T0 = 1_764_840_000.0  # 2025-12-04T09:20:00Z


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ccpbx.sqlite3"


def _row(seconds: float, event: LogKind = LogKind.ENTER, **fields: object) -> QueueLogRow:
    return QueueLogRow(time=T0 + seconds, event=event.value, **fields)  # type: ignore[arg-type]


def _without_ids(rows: list[QueueLogRow]) -> list[QueueLogRow]:
    return [dataclasses.replace(r, id=None) for r in rows]


async def test_migration_5_creates_the_table_and_its_indexes(db_path: Path) -> None:
    assert [m.version for m in MIGRATIONS][-1] >= 5
    async with await Store.open(db_path):
        pass
    with sqlite3.connect(db_path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(queue_log)")]
        indexes = {r[1] for r in db.execute("PRAGMA index_list(queue_log)")}
        plan = db.execute("EXPLAIN QUERY PLAN SELECT * FROM queue_log WHERE queue = 'q' AND time >= 0 "
                          "ORDER BY time, id").fetchall()
    assert columns == ["id", "time", "queue", "call_id", "agent", "event", "wait_ms", "talk_ms", "ring_ms",
                       "position", "target", "reason", "attempt"]
    assert {"queue_log_time", "queue_log_queue_time"} <= indexes
    assert "TEMP B-TREE" not in str(plan)  # the index gives the order: no sort


def test_every_row_field_has_a_column() -> None:
    fields = {f.name for f in dataclasses.fields(QueueLogRow)}
    statements = " ".join(next(m for m in MIGRATIONS if "queue_log" in " ".join(m.statements)).statements)
    for name in fields:
        assert f"{name} " in statements


async def test_append_then_list_in_time_then_append_order(db_path: Path) -> None:
    rows = [
        _row(5, LogKind.CONNECT, queue="support", call_id="c1", agent="2001", wait_ms=5000, ring_ms=3000),
        _row(0, LogKind.ENTER, queue="support", call_id="c1", position=1),
        _row(5, LogKind.OFFER, queue="support", call_id="c2", agent="2002"),  # same time: after the connect
        _row(9, LogKind.PAUSE, agent="2001", reason="lunch"),
    ]
    async with await Store.open(db_path) as store:
        await store.append_queue_log(rows)
        await store.append_queue_log([])  # nothing to do
        listed = await store.list_queue_log()
    assert _without_ids(listed) == [rows[1], rows[0], rows[2], rows[3]]
    ids = [r.id for r in listed]
    assert all(isinstance(i, int) for i in ids)
    assert ids[1] < ids[2]  # equal times keep the order they were appended in


async def test_filters_limit_and_newest_first(db_path: Path) -> None:
    rows = [_row(i, queue="sales" if i % 2 else "support", call_id=f"c{i}") for i in range(10)]
    async with await Store.open(db_path) as store:
        await store.append_queue_log(rows)
        assert _without_ids(await store.list_queue_log(since=T0 + 7)) == rows[7:]
        assert _without_ids(await store.list_queue_log(since=T0 + 2, until=T0 + 4)) == rows[2:4]
        assert _without_ids(await store.list_queue_log(queue="sales")) == rows[1::2]
        assert _without_ids(await store.list_queue_log(queue="sales", since=T0 + 4, limit=2)) == [rows[5], rows[7]]
        assert _without_ids(await store.list_queue_log(limit=3, newest_first=True)) == rows[:-4:-1]
        assert await store.list_queue_log(queue="nosuch") == []
        assert await store.list_queue_log(limit=0) == []
        with pytest.raises(ValueError, match="limit"):
            await store.list_queue_log(limit=-1)


async def test_a_given_id_is_ignored_and_a_bad_batch_writes_nothing(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.append_queue_log([dataclasses.replace(_row(1), id=99)])
        bad = dataclasses.replace(_row(2), event=None)  # type: ignore[arg-type]  # NOT NULL
        with pytest.raises(sqlite3.IntegrityError):
            await store.append_queue_log([_row(3), bad])
        listed = await store.list_queue_log()
    assert len(listed) == 1 and listed[0].id != 99 and listed[0].time == T0 + 1


def test_a_row_from_an_engine_record() -> None:
    record = QueueLog(time_ms=123_456, kind=LogKind.ABANDON, queue="support", contact_id="c7", wait_ms=42_000,
                      position=3)
    row = QueueLogRow.from_record(record, T0)
    assert row == QueueLogRow(time=T0, event="abandon", queue="support", call_id="c7", wait_ms=42_000, position=3)
    assert row.to_json()["event"] == "abandon" and row.to_json()["id"] is None
    every = QueueLog(time_ms=1, kind=LogKind.CALLBACK_ATTEMPTED, queue="q", contact_id="c", agent_id="a",
                     wait_ms=1, talk_ms=2, ring_ms=3, position=4, target="t", reason="r", attempt=5)
    assert QueueLogRow.from_record(every, T0) == QueueLogRow(T0, "callback-attempted", "q", "c", "a", 1, 2, 3, 4,
                                                             "t", "r", 5)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_int64 = st.integers(-(2**63), 2**63 - 1)
_rows = st.builds(
    QueueLogRow,
    time=st.floats(allow_nan=False, allow_infinity=False),
    event=st.sampled_from([k.value for k in LogKind]),
    queue=st.none() | _text, call_id=st.none() | _text, agent=st.none() | _text,
    wait_ms=st.none() | _int64, talk_ms=st.none() | _int64, ring_ms=st.none() | _int64,
    position=st.none() | _int64, target=st.none() | _text, reason=st.none() | _text, attempt=st.none() | _int64,
)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(_rows, max_size=5), max_size=4))
def test_rows_round_trip_every_field(batches: list[list[QueueLogRow]]) -> None:
    async def run(path: Path) -> list[QueueLogRow]:
        async with await Store.open(path) as store:
            for batch in batches:
                await store.append_queue_log(batch)
            return await store.list_queue_log()

    with tempfile.TemporaryDirectory() as tmp:
        listed = asyncio.run(run(Path(tmp) / "q.sqlite3"))
    appended = [row for batch in batches for row in batch]
    # sorted() is stable: equal times stay in the order they were appended, as the store's id order does.
    assert _without_ids(listed) == sorted(appended, key=lambda r: r.time)
    assert len({r.id for r in listed}) == len(listed)


# -- durability: a committed row outlives the process -------------------------------------------------------

_WRITER = textwrap.dedent("""
    import asyncio, os, sys
    from pathlib import Path
    from ccpbx.pbx.store import QueueLogRow, Store

    async def main(path, mode):
        store = await Store.open(Path(path))
        n = 0
        while True:
            n += 1
            await store.append_queue_log([QueueLogRow(time=float(n), event="enter", call_id=f"c{n}"),
                                          QueueLogRow(time=float(n), event="offer", call_id=f"c{n}", agent="a")])
            if mode == "exit":
                os._exit(0)  # no close, no checkpoint, no atexit
            print(n, flush=True)  # acknowledged: the parent may kill us from here on

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def _writer(db_path: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(db_path), mode], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


async def _stored(db_path: Path) -> list[QueueLogRow]:
    async with await Store.open(db_path) as store:
        return await store.list_queue_log()


async def test_a_row_appended_then_os_exit_is_there_after_reopening(db_path: Path) -> None:
    async with await Store.open(db_path):
        pass  # migrated: the writer only appends
    writer = _writer(db_path, "exit")
    assert writer.wait(60) == 0
    assert Path(f"{db_path}-wal").exists()  # nothing was checkpointed: the rows live in the WAL only
    rows = await _stored(db_path)
    assert [(r.event, r.call_id) for r in rows] == [("enter", "c1"), ("offer", "c1")]


async def test_every_acknowledged_batch_survives_sigkill(db_path: Path) -> None:
    async with await Store.open(db_path):
        pass
    writer = _writer(db_path, "loop")
    assert writer.stdout is not None
    acknowledged = 0
    try:
        while acknowledged < 25:
            line = writer.stdout.readline()
            assert line, "the writer ended early"
            acknowledged = int(line)
    finally:
        writer.send_signal(signal.SIGKILL)  # in the middle of a later append, most likely
        writer.wait(60)
        writer.stdout.close()
    rows = await _stored(db_path)
    assert len(rows) >= 2 * acknowledged
    assert len(rows) % 2 == 0  # a batch is there whole or not at all
    assert [r.call_id for r in rows] == [f"c{n}" for n in range(1, len(rows) // 2 + 1) for _ in range(2)]
