"""Watch streams: store events turned into Kubernetes watch events for one list scope and filter.

The store yields every change of the key range in revision order with the previous value, so a selector
watch can say DELETED when an object stops matching and ADDED when it starts to. A pump task moves store
events into a queue so that the stream can also send bookmarks and honour ``timeoutSeconds`` without
cancelling the store's iterator mid-event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from kubevisor.api.registry import Kind, Obj
from kubevisor.apiserver.resources import Filter, Objects, decode, key_prefix
from kubevisor.store import CompactedError, StoreError, WatchEvent, WatchOverflowError, prefix_end

BOOKMARK_INTERVAL = 15.0


def line(event_type: str, obj: Any) -> bytes:
    return orjson.dumps({"type": event_type, "object": obj}) + b"\n"


def expired(message: str) -> bytes:
    return line(
        "ERROR",
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "Expired",
            "code": 410,
        },
    )


def convert(kind: Kind, flt: Filter, ev: WatchEvent) -> tuple[str, Obj] | None:
    """The watch event a store event means for this filter, or None."""
    if ev.type == "DELETE":
        if ev.prev is None:
            return None
        old = decode(ev.prev)
        old["metadata"]["resourceVersion"] = str(ev.kv.mod_revision)
        return ("DELETED", old) if flt.empty or flt.matches(kind, old) else None
    new = decode(ev.kv)
    if flt.empty:
        return ("ADDED" if ev.prev is None else "MODIFIED"), new
    new_match = flt.matches(kind, new)
    old_match = ev.prev is not None and flt.matches(kind, decode(ev.prev))
    if new_match:
        return ("MODIFIED" if old_match else "ADDED"), new
    if old_match:
        return "DELETED", new
    return None


async def stream(
    objects: Objects,
    kind: Kind,
    namespace: str | None,
    flt: Filter,
    *,
    resource_version: str | None,
    timeout: float,
    bookmarks: bool,
) -> AsyncIterator[bytes]:
    """The body of a watch response."""
    start_rev: int
    if not resource_version or resource_version == "0":
        page = await objects.list(kind, namespace, flt)
        for obj in page.items:
            yield line("ADDED", obj)
        start_rev = page.resource_version + 1
    else:
        try:
            start_rev = int(resource_version) + 1
        except ValueError:
            yield expired(f"invalid resource version: {resource_version}")
            return
    last_rv = start_rev - 1
    prefix = key_prefix(kind, namespace)
    queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        try:
            async for ev in objects.store.watch(prefix, prefix_end(prefix), start_rev):
                await queue.put(ev)
            await queue.put(None)
        except (StoreError, OSError) as exc:
            await queue.put(exc)

    task = asyncio.create_task(pump())
    deadline = time.monotonic() + timeout
    next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            wait = min(deadline, next_bookmark) - now if bookmarks else deadline - now
            try:
                item = await asyncio.wait_for(queue.get(), timeout=max(wait, 0.001))
            except TimeoutError:
                if bookmarks and time.monotonic() >= next_bookmark:
                    next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
                    yield line(
                        "BOOKMARK",
                        {
                            "kind": kind.kind,
                            "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": str(last_rv)},
                        },
                    )
                continue
            if item is None:
                return
            if isinstance(item, CompactedError):
                yield expired(f"too old resource version: {start_rev - 1} ({item.compact_revision})")
                return
            if isinstance(item, WatchOverflowError):
                yield expired("watch fell behind; please re-list")
                return
            if isinstance(item, BaseException):
                return
            last_rv = item.kv.mod_revision
            converted = convert(kind, flt, item)
            if converted is not None:
                yield line(*converted)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StoreError):
            await task
