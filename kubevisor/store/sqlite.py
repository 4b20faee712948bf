"""The embedded store: the :class:`~kubevisor.store.protocol.Store` protocol on one SQLite file.

Why this exists: a one-machine kubevisor (``kubevisor up``) keeps its control-plane state in a single file
instead of running etcd, as k3s does with kine. The apiserver cannot tell the difference: revisions,
compare-and-swap, MVCC reads, watch from a revision and compaction behave as in etcd v3.

Layout (modelled on kine's SQLite schema):

- ``kv`` is an append-only log. Every successful create, update or delete appends one row; the row's ``id``
  (``INTEGER PRIMARY KEY AUTOINCREMENT``, so an id is never handed out twice, even after compaction removed
  the newest rows) is the global revision and the written key's ``mod_revision``. A row carries the key
  (``name``), ``created``/``deleted`` flags, the key's ``create_revision``, ``prev_revision`` (the id of the
  key's previous row, 0 if none), the new ``value`` (empty for a tombstone) and the ``old_value`` (the
  previous value, kept so that watch events carry it even after the previous row was compacted away).
- A key's state at revision R is its row with the largest id <= R; the key is absent if that row is a
  tombstone or there is none. Reads at the latest revision are the same query with R = current revision.
- The unique index on ``(name, prev_revision)`` guards optimistic concurrency in SQL as well: two rows can
  never both claim to follow the same row of a key. Rows are inserted with an explicit ``id`` of current
  revision + 1, so a stray writer would fail on the primary key rather than reorder history.
- ``meta`` holds the compaction revision (kine's ``compact_rev_key`` row) and the schema version.

Concurrency and ordering: this process is the only writer (the file is opened with
``locking_mode=EXCLUSIVE``; a second process fails at :meth:`SQLiteStore.open`). Each write is one short
``BEGIN IMMEDIATE`` ... ``COMMIT`` executed synchronously on the event loop thread, so writes are serialised
without locks or threads, revisions are assigned in commit order, and the current and compaction
revisions are kept in memory. Reads also run inline on the same connection; each is one SQL statement and
therefore sees one consistent snapshot.

Durability: the database is in WAL mode. With ``synchronous=NORMAL`` (the default) a commit has been
written to the WAL file, i.e. handed to the kernel, before the write coroutine returns: every acknowledged
write survives ``kill -9`` of this process. It does not survive power loss or a kernel crash, because the
WAL is fsynced only at checkpoints: the last commits may then be rolled back (the file stays consistent).
``synchronous=FULL`` fsyncs on every commit and survives power loss too, at the price of one fsync per
write. Either way a transaction is atomic: an object is never stored torn.

Watches are fed in process: right after a write commits, its :class:`WatchEvent` is appended to the
bounded buffer of every subscriber whose key range holds the key. A subscriber whose buffer is full is cut
off (its iterator raises :class:`WatchOverflowError`) instead of slowing writers down. A watch from
revision N subscribes first, then reads the history ``[N, current]`` from SQL in batches, then delivers the
buffered live events, dropping any revision already delivered: no gaps, no duplicates.

Compaction (kine's approach) deletes, for a target revision C, every row superseded by a row at or below C
and every tombstone at or below C. The state at every revision >= C stays readable, so reads at C work;
the history of revision C itself may be incomplete (its tombstone is gone), so a watch must start above C.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from kubevisor.store.protocol import (
    CompactedError,
    CompareFailedError,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    RangeResult,
    StoreError,
    WatchEvent,
    WatchOverflowError,
)

__all__ = ["SQLiteStore", "SQLiteWatch"]

SCHEMA_VERSION: Final = 1

WATCH_BUFFER: Final = 10_000
"""Live events a watcher may have pending before it is cut off with WatchOverflowError."""

_HISTORY_BATCH: Final = 1_000
"""Rows read per SQL query while a watch catches up on history."""

_COMPACT_BATCH: Final = 10_000
"""Revisions compacted per transaction; the event loop runs other tasks between batches."""

_SYNCHRONOUS_MODES: Final = frozenset({"NORMAL", "FULL", "EXTRA"})

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS kv (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        created INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        create_revision INTEGER NOT NULL,
        prev_revision INTEGER NOT NULL,
        value BLOB NOT NULL,
        old_value BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS kv_name_id_deleted ON kv (name, id, deleted)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kv_name_prev_revision ON kv (name, prev_revision)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

_LATEST_ROW: Final = (
    "SELECT id, deleted, create_revision, value FROM kv WHERE name = ? AND id <= ? ORDER BY id DESC LIMIT 1"
)
_INSERT: Final = (
    "INSERT INTO kv (id, name, created, deleted, create_revision, prev_revision, value, old_value) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# The newest row of every key in [start, end) at or below a revision (?3), tombstones left out. The scan
# and the "no newer row" probe stay in the covering (name, id, deleted) index, which also yields the rows in
# key order, so LIMIT stops early; only the rows returned are read from the table.
_NEWEST: Final = (
    "FROM kv AS a INDEXED BY kv_name_id_deleted "
    "WHERE a.name >= ?1 AND a.name < ?2 AND a.id <= ?3 AND a.deleted = 0 "
    "AND NOT EXISTS (SELECT 1 FROM kv AS b WHERE b.name = a.name AND b.id > a.id AND b.id <= ?3)"
)
_RANGE: Final = f"SELECT a.name, a.value, a.create_revision, a.id {_NEWEST} ORDER BY a.name LIMIT ?4"
_COUNT: Final = f"SELECT COUNT(*) {_NEWEST}"
_HISTORY: Final = (
    "SELECT id, name, created, deleted, create_revision, prev_revision, value, old_value FROM kv "
    "WHERE id >= ? AND id <= ? AND name >= ? AND name < ? ORDER BY id LIMIT ?"
)
# Rows superseded by a row in (lo, hi], and tombstones in (lo, hi]. Rows at or below lo went earlier.
_COMPACT: Final = (
    "DELETE FROM kv WHERE id IN ("
    "SELECT prev_revision FROM kv WHERE id > ? AND id <= ? AND prev_revision != 0 "
    "UNION SELECT id FROM kv WHERE id > ? AND id <= ? AND deleted != 0)"
)
_SET_META: Final = (
    "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


class _Subscription:
    """A watcher's live side: its key range and its bounded buffer, filled by the store after each commit."""

    __slots__ = ("closed", "end", "events", "limit", "overflowed", "start", "waiter")

    def __init__(self, start: str, end: str, limit: int) -> None:
        self.start = start
        self.end = end
        self.limit = limit
        self.events: deque[WatchEvent] = deque()
        self.overflowed = False
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    def push(self, event: WatchEvent) -> bool:
        """Buffer the event; False (and the subscription is cut off) when the buffer is full."""
        if len(self.events) >= self.limit:
            self.overflowed = True
            self.events.clear()
            self.wake()
            return False
        self.events.append(event)
        self.wake()
        return True

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class SQLiteWatch(AsyncIterator[WatchEvent]):
    """The iterator :meth:`SQLiteStore.watch` returns: history from SQL, then live events.

    It is subscribed from the moment ``watch()`` returns. Call :meth:`aclose` (or drop the last reference,
    e.g. by breaking out of ``async for``) to unsubscribe.
    """

    __slots__ = (
        "_batch",
        "_history_end",
        "_history_next",
        "_last",
        "_min_revision",
        "_started",
        "_store",
        "_sub",
    )

    def __init__(self, store: SQLiteStore, sub: _Subscription, min_revision: int, history_end: int) -> None:
        self._store = store
        self._sub = sub
        self._min_revision = min_revision
        self._history_next = min_revision
        self._history_end = history_end
        self._batch: deque[WatchEvent] = deque()
        self._last = min_revision - 1
        self._started = False

    async def __anext__(self) -> WatchEvent:
        sub = self._sub
        while True:
            if sub.closed:
                raise StopAsyncIteration
            if sub.overflowed:
                self._finish()
                raise WatchOverflowError(
                    f"watch on [{sub.start!r}, {sub.end!r}) fell {sub.limit} events behind and was cut off; "
                    "list again and watch from the list's revision"
                )
            if not self._started:
                self._started = True
                compacted = self._store._compact_rev
                if self._min_revision <= compacted:
                    self._finish()
                    raise CompactedError(self._min_revision, compacted)
            if self._batch:
                event = self._batch.popleft()
                self._last = event.kv.mod_revision
                return event
            if self._history_next <= self._history_end:
                self._read_history()
                continue
            if sub.events:
                event = sub.events.popleft()
                if event.kv.mod_revision <= self._last:
                    continue
                self._last = event.kv.mod_revision
                return event
            waiter = asyncio.get_running_loop().create_future()
            sub.waiter = waiter
            try:
                await waiter
            finally:
                sub.waiter = None

    def _read_history(self) -> None:
        compacted = self._store._compact_rev
        if self._history_next <= compacted:
            # A compaction ran while this watch was catching up and removed rows it had not read yet.
            self._finish()
            raise CompactedError(self._history_next, compacted)
        rows = self._store._query(
            _HISTORY,
            (self._history_next, self._history_end, self._sub.start, self._sub.end, _HISTORY_BATCH),
        )
        self._batch.extend(_event_from_row(row) for row in rows)
        if len(rows) < _HISTORY_BATCH:
            self._history_next = self._history_end + 1
        else:
            self._history_next = rows[-1][0] + 1

    async def aclose(self) -> None:
        """Stop watching: unsubscribe; the iterator then ends."""
        self._finish()

    def _finish(self) -> None:
        self._sub.closed = True
        self._sub.events.clear()
        self._batch.clear()
        self._history_next = self._history_end + 1
        self._store._subscriptions.discard(self._sub)

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError):
            self._store._subscriptions.discard(self._sub)


