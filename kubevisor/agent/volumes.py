"""The node's side of the local provisioner: images of ``kubevisor.io/local`` volumes on this node.

Why in the agent: only the agent touches its node. The provisioner (:mod:`kubevisor.controllers.provisioning`)
decides that a volume lives here and creates its PersistentVolume; this module creates the directory
``DATA/volumes/<pv-name>`` with a sparse raw ``disk.img`` of the volume's capacity, removes both when the
volume is ``Released`` under reclaimPolicy ``Delete`` (then deletes the PersistentVolume, as Kubernetes'
provisioners do), and leaves them under ``Retain``.

It also publishes what the provisioner needs to know about this node, as Node annotations:
``kubevisor.io/volume-dir`` (where volumes go), ``kubevisor.io/volume-free-bytes`` (free space there) and
``kubevisor.io/volume-capacity-bytes`` (free space plus what the volumes' images already hold: what all
local volumes together may take), refreshed whenever a volume is created, filled or removed.

Only volumes whose ``pv.kubernetes.io/provisioned-by`` is ``kubevisor.io/local``, whose node affinity names
this node and whose ``hostPath`` is a direct child of the volume directory are touched: a
PersistentVolume cannot make this module create or delete anything else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from kubevisor.agent.claims import DISK_IMG
from kubevisor.api import storage
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.provisioning import node_of_volume
from kubevisor.controllers.reconciling import Controller, Result

__all__ = ["LocalVolumes", "free_bytes", "held_bytes"]

log = logging.getLogger(__name__)


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use in ``directory``'s filesystem."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def held_bytes(directory: Path) -> int:
    """Bytes the files of the volume directories in ``directory`` occupy (allocated blocks)."""
    total = 0
    for volume in directory.iterdir():
        try:  # a volume may be removed meanwhile
            if volume.is_symlink() or not volume.is_dir():
                continue
            for entry in volume.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    total += entry.stat().st_blocks * 512
        except OSError:
            continue
    return total


def _space(directory: Path) -> tuple[int, int]:
    free = free_bytes(directory)
    return free, free + held_bytes(directory)


def _create_image(directory: Path, size: int) -> bool:
    """Create ``directory/disk.img`` sparse, of ``size`` bytes; False if it was there."""
    directory.mkdir(mode=0o700, exist_ok=True)
    try:  # exclusive: an image an import renamed into place meanwhile is never replaced
        with open(directory / DISK_IMG, "xb") as f:
            f.truncate(size)
    except FileExistsError:
        return False
    return True


class LocalVolumes(Controller):
    """Creates and removes this node's local volume images; publishes the node's volume space."""

    name = "node-agent-volumes"
    concurrency = 1

    def __init__(self, client: Client, *, node: str, volume_dir: Path) -> None:
        super().__init__(client)
        self.node = node
        self.volume_dir = Path(volume_dir)
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.nodes: ResourceClient = client.resource("v1", "nodes")
        self.recorder = EventRecorder(client, "kubevisor-agent", host=node)
        self._volumes: Informer | None = None
        self._published: tuple[int, int] | None = None

    def setup(self) -> None:
        self._volumes = self.watch(
            self.pvs, keys=lambda pv: [pv["metadata"]["name"]] if self._mine(pv) else []
        )

    def _mine(self, pv: Obj) -> bool:
        annotations = pv["metadata"].get("annotations") or {}
        return (
            annotations.get(storage.PROVISIONED_BY_ANNOTATION) == storage.LOCAL_PROVISIONER
            and node_of_volume(pv) == self.node
        )

    async def start(self) -> None:
        self.volume_dir.mkdir(parents=True, exist_ok=True)
        await self.publish(force=True)
        await super().start()

    async def publish(self, *, force: bool = False) -> None:
        """Write the volume directory and its free bytes on this node's Node (when they changed)."""
        free, capacity = await asyncio.to_thread(_space, self.volume_dir)
        if not force and (free, capacity) == self._published:
            return
        annotations = {
            storage.VOLUME_DIR_ANNOTATION: str(self.volume_dir),
            storage.VOLUME_FREE_ANNOTATION: str(free),
            storage.VOLUME_CAPACITY_ANNOTATION: str(capacity),
        }
        try:
            await self.nodes.patch(self.node, {"metadata": {"annotations": annotations}})
        except errors.NotFoundError:
            return
        self._published = (free, capacity)

    def path_of(self, pv: Obj) -> Path | None:
        """The volume's directory, if it is a direct child of this node's volume directory."""
        path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
        if not path:
            return None
        directory = Path(os.path.normpath(str(path)))
        if directory.parent != Path(os.path.normpath(self.volume_dir)) or directory.name in ("", ".", ".."):
            return None
        return directory

    async def reconcile(self, key: str) -> Result | None:
        assert self._volumes is not None
        pv = self._volumes.get(key)
        if pv is None or not self._mine(pv) or pv["metadata"].get("deletionTimestamp"):
            return None
        directory = self.path_of(pv)
        if directory is None:
            await self.recorder.warning(
                pv,
                "VolumeFailed",
                f"PersistentVolume {key}: spec.hostPath.path is not a directory in {self.volume_dir} on node "
                f"{self.node}; this node only manages its own local volumes",
            )
            return None
        spec = pv.get("spec") or {}
        phase = (pv.get("status") or {}).get("phase")
        if phase == "Released" and spec.get("persistentVolumeReclaimPolicy") == "Delete":
            await asyncio.to_thread(shutil.rmtree, directory, True)
            try:
                await self.pvs.delete(key, preconditions={"uid": pv["metadata"]["uid"]})
            except errors.NotFoundError:
                pass
            log.info("deleted volume %s (%s)", key, directory)
            await self.publish()
            return None
        if phase == "Released":
            return None  # Retain: the data stays for an administrator
        size = parse_quantity((spec.get("capacity") or {}).get("storage"))
        if not size:
            return None
        if await asyncio.to_thread(_create_image, directory, int(size)):
            log.info("created volume %s: %s of %d bytes", key, directory / DISK_IMG, int(size))
            await self.publish()
        return None
