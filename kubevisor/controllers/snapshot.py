"""The snapshot and restore controllers (snapshot.kubevirt.io/v1beta1), KubeVirt's virt-controller part.

They decide; the node agent (:mod:`kubevisor.agent.snapshots`) does the copies. The hand-off is written
into the objects:

Snapshot (owner of VirtualMachineSnapshot ``status``; creator of its VirtualMachineSnapshotContent):

1. The source VM's claim-backed volumes (``persistentVolumeClaim``, ``dataVolume``) are included; every
   other volume (containerDisk, emptyDisk, cloud-init, ...) is excluded and listed in
   ``status.snapshotVolumes.excludedVolumes``, as KubeVirt does.
2. The content ``vmsnapshot-content-<snapshot uid>`` is created with the VM (metadata and spec), one
   volume backup per included volume (the claim as it is now), the node that takes the data
   (:data:`~kubevisor.api.snapshot.NODE_LABEL`: the VMI's node when it runs, else the claim's volume's
   node affinity, else the first Ready node), the deadline (``spec.failureDeadline``, default 5m, ``0s``:
   none) and the agent's finalizer. Unless ``deletionPolicy`` is Retain, the content is owned by the
   snapshot: deleting the snapshot deletes the content (garbage collector), and the agent frees the space.
3. The content's status becomes the snapshot's: ``readyToUse`` -> phase Succeeded (Ready True), an error
   or the deadline passing -> phase Failed; indications (``Online``, ``GuestAgent``/``NoGuestAgent``) are
   what the agent did.

Restore (owner of VirtualMachineRestore ``status``, and of the target VM's ``status.restoreInProgress``):

1. The snapshot must be ready. A target other than the snapshot's VM is restored as a new VM (it must
   not exist): claims ``restore-<restore uid>-<volume>`` (the claim's spec as it was, ``volumeName`` set)
   bound to PersistentVolumes the agent makes on the content's node from the snapshot's images, then the
   VM with the snapshot's spec and those claims; steps 2-4 are for a restore onto the snapshot's VM.
2. While a VMI of the target exists (the target is "not ready"), ``spec.targetReadinessPolicy`` decides,
   as KubeVirt's restore controller does (event ``RestoreTargetNotReady``):

   - ``WaitGracePeriod`` (the default): wait with ``Ready=False``, reason ``VMRunning``, saying to stop the
     VM; if the VM still runs 5 minutes after the restore was created, the restore fails (``Failure``
     condition: "Restore target failed to be ready within 5m0s ...");
   - ``WaitEventually``: wait the same way, for as long as it takes;
   - ``StopTarget``: stop the VM (its ``stop`` subresource, as ``virtctl stop``: runStrategy ``Always``
     becomes ``Halted``, other strategies get a stop request) and proceed once its VMI is gone;
   - ``FailImmediate``: fail at once ("Restore target VMI must be powered off before restore operation").

   A failed restore (``Failure`` condition) is final: nothing more is done for it, as in KubeVirt. The
   policy matters only while the target runs: a restore whose target is stopped (or does not exist)
   proceeds whatever the policy.
3. The VM's ``status.restoreInProgress`` is set (the VM controller starts no VMI while it is), then the
   restore is labelled for the content's node; the agent copies the images back over the claims' images
   (in place: the VM keeps its claims, see the README) and annotates the restore.
4. The VM's spec (``template``, ``dataVolumeTemplates``) becomes the one in the content (its run strategy
   is kept), ``restoreInProgress`` is cleared, and the restore is ``complete`` with ``restoreTime``.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from kubevisor.api import snapshot as api
from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer, object_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result

__all__ = ["RestoreController", "SnapshotController", "claim_volumes", "parse_duration"]

log = logging.getLogger(__name__)

KV = "kubevirt.io/v1"
DEFAULT_DEADLINE = 300.0
"""KubeVirt's default failureDeadline (5m)."""
RETRY = 5.0
DEFAULT_GRACE_PERIOD = 300.0
"""KubeVirt's ``snapshotv1.DefaultGracePeriod`` (5m): how long ``WaitGracePeriod`` waits for the target."""
READINESS_POLICIES = ("WaitGracePeriod", "StopTarget", "FailImmediate", "WaitEventually")
"""``spec.targetReadinessPolicy`` values; the first is the default."""
NOT_READY_EVENT = "RestoreTargetNotReady"
VMI_EXISTS = "Restore target VMI still exists, please stop the restore target to proceed with restore"
STOP_TARGET = "Automatically stopping restore target for restore operation"
TARGET_NOT_READY = "Restore target VMI must be powered off before restore operation"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """A Go duration (``5m``, ``1h30m``, ``0s``) in seconds; ValueError if it is not one."""
    text = value.strip()
    if text in ("0", ""):
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {value!r}: use e.g. 5m, 90s or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def claim_volumes(vm: Obj) -> tuple[dict[str, str], list[str]]:
    """({volume: claim} of the claim-backed volumes, [other volumes]) of a VM's template."""
    included: dict[str, str] = {}
    excluded: list[str] = []
    for volume in (((vm.get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
            volume.get("dataVolume") or {}
        ).get("name")
        if claim:
            included[str(volume["name"])] = str(claim)
        else:
            excluded.append(str(volume.get("name")))
    return included, excluded


def _now() -> str:
    return timestamps.format_time(timestamps.now())


def _conditions(old: Obj, **wanted: tuple[str, str, str]) -> list[Obj]:
    """Conditions ``type -> (status, reason, message)``, keeping lastTransitionTime when unchanged."""
    previous = {c.get("type"): c for c in old.get("conditions") or []}
    now = _now()
    result = []
    for type_, (status, reason, message) in wanted.items():
        prior = previous.get(type_) or {}
        result.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": prior.get("lastTransitionTime")
                if prior.get("status") == status
                else now,
            }
        )
    return result


