"""A local, eventually consistent copy of one kind: list once, then watch (client-go's informer).

Why: a reconciler re-reads the object it reconciles on every pass (level-based), and reading from a
local cache costs nothing. The informer keeps that cache and tells handlers what changed.

Invariants:

- The cache is keyed ``namespace/name`` (``name`` for cluster-scoped objects), see :func:`object_key`.
  Cached objects are shared: treat them as read-only and copy before changing one.
- The informer lists, then watches from the list's resourceVersion; when a watch stream ends normally
  (the server's ``timeoutSeconds``) or breaks, it re-watches from the last resourceVersion it saw,
  BOOKMARKs included. Only a ``410 Gone`` (history compacted) makes it list again; the new list is
  compared with the cache and the differences are delivered as synthetic add/update/delete calls, so
  handlers never miss an object that appeared or vanished during the gap.
- Connection and server errors are retried with exponential backoff (with jitter), never given up.
- Handlers are plain functions called in the informer's task, in event order; they must return quickly
  (enqueue a key, set an event). An exception in a handler is logged and does not stop the informer.
  A handler registered after the first list receives an add for every cached object.
- :meth:`Informer.stop` cancels and awaits the informer's one task; nothing is left running.

Sharing (:class:`SharedInformers`, client-go's SharedInformerFactory): the controllers of one process
(``kubevisor up`` runs about twenty) would otherwise each list and watch the same kinds, so one VMI
event was decoded, transformed and cached once per controller, each over its own watch connection. A
factory hands every consumer asking for the same (client, resource, namespace, label selector, field
selector, transform) the same running informer, counted by reference and stopped when the last consumer
releases it. The rule that makes this safe: **an object from an informer (handler argument,
:meth:`Informer.get`, :meth:`Informer.list`) belongs to every consumer of that informer. Never change it
in place**, not even a nested list or dict (``setdefault``, ``append``, item assignment); deep-copy it
first (``copy.deepcopy``) or build a new object. A change in place would be seen by every other
controller's cache reads and silently diverge from the server.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.requesting import ResourceClient

log = logging.getLogger(__name__)

AddHandler = Callable[[Obj], None]
UpdateHandler = Callable[[Obj, Obj], None]
DeleteHandler = Callable[[Obj], None]


def object_key(obj: Obj) -> str:
    """``namespace/name``, or ``name`` for an object without a namespace."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    name = meta.get("name") or ""
    return f"{namespace}/{name}" if namespace else str(name)


def split_key(key: str) -> tuple[str | None, str]:
    """The inverse of :func:`object_key`: ``(namespace or None, name)``."""
    namespace, sep, name = key.partition("/")
    return (namespace, name) if sep else (None, key)


def resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


@dataclass(frozen=True)
class Handlers:
    """One set of callbacks; any may be None."""

    on_add: AddHandler | None = None
    on_update: UpdateHandler | None = None
    on_delete: DeleteHandler | None = None


