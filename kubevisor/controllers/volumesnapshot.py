"""The volume snapshot controller (snapshot.storage.k8s.io/v1): the external-snapshotter's part.

Kubernetes splits snapshots between the common snapshot controller (binds a VolumeSnapshot to a
VolumeSnapshotContent, creates the content of a dynamically taken snapshot, deletes it) and the CSI
driver's sidecar (takes the data, reports on the content). kubevisor splits them the same way: this
controller decides, the node agent holding the volume (:mod:`kubevisor.agent.volumesnapshots`) copies, as
for VM snapshots (:mod:`kubevisor.controllers.snapshot`).

A snapshot of a claim (``spec.source.persistentVolumeClaimName``):

1. The class: ``spec.volumeSnapshotClassName``, else the class annotated
   ``snapshot.storage.kubernetes.io/is-default-class: "true"`` whose driver is the claim's (its volume's
   ``pv.kubernetes.io/provisioned-by``, else its StorageClass's provisioner). Only the local volumes'
   driver ``kubevisor.io/local`` takes snapshots; NFS and other volumes get ``status.error`` saying so.
2. The claim must be bound; until it is (or while it does not exist) ``status.error`` says why and the
   controller looks again every few seconds, as the external-snapshotter retries.
3. The content ``snapcontent-<snapshot uid>``: ``volumeSnapshotRef`` (with the snapshot's uid),
   ``source.volumeHandle`` = the PersistentVolume's name, the class's driver and deletion policy, the
   claim's volume mode, labelled :data:`~kubevisor.api.volumesnapshot.NODE_LABEL` = the volume's node (the
   agent there takes the data), with the agent's finalizer and the source claim's name. The snapshot gets
   ``status.boundVolumeSnapshotContentName`` and the finalizer
   :data:`~kubevisor.api.volumesnapshot.BOUND_FINALIZER`.
4. The content's status becomes the snapshot's: ``readyToUse``, ``creationTime`` (nanoseconds ->
   RFC 3339), ``restoreSize`` (bytes -> a quantity), ``error``.

A pre-provisioned snapshot (``spec.source.volumeSnapshotContentName``) is bound to that content when the
content's ``volumeSnapshotRef`` names it, and shows its status; nothing is copied (typically a content
kept with ``Retain`` from an earlier snapshot, its ``volumeSnapshotRef`` pointed at the new snapshot).

Deleting a snapshot: while a DataVolume restores from it, nothing happens (the external-snapshotter's
``volumesnapshot-as-source-protection``); then, with ``deletionPolicy: Delete`` its content is deleted
(the agent frees the data, then removes its finalizer), and once the content is gone the snapshot's
finalizer is removed; with ``Retain`` the content stays (its data kept on the node) and the snapshot goes
at once.

Owner of VolumeSnapshot ``status`` and of the contents it creates (their spec, labels and annotations).
Keys: ``namespace/name`` of the VolumeSnapshot.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from datetime import UTC, datetime
from typing import Any

from kubevisor.api import cdi, storage
from kubevisor.api import volumesnapshot as api
from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.provisioning import node_of_volume
from kubevisor.controllers.reconciling import Controller, Result

__all__ = ["VolumeSnapshotController", "format_bytes"]

log = logging.getLogger(__name__)

RETRY = 5.0
"""Seconds between looks at a snapshot that waits for its claim or class."""
_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))


def format_bytes(size: int) -> str:
    """A byte count as Kubernetes prints a binary quantity: ``16777216`` -> ``16Mi``, ``1000`` -> ``1000``."""
    for suffix, unit in _BINARY:
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _now() -> str:
    return timestamps.format_time(timestamps.now())


def _creation_time(nanoseconds: Any) -> str | None:
    if not isinstance(nanoseconds, int) or isinstance(nanoseconds, bool):
        return None
    return timestamps.format_time(datetime.fromtimestamp(nanoseconds / 1e9, UTC))


class VolumeSnapshotController(Controller):
    """Creates the content of each snapshot of a claim, reports its status, deletes it (module docstring)."""

    name = "volumesnapshot"

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.snapshots: ResourceClient = client.resource(api.API_VERSION, "volumesnapshots")
        self.contents: ResourceClient = client.resource(api.API_VERSION, "volumesnapshotcontents")
        self.classes: ResourceClient = client.resource(api.API_VERSION, "volumesnapshotclasses")
        self.recorder = EventRecorder(client, "snapshot-controller")
        self._snapshots: Informer | None = None
        self._contents: Informer | None = None
        self._classes: Informer | None = None
        self._claims: Informer | None = None
        self._volumes: Informer | None = None
        self._storage_classes: Informer | None = None

    def setup(self) -> None:
        self._snapshots = self.watch(self.snapshots)
        self._contents = self.watch(self.contents, keys=self._content_keys)
        self._classes = self.watch(self.classes, keys=lambda _: self._unbound())
        self._claims = self.watch(self.client.resource("v1", "persistentvolumeclaims"), keys=self._claim_keys)
        self._volumes = self.watch(self.client.resource("v1", "persistentvolumes"), keys=lambda _: [])
        self._storage_classes = self.watch(
            self.client.resource("storage.k8s.io/v1", "storageclasses"), keys=lambda _: []
        )

    @staticmethod
    def _content_keys(content: Obj) -> list[str]:
        ref = (content.get("spec") or {}).get("volumeSnapshotRef") or {}
        return [f"{ref['namespace']}/{ref['name']}"] if ref.get("namespace") and ref.get("name") else []

    def _unbound(self) -> list[str]:
        if self._snapshots is None:
            return []
        return [
            f"{s['metadata']['namespace']}/{s['metadata']['name']}"
            for s in self._snapshots.list()
            if not (s.get("status") or {}).get("boundVolumeSnapshotContentName")
        ]

    def _claim_keys(self, pvc: Obj) -> list[str]:
        if self._snapshots is None:
            return []
        meta = pvc["metadata"]
        return [
            f"{s['metadata']['namespace']}/{s['metadata']['name']}"
            for s in self._snapshots.list()
            if s["metadata"].get("namespace") == meta.get("namespace")
            and ((s.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
            == meta.get("name")
            and not (s.get("status") or {}).get("boundVolumeSnapshotContentName")
        ]

    async def reconcile(self, key: str) -> Result | None:
        assert self._snapshots is not None and self._contents is not None
        snap = self._snapshots.get(key)
        if snap is None:
            return None
        if snap["metadata"].get("deletionTimestamp"):
            return await self._delete(snap)
        source = (snap.get("spec") or {}).get("source") or {}
        status = snap.get("status") or {}
        if source.get("volumeSnapshotContentName"):
            return await self._pre_provisioned(snap, str(source["volumeSnapshotContentName"]))
        name = str(status.get("boundVolumeSnapshotContentName") or api.content_name(snap["metadata"]["uid"]))
        content = self._contents.get(name)
        if content is None:
            if status.get("boundVolumeSnapshotContentName"):
                await self._write(snap, name, None, error=f"its VolumeSnapshotContent {name} is gone")
                return None
            return await self._create_content(snap, str(source.get("persistentVolumeClaimName") or ""), name)
        snap = await self._ensure_finalizer(snap)
        await self._write(snap, name, content)
        return None

    async def _pre_provisioned(self, snap: Obj, name: str) -> Result | None:
        assert self._contents is not None
        meta = snap["metadata"]
        content = self._contents.get(name)
        if content is None:
            await self._write(
                snap,
                None,
                None,
                error=f"spec.source.volumeSnapshotContentName: VolumeSnapshotContent {name} does not exist",
            )
            return Result(requeue_after=RETRY)
        ref = (content.get("spec") or {}).get("volumeSnapshotRef") or {}
        if (ref.get("namespace"), ref.get("name")) != (meta["namespace"], meta["name"]) or (
            ref.get("uid") and ref.get("uid") != meta.get("uid")
        ):
            await self._write(
                snap,
                None,
                None,
                error=f"spec.source.volumeSnapshotContentName: VolumeSnapshotContent {name} is bound to "
                f"VolumeSnapshot {ref.get('namespace')}/{ref.get('name')}; set its spec.volumeSnapshotRef to "
                f"{meta['namespace']}/{meta['name']} to bind it here",
            )
            return None
        snap = await self._ensure_finalizer(snap)
        await self._write(snap, name, content)
        return None

    def _class_for(self, snap: Obj, driver: str) -> tuple[Obj | None, str]:
        """(the VolumeSnapshotClass, "") or (None, why not)."""
        assert self._classes is not None
        wanted = (snap.get("spec") or {}).get("volumeSnapshotClassName")
        if wanted:
            found = self._classes.get(str(wanted))
            if found is None:
                return None, f"spec.volumeSnapshotClassName: VolumeSnapshotClass {wanted} does not exist"
            if found.get("driver") != driver:
                return None, (
                    f"spec.volumeSnapshotClassName: VolumeSnapshotClass {wanted} is for driver "
                    f"{found.get('driver')}, the claim's volume is of driver {driver}"
                )
            return found, ""
        defaults = sorted(
            (c for c in self._classes.list() if c.get("driver") == driver and _is_default(c)),
            key=lambda c: str(c["metadata"]["name"]),
        )
        if not defaults:
            return None, (
                f"no default VolumeSnapshotClass for driver {driver}: set spec.volumeSnapshotClassName or "
                f"annotate a class {api.DEFAULT_CLASS_ANNOTATION}=true"
            )
        return defaults[0], ""

    def _driver_of(self, pvc: Obj, pv: Obj) -> str:
        assert self._storage_classes is not None
        annotations = pv["metadata"].get("annotations") or {}
        if annotations.get(storage.PROVISIONED_BY_ANNOTATION):
            return str(annotations[storage.PROVISIONED_BY_ANNOTATION])
        class_name = (pv.get("spec") or {}).get("storageClassName") or (pvc.get("spec") or {}).get(
            "storageClassName"
        )
        sc = self._storage_classes.get(str(class_name)) if class_name else None
        return str((sc or {}).get("provisioner") or "")

    async def _create_content(self, snap: Obj, claim: str, name: str) -> Result | None:
        assert self._claims is not None and self._volumes is not None
        meta = snap["metadata"]
        namespace = str(meta["namespace"])
        where = f"spec.source.persistentVolumeClaimName: PersistentVolumeClaim {namespace}/{claim}"
        pvc = self._claims.get(f"{namespace}/{claim}")
        if pvc is None:
            await self._write(snap, None, None, error=f"{where} does not exist")
            return Result(requeue_after=RETRY)
        pv = self._volumes.get(str((pvc.get("spec") or {}).get("volumeName") or ""))
        if (pvc.get("status") or {}).get("phase") != "Bound" or pv is None:
            await self._write(snap, None, None, error=f"{where} is not bound yet")
            return Result(requeue_after=RETRY)
        if (pv.get("spec") or {}).get("nfs"):
            await self._write(
                snap,
                None,
                None,
                error=f"{where} is on an NFS volume ({pv['metadata']['name']}): only local volumes "
                f"(driver {api.LOCAL_DRIVER}) can be snapshotted",
            )
            return None
        driver = self._driver_of(pvc, pv)
        node = node_of_volume(pv)
        if driver != api.LOCAL_DRIVER or node is None:
            await self._write(
                snap,
                None,
                None,
                error=f"{where}: its volume {pv['metadata']['name']} (driver {driver or 'none'}) cannot be "
                f"snapshotted: only local volumes (driver {api.LOCAL_DRIVER}) can",
            )
            return None
        snapshot_class, why = self._class_for(snap, driver)
        if snapshot_class is None:
            await self._write(snap, None, None, error=why)
            return Result(requeue_after=RETRY)
        body: Obj = {
            "apiVersion": api.API_VERSION,
            "kind": "VolumeSnapshotContent",
            "metadata": {
                "name": name,
                "labels": {api.NODE_LABEL: node},
                "annotations": {api.SOURCE_CLAIM_ANNOTATION: f"{namespace}/{claim}"},
                "finalizers": [api.CONTENT_FINALIZER],
            },
            "spec": {
                "volumeSnapshotRef": {
                    "apiVersion": api.API_VERSION,
                    "kind": "VolumeSnapshot",
                    "namespace": namespace,
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "source": {"volumeHandle": pv["metadata"]["name"]},
                "driver": driver,
                "deletionPolicy": snapshot_class.get("deletionPolicy") or "Delete",
                "volumeSnapshotClassName": snapshot_class["metadata"]["name"],
                "sourceVolumeMode": (pvc.get("spec") or {}).get("volumeMode") or "Filesystem",
            },
        }
        snap = await self._ensure_finalizer(snap)
        try:
            content: Obj | None = await self.contents.create(body)
        except errors.AlreadyExistsError:
            content = None  # the watch brings it
        await self.recorder.normal(
            snap,
            "CreatingSnapshot",
            f"Waiting for a snapshot {namespace}/{meta['name']} to be created by the node agent of {node}",
        )
        await self._write(snap, name, content)
        return None

    async def _ensure_finalizer(self, snap: Obj) -> Obj:
        """``snap`` with the bound finalizer: as given, or as the update returned it.

        Never changes ``snap`` itself: it is the informer's (shared) cached object.
        """
        finalizers = list(snap["metadata"].get("finalizers") or [])
        if api.BOUND_FINALIZER in finalizers:
            return snap
        body = copy.deepcopy(snap)
        body["metadata"]["finalizers"] = [*finalizers, api.BOUND_FINALIZER]
        updated: Obj = await self.snapshots.update(body)
        return updated

    def _restoring(self, content: str) -> list[str]:
        """The claims being filled from the content ``content`` now (DataVolume restores)."""
        assert self._claims is not None
        found = []
        for pvc in self._claims.list():
            annotations = pvc["metadata"].get("annotations") or {}
            if annotations.get(api.RESTORE_CONTENT_ANNOTATION) == content and annotations.get(
                cdi.POD_PHASE_ANNOTATION
            ) not in ("Succeeded", "Failed"):
                found.append(f"{pvc['metadata']['namespace']}/{pvc['metadata']['name']}")
        return sorted(found)

    async def _delete(self, snap: Obj) -> Result | None:
        assert self._contents is not None
        meta = snap["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if api.BOUND_FINALIZER not in finalizers:
            return None
        name = (snap.get("status") or {}).get("boundVolumeSnapshotContentName")
        restoring = self._restoring(str(name)) if name else []
        if restoring:  # the external-snapshotter's volumesnapshot-as-source-protection
            log.info(
                "volume snapshot %s/%s: deleted, but kept while claims %s are restored from it",
                meta["namespace"],
                meta["name"],
                ", ".join(restoring),
            )
            return Result(requeue_after=RETRY)
        content = self._contents.get(str(name)) if name else None
        ref = ((content or {}).get("spec") or {}).get("volumeSnapshotRef") or {}
        ours = (
            content is not None
            and (ref.get("uid") in (None, meta.get("uid")))
            and (
                ref.get("namespace"),
                ref.get("name"),
            )
            == (meta.get("namespace"), meta.get("name"))
        )
        if ours and content is not None and (content.get("spec") or {}).get("deletionPolicy") == "Delete":
            if not content["metadata"].get("deletionTimestamp"):
                log.info(
                    "volume snapshot %s/%s deleted: deleting its content %s",
                    meta["namespace"],
                    meta["name"],
                    name,
                )
                with contextlib.suppress(errors.NotFoundError):
                    await self.contents.delete(str(name))
            return None  # the content's deletion brings us back
        body = copy.deepcopy(snap)
        body["metadata"]["finalizers"] = [f for f in finalizers if f != api.BOUND_FINALIZER]
        with contextlib.suppress(errors.NotFoundError):
            await self.snapshots.update(body)
        return None

    async def _write(
        self, snap: Obj, content_name: str | None, content: Obj | None, *, error: str = ""
    ) -> None:
        old = snap.get("status") or {}
        status: Obj = {}
        if content_name:
            status["boundVolumeSnapshotContentName"] = content_name
        cstatus = (content or {}).get("status") or {}
        created = _creation_time(cstatus.get("creationTime"))
        if created:
            status["creationTime"] = created
        status["readyToUse"] = bool(cstatus.get("readyToUse"))
        size = cstatus.get("restoreSize")
        if isinstance(size, int) and not isinstance(size, bool):
            status["restoreSize"] = format_bytes(size)
        message = error or str((cstatus.get("error") or {}).get("message") or "")
        if message:
            previous = old.get("error") or {}
            status["error"] = {
                "message": message,
                "time": previous.get("time") if previous.get("message") == message else _now(),
            }
        if status == old:
            return
        meta = snap["metadata"]
        if message and (old.get("error") or {}).get("message") != message:
            await self.recorder.warning(
                snap,
                "SnapshotCreationFailed",
                f"VolumeSnapshot {meta['namespace']}/{meta['name']}: {message}",
            )
        if status["readyToUse"] and not old.get("readyToUse"):
            await self.recorder.normal(
                snap, "SnapshotReady", f"Snapshot {meta['namespace']}/{meta['name']} is ready to use."
            )
        try:
            await self.snapshots.update_status(dict(snap, status=status))
        except errors.NotFoundError:
            return


def _is_default(snapshot_class: Obj) -> bool:
    annotations = (snapshot_class.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(api.DEFAULT_CLASS_ANNOTATION, "")).lower() == "true"