def go_duration(seconds: float) -> str:
    """``300`` -> ``5m0s``, as Go prints a duration (KubeVirt's messages quote its grace period so)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{seconds:g}s"


def _failed(status: Obj) -> bool:
    return any(
        c.get("type") == "Failure" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def _node_ready(node: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


class SnapshotController(Controller):
    """Creates each snapshot's content and reports the snapshot's status (see the module docstring)."""

    name = "vmsnapshot"

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.snapshots: ResourceClient = client.resource(api.API_VERSION, "virtualmachinesnapshots")
        self.contents: ResourceClient = client.resource(api.API_VERSION, "virtualmachinesnapshotcontents")
        self.vms: ResourceClient = client.resource(KV, "virtualmachines")
        self.vmis: ResourceClient = client.resource(KV, "virtualmachineinstances")
        self._snapshots: Informer | None = None
        self._contents: Informer | None = None
        self._vms: Informer | None = None
        self._vmis: Informer | None = None

    def setup(self) -> None:
        self._snapshots = self.watch(self.snapshots)
        self._contents = self.watch(self.contents, keys=self._content_keys)
        self._vms = self.watch(self.vms, keys=self._source_keys)
        self._vmis = self.watch(self.vmis, keys=self._source_keys)

    @staticmethod
    def _content_keys(content: Obj) -> list[str]:
        name = (content.get("spec") or {}).get("virtualMachineSnapshotName")
        return [f"{content['metadata'].get('namespace')}/{name}"] if name else []

    def _source_keys(self, vm: Obj) -> list[str]:
        if self._snapshots is None:
            return []
        meta = vm["metadata"]
        return [
            object_key(s)
            for s in self._snapshots.list()
            if s["metadata"].get("namespace") == meta.get("namespace")
            and ((s.get("spec") or {}).get("source") or {}).get("name") == meta.get("name")
        ]

    async def reconcile(self, key: str) -> Result | None:
        assert self._snapshots is not None and self._contents is not None and self._vms is not None
        snap = self._snapshots.get(key)
        if snap is None or snap["metadata"].get("deletionTimestamp"):
            return None
        status = snap.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return None
        meta, spec = snap["metadata"], snap.get("spec") or {}
        namespace = str(meta["namespace"])
        try:
            deadline_seconds = parse_duration(str(spec.get("failureDeadline") or "5m"))
        except ValueError as e:
            await self._write(snap, phase="Failed", error=f"spec.failureDeadline: {e}")
            return None
        created = timestamps.parse_time(str(meta.get("creationTimestamp") or _now())).timestamp()
        deadline = created + deadline_seconds if deadline_seconds > 0 else None
        content_name = f"vmsnapshot-content-{meta['uid']}"
        content = self._contents.get(f"{namespace}/{content_name}")
        if content is None:
            if deadline is not None and time.time() >= deadline:
                await self._write(
                    snap, phase="Failed", error="the snapshot did not start within failureDeadline"
                )
                return None
            vm = self._vms.get(f"{namespace}/{(spec.get('source') or {}).get('name')}")
            result: Result | None = None
            if vm is None:
                source = (spec.get("source") or {}).get("name")
                await self._write(
                    snap,
                    phase="InProgress",
                    progressing=("False", "SourceNotFound", f"VirtualMachine {source} does not exist"),
                )
            else:
                result = await self._create_content(snap, vm, content_name, deadline)
            if deadline is None:
                return result
            wait = max(deadline - time.time(), 0.0) + 0.1  # look again at the deadline at the latest
            return Result(requeue_after=min(wait, (result.requeue_after if result else None) or wait))
        cstatus = content.get("status") or {}
        annotations = content["metadata"].get("annotations") or {}
        indications = [i for i in str(annotations.get(api.INDICATIONS_ANNOTATION) or "").split(",") if i]
        if cstatus.get("readyToUse"):
            await self._write(
                snap,
                phase="Succeeded",
                content=content_name,
                ready=True,
                creation_time=cstatus.get("creationTime") or _now(),
                indications=indications,
            )
            return None
        if cstatus.get("error"):
            await self._write(snap, phase="Failed", error=str((cstatus["error"] or {}).get("message")))
            return None
        if deadline is not None and time.time() >= deadline:
            await self._write(
                snap, phase="Failed", error="the snapshot did not finish within its failureDeadline"
            )
            return None
        await self._write(snap, phase="InProgress")
        return Result(requeue_after=deadline - time.time() + 0.1) if deadline is not None else None

    async def _create_content(self, snap: Obj, vm: Obj, name: str, deadline: float | None) -> Result | None:
        meta, spec = snap["metadata"], snap.get("spec") or {}
        namespace = str(meta["namespace"])
        included, excluded = claim_volumes(vm)
        pvcs = self.client.resource("v1", "persistentvolumeclaims")
        backups = []
        claim_objects: dict[str, Obj] = {}
        for volume, claim in included.items():
            try:
                pvc = await pvcs.get(claim, namespace)
            except errors.NotFoundError:
                await self._write(
                    snap,
                    phase="InProgress",
                    progressing=("False", "ClaimNotFound", f"volume {volume}: claim {claim} does not exist"),
                )
                return Result(requeue_after=RETRY)
            claim_objects[volume] = pvc
            pmeta = pvc["metadata"]
            backups.append(
                {
                    "volumeName": volume,
                    "persistentVolumeClaim": {
                        "metadata": {
                            k: pmeta[k]
                            for k in ("name", "namespace", "labels", "annotations")
                            if pmeta.get(k)
                        },
                        "spec": pvc.get("spec") or {},
                    },
                    "volumeSnapshotName": f"vmsnapshot-{meta['uid']}-volume-{volume}",
                }
            )
        node = await self._node_for(vm, list(claim_objects.values()))
        if node is None:
            await self._write(
                snap, phase="InProgress", progressing=("False", "NoNode", "no Ready node to take the data")
            )
            return Result(requeue_after=RETRY)
        vm_meta = vm["metadata"]
        annotations = {}
        if deadline is not None:
            annotations[api.DEADLINE_ANNOTATION] = timestamps.format_time(
                datetime.fromtimestamp(deadline, UTC)
            )
        content_meta: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": {api.NODE_LABEL: node},
            "annotations": annotations,
            "finalizers": [api.CONTENT_FINALIZER],
        }
        if (spec.get("deletionPolicy") or "Delete") != "Retain":
            content_meta["ownerReferences"] = [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": "VirtualMachineSnapshot",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        body = {
            "apiVersion": api.API_VERSION,
            "kind": "VirtualMachineSnapshotContent",
            "metadata": content_meta,
            "spec": {
                "source": {
                    "virtualMachine": {
                        "metadata": {
                            k: vm_meta[k]
                            for k in ("name", "namespace", "uid", "labels", "annotations")
                            if vm_meta.get(k)
                        },
                        "spec": copy.deepcopy(vm.get("spec") or {}),
                    }
                },
                "virtualMachineSnapshotName": meta["name"],
                "volumeBackups": backups,
            },
        }
        try:
            await self.contents.create(body)
        except errors.AlreadyExistsError:
            pass
        vmi = self._vmis.get(object_key(vm)) if self._vmis is not None else None
        await self._write(
            snap,
            phase="InProgress",
            content=name,
            source_uid=str(vm_meta.get("uid") or ""),
            volumes=(sorted(included), excluded),
            indications=["Online"] if vmi is not None else [],
        )
        return None

    async def _node_for(self, vm: Obj, claims: list[Obj]) -> str | None:
        """The node that takes the data: the VMI's, the claims' volumes', or the first Ready node."""
        vmi = self._vmis.get(object_key(vm)) if self._vmis is not None else None
        node = ((vmi or {}).get("status") or {}).get("nodeName")
        if node:
            return str(node)
        pvs = self.client.resource("v1", "persistentvolumes")
        for pvc in claims:
            volume = (pvc.get("spec") or {}).get("volumeName")
            if not volume:
                continue
            try:
                pv = await pvs.get(str(volume))
            except errors.NotFoundError:
                continue
            terms = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get(
                "nodeSelectorTerms"
            ) or []
            for term in terms:
                for expr in term.get("matchExpressions") or []:
                    if expr.get("key") == "kubernetes.io/hostname" and expr.get("operator") == "In":
                        values = expr.get("values") or []
                        if values:
                            return str(values[0])
        nodes = await self.client.resource("v1", "nodes").list()
        ready = sorted(str(n["metadata"]["name"]) for n in nodes if _node_ready(n))
        return ready[0] if ready else None

    async def _write(
        self,
        snap: Obj,
        *,
        phase: str,
        ready: bool = False,
        error: str | None = None,
        progressing: tuple[str, str, str] | None = None,
        content: str | None = None,
        source_uid: str | None = None,
        volumes: tuple[list[str], list[str]] | None = None,
        indications: list[str] | None = None,
        creation_time: str | None = None,
    ) -> None:
        old = snap.get("status") or {}
        status = copy.deepcopy(old)
        status["phase"] = phase
        status["readyToUse"] = ready
        if content is not None:
            status["virtualMachineSnapshotContentName"] = content
        if source_uid:
            status["sourceUID"] = source_uid
        if volumes is not None:
            status["snapshotVolumes"] = {"includedVolumes": volumes[0], "excludedVolumes": volumes[1]}
        if indications is not None:
            status["indications"] = indications
        if creation_time is not None:
            status["creationTime"] = creation_time
        if phase == "Succeeded":
            conditions = _conditions(
                old,
                Progressing=("False", "Operation complete", "Operation complete"),
                Ready=("True", "Operation complete", "Operation complete"),
            )
        elif phase == "Failed":
            status["error"] = {"time": _now(), "message": error}
            conditions = _conditions(
                old,
                Progressing=("False", "Failed", error or "failed"),
                Ready=("False", "Failed", error or "failed"),
                Failure=("True", "Failed", error or "failed"),
            )
        else:
            conditions = _conditions(
                old,
                Progressing=progressing or ("True", "Source locked and operation in progress", ""),
                Ready=("False", "Not ready", "the data is being copied"),
            )
        status["conditions"] = conditions
        if _same(status, old):
            return
        try:
            await self.snapshots.update_status(dict(snap, status=status))
        except errors.NotFoundError:
            return