class Informer:
    """List+watch cache of one resource, optionally narrowed by namespace and selectors.

    ``async with Informer(client.resource(kind)) as inf: await inf.wait_synced(); inf.get("ns/name")``
    """

    def __init__(
        self,
        resources: ResourceClient,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        on_add: AddHandler | None = None,
        on_update: UpdateHandler | None = None,
        on_delete: DeleteHandler | None = None,
        transform: Callable[[Obj], Obj] | None = None,
        watch_timeout_seconds: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        page_size: int = 500,
    ) -> None:
        self.resources = resources
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout_seconds = watch_timeout_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.page_size = page_size
        self.transform = transform
        """Applied to every object before it is cached and handed to handlers (e.g. keep only metadata)."""
        self._cache: dict[str, Obj] = {}
        self._handlers: list[Handlers] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resource_version = ""
        self.lists = 0
        """How many times the informer listed (1 + one per 410 Gone); useful in tests and metrics."""
        self.watches = 0
        """How many watch requests the informer sent (one more after each ended or broken stream)."""
        if on_add or on_update or on_delete:
            self.add_handlers(on_add=on_add, on_update=on_update, on_delete=on_delete)

    def __repr__(self) -> str:
        return f"Informer({self.resources.api_version}/{self.resources.plural}, namespace={self.namespace})"

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Start listing and watching in a background task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"informer-{self.resources.plural}")

    async def stop(self) -> None:
        """Stop watching and wait for the informer's task to end.

        The cache and the last resourceVersion are kept: :meth:`start` resumes the watch from there (and
        re-lists, reporting the differences, if the server no longer has that version).
        """
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait, unlike awaiting the task, raises CancelledError only if *we* are cancelled; this
        # also works inside the cleanup of an already cancelled task.
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("%r ended with an error", self, exc_info=task.exception())

    @property
    def has_synced(self) -> bool:
        """True once the first list has been delivered to the cache and the handlers."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        """Wait until the first list is in the cache (bound it with ``asyncio.timeout``).

        Raises the informer's own error if its task died before syncing.
        """
        if self._synced.is_set():
            return
        task = self._task
        if task is None:
            raise RuntimeError(f"{self!r}: wait_synced before start")
        synced = asyncio.create_task(self._synced.wait())
        try:
            await asyncio.wait({synced, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            synced.cancel()
            await asyncio.gather(synced, return_exceptions=True)
        if not self._synced.is_set():
            if not task.cancelled():
                task.result()  # the informer died: raise its error
            raise RuntimeError(f"{self!r} stopped before it synced")

    # --- cache ---------------------------------------------------------------------------------

    def get(self, key: str) -> Obj | None:
        """The cached object ``namespace/name`` (or ``name``), or None. Do not modify it."""
        return self._cache.get(key)

    def list(self) -> list[Obj]:
        """Every cached object. Do not modify them."""
        return list(self._cache.values())

    def keys(self) -> builtins.list[str]:
        return list(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def last_resource_version(self) -> str:
        """The resourceVersion the next watch would start from."""
        return self._resource_version

    # --- handlers ------------------------------------------------------------------------------

    def add_handlers(
        self,
        on_add: AddHandler | None = None,
        on_update: UpdateHandler | None = None,
        on_delete: DeleteHandler | None = None,
    ) -> Handlers:
        """Register callbacks; if the cache is already synced, ``on_add`` is called for each object.

        Returns the registration, for :meth:`remove_handlers`.
        """
        handlers = Handlers(on_add, on_update, on_delete)
        # Copy on write: an emit loop running over the old list is not disturbed.
        self._handlers = [*self._handlers, handlers]
        if self._synced.is_set() and on_add is not None:
            for obj in list(self._cache.values()):
                self._call(on_add, obj)
        return handlers

    def remove_handlers(self, handlers: Handlers) -> None:
        """Unregister what :meth:`add_handlers` returned; no more calls reach it (idempotent)."""
        self._handlers = [h for h in self._handlers if h is not handlers]

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%r: event handler %r failed", self, fn)

    def _emit_add(self, obj: Obj) -> None:
        for h in self._handlers:
            if h.on_add is not None:
                self._call(h.on_add, obj)

    def _emit_update(self, old: Obj, new: Obj) -> None:
        for h in self._handlers:
            if h.on_update is not None:
                self._call(h.on_update, old, new)

    def _emit_delete(self, obj: Obj) -> None:
        for h in self._handlers:
            if h.on_delete is not None:
                self._call(h.on_delete, obj)

    # --- list and watch ------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.backoff_initial
        # A restarted informer resumes from its last version; the server answers 410 if that is too old.
        need_list = not self._synced.is_set()
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                delay = self.backoff_initial
            except errors.GoneError:
                log.info("%r: resourceVersion %s expired; listing again", self, self._resource_version)
                need_list = True
            except Exception as exc:
                # Includes NotFound/Forbidden for a kind the server lost, and bugs: keep trying, slowly.
                if isinstance(exc, errors.ClientError | OSError):
                    log.warning("%r: %s; retrying in %.1fs", self, exc, delay)
                else:
                    log.exception("%r: unexpected error; retrying in %.1fs", self, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.backoff_max)

    async def _list(self) -> None:
        result = await self.resources.list_all(
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            page_size=self.page_size,
        )
        self.lists += 1
        items = result.items if self.transform is None else [self.transform(obj) for obj in result.items]
        self._replace(items)
        self._resource_version = result.resource_version
        self._synced.set()

    def _replace(self, items: Iterable[Obj]) -> None:
        """Make the cache equal to ``items``, telling the handlers what changed."""
        fresh = {object_key(obj): obj for obj in items}
        old_cache = self._cache
        self._cache = dict(fresh)
        for key, obj in fresh.items():
            old = old_cache.get(key)
            if old is None:
                self._emit_add(obj)
            elif resource_version(old) != resource_version(obj):
                self._emit_update(old, obj)
        for key, old in old_cache.items():
            if key not in fresh:
                self._emit_delete(old)

    async def _watch(self) -> None:
        # Jitter the server-side timeout so that many informers do not re-watch in lockstep.
        timeout = (
            int(self.watch_timeout_seconds * (1 + random.random())) if self.watch_timeout_seconds else None
        )
        self.watches += 1
        async with self.resources.watch(
            self.namespace,
            resource_version=self._resource_version or None,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=timeout,
            allow_bookmarks=True,
        ) as events:
            async for event in events:
                rv = event.resource_version
                if event.type == "BOOKMARK":
                    if rv:
                        self._resource_version = rv
                    continue
                obj = event.object if self.transform is None else self.transform(event.object)
                key = object_key(obj)
                if event.type == "DELETED":
                    self._cache.pop(key, None)
                    self._emit_delete(obj)
                else:  # ADDED or MODIFIED; trust the cache over the event type for which handler runs
                    old = self._cache.get(key)
                    self._cache[key] = obj
                    if old is None:
                        self._emit_add(obj)
                    else:
                        self._emit_update(old, obj)
                if rv:
                    self._resource_version = rv


InformerKey = tuple[object, str, str, str | None, str | None, str | None, object]
"""(client, apiVersion, plural, namespace, label selector, field selector, transform): what makes two
informers interchangeable. The client and the transform compare by identity."""


class SharedInformers:
    """One running :class:`Informer` per key, shared by every consumer (client-go's SharedInformerFactory).

    ``inf = shared.informer(client.resource(kind)); h = inf.add_handlers(...)`` ... then
    ``inf.remove_handlers(h); await shared.release(inf)``. Each :meth:`informer` call takes one reference;
    the informer starts on the first and stops on the :meth:`release` of the last, so the next consumer
    gets a fresh informer that lists again (a controller restarted after losing leadership resynchronises
    fully). A consumer that arrives after the informer synced gets an add for every cached object when it
    registers its handlers (:meth:`Informer.add_handlers`), so it sees the same as if it had been first.

    Only informers of the same :class:`~kubevisor.client.requesting.Client` are shared (the key holds the
    client itself), and a ``transform`` is shared only when it is the same function object: pass a
    module-level function, not a fresh lambda, to share a transformed cache. Cached objects are read-only
    for everyone (module docstring). ``informer_options`` (backoff, watch timeout, page size) apply to every
    informer this factory creates.
    """

    def __init__(self, **informer_options: Any) -> None:
        self.informer_options = informer_options
        self._by_key: dict[InformerKey, Informer] = {}
        self._keys: dict[Informer, InformerKey] = {}
        self._users: dict[Informer, int] = {}

    def __repr__(self) -> str:
        return f"SharedInformers({len(self._by_key)} informers)"

    def __len__(self) -> int:
        """How many informers run now."""
        return len(self._by_key)

    def informer(
        self,
        resources: ResourceClient,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Callable[[Obj], Obj] | None = None,
    ) -> Informer:
        """The started informer for this key, created on first use; takes one reference (:meth:`release`)."""
        if not resources.namespaced:
            namespace = None  # a cluster-scoped list ignores it: do not split the cache over it
        key = self._key(resources, namespace, label_selector, field_selector, transform)
        informer = self._by_key.get(key)
        if informer is None:
            informer = Informer(
                resources,
                namespace,
                label_selector,
                field_selector,
                transform=transform,
                **self.informer_options,
            )
            self._by_key[key] = informer
            self._keys[informer] = key
            self._users[informer] = 0
            informer.start()
        self._users[informer] += 1
        return informer

    def running(
        self,
        resources: ResourceClient,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Callable[[Obj], Obj] | None = None,
    ) -> Informer | None:
        """The informer for this key if one runs now, without taking a reference (None if not).

        For a consumer that can use either of two caches (the garbage collector: metadata only, or the
        full objects if some other controller keeps them anyway).
        """
        if not resources.namespaced:
            namespace = None
        return self._by_key.get(self._key(resources, namespace, label_selector, field_selector, transform))

    @staticmethod
    def _key(
        resources: ResourceClient,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
        transform: Callable[[Obj], Obj] | None,
    ) -> InformerKey:
        return (
            resources.client,
            resources.api_version,
            resources.plural,
            namespace,
            label_selector or None,
            field_selector or None,
            transform,
        )

    def users(self, informer: Informer) -> int:
        """How many references to ``informer`` are held (0 once it was stopped)."""
        return self._users.get(informer, 0)

    async def release(self, informer: Informer) -> None:
        """Give back one reference; the last one stops the informer. Releasing a stopped one is a no-op."""
        users = self._users.get(informer)
        if users is None:
            return
        if users > 1:
            self._users[informer] = users - 1
            return
        # Forget it before awaiting, so a consumer arriving meanwhile gets a new informer.
        del self._users[informer]
        del self._by_key[self._keys.pop(informer)]
        await informer.stop()

    async def aclose(self) -> None:
        """Stop every informer, whoever still holds it. The factory may be used again afterwards."""
        informers = list(self._users)
        self._by_key.clear()
        self._keys.clear()
        self._users.clear()
        for informer in informers:
            await informer.stop()
