"""The node's side of the shared provisioner: deleting the data of released shared volumes.

Why here: only agents touch storage (ARCHITECTURE "Processes"); a shared volume has no node, so the
provisioner (:mod:`kubevisor.controllers.sharedprovisioning`) names one agent to delete the data of a
volume that is ``Released`` under reclaimPolicy ``Delete`` (annotation ``kubevisor.io/reclaim-node``).
That agent removes the volume's directory (over NFS for ``spec.nfs`` volumes, through
:mod:`kubevisor.agent.nfsvolumes`; on the shared mount for ``spec.hostPath`` ones, only when it is inside
one of this node's volume directories) and then deletes the PersistentVolume, as Kubernetes' provisioners
do. Creating a shared volume's image is left to the first user (:mod:`kubevisor.agent.claims`, the
importer), which needs no hand-over.

Only volumes with ``pv.kubernetes.io/provisioned-by: kubevisor.io/shared`` are touched: a
PersistentVolume written by hand cannot make this module delete anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from kubevisor.agent import nfsvolumes
from kubevisor.api import storage
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.provisioning import SHARED_PROVISIONER
from kubevisor.controllers.reconciling import Controller, Result
from kubevisor.controllers.sharedprovisioning import RECLAIM_NODE_ANNOTATION

__all__ = ["SharedVolumes"]

log = logging.getLogger(__name__)

RETRY = 30.0


class SharedVolumes(Controller):
    """Deletes the data of released shared volumes handed to this node."""

    name = "node-agent-shared-volumes"

    def __init__(self, client: Client, *, node: str, volume_dirs: tuple[Path, ...]) -> None:
        super().__init__(client)
        self.node = node
        self.volume_dirs = volume_dirs
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.recorder = EventRecorder(client, f"kubevisor-agent/{node}")
        self._volumes: Informer | None = None

    def setup(self) -> None:
        self._volumes = self.watch(self.pvs)

    def _mine(self, pv: Obj) -> bool:
        annotations = pv["metadata"].get("annotations") or {}
        return (
            annotations.get(storage.PROVISIONED_BY_ANNOTATION) == SHARED_PROVISIONER
            and annotations.get(RECLAIM_NODE_ANNOTATION) == self.node
            and (pv.get("status") or {}).get("phase") == "Released"
            and (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") == "Delete"
        )

    def _directory(self, pv: Obj) -> Path | None:
        path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
        if not path:
            return None
        directory = Path(os.path.normpath(str(path)))
        for root in self.volume_dirs:
            top = Path(os.path.normpath(root))
            if directory.parent == top:
                return directory
        return None

    async def reconcile(self, key: str) -> Result | None:
        assert self._volumes is not None
        pv = self._volumes.get(key)
        if pv is None or pv["metadata"].get("deletionTimestamp") or not self._mine(pv):
            return None
        where = f"PersistentVolume {key}"
        try:
            nfs = nfsvolumes.location(pv, where)
            if nfs is not None:
                await nfsvolumes.remove(nfs, where)
                removed = nfs.url()
            else:
                directory = self._directory(pv)
                if directory is None:
                    await self.recorder.warning(
                        pv,
                        "VolumeFailed",
                        f"{where}: spec.hostPath.path is not a directory directly in a volume directory of "
                        f"node {self.node} ({', '.join(map(str, self.volume_dirs))}); start its agent with "
                        "--volume-dir for the shared class's path, or delete the data by hand",
                    )
                    return None
                await asyncio.to_thread(shutil.rmtree, directory, True)
                removed = str(directory)
        except nfsvolumes.NfsVolumeError as e:
            await self.recorder.warning(pv, "VolumeFailedDelete", str(e))
            return Result(requeue_after=RETRY)
        try:
            await self.pvs.delete(key, preconditions={"uid": pv["metadata"]["uid"]})
        except errors.NotFoundError:
            pass
        log.info("deleted shared volume %s (%s)", key, removed)
        return None