def _event_from_row(row: Sequence[Any]) -> WatchEvent:
    revision, name, created, deleted, create_revision, prev_revision, value, old_value = row
    if deleted:
        return WatchEvent(
            "DELETE",
            KeyValue(name, b"", create_revision, revision),
            KeyValue(name, old_value, create_revision, prev_revision),
        )
    prev = None if created else KeyValue(name, old_value, create_revision, prev_revision)
    return WatchEvent("PUT", KeyValue(name, value, create_revision, revision), prev)


class SQLiteStore:
    """The Store protocol on a SQLite file in WAL mode; see the module docstring for the invariants."""

    def __init__(self, db: sqlite3.Connection, path: Path, revision: int, compact_revision: int) -> None:
        """Use :meth:`open`."""
        self._db: sqlite3.Connection | None = db
        self.path = path
        self._revision = revision
        self._compact_rev = compact_revision
        self._subscriptions: set[_Subscription] = set()
        self.watch_buffer = WATCH_BUFFER
        """Buffer size of watches created from now on."""

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "NORMAL") -> SQLiteStore:
        """Open (creating if needed) the store at ``path``.

        ``synchronous`` is SQLite's setting: ``NORMAL`` survives process crashes, ``FULL`` power loss too.
        Raises StoreError if another process has the file open.
        """
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}, not {synchronous!r}")
        path = Path(path)
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            # EXCLUSIVE before WAL keeps the WAL index in process memory and locks out other processes.
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            journal = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if journal != "wal":
                raise StoreError(f"cannot put {path} in WAL mode (journal_mode is {journal})")
            db.execute(f"PRAGMA synchronous = {mode}")
            db.execute("PRAGMA cache_size = -65536")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
            db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('compact_revision', 0)")
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'kv'").fetchone()
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.close()
            if "locked" in str(exc):
                raise StoreError(f"store {path} is in use by another process; stop it first") from exc
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        except BaseException:
            db.close()
            raise
        if meta["schema_version"] != SCHEMA_VERSION:
            db.close()
            found = meta["schema_version"]
            raise StoreError(
                f"store {path} has schema version {found}; this kubevisor reads {SCHEMA_VERSION}"
            )
        return cls(db, path, seq[0] if seq else 0, meta["compact_revision"])

    async def close(self) -> None:
        """End every watch and close the file. Idempotent."""
        db, self._db = self._db, None
        for sub in self._subscriptions:
            sub.closed = True
            sub.wake()
        self._subscriptions.clear()
        if db is not None:
            db.close()

    # ----------------------------------------------------------------------------------------- reads

    async def current_revision(self) -> int:
        return self._revision

    async def compact_revision(self) -> int:
        return self._compact_rev

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        at = self._read_revision(revision)
        rows = self._query(_LATEST_ROW, (key, at))
        if not rows or rows[0][1]:
            return None
        mod_revision, _, create_revision, value = rows[0]
        return KeyValue(key, value, create_revision, mod_revision)

    async def range(self, start: str, end: str, revision: int = 0, limit: int = 0) -> RangeResult:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        at = self._read_revision(revision)
        rows = self._query(_RANGE, (start, end, at, limit + 1 if limit else -1))
        more = bool(limit) and len(rows) > limit
        if more:
            del rows[limit:]
            count = self._query(_COUNT, (start, end, at))[0][0]
        else:
            count = len(rows)
        kvs = [KeyValue(name, value, create_revision, mod) for name, value, create_revision, mod in rows]
        return RangeResult(kvs=kvs, revision=at, more=more, count=count)

    # ---------------------------------------------------------------------------------------- writes

    async def create(self, key: str, value: bytes) -> KeyValue:
        with self._transaction() as db:
            latest = db.execute(_LATEST_ROW, (key, self._revision)).fetchone()
            if latest is not None and not latest[1]:
                raise KeyExistsError(key)
            revision = self._revision + 1
            prev_revision = latest[0] if latest is not None else 0
            db.execute(_INSERT, (revision, key, 1, 0, revision, prev_revision, value, None))
        kv = KeyValue(key, value, revision, revision)
        self._committed(WatchEvent("PUT", kv, None))
        return kv

    async def update(self, key: str, value: bytes, expected_mod_revision: int) -> KeyValue:
        with self._transaction() as db:
            current = self._current(db, key)
            if current.mod_revision != expected_mod_revision:
                raise CompareFailedError(key, current)
            revision = self._revision + 1
            db.execute(
                _INSERT,
                (revision, key, 0, 0, current.create_revision, current.mod_revision, value, current.value),
            )
        kv = KeyValue(key, value, current.create_revision, revision)
        self._committed(WatchEvent("PUT", kv, current))
        return kv

    async def delete(self, key: str, expected_mod_revision: int = 0) -> KeyValue:
        """Delete the key (compare unless ``expected_mod_revision`` is 0).

        Returns the deleted value with its ``create_revision``; its ``mod_revision`` is the revision of the
        delete (the revision a client sees on the deleted object, as kube-apiserver reports it).
        """
        with self._transaction() as db:
            current = self._current(db, key)
            if expected_mod_revision and current.mod_revision != expected_mod_revision:
                raise CompareFailedError(key, current)
            revision = self._revision + 1
            db.execute(
                _INSERT,
                (revision, key, 0, 1, current.create_revision, current.mod_revision, b"", current.value),
            )
        self._committed(WatchEvent("DELETE", KeyValue(key, b"", current.create_revision, revision), current))
        return KeyValue(key, current.value, current.create_revision, revision)

    async def compact(self, revision: int) -> None:
        """Forget history at and below ``revision``; a no-op if already compacted that far."""
        if revision > self._revision:
            raise FutureRevisionError(revision, self._revision)
        while (low := self._compact_rev) < revision:
            high = min(revision, low + _COMPACT_BATCH)
            with self._transaction() as db:
                db.execute(_COMPACT, (low, high, low, high))
                db.execute(_SET_META, ("compact_revision", high))
            self._compact_rev = high
            if high < revision:
                await asyncio.sleep(0)

    # ---------------------------------------------------------------------------------------- watch

    @property
    def watch_count(self) -> int:
        """Watches subscribed now (a gauge for metrics; closed and cut-off watches are not counted)."""
        return len(self._subscriptions)

    def watch(self, start: str, end: str, revision: int = 0) -> SQLiteWatch:
        """Changes of keys in ``[start, end)`` with a revision >= ``revision`` (0: from now on).

        Subscribed when this returns; a compacted ``revision`` raises CompactedError on first iteration.
        """
        self._connection()
        if revision < 0:
            raise ValueError(f"revision must be >= 0, not {revision}")
        sub = _Subscription(start, end, self.watch_buffer)
        self._subscriptions.add(sub)
        min_revision = revision or self._revision + 1
        return SQLiteWatch(self, sub, min_revision, history_end=self._revision)

    # ------------------------------------------------------------------------------------- internals

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"store {self.path} is closed")
        return self._db

    def _read_revision(self, revision: int) -> int:
        self._connection()
        if revision == 0:
            return self._revision
        if revision < 0:
            raise ValueError(f"revision must be >= 0, not {revision}")
        if revision < self._compact_rev:
            raise CompactedError(revision, self._compact_rev)
        if revision > self._revision:
            raise FutureRevisionError(revision, self._revision)
        return revision

    def _query(self, sql: str, params: Sequence[object]) -> list[Any]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading store {self.path} failed: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"writing store {self.path} failed: {exc}") from exc
            raise

    def _current(self, db: sqlite3.Connection, key: str) -> KeyValue:
        row = db.execute(_LATEST_ROW, (key, self._revision)).fetchone()
        if row is None or row[1]:
            raise KeyNotFoundError(key)
        return KeyValue(key, row[3], row[2], row[0])

    def _committed(self, event: WatchEvent) -> None:
        """Advance the revision and hand the committed write's event to the matching watchers."""
        self._revision = event.kv.mod_revision
        key = event.kv.key
        cut_off = [sub for sub in self._subscriptions if sub.start <= key < sub.end and not sub.push(event)]
        self._subscriptions.difference_update(cut_off)
