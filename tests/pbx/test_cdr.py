"""Call detail records: the model, its store round trip, the writer, crash recovery, filters, CSV export."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.cdr import (
    CSV_COLUMNS,
    CallRecord,
    CdrDecodeError,
    CdrWriter,
    Disposition,
    HangupSide,
    LegRecord,
    LegRole,
    close_incomplete,
    csv_fields,
    iso_time,
    iter_records,
    list_records,
    write_csv,
)
from ccpbx.pbx.store import CdrRow, DuplicateCdrError, Store, StoreError

T0 = 1_790_000_000.0  # 2026-09-21, an arbitrary fixed wall-clock time


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ccpbx.sqlite3"


def _record(n: int = 0, **changes: object) -> CallRecord:
    start = T0 + 60 * n
    base = CallRecord(
        call_id=f"call-{n:05d}", sip_call_id=f"a84b4c76e66710-{n}@pc33", caller="1001", caller_name="Front Desk",
        callee="1002", destination="extension:1002", start=start, answer=start + 4.5, end=start + 65.25,
        disposition=Disposition.ANSWERED, hangup_side=HangupSide.CALLEE, hangup_status=200,
        legs=(
            LegRecord(LegRole.CALLER, f"a84b4c76e66710-{n}@pc33", "1001", start, start + 4.5, start + 65.25, 200),
            LegRecord(LegRole.CALLEE, f"b2b-{n}", "sip:1002@192.0.2.9:5062", start + 0.1, start + 4.5,
                      start + 65.25, 200),
        ),
        transfers=(), parent_call_id=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- the model --------------------------------------------------------------------------------------------


def test_duration_and_billsec() -> None:
    record = _record()
    assert record.duration == pytest.approx(65.25)
    assert record.billsec == pytest.approx(60.75)
    assert not record.is_open
    open_record = dataclasses.replace(record, end=None)
    assert open_record.is_open and open_record.duration is None and open_record.billsec == 0.0
    unanswered = dataclasses.replace(record, answer=None, disposition=Disposition.NO_ANSWER)
    assert unanswered.billsec == 0.0 and unanswered.duration == pytest.approx(65.25)
    stepped_back = dataclasses.replace(record, end=record.start - 1.0)  # the wall clock stepped back
    assert stepped_back.duration == 0.0 and stepped_back.billsec == 0.0


def test_new_answered_ended_and_leg_updates() -> None:
    record = CallRecord.new("sip-1", "1001", "600", T0, caller_name="Desk", destination="group:sales")
    assert len(record.call_id) == 32 and record.call_id != CallRecord.new("sip-1", "1001", "600", T0).call_id
    assert (record.disposition, record.end, record.answer) == (Disposition.INCOMPLETE, None, None)

    leg = LegRecord(LegRole.CALLEE, "leg-1", "1002", T0 + 0.2)
    record = record.with_leg(leg)
    record = record.with_leg(leg.answered(T0 + 3))
    assert record.legs == (LegRecord("callee", "leg-1", "1002", T0 + 0.2, T0 + 3),)  # replaced, not appended
    record = record.with_leg(LegRecord(LegRole.CALLEE, "leg-2", "1003", T0 + 0.2))
    assert [leg.sip_call_id for leg in record.legs] == ["leg-1", "leg-2"]

    record = record.answered(T0 + 3, destination="extension:1002")
    assert (record.disposition, record.destination, record.answer) == (Disposition.ANSWERED, "extension:1002", T0 + 3)
    record = record.with_transfer("next").with_transfer("next")
    assert record.transfers == ("next",)

    done = record.ended(T0 + 10, hangup_side=HangupSide.CALLER)
    assert (done.disposition, done.end, done.billsec) == (Disposition.ANSWERED, T0 + 10, 7.0)
    failed = CallRecord.new("s", "1001", "9", T0).ended(T0 + 1, hangup_status=404)
    assert (failed.disposition, failed.hangup_status) == (Disposition.FAILED, 404)
    busy = CallRecord.new("s", "1001", "9", T0).ended(T0 + 1, Disposition.BUSY, HangupSide.CALLEE, 486)
    assert busy.disposition is Disposition.BUSY and busy.hangup_side is HangupSide.CALLEE


def test_enum_values_are_coerced_and_bad_values_refused() -> None:
    record = _record(disposition="busy", hangup_side="caller", legs=[], transfers=["x"])
    assert record.disposition is Disposition.BUSY and record.hangup_side is HangupSide.CALLER
    assert record.legs == () and record.transfers == ("x",)
    for changes in ({"disposition": "hung"}, {"hangup_side": "nobody"}, {"start": float("nan")},
                    {"end": float("inf")}, {"call_id": ""}, {"hangup_status": "486"}, {"transfers": ("",)}):
        with pytest.raises(ValueError):
            _record(**changes)
    with pytest.raises(ValueError):
        LegRecord("callee", "x", "1002", float("nan"))


_times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_text = st.text(max_size=20)
_legs = st.builds(
    LegRecord, role=st.sampled_from([*LegRole, "spy"]), sip_call_id=_text, peer=_text, start=_times,
    answer=st.none() | _times, end=st.none() | _times, status=st.none() | st.integers(100, 699),
)
_records = st.builds(
    CallRecord, call_id=st.text(min_size=1, max_size=32), sip_call_id=_text, caller=_text, caller_name=_text,
    callee=_text, destination=_text, start=_times, answer=st.none() | _times, end=st.none() | _times,
    disposition=st.sampled_from(Disposition), hangup_side=st.none() | st.sampled_from(HangupSide),
    hangup_status=st.none() | st.integers(0, 699), legs=st.lists(_legs, max_size=3).map(tuple),
    transfers=st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple),
    parent_call_id=st.none() | _text,
)


@settings(max_examples=60, deadline=None)
@given(_records)
def test_rows_round_trip(record: CallRecord) -> None:
    row = record.to_row()
    assert isinstance(json.loads(row.legs), list)
    assert CallRecord.from_row(row) == record


@settings(max_examples=15, deadline=None)
@given(st.lists(_records, min_size=1, max_size=4, unique_by=lambda r: r.call_id))
def test_records_round_trip_through_the_store(records: list[CallRecord]) -> None:
    async def check(path: Path) -> None:
        async with await Store.open(path) as store:
            for record in records:
                await store.upsert_cdr(record.to_row())
            for record in records:
                stored = await store.get_cdr(record.call_id)
                assert stored is not None and CallRecord.from_row(stored) == record
            assert sorted(await list_records(store), key=lambda r: r.call_id) == sorted(
                records, key=lambda r: r.call_id
            )

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(check(Path(tmp) / "ccpbx.sqlite3"))


def test_a_broken_row_is_a_decode_error() -> None:
    good = _record().to_row()
    for changes in ({"legs": "{not json"}, {"legs": '{"a": 1}'}, {"transfers": "5"}, {"disposition": "odd"},
                    {"legs": '[{"role": "x", "start": "soon"}]'}, {"transfers": "[1]"}):
        with pytest.raises(CdrDecodeError, match="call-00000"):
            CallRecord.from_row(dataclasses.replace(good, **changes))  # type: ignore[arg-type]
    assert issubclass(CdrDecodeError, StoreError)


# -- the writer and crash recovery -----------------------------------------------------------------------------


async def test_begin_stores_an_incomplete_row_at_once(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        writer = CdrWriter(store)
        record = CallRecord.new("sip-1", "1001", "1002", T0, caller_name="Desk")
        await writer.begin(record.answered(T0))  # whatever it says, the row starts out incomplete and open
        row = await store.get_cdr(record.call_id)
        assert row is not None
        assert (row.disposition, row.end, row.answer) == ("incomplete", None, T0)
        with pytest.raises(DuplicateCdrError):
            await writer.begin(record)
        with pytest.raises(ValueError):
            await writer.begin(_record(call_id="ended"))

        leg = LegRecord(LegRole.CALLEE, "leg-b", "1002", T0 + 0.1)
        await writer.update(record.with_leg(leg))
        stored = await list_records(store)
        assert [r.legs for r in stored] == [(leg,)]

        final = record.with_leg(leg.ended(T0 + 5, 486)).ended(T0 + 5, Disposition.BUSY, HangupSide.CALLEE, 486)
        assert await writer.finish(final) is True
        (stored_final,) = await list_records(store)
        assert stored_final == final
        with pytest.raises(ValueError):
            await writer.finish(record)  # no end


async def test_finish_reports_a_storage_failure_instead_of_raising(db_path: Path) -> None:
    store = await Store.open(db_path)
    writer = CdrWriter(store)
    await store.close()
    assert await writer.finish(_record()) is False


async def test_update_inserts_when_begin_was_missed(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await CdrWriter(store).update(_record(end=None))
        assert await store.get_cdr("call-00000") is not None


async def test_close_incomplete_after_a_restart(db_path: Path) -> None:
    ringing = CallRecord.new("sip-r", "1001", "1002", T0, legs=(LegRecord("callee", "b", "1002", T0 + 0.5),))
    talking = CallRecord.new("sip-t", "1003", "1004", T0 + 10).answered(T0 + 12).with_leg(
        LegRecord("callee", "d", "1004", T0 + 10.1, T0 + 12, T0 + 40, 200)  # the leg saw a BYE at +40
    )
    future = CallRecord.new("sip-f", "1005", "1006", T0 + 10_000)  # started "after" now: clock stepped back
    done = _record(7)
    async with await Store.open(db_path) as store:
        writer = CdrWriter(store)
        for record in (ringing, talking, future):
            await writer.begin(record)
        await writer.update(talking)
        await writer.begin(dataclasses.replace(done, end=None))
        assert await writer.finish(done)
    # The process dies here; the next server start closes what it left open.
    now = T0 + 1_000
    async with await Store.open(db_path) as store:
        assert await close_incomplete(store, now) == 3
        assert await close_incomplete(store, now) == 0
        by_id = {r.call_id: r for r in await list_records(store)}
    for record, end in ((ringing, T0 + 0.5), (talking, T0 + 40), (future, T0 + 10_000)):
        closed = by_id[record.call_id]
        assert (closed.end, closed.disposition, closed.hangup_side) == (end, Disposition.INCOMPLETE,
                                                                          HangupSide.SYSTEM)
        assert closed.legs == record.legs
    assert by_id[talking.call_id].billsec == 28.0
    assert by_id[done.call_id] == done  # finished records are untouched


async def test_close_incomplete_caps_the_end_at_now(db_path: Path) -> None:
    record = CallRecord.new("s", "1001", "1002", T0, legs=(LegRecord("callee", "b", "1002", T0 + 500),))
    async with await Store.open(db_path) as store:
        await CdrWriter(store).begin(record)
        await store.upsert_cdr(dataclasses.replace(record.to_row(), legs="not json"))  # a damaged row too
        assert await close_incomplete(store, T0 + 100) == 1
        row = await store.get_cdr(record.call_id)
        assert row is not None and row.end == T0  # no valid leg times: the start


# -- reading and filters ----------------------------------------------------------------------------------------


async def _fill(store: Store) -> list[CallRecord]:
    records = [
        _record(0),
        _record(1, caller="1002", callee="1001", destination="extension:1001"),
        _record(2, caller="1003", callee="600", destination="group:sales"),
        _record(3, caller="1003", callee="600", destination="extension:1002"),  # hunted to 1002
        _record(4, caller="+4930123", callee="1004", destination="extension:1004", answer=None, end=None,
                disposition=Disposition.INCOMPLETE, hangup_side=None, hangup_status=None),
    ]
    for record in reversed(records):
        await store.upsert_cdr(record.to_row())
    return records


async def test_filters_and_order(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        r = await _fill(store)
        assert await list_records(store) == r[::-1]
        assert await list_records(store, newest_first=False) == r
        assert await list_records(store, limit=2) == [r[4], r[3]]
        assert await list_records(store, limit=0) == []
        assert await list_records(store, since=r[1].start) == [r[4], r[3], r[2], r[1]]
        assert await list_records(store, until=r[1].start) == [r[0]]  # until is exclusive
        assert await list_records(store, since=r[1].start, until=r[3].start, newest_first=False) == [r[1], r[2]]
        assert await list_records(store, extension="1002", newest_first=False) == [r[0], r[1], r[3]]
        assert await list_records(store, extension="1001", limit=1) == [r[1]]
        assert await list_records(store, extension="+4930123") == [r[4]]
        assert await list_records(store, extension="sales") == []  # groups are not extensions
        assert await list_records(store, extension="1002", since=r[2].start) == [r[3]]
        assert await store.count_cdrs(extension="1002") == 3
        assert await store.count_cdrs(since=r[3].start) == 2
        with pytest.raises(ValueError):
            await store.list_cdrs(limit=-1)


async def test_same_start_orders_by_call_id(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        for call_id in ("b", "c", "a"):
            await store.upsert_cdr(_record(call_id=call_id).to_row())
        assert [r.call_id for r in await list_records(store, newest_first=False)] == ["a", "b", "c"]
        assert [r.call_id async for r in iter_records(store, newest_first=True)] == ["c", "b", "a"]


async def test_iter_matches_list_in_both_orders_with_filters(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await _fill(store)
        for kwargs in ({}, {"extension": "1002"}, {"since": T0 + 60}, {"limit": 3}, {"until": T0 + 200}):
            for newest_first in (False, True):
                listed = [r.call_id for r in await list_records(store, newest_first=newest_first, **kwargs)]
                streamed = [
                    r.call_id async for r in iter_records(store, newest_first=newest_first, **kwargs)
                ]
                assert streamed == listed, kwargs
        rows = [r async for r in store.iter_cdrs(chunk_rows=2, limit=3)]
        assert [r.call_id for r in rows] == ["call-00000", "call-00001", "call-00002"]
        with pytest.raises(ValueError):
            _ = [r async for r in store.iter_cdrs(chunk_rows=0)]


async def test_export_of_5000_rows_streams_in_chunks(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    total = 5000
    async with await Store.open(db_path) as store:
        async with store._transaction() as db:  # a bulk load, as a busy month of calls would leave
            await db.executemany(
                'INSERT INTO cdrs (call_id, sip_call_id, caller, caller_name, callee, destination, start, answer, '
                '"end", disposition, hangup_side, hangup_status, legs, transfers, parent_call_id, data, end_reason, '
                "recording) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [dataclasses.astuple(_record(i % 1000, call_id=f"c{i:05d}").to_row()) for i in range(total)],
            )
        fetched: list[int] = []
        original = store._fetchall

        async def counting_fetchall(sql: str, params: object = ()) -> list[object]:
            rows = await original(sql, params)  # type: ignore[arg-type]
            fetched.append(len(rows))
            return rows  # type: ignore[return-value]

        monkeypatch.setattr(store, "_fetchall", counting_fetchall)
        out = io.StringIO(newline="")
        seen: list[int] = []
        count = await write_csv(iter_records(store), out, progress=seen.append)
        assert count == total and seen[-1] == total
        assert max(fetched) <= 1000 and len(fetched) >= total // 1000  # never the whole table at once
        rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
        assert len(rows) == total
        assert len({r["call_id"] for r in rows}) == total
        starts = [datetime.fromisoformat(r["start_iso"]).timestamp() for r in rows]
        assert starts == sorted(starts)


# -- CSV --------------------------------------------------------------------------------------------------------


async def test_csv_export_parses_back_to_the_records(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        records = await _fill(store)
        chained = _record(9, parent_call_id="call-00003", transfers=("call-00003", "call-00010"), caller_name='A, "B"')
        await store.upsert_cdr(chained.to_row())
        records.append(chained)
        out = io.StringIO(newline="")
        assert await write_csv(iter_records(store), out) == len(records)
    reader = csv.reader(io.StringIO(out.getvalue(), newline=""))
    assert tuple(next(reader)) == CSV_COLUMNS
    parsed = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in reader]
    assert len(parsed) == len(records)

    def time_of(text: str) -> float | None:
        return datetime.fromisoformat(text).timestamp() if text else None

    for row, record in zip(parsed, records, strict=True):
        assert (row["call_id"], row["sip_call_id"], row["caller"], row["caller_name"], row["callee"],
                row["destination"]) == (record.call_id, record.sip_call_id, record.caller, record.caller_name,
                                        record.callee, record.destination)
        assert time_of(row["start_iso"]) == pytest.approx(record.start, abs=1e-3)
        assert row["start_iso"].endswith("+00:00")
        for key, expected in (("answer_iso", record.answer), ("end_iso", record.end)):
            assert (time_of(row[key]) is None) == (expected is None)
            if expected is not None:
                assert time_of(row[key]) == pytest.approx(expected, abs=1e-3)
        assert (float(row["duration"]) if row["duration"] else None) == (
            None if record.duration is None else pytest.approx(record.duration, abs=1e-3)
        )
        assert float(row["billsec"]) == pytest.approx(record.billsec, abs=1e-3)
        assert Disposition(row["disposition"]) is record.disposition
        assert (HangupSide(row["hangup_side"]) if row["hangup_side"] else None) is record.hangup_side
        assert (int(row["hangup_status"]) if row["hangup_status"] else None) == record.hangup_status
        assert int(row["legs"]) == len(record.legs)
        assert tuple(row["transfers"].split()) == record.transfers
        assert (row["parent_call_id"] or None) == record.parent_call_id


def test_csv_fields_of_an_open_call() -> None:
    fields = dict(zip(CSV_COLUMNS, csv_fields(_record(end=None, answer=None, hangup_side=None,
                                                              hangup_status=None)), strict=True))
    assert (fields["end_iso"], fields["answer_iso"], fields["duration"], fields["billsec"]) == ("", "", "", "0.000")
    assert (fields["hangup_side"], fields["hangup_status"], fields["legs"]) == ("", "", "2")
    assert iso_time(0.25) == "1970-01-01T00:00:00.250+00:00"
    assert iso_time(None) == ""


async def test_write_csv_accepts_any_async_iterable() -> None:
    async def two() -> AsyncIterator[CallRecord]:
        yield _record(0)
        yield _record(1)

    out = io.StringIO(newline="")
    assert await write_csv(two(), out) == 2
    assert out.getvalue().count("\r\n") == 3


def test_cdr_row_defaults_are_empty_json() -> None:
    row = CdrRow("x", "s", "1001", "", "1002", "", T0, None, None, "incomplete", None, None)
    record = CallRecord.from_row(row)
    assert (record.legs, record.transfers, record.parent_call_id) == ((), (), None)


async def test_the_store_defaults_for_closing_match_the_enums(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await CdrWriter(store).begin(CallRecord.new("s", "1001", "1002", T0))
        assert await store.close_incomplete_cdrs(T0 + 1) == 1
        (record,) = await list_records(store)
        assert (record.disposition, record.hangup_side, record.end) == (Disposition.INCOMPLETE, HangupSide.SYSTEM, T0)


async def test_attached_data_end_reason_and_recording_round_trip(db_path: Path) -> None:
    record = _record(7, data={"account": "4711", "language": "de", "priority": 3}, end_reason="rtp_timeout",
                     recording="/var/lib/ccpbx/recordings/call-7.wav")
    async with await Store.open(db_path) as store:
        await store.upsert_cdrs([record.to_row()])
        row = await store.get_cdr(record.call_id)
    assert row is not None
    back = CallRecord.from_row(row)
    assert back.data == {"account": "4711", "language": "de", "priority": 3}
    assert (back.end_reason, back.recording) == ("rtp_timeout", "/var/lib/ccpbx/recordings/call-7.wav")
    assert back.to_json()["data"] == {"account": "4711", "language": "de", "priority": 3}
    fields = dict(zip(CSV_COLUMNS, csv_fields(back), strict=True))
    assert fields["end_reason"] == "rtp_timeout" and json.loads(fields["data"])["account"] == "4711"


def test_data_that_is_not_an_object_is_a_decode_error() -> None:
    row = dataclasses.replace(_record(1).to_row(), data="[1, 2]")
    with pytest.raises(CdrDecodeError, match="data must be a JSON object"):
        CallRecord.from_row(row)
