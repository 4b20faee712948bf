"""Volume expansion on the node: a bound claim of a local volume asks for more
(``spec.resources.requests.storage`` above the volume's ``spec.capacity.storage``) and this node, which
holds the volume's image, grows it (Kubernetes' external-resizer and kubelet's node expansion in one).

Why in the agent: only the agent touches its node and its QEMUs. The apiserver already refused what may
not grow (:mod:`kubevisor.api.claimupdates`, :mod:`kubevisor.apiserver.claimresize`: never shrink, only
classes with ``allowVolumeExpansion: true``).

For each local volume of this node (provisioned by ``kubevisor.io/local``, node affinity to this node),
level-based, keyed by the PersistentVolume's name:

1. the claim it is bound to wants more than ``spec.capacity``: check the node has room (thick
   accounting, as the provisioner: the capacities of the node's local volumes plus the growth must fit
   in what local volumes may take), else a ``VolumeResizeFailed`` warning on the claim and a retry;
2. grow the image, never shrink it (:mod:`kubevisor.virt.growing`): a QEMU of this node that has it open
   grows it with QMP ``block_resize``, so the running guest sees the new size at once; otherwise
   ``qemu-img resize`` (qcow2) or extending the file (raw);
3. ``spec.capacity.storage`` of the PersistentVolume, then ``status.capacity.storage`` of the claim
   (its ``Resizing``/``FileSystemResizePending`` conditions dropped: a VM disk is a raw block device to
   the guest, there is no file system for the node to grow, as KubeVirt's block volumes), Events
   ``Resizing`` and ``VolumeResizeSuccessful`` on the claim (the external-resizer's reasons).

Each step is idempotent, so an agent that stops between them finishes on its next pass. The VMIs whose
QEMU grew the disk are enqueued so their ``status.volumeStatus`` shows the new capacity.

A Block volume's image is grown first, then each loop device over it (``losetup --set-capacity``), then
the QEMU node on that device (:mod:`kubevisor.agent.blockdevices`).

A claim with an ``ephemeral`` overlay over it is grown, but the running guest sees the new size only
after a restart (its QEMU has the overlay open, not the image).

NFS volumes of the shared provisioner (``spec.nfs``, :mod:`kubevisor.agent.nfsvolumes`: QEMU opens them
with its own NFS client, no node holds them) are grown by one node, chosen the same way by every agent
from its caches: the first node (by name) running a VMI (not finished) that uses the claim, else the first
Ready node (by name), as the snapshot controller picks a node for stopped VMs. That node grows the image
in its QEMU (``block_resize`` on the format node whose file is ``nfs://server/path``: the guest sees the
new size at once) when one has it open, else with ``qemu-img resize -f raw|qcow2 nfs://server/path``
through QEMU's NFS driver (no mount; never shrinks); an image not created yet is left to its first user,
which creates it at the new capacity. No room check: the NFS server's space is not accounted by kubevisor.
Then the capacities are written as for local volumes. Every other node whose QEMU has a ReadWriteMany
(raw) NFS image open grows its view to the new capacity (``block_resize``, which finds the file already
that long) once the PersistentVolume says so, so each guest sees it. A VMI scheduled to a node whose QEMU
has not opened the image yet when the image is grown offline sees the new size from its start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Literal

from kubevisor.agent import blockdevices, nfsvolumes
from kubevisor.agent.claims import DISK_IMG, FORMAT_ANNOTATION
from kubevisor.agent.volumes import free_bytes, held_bytes
from kubevisor.api import storage
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers import cloning as clone_rules
from kubevisor.controllers.provisioning import SHARED_PROVISIONER, node_of_volume
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError
from kubevisor.storage import nfsfiles
from kubevisor.virt import growing
from kubevisor.virt.qmp import QmpError, Session

__all__ = ["OpenSessions", "VolumeExpander"]

log = logging.getLogger(__name__)

FULL_RETRY = 30.0
"""Seconds before a growth that did not fit is tried again."""
RETRY = 5.0
"""Seconds before a growth that failed is tried again."""
DROPPED_CONDITIONS = ("Resizing", "FileSystemResizePending")

OpenSessions = Callable[[], Iterable[tuple[str, Session]]]
"""The QMP sessions of this node's running QEMUs, with their VMI's ``namespace/name``."""


def _quantity(obj: Obj, *path: str) -> Decimal | None:
    value: object = obj
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return parse_quantity(value)


class VolumeExpander(Controller):
    """Grows this node's local volumes to what their claims ask for."""

    name = "node-agent-expansion"
    concurrency = 1
    """One worker: two growths must not both be measured against the same free space."""

    def __init__(
        self,
        client: Client,
        *,
        node: str,
        volume_dir: Path,
        sessions: OpenSessions = lambda: (),
        enqueue_vmi: Callable[[str], None] = lambda key: None,
    ) -> None:
        super().__init__(client)
        self.node = node
        self.volume_dir = Path(volume_dir)
        self.sessions = sessions
        self.enqueue_vmi = enqueue_vmi
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.recorder = EventRecorder(client, "kubevisor-agent", host=node)
        self._volumes: Informer | None = None
        self._claims: Informer | None = None
        self._vmis: Informer | None = None
        self._nodes: Informer | None = None

    def setup(self) -> None:
        self._volumes = self.watch(
            self.pvs,
            keys=lambda pv: [pv["metadata"]["name"]] if self._mine(pv) or _shared_nfs(pv) else [],
        )
        self._claims = self.watch(
            self.pvcs, keys=lambda c: [str(v)] if (v := (c.get("spec") or {}).get("volumeName")) else []
        )
        self._vmis = self.watch(
            self.client.resource("kubevirt.io/v1", "virtualmachineinstances"), keys=self._volumes_of_vmi
        )
        self._nodes = self.watch(self.client.resource("v1", "nodes"), keys=None)

    def _volumes_of_vmi(self, vmi: Obj) -> list[str]:
        """The NFS volumes of the claims a VMI uses: the node that grows them may change with it."""
        if self._claims is None or self._volumes is None:
            return []
        namespace = vmi["metadata"].get("namespace")
        keys: list[str] = []
        for claim in clone_rules.claims_of(vmi):
            pvc = self._claims.get(f"{namespace}/{claim}")
            volume = ((pvc or {}).get("spec") or {}).get("volumeName")
            pv = self._volumes.get(str(volume)) if volume else None
            if pv is not None and _shared_nfs(pv):
                keys.append(str(volume))
        return keys

    def _mine(self, pv: Obj) -> bool:
        annotations = pv["metadata"].get("annotations") or {}
        return (
            annotations.get(storage.PROVISIONED_BY_ANNOTATION) == storage.LOCAL_PROVISIONER
            and node_of_volume(pv) == self.node
        )

    def _image(self, pv: Obj) -> Path | None:
        path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
        if not path:
            return None
        directory = Path(os.path.normpath(str(path)))
        if directory.parent != Path(os.path.normpath(self.volume_dir)) or directory.name in ("", ".", ".."):
            return None
        return directory / DISK_IMG

    def _reserved(self) -> Decimal:
        assert self._volumes is not None
        return sum(
            (_quantity(pv, "spec", "capacity", "storage") or Decimal(0))
            for pv in self._volumes.list()
            if self._mine(pv)
        ) or Decimal(0)

    async def reconcile(self, key: str) -> Result | None:
        assert self._volumes is not None and self._claims is not None
        pv = self._volumes.get(key)
        if pv is None or pv["metadata"].get("deletionTimestamp"):
            return None
        nfs = _shared_nfs(pv)
        if not nfs and not self._mine(pv):
            return None
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        pvc = self._claims.get(f"{ref.get('namespace')}/{ref.get('name')}")
        if pvc is None or (ref.get("uid") and pvc["metadata"].get("uid") != ref.get("uid")):
            return None
        if (pvc.get("status") or {}).get("phase") != "Bound" or (pvc.get("spec") or {}).get(
            "volumeName"
        ) != key:
            return None
        requested = _quantity(pvc, "spec", "resources", "requests", "storage")
        capacity = _quantity(pv, "spec", "capacity", "storage")
        if requested is None or capacity is None:
            return None
        if nfs:
            return await self._reconcile_nfs(pv, pvc, int(requested), int(capacity))
        if requested > capacity:
            return await self._grow(pv, pvc, int(requested), int(capacity))
        claimed = _quantity(pvc, "status", "capacity", "storage")
        if claimed is not None and claimed < capacity:  # grown, but the claim's status was not written
            await self._report(pv, pvc)
        return None

    async def _grow(self, pv: Obj, pvc: Obj, size: int, capacity: int) -> Result | None:
        name = pv["metadata"]["name"]
        what = f"PersistentVolumeClaim {pvc['metadata']['namespace']}/{pvc['metadata']['name']}"
        image = self._image(pv)
        if image is None or not await asyncio.to_thread(image.is_file):
            return None  # not created yet: the volume agent creates it, then its event brings us back
        annotations = pv["metadata"].get("annotations") or {}
        fmt: Literal["raw", "qcow2"] = "qcow2" if annotations.get(FORMAT_ANNOTATION) == "qcow2" else "raw"
        free = await asyncio.to_thread(free_bytes, self.volume_dir)
        room = free + await asyncio.to_thread(held_bytes, self.volume_dir)
        reserved = self._reserved()
        if reserved + (size - capacity) > room:
            await self.recorder.warning(
                pvc,
                "VolumeResizeFailed",
                f"{what}: growing volume {name} by {size - capacity} bytes does not fit on node {self.node}: "
                f"its local volumes may take {room} bytes and {int(reserved)} are provisioned; ask for less "
                "or free space on the node",
            )
            return Result(requeue_after=FULL_RETRY)
        await self.recorder.normal(
            pvc, "Resizing", f"Node {self.node} is resizing volume {name} to {size} bytes"
        )
        try:
            grown_in = await self._grow_image(image, fmt, size)
        except growing.GrowError as e:
            await self.recorder.warning(pvc, "VolumeResizeFailed", f"{what}: volume {name}: {e}")
            raise TemporaryError(str(e), delay=RETRY) from e
        await self._grown(name, pvc, grown_in, f"volume {name} ({image}) to {size} bytes")
        return None

    async def _grow_image(self, image: Path, fmt: Literal["raw", "qcow2"], size: int) -> list[str]:
        """Grow ``image``; the VMIs whose QEMU grew it (none: it was grown offline)."""
        loops = await blockdevices.devices_of(image)  # a Block volume: QEMU has a loop device over it
        users: list[tuple[str, Session, list[str]]] = []
        for key, qmp in self.sessions():
            try:
                nodes = [n for path in (image, *loops) for n in await growing.open_nodes(qmp, path)]
            except QmpError:
                continue  # a QEMU going away
            if nodes:
                users.append((key, qmp, nodes))
        if loops:  # the file first, then the devices, then QEMU (which cannot grow a device itself)
            await growing.grow(image, fmt, size)
            for loop in loops:
                try:
                    await blockdevices.refresh(loop)
                except blockdevices.BlockDeviceError as e:
                    raise growing.GrowError(str(e)) from e
        if not users:
            await growing.grow(image, fmt, size)
            return []
        if await growing.virtual_size(image, fmt) > size:
            return []  # never shrink
        for _key, qmp, nodes in users:
            for node in nodes:
                await growing.resize_in_qemu(qmp, node, size)
        return [key for key, _, _ in users]

    # --- NFS volumes (spec.nfs of the shared provisioner): no node holds them ----------------------

    def _grower(self, pvc: Obj) -> str | None:
        """The node that grows a shared NFS volume: the first (by name) node running a VMI that uses the
        claim, else the first Ready node (by name); None if there is none."""
        assert self._vmis is not None and self._nodes is not None
        namespace, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
        users = sorted(
            str(node)
            for vmi in self._vmis.list()
            if vmi["metadata"].get("namespace") == namespace
            and (vmi.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and name in clone_rules.claims_of(vmi)
            and (node := (vmi.get("status") or {}).get("nodeName"))
        )
        if users:
            return users[0]
        ready = sorted(
            str(n["metadata"]["name"])
            for n in self._nodes.list()
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (n.get("status") or {}).get("conditions") or []
            )
        )
        return ready[0] if ready else None

    async def _nfs_users(self, server: str, path: str) -> list[tuple[str, Session, list[tuple[str, int]]]]:
        """This node's QEMUs that have the NFS image open: (VMI key, QMP, [(format node, size)])."""
        users: list[tuple[str, Session, list[tuple[str, int]]]] = []
        for key, qmp in self.sessions():
            try:
                nodes = nfsvolumes.open_nodes(await qmp.execute("query-block"), server, path)
            except QmpError:
                continue  # a QEMU going away
            if nodes:
                users.append((key, qmp, nodes))
        return users

    async def _reconcile_nfs(self, pv: Obj, pvc: Obj, requested: int, capacity: int) -> Result | None:
        """A shared NFS volume: the node :meth:`_grower` names grows it (in its QEMU when that has it open,
        else ``qemu-img resize nfs://...``) and records the capacity; every other node whose QEMU has it
        open (ReadWriteMany, raw) grows its view afterwards (``block_resize`` to the file's new size)."""
        name = pv["metadata"]["name"]
        what = f"PersistentVolumeClaim {pvc['metadata']['namespace']}/{pvc['metadata']['name']}"
        annotations = pv["metadata"].get("annotations") or {}
        fmt: Literal["raw", "qcow2"] = "qcow2" if annotations.get(FORMAT_ANNOTATION) == "qcow2" else "raw"
        grower = self._grower(pvc)
        try:
            location = nfsvolumes.location(pv, f"PersistentVolume {name}")
            assert location is not None
            if requested <= capacity:
                grown_in: list[str] = []
                # another node grew it: this node's QEMUs with it open (ReadWriteMany, raw) follow
                image = await self._nfs_image(location) if fmt == "raw" and any(self.sessions()) else None
                for key, qmp, nodes in await self._nfs_users(location.server, image) if image else []:
                    for node, seen in nodes:
                        if seen < capacity:
                            await growing.resize_in_qemu(qmp, node, capacity)
                            grown_in.append(key)
                for key in dict.fromkeys(grown_in):
                    self.enqueue_vmi(key)
                claimed = _quantity(pvc, "status", "capacity", "storage")
                if grower == self.node and claimed is not None and claimed < capacity:
                    await self._report(pv, pvc)
                return None
            if grower is None:
                return Result(requeue_after=FULL_RETRY)
            if grower != self.node:
                return None  # its agent grows it; a VMI or node change brings us back
            await self.recorder.normal(
                pvc, "Resizing", f"Node {self.node} is resizing NFS volume {name} to {requested} bytes"
            )
            image = await self._nfs_image(location)
            users = await self._nfs_users(location.server, image) if image else []
            grown_in = []
            if image and users:
                for key, qmp, nodes in users:
                    for node, seen in nodes:
                        if seen < requested:
                            await growing.resize_in_qemu(qmp, node, requested)
                    grown_in.append(key)
            elif image:
                await nfsvolumes.grow(location.server, image, fmt, requested, what)
            # no image yet: it is created at the volume's (new) capacity by its first user
        except (nfsvolumes.NfsVolumeError, nfsfiles.NfsError, growing.GrowError) as e:
            await self.recorder.warning(pvc, "VolumeResizeFailed", f"{what}: volume {name}: {e}")
            raise TemporaryError(str(e), delay=RETRY) from e
        await self._grown(name, pvc, grown_in, f"NFS volume {name} ({image}) to {requested} bytes")
        return None

    async def _grown(self, name: str, pvc: Obj, grown_in: list[str], what: str) -> None:
        """After the image grew: the volume's capacity as the claim asks, the claim's status and events,
        and the VMIs whose QEMU grew it re-synced (their volumeStatus)."""
        storage_size = str(
            (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {})["storage"]
        )
        try:
            pv = await self.pvs.patch(name, {"spec": {"capacity": {"storage": storage_size}}})
        except errors.NotFoundError:
            return
        await self._report(pv, pvc)
        log.info("grew %s%s", what, " live" if grown_in else "")
        for key in grown_in:
            self.enqueue_vmi(key)

    @staticmethod
    async def _nfs_image(location: nfsvolumes.NfsLocation) -> str | None:
        """The path on the server of the volume's image (its path, or ``disk.img`` in it); None if there
        is none yet."""
        found = await asyncio.to_thread(nfsfiles.stat_path, location.server, location.path)
        if found is not None and found.is_file:
            return location.path
        image = posixpath.join(location.path, DISK_IMG)
        found = await asyncio.to_thread(nfsfiles.stat_path, location.server, image)
        return image if found is not None and found.is_file else None

    async def _report(self, pv: Obj, pvc: Obj) -> None:
        """The claim's ``status.capacity`` from its volume's."""
        capacity = ((pv.get("spec") or {}).get("capacity") or {}).get("storage")
        status = dict(pvc.get("status") or {})
        status["capacity"] = dict(status.get("capacity") or {}, storage=capacity)
        conditions = [c for c in status.get("conditions") or [] if c.get("type") not in DROPPED_CONDITIONS]
        if conditions:
            status["conditions"] = conditions
        else:
            status.pop("conditions", None)
        try:
            await self.pvcs.update_status(dict(pvc, status=status))  # 409 when stale: requeued
        except errors.NotFoundError:
            return
        await self.recorder.normal(pvc, "VolumeResizeSuccessful", "Resize volume succeeded")


def _shared_nfs(pv: Obj) -> bool:
    """An NFS volume of the shared provisioner (no node holds it)."""
    annotations = pv["metadata"].get("annotations") or {}
    return annotations.get(storage.PROVISIONED_BY_ANNOTATION) == SHARED_PROVISIONER and bool(
        (pv.get("spec") or {}).get("nfs")
    )
