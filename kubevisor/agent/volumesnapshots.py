"""The node agent's part of volume snapshots (snapshot.storage.k8s.io): a CSI driver's snapshotter, locally.

Why in the agent: only the agent touches a node's volumes and its QEMUs. The volume snapshot controller
(:mod:`kubevisor.controllers.volumesnapshot`) creates a VolumeSnapshotContent labelled
:data:`~kubevisor.api.volumesnapshot.NODE_LABEL` = the node of the claim's volume; the agent there copies
the claim's image and reports in the content's status, as for VM snapshots (:mod:`kubevisor.agent.snapshots`,
whose copy machinery this module reuses).

Taking the data (one claim per content) into ``DATA/volumesnapshots/<content>/disk.img``:

- No VMI of this node runs with the claim: ``cp --reflink=auto --sparse=always``
  (:mod:`kubevisor.storage.imagecopy`: instant on XFS/Btrfs, else a sparse copy). A VMI that starts with the
  claim during the copy fails the snapshot (the copy would not be of one point in time).
- A VMI of this node runs with the claim (its QEMU writes it): QMP ``blockdev-backup`` (sync full) of that
  disk, started with the guest's file systems frozen through qemu-ga when it is connected — exactly the
  VM snapshot's online copy (``SnapshotAgent._online`` of :mod:`kubevisor.agent.snapshots`), so the copy is
  of one point in time (file-system consistent with a guest agent, else crash-consistent).
- ``taken.json`` (format, size) is written last: the copy is complete. Then the content's status:
  ``snapshotHandle`` (the content's name: the data's directory here), ``creationTime`` (nanoseconds),
  ``readyToUse``, ``restoreSize`` (the volume's capacity in bytes) and the format annotation. A failure
  removes the directory and sets ``status.error`` (``readyToUse`` false), naming the claim or the VMI.

A content with ``source.snapshotHandle`` (pre-provisioned) is ready when that handle's data is on this node.

Deleting a content removes its directory (the space is free again), then the agent's finalizer.

Restoring (a DataVolume ``source.snapshot``, :meth:`VolumeSnapshotAgent.restore`, run by the node's
importer): the content's image is copied into the new claim's image with
:func:`kubevisor.storage.cloning.clone_image` (reflink or sparse copy, ``qemu-img convert`` between formats,
grown to the claim's size, written to a temporary file and renamed).

Owner of: a content's ``status`` and format annotation; ``DATA/volumesnapshots``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path

from kubevisor.agent import claims
from kubevisor.agent.importing import ImportSetupError
from kubevisor.agent.snapshots import SnapshotAgent, SnapshotError
from kubevisor.agent.vmis import Guest, VmiController
from kubevisor.api import volumesnapshot as api
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError
from kubevisor.storage import cloning, imagecopy, importing
from kubevisor.virt import process, qemuimg

__all__ = ["VolumeSnapshotAgent"]

log = logging.getLogger(__name__)

CONTENT_ANNOTATION = api.RESTORE_CONTENT_ANNOTATION
DISK = "disk.img"
TAKEN = "taken.json"
"""In a content's directory, written last: the copy is complete (its format and size)."""


class _Taken:
    def __init__(self, fmt: str, size: int, indications: list[str]) -> None:
        self.format: cloning.ImageFormat = "qcow2" if fmt == "qcow2" else "raw"
        self.size = size
        self.indications = indications


