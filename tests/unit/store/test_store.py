"""Behaviour of every Store backend: the invariants of kubevisor.store.protocol, checked through its API only.

Revisions are taken from the writes' results, never assumed to start at 1, so a backend on a shared server
(etcd) can run these tests too.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from kubevisor.store.protocol import (
    CompactedError,
    CompareFailedError,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    Store,
    WatchEvent,
    WatchOverflowError,
    prefix_end,
)
from kubevisor.store.sqlite import SQLiteStore
from tests.unit.store.libwatch import take, watching

P = "/t/"
END = prefix_end(P)


def _revisions(events: list[WatchEvent]) -> list[int]:
    return [event.kv.mod_revision for event in events]


# ---------------------------------------------------------------------------------------------- writes


async def test_create_then_get(store: Store) -> None:
    before = await store.current_revision()
    kv = await store.create(P + "a", b"one")
    assert kv == KeyValue(P + "a", b"one", kv.mod_revision, kv.mod_revision)
    assert kv.mod_revision > before
    assert await store.current_revision() == kv.mod_revision
    assert await store.get(P + "a") == kv
    assert await store.get(P + "missing") is None


async def test_create_of_existing_key_fails_and_writes_nothing(store: Store) -> None:
    kv = await store.create(P + "a", b"one")
    with pytest.raises(KeyExistsError) as info:
        await store.create(P + "a", b"two")
    assert info.value.key == P + "a"
    assert await store.current_revision() == kv.mod_revision
    assert await store.get(P + "a") == kv


async def test_create_after_delete_starts_a_new_life(store: Store) -> None:
    first = await store.create(P + "a", b"one")
    await store.delete(P + "a")
    second = await store.create(P + "a", b"two")
    assert second.create_revision == second.mod_revision > first.create_revision
    updated = await store.update(P + "a", b"three", second.mod_revision)
    assert updated.create_revision == second.create_revision


async def test_update_compares_mod_revision(store: Store) -> None:
    created = await store.create(P + "a", b"one")
    updated = await store.update(P + "a", b"two", created.mod_revision)
    assert updated == KeyValue(P + "a", b"two", created.create_revision, updated.mod_revision)
    assert updated.mod_revision > created.mod_revision

    with pytest.raises(CompareFailedError) as info:
        await store.update(P + "a", b"stale", created.mod_revision)
    assert info.value.key == P + "a"
    assert info.value.current == updated
    assert await store.get(P + "a") == updated
    assert await store.current_revision() == updated.mod_revision


async def test_update_of_missing_or_deleted_key_fails(store: Store) -> None:
    with pytest.raises(KeyNotFoundError):
        await store.update(P + "never", b"x", 1)
    kv = await store.create(P + "a", b"one")
    await store.delete(P + "a")
    with pytest.raises(KeyNotFoundError):
        await store.update(P + "a", b"x", kv.mod_revision)


async def test_delete_compares_mod_revision_unless_zero(store: Store) -> None:
    created = await store.create(P + "a", b"one")
    updated = await store.update(P + "a", b"two", created.mod_revision)
    with pytest.raises(CompareFailedError) as info:
        await store.delete(P + "a", created.mod_revision)
    assert info.value.current == updated
    assert await store.get(P + "a") == updated

    deleted = await store.delete(P + "a", updated.mod_revision)
    assert deleted.key == P + "a"
    assert deleted.value == b"two"
    assert deleted.create_revision == created.create_revision
    assert await store.get(P + "a") is None
    with pytest.raises(KeyNotFoundError):
        await store.delete(P + "a")

    other = await store.create(P + "b", b"x")
    await store.delete(P + "b")  # unconditional
    assert await store.get(P + "b") is None
    assert await store.current_revision() > other.mod_revision


async def test_revisions_increase_strictly_across_keys(store: Store) -> None:
    revisions: list[int] = []
    for i in range(20):
        kv = await store.create(f"/x{i % 3}/k{i}", b"v")
        revisions.append(kv.mod_revision)
        revisions.append((await store.update(kv.key, b"w", kv.mod_revision)).mod_revision)
        if i % 2:
            await store.delete(kv.key)
            revisions.append(await store.current_revision())
    assert revisions == sorted(set(revisions))
    assert await store.current_revision() == revisions[-1]


async def test_concurrent_updates_of_one_key_have_one_winner_per_round(store: Store) -> None:
    await store.create(P + "counter", b"0")
    writers = 8
    barrier = asyncio.Barrier(writers)

    async def bump(name: str) -> KeyValue | CompareFailedError:
        current = await store.get(P + "counter")
        assert current is not None
        await barrier.wait()  # everyone has read the same revision before anyone writes
        try:
            return await store.update(P + "counter", name.encode(), current.mod_revision)
        except CompareFailedError as exc:
            return exc

    for _ in range(5):
        results = await asyncio.gather(*(bump(f"w{i}") for i in range(writers)))
        winners = [r for r in results if isinstance(r, KeyValue)]
        losers = [r for r in results if isinstance(r, CompareFailedError)]
        assert len(winners) == 1
        assert len(losers) == writers - 1
        assert all(loser.current == winners[0] for loser in losers)
        assert await store.get(P + "counter") == winners[0]


# ----------------------------------------------------------------------------------------------- reads


async def test_get_and_range_at_past_revisions(store: Store) -> None:
    model: dict[str, KeyValue] = {}
    snapshots: dict[int, dict[str, KeyValue]] = {}
    rng = random.Random(7)
    for _ in range(60):
        key = P + rng.choice("abcdef")
        current = model.get(key)
        if current is None:
            model[key] = await store.create(key, rng.randbytes(5))
        elif rng.random() < 0.3:
            await store.delete(key, current.mod_revision)
            del model[key]
        else:
            model[key] = await store.update(key, rng.randbytes(5), current.mod_revision)
        snapshots[await store.current_revision()] = dict(model)

    for revision, expected in snapshots.items():
        result = await store.range(P, END, revision)
        assert result.revision == revision
        assert result.kvs == [expected[key] for key in sorted(expected)]
        assert result.count == len(expected)
        assert not result.more
        for key in "abcdef":
            assert await store.get(P + key, revision) == expected.get(P + key)
    latest = await store.range(P, END)
    assert latest.revision == await store.current_revision()
    assert latest.kvs == [model[key] for key in sorted(model)]


async def test_range_is_half_open_and_sorted(store: Store) -> None:
    keys = [P + "a", P + "a/1", P + "b", P + "b0", P + "c", "/u/z", "/s"]
    for key in random.Random(1).sample(keys, len(keys)):
        await store.create(key, key.encode())
    result = await store.range(P + "a", P + "c")
    assert [kv.key for kv in result.kvs] == [P + "a", P + "a/1", P + "b", P + "b0"]
    assert [kv.value for kv in result.kvs] == [kv.key.encode() for kv in result.kvs]
    assert [kv.key for kv in (await store.range(P, END)).kvs] == sorted(k for k in keys if k.startswith(P))
    assert (await store.range(P + "d", END)).kvs == []


async def test_range_limit_more_and_count(store: Store) -> None:
    names = [f"{P}k{i:03d}" for i in range(25)]
    for name in random.Random(3).sample(names, len(names)):
        await store.create(name, b"v")
    for name in names[::5]:
        await store.delete(name)
    live = [name for i, name in enumerate(names) if i % 5]

    page = await store.range(P, END, limit=7)
    assert [kv.key for kv in page.kvs] == live[:7]
    assert page.more
    assert page.count == len(live) == 20

    # Page through the whole range at one revision, as the apiserver does with continue tokens.
    seen: list[str] = []
    start = P
    while True:
        page = await store.range(start, END, page.revision, limit=7)
        seen += [kv.key for kv in page.kvs]
        if not page.more:
            break
        start = page.kvs[-1].key + "\0"
    assert seen == live

    exact = await store.range(P, END, limit=20)
    assert (len(exact.kvs), exact.more, exact.count) == (20, False, 20)
    everything = await store.range(P, END, limit=0)
    assert (len(everything.kvs), everything.more, everything.count) == (20, False, 20)


async def test_reading_a_future_revision_fails(store: Store) -> None:
    kv = await store.create(P + "a", b"v")
    with pytest.raises(FutureRevisionError) as info:
        await store.range(P, END, kv.mod_revision + 1)
    assert info.value.current == kv.mod_revision
    with pytest.raises(FutureRevisionError):
        await store.get(P + "a", kv.mod_revision + 5)


# ----------------------------------------------------------------------------------------------- watch


async def test_watch_from_zero_sees_only_future_changes(store: Store) -> None:
    await store.create(P + "old", b"v")
    async with watching(store, P, END) as watch:
        new = await store.create(P + "new", b"v")
        (event,) = await take(watch, 1)
    assert event == WatchEvent("PUT", new, None)


async def test_watch_events_carry_the_previous_value(store: Store) -> None:
    async with watching(store, P, END) as watch:
        created = await store.create(P + "a", b"one")
        updated = await store.update(P + "a", b"two", created.mod_revision)
        await store.delete(P + "a")
        put, update, delete = await take(watch, 3)
    assert put == WatchEvent("PUT", created, None)
    assert update == WatchEvent("PUT", updated, created)
    assert delete.type == "DELETE"
    assert delete.kv.key == P + "a"
    assert delete.kv.value == b""
    assert delete.kv.mod_revision == await store.current_revision()
    assert delete.kv.create_revision == created.create_revision
    assert delete.prev == updated


async def test_watch_filters_by_key_range(store: Store) -> None:
    start, end = P + "b", P + "d"
    async with watching(store, start, end) as watch:
        for key in [P + "a", P + "b", P + "bz", P + "c/x", P + "d", P + "e", "/other"]:
            await store.create(key, b"v")
        sentinel = await store.create(P + "c~", b"last")
        events = await take(watch, 4)
    assert [event.kv.key for event in events] == [P + "b", P + "bz", P + "c/x", P + "c~"]
    assert events[-1].kv == sentinel


async def test_watch_from_a_past_revision_replays_history_then_live(store: Store) -> None:
    versions = [await store.create(P + "a", b"0")]
    for i in range(1, 1500):  # more history than one read batch
        versions.append(await store.update(P + "a", str(i).encode(), versions[-1].mod_revision))
        await store.create(f"/elsewhere/{i}", b"noise")
    from_revision = versions[700].mod_revision - 1  # not a revision of the watched range
    live_writes = 500
    written: list[KeyValue] = []

    async def writer() -> None:
        for i in range(live_writes):
            written.append(await store.create(f"{P}live/{i:03d}", b"v"))
            await asyncio.sleep(0)  # let the watcher interleave with the writes

    events: list[WatchEvent] = []
    async with watching(store, P, END, from_revision) as watch, asyncio.timeout(10):
        # Writes between the watch's start and its first read must appear once, after the history.
        written += [await store.create(f"{P}live/early{i}", b"v") for i in range(3)]
        writing = asyncio.create_task(writer())
        while sum(event.kv.key.startswith(P + "live/") for event in events) < live_writes + 3:
            events.append(await anext(watch))
        await writing

    revisions = _revisions(events)
    assert revisions == sorted(set(revisions)), "events repeated or out of order"
    # Every update of P+"a" from from_revision on, then every live create: nothing skipped.
    history = versions[700:]
    assert [event.kv for event in events[: len(history)]] == history
    assert [event.prev for event in events[: len(history)]] == versions[699:-1]
    assert [event.kv for event in events[len(history) :]] == written


async def test_compaction_forgets_history_but_keeps_latest_values(store: Store) -> None:
    a = await store.create(P + "a", b"a0")
    a = await store.update(P + "a", b"a1", a.mod_revision)
    b = await store.create(P + "b", b"b0")
    await store.create(P + "gone", b"x")
    await store.delete(P + "gone")
    middle = await store.current_revision()
    before = await store.range(P, END, middle)
    a = await store.update(P + "a", b"a2", a.mod_revision)
    c = await store.create(P + "c", b"c0")

    await store.compact(middle)
    assert await store.compact_revision() == middle
    assert await store.range(P, END, middle) == before
    assert (await store.range(P, END)).kvs == [a, b, c]
    with pytest.raises(CompactedError) as info:
        await store.range(P, END, middle - 1)
    assert info.value.compact_revision == middle
    with pytest.raises(CompactedError):
        await store.get(P + "a", middle - 1)

    async with watching(store, P, END, middle - 1) as old:
        with pytest.raises(CompactedError):
            await anext(old)
    async with watching(store, P, END, middle + 1) as retained:
        events = await take(retained, 2)
        assert [event.kv for event in events] == [a, c]
        assert events[0].prev is not None
        assert events[0].prev.value == b"a1"
        d = await store.create(P + "d", b"live")
        assert (await take(retained, 1))[0].kv == d

    await store.compact(middle)  # already compacted that far: nothing changes
    assert await store.compact_revision() == middle
    with pytest.raises(FutureRevisionError):
        await store.compact(await store.current_revision() + 1)


async def test_watch_started_before_compaction_keeps_working(store: Store) -> None:
    kv = await store.create(P + "a", b"0")
    async with watching(store, P, END, kv.mod_revision + 1) as watch:
        for i in range(1, 4):
            kv = await store.update(P + "a", str(i).encode(), kv.mod_revision)
        first = await take(watch, 1)
        await store.compact(kv.mod_revision)
        kv = await store.update(P + "a", b"4", kv.mod_revision)
        rest = await take(watch, 3)
    assert [event.kv.value for event in first + rest] == [b"1", b"2", b"3", b"4"]


async def test_a_watcher_that_falls_behind_is_cut_off_without_blocking_writers(store: Store) -> None:
    if not isinstance(store, SQLiteStore):
        pytest.skip("the watch buffer size is configurable only on the sqlite backend")
    store.watch_buffer = 50
    async with watching(store, P, END) as stalled, watching(store, P, END) as reader:
        # The writes all complete although nobody reads `stalled`; `reader` keeps up and is unaffected.
        async with asyncio.timeout(5):
            for i in range(120):
                await store.create(f"{P}{i:03d}", b"v")
                assert (await take(reader, 1))[0].kv.key == f"{P}{i:03d}"
        with pytest.raises(WatchOverflowError):
            await anext(stalled)
        with pytest.raises(StopAsyncIteration):
            await anext(stalled)
        await store.create(P + "after", b"v")
        assert (await take(reader, 1))[0].kv.key == P + "after"


async def test_close_ends_watches(store: Store) -> None:
    kv = await store.create(P + "a", b"v")
    received: list[WatchEvent] = []
    got_one = asyncio.Event()

    async def consume() -> None:
        async for event in store.watch(P, END, kv.mod_revision):
            received.append(event)
            got_one.set()

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await got_one.wait()
        await store.close()
        await consumer  # ends without an error
    assert [event.kv for event in received] == [kv]
