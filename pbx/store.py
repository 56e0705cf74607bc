"""Persistent runtime data in SQLite (through :mod:`aiosqlite`): extensions, registrations, call features,
call detail records, the queue log, metadata.

The database is opened in WAL mode (readers never block the writer), with foreign keys on and a busy timeout.
Its schema is built by ordered :data:`MIGRATIONS`; the ``schema_version`` table records which have run, and all
pending ones are applied in a single transaction, so a database is always at one version or the next, never in
between. Later issues append migrations (CDRs, queue log, ...) and never edit an applied one.

Every write runs in an explicit ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction and rolls back on any error, so
a failure leaves the stored data as it was. A write method returns only after its ``COMMIT``: with WAL and
``synchronous = NORMAL`` a committed transaction is in the WAL file (the OS holds it), so it survives the
process being killed at any later instant; only an OS crash or power loss may take the last commits back (SQLite
then rolls back to an earlier consistent state, never a torn one).

Passwords are never stored: only the digest HA1 values ``H(user:realm:password)`` for each algorithm
(RFC 7616 §3.4.2), which is all a registrar needs to check a response and all an attacker who steals the file gets.

This module is an edge (it reads the wall clock for ``created_at``/``updated_at``); the location bindings it
stores carry their own absolute times, set by the registrar.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import operator
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import aiosqlite

from ccpbx.pbx.config import DigestAlgorithm
from ccpbx.pbx.location import Binding, LocationService

if TYPE_CHECKING:
    from ccpbx.acd.events import QueueLog

__all__ = [
    "CDR_CHUNK_ROWS",
    "FORWARD_TARGET_MAX_CHARS",
    "MIGRATIONS",
    "NOANSWER_SECONDS_DEFAULT",
    "NOANSWER_SECONDS_MAX",
    "CdrFilter",
    "CdrRow",
    "DuplicateCdrError",
    "DuplicateExtension",
    "DuplicateExtensionError",
    "Extension",
    "ExtensionFeatures",
    "ExtensionNotFound",
    "ExtensionNotFoundError",
    "Migration",
    "QueueLogRow",
    "SchemaTooNewError",
    "Store",
    "StoreError",
    "VoiceboxRow",
    "VoicemailRow",
    "digest_ha1",
]

BUSY_TIMEOUT_MS = 5000

# Rows fetched per query when streaming CDRs: bounds memory whatever the table size.
CDR_CHUNK_ROWS = 1000
# Ring time before call forwarding on no answer, as Asterisk's and most desk phones' default.
NOANSWER_SECONDS_DEFAULT = 20
NOANSWER_SECONDS_MAX = 600
FORWARD_TARGET_MAX_CHARS = 255

META_DEMO_EXTENSIONS = "demo_extensions_created"
META_REALM = "realm"

# aiosqlite runs a function on its database thread with ``Connection._execute`` (what its own methods use; not
# documented API): :meth:`Store._write_many` does a whole transaction in one such call when it is there.
_RUNS_FUNCTIONS = callable(getattr(aiosqlite.Connection, "_execute", None))


class StoreError(Exception):
    """Base of every storage error."""


class DuplicateExtensionError(StoreError):
    def __init__(self, ext: str) -> None:
        super().__init__(f"extension {ext!r} already exists")
        self.ext = ext


class ExtensionNotFoundError(StoreError):
    def __init__(self, ext: str) -> None:
        super().__init__(f"extension {ext!r} does not exist")
        self.ext = ext


class DuplicateCdrError(StoreError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"call record {call_id!r} already exists")
        self.call_id = call_id


# Short names used in the issue text.
DuplicateExtension = DuplicateExtensionError
ExtensionNotFound = ExtensionNotFoundError


class SchemaTooNewError(StoreError):
    """The database was written by a newer ccpbx (its schema version is above every migration we know)."""


def digest_ha1(algorithm: DigestAlgorithm | str, user: str, realm: str, password: str) -> str:
    """HA1 = H(username ":" realm ":" password), lowercase hex (RFC 7616 §3.4.2; names per RFC 8760).

    Strings are encoded as UTF-8 (RFC 7616 §4, ``charset=UTF-8``). ``algorithm`` is a
    :class:`~ccpbx.pbx.config.DigestAlgorithm` or its name (``"MD5"``, ``"SHA-256"``, case-insensitive).
    """
    if not isinstance(algorithm, DigestAlgorithm):
        names = {a.value.lower(): a for a in DigestAlgorithm}
        try:
            algorithm = names[algorithm.lower()]
        except KeyError:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}") from None
    data = f"{user}:{realm}:{password}".encode()
    return hashlib.new(algorithm.hashlib_name, data, usedforsecurity=False).hexdigest()


# the algorithms' names, read once (an enum's .value is a Python-level descriptor call; a call asks for both)
_MD5, _SHA_256 = DigestAlgorithm.MD5.value, DigestAlgorithm.SHA_256.value


@dataclass(frozen=True, slots=True)
class Extension:
    """A user of the PBX: its extension (the SIP user part), display name and password hashes."""

    ext: str
    name: str
    realm: str
    ha1_md5: str
    ha1_sha256: str
    created_at: float = 0.0
    updated_at: float = 0.0

    def ha1(self, algorithm: DigestAlgorithm) -> str:
        """The stored HA1 for ``algorithm``."""
        return self.ha1_sha256 if algorithm is DigestAlgorithm.SHA_256 else self.ha1_md5

    def ha1_by_algorithm(self) -> dict[str, str]:
        """``{"MD5": ..., "SHA-256": ...}``: the mapping ``ccpbx.pbx.sip.auth`` verifies responses against."""
        return {_MD5: self.ha1_md5, _SHA_256: self.ha1_sha256}


@dataclass(frozen=True, slots=True)
class ExtensionFeatures:
    """Per-extension call features: do not disturb, call forwarding (unconditional, busy, no answer), call waiting.

    A forward target is what the dial plan will dial (an extension, a number or a SIP URI); ``None`` is off.
    ``noanswer_seconds`` is how long the extension rings before ``forward_noanswer`` applies. With
    ``call_waiting`` off, a call to the extension while it is on a call is busy (or goes to ``forward_busy``).
    """

    ext: str
    dnd: bool = False
    forward_always: str | None = None
    forward_busy: str | None = None
    forward_noanswer: str | None = None
    noanswer_seconds: int = NOANSWER_SECONDS_DEFAULT
    call_waiting: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.noanswer_seconds, bool) or not isinstance(self.noanswer_seconds, int):
            raise TypeError(f"noanswer_seconds must be an int, got {self.noanswer_seconds!r}")
        if not 1 <= self.noanswer_seconds <= NOANSWER_SECONDS_MAX:
            raise ValueError(f"noanswer_seconds must be between 1 and {NOANSWER_SECONDS_MAX}, "
                             f"got {self.noanswer_seconds}")
        for name in ("forward_always", "forward_busy", "forward_noanswer"):
            target = getattr(self, name)
            if target is None:
                continue
            if (not isinstance(target, str) or not target or len(target) > FORWARD_TARGET_MAX_CHARS
                    or any(c.isspace() or not c.isprintable() for c in target)):
                raise ValueError(f"{name} must be a non-empty target without spaces (at most "
                                 f"{FORWARD_TARGET_MAX_CHARS} characters), got {target!r}")

    @property
    def forwards(self) -> bool:
        """True when any forward is set."""
        return any(t is not None for t in (self.forward_always, self.forward_busy, self.forward_noanswer))


@dataclass(frozen=True, slots=True)
class CdrRow:
    """One row of the ``cdrs`` table, as stored: ``legs`` and ``transfers`` are JSON text.

    :mod:`ccpbx.pbx.cdr` turns it into a typed ``CallRecord`` (this layer does not know that model).
    Times are UNIX epoch seconds; ``end`` is ``None`` while the call is in progress.
    """

    call_id: str
    sip_call_id: str
    caller: str
    caller_name: str
    callee: str
    destination: str
    start: float
    answer: float | None
    end: float | None
    disposition: str
    hangup_side: str | None
    hangup_status: int | None
    legs: str = "[]"
    transfers: str = "[]"
    parent_call_id: str | None = None
    data: str = "{}"  # the call's attached data (JSON object)
    end_reason: str | None = None  # why the system ended it ("rtp_timeout", ...)
    recording: str | None = None  # path of the call's recording, when recorded


@dataclass(frozen=True, slots=True)
class CdrFilter:
    """Which CDRs to read: ``since <= start < until`` and, with ``extension``, calls it placed, was dialled
    on or that were routed to it (``caller``, ``callee`` or ``destination == "extension:<ext>"``)."""

    since: float | None = None
    until: float | None = None
    extension: str | None = None

    def where(self) -> tuple[str, list[object]]:
        """The SQL condition (``"1"`` when there is none) and its parameters."""
        clauses: list[str] = []
        params: list[object] = []
        if self.since is not None:
            clauses.append("start >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("start < ?")
            params.append(self.until)
        if self.extension is not None:
            clauses.append("(caller = ? OR callee = ? OR destination = ?)")
            params.extend((self.extension, self.extension, f"extension:{self.extension}"))
        return (" AND ".join(clauses) or "1"), params


@dataclass(frozen=True, slots=True)
class QueueLogRow:
    """One row of the ``queue_log`` table: one queue or agent event, as the ACD engine recorded it.

    ``time`` is wall-clock UNIX seconds (the adapter turns the engine's monotonic ``time_ms`` into it);
    ``call_id`` is the engine's contact id; ``event`` is a :class:`ccpbx.acd.events.LogKind` value
    (``"enter"``, ``"connect"``, ``"abandon"`` ...). The other fields are None where the event has no such
    figure (see :class:`ccpbx.acd.events.QueueLog`). ``id`` is the row's place in the log, set by the store
    (None on a row not yet appended; ignored by :meth:`Store.append_queue_log`).
    """

    time: float
    event: str
    queue: str | None = None
    call_id: str | None = None
    agent: str | None = None
    wait_ms: int | None = None
    talk_ms: int | None = None
    ring_ms: int | None = None
    position: int | None = None
    target: str | None = None
    reason: str | None = None
    attempt: int | None = None
    id: int | None = None

    @classmethod
    def from_record(cls, record: QueueLog, time: float) -> QueueLogRow:
        """The row for an engine record; ``time`` is when it happened, in wall-clock UNIX seconds."""
        return cls(time=time, event=record.kind.value, queue=record.queue, call_id=record.contact_id,
                   agent=record.agent_id, wait_ms=record.wait_ms, talk_ms=record.talk_ms, ring_ms=record.ring_ms,
                   position=record.position, target=record.target, reason=record.reason, attempt=record.attempt)

    def to_json(self) -> dict[str, object]:
        """Every field, by name (``ccpbx queue log --json``)."""
        return {name: getattr(self, name) for name in ("id", *_QUEUE_LOG_FIELDS)}


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: statements run in order inside the migration transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "extensions, registrar bindings, meta",
        (
            """CREATE TABLE extensions (
                ext TEXT PRIMARY KEY NOT NULL,
                name TEXT NOT NULL DEFAULT '',
                realm TEXT NOT NULL,
                ha1_md5 TEXT NOT NULL,
                ha1_sha256 TEXT NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE bindings (
                aor TEXT NOT NULL,
                key TEXT NOT NULL,
                contact TEXT NOT NULL,
                expires_at REAL NOT NULL,
                call_id TEXT NOT NULL,
                cseq INTEGER NOT NULL,
                transport TEXT NOT NULL,
                source_host TEXT NOT NULL,
                source_port INTEGER NOT NULL,
                q REAL,
                user_agent TEXT NOT NULL DEFAULT '',
                instance_id TEXT NOT NULL DEFAULT '',
                reg_id INTEGER,
                registered_at REAL NOT NULL DEFAULT 0,
                PRIMARY KEY (aor, key)
            )""",
            "CREATE INDEX bindings_expires_at ON bindings (expires_at)",
            "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
        ),
    ),
    Migration(
        2,
        "call detail records, per-extension call features",
        (
            # "end" is an SQL keyword, hence quoted wherever it is named.
            """CREATE TABLE cdrs (
                call_id TEXT PRIMARY KEY NOT NULL,
                sip_call_id TEXT NOT NULL,
                caller TEXT NOT NULL,
                caller_name TEXT NOT NULL DEFAULT '',
                callee TEXT NOT NULL,
                destination TEXT NOT NULL DEFAULT '',
                start REAL NOT NULL,
                answer REAL,
                "end" REAL,
                disposition TEXT NOT NULL,
                hangup_side TEXT,
                hangup_status INTEGER,
                legs TEXT NOT NULL DEFAULT '[]',
                transfers TEXT NOT NULL DEFAULT '[]',
                parent_call_id TEXT
            )""",
            # (start, call_id) is the order reports and the chunked export read in.
            "CREATE INDEX cdrs_start ON cdrs (start, call_id)",
            "CREATE INDEX cdrs_caller ON cdrs (caller, start)",
            "CREATE INDEX cdrs_callee ON cdrs (callee, start)",
            "CREATE INDEX cdrs_destination ON cdrs (destination, start)",
            # Only in-progress rows: what close_incomplete_cdrs looks for at every server start.
            'CREATE INDEX cdrs_open ON cdrs (start) WHERE "end" IS NULL',
            """CREATE TABLE extension_features (
                ext TEXT PRIMARY KEY NOT NULL REFERENCES extensions (ext) ON DELETE CASCADE,
                dnd INTEGER NOT NULL DEFAULT 0,
                forward_always TEXT,
                forward_busy TEXT,
                forward_noanswer TEXT,
                noanswer_seconds INTEGER NOT NULL DEFAULT 20
            )""",
        ),
    ),
    Migration(
        3,
        "call records: attached data, why the system ended a call, the recording",
        (
            "ALTER TABLE cdrs ADD COLUMN data TEXT NOT NULL DEFAULT '{}'",
            "ALTER TABLE cdrs ADD COLUMN end_reason TEXT",
            "ALTER TABLE cdrs ADD COLUMN recording TEXT",
        ),
    ),
    Migration(
        4,
        "per-extension call waiting",
        ("ALTER TABLE extension_features ADD COLUMN call_waiting INTEGER NOT NULL DEFAULT 1",),
    ),
    Migration(
        5,
        "queue log: one row per queue and agent event",
        (
            # Append-only: id (the rowid) is the order rows were written in, and breaks ties between equal times.
            """CREATE TABLE queue_log (
                id INTEGER PRIMARY KEY,
                time REAL NOT NULL,
                queue TEXT,
                call_id TEXT,
                agent TEXT,
                event TEXT NOT NULL,
                wait_ms INTEGER,
                talk_ms INTEGER,
                ring_ms INTEGER,
                position INTEGER,
                target TEXT,
                reason TEXT,
                attempt INTEGER
            )""",
            # An index ends with the rowid, so both serve ORDER BY time, id without sorting.
            "CREATE INDEX queue_log_time ON queue_log (time)",
            "CREATE INDEX queue_log_queue_time ON queue_log (queue, time)",
        ),
    ),
    Migration(
        6,
        "voicemail: messages and per-box settings (PIN hash, e-mail, greetings)",
        (
            """CREATE TABLE voicemail_messages (
                id INTEGER PRIMARY KEY,
                mailbox TEXT NOT NULL,
                folder TEXT NOT NULL,
                caller TEXT NOT NULL DEFAULT '',
                caller_name TEXT NOT NULL DEFAULT '',
                received_at REAL NOT NULL,
                duration_s REAL NOT NULL,
                path TEXT NOT NULL
            )""",
            "CREATE INDEX voicemail_messages_box ON voicemail_messages (mailbox, folder, received_at)",
            """CREATE TABLE voicemail_boxes (
                mailbox TEXT PRIMARY KEY NOT NULL,
                pin_hash TEXT,
                email TEXT,
                greeting_unavailable TEXT,
                greeting_busy TEXT
            )""",
        ),
    ),
)


# The bindings columns after (aor, key), in the order of the Binding fields they store.
_BINDING_COLUMNS = (
    "aor", "contact", "expires_at", "call_id", "cseq", "transport", "source_host", "source_port", "q",
    "user_agent", "instance_id", "reg_id", "registered_at",
)
_EXTENSION_COLUMNS = "ext, name, realm, ha1_md5, ha1_sha256, created_at, updated_at"
# The cdrs columns in the order of the CdrRow fields.
_CDR_FIELDS = (
    "call_id", "sip_call_id", "caller", "caller_name", "callee", "destination", "start", "answer", "end",
    "disposition", "hangup_side", "hangup_status", "legs", "transfers", "parent_call_id", "data", "end_reason",
    "recording",
)
_CDR_COLUMNS = ", ".join(f'"{c}"' for c in _CDR_FIELDS)
_CDR_VALUES = operator.attrgetter(*_CDR_FIELDS)  # a row's values in column order, read in C
_CDR_MARKS = ", ".join("?" * len(_CDR_FIELDS))
_CDR_UPDATES = ", ".join(f'"{c}" = excluded."{c}"' for c in _CDR_FIELDS if c != "call_id")
# The queue_log columns in the order of the QueueLogRow fields (without id).
_VOICEMAIL_COLUMNS = "id, mailbox, folder, caller, caller_name, received_at, duration_s, path"


@dataclass(frozen=True, slots=True)
class VoicemailRow:
    """One voicemail message: its WAV at ``path``, ``folder`` "new" until heard, then "saved"."""

    id: int
    mailbox: str
    folder: str
    caller: str
    caller_name: str
    received_at: float
    duration_s: float
    path: str


@dataclass(frozen=True, slots=True)
class VoiceboxRow:
    """A mailbox's settings: the PIN's hash (never the PIN), the owner's e-mail, recorded greetings."""

    mailbox: str
    pin_hash: str | None = None
    email: str | None = None
    greeting_unavailable: str | None = None
    greeting_busy: str | None = None


_QUEUE_LOG_FIELDS = (
    "time", "event", "queue", "call_id", "agent", "wait_ms", "talk_ms", "ring_ms", "position", "target", "reason",
    "attempt",
)
_QUEUE_LOG_COLUMNS = ", ".join(_QUEUE_LOG_FIELDS)
_QUEUE_LOG_MARKS = ", ".join("?" * len(_QUEUE_LOG_FIELDS))
_FEATURE_COLUMNS = "ext, dnd, forward_always, forward_busy, forward_noanswer, noanswer_seconds, call_waiting"


def _check_migrations(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... in order, got {versions}")


class Store:
    """The SQLite database of one ccpbx data directory. Open with :meth:`open`; use as ``async with``."""

    def __init__(self, connection: aiosqlite.Connection, path: Path, clock: Callable[[], float]) -> None:
        self._db = connection
        self._clock = clock
        self.path = path
        self._closed = False
        # One connection serves the whole process; the lock keeps one task's transaction from interleaving
        # with another task's statements on it.
        self._lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Store:
        """Open (creating it and its parent directories if needed) and migrate the database at ``path``."""
        _check_migrations(migrations)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        try:
            connection.row_factory = sqlite3.Row
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA synchronous = NORMAL")  # durable across crashes in WAL mode
            await connection.execute("PRAGMA foreign_keys = ON")
            await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            store = cls(connection, path, clock)
            await store._migrate(migrations)
        except BaseException as exc:
            await connection.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open database {path}: {exc}") from exc
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._end_open_transaction()
            # A task cancelled while its BEGIN waits for the database thread must not leave the transaction open
            # (the thread runs the BEGIN anyway): the BEGIN is awaited to its end and undone before the lock goes.
            begin = asyncio.ensure_future(self._db.execute("BEGIN IMMEDIATE"))
            try:
                await asyncio.shield(begin)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await begin
                    await self._db.execute("ROLLBACK")
                raise
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _end_open_transaction(self) -> None:
        """Roll back a transaction left open (never expected: one must not block every later one). Asked on the
        database thread where aiosqlite allows: a cancelled write's trip may still be running there, and its
        transaction, open when looked at from here, committed before a ROLLBACK sent from here would run."""
        if not _RUNS_FUNCTIONS:
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")
            return
        db = self._db

        def end() -> None:
            conn: sqlite3.Connection = db._conn  # aiosqlite's connection: used on its own thread only
            if conn.in_transaction:
                conn.execute("ROLLBACK")

        await db._execute(end)  # type: ignore[no-untyped-call]

    async def _write_many(self, statements: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        """``executemany`` each statement in ONE transaction and ONE trip to the database thread (BEGIN, the
        statements, COMMIT, or ROLLBACK on an error), where :meth:`_transaction` costs a trip per step: each trip
        is a wake-up of that thread and of the loop, and the server writes like this for every call and
        REGISTER. A task cancelled meanwhile cannot leave the transaction open: the thread runs it to its end."""
        if not _RUNS_FUNCTIONS:  # an aiosqlite without it: a trip per step
            async with self._transaction() as db:
                for sql, rows in statements:
                    await db.executemany(sql, rows)
            return
        db = self._db

        def write() -> None:
            conn: sqlite3.Connection = db._conn  # aiosqlite's connection: used on its own thread only
            if conn.in_transaction:  # never expected; a transaction left open must not block every later one
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    conn.executemany(sql, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        async with self._lock:
            await db._execute(write)  # type: ignore[no-untyped-call]

    async def _fetchall(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        async with self._lock, self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _migrate(self, migrations: Sequence[Migration]) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY NOT NULL, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        async with self._transaction() as db:
            async with db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version") as cursor:
                row = await cursor.fetchone()
            current = int(row[0]) if row is not None else 0
            if current > len(migrations):
                raise SchemaTooNewError(
                    f"{self.path} has schema version {current}, newer than this ccpbx knows "
                    f"({len(migrations)}); upgrade ccpbx"
                )
            for migration in migrations[current:]:
                for statement in migration.statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.description, self._clock()),
                )

    async def schema_version(self) -> int:
        rows = await self._fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(rows[0][0])

    # -- extensions --------------------------------------------------------------------------------------

    async def add_extension(self, ext: str, password: str, name: str, realm: str) -> Extension:
        """Create an extension, storing only its HA1 hashes. Raises :class:`DuplicateExtensionError`."""
        return (await self.add_extensions([(ext, password, name)], realm))[0]

    async def add_extensions(
        self, entries: Iterable[tuple[str, str, str]], realm: str, *, meta: Mapping[str, str] | None = None
    ) -> list[Extension]:
        """Create several ``(ext, password, name)`` extensions and set ``meta`` keys, all or nothing."""
        now = self._clock()
        created = [
            Extension(ext, name, realm, digest_ha1(DigestAlgorithm.MD5, ext, realm, password),
                      digest_ha1(DigestAlgorithm.SHA_256, ext, realm, password), now, now)
            for ext, password, name in entries
        ]
        async with self._transaction() as db:
            for e in created:
                try:
                    await db.execute(
                        f"INSERT INTO extensions ({_EXTENSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (e.ext, e.name, e.realm, e.ha1_md5, e.ha1_sha256, e.created_at, e.updated_at),
                    )
                except sqlite3.IntegrityError:
                    raise DuplicateExtensionError(e.ext) from None
            for key, value in (meta or {}).items():
                await self._put_meta(db, key, value)
        return created

    async def set_password(self, ext: str, password: str, realm: str) -> None:
        """Replace the HA1 hashes (and realm) of ``ext``. Raises :class:`ExtensionNotFoundError`."""
        md5 = digest_ha1(DigestAlgorithm.MD5, ext, realm, password)
        sha256 = digest_ha1(DigestAlgorithm.SHA_256, ext, realm, password)
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE extensions SET realm = ?, ha1_md5 = ?, ha1_sha256 = ?, updated_at = ? WHERE ext = ?",
                (realm, md5, sha256, self._clock(), ext),
            )
            if cursor.rowcount == 0:
                raise ExtensionNotFoundError(ext)

    async def set_name(self, ext: str, name: str) -> None:
        """Change the display name of ``ext``. Raises :class:`ExtensionNotFoundError`."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE extensions SET name = ?, updated_at = ? WHERE ext = ?", (name, self._clock(), ext)
            )
            if cursor.rowcount == 0:
                raise ExtensionNotFoundError(ext)

    async def remove_extension(self, ext: str) -> None:
        """Delete ``ext``, its registrations and its call features. Raises :class:`ExtensionNotFoundError`.

        Its call records stay: they are history, and name the extension as text only.
        """
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM extensions WHERE ext = ?", (ext,))
            if cursor.rowcount == 0:
                raise ExtensionNotFoundError(ext)
            await db.execute("DELETE FROM bindings WHERE aor = ?", (ext,))

    async def get_extension(self, ext: str) -> Extension | None:
        rows = await self._fetchall(f"SELECT {_EXTENSION_COLUMNS} FROM extensions WHERE ext = ?", (ext,))
        return _extension(rows[0]) if rows else None

    async def list_extensions(self) -> list[Extension]:
        """Every extension, ordered by extension (numeric ones in number order, then the others)."""
        rows = await self._fetchall(f"SELECT {_EXTENSION_COLUMNS} FROM extensions")
        extensions = [_extension(row) for row in rows]
        extensions.sort(key=lambda e: (0, int(e.ext), e.ext) if e.ext.isdigit() else (1, 0, e.ext))
        return extensions

    async def count_extensions(self) -> int:
        rows = await self._fetchall("SELECT COUNT(*) FROM extensions")
        return int(rows[0][0])

    # -- registrar bindings (RFC 3261 §10.3) ---------------------------------------------------------------

    async def save_binding(self, binding: Binding) -> None:
        """Insert or replace the binding keyed by (aor, instance id or contact)."""
        columns = ", ".join(("key", *_BINDING_COLUMNS))
        marks = ", ".join("?" * (len(_BINDING_COLUMNS) + 1))
        values = (LocationService.key(binding), *(getattr(binding, c) for c in _BINDING_COLUMNS))
        async with self._transaction() as db:
            await db.execute(f"INSERT OR REPLACE INTO bindings ({columns}) VALUES ({marks})", values)

    async def write_bindings(self, saved: Sequence[Binding], deleted: Sequence[tuple[str, str]]) -> None:
        """Save and delete bindings in ONE transaction (the registrar's group commit)."""
        if not saved and not deleted:
            return
        columns = ", ".join(("key", *_BINDING_COLUMNS))
        marks = ", ".join("?" * (len(_BINDING_COLUMNS) + 1))
        statements: list[tuple[str, Sequence[Sequence[object]]]] = []
        if saved:
            statements.append((f"INSERT OR REPLACE INTO bindings ({columns}) VALUES ({marks})",
                               [(LocationService.key(b), *(getattr(b, c) for c in _BINDING_COLUMNS)) for b in saved]))
        if deleted:
            statements.append(("DELETE FROM bindings WHERE aor = ? AND key = ?", list(deleted)))
        await self._write_many(statements)

    async def delete_binding(self, aor: str, key: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM bindings WHERE aor = ? AND key = ?", (aor, key))

    async def delete_bindings(self, aor: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM bindings WHERE aor = ?", (aor,))

    async def delete_expired_bindings(self, now: float) -> int:
        """Delete bindings with ``expires_at <= now`` (Unix seconds); returns how many."""
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM bindings WHERE expires_at <= ?", (now,))
            return cursor.rowcount

    async def load_bindings(self) -> list[Binding]:
        rows = await self._fetchall(
            f"SELECT {', '.join(_BINDING_COLUMNS)} FROM bindings ORDER BY aor, registered_at, key"
        )
        return [Binding(**{c: row[c] for c in _BINDING_COLUMNS}) for row in rows]

    # -- call features ---------------------------------------------------------------------------------------

    async def get_features(self, ext: str) -> ExtensionFeatures:
        """The call features of ``ext``; the defaults (all off) when none were set."""
        rows = await self._fetchall(f"SELECT {_FEATURE_COLUMNS} FROM extension_features WHERE ext = ?", (ext,))
        return _features(rows[0]) if rows else ExtensionFeatures(ext)

    async def list_features(self) -> dict[str, ExtensionFeatures]:
        """The features of every extension that has a features row, by extension."""
        rows = await self._fetchall(f"SELECT {_FEATURE_COLUMNS} FROM extension_features")
        return {row["ext"]: _features(row) for row in rows}

    async def set_features(self, features: ExtensionFeatures) -> None:
        """Store the call features of ``features.ext``. Raises :class:`ExtensionNotFoundError`."""
        f = features
        async with self._transaction() as db:
            try:
                await db.execute(
                    f"INSERT OR REPLACE INTO extension_features ({_FEATURE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (f.ext, int(f.dnd), f.forward_always, f.forward_busy, f.forward_noanswer, f.noanswer_seconds,
                     int(f.call_waiting)),
                )
            except sqlite3.IntegrityError:  # the foreign key: no such extension
                raise ExtensionNotFoundError(f.ext) from None

    # -- call detail records ---------------------------------------------------------------------------------

    async def insert_cdr(self, row: CdrRow) -> None:
        """Insert a new call record. Raises :class:`DuplicateCdrError` if its ``call_id`` is taken."""
        async with self._transaction() as db:
            try:
                await db.execute(f"INSERT INTO cdrs ({_CDR_COLUMNS}) VALUES ({_CDR_MARKS})", _cdr_values(row))
            except sqlite3.IntegrityError:
                raise DuplicateCdrError(row.call_id) from None

    async def upsert_cdr(self, row: CdrRow) -> None:
        """Insert the call record, or replace every column of the one with the same ``call_id``."""
        async with self._transaction() as db:
            await db.execute(
                f"INSERT INTO cdrs ({_CDR_COLUMNS}) VALUES ({_CDR_MARKS}) "
                f"ON CONFLICT (call_id) DO UPDATE SET {_CDR_UPDATES}",
                _cdr_values(row),
            )

    async def upsert_cdrs(self, rows: Sequence[CdrRow]) -> None:
        """:meth:`upsert_cdr` for many records in one transaction (the running server writes in batches)."""
        if not rows:
            return
        await self._write_many([(f"INSERT INTO cdrs ({_CDR_COLUMNS}) VALUES ({_CDR_MARKS}) "
                                  f"ON CONFLICT (call_id) DO UPDATE SET {_CDR_UPDATES}",
                                  [_cdr_values(row) for row in rows])])

    async def get_cdr(self, call_id: str) -> CdrRow | None:
        rows = await self._fetchall(f"SELECT {_CDR_COLUMNS} FROM cdrs WHERE call_id = ?", (call_id,))
        return _cdr(rows[0]) if rows else None

    async def count_cdrs(
        self, *, since: float | None = None, until: float | None = None, extension: str | None = None
    ) -> int:
        where, params = CdrFilter(since, until, extension).where()
        rows = await self._fetchall(f"SELECT COUNT(*) FROM cdrs WHERE {where}", params)
        return int(rows[0][0])

    async def list_cdrs(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        extension: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[CdrRow]:
        """Call records with ``since <= start < until``, of ``extension`` (see :class:`CdrFilter`), ordered by
        start time (then ``call_id``), newest first unless told otherwise, at most ``limit`` of them."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        where, params = CdrFilter(since, until, extension).where()
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT {_CDR_COLUMNS} FROM cdrs WHERE {where} ORDER BY start {order}, call_id {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_cdr(row) for row in await self._fetchall(sql, params)]

    async def iter_cdrs(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        extension: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        chunk_rows: int = CDR_CHUNK_ROWS,
    ) -> AsyncIterator[CdrRow]:
        """Stream call records like :meth:`list_cdrs` (oldest first by default), ``chunk_rows`` per query.

        Each chunk is a separate keyset query (``(start, call_id)`` after the last row seen), so memory stays
        bounded, the connection is not held between chunks, and rows written meanwhile do not shift the pages.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        where, base_params = CdrFilter(since, until, extension).where()
        order, after = ("DESC", "<") if newest_first else ("ASC", ">")
        remaining = limit
        last: tuple[float, str] | None = None
        while remaining is None or remaining > 0:
            size = chunk_rows if remaining is None else min(chunk_rows, remaining)
            params = list(base_params)
            keyset = ""
            if last is not None:
                keyset = f" AND (start, call_id) {after} (?, ?)"
                params.extend(last)
            rows = await self._fetchall(
                f"SELECT {_CDR_COLUMNS} FROM cdrs WHERE {where}{keyset} "
                f"ORDER BY start {order}, call_id {order} LIMIT ?",
                [*params, size],
            )
            for row in rows:
                yield _cdr(row)
            if len(rows) < size:
                return
            last = (rows[-1]["start"], rows[-1]["call_id"])
            if remaining is not None:
                remaining -= len(rows)

    async def close_incomplete_cdrs(
        self, now: float, *, disposition: str = "incomplete", hangup_side: str | None = "system"
    ) -> int:
        """Close every record still open (``end IS NULL``): left by a server that stopped or crashed mid-call.

        ``end`` becomes the last time the record knows (its start, its answer, any leg's start, answer or end),
        never after ``now`` unless the start itself is; ``disposition`` and ``hangup_side`` are set as given
        (``"incomplete"``, ``"system"``: the values of ``ccpbx.pbx.cdr``'s enums). Returns how many.
        """
        last_known = (
            "MAX(start, COALESCE(answer, start), COALESCE((SELECT MAX(MAX("
            "COALESCE(json_extract(value, '$.start'), 0), COALESCE(json_extract(value, '$.answer'), 0), "
            "COALESCE(json_extract(value, '$.end'), 0))) FROM json_each(CASE WHEN json_valid(legs) "
            "THEN legs ELSE '[]' END)), start))"
        )
        async with self._transaction() as db:
            cursor = await db.execute(
                f'UPDATE cdrs SET "end" = MAX(start, MIN(?, {last_known})), disposition = ?, hangup_side = ? '
                'WHERE "end" IS NULL',
                (now, disposition, hangup_side),
            )
            return cursor.rowcount

    # -- queue log -------------------------------------------------------------------------------------------

    async def append_queue_log(self, rows: Sequence[QueueLogRow]) -> None:
        """Append ``rows`` to the queue log in one transaction, in the order given (their ``id`` is ignored).

        Returns after the ``COMMIT``: the ACD adapter awaits this before acting on the engine's actions, so an
        event it acted on is in the log even if the process is killed right after (see the module docstring).
        """
        if not rows:
            return
        async with self._transaction() as db:
            await db.executemany(
                f"INSERT INTO queue_log ({_QUEUE_LOG_COLUMNS}) VALUES ({_QUEUE_LOG_MARKS})",
                [tuple(getattr(row, name) for name in _QUEUE_LOG_FIELDS) for row in rows],
            )

    async def list_queue_log(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        queue: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[QueueLogRow]:
        """Queue-log rows with ``since <= time < until``, of ``queue`` only if given, in time order (then the
        order they were appended), oldest first unless told otherwise, at most ``limit`` of them (the oldest,
        or with ``newest_first`` the newest)."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        clauses: list[str] = []
        params: list[object] = []
        if since is not None:
            clauses.append("time >= ?")
            params.append(since)
        if until is not None:
            clauses.append("time < ?")
            params.append(until)
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        where = " AND ".join(clauses) or "1"
        order = "DESC" if newest_first else "ASC"
        sql = (f"SELECT id, {_QUEUE_LOG_COLUMNS} FROM queue_log WHERE {where} "
               f"ORDER BY time {order}, id {order}")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_queue_log_row(row) for row in await self._fetchall(sql, params)]

    # -- meta ----------------------------------------------------------------------------------------------

    # -- voicemail ----------------------------------------------------------------------------------------------
    async def add_voicemail(self, mailbox: str, folder: str, caller: str, caller_name: str, received_at: float,
                            duration_s: float, path: str) -> int:
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO voicemail_messages (mailbox, folder, caller, caller_name, received_at, duration_s, path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", (mailbox, folder, caller, caller_name, received_at, duration_s, path))
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    async def list_voicemail(self, mailbox: str, folder: str | None = None) -> list[VoicemailRow]:
        sql = f"SELECT {_VOICEMAIL_COLUMNS} FROM voicemail_messages WHERE mailbox = ?"
        params: list[object] = [mailbox]
        if folder is not None:
            sql += " AND folder = ?"
            params.append(folder)
        rows = await self._fetchall(sql + " ORDER BY received_at, id", params)
        return [VoicemailRow(*row) for row in rows]

    async def get_voicemail(self, message_id: int) -> VoicemailRow | None:
        rows = await self._fetchall(f"SELECT {_VOICEMAIL_COLUMNS} FROM voicemail_messages WHERE id = ?",
                                    (message_id,))
        return VoicemailRow(*rows[0]) if rows else None

    async def set_voicemail_folder(self, message_id: int, folder: str) -> None:
        async with self._transaction() as db:
            await db.execute("UPDATE voicemail_messages SET folder = ? WHERE id = ?", (folder, message_id))

    async def delete_voicemail(self, message_id: int) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM voicemail_messages WHERE id = ?", (message_id,))

    async def voicemail_counts(self) -> dict[str, tuple[int, int]]:
        """Every mailbox with messages: (new, saved)."""
        rows = await self._fetchall(
            "SELECT mailbox, SUM(folder = 'new'), SUM(folder != 'new') FROM voicemail_messages GROUP BY mailbox")
        return {row[0]: (int(row[1] or 0), int(row[2] or 0)) for row in rows}

    async def get_voicebox(self, mailbox: str) -> VoiceboxRow:
        rows = await self._fetchall(
            "SELECT mailbox, pin_hash, email, greeting_unavailable, greeting_busy FROM voicemail_boxes "
            "WHERE mailbox = ?", (mailbox,))
        return VoiceboxRow(*rows[0]) if rows else VoiceboxRow(mailbox)

    async def update_voicebox(self, mailbox: str, **changes: str | None) -> None:
        """Set some of ``pin_hash``, ``email``, ``greeting_unavailable``, ``greeting_busy`` (a row is made)."""
        allowed = {"pin_hash", "email", "greeting_unavailable", "greeting_busy"}
        if not changes or set(changes) - allowed:
            raise ValueError(f"voicebox fields are {sorted(allowed)}, got {sorted(changes)}")
        names = sorted(changes)
        async with self._transaction() as db:
            await db.execute("INSERT OR IGNORE INTO voicemail_boxes (mailbox) VALUES (?)", (mailbox,))
            await db.execute(f"UPDATE voicemail_boxes SET {', '.join(f'{n} = ?' for n in names)} WHERE mailbox = ?",
                             (*(changes[n] for n in names), mailbox))

    async def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: it changes when *another* connection (``ccpbx ext passwd`` run
        beside the server, say) has committed since, never for this connection's own writes — what tells the
        running server that its in-memory caches of the extensions are stale."""
        rows = await self._fetchall("PRAGMA data_version")
        return int(rows[0][0])

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._transaction() as db:
            await self._put_meta(db, key, value)

    @staticmethod
    async def _put_meta(db: aiosqlite.Connection, key: str, value: str) -> None:
        await db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def _features(row: sqlite3.Row) -> ExtensionFeatures:
    return ExtensionFeatures(
        ext=row["ext"], dnd=bool(row["dnd"]), forward_always=row["forward_always"],
        forward_busy=row["forward_busy"], forward_noanswer=row["forward_noanswer"],
        noanswer_seconds=int(row["noanswer_seconds"]), call_waiting=bool(row["call_waiting"]),
    )


def _cdr_values(row: CdrRow) -> tuple[object, ...]:
    return _CDR_VALUES(row)


def _cdr(row: sqlite3.Row) -> CdrRow:
    return CdrRow(**{name: row[name] for name in _CDR_FIELDS})


def _queue_log_row(row: sqlite3.Row) -> QueueLogRow:
    return QueueLogRow(id=row["id"], **{name: row[name] for name in _QUEUE_LOG_FIELDS})


def _extension(row: sqlite3.Row) -> Extension:
    return Extension(
        ext=row["ext"], name=row["name"], realm=row["realm"], ha1_md5=row["ha1_md5"],
        ha1_sha256=row["ha1_sha256"], created_at=row["created_at"], updated_at=row["updated_at"],
    )

