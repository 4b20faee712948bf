"""Fixtures for store tests: a ``store`` per backend, so the behaviour tests run against each of them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.store.protocol import Store, WatchEvent
from kubevisor.store.sqlite import SQLiteStore

BACKENDS = ["sqlite"]
"""Backends the behaviour tests run against; an etcd backend adds its name here and in open_backend."""


async def open_backend(backend: str, directory: Path) -> Store:
    """A fresh, empty store of the given backend whose files live in ``directory``."""
    if backend == "sqlite":
        return await SQLiteStore.open(directory / "db.sqlite")
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: str = request.param
    opened = await open_backend(backend, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


@contextlib.asynccontextmanager
async def watching(
    store: Store, start: str, end: str, revision: int = 0
) -> AsyncIterator[AsyncIterator[WatchEvent]]:
    """A watch that is closed on exit, whatever happened."""
    watch = store.watch(start, end, revision)
    try:
        yield watch
    finally:
        aclose = getattr(watch, "aclose", None)
        if aclose is not None:
            await aclose()


async def take(watch: AsyncIterator[WatchEvent], count: int, timeout: float = 5.0) -> list[WatchEvent]:
    """The next ``count`` events of the watch; fails if they do not all arrive within ``timeout`` seconds."""
    events: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            events.append(await anext(watch))
    return events
