"""Call detail records (CDRs): what happened to each call, written while it happens, kept in the store.

A :class:`CallRecord` is one call as the caller experienced it: who called whom, what finally answered or was
tried, when it started, was answered and ended, how it ended (:class:`Disposition`, :class:`HangupSide` and the
final SIP status, RFC 3261 §21), and every leg the B2BUA created for it (:class:`LegRecord`). A transfer
(RFC 3515 REFER) continues the conversation in a new record whose ``parent_call_id`` names the old one, so the
records of one conversation form a chain, and ``transfers`` lists the records a call was transferred into or
from. The fields follow what billing systems expect of a PBX CDR (Asterisk's ``cdr`` module, ``billsec``
included), keyed by our own ``call_id`` rather than the SIP Call-ID, which each leg has its own of.

The server owns one :class:`CdrWriter`. :meth:`CdrWriter.begin` stores the record as soon as the call exists,
marked ``INCOMPLETE`` with no end, so a crash leaves an incomplete record, never nothing; at the next start
:func:`close_incomplete` closes such leftovers. Times are UNIX epoch seconds (wall clock), stamped by the caller
at the edge: this module reads no clock and does no logging (a failed final write is reported by
:meth:`CdrWriter.finish`'s return value for the caller to log).
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import math
import sqlite3
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from ccpbx.pbx.store import CdrRow, Store, StoreError

__all__ = [
    "CSV_COLUMNS",
    "CallRecord",
    "CdrDecodeError",
    "CdrWriter",
    "Disposition",
    "HangupSide",
    "LegRecord",
    "LegRole",
    "close_incomplete",
    "csv_fields",
    "iso_time",
    "iter_records",
    "list_records",
    "write_csv",
]

# The columns of a CSV export, in order (a header row names them).
CSV_COLUMNS: tuple[str, ...] = (
    "call_id", "sip_call_id", "caller", "caller_name", "callee", "destination", "start_iso", "answer_iso",
    "end_iso", "duration", "billsec", "disposition", "hangup_side", "hangup_status", "legs", "transfers",
    "parent_call_id", "end_reason", "recording", "data",
)
# Separates the call ids of the ``transfers`` CSV column (a call id never contains it).
CSV_TRANSFER_SEPARATOR = " "


class Disposition(enum.StrEnum):
    """How a call ended, from the caller's point of view."""

    ANSWERED = "answered"
    NO_ANSWER = "no_answer"  # rang out (408/480/487 after a timeout, or our own no-answer timer)
    BUSY = "busy"  # 486 Busy Here / 600 Busy Everywhere
    FAILED = "failed"  # no route, unreachable, 5xx, an error of ours
    CANCELLED = "cancelled"  # the caller gave up before an answer (CANCEL, RFC 3261 §9)
    REJECTED = "rejected"  # refused: 403, 603 Decline, do-not-disturb
    INCOMPLETE = "incomplete"  # in progress, or the server stopped or crashed during the call


class HangupSide(enum.StrEnum):
    """Who ended the call."""

    CALLER = "caller"
    CALLEE = "callee"
    SYSTEM = "system"  # the PBX: a timer, a failure, a shutdown


class LegRole(enum.StrEnum):
    """The usual roles of a leg (``LegRecord.role`` is a plain string, so others may be used)."""

    CALLER = "caller"
    CALLEE = "callee"
    TRANSFER_TARGET = "transfer-target"


class CdrDecodeError(StoreError):
    """A stored call record cannot be read back (bad JSON, an unknown disposition)."""


# The encoders of a record's JSON columns, made once: json.dumps with any option builds a new encoder per call,
# three a record, and a record is written for every call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DATA_JSON = json.JSONEncoder(separators=(",", ":"), default=str, allow_nan=False)


def _times_ok(start: object, answer: object, end: object) -> bool:
    """The common case in one call: a start, answer and end that are floats (the clock's) and finite (``x - x`` is
    NaN for an infinity or a NaN), the last two or None. Anything else is left to :func:`_check_time`, which also
    accepts ints and names what is wrong."""
    return (type(start) is float and start - start == 0.0
            and (answer is None or (type(answer) is float and answer - answer == 0.0))
            and (end is None or (type(end) is float and end - end == 0.0)))


