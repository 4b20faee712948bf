"""Watch helpers for store tests: a watch closed on exit, and taking events with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from kubevisor.store.protocol import Store, WatchEvent


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
