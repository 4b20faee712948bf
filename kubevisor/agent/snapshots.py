"""The node agent's part of VM snapshots and restores: taking and putting back the data of claims.

Why in the agent: only the agent touches a node's disks and its QEMUs (ARCHITECTURE "Processes"). The
snapshot controller decides (which volumes, which node, the deadline) and records that in a
VirtualMachineSnapshotContent labelled :data:`~kubevisor.api.snapshot.NODE_LABEL` = this node; the agent
does the copy and reports in the content's status. The restore controller labels a VirtualMachineRestore
the same way once its target VM is stopped; the agent copies the images back and says so in an annotation.

Taking a snapshot (one content, every claim-backed volume of the VM):

- VM not running here: each claim's image is copied (``cp --reflink=auto --sparse=always``, see
  :mod:`kubevisor.storage.imagecopy`) to ``DATA/snapshots/<namespace>/<content>/<volume>.img``. A VM that
  starts during the copy fails the snapshot (the copy would not be of one point in time).
- VM running: the guest's file systems are frozen through qemu-ga when it is connected
  (``guest-fsfreeze-freeze``), one QMP ``transaction`` starts a ``blockdev-backup`` (sync full) per disk
  into new target nodes (``blockdev-add`` of the snapshot files), and the guest is thawed at once: the
  point in time of a backup job is its start, so the guest is frozen for milliseconds, not for the copy.
  The jobs then run to ``BLOCK_JOB_COMPLETED``; the targets are ``blockdev-del``-ed, and their zero blocks
  made holes again (``fallocate --dig-holes``: QEMU writes the source's holes as allocated zeros). Without
  a guest agent the copy is crash-consistent, and the indications say so (``Online,NoGuestAgent``); a
  paused guest is not frozen (``Paused``).
- The thaw always runs once a freeze was attempted, also when starting the jobs fails or the deadline
  passes; jobs still running at a failure are cancelled and their target files removed.
- A deadline (the content's :data:`~kubevisor.api.snapshot.DEADLINE_ANNOTATION`) bounds the whole copy.

Deleting a content removes its directory, then :data:`~kubevisor.api.snapshot.CONTENT_FINALIZER`.

Restoring copies each ``<volume>.img`` over the image of the claim it was taken from (in place, atomically
per image: ``.part`` then rename), after checking that the target VM runs nowhere on this node. A restore as
a new VM copies each image into a new directory under the node's first volume directory and creates a
PersistentVolume for it, pre-bound to the claim the restore controller creates.

Claims of NFS volumes (``spec.nfs``, :mod:`kubevisor.agent.nfsvolumes`: QEMU opens them with its own
NFS client): a running VM's are backed up by the same ``blockdev-backup`` (QEMU reads over NFS); a stopped
VM's are copied with ``qemu-img convert nfs://... <volume>.img``. Either way the snapshot's images stay on
the snapshot's node, in ``DATA/snapshots`` like every other (not on the NFS server: a snapshot never
takes room on the share, and exports and restores find it where they find the others). Putting one back
converts the image into a temporary file beside the claim's image on the server, renamed over it in one
NFS operation; the restore controller has made sure the VM is stopped (on every node). A restore as a new
VM makes local volumes of the snapshot's node, also for NFS claims. A VM with NFS disks that starts on
another node while its stopped disks are copied is not noticed here (the copy is not of one point in
time); stop it, or snapshot it while it runs.

Owner of: a content's ``status`` and its indications annotation; a restore's volumes-restored and
restore-error annotations; the PersistentVolumes of restores as new VMs.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubevisor.agent import claims, nfsvolumes
from kubevisor.agent.vmis import Guest, VmiController
from kubevisor.api import snapshot as api
from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.informers import Informer, object_key, split_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError
from kubevisor.storage import imagecopy
from kubevisor.virt import guestagent, process, qemucmd, qemuimg
from kubevisor.virt.qmp import QmpError, Session

__all__ = ["SnapshotAgent", "SnapshotError", "block_node"]

log = logging.getLogger(__name__)

CONTENT = "content:"
RESTORE = "restore:"
TAKEN = "taken.json"
"""In a content's directory, written last: the copy is complete (and how it was taken)."""
JOB_POLL = 1.0
"""Seconds between checks that QEMU is still there while waiting for the block jobs."""
CANCEL_WAIT = 10.0
"""Seconds to wait for cancelled block jobs to end before their target nodes are deleted."""