def _check_time(name: str, value: float | None, *, optional: bool) -> None:
    if value is None:
        if not optional:
            raise ValueError(f"{name} must be a time, got None")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class LegRecord:
    """One SIP dialog of a call (a B2BUA leg): its role, Call-ID, peer, times and final SIP status."""

    role: str  # a LegRole value or another role name
    sip_call_id: str
    peer: str  # an extension or a URI
    start: float
    answer: float | None = None
    end: float | None = None
    status: int | None = None  # the final SIP response status (RFC 3261 §21), None while none

    def __post_init__(self) -> None:
        if not _times_ok(self.start, self.answer, self.end):
            _check_time("leg start", self.start, optional=False)
            _check_time("leg answer", self.answer, optional=True)
            _check_time("leg end", self.end, optional=True)
        if self.status is not None and (isinstance(self.status, bool) or not isinstance(self.status, int)):
            raise ValueError(f"leg status must be an int, got {self.status!r}")

    def answered(self, at: float) -> LegRecord:
        return dataclasses.replace(self, answer=at)

    def ended(self, at: float, status: int | None = None) -> LegRecord:
        return dataclasses.replace(self, end=at, status=self.status if status is None else status)

    def to_json(self) -> dict[str, object]:
        """A JSON object; the keys ``start``, ``answer``, ``end`` are also read by the store's SQL."""
        return {
            "role": str(self.role), "sip_call_id": self.sip_call_id, "peer": self.peer, "start": self.start,
            "answer": self.answer, "end": self.end, "status": self.status,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> LegRecord:
        def text(key: str) -> str:
            value = obj.get(key, "")
            if not isinstance(value, str):
                raise ValueError(f"leg {key} must be a string, got {value!r}")
            return value

        def number(key: str) -> float | None:
            value = obj.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"leg {key} must be a number, got {value!r}")
            return value

        start = number("start")
        status = obj.get("status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise ValueError(f"leg status must be an int, got {status!r}")
        return cls(
            role=text("role"), sip_call_id=text("sip_call_id"), peer=text("peer"),
            start=start if start is not None else math.nan, answer=number("answer"), end=number("end"),
            status=status,
        )


@dataclass(frozen=True, slots=True)
class CallRecord:
    """The detail record of one call. Immutable: updates make a new record (``dataclasses.replace`` or the
    ``answered``/``ended``/``with_leg``/``with_transfer`` helpers)."""

    call_id: str  # ours, unique (uuid4 hex from :meth:`new`)
    sip_call_id: str  # the caller leg's Call-ID
    caller: str
    caller_name: str
    callee: str  # as dialled
    destination: str  # what finally answered or was tried: "extension:1002", "group:sales", ...
    start: float
    answer: float | None = None
    end: float | None = None
    disposition: Disposition = Disposition.INCOMPLETE
    hangup_side: HangupSide | None = None
    hangup_status: int | None = None  # the SIP status (or cause) the call ended with
    legs: tuple[LegRecord, ...] = ()
    transfers: tuple[str, ...] = ()  # call_ids of the records this one was transferred into or from
    parent_call_id: str | None = None  # the record this one continues after a transfer
    data: Mapping[str, object] = dataclasses.field(default_factory=dict)  # attached data, JSON values
    end_reason: str | None = None  # why the system ended it: "rtp_timeout", "session_expired", ...
    recording: str | None = None  # the WAV file the call was recorded to

    def __post_init__(self) -> None:
        if not isinstance(self.call_id, str) or not self.call_id:
            raise ValueError(f"call_id must be a non-empty string, got {self.call_id!r}")
        if not _times_ok(self.start, self.answer, self.end):
            _check_time("start", self.start, optional=False)
            _check_time("answer", self.answer, optional=True)
            _check_time("end", self.end, optional=True)
        # Accept the enums' string values (as stored) and lists, keep the declared types inside.
        object.__setattr__(self, "disposition", Disposition(self.disposition))
        if self.hangup_side is not None:
            object.__setattr__(self, "hangup_side", HangupSide(self.hangup_side))
        if self.hangup_status is not None and (
            isinstance(self.hangup_status, bool) or not isinstance(self.hangup_status, int)
        ):
            raise ValueError(f"hangup_status must be an int, got {self.hangup_status!r}")
        object.__setattr__(self, "legs", tuple(self.legs))
        object.__setattr__(self, "transfers", tuple(self.transfers))
        if not all(isinstance(leg, LegRecord) for leg in self.legs):
            raise ValueError("legs must be LegRecord instances")
        if not all(isinstance(t, str) and t for t in self.transfers):
            raise ValueError(f"transfers must be non-empty call ids, got {self.transfers!r}")

    @classmethod
    def new(
        cls,
        sip_call_id: str,
        caller: str,
        callee: str,
        start: float,
        *,
        caller_name: str = "",
        destination: str = "",
        parent_call_id: str | None = None,
        legs: tuple[LegRecord, ...] = (),
    ) -> CallRecord:
        """A record for a call that starts now: a fresh uuid4 ``call_id``, ``INCOMPLETE``, no end."""
        return cls(
            call_id=uuid.uuid4().hex, sip_call_id=sip_call_id, caller=caller, caller_name=caller_name,
            callee=callee, destination=destination, start=start, legs=legs, parent_call_id=parent_call_id,
        )

    # -- derived ---------------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True while the call has not ended."""
        return self.end is None

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None while open. Never negative, even if the wall clock stepped back."""
        return None if self.end is None else max(0.0, self.end - self.start)

    @property
    def billsec(self) -> float:
        """Seconds from answer to end (Asterisk's ``billsec``); 0 if never answered or still open."""
        if self.answer is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.answer)

    # -- updates ---------------------------------------------------------------------------------------------

    def answered(self, at: float, destination: str | None = None) -> CallRecord:
        """Answered at ``at`` (by ``destination``, when given): the disposition becomes ``ANSWERED``."""
        return dataclasses.replace(
            self, answer=at, disposition=Disposition.ANSWERED,
            destination=self.destination if destination is None else destination,
        )

    def ended(
        self,
        at: float,
        disposition: Disposition | None = None,
        hangup_side: HangupSide | None = None,
        hangup_status: int | None = None,
    ) -> CallRecord:
        """Ended at ``at``. Without a ``disposition``: ``ANSWERED`` if it was answered, else ``FAILED``."""
        if disposition is None:
            disposition = Disposition.ANSWERED if self.answer is not None else Disposition.FAILED
        return dataclasses.replace(
            self, end=at, disposition=disposition, hangup_side=hangup_side, hangup_status=hangup_status
        )

    def with_leg(self, leg: LegRecord) -> CallRecord:
        """With ``leg`` added, or replacing the leg of the same role and SIP Call-ID (an update of it)."""
        legs = list(self.legs)
        for i, old in enumerate(legs):
            if (old.role, old.sip_call_id) == (leg.role, leg.sip_call_id):
                legs[i] = leg
                break
        else:
            legs.append(leg)
        return dataclasses.replace(self, legs=tuple(legs))

    def with_transfer(self, call_id: str) -> CallRecord:
        """With ``call_id`` in ``transfers`` (once)."""
        if call_id in self.transfers:
            return self
        return dataclasses.replace(self, transfers=(*self.transfers, call_id))

    # -- storage ---------------------------------------------------------------------------------------------

    def to_row(self) -> CdrRow:
        """The store row: enums as their values, legs and transfers as compact JSON text."""
        return CdrRow(
            call_id=self.call_id, sip_call_id=self.sip_call_id, caller=self.caller, caller_name=self.caller_name,
            callee=self.callee, destination=self.destination, start=self.start, answer=self.answer,
            end=self.end, disposition=self.disposition.value,
            hangup_side=None if self.hangup_side is None else self.hangup_side.value,
            hangup_status=self.hangup_status,
            legs=_COMPACT_JSON.encode([leg.to_json() for leg in self.legs]),
            transfers=_COMPACT_JSON.encode(list(self.transfers)) if self.transfers else "[]",
            parent_call_id=self.parent_call_id,
            data=_DATA_JSON.encode(dict(self.data)) if self.data else "{}",
            end_reason=self.end_reason, recording=self.recording,
        )

    @classmethod
    def from_row(cls, row: CdrRow) -> CallRecord:
        """The record of a store row. Raises :class:`CdrDecodeError` if the row cannot be a record."""
        try:
            legs_json = json.loads(row.legs)
            transfers = json.loads(row.transfers)
            if not isinstance(legs_json, list) or not all(isinstance(leg, dict) for leg in legs_json):
                raise ValueError("legs must be a JSON array of objects")
            if not isinstance(transfers, list):
                raise ValueError("transfers must be a JSON array")
            data = json.loads(row.data or "{}")
            if not isinstance(data, dict):
                raise ValueError("data must be a JSON object")
            return cls(
                call_id=row.call_id, sip_call_id=row.sip_call_id, caller=row.caller, caller_name=row.caller_name,
                callee=row.callee, destination=row.destination, start=row.start, answer=row.answer, end=row.end,
                disposition=Disposition(row.disposition),
                hangup_side=None if row.hangup_side is None else HangupSide(row.hangup_side),
                hangup_status=row.hangup_status,
                legs=tuple(LegRecord.from_json(leg) for leg in legs_json),
                transfers=tuple(transfers), parent_call_id=row.parent_call_id, data=data,
                end_reason=row.end_reason, recording=row.recording,
            )
        except ValueError as exc:  # json.JSONDecodeError and unknown enum values are ValueErrors
            raise CdrDecodeError(f"call record {row.call_id!r} cannot be read: {exc}") from None

    def to_json(self) -> dict[str, object]:
        """A JSON object of every field plus ``duration`` and ``billsec`` (for ``ccpbx cdr list --json``)."""
        return {
            "call_id": self.call_id, "sip_call_id": self.sip_call_id, "caller": self.caller,
            "caller_name": self.caller_name, "callee": self.callee, "destination": self.destination,
            "start": self.start, "answer": self.answer, "end": self.end, "duration": self.duration,
            "billsec": self.billsec, "disposition": self.disposition.value,
            "hangup_side": None if self.hangup_side is None else self.hangup_side.value,
            "hangup_status": self.hangup_status, "legs": [leg.to_json() for leg in self.legs],
            "transfers": list(self.transfers), "parent_call_id": self.parent_call_id, "data": dict(self.data),
            "end_reason": self.end_reason, "recording": self.recording,
        }


# -- writing -------------------------------------------------------------------------------------------------


class CdrWriter:
    """Writes the records of the running server's calls: a row at the start, updates, the final row."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def begin(self, record: CallRecord) -> None:
        """Insert the in-progress row at once (``INCOMPLETE``, no end), so a crash leaves a record.

        Raises ``ValueError`` if ``record`` has already ended, :class:`~ccpbx.pbx.store.DuplicateCdrError` if
        its ``call_id`` is stored already, another :class:`~ccpbx.pbx.store.StoreError` on a storage failure.
        """
        if record.end is not None:
            raise ValueError(f"call record {record.call_id!r} has already ended; use finish()")
        in_progress = dataclasses.replace(record, disposition=Disposition.INCOMPLETE)
        await self._store.insert_cdr(in_progress.to_row())

    async def update(self, record: CallRecord) -> None:
        """Store the record as it is now (answer time, legs, ...): insert or replace by ``call_id``."""
        await self._store.upsert_cdr(record.to_row())

    async def finish(self, record: CallRecord) -> bool:
        """Store the final record (``end`` must be set). Never raises on a storage error: returns False then,
        for the caller to log, so a full disk or a closed store never breaks call teardown."""
        if record.end is None:
            raise ValueError(f"call record {record.call_id!r} has no end time")
        try:
            await self._store.upsert_cdr(record.to_row())
        except (StoreError, sqlite3.Error, OSError, ValueError):  # ValueError: aiosqlite's closed connection
            return False
        return True


async def close_incomplete(store: Store, now: float) -> int:
    """At server start: close the records a stopped or crashed server left open (``INCOMPLETE``, hung up by
    ``SYSTEM``, ending at the last time they knew, not after ``now``). Returns how many were closed."""
    return await store.close_incomplete_cdrs(
        now, disposition=Disposition.INCOMPLETE.value, hangup_side=HangupSide.SYSTEM.value
    )


# -- reading ------------------------------------------------------------------------------------------------


async def list_records(
    store: Store,
    *,
    since: float | None = None,
    until: float | None = None,
    extension: str | None = None,
    limit: int | None = None,
    newest_first: bool = True,
) -> list[CallRecord]:
    """:meth:`Store.list_cdrs <ccpbx.pbx.store.Store.list_cdrs>` as records."""
    rows = await store.list_cdrs(
        since=since, until=until, extension=extension, limit=limit, newest_first=newest_first
    )
    return [CallRecord.from_row(row) for row in rows]


async def iter_records(
    store: Store,
    *,
    since: float | None = None,
    until: float | None = None,
    extension: str | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> AsyncIterator[CallRecord]:
    """:meth:`Store.iter_cdrs <ccpbx.pbx.store.Store.iter_cdrs>` as records: streamed, oldest first."""
    async for row in store.iter_cdrs(
        since=since, until=until, extension=extension, limit=limit, newest_first=newest_first
    ):
        yield CallRecord.from_row(row)


# -- CSV export ---------------------------------------------------------------------------------------------


def iso_time(timestamp: float | None) -> str:
    """ISO 8601 in UTC with milliseconds (``2026-12-01T09:00:00.250+00:00``); ``""`` for None."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def csv_fields(record: CallRecord) -> tuple[str, ...]:
    """The CSV fields of ``record``, in :data:`CSV_COLUMNS` order (``legs`` is the number of legs)."""
    return (
        record.call_id, record.sip_call_id, record.caller, record.caller_name, record.callee, record.destination,
        iso_time(record.start), iso_time(record.answer), iso_time(record.end), _seconds(record.duration),
        _seconds(record.billsec), record.disposition.value,
        "" if record.hangup_side is None else record.hangup_side.value,
        "" if record.hangup_status is None else str(record.hangup_status), str(len(record.legs)),
        CSV_TRANSFER_SEPARATOR.join(record.transfers), record.parent_call_id or "", record.end_reason or "",
        record.recording or "",
        json.dumps(dict(record.data), separators=(",", ":"), default=str) if record.data else "",
    )


async def write_csv(
    records: AsyncIterable[CallRecord], out: TextIO, *, progress: Callable[[int], None] | None = None
) -> int:
    """Write a header row and one row per record to ``out`` (open it with ``newline=""``), as they arrive.

    ``progress`` is called with the number of rows written so far after each row. Returns the row count.
    """
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    count = 0
    async for record in records:
        writer.writerow(csv_fields(record))
        count += 1
        if progress is not None:
            progress(count)
    return count
