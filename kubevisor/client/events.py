"""Recording core/v1 Events about objects, so ``kubectl describe`` shows what a component did and why.

An Event names the object it is about (``involvedObject``), a CamelCase ``reason``, a human ``message``,
``Normal`` or ``Warning``, and the reporting component. Like client-go's recorder, a repeat of the same
(object, type, reason, message) within this recorder's memory bumps ``count`` and ``lastTimestamp`` of the
existing Event instead of creating a new one, so a reconciler retrying every few seconds leaves one
Event with a growing count rather than hundreds.

Recording is best effort: an Event that cannot be written is logged and dropped, never raised, because
failing a reconcile over its own diagnostics would make things worse. Events of cluster-scoped objects
go to the ``default`` namespace, as in Kubernetes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Literal

from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.requesting import Client

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]


def object_reference(obj: Obj) -> Obj:
    """The ``involvedObject`` reference to ``obj``: apiVersion, kind, namespace, name, uid, version."""
    meta = obj.get("metadata") or {}
    ref: Obj = {"apiVersion": obj.get("apiVersion") or "", "kind": obj.get("kind") or ""}
    for field, key in (
        ("namespace", "namespace"),
        ("name", "name"),
        ("uid", "uid"),
        ("resourceVersion", "resourceVersion"),
    ):
        if meta.get(key):
            ref[field] = meta[key]
    return ref


class EventRecorder:
    """Writes Events on behalf of one ``component`` (e.g. ``garbage-collector``)."""

    def __init__(
        self, client: Client, component: str, *, host: str | None = None, memory: int = 4096
    ) -> None:
        self.component = component
        self.host = host
        self._events = client.resource("v1", "events")
        self._memory = memory
        self._seen: OrderedDict[tuple[str, ...], tuple[str, int]] = OrderedDict()
        self._lock = asyncio.Lock()

    async def normal(self, obj: Obj, reason: str, message: str) -> Obj | None:
        return await self.event(obj, "Normal", reason, message)

    async def warning(self, obj: Obj, reason: str, message: str) -> Obj | None:
        return await self.event(obj, "Warning", reason, message)

    async def event(self, obj: Obj, type: EventType, reason: str, message: str) -> Obj | None:
        """Record (or count again) an Event about ``obj``; returns the Event, or None if it failed."""
        ref = object_reference(obj)
        namespace = str(ref.get("namespace") or "default")
        key = (
            str(ref.get("apiVersion")),
            str(ref.get("kind")),
            namespace,
            str(ref.get("name") or ""),
            str(ref.get("uid") or ""),
            type,
            reason,
            message,
        )
        try:
            async with self._lock:
                return await self._record(key, ref, namespace, type=type, reason=reason, message=message)
        except errors.ClientError as exc:
            log.warning(
                "event %s %s about %s/%s not recorded: %s", type, reason, namespace, ref.get("name"), exc
            )
            return None

    async def _record(
        self, key: tuple[str, ...], ref: Obj, namespace: str, *, type: EventType, reason: str, message: str
    ) -> Obj:
        now = timestamps.format_time(timestamps.now())
        seen = self._seen.get(key)
        if seen is not None:
            name, count = seen
            try:
                event = await self._events.patch(name, {"count": count + 1, "lastTimestamp": now}, namespace)
            except errors.NotFoundError:
                del self._seen[key]
            else:
                self._seen[key] = (name, count + 1)
                self._seen.move_to_end(key)
                return event
        source: Obj = {"component": self.component}
        if self.host:
            source["host"] = self.host
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ref.get('name') or 'event'}.{time.time_ns():x}", "namespace": namespace},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "type": type,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.host or "",
        }
        event = await self._events.create(body, namespace)
        self._seen[key] = (str(event["metadata"]["name"]), 1)
        while len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        return event
