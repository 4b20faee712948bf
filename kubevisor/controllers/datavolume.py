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

Sources: ``http``, ``s3``, ``blank`` and ``registry`` are imported; ``upload`` claims are upload targets
(annotation ``cdi.kubevirt.io/storage.upload.target``), filled through the apiserver's upload proxy
(``_upload_status``: ``UploadScheduled`` -> ``UploadReady`` -> ``Succeeded`` | ``Failed``). ``pvc`` is a
clone (:mod:`kubevisor.controllers.cloning`: ``CloneScheduled`` -> ``CloneInProgress`` -> ``Succeeded``; the
node agent copies the image). ``snapshot`` (a VolumeSnapshot, or a ``sourceRef`` DataSource naming one) is
restored the same way (same phases; the rules are in :mod:`kubevisor.controllers.cloning`, the copy from the
snapshot's data on its node in :mod:`kubevisor.agent.volumesnapshots`). Others get their claim and then stay
``Pending`` with a ``Running`` condition saying so.

``spec.sourceRef`` (a DataSource, as VMs' ``dataVolumeTemplates`` commonly use) is resolved with
:func:`kubevisor.controllers.datasource.resolve_source_ref` to the claim the DataSource names, and that
claim is cloned as above (the claim chosen is fixed once the target claim exists). Until it resolves the
DataVolume is ``Pending`` without a claim, its conditions saying why: ``CloneWithoutSource`` while the
DataSource does not exist, ``CrossNamespaceClone`` for a DataSource naming a claim outside its own
namespace, else the DataSource's own reason (``NoSource``, ...). A DataSource of another namespace needs the
creator's clone permission there, checked by the API server (:mod:`kubevisor.apiserver.cloneauth`).

Owner of DataVolume ``status`` and of the claims it creates (spec, the ``storage.import.*`` annotations,
the import-node label). Keys: ``namespace/name`` of the DataVolume.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from kubevisor.api import cdi, storage, upload, volumesnapshot
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers import cloning
from kubevisor.controllers.datasource import resolve_source_ref
from kubevisor.controllers.provisioning import node_of_volume
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError

__all__ = ["DataVolumeController", "claim_for"]

log = logging.getLogger(__name__)

GROUP_VERSION = "cdi.kubevirt.io/v1beta1"
IMPORTED = ("http", "s3", "blank", "registry")
"""Sources the node agent imports; their ``url``, ``secretRef``, ``certConfigMap`` (and http's
``checksum``) reach it as the claim's ``storage.import.*`` annotations."""


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
        if source.get("checksum"):
            annotations[cdi.IMPORT_CHECKSUM_ANNOTATION] = str(source["checksum"])
    elif kind == "upload":
        annotations[upload.UPLOAD_TARGET] = ""
    elif kind == "pvc" and (clone_source := cloning.source_of(dv)) is not None:
        annotations.update(cloning.claim_annotations(*clone_source))
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
        self._datasources: Informer | None = None
        """DataSources: ``spec.sourceRef`` resolves through them (:func:`_clone_source`)."""
        self._vmis: Informer | None = None
        """VMIs: a clone waits while its source claim is in use (:mod:`kubevisor.controllers.cloning`)."""
        self._volume_snapshots: Informer | None = None
        """VolumeSnapshots: ``spec.source.snapshot`` restores wait for theirs to be ready."""
        self._snapshot_contents: Informer | None = None
        """VolumeSnapshotContents: a restore is placed on its content's node."""

    def setup(self) -> None:
        self._dvs = self.watch(self.dvs)
        self._claims = self.watch(
            self.pvcs,
            keys=lambda pvc: (
                self._owner_keys(pvc)
                + self._clone_keys(pvc["metadata"].get("namespace"), {pvc["metadata"].get("name")})
            ),
        )
        self._datasources = self.watch(
            self.client.resource(GROUP_VERSION, "datasources"), keys=self._source_ref_keys
        )
        self._vmis = self.watch(
            self.client.resource("kubevirt.io/v1", "virtualmachineinstances"),
            keys=lambda vmi: self._clone_keys(vmi["metadata"].get("namespace"), cloning.claims_of(vmi)),
        )
        if self.client.registry.get(volumesnapshot.GROUP, volumesnapshot.VERSION, "volumesnapshots"):
            self._volume_snapshots = self.watch(
                self.client.resource(volumesnapshot.API_VERSION, "volumesnapshots"),
                keys=lambda s: self._restore_keys(s["metadata"].get("namespace"), s["metadata"].get("name")),
            )
            self._snapshot_contents = self.watch(
                self.client.resource(volumesnapshot.API_VERSION, "volumesnapshotcontents"),
                keys=lambda c: self._restore_keys(
                    ((c.get("spec") or {}).get("volumeSnapshotRef") or {}).get("namespace"),
                    ((c.get("spec") or {}).get("volumeSnapshotRef") or {}).get("name"),
                ),
            )
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

    def _clone_keys(self, namespace: str | None, names: set[Any]) -> list[str]:
        """The unfinished clones whose source is one of the claims ``names`` of ``namespace``."""
        if self._dvs is None or not names:
            return []
        keys = []
        for dv in self._dvs.list():
            source = self._clone_source(dv)
            if (
                source is not None
                and source[0] == namespace
                and source[1] in names
                and (dv.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            ):
                keys.append(f"{dv['metadata']['namespace']}/{dv['metadata']['name']}")
        return keys

    def _clone_source(self, dv: Obj) -> tuple[str, str] | None:
        """The claim a DataVolume clones (``namespace``, ``name``), or None if it is not a clone.

        ``spec.sourceRef`` (a DataSource, as KubeVirt's ``dataVolumeTemplates`` commonly use): the claim
        the DataSource names when the target claim was created (its clone-request annotation, so a
        DataSource that moves to a newer import later does not change a clone under way), else the
        claim it names now."""
        if not (dv.get("spec") or {}).get("sourceRef"):
            return cloning.source_of(dv)
        return self._referenced(dv, "pvc", cloning.CLONE_REQUEST_ANNOTATION)

    def _snapshot_source(self, dv: Obj) -> tuple[str, str] | None:
        """The VolumeSnapshot a DataVolume restores (``namespace``, ``name``), or None: from
        ``spec.source.snapshot``, or a ``sourceRef`` DataSource naming a snapshot (fixed, as for clones,
        once the target claim exists)."""
        if not (dv.get("spec") or {}).get("sourceRef"):
            return cloning.snapshot_source_of(dv)
        return self._referenced(dv, "snapshot", volumesnapshot.RESTORE_SNAPSHOT_ANNOTATION)

    def _referenced(self, dv: Obj, kind: str, annotation: str) -> tuple[str, str] | None:
        """What the ``sourceRef`` of ``dv`` leads to (a ``kind``: pvc or snapshot): as recorded in
        ``annotation`` on the DataVolume's own claim once it exists, else as the DataSource says now."""
        meta = dv["metadata"]
        target = self._claims.get(f"{meta['namespace']}/{meta['name']}") if self._claims is not None else None
        requested = ((target or {}).get("metadata", {}).get("annotations") or {}).get(annotation)
        if requested and _owned(target or {}, dv):
            namespace, _, name = str(requested).partition("/")
            return namespace, name
        resolved = resolve_source_ref(dv, self._data_source)
        ref = (resolved.source.get(kind) if resolved else None) or {}
        return (str(ref["namespace"]), str(ref["name"])) if ref else None

    def _restore_keys(self, namespace: str | None, name: str | None) -> list[str]:
        """The unfinished DataVolumes restoring the VolumeSnapshot ``namespace/name``."""
        if self._dvs is None or not name:
            return []
        return [
            f"{dv['metadata']['namespace']}/{dv['metadata']['name']}"
            for dv in self._dvs.list()
            if (dv.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and self._snapshot_source(dv) == (namespace, name)
        ]

    def _data_source(self, namespace: str, name: str) -> Obj | None:
        return self._datasources.get(f"{namespace}/{name}") if self._datasources is not None else None

    def _source_ref_keys(self, ds: Obj) -> list[str]:
        """The unfinished DataVolumes whose ``spec.sourceRef`` names the DataSource ``ds``."""
        if self._dvs is None:
            return []
        meta = ds.get("metadata") or {}
        keys = []
        for dv in self._dvs.list():
            ref = (dv.get("spec") or {}).get("sourceRef") or {}
            namespace = ref.get("namespace") or dv["metadata"].get("namespace")
            if (
                ref
                and (namespace, ref.get("name")) == (meta.get("namespace"), meta.get("name"))
                and (dv.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            ):
                keys.append(f"{dv['metadata']['namespace']}/{dv['metadata']['name']}")
        return keys

    async def _wait_for_source_ref(self, dv: Obj) -> bool:
        """Before the claim exists: True (and ``Pending`` written, with the reason) while ``sourceRef``
        does not lead to a claim to clone."""
        resolved = resolve_source_ref(dv, self._data_source)
        if resolved is None or resolved.reason is None:  # a pvc (a clone) or a snapshot (a restore)
            return False
        reason, message = resolved.reason, resolved.message
        running = [c for c in (dv.get("status") or {}).get("conditions") or [] if c.get("type") == "Running"]
        if not running or running[0].get("reason") != reason:
            await self.recorder.warning(dv, reason, message)
        await self._write_status(
            dv,
            "Pending",
            None,
            running=("False", reason, message),
            bound=("Unknown", reason, message),
            ready_reason=reason,
        )
        return True

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
            if await self._wait_for_source_ref(dv):
                return None  # a DataSource change brings us back
            default_class = self._default_class()
            spec = dv.get("spec") or {}
            wanted = ((spec.get("pvc") or spec.get("storage") or {}).get("storageClassName")) or default_class
            profile = self._profiles.get(str(wanted)) if wanted else None
            body = claim_for(dv, default_class, profile)
            clone_source = self._clone_source(dv)
            if clone_source is not None:
                checked = await self._check_clone_source(dv, *clone_source)
                if checked is None:
                    return None
                if checked.size:
                    body["spec"].setdefault("resources", {}).setdefault("requests", {})["storage"] = (
                        checked.size
                    )
                body["metadata"]["annotations"].update(cloning.claim_annotations(*clone_source))
            snapshot_source = self._snapshot_source(dv)
            if snapshot_source is not None:
                restore = await self._check_snapshot_source(dv, *snapshot_source)
                if restore is None:
                    return None
                size, content = restore
                if size:
                    body["spec"].setdefault("resources", {}).setdefault("requests", {})["storage"] = size
                body["metadata"]["annotations"].update(
                    cloning.snapshot_claim_annotations(*snapshot_source, content)
                )
            try:
                pvc = await self.pvcs.create(body)
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
        clone_source = self._clone_source(dv)
        snapshot_source = self._snapshot_source(dv) if clone_source is None else None
        if (pvc.get("status") or {}).get("phase") != "Bound":
            preferred = self._source_node(*clone_source) if clone_source else self._content_node(pvc)
            await self._select_node(pvc, preferred)
            await self._write_status(dv, "Pending", pvc)
            return None
        if clone_source is not None:
            return await self._clone_status(dv, pvc, *clone_source)
        if snapshot_source is not None:
            return await self._restore_status(dv, pvc, *snapshot_source)
        if kind == "upload":
            await self._upload_status(dv, pvc)
            return None
        if kind not in IMPORTED:
            message = f"source {kind!r} is not supported by this cluster yet; use http, s3, blank or registry"
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

    # --- clones (spec.source.pvc; the rules are in kubevisor.controllers.cloning) -----------------------

    def _source_node(self, namespace: str, name: str) -> str | None:
        """The node of the volume the claim ``namespace/name`` is bound to, if known."""
        assert self._claims is not None and self._volumes is not None
        source = self._claims.get(f"{namespace}/{name}")
        volume = ((source or {}).get("spec") or {}).get("volumeName")
        pv = self._volumes.get(str(volume)) if volume else None
        if pv is None:
            return None
        annotations = ((source or {}).get("metadata") or {}).get("annotations") or {}
        return node_of_volume(pv) or annotations.get(storage.SELECTED_NODE_ANNOTATION)

    async def _check_clone_source(self, dv: Obj, namespace: str, name: str) -> cloning.SourceCheck | None:
        """Before the target claim exists: None (and the status written) while it must not be created."""
        assert self._claims is not None
        checked = cloning.check_source(dv, self._claims.get(f"{namespace}/{name}"), namespace, name)
        if not checked.phase:
            return checked
        await self._hold(dv, checked)
        return None

    # --- restores (spec.source.snapshot; the rules are in kubevisor.controllers.cloning) ----------------

    def _content_node(self, pvc: Obj) -> str | None:
        """The node holding the data of the snapshot a claim is restored from, if it is one."""
        name = (pvc["metadata"].get("annotations") or {}).get(volumesnapshot.RESTORE_CONTENT_ANNOTATION)
        content = self._snapshot_contents.get(str(name)) if name and self._snapshot_contents else None
        return ((content or {}).get("metadata", {}).get("labels") or {}).get(volumesnapshot.NODE_LABEL)

    async def _check_snapshot_source(
        self, dv: Obj, namespace: str, name: str
    ) -> tuple[str | None, str] | None:
        """Before the target claim exists: (the size to request if none is given, the snapshot's content),
        or None (and the status written) while the claim must not be created."""
        key = f"{namespace}/{name}"
        snap = self._volume_snapshots.get(key) if self._volume_snapshots is not None else None
        checked = cloning.check_snapshot(dv, snap, namespace, name)
        if not checked.phase and snap is not None:
            return checked.size, str(snap["status"]["boundVolumeSnapshotContentName"])
        await self._hold(dv, checked)
        return None

    async def _restore_status(self, dv: Obj, pvc: Obj, namespace: str, name: str) -> Result | None:
        """A bound restore target: hand the copy to the content's node, report it (as clones)."""
        annotations = pvc["metadata"].get("annotations") or {}
        phase = annotations.get(cdi.POD_PHASE_ANNOTATION)
        reason = annotations.get(cdi.RUNNING_REASON_ANNOTATION)
        message = annotations.get(cdi.RUNNING_MESSAGE_ANNOTATION) or ""
        if phase == "Succeeded":
            await self._write_status(dv, "Succeeded", pvc, running=("False", "Completed", "Clone Complete"))
            return None
        if phase == "Failed":
            await self._write_status(dv, "Failed", pvc, running=("False", reason or "Error", message))
            return None
        labels = pvc["metadata"].get("labels") or {}
        if phase == "Running" and labels.get(cdi.IMPORT_NODE_LABEL):
            running = ("True", "Pod is running", "") if not reason else ("False", reason, message)
            await self._write_status(dv, "CloneInProgress", pvc, running=running)
            return None
        content_name = annotations.get(volumesnapshot.RESTORE_CONTENT_ANNOTATION)
        content = (
            self._snapshot_contents.get(str(content_name))
            if content_name and self._snapshot_contents
            else None
        )
        node = await self._volume_node(pvc)
        decided = cloning.snapshot_gate(content, namespace, name, target_node=node)
        if decided.phase == "Failed":
            await self._write_status(dv, "Failed", pvc, running=("False", decided.reason, decided.message))
            return None
        if decided.ready:
            await self._hand_to_node(dv, pvc, node, f"Restoring snapshot {namespace}/{name}")
        else:
            await self._write_status(dv, "CloneScheduled", pvc)
        return None

    async def _hand_to_node(self, dv: Obj, pvc: Obj, node: str | None, what: str) -> None:
        """Label the target claim for ``node``'s agent (once, with a ``CloneScheduled`` Event saying
        ``what``), and write phase ``CloneScheduled``."""
        meta = pvc["metadata"]
        if (meta.get("labels") or {}).get(cdi.IMPORT_NODE_LABEL) != node:
            await self.recorder.normal(
                dv,
                "CloneScheduled",
                f"{what} into {meta['namespace']}/{meta['name']} scheduled on node {node}",
            )
            await self.pvcs.patch(
                meta["name"], {"metadata": {"labels": {cdi.IMPORT_NODE_LABEL: node}}}, meta["namespace"]
            )
        await self._write_status(dv, "CloneScheduled", pvc)

    async def _hold(self, dv: Obj, checked: cloning.SourceCheck) -> None:
        """Write why the target claim of a clone or restore is not created (yet)."""
        if (dv.get("status") or {}).get("conditions") is None or (
            (dv.get("status") or {}).get("phase") != checked.phase
        ):
            await self.recorder.warning(dv, checked.reason, checked.message)
        await self._write_status(
            dv,
            checked.phase,
            None,
            running=("False", checked.reason, checked.message),
            bound=("Unknown", checked.reason, checked.message) if checked.phase == "Pending" else None,
            ready_reason=checked.reason,
        )

    async def _clone_status(self, dv: Obj, pvc: Obj, namespace: str, name: str) -> Result | None:
        """A bound clone target: hand the copy to the node once :func:`cloning.gate` allows, report it."""
        assert self._claims is not None and self._vmis is not None
        annotations = pvc["metadata"].get("annotations") or {}
        phase = annotations.get(cdi.POD_PHASE_ANNOTATION)
        reason = annotations.get(cdi.RUNNING_REASON_ANNOTATION)
        message = annotations.get(cdi.RUNNING_MESSAGE_ANNOTATION) or ""
        if phase == "Succeeded":
            await self._write_status(dv, "Succeeded", pvc, running=("False", "Completed", "Clone Complete"))
            return None
        if phase == "Failed":
            await self._write_status(dv, "Failed", pvc, running=("False", reason or "Error", message))
            return None
        labels = pvc["metadata"].get("labels") or {}
        node = await self._volume_node(pvc)
        if phase == "Running" and labels.get(cdi.IMPORT_NODE_LABEL):
            running = ("True", "Pod is running", "") if not reason else ("False", reason, message)
            await self._write_status(dv, "CloneInProgress", pvc, running=running)
            return None
        source = self._claims.get(f"{namespace}/{name}")
        decided = cloning.gate(
            source,
            namespace,
            name,
            source_node=self._source_node(namespace, name),
            target_node=node,
            vmis=self._vmis.list(),
        )
        if decided.phase == "Failed":
            await self._write_status(dv, "Failed", pvc, running=("False", decided.reason, decided.message))
            return None
        if not decided.ready:
            if decided.reason and (dv.get("status") or {}).get("phase") != "CloneScheduled":
                await self.recorder.warning(dv, decided.reason, decided.message)
            waiting = ("False", decided.reason, decided.message) if decided.reason else None
            await self._write_status(dv, "CloneScheduled", pvc, running=waiting)
            return Result(requeue_after=5.0) if decided.reason == "CloneSourceInUse" else None
        await self._hand_to_node(dv, pvc, node, f"Cloning from {namespace}/{name}")
        return None

    async def _select_node(self, pvc: Obj, preferred: str | None = None) -> None:
        """WaitForFirstConsumer: the import is the first consumer (module docstring, step 2); a clone is
        placed on its source's node (``preferred``)."""
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
        chosen = preferred if preferred in nodes else nodes[0]
        await self.pvcs.patch(
            pvc["metadata"]["name"],
            {"metadata": {"annotations": {storage.SELECTED_NODE_ANNOTATION: chosen}}},
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
        self,
        dv: Obj,
        phase: str,
        pvc: Obj | None,
        *,
        running: tuple[str, str, str] | None = None,
        bound: tuple[str, str, str] | None = None,
        ready_reason: str | None = None,
    ) -> None:
        old = dv.get("status") or {}
        annotations = ((pvc or {}).get("metadata") or {}).get("annotations") or {}
        claim_bound = (pvc or {}).get("status", {}).get("phase") == "Bound"
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
            "Bound": bound
            or (
                "True" if claim_bound else "False",
                "Bound" if claim_bound else "Pending",
                f"PVC {name} Bound" if claim_bound else f"PVC {name} Pending",
            ),
            "Running": running,
            "Ready": ("True" if ready else "False", "" if ready else (ready_reason or phase), ""),
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
        clone_source = self._clone_source(dv)
        snapshot_source = self._snapshot_source(dv) if clone_source is None else None
        if old.get("phase") != phase and clone_source is not None and phase == "Succeeded":
            await self.recorder.normal(
                dv,
                "CloneSucceeded",
                f"Successfully cloned from {'/'.join(clone_source)} into "
                f"{dv['metadata']['namespace']}/{name}",
            )
        elif old.get("phase") != phase and snapshot_source is not None and phase == "Succeeded":
            await self.recorder.normal(
                dv,
                "CloneSucceeded",
                f"Successfully cloned from snapshot {'/'.join(snapshot_source)} into "
                f"{dv['metadata']['namespace']}/{name}",
            )
        elif old.get("phase") != phase:
            if phase == "Succeeded":
                await self.recorder.normal(dv, "ImportSucceeded", f"Successfully imported into PVC {name}")
            elif phase == "Failed":
                await self.recorder.warning(dv, "ImportFailed", f"DataVolume {name}: {running[2]}")
        try:
            await self.dvs.update_status(dict(dv, status=status))
        except errors.NotFoundError:
            return
