"""The shared provisioner: a PersistentVolume every node can attach, for each claim of a
``kubevisor.io/shared`` storage class.

Why apart from the local provisioner: a shared volume has no node (no node affinity, no capacity
accounting per node), so none of the local provisioner's placement applies; what is left is the volume's
shape. Two kinds, chosen by the class's ``parameters``:

- ``path: /srv/shared`` — a directory every node mounts at that same path (a cluster file system, a
  kernel NFS mount done by the administrator). The volume is ``spec.hostPath`` ``<path>/pvc-<uid>``
  (``type: DirectoryOrCreate``); each node's agent must list ``<path>`` among its volume directories
  (``--volume-dir``), as for any hostPath volume it attaches.
- ``server: nfs.example`` + ``share: /export/vms`` — an NFS export. The volume is ``spec.nfs``
  ``{server, path: <share>/pvc-<uid>}``; nodes mount nothing: QEMU opens the image with its own NFS
  client (NFSv3, :mod:`kubevisor.agent.nfsvolumes`).

Either way the image is ``disk.img`` in the volume's directory (raw, KubeVirt's filesystem-mode layout),
created by the agent that first needs it (a DataVolume import, or a VMI start for a plain claim), never by
this controller: only agents touch storage. The volume is pre-bound to its claim (``claimRef``) and keeps
the claim's access modes: ReadWriteOnce, ReadWriteMany and ReadOnlyMany all work, because every node
reaches the data; agents refuse a ReadWriteOnce claim that a running VMI of any node already attaches.

The claim's ``volume.kubernetes.io/selected-node`` is set when it has none (the node of a VMI using it,
else the first node that runs an agent), because that is the node where a DataVolume controller
runs the claim's import. ``WaitForFirstConsumer`` classes are provisioned at once like ``Immediate``
ones: the volume fits every node.

Reclaim: ``Retain`` keeps the directory; ``Delete`` has a node's agent remove it once the volume is
``Released`` (this controller writes :data:`RECLAIM_NODE_ANNOTATION` on the volume, the agent of that node
removes the data and then the PersistentVolume; :mod:`kubevisor.agent.sharedvolumes`).

Owner of: PersistentVolumes with ``pv.kubernetes.io/provisioned-by: kubevisor.io/shared`` (creation, the
reclaim-node annotation), the ``selected-node`` annotation of claims of shared classes. Keys: a claim's
``namespace/name``; ``pv:<name>`` for a released volume.
"""

from __future__ import annotations

import logging
import posixpath

from kubevisor.api import storage
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer, object_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.provisioning import (
    SHARED_PROFILE,
    SHARED_PROVISIONER,
    agent_nodes,
    claimed_volume,
    claims_of_vmi,
    consumer_node,
    requested_size,
    volume_name,
)
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError

__all__ = [
    "RECLAIM_NODE_ANNOTATION",
    "SHARED_PROFILE",
    "SHARED_PROVISIONER",
    "SharedProvisioner",
    "volume_source",
]

log = logging.getLogger(__name__)

RECLAIM_NODE_ANNOTATION = "kubevisor.io/reclaim-node"
"""On a released shared volume under reclaimPolicy Delete: the node whose agent deletes its data."""
PV_KEY = "pv:"
_HOST_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")


class ClassError(ValueError):
    """The storage class's parameters do not describe a shared volume; the message says what to fix."""


def _absolute(value: str, field: str, sc_name: str) -> str:
    normal = posixpath.normpath(value)
    if not value.startswith("/") or normal == "/" or ".." in value.split("/"):
        raise ClassError(
            f"StorageClass {sc_name}: parameters.{field} {value!r} must be an absolute directory path "
            "other than / (without ..)"
        )
    return normal