def _read_taken(directory: Path) -> _Taken | None:
    try:
        found = json.loads((directory / TAKEN).read_text())
        return _Taken(str(found["format"]), int(found["size"]), [str(i) for i in found["indications"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _single_name(value: str) -> bool:
    return bool(value) and value not in (".", "..") and "/" not in value and "\0" not in value


class VolumeSnapshotAgent(Controller):
    """Takes and frees the data of the VolumeSnapshotContents bound to this node; restores it into claims."""

    name = "node-agent-volumesnapshots"
    concurrency = 2

    def __init__(
        self,
        client: Client,
        *,
        node: str,
        data_dir: Path,
        vmis: VmiController,
        snapshots: SnapshotAgent,
        volume_dirs: tuple[Path, ...],
        concurrency: int | None = None,
    ) -> None:
        super().__init__(client, concurrency=concurrency)
        self.node = node
        self.directory = Path(data_dir) / "volumesnapshots"
        """``DATA/volumesnapshots/<content>/disk.img``."""
        self.vmis = vmis
        self.snapshots = snapshots
        """The VM snapshot agent, whose online copy (QMP blockdev-backup) copies disks of running VMIs."""
        self.volume_dirs = volume_dirs
        self.contents: ResourceClient = client.resource(api.API_VERSION, "volumesnapshotcontents")
        self._contents: Informer | None = None

    def setup(self) -> None:
        self._contents = self.watch(self.contents, label_selector=f"{api.NODE_LABEL}={self.node}")

    def data_of(self, handle: str) -> Path | None:
        """The directory of the snapshot ``handle`` on this node (None for a handle that is not a name)."""
        return self.directory / handle if _single_name(handle) else None

    async def reconcile(self, key: str) -> Result | None:
        assert self._contents is not None
        content = self._contents.get(key)
        if content is None:
            return None
        meta, spec = content["metadata"], content.get("spec") or {}
        name = str(meta["name"])
        directory = self.directory / name
        if meta.get("deletionTimestamp"):
            if api.CONTENT_FINALIZER in (meta.get("finalizers") or []):
                await asyncio.to_thread(shutil.rmtree, directory, True)
                log.info("volume snapshot content %s deleted: its data on %s is removed", name, self.node)
                await self._remove_finalizer(content)
            return None
        status = content.get("status") or {}
        if status.get("readyToUse") or status.get("error"):
            return None
        handle = str((spec.get("source") or {}).get("snapshotHandle") or "")
        if handle:  # pre-provisioned: the data must already be here
            data = self.data_of(handle)
            taken = _read_taken(data) if data is not None else None
            if taken is None:
                await self._fail(
                    content, None, f"spec.source.snapshotHandle: no snapshot {handle!r} on {self.node}"
                )
            else:
                await self._succeed(content, handle, taken)
            return None
        taken = _read_taken(directory)
        if taken is not None:  # copied, but the status write did not happen yet (or failed): only that
            await self._succeed(content, name, taken)
            return None
        started = time.monotonic()
        try:
            taken = await self._take(content, directory)
        except claims.ClaimNotReady as e:
            raise TemporaryError(str(e), delay=2.0) from e
        except (SnapshotError, claims.ClaimError, imagecopy.CopyError, qemuimg.ImageError, OSError) as e:
            await self._fail(content, directory, str(e))
            return None
        log.info(
            "volume snapshot content %s: %d bytes taken (%s) in %.2f s",
            name,
            taken.size,
            ",".join(taken.indications) or "offline",
            time.monotonic() - started,
        )
        await self._succeed(content, name, taken)
        return None

    async def _take(self, content: Obj, directory: Path) -> _Taken:
        meta = content["metadata"]
        source = str((meta.get("annotations") or {}).get(api.SOURCE_CLAIM_ANNOTATION) or "")
        namespace, _, claim = source.partition("/")
        where = f"VolumeSnapshotContent {meta['name']}"
        if not namespace or not claim:
            raise SnapshotError(f"{where}: no {api.SOURCE_CLAIM_ANNOTATION} naming the source claim")
        field = f"{where}: source claim {namespace}/{claim}"
        image = await self._resolve(namespace, claim, field)
        if image.nfs_server is not None or image.block:
            raise SnapshotError(f"{field}: only file images of local volumes can be snapshotted")
        pv = await self.client.resource("v1", "persistentvolumes").get(image.volume)
        capacity = parse_quantity(((pv.get("spec") or {}).get("capacity") or {}).get("storage"))
        await asyncio.to_thread(shutil.rmtree, directory, True)  # leftovers of an attempt cut short
        await asyncio.to_thread(os.makedirs, directory)
        target = directory / DISK
        user = await self._user(namespace, claim)
        if user is not None:
            guest, volume = user
            log.info("%s: copying the disk %s of running VMI %s", field, volume, guest.key)
            # the VM snapshot's online copy, reused as it is (that module is not restructured for it)
            indications = await self.snapshots._online(guest, {volume: image}, directory)
            await asyncio.to_thread(os.replace, directory / f"{volume}.img", target)
            await imagecopy.dig_holes(target)
        else:
            await imagecopy.copy(image.path, target)
            if await self._user(namespace, claim) is not None:
                raise SnapshotError(
                    f"{field}: a VMI started with the claim while it was copied; take the snapshot again"
                )
            indications = []
        size = int(capacity or 0) or await cloning.virtual_size(target, image.format)
        taken = _Taken(image.format, size, indications)
        record = {"format": taken.format, "size": taken.size, "indications": indications}
        (directory / TAKEN).write_text(json.dumps(record) + "\n")
        return taken

    async def _user(self, namespace: str, claim: str) -> tuple[Guest, str] | None:
        """The running guest of this node whose VMI has ``claim`` as a volume, and that volume's name."""
        vmis = await self.client.resource("kubevirt.io/v1", "virtualmachineinstances").list(namespace)
        for vmi in vmis:
            guest = self.vmis.guests.get(f"{namespace}/{vmi['metadata']['name']}")
            if guest is None or not guest.alive():
                continue
            for volume in (vmi.get("spec") or {}).get("volumes") or []:
                name = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
                    volume.get("dataVolume") or {}
                ).get("name")
                if name == claim:
                    return guest, str(volume["name"])
        return None

    async def _resolve(self, namespace: str, claim: str, field: str) -> claims.ClaimedImage:
        async def read(resource: str, name: str) -> Obj | None:
            try:
                found: Obj = await self.client.resource("v1", resource).get(
                    name, None if resource == "persistentvolumes" else namespace
                )
            except errors.NotFoundError:
                return None
            return found

        async with process.Reverter() as revert:
            image = await claims.resolve(
                claim,
                field,
                namespace=namespace,
                node=self.node,
                volume_dirs=self.volume_dirs,
                read=read,
                revert=revert,
            )
            revert.success()
        return image

    async def _succeed(self, content: Obj, handle: str, taken: _Taken) -> None:
        meta = content["metadata"]
        annotations = {
            api.FORMAT_ANNOTATION: taken.format,
            api.INDICATIONS_ANNOTATION: ",".join(taken.indications),
        }
        patch = {"metadata": {"annotations": annotations}}
        try:
            updated = await self.contents.patch(str(meta["name"]), patch)
        except errors.NotFoundError:
            return
        status = {
            "snapshotHandle": handle,
            "creationTime": time.time_ns(),
            "readyToUse": True,
            "restoreSize": taken.size,
        }
        with contextlib.suppress(errors.NotFoundError):
            await self.contents.update_status(dict(updated, status=status))

    async def _fail(self, content: Obj, directory: Path | None, message: str) -> None:
        if directory is not None:
            await asyncio.to_thread(shutil.rmtree, directory, True)
        log.warning("volume snapshot content %s: %s", content["metadata"]["name"], message)
        now = timestamps.format_time(timestamps.now())
        status = {"readyToUse": False, "error": {"time": now, "message": message}}
        with contextlib.suppress(errors.NotFoundError):
            await self.contents.update_status(dict(content, status=status))

    async def _remove_finalizer(self, content: Obj) -> None:
        body = copy.deepcopy(content)
        body["metadata"]["finalizers"] = [
            f for f in content["metadata"].get("finalizers") or [] if f != api.CONTENT_FINALIZER
        ]
        with contextlib.suppress(errors.NotFoundError):
            await self.contents.update(body)

    # --- restoring (run by the node's importer) ----------------------------------------------------

    async def restore(self, pvc: Obj, pv: Obj, target: Path, size: int, where: str) -> None:
        """Fill ``target`` (the image of claim ``pvc`` on volume ``pv``, ``size`` bytes) from the content
        named in the claim's :data:`CONTENT_ANNOTATION`. Raises :class:`ImportSetupError` when it never can,
        :class:`~kubevisor.storage.importing.SourceUnreachable` while the data is not ready here yet."""
        name = str((pvc["metadata"].get("annotations") or {}).get(CONTENT_ANNOTATION) or "")
        if not _single_name(name):
            raise ImportSetupError(f"{where}: no {CONTENT_ANNOTATION} naming the VolumeSnapshotContent")
        try:
            content = await self.contents.get(name)
        except errors.NotFoundError as e:
            raise ImportSetupError(f"{where}: its VolumeSnapshotContent {name} was deleted") from e
        labels = content["metadata"].get("labels") or {}
        if labels.get(api.NODE_LABEL) != self.node:
            raise ImportSetupError(
                f"{where}: the snapshot's data (VolumeSnapshotContent {name}) is on node "
                f"{labels.get(api.NODE_LABEL)}, the claim's volume on {self.node}"
            )
        status = content.get("status") or {}
        handle = str(status.get("snapshotHandle") or "")
        data = self.data_of(handle)
        taken = _read_taken(data) if data is not None and status.get("readyToUse") else None
        if data is None or taken is None:
            raise importing.SourceUnreachable(
                f"{where}: VolumeSnapshotContent {name} is not ready to use yet"
            )
        annotation = (pv["metadata"].get("annotations") or {}).get(claims.FORMAT_ANNOTATION) or "raw"
        result = await cloning.clone_image(
            data / DISK,
            target,
            size=size,
            source_format=taken.format,
            target_format="qcow2" if annotation == "qcow2" else "raw",
        )
        log.info(
            "restore of VolumeSnapshotContent %s into %s: %s of %d bytes in %.2f s",
            name,
            where,
            result.method,
            result.virtual_size,
            result.seconds,
        )