class SnapshotError(Exception):
    """The data could not be taken or put back; the message says why and what to do."""


def _now() -> str:
    return timestamps.format_time(timestamps.now())


def _taken(directory: Path) -> list[str] | None:
    """The indications recorded once all of a content's images were copied; None if they were not."""
    try:
        found = json.loads((directory / TAKEN).read_text())
    except (OSError, ValueError):
        return None
    return [str(i) for i in found] if isinstance(found, list) else None


def _deadline(meta: Mapping[str, Any]) -> float | None:
    value = (meta.get("annotations") or {}).get(api.DEADLINE_ANNOTATION)
    if not value:
        return None
    try:
        return timestamps.parse_time(str(value)).timestamp()
    except ValueError:
        return None


class SnapshotAgent(Controller):
    """Takes the data of the contents, and restores the images of the restores, bound to this node."""

    name = "node-agent-snapshots"
    concurrency = 2

    def __init__(
        self,
        client: Client,
        *,
        node: str,
        data_dir: Path,
        vmis: VmiController,
        volume_dirs: tuple[Path, ...],
        concurrency: int | None = None,
    ) -> None:
        super().__init__(client, concurrency=concurrency)
        self.node = node
        self.snapshots_dir = Path(data_dir) / "snapshots"
        """``DATA/snapshots/<namespace>/<content>/<volume>.img``."""
        self.vmis = vmis
        self.volume_dirs = volume_dirs
        self.contents: ResourceClient = client.resource(api.API_VERSION, "virtualmachinesnapshotcontents")
        self.restores: ResourceClient = client.resource(api.API_VERSION, "virtualmachinerestores")
        self._contents: Informer | None = None
        self._restores: Informer | None = None
        self._restored: set[str] = set()
        """Uids of the restores whose images this process put back (or could not)."""

    def setup(self) -> None:
        selector = f"{api.NODE_LABEL}={self.node}"
        self._contents = self.watch(
            self.contents, label_selector=selector, keys=lambda o: [CONTENT + object_key(o)]
        )
        self._restores = self.watch(
            self.restores, label_selector=selector, keys=lambda o: [RESTORE + object_key(o)]
        )

    def content_dir(self, namespace: str, name: str) -> Path:
        return self.snapshots_dir / namespace / name

    async def reconcile(self, key: str) -> Result | None:
        if key.startswith(CONTENT):
            await self._content(key.removeprefix(CONTENT))
        elif key.startswith(RESTORE):
            await self._restore(key.removeprefix(RESTORE))
        return None

    # --- snapshots ---------------------------------------------------------------------------------

    async def _content(self, key: str) -> None:
        assert self._contents is not None
        content = self._contents.get(key)
        if content is None:
            return
        meta = content["metadata"]
        namespace, name = split_key(key)
        directory = self.content_dir(namespace or "", name)
        if meta.get("deletionTimestamp"):
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                directory.parent.rmdir()
            await self._remove_finalizer(content)
            return
        status = content.get("status") or {}
        if status.get("readyToUse") or status.get("error"):
            return
        taken = _taken(directory)
        if taken is not None:  # copied, but the status write did not happen yet (or failed): only that
            await self._succeed(content, taken)
            return
        deadline = _deadline(meta)
        started = time.monotonic()
        try:
            if deadline is not None and time.time() >= deadline:
                raise SnapshotError("the failureDeadline passed before the node agent could start the copy")
            timeout = None if deadline is None else deadline - time.time()
            async with asyncio.timeout(timeout):
                indications = await self._take(content, directory)
            (directory / TAKEN).write_text(json.dumps(indications) + "\n")
        except claims.ClaimNotReady as e:
            raise TemporaryError(str(e), delay=2.0) from e
        except TimeoutError:
            await self._fail(content, directory, "the snapshot did not finish within its failureDeadline")
            return
        except (
            SnapshotError,
            claims.ClaimError,
            imagecopy.CopyError,
            qemuimg.ImageError,
            nfsvolumes.NfsVolumeError,
            OSError,
        ) as e:
            await self._fail(content, directory, str(e))
            return
        log.info(
            "content %s: %d volumes taken in %.2f s (%s)",
            key,
            len((content.get("spec") or {}).get("volumeBackups") or []),
            time.monotonic() - started,
            ",".join(indications) or "offline",
        )
        await self._succeed(content, indications)

    async def _take(self, content: Obj, directory: Path) -> list[str]:
        """Copy every volume of ``content`` into ``directory``; the indications (empty: offline)."""
        namespace = str(content["metadata"]["namespace"])
        spec = content.get("spec") or {}
        vm_name = str(
            (((spec.get("source") or {}).get("virtualMachine") or {}).get("metadata") or {})["name"]
        )
        images: dict[str, claims.ClaimedImage] = {}
        for index, backup in enumerate(spec.get("volumeBackups") or []):
            claim = str(((backup.get("persistentVolumeClaim") or {}).get("metadata") or {}).get("name"))
            field = f"spec.volumeBackups[{index}].persistentVolumeClaim"
            images[str(backup["volumeName"])] = await self._resolve(namespace, claim, field)
        shutil.rmtree(directory, ignore_errors=True)  # leftovers of an attempt cut short (agent restart)
        os.makedirs(directory)
        key = f"{namespace}/{vm_name}"
        guest = self._running(key)
        if guest is not None:
            indications = await self._online(guest, images, directory)
            for volume in images:
                await imagecopy.dig_holes(directory / f"{volume}.img")
            return indications
        for volume, image in images.items():
            if image.nfs_server is not None:  # read through QEMU's NFS driver; the copy stays on this node
                await nfsvolumes.copy_out(
                    image.nfs_server,
                    str(image.path),
                    image.format,
                    directory / f"{volume}.img",
                    f"volume {volume} (claim {image.claim})",
                )
            else:
                await imagecopy.copy(image.path, directory / f"{volume}.img")
        if self._running(key) is not None:
            raise SnapshotError(f"VM {vm_name} started while its stopped disks were copied; take it again")
        return []

    def _running(self, key: str) -> Guest | None:
        guest = self.vmis.guests.get(key)
        return guest if guest is not None and guest.alive() else None

    async def _resolve(self, namespace: str, claim: str, field: str) -> claims.ClaimedImage:
        async def read(resource: str, name: str) -> Obj | None:
            namespaced = resource != "persistentvolumes"
            try:
                found: Obj = await self.client.resource("v1", resource).get(
                    name, namespace if namespaced else None
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

    async def _online(
        self, guest: Guest, images: dict[str, claims.ClaimedImage], directory: Path
    ) -> list[str]:
        """blockdev-backup of every volume of a running guest, started at one point in time (frozen)."""
        qmp = guest.qmp
        if qmp is None:
            raise SnapshotError(
                f"VMI {guest.key}: its QMP socket is not reachable; cannot copy running disks"
            )
        blocks = await self._qmp(qmp, "query-block")
        tag = guest.uid[:8] or "x"
        added: list[str] = []
        jobs: dict[str, tuple[str, str]] = {}  # job id -> (source node, target node)
        frozen = paused = False
        try:
            for index, (volume, image) in enumerate(images.items()):
                node, size = block_node(blocks, volume, guest.key)
                target = directory / f"{volume}.img"
                await qemuimg.create(target, image.format, size)
                file_node, fmt_node = f"snap-{tag}-file-{index}", f"snap-{tag}-{index}"
                await self._qmp(
                    qmp,
                    "blockdev-add",
                    {"driver": "file", "node-name": file_node, "filename": str(target), "discard": "unmap"},
                )
                added.append(file_node)
                await self._qmp(
                    qmp,
                    "blockdev-add",
                    {
                        "driver": image.format,
                        "node-name": fmt_node,
                        "file": file_node,
                        "discard": "unmap",
                        "detect-zeroes": "unmap",
                    },
                )
                added.append(fmt_node)
                jobs[f"snap-{tag}-job-{index}"] = (node, fmt_node)
            with qmp.listen("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") as listener:
                state = await self._qmp(qmp, "query-status")
                paused = (state or {}).get("status") == "paused"
                frozen = False if paused else await self._freeze(guest)  # a paused guest cannot answer
                try:
                    actions = [
                        {
                            "type": "blockdev-backup",
                            "data": {"job-id": job, "device": src, "target": dst, "sync": "full"},
                        }
                        for job, (src, dst) in jobs.items()
                    ]
                    await self._qmp(qmp, "transaction", {"actions": actions})
                finally:
                    if frozen:
                        await self._thaw(guest)
                pending = set(jobs)
                while pending:
                    try:
                        event: dict[str, Any] = dict(await asyncio.wait_for(listener.get(), JOB_POLL))
                    except TimeoutError:
                        if not guest.alive() or not qmp.connected:
                            raise SnapshotError(f"VMI {guest.key}: QEMU went away during the copy") from None
                        continue
                    data: dict[str, Any] = dict(event.get("data") or {})
                    job = str(data.get("device") or "")
                    if job not in pending:
                        continue
                    pending.discard(job)
                    if event["event"] == "BLOCK_JOB_CANCELLED" or data.get("error"):
                        why = data.get("error") or "cancelled"
                        raise SnapshotError(f"VMI {guest.key}: the backup job {job} failed: {why}")
        except BaseException:
            await self._cancel_jobs(qmp, set(jobs))
            raise
        finally:
            for node in reversed(added):
                with contextlib.suppress(QmpError):
                    await qmp.execute("blockdev-del", {"node-name": node})
        return ["Online", "GuestAgent" if frozen else "NoGuestAgent", *(["Paused"] if paused else [])]

    @staticmethod
    async def _qmp(qmp: Session, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        try:
            return await qmp.execute(command, arguments)
        except QmpError as e:
            raise SnapshotError(str(e)) from e

    @staticmethod
    async def _cancel_jobs(qmp: Session, jobs: set[str]) -> None:
        """Cancel our jobs still running, and wait (bounded) until they are gone."""
        deadline = time.monotonic() + CANCEL_WAIT
        with contextlib.suppress(QmpError):
            while time.monotonic() < deadline:
                running = {str(j.get("device")) for j in await qmp.execute("query-block-jobs") or []} & jobs
                if not running:
                    return
                for job in running:
                    with contextlib.suppress(QmpError):
                        await qmp.execute("block-job-cancel", {"device": job, "force": True})
                await asyncio.sleep(0.05)

    @staticmethod
    async def _freeze(guest: Guest) -> bool:
        """Freeze the guest's file systems when its qemu-ga is connected; whether a freeze was done."""
        channel = guest.channel
        if channel is None or not channel.connected:
            return False
        try:
            frozen = await channel.execute("guest-fsfreeze-freeze")
        except guestagent.GuestAgentError as e:
            with contextlib.suppress(guestagent.GuestAgentError):
                await channel.execute("guest-fsfreeze-thaw")  # a partial freeze must not stay
            raise SnapshotError(f"VMI {guest.key}: freezing the guest's file systems failed: {e}") from e
        log.info("VMI %s: %s guest file systems frozen for a snapshot", guest.key, frozen)
        return True

    @staticmethod
    async def _thaw(guest: Guest) -> None:
        channel = guest.channel
        if channel is None:
            return
        for _ in range(3):  # a thaw that does not happen leaves the guest hung: try hard
            try:
                await channel.execute("guest-fsfreeze-thaw")
                return
            except guestagent.GuestAgentError as e:
                log.warning("VMI %s: thawing the guest's file systems failed: %s (retrying)", guest.key, e)

    async def _succeed(self, content: Obj, indications: list[str]) -> None:
        now = _now()
        meta = content["metadata"]
        patch = {"metadata": {"annotations": {api.INDICATIONS_ANNOTATION: ",".join(indications)}}}
        try:
            updated = await self.contents.patch(str(meta["name"]), patch, str(meta["namespace"]))
        except errors.NotFoundError:
            return
        status = {
            "creationTime": now,
            "readyToUse": True,
            "volumeSnapshotStatus": [
                {"volumeSnapshotName": b.get("volumeSnapshotName"), "creationTime": now, "readyToUse": True}
                for b in (content.get("spec") or {}).get("volumeBackups") or []
            ],
        }
        with contextlib.suppress(errors.NotFoundError):
            await self.contents.update_status(dict(updated, status=status))

    async def _fail(self, content: Obj, directory: Path, message: str) -> None:
        shutil.rmtree(directory, ignore_errors=True)
        log.warning("content %s: %s", object_key(content), message)
        status = {"readyToUse": False, "error": {"time": _now(), "message": message}}
        with contextlib.suppress(errors.NotFoundError):
            await self.contents.update_status(dict(content, status=status))

    async def _remove_finalizer(self, content: Obj) -> None:
        finalizers = list(content["metadata"].get("finalizers") or [])
        if api.CONTENT_FINALIZER not in finalizers:
            return
        body = copy.deepcopy(content)
        body["metadata"]["finalizers"] = [f for f in finalizers if f != api.CONTENT_FINALIZER]
        with contextlib.suppress(errors.NotFoundError):
            await self.contents.update(body)

    # --- restores ----------------------------------------------------------------------------------

    async def _restore(self, key: str) -> None:
        assert self._restores is not None
        restore = self._restores.get(key)
        if restore is None or restore["metadata"].get("deletionTimestamp"):
            return
        annotations = restore["metadata"].get("annotations") or {}
        if (
            (restore.get("status") or {}).get("complete")
            or str(restore["metadata"].get("uid")) in self._restored  # the cache may lag behind our patch
            or any(
                annotations.get(a) for a in (api.VOLUMES_RESTORED_ANNOTATION, api.RESTORE_ERROR_ANNOTATION)
            )
        ):
            return
        namespace = str(restore["metadata"]["namespace"])
        target = str(((restore.get("spec") or {}).get("target") or {}).get("name"))
        if self._running(f"{namespace}/{target}") is not None:
            raise TemporaryError(f"VM {target} still runs on this node; waiting for it to stop", delay=2.0)
        content_name = str(annotations.get(api.RESTORE_CONTENT_ANNOTATION) or "")
        try:
            content = await self.contents.get(content_name, namespace)
            source = ((content.get("spec") or {}).get("source") or {}).get("virtualMachine") or {}
            if (source.get("metadata") or {}).get("name") == target:
                await self._put_back(content)
            else:
                await self._put_into_new(restore, content)
        except claims.ClaimNotReady as e:
            raise TemporaryError(str(e), delay=2.0) from e
        except errors.NotFoundError:
            await self._annotate(restore, api.RESTORE_ERROR_ANNOTATION, f"content {content_name} is gone")
            return
        except nfsvolumes.NfsVolumeError as e:  # the server may come back
            raise TemporaryError(str(e), delay=5.0) from e
        except (SnapshotError, claims.ClaimError, imagecopy.CopyError, OSError) as e:
            await self._annotate(restore, api.RESTORE_ERROR_ANNOTATION, str(e))
            return
        await self._annotate(restore, api.VOLUMES_RESTORED_ANNOTATION, _now())

    async def _put_back(self, content: Obj) -> None:
        meta = content["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        directory = self.content_dir(namespace, name)
        for index, backup in enumerate((content.get("spec") or {}).get("volumeBackups") or []):
            volume = str(backup["volumeName"])
            source = directory / f"{volume}.img"
            if not source.is_file():
                raise SnapshotError(
                    f"content {name}: the image of volume {volume} is missing on node {self.node}"
                )
            claim = str(((backup.get("persistentVolumeClaim") or {}).get("metadata") or {}).get("name"))
            field = f"spec.volumeBackups[{index}].persistentVolumeClaim"
            image = await self._resolve(namespace, claim, field)
            if image.nfs_server is not None:  # a temporary file beside the image, renamed over it
                await nfsvolumes.replace(
                    image.nfs_server,
                    str(image.path),
                    f"restore of claim {namespace}/{claim}",
                    source=str(source),
                    source_format=image.format,
                    target_format=image.format,
                )
            else:
                await imagecopy.copy(source, image.path)
            log.info("content %s/%s: volume %s restored into claim %s", namespace, name, volume, claim)

    async def _put_into_new(self, restore: Obj, content: Obj) -> None:
        """Each image into a new local volume: a PersistentVolume of this node, pre-bound to the claim
        (:func:`~kubevisor.api.snapshot.restored_claim`) the restore controller creates for it."""
        meta = content["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        uid = str(restore["metadata"]["uid"])
        pvs = self.client.resource("v1", "persistentvolumes")
        for backup in (content.get("spec") or {}).get("volumeBackups") or []:
            volume = str(backup["volumeName"])
            source = self.content_dir(namespace, name) / f"{volume}.img"
            if not source.is_file():
                raise SnapshotError(
                    f"content {name}: the image of volume {volume} is missing on node {self.node}"
                )
            claim = api.restored_claim(uid, volume)
            try:
                await pvs.get(claim)
                continue  # made by an earlier pass
            except errors.NotFoundError:
                pass
            directory = self.volume_dirs[0] / claim
            os.makedirs(directory, exist_ok=True)
            await imagecopy.copy(source, directory / claims.DISK_IMG)
            spec = (backup.get("persistentVolumeClaim") or {}).get("spec") or {}
            pv_spec: dict[str, Any] = {
                "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage")},
                "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                "volumeMode": "Filesystem",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(directory)},
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.node]}
                ]}]}},
            }  # fmt: skip
            if spec.get("storageClassName"):
                pv_spec["storageClassName"] = spec["storageClassName"]
            body = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": claim},
                "spec": pv_spec,
            }
            with contextlib.suppress(errors.AlreadyExistsError):
                await pvs.create(body)
            log.info("content %s/%s: volume %s restored into new volume %s", namespace, name, volume, claim)

    async def _annotate(self, restore: Obj, annotation: str, value: str) -> None:
        meta = restore["metadata"]
        self._restored.add(str(meta.get("uid")))
        patch = {"metadata": {"annotations": {annotation: value}}}  # no resourceVersion: never a 409
        with contextlib.suppress(errors.NotFoundError):
            await self.restores.patch(str(meta["name"]), patch, str(meta["namespace"]))


def block_node(blocks: Any, volume: str, key: str) -> tuple[str, int]:
    """(node name, virtual size) of the disk of ``volume`` in ``query-block``'s answer."""
    device = f"/{qemucmd.device_id(volume)}/"
    for block in blocks or []:
        inserted = block.get("inserted") or {}
        if device in f"{block.get('qdev') or ''}/" and inserted.get("node-name"):
            size = int((inserted.get("image") or {}).get("virtual-size") or 0)
            return str(inserted["node-name"]), size
    raise SnapshotError(f"VMI {key}: no disk of volume {volume} in QEMU; is it attached?")
