"""The DataVolume controller (cdi.kubevirt.io/v1beta1): a claim per DataVolume, filled by an import.

What CDI's import controller and importer pod do, split as kubevisor splits deciding from doing: this
controller creates the claim and turns what the node agent reports into the DataVolume's status; the
agent of the node holding the volume (:mod:`kubevisor.agent.importing`) runs the import.

1. The claim: named as the DataVolume, owned by it (controller, blockOwnerDeletion: deleting the
   DataVolume deletes the claim), from ``spec.pvc`` or ``spec.storage``. Empty ``storageClassName``: the
   default class (annotation ``storageclass.kubernetes.io/is-default-class``); ``spec.storage`` without
   access modes or volume mode: the class's StorageProfile ``status.claimPropertySets[0]``. Where the
   data comes from is written on the claim (``cdi.kubevirt.io/storage.import.*`` annotations).
2. Binding: for a ``WaitForFirstConsumer`` class the import is the first consumer (as CDI's importer
   pod is, without ``HonorWaitForFirstConsumer``), so this controller sets the claim's
   ``volume.kubernetes.io/selected-node`` to the first node with a volume directory, and the provisioner
   provisions there.
3. Bound: the claim is labelled ``kubevisor.io/import-node=<the volume's node>``, which starts the
   agent's import there.
4. Status from the claim's annotations (written by the agent): phase ``Pending`` -> ``PVCBound`` ->
   ``ImportScheduled`` -> ``ImportInProgress`` (``progress``) -> ``Succeeded`` | ``Failed``;
   ``restartCount``; conditions ``Bound``, ``Running``, ``Ready`` with CDI's reasons.

Sources: ``http``, ``blank`` and ``registry`` are imported; ``upload`` claims are upload targets
(annotation ``cdi.kubevirt.io/storage.upload.target``), filled through the apiserver's upload proxy
(``_upload_status``: ``UploadScheduled`` -> ``UploadReady`` -> ``Succeeded`` | ``Failed``). Others
(``pvc``, ``s3``, ...) get their claim and then stay ``Pending`` with a ``Running`` condition saying so.

Owner of DataVolume ``status`` and of the claims it creates (spec, the ``storage.import.*`` annotations,
the import-node label). Keys: ``namespace/name`` of the DataVolume.
"""

from __future__ import annotations

import copy
import logging
import time

from kubevisor.api import cdi, storage, upload
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.provisioning import node_of_volume
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError

__all__ = ["DataVolumeController", "claim_for"]

log = logging.getLogger(__name__)

GROUP_VERSION = "cdi.kubevirt.io/v1beta1"
IMPORTED = ("http", "blank", "registry")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def source_kind(dv: Obj) -> str | None:
    source = (dv.get("spec") or {}).get("source") or {}
    for kind in cdi.SOURCE_KINDS:
        if source.get(kind) is not None:
            return kind
    return None


def claim_for(dv: Obj, default_class: str | None, profile: Obj | None) -> Obj:
    """The claim a DataVolume asks for (see the module docstring, step 1)."""
    spec = dv.get("spec") or {}
    meta = dv["metadata"]
    if spec.get("pvc") is not None:
        claim_spec = copy.deepcopy(spec["pvc"])
    else:
        claim_spec = copy.deepcopy(spec.get("storage") or {})
        sets = ((profile or {}).get("status") or {}).get("claimPropertySets") or []
        if sets:
            claim_spec.setdefault("accessModes", list(sets[0].get("accessModes") or []) or None)
            claim_spec.setdefault("volumeMode", sets[0].get("volumeMode"))
        claim_spec = {k: v for k, v in claim_spec.items() if v is not None}
    if not claim_spec.get("storageClassName") and default_class:
        claim_spec["storageClassName"] = default_class
    claim_spec.setdefault("accessModes", ["ReadWriteOnce"])
    annotations: dict[str, str] = {}
    kind = source_kind(dv)
    source = (spec.get("source") or {}).get(kind or "") or {}
    if kind in IMPORTED:
        annotations[cdi.IMPORT_SOURCE_ANNOTATION] = str(kind)
        endpoint = source.get("url")
        if endpoint:
            annotations[cdi.IMPORT_ENDPOINT_ANNOTATION] = str(endpoint)
        if source.get("secretRef"):
            annotations[cdi.IMPORT_SECRET_ANNOTATION] = str(source["secretRef"])
        if source.get("certConfigMap"):
            annotations[cdi.IMPORT_CERT_ANNOTATION] = str(source["certConfigMap"])
    elif kind == "upload":
        annotations[upload.UPLOAD_TARGET] = ""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {"app": "containerized-data-importer"},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": GROUP_VERSION,
                    "kind": "DataVolume",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": claim_spec,
    }


