"""SQLite store: extensions (HA1 only), registrar bindings, meta, migrations and transactions."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.config import DigestAlgorithm
from ccpbx.pbx.location import Binding
from ccpbx.pbx.store import (
    MIGRATIONS,
    CdrRow,
    DuplicateExtension,
    Extension,
    ExtensionNotFound,
    Migration,
    SchemaTooNewError,
    Store,
    StoreError,
    digest_ha1,
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "ccpbx.sqlite3"


def _binding(**changes: object) -> Binding:
    base = Binding(
        aor="1001", contact="sip:1001@192.0.2.7:5062;transport=tcp", expires_at=1_700_003_600.25,
        call_id="a84b4c76e66710@pc33", cseq=314159, transport="tcp", source_host="198.51.100.4",
        source_port=40000, q=0.7, user_agent="baresip 3.0", instance_id="<urn:uuid:f81d4fae-7dec-11d0-a765>",
        reg_id=2, registered_at=1_700_000_000.5,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- opening ---------------------------------------------------------------------------------------------


async def test_open_creates_directories_and_sets_pragmas(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        assert db_path.is_file()
        assert await store.schema_version() == len(MIGRATIONS)
        rows = await store._fetchall("PRAGMA journal_mode")
        assert rows[0][0] == "wal"
        rows = await store._fetchall("PRAGMA foreign_keys")
        assert rows[0][0] == 1
        rows = await store._fetchall("PRAGMA busy_timeout")
        assert rows[0][0] >= 1000


async def test_close_is_idempotent(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.close()
    await store.close()


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "ccpbx.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        await Store.open(path)


# -- extensions ------------------------------------------------------------------------------------------


async def test_extension_crud(db_path: Path) -> None:
    clock = FakeClock()
    async with await Store.open(db_path, clock=clock) as store:
        assert await store.get_extension("1001") is None
        added = await store.add_extension("1001", "correct horse", "Reception", "ccpbx")
        assert added == Extension(
            "1001", "Reception", "ccpbx",
            hashlib.md5(b"1001:ccpbx:correct horse").hexdigest(),
            hashlib.sha256(b"1001:ccpbx:correct horse").hexdigest(),
            clock.now, clock.now,
        )
        assert await store.get_extension("1001") == added

        clock.now += 60
        await store.set_password("1001", "battery staple", "office")
        changed = await store.get_extension("1001")
        assert changed is not None
        assert changed.realm == "office"
        assert changed.ha1(DigestAlgorithm.MD5) == digest_ha1("MD5", "1001", "office", "battery staple")
        assert changed.ha1(DigestAlgorithm.SHA_256) == digest_ha1("SHA-256", "1001", "office", "battery staple")
        assert changed.ha1_by_algorithm() == {"MD5": changed.ha1_md5, "SHA-256": changed.ha1_sha256}
        assert (changed.created_at, changed.updated_at) == (added.created_at, clock.now)

        await store.set_name("1001", "Front desk")
        assert (await store.get_extension("1001")).name == "Front desk"  # type: ignore[union-attr]

        await store.remove_extension("1001")
        assert await store.get_extension("1001") is None
        assert await store.list_extensions() == []


async def test_list_orders_numbers_numerically_then_names(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        for ext in ("alice", "1002", "200", "bob", "10"):
            await store.add_extension(ext, "password", "", "ccpbx")
        assert [e.ext for e in await store.list_extensions()] == ["10", "200", "1002", "alice", "bob"]
        assert await store.count_extensions() == 5


async def test_duplicate_extension_is_refused_and_keeps_the_original(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        original = await store.add_extension("1001", "first password", "One", "ccpbx")
        with pytest.raises(DuplicateExtension) as info:
            await store.add_extension("1001", "second password", "Two", "ccpbx")
        assert info.value.ext == "1001"
        assert isinstance(info.value, StoreError)
        assert await store.get_extension("1001") == original


async def test_missing_extension_errors(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        with pytest.raises(ExtensionNotFound):
            await store.set_password("404", "whatever1", "ccpbx")
        with pytest.raises(ExtensionNotFound):
            await store.remove_extension("404")
        with pytest.raises(ExtensionNotFound):
            await store.set_name("404", "x")


async def test_a_failed_batch_writes_nothing(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.add_extension("1002", "password", "", "ccpbx")
        with pytest.raises(DuplicateExtension):
            await store.add_extensions(
                [("1001", "password", ""), ("1002", "password", ""), ("1003", "password", "")],
                "ccpbx", meta={"flag": "1"},
            )
        assert [e.ext for e in await store.list_extensions()] == ["1002"]
        assert await store.get_meta("flag") is None
        # The connection is usable afterwards (the transaction was rolled back, not left open).
        await store.add_extension("1001", "password", "", "ccpbx")
        assert await store.count_extensions() == 2


async def test_passwords_are_never_stored(db_path: Path) -> None:
    password = "Plaintext-Sentinel-8472"
    async with await Store.open(db_path) as store:
        await store.add_extension("alice", password, "Alice", "ccpbx")
        await store.set_password("alice", password + "-2", "ccpbx")
    data = b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.is_file())
    assert b"alice" in data  # the scan does see the database contents
    assert password.encode() not in data


async def test_concurrent_writers_all_land(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await asyncio.gather(*(store.add_extension(str(2000 + i), "password", "", "ccpbx") for i in range(30)))
        assert await store.count_extensions() == 30


# -- persistence and migrations --------------------------------------------------------------------------


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        added = await store.add_extension("alice", "password1", "Alice", "ccpbx")
        await store.save_binding(_binding(aor="alice"))
        await store.set_meta("realm", "ccpbx")
    async with await Store.open(db_path) as store:
        assert await store.get_extension("alice") == added
        assert await store.load_bindings() == [_binding(aor="alice")]
        assert await store.get_meta("realm") == "ccpbx"


async def test_migrations_run_once(db_path: Path) -> None:
    for _ in range(3):
        async with await Store.open(db_path) as store:
            rows = await store._fetchall("SELECT version FROM schema_version ORDER BY version")
            assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


async def test_appended_migrations_apply_to_an_existing_database(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.add_extension("1001", "password", "", "ccpbx")
    later = (*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "cdr", ("CREATE TABLE cdr (id INTEGER PRIMARY KEY)",)))
    for _ in range(2):
        async with await Store.open(db_path, migrations=later) as store:
            assert await store.schema_version() == len(later)
            assert await store._fetchall("SELECT COUNT(*) FROM cdr")
            assert await store.count_extensions() == 1


async def test_a_failing_migration_leaves_the_database_as_it_was(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.add_extension("1001", "password", "", "ccpbx")
    broken = (
        *MIGRATIONS,
        Migration(len(MIGRATIONS) + 1, "half", ("CREATE TABLE half (x)", "THIS IS NOT SQL")),
    )
    with pytest.raises(StoreError):
        await Store.open(db_path, migrations=broken)
    async with await Store.open(db_path) as store:
        assert await store.schema_version() == len(MIGRATIONS)
        tables = {r[0] for r in await store._fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "half" not in tables
        assert await store.count_extensions() == 1


async def test_a_newer_database_is_refused(db_path: Path) -> None:
    later = (*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "future", ("CREATE TABLE future (x)",)))
    async with await Store.open(db_path, migrations=later):
        pass
    with pytest.raises(SchemaTooNewError):
        await Store.open(db_path)


async def test_migrations_must_be_numbered_in_order(db_path: Path) -> None:
    with pytest.raises(ValueError):
        await Store.open(db_path, migrations=(Migration(2, "skip", ()),))


# -- bindings --------------------------------------------------------------------------------------------


def test_every_binding_field_has_a_column() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async def columns() -> set[str]:
            async with await Store.open(Path(tmp) / "db.sqlite3") as store:
                return {r[1] for r in await store._fetchall("PRAGMA table_info(bindings)")}

        assert {f.name for f in dataclasses.fields(Binding)} | {"key"} == asyncio.run(columns())


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_bindings = st.builds(
    Binding,
    aor=_text, contact=_text.filter(bool), expires_at=st.floats(0, 4e9), call_id=_text,
    cseq=st.integers(0, 2**31 - 1), transport=st.sampled_from(["udp", "tcp", "tls"]), source_host=_text,
    source_port=st.integers(0, 65535), q=st.none() | st.floats(0, 1), user_agent=_text, instance_id=_text,
    reg_id=st.none() | st.integers(0, 2**31 - 1), registered_at=st.floats(0, 4e9),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_bindings, max_size=4))
def test_bindings_round_trip_every_field(bindings: list[Binding]) -> None:
    async def round_trip() -> list[Binding]:
        with tempfile.TemporaryDirectory() as tmp:
            async with await Store.open(Path(tmp) / "db.sqlite3") as store:
                for b in bindings:
                    await store.save_binding(b)
            async with await Store.open(Path(tmp) / "db.sqlite3") as store:
                return await store.load_bindings()

    # The last save for an (aor, key) wins, as in the location service.
    expected = {(b.aor, b.instance_id or b.contact): b for b in bindings}
    assert sorted(asyncio.run(round_trip()), key=repr) == sorted(expected.values(), key=repr)


async def test_binding_replace_and_delete(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        by_instance = _binding()
        await store.save_binding(by_instance)
        # Same +sip.instance, new contact: the same binding, replaced (RFC 5626 §6).
        moved = _binding(contact="sip:1001@203.0.113.9", cseq=314160)
        await store.save_binding(moved)
        by_contact = _binding(instance_id="", contact="sip:1001@192.0.2.50", reg_id=None, q=None)
        await store.save_binding(by_contact)
        await store.save_binding(_binding(aor="1002", instance_id="", expires_at=10.0))
        assert sorted(await store.load_bindings(), key=repr) == sorted(
            [moved, by_contact, _binding(aor="1002", instance_id="", expires_at=10.0)], key=repr
        )

        assert await store.delete_expired_bindings(now=100.0) == 1
        await store.delete_binding("1001", moved.instance_id)
        assert await store.load_bindings() == [by_contact]
        await store.delete_binding("1001", "no such key")
        await store.delete_bindings("1001")
        assert await store.load_bindings() == []


async def test_removing_an_extension_removes_its_bindings(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.add_extension("1001", "password", "", "ccpbx")
        await store.add_extension("1002", "password", "", "ccpbx")
        await store.save_binding(_binding(aor="1001"))
        await store.save_binding(_binding(aor="1002"))
        await store.remove_extension("1001")
        assert [b.aor for b in await store.load_bindings()] == ["1002"]


# -- meta ------------------------------------------------------------------------------------------------


async def test_meta_get_set_overwrite(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        assert await store.get_meta("realm") is None
        await store.set_meta("realm", "ccpbx")
        await store.set_meta("realm", "office")
        assert await store.get_meta("realm") == "office"


def test_digest_ha1_matches_rfc_2617_and_rejects_unknown_algorithms() -> None:
    # RFC 2617 §3.5: HA1 of Mufasa / testrealm@host.com / "Circle Of Life".
    assert digest_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life") == "939e7578ed9e3c518a452acee763bce9"
    with pytest.raises(ValueError):
        digest_ha1("SHA-1", "a", "b", "c")


def test_sqlite_errors_are_not_swallowed_on_closed_store(db_path: Path) -> None:
    async def use_after_close() -> None:
        store = await Store.open(db_path)
        await store.close()
        await store.get_meta("x")

    with pytest.raises((ValueError, sqlite3.ProgrammingError)):
        asyncio.run(use_after_close())


async def test_a_transaction_cancelled_at_its_begin_does_not_block_the_next(tmp_path: Path) -> None:
    """A task cancelled while its BEGIN waited for the database thread (a server stopping cancels its tasks)
    left the transaction open, and every later write failed: "cannot start a transaction within a transaction"."""
    store = await Store.open(tmp_path / "s.sqlite3")
    try:
        for _ in range(20):
            task = asyncio.ensure_future(store.set_meta("k", "v1"))
            await asyncio.sleep(0)  # it is now waiting for its BEGIN
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.set_meta("k", "v2")  # must not raise
            assert await store.get_meta("k") == "v2"
    finally:
        await store.close()


async def test_a_backlog_of_registrations_is_written_in_bounded_transactions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ccpbx.pbx import app
    from tests.pbx.simnet import registered, sim_pbx

    users = {f"17{i:02d}": f"pw-17{i:02d}-bounded" for i in range(5)}
    async with sim_pbx(tmp_path, "", users) as server:
        phones = [await registered(server, user, password) for user, password in users.items()]
        bindings = [b for user in users for b in server.location.lookup(user, time.time())]
        assert len(bindings) == 5
        for user in users:
            await server.store.delete_bindings(user)
        monkeypatch.setattr(app, "FLUSH_BATCH_MAX", 2)
        writes: list[int] = []
        real = server.store.write_bindings

        async def counting(saved: list[Binding], removed: list[tuple[str, str]]) -> None:
            writes.append(len(saved) + len(removed))
            await real(saved, removed)

        monkeypatch.setattr(server.store, "write_bindings", counting)
        for b in bindings:  # five changes waiting at once, as after a burst of REGISTERs
            server._binding_changed(b, True)
        await server._flush()
        assert writes == [2, 2, 1]
        assert sorted(b.aor for b in await server.store.load_bindings()) == sorted(users)
        for phone in phones:
            await phone.close()


async def test_a_register_is_answered_only_once_its_binding_is_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh, whose extension an earlier REGISTER cached, is decided and applied without a task, and its 200
    still waits for the commit of its binding: the phone is never told of a registration a kill -9 could lose.
    One that arrives while a commit is under way waits for the next."""
    from tests.pbx.simnet import registered, sim_pbx

    users = {"1801": "pw-1801-durable", "1802": "pw-1802-durable"}
    async with sim_pbx(tmp_path, "", users) as server:
        phones = [await registered(server, user, password) for user, password in users.items()]  # now cached
        entered, gate = asyncio.Event(), asyncio.Event()
        writes: list[list[tuple[str, float]]] = []
        real = server.store.write_bindings

        async def held(saved: list[Binding], removed: list[tuple[str, str]]) -> None:
            writes.append([(b.aor, b.expires_at) for b in saved])
            entered.set()
            await gate.wait()
            await real(saved, removed)

        monkeypatch.setattr(server.store, "write_bindings", held)
        tasks_before = set(server._tasks)
        try:
            first = asyncio.ensure_future(phones[0].register(expires=120))
            await asyncio.wait_for(entered.wait(), 5)
            assert set(server._tasks) == tasks_before  # admitted and applied with no task of its own
            second = asyncio.ensure_future(phones[1].register(expires=150))  # comes while the first commit waits
            await asyncio.sleep(0.2)
            assert not first.done() and not second.done()  # no 200 before the commit
        finally:
            t0 = time.time()
            gate.set()  # (a failed assertion must not leave the server's stop waiting for this write)
        assert (await first).status == 200 and (await second).status == 200
        assert [[aor for aor, _ in w] for w in writes] == [["1801"], ["1802"]]
        stored = {b.aor: b.expires_at for b in await server.store.load_bindings()}
        assert t0 + 100 < stored["1801"] <= t0 + 121 and t0 + 130 < stored["1802"] <= t0 + 151
        for phone in phones:
            await phone.close()


