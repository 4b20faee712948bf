"""A tiny in-memory API server behind ``httpx.MockTransport``, for client logic that needs one.

It serves the collections named at construction with the semantics the informer and the leader elector
rely on: a global revision as resourceVersion, 409 on a stale PUT, 410 for a watch from a compacted
revision, watches that replay history after a revision and then stream live changes until the test ends
them (as a server's ``timeoutSeconds`` would). It is deliberately small; the real server is tested with
the real client in ``tests/integration/client``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

Obj = dict[str, Any]


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


class FakeServer:
    """Objects by collection path and name; :meth:`handler` is an async MockTransport handler."""

    def __init__(self, *collections: str) -> None:
        self.revision = 0
        self.compacted = 0
        self.objects: dict[str, dict[str, Obj]] = {path: {} for path in collections}
        """Objects by collection path (``/api/v1/namespaces/ns/configmaps``) and name."""
        self.history: list[tuple[int, str, str, Obj]] = []
        """(revision, collection, event type, object) of every change."""
        self.watches: list[tuple[str, asyncio.Queue[bytes | None]]] = []
        self.requests: list[httpx.Request] = []
        self.muted = False
        """While True, changes are recorded but not sent to open watches (a network partition)."""
        self.fail_next: list[Exception] = []
        """Exceptions raised (as transport errors) by the next requests, one each."""

    # --- state changes made by tests -------------------------------------------------------------

    def put(self, collection: str, obj: Obj) -> Obj:
        """Create or replace an object without any checks (a write by someone else)."""
        self.revision += 1
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.revision)
        meta.setdefault("uid", f"uid-{meta['name']}-{self.revision}")
        items = self.objects[collection]
        kind = "MODIFIED" if meta["name"] in items else "ADDED"
        items[meta["name"]] = obj
        self._record(collection, kind, obj)
        return obj

    def remove(self, collection: str, name: str) -> None:
        self.revision += 1
        obj = self.objects[collection].pop(name)
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self._record(collection, "DELETED", obj)

    def compact(self) -> None:
        """Forget all history: watches from any earlier revision get 410."""
        self.compacted = self.revision

    def bookmark(self, collection: str, revision: int) -> None:
        """Send a BOOKMARK at ``revision`` to every watch of ``collection``."""
        line = orjson.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(revision)}}})
        self._send(collection, line + b"\n")

    def end_watches(self) -> None:
        """End every open watch stream normally, as the server's timeoutSeconds would."""
        for _, queue in self.watches:
            queue.put_nowait(None)
        self.watches.clear()

    def watch_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.params.get("watch") == "true"]

    def list_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET" and r.url.params.get("watch") != "true"]

    def _record(self, collection: str, kind: str, obj: Obj) -> None:
        self.history.append((self.revision, collection, kind, copy.deepcopy(obj)))
        if not self.muted:
            self._send(collection, orjson.dumps({"type": kind, "object": obj}) + b"\n")

    def _send(self, collection: str, line: bytes) -> None:
        for path, queue in self.watches:
            if path == collection:
                queue.put_nowait(line)

    # --- HTTP ------------------------------------------------------------------------------------

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_next:
            raise self.fail_next.pop(0)
        if request.url.path in self.objects:
            collection, name = request.url.path, ""
        else:
            collection, _, name = request.url.path.rpartition("/")
            if collection not in self.objects:
                return httpx.Response(404, json=_status(404, "NotFound", f"no collection {collection}"))
        items = self.objects[collection]
        if request.method == "GET" and not name:
            if request.url.params.get("watch") == "true":
                return self._watch(collection, int(request.url.params.get("resourceVersion") or 0))
            listed = {
                "kind": "List",
                "metadata": {"resourceVersion": str(self.revision)},
                "items": list(items.values()),
            }
            return httpx.Response(200, json=listed)
        if request.method == "GET":
            if name not in items:
                return httpx.Response(404, json=_status(404, "NotFound", f'"{name}" not found'))
            return httpx.Response(200, json=items[name])
        body: Obj = orjson.loads(request.content)
        if request.method == "POST":
            name = body["metadata"]["name"]
            if name in items:
                return httpx.Response(409, json=_status(409, "AlreadyExists", f'"{name}" already exists'))
            return httpx.Response(201, json=self.put(collection, body))
        if request.method == "PUT":
            if name not in items:
                return httpx.Response(404, json=_status(404, "NotFound", f'"{name}" not found'))
            sent = body["metadata"].get("resourceVersion")
            if sent and sent != items[name]["metadata"]["resourceVersion"]:
                return httpx.Response(409, json=_status(409, "Conflict", "the object has been modified"))
            body["metadata"]["uid"] = items[name]["metadata"]["uid"]
            return httpx.Response(200, json=self.put(collection, body))
        return httpx.Response(405, json=_status(405, "MethodNotAllowed", request.method))

    def _watch(self, collection: str, since: int) -> httpx.Response:
        if since and since < self.compacted:
            gone = _status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
            return httpx.Response(200, content=orjson.dumps({"type": "ERROR", "object": gone}) + b"\n")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        for revision, path, kind, obj in self.history:
            if path == collection and revision > since:
                queue.put_nowait(orjson.dumps({"type": kind, "object": obj}) + b"\n")
        self.watches.append((collection, queue))
        return httpx.Response(200, stream=_QueueStream(queue))


class _QueueStream(httpx.AsyncByteStream):
    """A response body fed line by line from a queue; None ends it."""

    def __init__(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.queue = queue

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            line = await self.queue.get()
            if line is None:
                return
            yield line