def volume_source(sc: Obj, name: str) -> dict[str, object]:
    """The PersistentVolume ``spec`` source of volume ``name`` of class ``sc``: ``{"nfs": ...}`` or
    ``{"hostPath": ...}``; :class:`ClassError` when the parameters are wrong."""
    sc_name = sc["metadata"]["name"]
    params = {str(k): str(v) for k, v in (sc.get("parameters") or {}).items()}
    known = {"path", "server", "share"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ClassError(
            f"StorageClass {sc_name}: parameters {', '.join(unknown)} are not known to {SHARED_PROVISIONER}; "
            "use path (a directory every node mounts) or server and share (an NFS export)"
        )
    if "path" in params:
        if "server" in params or "share" in params:
            raise ClassError(
                f"StorageClass {sc_name}: parameters.path and parameters.server/share exclude each other; "
                "use one kind"
            )
        directory = _absolute(params["path"], "path", sc_name)
        return {"hostPath": {"path": posixpath.join(directory, name), "type": "DirectoryOrCreate"}}
    server, share = params.get("server", ""), params.get("share", "")
    if not server or not share:
        raise ClassError(
            f"StorageClass {sc_name}: set parameters.path (a directory every node mounts at that path), or "
            "parameters.server and parameters.share (an NFS server and its exported directory)"
        )
    if not set(server) <= _HOST_CHARS or server.startswith("-"):
        raise ClassError(
            f"StorageClass {sc_name}: parameters.server {server!r} is not a host name or IP address"
        )
    directory = _absolute(share, "share", sc_name)
    return {"nfs": {"server": server, "path": posixpath.join(directory, name)}}


class SharedProvisioner(Controller):
    """Provisions claims of ``kubevisor.io/shared`` classes; hands released volumes to an agent."""

    name = "shared-provisioner"

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.nodes: ResourceClient = client.resource("v1", "nodes")
        self.classes: ResourceClient = client.resource("storage.k8s.io/v1", "storageclasses")
        self.vmis: ResourceClient = client.resource("kubevirt.io/v1", "virtualmachineinstances")
        self.recorder = EventRecorder(client, SHARED_PROVISIONER)
        self._claims: Informer | None = None
        self._volumes: Informer | None = None
        self._nodes: Informer | None = None
        self._classes: Informer | None = None
        self._vmis: Informer | None = None

    def setup(self) -> None:
        self._claims = self.watch(self.pvcs)
        self._volumes = self.watch(self.pvs, keys=self._volume_keys)
        self._nodes = self.watch(self.nodes, keys=lambda _: self._waiting())
        self._classes = self.watch(self.classes, keys=lambda _: self._waiting())
        self._vmis = self.watch(self.vmis, keys=self._vmi_keys)

    def _waiting(self) -> list[str]:
        keys: list[str] = []
        if self._claims is not None:
            keys += [
                object_key(c) for c in self._claims.list() if not (c.get("spec") or {}).get("volumeName")
            ]
        if self._volumes is not None:
            keys += [PV_KEY + v["metadata"]["name"] for v in self._volumes.list() if self._released(v)]
        return keys

    @staticmethod
    def _volume_keys(pv: Obj) -> list[str]:
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        keys = [PV_KEY + pv["metadata"]["name"]]
        if ref.get("namespace") and ref.get("name"):
            keys.append(f"{ref['namespace']}/{ref['name']}")
        return keys

    @staticmethod
    def _vmi_keys(vmi: Obj) -> list[str]:
        namespace = vmi["metadata"].get("namespace")
        return [f"{namespace}/{name}" for name in claims_of_vmi(vmi)]

    @staticmethod
    def _released(pv: Obj) -> bool:
        annotations = pv["metadata"].get("annotations") or {}
        return (
            annotations.get(storage.PROVISIONED_BY_ANNOTATION) == SHARED_PROVISIONER
            and (pv.get("status") or {}).get("phase") == "Released"
            and (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") == "Delete"
        )

    async def reconcile(self, key: str) -> Result | None:
        if key.startswith(PV_KEY):
            await self._reclaim(key.removeprefix(PV_KEY))
            return None
        return await self._claim(key)

    def _agent_nodes(self) -> list[str]:
        assert self._nodes is not None
        return agent_nodes(self._nodes.list())

    async def _reclaim(self, name: str) -> None:
        assert self._volumes is not None
        pv = self._volumes.get(name)
        if pv is None or not self._released(pv) or pv["metadata"].get("deletionTimestamp"):
            return
        current = (pv["metadata"].get("annotations") or {}).get(RECLAIM_NODE_ANNOTATION)
        nodes = self._agent_nodes()
        if current in nodes:
            return
        if not nodes:
            raise TemporaryError(f"PersistentVolume {name}: no node agent to delete its data yet", delay=5.0)
        await self.pvs.patch(name, {"metadata": {"annotations": {RECLAIM_NODE_ANNOTATION: nodes[0]}}})

    async def _claim(self, key: str) -> Result | None:
        assert self._claims is not None and self._classes is not None and self._volumes is not None
        pvc = self._claims.get(key)
        if pvc is None or pvc["metadata"].get("deletionTimestamp"):
            return None
        spec = pvc.get("spec") or {}
        if not spec.get("storageClassName"):
            return None
        sc = self._classes.get(str(spec["storageClassName"]))
        if sc is None or sc.get("provisioner") != SHARED_PROVISIONER:
            return None
        await self._select_node(pvc)
        if spec.get("volumeName") or self._volumes.get(volume_name(pvc)) is not None:
            return None  # provisioned; the binder binds it
        return await self._provision(pvc, sc)

    async def _select_node(self, pvc: Obj) -> None:
        """Where the claim's DataVolume import (if any) runs: a consumer's node, else an agent's."""
        assert self._vmis is not None
        meta = pvc["metadata"]
        if (meta.get("annotations") or {}).get(storage.SELECTED_NODE_ANNOTATION):
            return
        node = consumer_node(pvc, self._vmis.list())
        nodes = self._agent_nodes()
        node = node or (nodes[0] if nodes else None)
        if node is None:
            raise TemporaryError("no node agent has registered yet", delay=2.0)
        await self.pvcs.patch(
            meta["name"],
            {"metadata": {"annotations": {storage.SELECTED_NODE_ANNOTATION: node}}},
            meta["namespace"],
        )

    async def _fail(self, pvc: Obj, message: str) -> None:
        await self.recorder.warning(
            pvc, "ProvisioningFailed", f"PersistentVolumeClaim {object_key(pvc)}: {message}"
        )

    async def _provision(self, pvc: Obj, sc: Obj) -> Result | None:
        spec = pvc.get("spec") or {}
        requested = requested_size(pvc)
        if not requested or requested <= 0:
            await self._fail(
                pvc, "spec.resources.requests.storage is missing or not a size; set it (e.g. 10Gi)"
            )
            return None
        if (spec.get("volumeMode") or "Filesystem") != "Filesystem":
            await self._fail(
                pvc,
                f"storage class {sc['metadata']['name']} provides only volumeMode Filesystem; leave "
                "spec.volumeMode empty or set Filesystem",
            )
            return None
        name = volume_name(pvc)
        try:
            source = volume_source(sc, name)
        except ClassError as e:
            await self._fail(pvc, f"{e}; fix the class (its parameters cannot change: create a new one)")
            return None
        pv = claimed_volume(pvc, sc, SHARED_PROVISIONER, "Filesystem", source)
        try:
            await self.pvs.create(pv)
        except errors.AlreadyExistsError:
            return None
        where = next(iter(source.values()))
        log.info("provisioned shared volume %s for claim %s: %s", name, object_key(pvc), where)
        await self.recorder.normal(
            pvc, "ProvisioningSucceeded", f"Successfully provisioned shared volume {name}"
        )
        return None
