"""Watch streams: store events turned into Kubernetes watch events for one list scope and filter.

The store yields every change of the key range in revision order with the previous value, so a selector
watch can say DELETED when an object stops matching and ADDED when it starts to. A pump task moves store
events into a queue so that the stream can also send bookmarks and honour ``timeoutSeconds`` without
cancelling the store's iterator mid-event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from kubevisor.api.registry import Kind, Obj
from kubevisor.apiserver.resources import Filter, Objects, decode, key_prefix
from kubevisor.store import CompactedError, StoreError, WatchEvent, WatchOverflowError, prefix_end

BOOKMARK_INTERVAL = 15.0

log = logging.getLogger(__name__)


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


class _SharedEvents:
    """Decoded objects and encoded lines of recent store events, shared by every watcher.

    N watchers of one change would otherwise each decode and encode it; objects taken from here are
    read-only.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._objects: OrderedDict[tuple[str, int, bool], Obj] = OrderedDict()
        self._lines: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()

    def obj(self, ev: WatchEvent, prev: bool) -> Obj:
        kv = ev.prev if prev else ev.kv
        assert kv is not None
        key = (ev.kv.key, ev.kv.mod_revision, prev)
        obj = self._objects.get(key)
        if obj is None:
            obj = decode(kv)
            if ev.type == "DELETE":
                obj["metadata"]["resourceVersion"] = str(ev.kv.mod_revision)
            self._objects[key] = obj
            if len(self._objects) > self.size:
                self._objects.popitem(last=False)
        return obj

    def line(self, ev: WatchEvent, event_type: str, obj: Obj) -> bytes:
        key = (ev.kv.key, ev.kv.mod_revision, event_type)
        data = self._lines.get(key)
        if data is None:
            data = self._lines[key] = line(event_type, obj)
            if len(self._lines) > self.size:
                self._lines.popitem(last=False)
        return data


_SHARED: weakref.WeakKeyDictionary[object, _SharedEvents] = weakref.WeakKeyDictionary()


def shared_events(store: object) -> _SharedEvents:
    """The event cache of one store (keys and revisions are only unique within a store)."""
    cache = _SHARED.get(store)
    if cache is None:
        cache = _SHARED[store] = _SharedEvents()
    return cache


def convert(kind: Kind, flt: Filter, ev: WatchEvent, shared: _SharedEvents) -> tuple[str, Obj] | None:
    """The watch event a store event means for this filter, or None. The object is shared: read-only."""
    if ev.type == "DELETE":
        if ev.prev is None:
            return None
        old = shared.obj(ev, prev=True)
        return ("DELETED", old) if flt.empty or flt.matches(kind, old) else None
    new = shared.obj(ev, prev=False)
    if flt.empty:
        return ("ADDED" if ev.prev is None else "MODIFIED"), new
    new_match = flt.matches(kind, new)
    old_match = ev.prev is not None and flt.matches(kind, shared.obj(ev, prev=True))
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
    render: Callable[[Obj], Any] | None = None,
) -> AsyncIterator[bytes]:
    """The body of a watch response; ``render`` turns each event's object into what the client asked
    for (a Table row, PartialObjectMetadata); bookmarks and errors are sent as they are."""
    show: Callable[[Obj], Any] = render or (lambda obj: obj)
    start_rev: int
    if not resource_version or resource_version == "0":
        page = await objects.list(kind, namespace, flt)
        for obj in page.items:
            yield line("ADDED", show(obj))
        start_rev = page.resource_version + 1
    else:
        try:
            start_rev = int(resource_version) + 1
            if not 0 < start_rev < 2**63:  # the store refuses negative revisions, SQLite larger ones
                raise ValueError(resource_version)
        except ValueError:
            yield expired(f"invalid resource version: {resource_version}")
            return
    last_rv = start_rev - 1
    prefix = key_prefix(kind, namespace)
    queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue(maxsize=1000)
    shared = shared_events(objects.store)

    async def pump() -> None:
        try:
            async for ev in objects.store.watch(prefix, prefix_end(prefix), start_rev):
                await queue.put(ev)
            await queue.put(None)
        except Exception as exc:  # whatever it is, the stream ends cleanly rather than mid-chunk
            if not isinstance(exc, StoreError | OSError):
                log.exception("watch of %s failed", prefix)
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
            # Send what is already queued in one chunk: one TLS record instead of one per event.
            batch: list[bytes] = []
            while True:
                last_rv = item.kv.mod_revision
                converted = convert(kind, flt, item, shared)
                if converted is not None:
                    event_type, obj = converted
                    batch.append(
                        shared.line(item, event_type, obj) if render is None else line(event_type, show(obj))
                    )
                if queue.empty() or len(batch) >= 256:
                    break
                nxt = queue.get_nowait()
                if not isinstance(nxt, WatchEvent):
                    queue.put_nowait(nxt)  # an end or error: handled on the next turn of the outer loop
                    break
                item = nxt
            if batch:
                yield b"".join(batch)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StoreError):
            await task
