"""The garbage collector: deletes dependents whose owners are gone, and carries out the deletion
propagation policies the apiserver only records (reference §1.11).

The apiserver marks a Foreground delete with the ``foregroundDeletion`` finalizer and an Orphan delete
with the ``orphan`` finalizer; a Background delete simply removes the owner. Everything else is done here,
as kube-controller-manager's garbage collector does:

- **Background** (and any owner that vanished): a dependent all of whose ``ownerReferences`` point at
  owners that no longer exist is deleted. An owner "exists" only if an object of that kind and name exists
  *with the same uid*: a re-created namesake is not the owner.
- **Foreground**: the dependents of an owner with ``deletionTimestamp`` and ``foregroundDeletion`` are
  deleted (themselves in the foreground, so the wait cascades down the tree); once no dependent with
  ``blockOwnerDeletion: true`` remains, the finalizer is removed and the apiserver removes the owner.
- **Orphan**: the references to an owner with the ``orphan`` finalizer are removed from its dependents,
  then the finalizer is removed.
- A dependent with another owner that still exists is never deleted; references to owners that are gone or
  being deleted in the foreground are removed from it instead.

Cost: one informer per stored kind in the registry (every kind, so no owner or dependent can hide),
caching metadata only, except for a kind whose full objects the process caches anyway: when the
controllers share their informers (:class:`~kubevisor.client.informers.SharedInformers`) and another
controller, started before this one, already watches the kind whole, the collector uses that informer
instead of a second list+watch (it reads only ``metadata`` either way, and never changes a cached object).
An index maps each owner uid to its dependents so an owner's change reaches them without a scan.
Decisions to delete are checked against the live object (GET, uid compared) rather than the cache,
because a cache that lags behind (an owner created a moment ago) must never cause a deletion; every write
carries a uid precondition or the resourceVersion read, and a 409 requeues.

Keys are ``<group>/<version>/<plural>#<namespace>/<name>``, one per object of any kind.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Literal

from kubevisor.api.registry import Kind, Obj, Registry
from kubevisor.client import errors
from kubevisor.client.informers import Informer, object_key, split_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result

log = logging.getLogger(__name__)

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"

OwnerState = Literal["solid", "waiting", "dangling", "unknown"]
"""solid: exists and is not being deleted in the foreground; waiting: being deleted in the foreground;
dangling: gone (or replaced by a namesake with another uid); unknown: cannot be resolved (not deleted)."""


def kind_id(kind: Kind) -> str:
    return f"{kind.group}/{kind.version}/{kind.plural}"


def collectable(kind: Kind) -> bool:
    """Stored kinds that can be listed and watched: every one of them may own or be owned."""
    return kind.stored and "list" in kind.verbs and "watch" in kind.verbs


def metadata_only(obj: Obj) -> Obj:
    """What the collector caches of an object: its identity and metadata, not its content."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    meta.pop("annotations", None)
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta}


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _finalizers(obj: Obj) -> list[str]:
    return list((obj.get("metadata") or {}).get("finalizers") or [])


def _deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _refs(obj: Obj) -> list[dict[str, Any]]:
    return list((obj.get("metadata") or {}).get("ownerReferences") or [])


@dataclass
class _Watched:
    kind: Kind
    resources: ResourceClient
    informer: Informer


