"""What only the SQLite backend promises: durability across kill -9, files, locking, its watch machinery."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.store import sqlite as sqlite_store
from kubevisor.store.protocol import CompactedError, KeyValue, StoreError, prefix_end
from kubevisor.store.sqlite import SQLiteStore
from tests.unit.store.crash_writer import value_for
from tests.unit.store.libwatch import take, watching

P = "/t/"
END = prefix_end(P)
REPO = Path(__file__).resolve().parents[3]
CRASH_WRITER = Path(__file__).with_name("crash_writer.py")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(tmp_path / "db.sqlite")
    try:
        yield opened
    finally:
        await opened.close()


def _integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def _row_count(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM kv").fetchone()[0])
    finally:
        db.close()


async def _acks_until_killed(db: Path, prefix: str, wanted: int) -> list[tuple[str, int, int]]:
    """Run crash_writer, kill -9 it after ``wanted`` acknowledged writes; all acknowledgements it printed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CRASH_WRITER),
        str(db),
        prefix,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while len(lines) < wanted:
                line = await child.stdout.readline()
                if not line:
                    raise AssertionError(f"writer exited early: {(await child.stderr.read()).decode()}")
                lines.append(line)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    # Whatever the writer printed before it died was acknowledged too.
    lines += (await child.stdout.read()).splitlines(keepends=True)
    assert child.returncode == -signal.SIGKILL
    acks = []
    for line in lines:
        if not line.endswith(b"\n"):
            continue  # cut off mid-line by the kill
        key, revision, version = line.decode().split()
        acks.append((key, int(revision), int(version)))
    return acks


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    rng = random.Random(11)
    acknowledged: list[tuple[str, int, int]] = []
    for burst in range(3):
        acks = await _acks_until_killed(db, f"/crash/{burst}/", wanted=rng.randrange(200, 600))
        assert len(acks) >= 200
        acknowledged += acks
        assert _integrity(db) == "ok"

        store = await SQLiteStore.open(db)
        try:
            assert await store.current_revision() >= acknowledged[-1][1]
            for key, revision, version in acknowledged:
                kv = await store.get(key, revision)
                assert kv is not None, f"acknowledged write of {key} at {revision} lost"
                assert kv.mod_revision == revision
                assert kv.value == value_for(key, version)
                latest = await store.get(key)
                assert latest is not None
                assert latest.mod_revision >= revision
            revisions = [revision for _, revision, _ in acknowledged]
            assert revisions == sorted(set(revisions))
        finally:
            await store.close()


async def test_state_and_revisions_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SQLiteStore.open(path)
    kept = await store.create(P + "kept", b"v")
    gone = await store.create(P + "gone", b"v")
    await store.delete(P + "gone", gone.mod_revision)
    last = await store.current_revision()
    # Compacting the newest revision removes its row (a tombstone); the revision must not go back.
    await store.compact(last)
    await store.close()

    store = await SQLiteStore.open(path)
    try:
        assert await store.current_revision() == last
        assert await store.compact_revision() == last
        assert (await store.range(P, END)).kvs == [kept]
        again = await store.create(P + "gone", b"again")
        assert again.mod_revision == last + 1
    finally:
        await store.close()


async def test_a_second_process_cannot_open_the_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SQLiteStore.open(path)
    try:
        await store.create(P + "a", b"v")
        with pytest.raises(StoreError, match="in use by another process"):
            await SQLiteStore.open(path)
    finally:
        await store.close()
    reopened = await SQLiteStore.open(path)
    await reopened.close()


async def test_synchronous_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SQLiteStore.open(tmp_path / "db.sqlite", synchronous="OFF")
    store = await SQLiteStore.open(tmp_path / "db.sqlite", synchronous="full")
    try:
        assert store._db is not None
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.close()


async def test_a_closed_store_refuses_work(store: SQLiteStore) -> None:
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.get(P + "a")
    with pytest.raises(StoreError, match="closed"):
        await store.create(P + "a", b"v")
    with pytest.raises(StoreError, match="closed"):
        store.watch(P, END)


