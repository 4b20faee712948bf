"""Model-based test: random sequences of writes and compactions against a dict model, per backend.

After each sequence, the state at every retained revision, the refusal of compacted revisions, and the
watch replay from the oldest watchable revision must all match what the model recorded.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubevisor.store.protocol import (
    CompactedError,
    CompareFailedError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    Store,
    WatchEvent,
    prefix_end,
)
from tests.unit.store.backends import BACKENDS, open_backend
from tests.unit.store.libwatch import take

P = "/m/"
KEYS = [P + name for name in ("a", "b", "b/c", "d")]

Op = tuple[str, int, bytes]
ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "delete", "stale", "create-existing", "compact"]),
        st.integers(min_value=0, max_value=len(KEYS) - 1),
        st.binary(max_size=8),
    ),
    max_size=40,
)


@dataclass
class Model:
    state: dict[str, KeyValue] = field(default_factory=dict)
    snapshots: dict[int, dict[str, KeyValue]] = field(default_factory=dict)
    events: list[WatchEvent] = field(default_factory=list)
    compacted: int = 0


async def _apply(store: Store, model: Model, op: Op) -> None:
    kind, index, value = op
    key = KEYS[index]
    current = model.state.get(key)
    if kind == "put" and current is None:
        kv = await store.create(key, value)
        model.events.append(WatchEvent("PUT", kv, None))
        model.state[key] = kv
    elif kind == "put" and current is not None:
        kv = await store.update(key, value, current.mod_revision)
        assert kv.create_revision == current.create_revision
        model.events.append(WatchEvent("PUT", kv, current))
        model.state[key] = kv
    elif kind == "delete":
        if current is None:
            with pytest.raises(KeyNotFoundError):
                await store.delete(key)
            return
        deleted = await store.delete(key, current.mod_revision)
        assert deleted.value == current.value
        tombstone = KeyValue(key, b"", current.create_revision, await store.current_revision())
        model.events.append(WatchEvent("DELETE", tombstone, current))
        del model.state[key]
    elif kind == "stale":
        if current is None:
            with pytest.raises(KeyNotFoundError):
                await store.update(key, value, 1)
        else:
            with pytest.raises(CompareFailedError) as info:
                await store.update(key, value, current.mod_revision - 1)
            assert info.value.current == current
        return
    elif kind == "create-existing":
        if current is not None:
            with pytest.raises(KeyExistsError):
                await store.create(key, value)
        return
    else:  # compact half-way between the last compaction and now
        target = (model.compacted + await store.current_revision()) // 2
        await store.compact(target)
        model.compacted = max(model.compacted, target)
        return
    model.snapshots[model.events[-1].kv.mod_revision] = dict(model.state)


async def _check(backend: str, directory: Path, sequence: list[Op]) -> None:
    store = await open_backend(backend, directory)
    try:
        model = Model()
        base = await store.current_revision()
        model.snapshots[base] = {}
        for op in sequence:
            await _apply(store, model, op)

        current = await store.current_revision()
        assert current == base + len(model.events)
        assert await store.compact_revision() == model.compacted
        state: dict[str, KeyValue] = {}
        for revision in range(base, current + 1):
            state = model.snapshots.get(revision, state)
            if revision == 0:
                continue  # 0 means "latest"
            if revision < model.compacted:
                with pytest.raises(CompactedError):
                    await store.range(P, prefix_end(P), revision)
                continue
            result = await store.range(P, prefix_end(P), revision)
            assert result.kvs == [state[key] for key in sorted(state)], f"state at {revision}"
            assert result.count == len(state)
            for key in KEYS:
                assert await store.get(key, revision) == state.get(key)

        first = max(model.compacted + 1, base + 1)
        expected = [event for event in model.events if event.kv.mod_revision >= first]
        watch = store.watch(P, prefix_end(P), first)
        try:
            assert await take(watch, len(expected)) == expected
        finally:
            aclose = getattr(watch, "aclose", None)
            if aclose is not None:
                await aclose()
    finally:
        await store.close()


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=ops)
def test_store_matches_a_dict_model(backend: str, sequence: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_check(backend, Path(directory), sequence))