class GarbageCollector(Controller):
    """Deletes orphaned dependents and finishes Foreground and Orphan deletions, for every stored kind."""

    name = "garbage-collector"
    concurrency = 4

    def __init__(
        self,
        client: Client,
        registry: Registry | None = None,
        *,
        concurrency: int | None = None,
        recheck_interval: float = 10.0,
    ) -> None:
        super().__init__(client, concurrency=concurrency)
        self.registry = registry or client.registry
        self.recheck_interval = recheck_interval
        """Safety net: how often an owner waiting for its dependents is looked at without any event."""
        self._kinds: dict[str, _Watched] = {}
        self._items_by_uid: dict[str, str] = {}
        self._dependents: dict[str, set[str]] = {}
        self._owners_of: dict[str, set[str]] = {}

    def setup(self) -> None:
        self._kinds = {}
        self._items_by_uid = {}
        self._dependents = {}
        self._owners_of = {}
        for kind in self.registry.kinds():
            if not collectable(kind):
                continue
            kid = kind_id(kind)
            resources = self.client.resource(kind)
            shared = self.shared_informers
            cached_whole = shared is not None and shared.running(resources) is not None
            informer = self.watch(
                resources,
                keys=None,
                transform=None if cached_whole else metadata_only,
                on_add=functools.partial(self._changed, kid),
                on_update=functools.partial(self._updated, kid),
                on_delete=functools.partial(self._deleted, kid),
            )
            self._kinds[kid] = _Watched(kind, resources, informer)

    # --- indexing (handlers: index and enqueue, nothing else) ----------------------------------

    def _changed(self, kid: str, obj: Obj) -> None:
        item = f"{kid}#{object_key(obj)}"
        uid = _uid(obj)
        if uid:
            self._items_by_uid[uid] = item
        owners = {str(ref["uid"]) for ref in _refs(obj) if ref.get("uid")}
        previous = self._owners_of.get(item, set())
        for gone in previous - owners:
            self._unindex(gone, item)
        for new in owners - previous:
            self._dependents.setdefault(new, set()).add(item)
        if owners:
            self._owners_of[item] = owners
            self.queue.add(item)
        else:
            self._owners_of.pop(item, None)
        if _deleting(obj) and {FOREGROUND, ORPHAN} & set(_finalizers(obj)):
            self.queue.add(item)

    def _updated(self, kid: str, old: Obj, new: Obj) -> None:
        self._changed(kid, new)

    def _deleted(self, kid: str, obj: Obj) -> None:
        item = f"{kid}#{object_key(obj)}"
        uid = _uid(obj)
        if uid and self._items_by_uid.get(uid) == item:
            del self._items_by_uid[uid]
        for owner_uid in self._owners_of.pop(item, set()):
            self._unindex(owner_uid, item)
            owner_item = self._items_by_uid.get(owner_uid)
            if owner_item is not None:
                self.queue.add(owner_item)  # it may be waiting for this dependent to go
        for dependent in self._dependents.get(uid, ()):
            self.queue.add(dependent)  # their owner is gone

    def _unindex(self, owner_uid: str, item: str) -> None:
        dependents = self._dependents.get(owner_uid)
        if dependents is not None:
            dependents.discard(item)
            if not dependents:
                del self._dependents[owner_uid]

    def dependents_of(self, uid: str) -> list[tuple[_Watched, Obj]]:
        """Cached dependents that reference the owner ``uid``."""
        found = []
        for item in sorted(self._dependents.get(uid, ())):
            located = self._locate(item)
            if located is not None and any(ref.get("uid") == uid for ref in _refs(located[1])):
                found.append(located)
        return found

    def _locate(self, item: str) -> tuple[_Watched, Obj] | None:
        kid, _, key = item.partition("#")
        watched = self._kinds.get(kid)
        if watched is None:
            return None
        obj = watched.informer.get(key)
        return None if obj is None else (watched, obj)

    # --- reconciling ---------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        located = self._locate(key)
        if located is None:
            return None
        watched, obj = located
        if _deleting(obj):
            finalizers = _finalizers(obj)
            if ORPHAN in finalizers:
                await self._orphan(watched, obj)
                return None
            if FOREGROUND in finalizers:
                return await self._delete_dependents_first(watched, obj)
            return None  # being deleted for other reasons: its owners no longer matter
        if _refs(obj):
            await self._collect_if_orphaned(watched, obj)
        return None

    async def _orphan(self, watched: _Watched, owner: Obj) -> None:
        uid = _uid(owner)
        for dep_watched, dependent in self.dependents_of(uid):
            await self._remove_refs(dep_watched, dependent, {uid})
        await self._remove_finalizer(watched, owner, ORPHAN)

    async def _delete_dependents_first(self, watched: _Watched, owner: Obj) -> Result | None:
        uid = _uid(owner)
        blocking = 0
        for dep_watched, dependent in self.dependents_of(uid):
            ref = next(ref for ref in _refs(dependent) if ref.get("uid") == uid)
            if ref.get("blockOwnerDeletion"):
                blocking += 1
            if not _deleting(dependent):
                # Its own reconcile sees this owner waiting, and deletes it (or drops the reference).
                self.queue.add(f"{kind_id(dep_watched.kind)}#{object_key(dependent)}")
        if blocking:
            return Result(requeue_after=self.recheck_interval)
        await self._remove_finalizer(watched, owner, FOREGROUND)
        return None

    async def _collect_if_orphaned(self, watched: _Watched, dependent: Obj) -> None:
        states: dict[str, OwnerState] = {}
        for ref in _refs(dependent):
            states[str(ref.get("uid"))] = await self._owner_state(dependent, ref)
        values = set(states.values())
        if "solid" in values or "unknown" in values:
            stale = {uid for uid, state in states.items() if state in ("dangling", "waiting")}
            if stale:
                await self._remove_refs(watched, dependent, stale)
            return
        policy: Literal["Foreground", "Background"] = "Foreground" if "waiting" in values else "Background"
        namespace, name = split_key(object_key(dependent))
        log.info(
            "%r: deleting %s %s (owners gone or going: %s), %s",
            self,
            watched.kind.kind,
            object_key(dependent),
            ", ".join(sorted(states)),
            policy,
        )
        try:
            await watched.resources.delete(
                name, namespace, propagation_policy=policy, preconditions={"uid": _uid(dependent)}
            )
        except errors.NotFoundError:
            pass
        except errors.ConflictError:
            pass  # the uid precondition failed: a namesake, not this dependent; its own events follow

    async def _owner_state(self, dependent: Obj, ref: dict[str, Any]) -> OwnerState:
        kind = self._resolve(str(ref.get("apiVersion") or ""), str(ref.get("kind") or ""))
        name = str(ref.get("name") or "")
        if kind is None or not name:
            log.warning(
                "%r: %s has an owner reference to unknown kind %s %s; leaving it alone",
                self,
                object_key(dependent),
                ref.get("apiVersion"),
                ref.get("kind"),
            )
            return "unknown"
        namespace = (dependent.get("metadata") or {}).get("namespace") if kind.namespaced else None
        if kind.namespaced and not namespace:
            log.warning(
                "%r: cluster-scoped %s names a namespaced owner %s; leaving it alone",
                self,
                object_key(dependent),
                kind.kind,
            )
            return "unknown"
        watched = self._kinds.get(kind_id(kind))
        if watched is not None:
            cached = watched.informer.get(f"{namespace}/{name}" if namespace else name)
            if cached is not None and _uid(cached) == ref.get("uid"):
                return "waiting" if _deleting(cached) and FOREGROUND in _finalizers(cached) else "solid"
        # The cache says gone, replaced or going: ask the server before acting on it.
        resources = watched.resources if watched is not None else self.client.resource(kind)
        try:
            live = await resources.get(name, namespace)
        except errors.NotFoundError:
            return "dangling"
        if _uid(live) != ref.get("uid"):
            return "dangling"
        return "waiting" if _deleting(live) and FOREGROUND in _finalizers(live) else "solid"

    def _resolve(self, api_version: str, kind_name: str) -> Kind | None:
        kind = self.registry.by_kind(api_version, kind_name)
        if kind is not None:
            return kind
        group = api_version.rpartition("/")[0]
        for candidate in self.registry.kinds():  # another served version of the same group and kind
            if candidate.group == group and candidate.kind == kind_name and collectable(candidate):
                return candidate
        return None

    async def _remove_refs(self, watched: _Watched, dependent: Obj, uids: set[str]) -> None:
        """Drop owner references to ``uids`` from the live dependent (409 if it changed meanwhile)."""
        namespace, name = split_key(object_key(dependent))
        try:
            live = await watched.resources.get(name, namespace)
        except errors.NotFoundError:
            return
        if _uid(live) != _uid(dependent):
            return
        refs = _refs(live)
        kept = [ref for ref in refs if ref.get("uid") not in uids]
        if len(kept) == len(refs):
            return
        meta = live["metadata"]
        if kept:
            meta["ownerReferences"] = kept
        else:
            meta.pop("ownerReferences", None)
        try:
            await watched.resources.update(live)
        except errors.NotFoundError:
            return

    async def _remove_finalizer(self, watched: _Watched, obj: Obj, finalizer: str) -> None:
        """Drop ``finalizer`` from the live object (409 if it changed meanwhile)."""
        namespace, name = split_key(object_key(obj))
        try:
            live = await watched.resources.get(name, namespace)
        except errors.NotFoundError:
            return
        if _uid(live) != _uid(obj) or finalizer not in _finalizers(live):
            return
        live["metadata"]["finalizers"] = [f for f in _finalizers(live) if f != finalizer]
        log.info("%r: %s %s: removing finalizer %s", self, watched.kind.kind, object_key(obj), finalizer)
        try:
            await watched.resources.update(live)
        except errors.NotFoundError:
            return