def _same(new: Obj, old: Obj) -> bool:
    """Equal but for timestamps (no write when nothing changed)."""

    def strip(status: Obj) -> Obj:
        result = {k: v for k, v in status.items() if k not in ("restoreTime", "creationTime")}
        result["conditions"] = [
            {k: v for k, v in c.items() if k not in ("lastTransitionTime", "lastProbeTime")}
            for c in status.get("conditions") or []
        ]
        if isinstance(status.get("error"), dict):
            result["error"] = {k: v for k, v in status["error"].items() if k != "time"}
        return result

    return strip(new) == strip(old) and bool(new.get("creationTime")) == bool(old.get("creationTime"))


class RestoreController(Controller):
    """Puts a stopped VM back to a snapshot (see the module docstring)."""

    name = "vmrestore"

    def __init__(
        self,
        client: Client,
        *,
        concurrency: int | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
    ) -> None:
        super().__init__(client, concurrency=concurrency)
        self.grace_period = grace_period
        """Seconds ``WaitGracePeriod`` waits for a running target to stop (KubeVirt: 5 minutes)."""
        self.recorder = EventRecorder(client, "restore-controller")
        self.restores: ResourceClient = client.resource(api.API_VERSION, "virtualmachinerestores")
        self.snapshots: ResourceClient = client.resource(api.API_VERSION, "virtualmachinesnapshots")
        self.contents: ResourceClient = client.resource(api.API_VERSION, "virtualmachinesnapshotcontents")
        self.vms: ResourceClient = client.resource(KV, "virtualmachines")
        self.vmis: ResourceClient = client.resource(KV, "virtualmachineinstances")
        self._restores: Informer | None = None
        self._snapshots: Informer | None = None
        self._contents: Informer | None = None
        self._vms: Informer | None = None
        self._vmis: Informer | None = None

    def setup(self) -> None:
        self._restores = self.watch(self.restores)
        self._snapshots = self.watch(self.snapshots, keys=self._namespace_keys)
        self._contents = self.watch(self.contents, keys=self._namespace_keys)
        self._vms = self.watch(self.vms, keys=self._namespace_keys)
        self._vmis = self.watch(self.vmis, keys=self._namespace_keys)

    def _namespace_keys(self, obj: Obj) -> list[str]:
        """The restores of the object's namespace that are not complete (few: restores are rare)."""
        if self._restores is None:
            return []
        namespace = obj["metadata"].get("namespace")
        return [
            object_key(r)
            for r in self._restores.list()
            if r["metadata"].get("namespace") == namespace and not (r.get("status") or {}).get("complete")
        ]

    async def reconcile(self, key: str) -> Result | None:
        assert self._restores is not None and self._snapshots is not None and self._contents is not None
        assert self._vms is not None and self._vmis is not None
        restore = self._restores.get(key)
        if restore is None or restore["metadata"].get("deletionTimestamp"):
            return None
        if (restore.get("status") or {}).get("complete") or _failed(restore.get("status") or {}):
            return None  # done, or failed for good
        meta, spec = restore["metadata"], restore.get("spec") or {}
        namespace = str(meta["namespace"])
        target = str((spec.get("target") or {}).get("name"))
        snap_name = str(spec.get("virtualMachineSnapshotName"))
        snap = self._snapshots.get(f"{namespace}/{snap_name}")
        snap_status = (snap or {}).get("status") or {}
        if snap is None or not snap_status.get("readyToUse"):
            why = "does not exist" if snap is None else "is not ready to use"
            await self._wait(restore, "SnapshotNotReady", f"VirtualMachineSnapshot {snap_name} {why}")
            return None
        content_name = str(snap_status.get("virtualMachineSnapshotContentName") or "")
        content = self._contents.get(f"{namespace}/{content_name}")
        if content is None:
            await self._wait(
                restore, "ContentNotFound", f"VirtualMachineSnapshotContent {content_name} is gone"
            )
            return None
        source = ((content.get("spec") or {}).get("source") or {}).get("virtualMachine") or {}
        source_name = (source.get("metadata") or {}).get("name")
        vm = self._vms.get(f"{namespace}/{target}")
        annotations = meta.get("annotations") or {}
        if source_name != target:
            return await self._restore_new(restore, content, target, vm)
        if vm is None:
            await self._wait(restore, "TargetNotFound", f"VirtualMachine {target} does not exist")
            return None
        if annotations.get(api.RESTORE_ERROR_ANNOTATION):
            await self._release(vm, meta["name"])
            await self._write(
                restore, ready=False, reason="Failed", message=str(annotations[api.RESTORE_ERROR_ANNOTATION])
            )
            return None
        if annotations.get(api.VOLUMES_RESTORED_ANNOTATION):
            await self._restore_spec(vm, source)
            await self._release(vm, meta["name"])
            await self._write(restore, ready=True, complete=True, content=content)
            return None
        if self._vmis.get(f"{namespace}/{target}") is not None:
            return await self._target_not_ready(restore, vm)
        in_progress = (vm.get("status") or {}).get("restoreInProgress")
        if in_progress and in_progress != meta["name"]:
            await self._wait(restore, "RestoreInProgress", f"VirtualMachineRestore {in_progress} runs first")
            return None
        if not in_progress:
            status = dict(vm.get("status") or {}, restoreInProgress=meta["name"])
            await self.vms.update_status(dict(vm, status=status))  # 409: requeued, re-read
            return None
        await self._hand_to_agent(restore, content)
        return None

    async def _target_not_ready(self, restore: Obj, vm: Obj) -> Result | None:
        """The target VM runs: what ``spec.targetReadinessPolicy`` says (module docstring, step 2)."""
        meta = restore["metadata"]
        target = str(vm["metadata"]["name"])
        policy = str((restore.get("spec") or {}).get("targetReadinessPolicy") or READINESS_POLICIES[0])
        how = f"virtctl stop {target}, or runStrategy Halted"
        if policy == "FailImmediate":
            await self._fail(restore, vm, TARGET_NOT_READY)
            return None
        if policy == "StopTarget":
            if self._ready_reason(restore) == "StoppingTarget":
                return None  # asked once; the VMI's deletion brings us back
            await self._notify(restore, STOP_TARGET)
            await self._wait(restore, "StoppingTarget", f"{STOP_TARGET}: stopping VirtualMachine {target}")
            vm_path = f"namespaces/{meta['namespace']}/virtualmachines/{target}"
            path = f"/apis/subresources.kubevirt.io/v1/{vm_path}/stop"
            try:
                await self.client.request("PUT", path, body={})
            except errors.ConflictError:
                pass  # already stopping (or stopped): the VMI's deletion brings us back
            except errors.NotFoundError:
                return None
            return None
        if policy == "WaitEventually":
            await self._notify(restore, VMI_EXISTS)
            await self._wait(
                restore,
                "VMRunning",
                "Waiting for target VM to be powered off. Please stop the restore target to proceed with "
                f"restore ({how}); the restore proceeds once it is stopped",
            )
            return None
        if policy != "WaitGracePeriod":
            await self._fail(
                restore,
                vm,
                f"spec.targetReadinessPolicy: unknown policy {policy!r}; use one of "
                f"{', '.join(READINESS_POLICIES)}",
            )
            return None
        created = timestamps.parse_time(str(meta.get("creationTimestamp") or _now())).timestamp()
        deadline = created + self.grace_period
        grace = go_duration(self.grace_period)
        if time.time() >= deadline:
            await self._fail(
                restore,
                vm,
                f"Restore target failed to be ready within {grace}. Please power off the target VM before "
                "attempting restore",
            )
            return None
        await self._notify(restore, VMI_EXISTS)
        await self._wait(
            restore,
            "VMRunning",
            "Waiting for target VM to be powered off. Please stop the restore target to proceed with restore "
            f"({how}), or the operation will fail after {grace}",
        )
        return Result(requeue_after=max(deadline - time.time(), 0.0) + 0.1)

    async def _notify(self, restore: Obj, message: str) -> None:
        """The ``RestoreTargetNotReady`` event, once per state (not at every pass)."""
        if self._ready_reason(restore) in ("VMRunning", "StoppingTarget"):
            return
        await self.recorder.warning(restore, NOT_READY_EVENT, message)

    @staticmethod
    def _ready_reason(restore: Obj) -> str | None:
        for c in (restore.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                return str(c.get("reason") or "")
        return None

    async def _fail(self, restore: Obj, vm: Obj | None, message: str) -> None:
        """Fail the restore for good (a ``Failure`` condition), releasing the VM if it held it."""
        if vm is not None:
            await self._release(vm, str(restore["metadata"]["name"]))
        await self.recorder.warning(
            restore, "VirtualMachineRestoreError", f"VirtualMachineRestore failed {message}"
        )
        await self._write(restore, ready=False, reason="Failed", message=message)

    async def _hand_to_agent(self, restore: Obj, content: Obj) -> None:
        """Label the restore for the content's node (the agent copies the images), or say it waits."""
        node = (content["metadata"].get("labels") or {}).get(api.NODE_LABEL)
        if (restore["metadata"].get("labels") or {}).get(api.NODE_LABEL) != node:
            body = copy.deepcopy(restore)
            body["metadata"].setdefault("labels", {})[api.NODE_LABEL] = node
            annotations = body["metadata"].setdefault("annotations", {})
            annotations[api.RESTORE_CONTENT_ANNOTATION] = content["metadata"]["name"]
            await self.restores.update(body)
            return
        await self._write(
            restore, ready=False, reason="RestoringVolumes", message=f"copying images on {node}"
        )

    async def _restore_new(self, restore: Obj, content: Obj, target: str, vm: Obj | None) -> Result | None:
        """Restore as a new VM ``target``: new claims ``restore-<uid>-<volume>`` on new volumes the agent
        fills, then the VM (the snapshot's spec, its claim volumes renamed)."""
        meta = restore["metadata"]
        uid = str(meta["uid"])
        if (
            vm is not None
            and (vm["metadata"].get("annotations") or {}).get(api.RESTORED_BY_ANNOTATION) != uid
        ):
            await self._wait(
                restore,
                "TargetExists",
                f"spec.target.name: VirtualMachine {target} exists and is not the snapshot's VM; restoring "
                "into another existing VM is not supported: delete it or name a new VM",
            )
            return None
        annotations = meta.get("annotations") or {}
        if annotations.get(api.RESTORE_ERROR_ANNOTATION):
            message = str(annotations[api.RESTORE_ERROR_ANNOTATION])
            await self._write(restore, ready=False, reason="Failed", message=message)
            return None
        if not annotations.get(api.VOLUMES_RESTORED_ANNOTATION):
            await self._hand_to_agent(restore, content)
            return None
        namespace = str(meta["namespace"])
        renamed: dict[str, str] = {}
        pvcs = self.client.resource("v1", "persistentvolumeclaims")
        for backup in (content.get("spec") or {}).get("volumeBackups") or []:
            volume = str(backup["volumeName"])
            claim = api.restored_claim(uid, volume)
            renamed[volume] = claim
            saved = backup.get("persistentVolumeClaim") or {}
            spec = copy.deepcopy(saved.get("spec") or {})
            for key in ("dataSource", "dataSourceRef"):
                spec.pop(key, None)
            spec["volumeName"] = claim  # the volume the agent made: no provisioner may pick another
            labels = (saved.get("metadata") or {}).get("labels") or {}
            body = {"metadata": {"name": claim, "labels": labels}, "spec": spec}
            try:
                await pvcs.create(body, namespace)
            except errors.AlreadyExistsError:
                pass
        if vm is None:
            await self._create_vm(restore, content, target, renamed)
            return None  # the VM's event brings us back
        await self._write(restore, ready=True, complete=True, content=content, claims=renamed)
        return None

    async def _create_vm(self, restore: Obj, content: Obj, target: str, renamed: dict[str, str]) -> None:
        source = ((content.get("spec") or {}).get("source") or {}).get("virtualMachine") or {}
        spec = copy.deepcopy(source.get("spec") or {})
        spec.pop("dataVolumeTemplates", None)
        template = (spec.get("template") or {}).get("spec") or {}
        template["volumes"] = [
            {"name": v["name"], "persistentVolumeClaim": {"claimName": renamed[v["name"]]}}
            if v.get("name") in renamed
            else v
            for v in template.get("volumes") or []
        ]
        labels = (source.get("metadata") or {}).get("labels") or {}
        body = {
            "apiVersion": KV,
            "kind": "VirtualMachine",
            "metadata": {
                "name": target,
                "labels": labels,
                "annotations": {api.RESTORED_BY_ANNOTATION: str(restore["metadata"]["uid"])},
            },
            "spec": spec,
        }
        try:
            await self.vms.create(body, str(restore["metadata"]["namespace"]))
        except errors.AlreadyExistsError:
            pass

    async def _restore_spec(self, vm: Obj, source: Obj) -> None:
        spec = copy.deepcopy(vm.get("spec") or {})
        saved = source.get("spec") or {}
        spec["template"] = copy.deepcopy(saved.get("template") or {})
        if saved.get("dataVolumeTemplates"):
            spec["dataVolumeTemplates"] = copy.deepcopy(saved["dataVolumeTemplates"])
        else:
            spec.pop("dataVolumeTemplates", None)
        if spec == vm.get("spec"):
            return
        await self.vms.update(dict(vm, spec=spec))  # 409: requeued, re-read

    async def _release(self, vm: Obj, name: str) -> None:
        status = dict(vm.get("status") or {})
        if status.get("restoreInProgress") != name:
            return
        status.pop("restoreInProgress")
        try:
            await self.vms.update_status(dict(vm, status=status))
        except errors.NotFoundError:
            return

    async def _wait(self, restore: Obj, reason: str, message: str) -> None:
        await self._write(restore, ready=False, reason=reason, message=message, progressing=False)

    async def _write(
        self,
        restore: Obj,
        *,
        ready: bool,
        reason: str = "Operation complete",
        message: str = "Operation complete",
        complete: bool = False,
        progressing: bool = True,
        content: Obj | None = None,
        claims: dict[str, str] | None = None,
    ) -> None:
        old = restore.get("status") or {}
        status = copy.deepcopy(old)
        status["complete"] = complete
        if complete:
            status["restoreTime"] = _now()
            status["conditions"] = _conditions(
                old,
                Progressing=("False", reason, message),
                Ready=("True", reason, message),
            )
            status["restores"] = [
                {
                    "volumeName": b.get("volumeName"),
                    "persistentVolumeClaim": (claims or {}).get(str(b.get("volumeName")))
                    or ((b.get("persistentVolumeClaim") or {}).get("metadata") or {}).get("name"),
                    "volumeSnapshotName": b.get("volumeSnapshotName"),
                }
                for b in ((content or {}).get("spec") or {}).get("volumeBackups") or []
            ]
        else:
            failed = reason == "Failed"
            status["conditions"] = _conditions(
                old,
                Progressing=("True" if progressing and not failed else "False", reason, message),
                Ready=("False", reason, message),
                **({"Failure": ("True", reason, message)} if failed else {}),
            )
        if _same(status, old):
            return
        try:
            await self.restores.update_status(dict(restore, status=status))
        except errors.NotFoundError:
            return