async def test_call_records_are_group_committed_newest_state_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first record after a quiet spell is written at once; what a call goes through in the next
    ``CDR_BATCH_INTERVAL_S`` (answered, ended) joins one later transaction as one row, its last state."""
    from ccpbx.pbx import app
    from ccpbx.pbx.cdr import CallRecord, Disposition
    from tests.pbx.simnet import sim_pbx

    monkeypatch.setattr(app, "CDR_BATCH_INTERVAL_S", 0.3)
    async with sim_pbx(tmp_path, "", {}) as server:
        batches: list[list[tuple[str, float | None]]] = []
        real = server.store.upsert_cdrs

        async def counting(rows: list[CdrRow]) -> None:
            batches.append([(r.call_id, r.end) for r in rows])
            await real(rows)

        monkeypatch.setattr(server.store, "upsert_cdrs", counting)
        t0 = time.time()
        begun = CallRecord(call_id="c1", sip_call_id="s1", caller="1001", caller_name="", callee="1002",
                           destination="", start=t0)
        server._on_cdr("c1", begun, False)
        for _ in range(50):
            if batches:
                break
            await asyncio.sleep(0.01)
        assert batches == [[("c1", None)]]  # idle until now: at once, not after the interval
        answered = dataclasses.replace(begun, answer=t0 + 1)
        ended = dataclasses.replace(answered, end=t0 + 2, disposition=Disposition.ANSWERED)
        other = dataclasses.replace(begun, call_id="c2", sip_call_id="s2")
        server._on_cdr("c1", answered, False)
        server._on_cdr("c2", lambda: other, False)  # a call in progress: built when written
        server._on_cdr("c1", ended, True)
        server._on_cdr("c1", lambda: answered, False)  # a later record that is not final does not replace it
        await asyncio.sleep(0.1)
        assert len(batches) == 1  # within the interval: nothing written yet
        for _ in range(100):
            if len(batches) > 1:
                break
            await asyncio.sleep(0.01)
        assert sorted(batches[1]) == [("c1", t0 + 2), ("c2", None)]
        row = await server.store.get_cdr("c1")
        assert row is not None and row.end == t0 + 2


async def test_call_record_built_when_written_and_a_failing_build_costs_no_other(tmp_path: Path) -> None:
    """A record given as what builds it is built as the batch is written (the newest state of the call), and
    one that cannot be built is logged and left out while the rest of its batch is stored."""
    from ccpbx.pbx.cdr import CallRecord
    from tests.pbx.simnet import sim_pbx

    async with sim_pbx(tmp_path, "", {}) as server:
        t0 = time.time()
        state = {"callee": "1002"}

        def build() -> CallRecord:
            return CallRecord(call_id="c3", sip_call_id="s3", caller="1001", caller_name="",
                              callee=state["callee"], destination="", start=t0)

        def broken() -> CallRecord:
            raise ValueError("bad call data")

        server._on_cdr("c4", broken, False)
        server._on_cdr("c3", build, False)
        state["callee"] = "1003"  # changed after queueing, before the write: the row says 1003
        row = None
        for _ in range(200):
            row = await server.store.get_cdr("c3")
            if row is not None:
                break
            await asyncio.sleep(0.01)
        assert row is not None and row.callee == "1003"
        assert await server.store.get_cdr("c4") is None


@pytest.mark.parametrize("one_trip", [True, False], ids=["one-trip", "trip-per-step"])
async def test_batched_writes_are_one_transaction_all_or_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_trip: bool) -> None:
    """CDR batches and registration flushes go in one transaction (in one trip to the database thread where
    aiosqlite allows, else a trip per step): a failing statement leaves nothing of the batch, and the next
    write works (no transaction left open)."""
    from ccpbx.pbx import store as store_module

    monkeypatch.setattr(store_module, "_RUNS_FUNCTIONS", one_trip)
    async with await Store.open(tmp_path / "s.sqlite3") as store:
        good = ("INSERT INTO meta (key, value) VALUES (?, ?)", [("a", "1"), ("b", "2")])
        with pytest.raises(sqlite3.OperationalError):
            await store._write_many([good, ("INSERT INTO no_such_table VALUES (?)", [(1,)])])
        assert await store.get_meta("a") is None and await store.get_meta("b") is None
        await store._write_many([good])
        assert (await store.get_meta("a"), await store.get_meta("b")) == ("1", "2")
        # cancelled while its trip is queued: the transaction still ends (committed), the next one starts
        task = asyncio.ensure_future(store._write_many([("INSERT INTO meta (key, value) VALUES (?, ?)",
                                                         [("c", "3")])]))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.set_meta("d", "4")
        assert await store.get_meta("d") == "4"
