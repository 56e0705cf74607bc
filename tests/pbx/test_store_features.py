"""SQLite store, migration 2: per-extension call features, the cdrs table, and upgrading a version-1 database."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccpbx.pbx.location import Binding
from ccpbx.pbx.store import (
    MIGRATIONS,
    NOANSWER_SECONDS_DEFAULT,
    CdrRow,
    ExtensionFeatures,
    ExtensionNotFound,
    Store,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ccpbx.sqlite3"


def _binding(aor: str) -> Binding:
    return Binding(
        aor=aor, contact=f"sip:{aor}@192.0.2.7:5062", expires_at=1_700_003_600.0, call_id="c@pc33", cseq=1,
        transport="udp", source_host="192.0.2.7", source_port=5062, q=None, user_agent="baresip",
        instance_id="", reg_id=None, registered_at=1_700_000_000.0,
    )


async def test_features_default_when_never_set(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.add_extension("1001", "password", "", "ccpbx")
        features = await store.get_features("1001")
        assert features == ExtensionFeatures("1001", False, None, None, None, NOANSWER_SECONDS_DEFAULT)
        assert not features.forwards
        assert await store.list_features() == {}


async def test_features_set_replace_and_list(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.add_extension("1001", "password", "", "ccpbx")
        await store.add_extension("1002", "password", "", "ccpbx")
        first = ExtensionFeatures("1001", dnd=True, forward_busy="1002", forward_noanswer="sip:vm@pbx",
                                  noanswer_seconds=15)
        await store.set_features(first)
        assert await store.get_features("1001") == first
        assert first.forwards
        second = ExtensionFeatures("1001", forward_always="+4930123456")
        await store.set_features(second)
        assert await store.get_features("1001") == second
        await store.set_features(ExtensionFeatures("1002", dnd=True))
        assert await store.list_features() == {"1001": second, "1002": ExtensionFeatures("1002", dnd=True)}
        assert await store.get_features("1003") == ExtensionFeatures("1003")


async def test_features_of_a_missing_extension_are_refused(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        with pytest.raises(ExtensionNotFound):
            await store.set_features(ExtensionFeatures("404", dnd=True))
        assert await store.list_features() == {}


async def test_removing_an_extension_removes_its_features_but_not_its_cdrs(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.add_extension("1001", "password", "", "ccpbx")
        await store.add_extension("1002", "password", "", "ccpbx")
        await store.set_features(ExtensionFeatures("1001", dnd=True))
        await store.set_features(ExtensionFeatures("1002", forward_always="1001"))
        await store.upsert_cdr(CdrRow("c1", "s", "1001", "", "1002", "extension:1002", 1.0, None, 2.0, "busy",
                                      "callee", 486))
        await store.remove_extension("1001")
        assert await store.list_features() == {"1002": ExtensionFeatures("1002", forward_always="1001")}
        # A new extension of the same name starts clean.
        await store.add_extension("1001", "password", "", "ccpbx")
        assert await store.get_features("1001") == ExtensionFeatures("1001")
        assert await store.count_cdrs(extension="1001") == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"noanswer_seconds": 0},
        {"noanswer_seconds": 601},
        {"forward_always": ""},
        {"forward_busy": "10 02"},
        {"forward_noanswer": "x" * 256},
        {"forward_always": "1002\n"},
    ],
)
def test_invalid_features_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ExtensionFeatures("1001", **changes)  # type: ignore[arg-type]


def test_noanswer_seconds_must_be_an_int() -> None:
    with pytest.raises(TypeError):
        ExtensionFeatures("1001", noanswer_seconds=True)
    with pytest.raises(TypeError):
        ExtensionFeatures("1001", noanswer_seconds=2.5)  # type: ignore[arg-type]


# -- upgrading ----------------------------------------------------------------------------------------------------


async def test_upgrading_a_version_1_database_keeps_extensions_and_bindings(db_path: Path) -> None:
    version_1 = MIGRATIONS[:1]
    async with await Store.open(db_path, migrations=version_1) as store:
        await store.add_extension("1001", "password", "Desk", "ccpbx")
        await store.add_extension("alice", "password", "Alice", "ccpbx")
        await store.save_binding(_binding("1001"))
        await store.set_meta("realm", "ccpbx")
        assert await store.schema_version() == 1
        tables = {r[0] for r in await store._fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "cdrs" not in tables and "extension_features" not in tables
        before = (await store.list_extensions(), await store.load_bindings())

    async with await Store.open(db_path) as store:
        assert await store.schema_version() == len(MIGRATIONS) >= 2
        assert (await store.list_extensions(), await store.load_bindings()) == before
        assert await store.get_meta("realm") == "ccpbx"
        # The new tables work with the old rows: features reference the old extensions, cascade included.
        await store.set_features(ExtensionFeatures("alice", dnd=True))
        assert await store.get_features("alice") == ExtensionFeatures("alice", dnd=True)
        await store.remove_extension("alice")
        assert await store.list_features() == {}
        assert await store.list_cdrs() == []
        assert [e.ext for e in await store.list_extensions()] == ["1001"]


async def test_migration_2_indexes_exist(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        indexes = {r[0] for r in await store._fetchall("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"cdrs_start", "cdrs_caller", "cdrs_callee", "cdrs_destination", "cdrs_open"} <= indexes
        plan = await store._fetchall(
            "EXPLAIN QUERY PLAN SELECT call_id FROM cdrs WHERE start >= ? ORDER BY start, call_id", (0.0,)
        )
        assert any("cdrs_start" in str(row[3]) for row in plan)


async def test_migration_3_keeps_features_and_turns_call_waiting_on(db_path: Path) -> None:
    async with await Store.open(db_path, migrations=MIGRATIONS[:2]) as store:
        await store.add_extension("1001", "password", "", "ccpbx")
        async with store._transaction() as db:  # a version-2 row, written as version 2 wrote them
            await db.execute("INSERT INTO extension_features (ext, dnd, forward_busy) VALUES ('1001', 1, '1002')")
    async with await Store.open(db_path) as store:
        assert await store.schema_version() == len(MIGRATIONS) >= 3
        assert await store.get_features("1001") == ExtensionFeatures("1001", dnd=True, forward_busy="1002")
        await store.set_features(ExtensionFeatures("1001", call_waiting=False))
        assert (await store.get_features("1001")).call_waiting is False
        assert await store.list_features() == {"1001": ExtensionFeatures("1001", call_waiting=False)}