async def test_compaction_removes_superseded_rows_and_tombstones(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SQLiteStore.open(path)
    kv = await store.create(P + "a", b"0")
    for i in range(1, 10):
        kv = await store.update(P + "a", str(i).encode(), kv.mod_revision)
    await store.create(P + "b", b"b")
    await store.delete(P + "b")
    await store.compact(await store.current_revision())  # the newest row is a tombstone
    keep = await store.create(P + "c", b"c")
    await store.compact(await store.current_revision())
    assert (await store.range(P, END)).kvs == [kv, keep]
    await store.close()
    assert _row_count(path) == 2


async def test_watch_at_exactly_the_compaction_revision_is_refused(store: SQLiteStore) -> None:
    a = await store.create(P + "a", b"v")
    await store.delete(P + "a")  # this tombstone is what compaction at its revision removes
    deleted_at = await store.current_revision()
    await store.compact(deleted_at)
    with pytest.raises(CompactedError):
        await anext(store.watch(P, END, deleted_at))
    assert (await store.range(P, END, deleted_at)).kvs == []
    assert a.mod_revision < deleted_at


async def test_compaction_during_history_catch_up_ends_the_watch(store: SQLiteStore) -> None:
    kv = await store.create(P + "a", b"0")
    start = kv.mod_revision
    for i in range(1, 2 * sqlite_store._HISTORY_BATCH + 10):
        kv = await store.update(P + "a", str(i).encode(), kv.mod_revision)
    async with watching(store, P, END, start) as watch:
        await take(watch, 10)
        await store.compact(start + sqlite_store._HISTORY_BATCH + 100)
        with pytest.raises(CompactedError):
            await take(watch, 2 * sqlite_store._HISTORY_BATCH)


async def test_concurrent_compactions_never_move_the_compaction_revision_back(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_COMPACT_BATCH", 7)
    kv = await store.create(P + "a", b"0")
    for i in range(1, 100):
        kv = await store.update(P + "a", str(i).encode(), kv.mod_revision)
    seen: list[int] = []

    async def observe() -> None:
        for _ in range(50):
            seen.append(await store.compact_revision())
            await asyncio.sleep(0)

    await asyncio.gather(store.compact(kv.mod_revision - 1), store.compact(50), observe())
    assert seen == sorted(seen)
    assert await store.compact_revision() == kv.mod_revision - 1
    assert await store.get(P + "a") == kv


async def test_closing_a_watch_unsubscribes(store: SQLiteStore) -> None:
    watch = store.watch(P, END)
    assert store.watch_count == 1
    await watch.aclose()
    assert store.watch_count == 0
    with pytest.raises(StopAsyncIteration):
        await anext(watch)

    kv = await store.create(P + "a", b"v")
    async for event in store.watch(P, END, kv.mod_revision):
        assert event.kv == kv
        assert store.watch_count == 1
        break
    assert store.watch_count == 0


async def test_a_watch_from_a_future_revision_waits_for_it(store: SQLiteStore) -> None:
    kv = await store.create(P + "a", b"0")
    async with watching(store, P, END, kv.mod_revision + 3) as watch:
        for i in range(1, 5):
            kv = await store.update(P + "a", str(i).encode(), kv.mod_revision)
        events = await take(watch, 2)
    assert [event.kv.value for event in events] == [b"3", b"4"]


async def test_range_reads_a_consistent_latest_value_per_key(store: SQLiteStore) -> None:
    written: dict[str, KeyValue] = {}
    for i in range(300):
        written[f"{P}{i:04d}"] = await store.create(f"{P}{i:04d}", bytes(300))
    for i in range(0, 300, 3):
        key = f"{P}{i:04d}"
        written[key] = await store.update(key, b"new", written[key].mod_revision)
    result = await store.range(P, END)
    assert result.kvs == [written[key] for key in sorted(written)]


async def test_opening_something_that_is_not_a_store_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        await SQLiteStore.open(tmp_path / "missing-dir" / "db.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        await SQLiteStore.open(junk)
