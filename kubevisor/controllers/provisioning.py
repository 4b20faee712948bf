"""The local provisioner: a PersistentVolume on one node for each claim of a ``kubevisor.io/local`` class,
and a CDI StorageProfile for each storage class.

Why a controller and the agent both: deciding where a volume goes is cluster-wide (which node, is there
room), creating its image touches one node, which only that node's agent does. So this controller creates
the PersistentVolume object, pre-bound to the claim (``claimRef``, as Kubernetes' external provisioners
do) with ``spec.hostPath`` ``<node's volume dir>/<pv-name>`` and a node affinity to that node; the agent of
that node (:mod:`kubevisor.agent.volumes`) creates the directory and its raw ``disk.img`` of the size,
and removes them when the volume is released under reclaimPolicy Delete. The binder
(:mod:`kubevisor.controllers.volumebinding`) then binds the claim as for any volume.

Which node:

- ``Immediate``: the node the claim's ``volume.kubernetes.io/selected-node`` names, else the first node by
  name whose agent published its volume directory.
- ``WaitForFirstConsumer``: only once the claim has ``volume.kubernetes.io/selected-node``. kubevisor has
  no pod scheduler to set it, so the simplest correct rule is used: this controller sets it to the node a
  VMI using the claim (``persistentVolumeClaim``, ``dataVolume`` or ``ephemeral`` volume) was scheduled
  to (``status.nodeName``), and the DataVolume controller sets it for a claim it imports into (CDI's
  importer pod is the first consumer unless ``HonorWaitForFirstConsumer`` is on). The VMI's agent waits
  for the claim meanwhile.

volumeMode: ``Filesystem`` or ``Block``, the claim's, on its volume. Both are a raw ``disk.img``; the
node's agent gives QEMU a Block one as a loop device (:mod:`kubevisor.agent.blockdevices`).

Capacity: the agent publishes how many bytes local volumes may take on its node in all (Node annotation
``kubevisor.io/volume-capacity-bytes``: free space plus what their images already hold). A claim is
provisioned only if its size plus the capacities of the node's local volumes stays within that (thick
accounting: images are sparse, but each may fill up), else it is refused with a ``ProvisioningFailed``
Event and tried again later.

Owner of: PersistentVolumes with ``pv.kubernetes.io/provisioned-by: kubevisor.io/local`` (creation), the
``selected-node`` annotation of claims consumed by VMIs, and StorageProfile objects (spec untouched;
status from the class). Keys: a claim's ``namespace/name``; ``class:<name>`` for a class's profile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from decimal import Decimal

from kubevisor.api import storage
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer, object_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError

__all__ = [
    "LocalProvisioner",
    "agent_nodes",
    "claimed_volume",
    "claims_of_vmi",
    "consumer_node",
    "requested_size",
    "volume_name",
]

log = logging.getLogger(__name__)

CLASS_KEY = "class:"
HOSTNAME_LABEL = "kubernetes.io/hostname"
FULL_RETRY = 30.0
"""Seconds before a claim that did not fit is tried again (the agent's free space may have grown)."""
LOCAL_PROFILE = [{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}]
"""What a local volume supports: one node, a raw image file."""
SHARED_PROVISIONER = "kubevisor.io/shared"
"""The shared provisioner's name (:mod:`kubevisor.controllers.sharedprovisioning`)."""
SHARED_PROFILE = [
    {"accessModes": ["ReadWriteMany"], "volumeMode": "Filesystem"},
    {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"},
]
"""What a shared volume supports: every node, a raw image file."""


def volume_name(pvc: Obj) -> str:
    """``pvc-<claim uid>``, the name Kubernetes' provisioners give a claim's volume."""
    return f"pvc-{pvc['metadata']['uid']}"


def claims_of_vmi(vmi: Obj) -> set[str]:
    """The claims a VMI's volumes use (persistentVolumeClaim, dataVolume, ephemeral)."""
    names: set[str] = set()
    for volume in (vmi.get("spec") or {}).get("volumes") or []:
        for name in (
            (volume.get("persistentVolumeClaim") or {}).get("claimName"),
            (volume.get("dataVolume") or {}).get("name"),
            ((volume.get("ephemeral") or {}).get("persistentVolumeClaim") or {}).get("claimName"),
        ):
            if name:
                names.add(str(name))
    return names


def consumer_node(pvc: Obj, vmis: Iterable[Obj]) -> str | None:
    """The node of the first VMI (by creation) among ``vmis`` that uses the claim and has a node."""
    meta = pvc["metadata"]
    for vmi in sorted(vmis, key=lambda v: str(v["metadata"].get("creationTimestamp"))):
        node = (vmi.get("status") or {}).get("nodeName")
        if (
            node
            and vmi["metadata"].get("namespace") == meta["namespace"]
            and meta["name"] in claims_of_vmi(vmi)
        ):
            return str(node)
    return None


def agent_nodes(nodes: Iterable[Obj]) -> list[str]:
    """The names (sorted) of the nodes whose agent has published its volume directory."""
    return sorted(
        n["metadata"]["name"]
        for n in nodes
        if (n["metadata"].get("annotations") or {}).get(storage.VOLUME_DIR_ANNOTATION)
    )


def requested_size(pvc: Obj) -> Decimal | None:
    """The claim's ``spec.resources.requests.storage`` in bytes; None when missing or not a quantity."""
    spec = pvc.get("spec") or {}
    return parse_quantity(((spec.get("resources") or {}).get("requests") or {}).get("storage"))


def claimed_volume(pvc: Obj, sc: Obj, provisioner: str, volume_mode: str, source: Obj) -> Obj:
    """The PersistentVolume :func:`volume_name` a provisioner makes for the claim: pre-bound to it
    (``claimRef``), its size and access modes, the class's name and reclaim policy, and ``source``
    (``hostPath``/``nfs``, ``nodeAffinity``) in its spec."""
    spec = pvc.get("spec") or {}
    meta = pvc["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(pvc),
            "annotations": {storage.PROVISIONED_BY_ANNOTATION: provisioner},
        },
        "spec": {
            "capacity": {"storage": str(spec["resources"]["requests"]["storage"])},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy") or "Delete",
            "storageClassName": sc["metadata"]["name"],
            "volumeMode": volume_mode,
            **source,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def node_of_volume(pv: Obj) -> str | None:
    """The node a local volume's node affinity names."""
    affinity = ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}
    for term in affinity.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == HOSTNAME_LABEL and expr.get("operator") == "In" and expr.get("values"):
                return str(expr["values"][0])
    return None


class LocalProvisioner(Controller):
    """Provisions claims of ``kubevisor.io/local`` classes; keeps StorageProfiles."""

    name = "local-provisioner"
    concurrency = 1
    """One worker: two claims must not both be measured against the same free space at once."""

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.nodes: ResourceClient = client.resource("v1", "nodes")
        self.classes: ResourceClient = client.resource("storage.k8s.io/v1", "storageclasses")
        self.profiles: ResourceClient = client.resource("cdi.kubevirt.io/v1beta1", "storageprofiles")
        self.vmis: ResourceClient = client.resource("kubevirt.io/v1", "virtualmachineinstances")
        self.recorder = EventRecorder(client, "kubevisor.io/local")
        self._claims: Informer | None = None
        self._volumes: Informer | None = None
        self._nodes: Informer | None = None
        self._classes: Informer | None = None
        self._profiles: Informer | None = None
        self._vmis: Informer | None = None

    def setup(self) -> None:
        self._claims = self.watch(self.pvcs)
        self._volumes = self.watch(self.pvs, keys=self._volume_keys)
        self._nodes = self.watch(self.nodes, keys=lambda _: self._waiting_claims())
        self._classes = self.watch(
            self.classes, keys=lambda c: [CLASS_KEY + c["metadata"]["name"], *self._waiting_claims()]
        )
        self._profiles = self.watch(self.profiles, keys=lambda p: [CLASS_KEY + p["metadata"]["name"]])
        self._vmis = self.watch(self.vmis, keys=self._vmi_keys)

    def _waiting_claims(self) -> list[str]:
        if self._claims is None:
            return []
        return [object_key(c) for c in self._claims.list() if not (c.get("spec") or {}).get("volumeName")]

    @staticmethod
    def _volume_keys(pv: Obj) -> list[str]:
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        return [f"{ref['namespace']}/{ref['name']}"] if ref.get("namespace") and ref.get("name") else []

    @staticmethod
    def _vmi_keys(vmi: Obj) -> list[str]:
        if not (vmi.get("status") or {}).get("nodeName"):
            return []
        namespace = vmi["metadata"].get("namespace")
        return [f"{namespace}/{name}" for name in claims_of_vmi(vmi)]

    async def reconcile(self, key: str) -> Result | None:
        if key.startswith(CLASS_KEY):
            await self._profile(key.removeprefix(CLASS_KEY))
            return None
        return await self._claim(key)

    # --- storage profiles --------------------------------------------------------------------------

    async def _profile(self, name: str) -> None:
        assert self._classes is not None and self._profiles is not None
        sc = self._classes.get(name)
        profile = self._profiles.get(name)
        if sc is None:
            if profile is not None:
                try:
                    await self.profiles.delete(name)
                except errors.NotFoundError:
                    pass
            return
        if profile is None:
            try:
                profile = await self.profiles.create(
                    {
                        "apiVersion": "cdi.kubevirt.io/v1beta1",
                        "kind": "StorageProfile",
                        "metadata": {"name": name},
                        "spec": {},
                    }
                )
            except errors.AlreadyExistsError:
                return  # its event brings us back
        spec = profile.get("spec") or {}
        status: Obj = {"storageClass": name, "provisioner": sc.get("provisioner")}
        sets = spec.get("claimPropertySets") or (
            LOCAL_PROFILE
            if sc.get("provisioner") == storage.LOCAL_PROVISIONER
            else SHARED_PROFILE
            if sc.get("provisioner") == SHARED_PROVISIONER
            else None
        )
        if sets:
            status["claimPropertySets"] = sets
        status["cloneStrategy"] = spec.get("cloneStrategy") or "copy"
        if profile.get("status") != status:
            await self.profiles.update_status(dict(profile, status=status))

    # --- claims ------------------------------------------------------------------------------------

    async def _claim(self, key: str) -> Result | None:
        assert self._claims is not None and self._classes is not None and self._volumes is not None
        pvc = self._claims.get(key)
        if pvc is None or pvc["metadata"].get("deletionTimestamp"):
            return None
        spec = pvc.get("spec") or {}
        if spec.get("volumeName") or not spec.get("storageClassName"):
            return None
        sc = self._classes.get(str(spec["storageClassName"]))
        if sc is None or sc.get("provisioner") != storage.LOCAL_PROVISIONER:
            return None
        if self._volumes.get(volume_name(pvc)) is not None:
            return None  # provisioned; the binder binds it
        annotations = pvc["metadata"].get("annotations") or {}
        node = annotations.get(storage.SELECTED_NODE_ANNOTATION)
        if not node and sc.get("volumeBindingMode") == "WaitForFirstConsumer":
            assert self._vmis is not None
            node = consumer_node(pvc, self._vmis.list())
            if not node:
                return None  # a VMI's scheduling (or a DataVolume import) brings us back
            await self.pvcs.patch(
                pvc["metadata"]["name"],
                {"metadata": {"annotations": {storage.SELECTED_NODE_ANNOTATION: node}}},
                pvc["metadata"]["namespace"],
            )
        if not node:
            node = self._first_node()
            if node is None:
                raise TemporaryError("no node has published its volume directory yet", delay=2.0)
        return await self._provision(pvc, sc, str(node))

    def _first_node(self) -> str | None:
        assert self._nodes is not None
        names = agent_nodes(self._nodes.list())
        return names[0] if names else None

    def _reserved(self, node_name: str) -> Decimal:
        """The capacities of the local volumes on ``node_name``."""
        assert self._volumes is not None
        total = Decimal(0)
        for pv in self._volumes.list():
            annotations = pv["metadata"].get("annotations") or {}
            if (
                annotations.get(storage.PROVISIONED_BY_ANNOTATION) == storage.LOCAL_PROVISIONER
                and node_of_volume(pv) == node_name
            ):
                total += parse_quantity(((pv.get("spec") or {}).get("capacity") or {}).get("storage")) or 0
        return total

    async def _provision(self, pvc: Obj, sc: Obj, node_name: str) -> Result | None:
        assert self._nodes is not None
        node = self._nodes.get(node_name)
        node_annotations = ((node or {}).get("metadata") or {}).get("annotations") or {}
        directory = node_annotations.get(storage.VOLUME_DIR_ANNOTATION)
        if node is None or not directory:
            raise TemporaryError(f"node {node_name} has not published its volume directory yet", delay=2.0)
        spec = pvc.get("spec") or {}
        requested = requested_size(pvc)
        key = object_key(pvc)
        if not requested or requested <= 0:
            await self.recorder.warning(
                pvc,
                "ProvisioningFailed",
                f"PersistentVolumeClaim {key}: spec.resources.requests.storage is missing or not a size; "
                "set it (e.g. 10Gi)",
            )
            return None
        mode = spec.get("volumeMode") or "Filesystem"
        if mode not in ("Filesystem", "Block"):
            await self.recorder.warning(
                pvc,
                "ProvisioningFailed",
                f"PersistentVolumeClaim {key}: spec.volumeMode {mode!r} is not Filesystem or Block",
            )
            return None
        capacity = parse_quantity(
            node_annotations.get(storage.VOLUME_CAPACITY_ANNOTATION)
            or node_annotations.get(storage.VOLUME_FREE_ANNOTATION)
        )
        reserved = self._reserved(node_name)
        if capacity is not None and requested + reserved > capacity:
            await self.recorder.warning(
                pvc,
                "ProvisioningFailed",
                f"PersistentVolumeClaim {key}: {int(requested)} bytes do not fit on node {node_name}: its "
                f"local volumes may take {int(capacity)} bytes in {directory} and {int(reserved)} are "
                "already provisioned; ask for less or free space on the node",
            )
            return Result(requeue_after=FULL_RETRY)
        name = volume_name(pvc)
        affinity = {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node_name]}]}
        source: Obj = {
            "hostPath": {"path": f"{str(directory).rstrip('/')}/{name}", "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [affinity]}},
        }
        # Block: the same raw image, given to QEMU as a loop device
        pv = claimed_volume(pvc, sc, storage.LOCAL_PROVISIONER, mode, source)
        try:
            await self.pvs.create(pv)
        except errors.AlreadyExistsError:
            return None
        log.info("provisioned volume %s for claim %s on node %s", name, key, node_name)
        await self.recorder.normal(
            pvc, "ProvisioningSucceeded", f"Successfully provisioned volume {name} on node {node_name}"
        )
        return None