def _owned(pvc: Obj, dv: Obj) -> bool:
    return any(
        ref.get("uid") == dv["metadata"].get("uid") and ref.get("controller")
        for ref in pvc["metadata"].get("ownerReferences") or []
    )


class DataVolumeController(Controller):
    """Creates each DataVolume's claim, hands the import to the node, reports status."""

    name = "datavolume"
    concurrency = 2

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.dvs: ResourceClient = client.resource(GROUP_VERSION, "datavolumes")
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self.nodes: ResourceClient = client.resource("v1", "nodes")
        self.classes: ResourceClient = client.resource("storage.k8s.io/v1", "storageclasses")
        self.profiles: ResourceClient = client.resource(GROUP_VERSION, "storageprofiles")
        self.recorder = EventRecorder(client, "datavolume-import-controller")
        self._dvs: Informer | None = None
        self._claims: Informer | None = None
        self._volumes: Informer | None = None
        self._nodes: Informer | None = None
        self._classes: Informer | None = None
        self._profiles: Informer | None = None

    def setup(self) -> None:
        self._dvs = self.watch(self.dvs)
        self._claims = self.watch(self.pvcs, keys=self._owner_keys)
        self._volumes = self.watch(self.pvs, keys=self._volume_keys)
        self._nodes = self.watch(self.nodes, keys=lambda _: self._waiting())
        self._classes = self.watch(self.classes, keys=lambda _: self._waiting())
        self._profiles = self.watch(self.profiles, keys=lambda _: self._waiting())

    def _waiting(self) -> list[str]:
        if self._dvs is None:
            return []
        return [
            f"{d['metadata']['namespace']}/{d['metadata']['name']}"
            for d in self._dvs.list()
            if (d.get("status") or {}).get("phase") in (None, "", "Pending")
        ]

    @staticmethod
    def _owner_keys(pvc: Obj) -> list[str]:
        meta = pvc.get("metadata") or {}
        return [
            f"{meta.get('namespace')}/{ref['name']}"
            for ref in meta.get("ownerReferences") or []
            if ref.get("kind") == "DataVolume" and ref.get("controller")
        ]

    @staticmethod
    def _volume_keys(pv: Obj) -> list[str]:
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        return [f"{ref['namespace']}/{ref['name']}"] if ref.get("namespace") and ref.get("name") else []

    def _default_class(self) -> str | None:
        assert self._classes is not None
        defaults = sorted(c["metadata"]["name"] for c in self._classes.list() if storage.is_default(c))
        return defaults[0] if defaults else None

    async def reconcile(self, key: str) -> Result | None:
        assert self._dvs is not None and self._claims is not None and self._profiles is not None
        dv = self._dvs.get(key)
        if dv is None or dv["metadata"].get("deletionTimestamp"):
            return None
        pvc = self._claims.get(key)
        if pvc is None:
            if (dv.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return None  # its claim was deleted afterwards; nothing is imported twice
            default_class = self._default_class()
            spec = dv.get("spec") or {}
            wanted = ((spec.get("pvc") or spec.get("storage") or {}).get("storageClassName")) or default_class
            profile = self._profiles.get(str(wanted)) if wanted else None
            try:
                pvc = await self.pvcs.create(claim_for(dv, default_class, profile))
            except errors.AlreadyExistsError:
                raise TemporaryError("the claim exists but is not in the cache yet", delay=0.5) from None
            except errors.InvalidError as e:
                await self.recorder.warning(dv, "ErrClaimNotValid", f"DataVolume {key}: {e}")
                await self._write_status(dv, "Failed", None, running=("False", "ErrClaimNotValid", str(e)))
                return None
            await self.recorder.normal(dv, "Pending", f"PVC {key.partition('/')[2]} Pending")
        if not _owned(pvc, dv):
            await self._write_status(
                dv,
                "Pending",
                pvc,
                running=(
                    "False",
                    "ErrClaimNotOwned",
                    f"claim {key} exists and is not owned by this DataVolume",
                ),
            )
            return None
        kind = source_kind(dv)
        if (pvc.get("status") or {}).get("phase") != "Bound":
            await self._select_node(pvc)
            await self._write_status(dv, "Pending", pvc)
            return None
        if kind == "upload":
            await self._upload_status(dv, pvc)
            return None
        if kind not in IMPORTED:
            message = f"source {kind!r} is not supported by this cluster yet; use http, blank or registry"
            await self._write_status(dv, "Pending", pvc, running=("False", "UnsupportedSource", message))
            return None
        node = await self._volume_node(pvc)
        labels = pvc["metadata"].get("labels") or {}
        if node and labels.get(cdi.IMPORT_NODE_LABEL) != node:
            pvc = await self.pvcs.patch(
                pvc["metadata"]["name"],
                {"metadata": {"labels": {cdi.IMPORT_NODE_LABEL: node}}},
                pvc["metadata"]["namespace"],
            )
        annotations = pvc["metadata"].get("annotations") or {}
        phase = annotations.get(cdi.POD_PHASE_ANNOTATION)
        reason = annotations.get(cdi.RUNNING_REASON_ANNOTATION)
        message = annotations.get(cdi.RUNNING_MESSAGE_ANNOTATION) or ""
        if phase == "Succeeded":
            await self._write_status(dv, "Succeeded", pvc, running=("False", "Completed", "Import Complete"))
        elif phase == "Failed":
            await self._write_status(dv, "Failed", pvc, running=("False", reason or "Error", message))
        elif phase == "Running":
            running = ("True", "Pod is running", "") if not reason else ("False", reason, message)
            await self._write_status(dv, "ImportInProgress", pvc, running=running)
        elif node:
            await self._write_status(dv, "ImportScheduled", pvc)
        else:
            await self._write_status(dv, "PVCBound", pvc)
        return None

    async def _upload_status(self, dv: Obj, pvc: Obj) -> None:
        """``source.upload`` on a bound claim: CDI's upload phases, from what the node agent that receives
        the upload (:mod:`kubevisor.agent.uploading`) writes on the claim. ``UploadScheduled`` until the
        volume's node is known, then ``UploadReady`` (the apiserver takes uploads) until the agent says
        ``Succeeded`` or ``Failed``; a failed upload may be sent again (``Running`` -> ``UploadReady``)."""
        annotations = pvc["metadata"].get("annotations") or {}
        phase = annotations.get(cdi.POD_PHASE_ANNOTATION)
        message = annotations.get(cdi.RUNNING_MESSAGE_ANNOTATION) or ""
        if phase == "Succeeded":
            await self._write_status(dv, "Succeeded", pvc, running=("False", "Completed", "Upload Complete"))
        elif phase == "Failed":
            await self._write_status(dv, "Failed", pvc, running=("False", "Error", message))
        elif await self._volume_node(pvc):
            await self._write_status(dv, "UploadReady", pvc, running=("True", "Pod is running", ""))
        else:
            await self._write_status(dv, "UploadScheduled", pvc)

    async def _select_node(self, pvc: Obj) -> None:
        """WaitForFirstConsumer: the import is the first consumer (module docstring, step 2)."""
        assert self._classes is not None and self._nodes is not None
        class_name = (pvc.get("spec") or {}).get("storageClassName")
        sc = self._classes.get(str(class_name)) if class_name else None
        annotations = pvc["metadata"].get("annotations") or {}
        if (
            sc is None
            or sc.get("volumeBindingMode") != "WaitForFirstConsumer"
            or annotations.get(storage.SELECTED_NODE_ANNOTATION)
        ):
            return
        nodes = sorted(
            n["metadata"]["name"]
            for n in self._nodes.list()
            if (n["metadata"].get("annotations") or {}).get(storage.VOLUME_DIR_ANNOTATION)
        )
        if not nodes:
            return  # a node's registration brings us back
        await self.pvcs.patch(
            pvc["metadata"]["name"],
            {"metadata": {"annotations": {storage.SELECTED_NODE_ANNOTATION: nodes[0]}}},
            pvc["metadata"]["namespace"],
        )

    async def _volume_node(self, pvc: Obj) -> str | None:
        assert self._volumes is not None
        pv = self._volumes.get(str((pvc.get("spec") or {}).get("volumeName")))
        if pv is None:
            return None
        return node_of_volume(pv) or (pvc["metadata"].get("annotations") or {}).get(
            storage.SELECTED_NODE_ANNOTATION
        )

    async def _write_status(
        self, dv: Obj, phase: str, pvc: Obj | None, *, running: tuple[str, str, str] | None = None
    ) -> None:
        old = dv.get("status") or {}
        annotations = ((pvc or {}).get("metadata") or {}).get("annotations") or {}
        bound = (pvc or {}).get("status", {}).get("phase") == "Bound"
        name = dv["metadata"]["name"]
        status: Obj = {"phase": phase}
        if pvc is not None:
            status["claimName"] = pvc["metadata"]["name"]
        progress = annotations.get(cdi.PROGRESS_ANNOTATION)
        if phase == "Succeeded":
            status["progress"] = "100.0%"
        elif progress:
            status["progress"] = progress
        else:
            status["progress"] = "N/A"
        status["restartCount"] = int(annotations.get(cdi.POD_RESTARTS_ANNOTATION) or 0)
        if running is None:
            running = ("False", "", "")
        ready = phase == "Succeeded"
        wanted = {
            "Bound": (
                "True" if bound else "False",
                "Bound" if bound else "Pending",
                f"PVC {name} Bound" if bound else f"PVC {name} Pending",
            ),
            "Running": running,
            "Ready": ("True" if ready else "False", "" if ready else phase, ""),
        }
        previous = {c.get("type"): c for c in old.get("conditions") or []}
        conditions = []
        now = _now()
        for kind, (value, reason, message) in wanted.items():
            prev = previous.get(kind) or {}
            condition: Obj = {
                "type": kind,
                "status": value,
                "lastHeartbeatTime": prev.get("lastHeartbeatTime") or now,
                "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == value else now,
            }
            if reason:
                condition["reason"] = reason
            if message:
                condition["message"] = message
            if {k: prev.get(k) for k in ("status", "reason", "message")} != {
                k: condition.get(k) for k in ("status", "reason", "message")
            }:
                condition["lastHeartbeatTime"] = now
            conditions.append(condition)
        status["conditions"] = conditions
        if status == old:
            return
        if old.get("phase") != phase:
            if phase == "Succeeded":
                await self.recorder.normal(dv, "ImportSucceeded", f"Successfully imported into PVC {name}")
            elif phase == "Failed":
                await self.recorder.warning(dv, "ImportFailed", f"DataVolume {name}: {running[2]}")
        try:
            await self.dvs.update_status(dict(dv, status=status))
        except errors.NotFoundError:
            return
