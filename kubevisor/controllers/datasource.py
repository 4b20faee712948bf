"""The DataSource controller (cdi.kubevirt.io/v1beta1): is the golden image a DataSource names usable?

A DataSource is a stable name for "the current image of X" (a claim, a VolumeSnapshot, or another
DataSource); DataVolumes clone from it with ``spec.sourceRef`` and DataImportCrons move it to each new
import. This controller, as CDI's ``datasource-controller``, reports in ``status``:

- ``status.source``: ``spec.source`` as written, or, for a pointer (``spec.source.dataSource``), the
  ``spec.source`` of the DataSource it points at (empty while that cannot be resolved).
- condition ``Ready``, with CDI's reasons:

  ============================  =====================================================================
  ``Ready`` (True)              the claim exists and is populated: its DataVolume, if it has one, has
                                ``Succeeded``; or the snapshot is ``readyToUse``
  ``NoSource``                  ``spec.source`` names nothing
  ``NotFound``                  the claim (and its DataVolume), snapshot or pointed-at DataSource does
                                not exist
  ``<DataVolume phase>``        the claim's DataVolume has not succeeded yet (``ImportInProgress``, ...)
  ``SnapshotNotReady``          the snapshot exists but is not ``readyToUse``
  ``SelfReference``             a pointer to itself
  ``CrossNamespaceReference``   a pointer into another namespace (CDI refuses those)
  ``MaxReferenceDepthReached``  a pointer to a pointer: one level is all CDI follows
  ============================  =====================================================================

:func:`resolve` is the pure part (also used by the DataVolume controller for ``sourceRef``): it follows
a pointer and returns the effective source with namespaces filled in. Owner of DataSource ``status``.
Keys: ``namespace/name`` of the DataSource; a change of a DataVolume, claim or DataSource enqueues every
DataSource naming it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kubevisor.api import cdi, upload
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result

__all__ = [
    "CLONE_WITHOUT_SOURCE",
    "CROSS_NAMESPACE",
    "CROSS_NAMESPACE_CLONE",
    "MAX_DEPTH",
    "NOT_FOUND",
    "NO_SOURCE",
    "READY",
    "SELF_REFERENCE",
    "DataSourceController",
    "Resolution",
    "resolve",
    "resolve_source_ref",
    "set_condition",
]

log = logging.getLogger(__name__)

GROUP_VERSION = f"{cdi.GROUP}/{cdi.VERSION}"
SNAPSHOT_GROUP_VERSION = "snapshot.storage.k8s.io/v1"

READY = "Ready"
NO_SOURCE = "NoSource"
NOT_FOUND = "NotFound"
SNAPSHOT_NOT_READY = "SnapshotNotReady"
SELF_REFERENCE = "SelfReference"
CROSS_NAMESPACE = "CrossNamespaceReference"
MAX_DEPTH = "MaxReferenceDepthReached"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Resolution:
    """Where a DataSource leads."""

    source: Obj = field(default_factory=dict)
    """``{"pvc": {namespace, name}}`` or ``{"snapshot": {namespace, name}}`` with the namespace filled in;
    empty when nothing usable is named (then ``reason`` says why)."""
    mirrored: Obj = field(default_factory=dict)
    """What ``status.source`` shows: the ``spec.source`` that names the claim or snapshot, as written."""
    reason: str | None = None
    """Why there is no source (a Ready reason of the module docstring); None when there is one."""
    message: str = ""
    """The reason in words, naming the objects."""


def resolve(data_source: Obj, lookup: Callable[[str, str], Obj | None]) -> Resolution:
    """Follow ``data_source`` to its claim or snapshot; ``lookup(namespace, name)`` reads a DataSource."""
    meta = data_source.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    source = (data_source.get("spec") or {}).get("source") or {}
    pointer = source.get("dataSource")
    if pointer:
        target_ns = str(pointer.get("namespace") or namespace)
        target_name = str(pointer.get("name") or "")
        where = f"DataSource {target_ns}/{target_name}"
        if (target_ns, target_name) == (namespace, name):
            return Resolution(reason=SELF_REFERENCE, message="DataSource self-reference")
        if target_ns != namespace:
            return Resolution(
                reason=CROSS_NAMESPACE,
                message=f"DataSource cross-namespace reference to {where}: point at one in {namespace}",
            )
        target = lookup(target_ns, target_name)
        if target is None:
            return Resolution(reason=NOT_FOUND, message=f"{where} not found")
        target_source = (target.get("spec") or {}).get("source") or {}
        if target_source.get("dataSource"):
            return Resolution(
                reason=MAX_DEPTH,
                message=f"{where} is itself a pointer; max reference depth ({cdi.MAX_DATA_SOURCE_DEPTH}) "
                "reached: point at a DataSource naming a pvc or snapshot",
            )
        resolved = _direct(target_source, target_ns)
        if resolved is None:
            return Resolution(reason=NO_SOURCE, message=f"{where} has no source")
        return Resolution(source=resolved, mirrored=copy.deepcopy(target_source))
    resolved = _direct(source, namespace)
    if resolved is None:
        return Resolution(reason=NO_SOURCE, message="No source PVC set")
    return Resolution(source=resolved, mirrored=copy.deepcopy(source))


CLONE_WITHOUT_SOURCE = "CloneWithoutSource"
CROSS_NAMESPACE_CLONE = "CrossNamespaceClone"


def resolve_source_ref(dv: Obj, lookup: Callable[[str, str], Obj | None]) -> Resolution | None:
    """Where a DataVolume's ``spec.sourceRef`` leads (None if it has none): the DataSource's claim or
    snapshot, or why not (reason ``CloneWithoutSource`` while the DataSource does not exist, else the
    DataSource's own Ready reason of the module docstring), the message naming the DataSource.

    A DataSource of another namespace is fine: the API server let the DataVolume's creator name it only
    with ``create`` on ``datavolumes/source`` there (:mod:`kubevisor.apiserver.cloneauth`), and it leads
    only to a claim or snapshot of its own namespace (reason ``CrossNamespaceClone`` otherwise)."""
    ref = (dv.get("spec") or {}).get("sourceRef")
    if not ref:
        return None
    own = str((dv.get("metadata") or {}).get("namespace") or "")
    namespace = str(ref.get("namespace") or own)
    name = str(ref.get("name") or "")
    where = f"DataSource {namespace}/{name}"
    data_source = lookup(namespace, name)
    if data_source is None:
        return Resolution(
            reason=CLONE_WITHOUT_SOURCE,
            message=f"The source {where} doesn't exist; create it or fix spec.sourceRef",
        )
    found = resolve(data_source, lookup)
    if found.reason is not None:
        return Resolution(reason=found.reason, message=f"{where}: {found.message}")
    target = next(iter(found.source.values()))
    if target["namespace"] != namespace:
        return Resolution(
            reason=CROSS_NAMESPACE_CLONE,
            message=f"spec.sourceRef: {where} names {target['namespace']}/{target['name']}, outside its own "
            "namespace; a DataSource used by a DataVolume must name a claim or snapshot of its namespace",
        )
    return found


def _direct(source: Obj, namespace: str) -> Obj | None:
    for kind in ("pvc", "snapshot"):
        ref = source.get(kind)
        if ref and ref.get("name"):
            return {kind: {"namespace": str(ref.get("namespace") or namespace), "name": str(ref["name"])}}
    return None


def set_condition(conditions: list[Obj], kind: str, status: str, reason: str, message: str) -> list[Obj]:
    """``conditions`` with ``kind`` set as CDI's ``updateConditionState`` does: times move only on a
    change (transition time only when the status changes)."""
    result = [dict(c) for c in conditions if c.get("type") != kind]
    previous = next((c for c in conditions if c.get("type") == kind), None)
    now = _now()
    same = (status, reason, message)
    if (
        previous is not None
        and (previous.get("status"), previous.get("reason"), previous.get("message")) == same
    ):
        result.append(dict(previous))
    else:
        transitioned = previous is None or previous.get("status") != status
        since = now if transitioned else (previous or {}).get("lastTransitionTime", now)
        result.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": since,
            }
        )
    order = [c.get("type") for c in conditions]
    result.sort(key=lambda c: order.index(c.get("type")) if c.get("type") in order else len(order))
    return result


class DataSourceController(Controller):
    """Reports whether each DataSource's claim or snapshot is ready (module docstring)."""

    name = "datasource"
    concurrency = 2

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.sources: ResourceClient = client.resource(GROUP_VERSION, "datasources")
        self.dvs: ResourceClient = client.resource(GROUP_VERSION, "datavolumes")
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.snapshots: ResourceClient | None = None
        if client.registry.get("snapshot.storage.k8s.io", "v1", "volumesnapshots") is not None:
            self.snapshots = client.resource(SNAPSHOT_GROUP_VERSION, "volumesnapshots")
        self._sources: Informer | None = None
        self._dvs: Informer | None = None
        self._claims: Informer | None = None
        self._snapshots: Informer | None = None

    def setup(self) -> None:
        self._sources = self.watch(self.sources, keys=self._source_keys)
        self._dvs = self.watch(self.dvs, keys=lambda o: self._naming(o, "pvc"))
        self._claims = self.watch(self.pvcs, keys=lambda o: self._naming(o, "pvc"))
        self._snapshots = None
        if self.snapshots is not None:
            self._snapshots = self.watch(self.snapshots, keys=lambda o: self._naming(o, "snapshot"))

    def _lookup(self, namespace: str, name: str) -> Obj | None:
        assert self._sources is not None
        return self._sources.get(f"{namespace}/{name}")

    def _source_keys(self, ds: Obj) -> list[str]:
        """The DataSource itself and the pointers to it."""
        meta = ds.get("metadata") or {}
        keys = [f"{meta.get('namespace')}/{meta.get('name')}"]
        if self._sources is not None:
            for other in self._sources.list():
                pointer = ((other.get("spec") or {}).get("source") or {}).get("dataSource") or {}
                other_meta = other.get("metadata") or {}
                target_ns = pointer.get("namespace") or other_meta.get("namespace")
                if pointer and (target_ns, pointer.get("name")) == (meta.get("namespace"), meta.get("name")):
                    keys.append(f"{other_meta.get('namespace')}/{other_meta.get('name')}")
        return keys

    def _naming(self, obj: Obj, kind: str) -> list[str]:
        """Every DataSource whose resolved ``kind`` (pvc or snapshot) is ``obj``."""
        if self._sources is None:
            return []
        meta = obj.get("metadata") or {}
        wanted = {"namespace": meta.get("namespace"), "name": meta.get("name")}
        keys = []
        for ds in self._sources.list():
            if resolve(ds, self._lookup).source.get(kind) == wanted:
                keys.append(f"{ds['metadata']['namespace']}/{ds['metadata']['name']}")
        return keys

    async def reconcile(self, key: str) -> Result | None:
        assert self._sources is not None
        ds = self._sources.get(key)
        if ds is None or ds["metadata"].get("deletionTimestamp"):
            return None
        resolution = resolve(ds, self._lookup)
        if resolution.reason is not None:
            ready = ("False", resolution.reason, resolution.message)
        elif "pvc" in resolution.source:
            ready = self._claim_ready(resolution.source["pvc"])
        else:
            ready = self._snapshot_ready(resolution.source["snapshot"])
        await self._write_status(ds, resolution.mirrored, ready)
        return None

    def _claim_ready(self, ref: Obj) -> tuple[str, str, str]:
        assert self._dvs is not None and self._claims is not None
        key = f"{ref['namespace']}/{ref['name']}"
        dv = self._dvs.get(key)
        if dv is not None:
            phase = str((dv.get("status") or {}).get("phase") or "Pending")
            if phase == "Succeeded":
                return ("True", READY, "DataSource is ready to be consumed")
            return ("False", phase, f"Import DataVolume phase {phase}")
        pvc = self._claims.get(key)
        if pvc is None:
            return ("False", NOT_FOUND, f"PVC {key} not found")
        annotations = pvc["metadata"].get("annotations") or {}
        filling = cdi.IMPORT_SOURCE_ANNOTATION in annotations or upload.UPLOAD_TARGET in annotations
        filled = annotations.get(cdi.POD_PHASE_ANNOTATION)
        if filling and filled != "Succeeded":
            return (
                "False",
                "ImportInProgress",
                f"PVC {key} is still being populated ({filled or 'Pending'})",
            )
        return ("True", READY, "DataSource is ready to be consumed")

    def _snapshot_ready(self, ref: Obj) -> tuple[str, str, str]:
        key = f"{ref['namespace']}/{ref['name']}"
        snapshot = self._snapshots.get(key) if self._snapshots is not None else None
        if snapshot is None:
            return ("False", NOT_FOUND, f"Snapshot {key} not found")
        if (snapshot.get("status") or {}).get("readyToUse") is True:
            return ("True", READY, "DataSource is ready to be consumed")
        return ("False", SNAPSHOT_NOT_READY, "Snapshot phase is not ready")

    async def _write_status(self, ds: Obj, mirrored: Obj, ready: tuple[str, str, str]) -> None:
        old = ds.get("status") or {}
        conditions = list(old.get("conditions") or [])
        if old.get("source") != mirrored:
            conditions = []  # a new source: its readiness starts afresh (as CDI resets them)
        status: Obj = {"source": mirrored, "conditions": set_condition(conditions, "Ready", *ready)}
        if status == old:
            return
        try:
            await self.sources.update_status(dict(ds, status=status))
        except errors.NotFoundError:
            return
