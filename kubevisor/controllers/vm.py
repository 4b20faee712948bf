"""The VirtualMachine controller: one VirtualMachineInstance per VM, as the VM's runStrategy says.

Owner of VM ``status`` (printableStatus, ready, created, conditions, runStrategy, stateChangeRequests
consumption) and of creating and deleting the VM's VMI. The VMI carries an ownerReference to the VM
(controller, blockOwnerDeletion), so deleting a VM deletes its VMI through the garbage collector.

runStrategy semantics (KubeVirt's user guide, "Run strategies"):

- ``Always``: a VMI must exist; a finished one (Succeeded or Failed) is deleted and created again.
- ``RerunOnFailure``: like Always after a failure (with backoff: CrashLoopBackOff); a guest that shut
  down on its own (Succeeded) stays stopped.
- ``Once``: the VMI is created once; when it finishes, the VM stays stopped.
- ``Halted``: no VMI; a running one is stopped (deleted, which shuts the guest down gracefully).
- ``Manual``: the controller neither starts nor stops on its own; the start/stop subresources do, through
  ``status.stateChangeRequests``.

The deprecated ``spec.running`` maps to Always (true) and Halted (false). No VMI is created while
``status.restoreInProgress`` is set (the restore controller copies the VM's disks back meanwhile).

A VM that should be starting while a claim its template names (``persistentVolumeClaim``, ``ephemeral``,
or a ``dataVolume`` not among its ``dataVolumeTemplates``) does not exist shows ``ErrorPvcNotFound``, as
KubeVirt's does; the controller watches claims, so the status changes as soon as the claim is created.

``spec.dataVolumeTemplates``: each becomes a DataVolume of the template's name, owned by the VM (created
whatever the runStrategy, as KubeVirt does). The VMI is created only once all of them have Succeeded;
until then the VM shows ``Provisioning`` (``DataVolumeError`` when one Failed).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError

log = logging.getLogger(__name__)

GROUP_VERSION = "kubevirt.io/v1"
DV_GROUP_VERSION = "cdi.kubevirt.io/v1beta1"
FINISHED = ("Succeeded", "Failed")
CRASH_BACKOFF_START = 10.0
CRASH_BACKOFF_MAX = 300.0


def run_strategy(vm: Obj) -> str:
    spec = vm.get("spec") or {}
    strategy = spec.get("runStrategy")
    if strategy:
        return str(strategy)
    running = spec.get("running")
    if running is None:
        return "Halted"
    return "Always" if running else "Halted"


def condition(obj: Obj, kind: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            found: Obj = cond
            return found
    return None


def printable_status(vm: Obj, vmi: Obj | None, strategy: str, crash_looping: bool) -> str:
    """KubeVirt's printableStatus for a VM and its VMI (None when there is none)."""
    if (vm.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    if vmi is None:
        if crash_looping:
            return "CrashLoopBackOff"
        return "Starting" if strategy in ("Always", "RerunOnFailure") else "Stopped"
    if (vmi.get("metadata") or {}).get("deletionTimestamp"):
        return "Stopping"
    phase = (vmi.get("status") or {}).get("phase") or "Pending"
    if phase in ("", "Pending", "Scheduling"):
        scheduled = condition(vmi, "PodScheduled")
        if scheduled is not None and scheduled.get("status") == "False":
            return "ErrorUnschedulable"
        return "Starting"
    if phase == "Scheduled":
        return "Starting"
    if phase == "Running":
        paused = condition(vmi, "Paused")
        return "Paused" if paused is not None and paused.get("status") == "True" else "Running"
    if phase in FINISHED:
        return "CrashLoopBackOff" if crash_looping else "Stopped"
    return "Unknown"


def vmi_for(vm: Obj) -> Obj:
    """The VMI a VM's template describes, owned by the VM."""
    meta = vm["metadata"]
    template = copy.deepcopy((vm.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels["kubevirt.io/vm"] = meta["name"]
    vmi_meta: dict[str, Any] = {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": GROUP_VERSION,
                "kind": "VirtualMachine",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if tmeta.get("annotations"):
        vmi_meta["annotations"] = dict(tmeta["annotations"])
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "VirtualMachineInstance",
        "metadata": vmi_meta,
        "spec": template.get("spec") or {},
    }


def claim_names(vm: Obj) -> set[str]:
    """The claims the VM's template attaches (DataVolumes its own templates create are left out)."""
    spec = vm.get("spec") or {}
    templated = {((t.get("metadata") or {}).get("name")) for t in spec.get("dataVolumeTemplates") or []}
    names: set[str] = set()
    for volume in ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        claim = claim or ((volume.get("ephemeral") or {}).get("persistentVolumeClaim") or {}).get("claimName")
        data_volume = (volume.get("dataVolume") or {}).get("name")
        if data_volume and data_volume not in templated:
            claim = data_volume
        if claim:
            names.add(str(claim))
    return names


def owned_by(vmi: Obj, vm: Obj) -> bool:
    return any(
        ref.get("uid") == vm["metadata"].get("uid") and ref.get("controller")
        for ref in (vmi.get("metadata") or {}).get("ownerReferences") or []
    )


class VirtualMachineController(Controller):
    """Creates, restarts and deletes each VM's VMI; reports the VM's status."""

    name = "virtualmachine"
    concurrency = 4

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.vms: ResourceClient = client.resource(GROUP_VERSION, "virtualmachines")
        self.vmis: ResourceClient = client.resource(GROUP_VERSION, "virtualmachineinstances")
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.dvs: ResourceClient = client.resource(DV_GROUP_VERSION, "datavolumes")
        self._dv_informer: Informer | None = None
        self.recorder = EventRecorder(client, "virtualmachine-controller")
        self._pvc_informer: Informer | None = None
        self._vm_informer: Informer | None = None
        self._vmi_informer: Informer | None = None
        self._crashes: dict[str, tuple[int, float]] = {}
        """Per VM key: consecutive failures and the time before which no restart happens."""

    def setup(self) -> None:
        self._vm_informer = self.watch(self.vms)
        self._vmi_informer = self.watch(self.vmis, keys=self._owner_keys)
        self._pvc_informer = self.watch(self.pvcs, keys=self._claimant_keys)
        self._dv_informer = self.watch(self.dvs, keys=self._owner_keys)

    def _claimant_keys(self, pvc: Obj) -> list[str]:
        """The VMs of the claim's namespace whose template names it."""
        if self._vm_informer is None:
            return []
        meta = pvc.get("metadata") or {}
        return [
            f"{meta.get('namespace')}/{vm['metadata']['name']}"
            for vm in self._vm_informer.list()
            if vm["metadata"].get("namespace") == meta.get("namespace")
            and meta.get("name") in claim_names(vm)
        ]

    def _missing_claims(self, vm: Obj) -> list[str]:
        assert self._pvc_informer is not None
        namespace = vm["metadata"].get("namespace")
        return sorted(c for c in claim_names(vm) if self._pvc_informer.get(f"{namespace}/{c}") is None)

    @staticmethod
    def _owner_keys(vmi: Obj) -> list[str]:
        meta = vmi.get("metadata") or {}
        return [
            f"{meta.get('namespace')}/{ref['name']}"
            for ref in meta.get("ownerReferences") or []
            if ref.get("kind") == "VirtualMachine" and ref.get("controller")
        ]

    async def reconcile(self, key: str) -> Result | None:
        assert self._vm_informer is not None and self._vmi_informer is not None
        vm = self._vm_informer.get(key)
        if vm is None:
            self._crashes.pop(key, None)
            return None
        vmi = self._vmi_informer.get(key)
        if vmi is not None and not owned_by(vmi, vm):
            vmi = None  # a VMI of the same name that this VM does not own is left alone
        strategy = run_strategy(vm)
        requeue: float | None = None
        deleting_vm = bool(vm["metadata"].get("deletionTimestamp"))
        phase = ((vmi or {}).get("status") or {}).get("phase")
        restoring = bool((vm.get("status") or {}).get("restoreInProgress"))

        stop_requested, start_requested = self._state_requests(vm, vmi)
        provisioning = None if deleting_vm else await self._data_volumes(vm)
        if deleting_vm:
            pass
        elif vmi is not None and (stop_requested or strategy == "Halted"):
            await self._stop(vmi, vm, "stop requested" if stop_requested else "runStrategy Halted")
        elif vmi is not None and phase in FINISHED and not vmi["metadata"].get("deletionTimestamp"):
            restart = strategy == "Always" or (strategy == "RerunOnFailure" and phase == "Failed")
            restart = restart or start_requested
            if phase == "Failed":
                self._note_crash(key)
            else:
                self._crashes.pop(key, None)
            if restart:
                wait = self._restart_wait(key)
                if wait > 0:
                    requeue = wait
                else:
                    await self._delete_vmi(vmi)
        elif vmi is None and restoring:
            pass  # a VirtualMachineRestore copies the VM's disks back: no start until it is done
        elif vmi is None and (
            strategy in ("Always", "RerunOnFailure")
            or start_requested
            or (strategy == "Once" and not (vm.get("status") or {}).get("created"))
        ):
            wait = self._restart_wait(key)
            if wait > 0:
                requeue = wait
            elif provisioning is None:
                await self._create_vmi(vm)
                return Result()  # the VMI's ADDED event brings us back to write status
        await self._write_status(key, vm, vmi, strategy, provisioning=provisioning)
        return Result(requeue_after=requeue) if requeue else None

    async def _data_volumes(self, vm: Obj) -> str | None:
        """Create the VM's missing DataVolumes; ``Provisioning`` or ``DataVolumeError`` until all have
        Succeeded, then None."""
        assert self._dv_informer is not None
        meta = vm["metadata"]
        state = None
        for template in (vm.get("spec") or {}).get("dataVolumeTemplates") or []:
            tmeta = template.get("metadata") or {}
            name = tmeta.get("name")
            if not name:
                continue
            dv = self._dv_informer.get(f"{meta['namespace']}/{name}")
            if dv is None:
                body: Obj = {
                    "apiVersion": DV_GROUP_VERSION,
                    "kind": "DataVolume",
                    "metadata": {
                        "name": name,
                        "namespace": meta["namespace"],
                        **{k: tmeta[k] for k in ("labels", "annotations") if tmeta.get(k)},
                        "ownerReferences": [
                            {
                                "apiVersion": GROUP_VERSION,
                                "kind": "VirtualMachine",
                                "name": meta["name"],
                                "uid": meta["uid"],
                                "controller": True,
                                "blockOwnerDeletion": True,
                            }
                        ],
                    },
                    "spec": copy.deepcopy(template.get("spec") or {}),
                }
                try:
                    await self.dvs.create(body)
                except errors.AlreadyExistsError:
                    pass
                except errors.InvalidError as exc:
                    await self.recorder.warning(vm, "FailedDataVolumeCreate", f"DataVolume {name}: {exc}")
                    return "DataVolumeError"
                else:
                    await self.recorder.normal(vm, "SuccessfulDataVolumeCreate", f"Created DataVolume {name}")
                state = state or "Provisioning"
                continue
            phase = (dv.get("status") or {}).get("phase")
            if phase == "Failed":
                state = "DataVolumeError"
            elif phase != "Succeeded":
                state = state or "Provisioning"
        return state

    def _state_requests(self, vm: Obj, vmi: Obj | None) -> tuple[bool, bool]:
        """Pending Stop (for this VMI) and Start requests from the start/stop/restart subresources."""
        stop = start = False
        for req in (vm.get("status") or {}).get("stateChangeRequests") or []:
            if req.get("action") == "Stop":
                uid = (req.get("data") or {}).get("uid")
                stop = stop or vmi is None or not uid or uid == vmi["metadata"].get("uid")
            elif req.get("action") == "Start":
                start = True
        return stop and vmi is not None, start

    def _note_crash(self, key: str) -> None:
        failures, _ = self._crashes.get(key, (0, 0.0))
        delay = min(CRASH_BACKOFF_START * 2**failures, CRASH_BACKOFF_MAX) if failures else 0.0
        self._crashes[key] = (failures + 1, time.monotonic() + delay)

    def _restart_wait(self, key: str) -> float:
        _, not_before = self._crashes.get(key, (0, 0.0))
        return max(0.0, not_before - time.monotonic())

    def _crash_looping(self, key: str) -> bool:
        failures, _ = self._crashes.get(key, (0, 0.0))
        return failures >= 2

    async def _create_vmi(self, vm: Obj) -> None:
        try:
            created = await self.vmis.create(vmi_for(vm))
        except errors.AlreadyExistsError:
            raise TemporaryError("VMI still exists from a previous run", delay=0.5) from None
        except errors.InvalidError as exc:
            await self.recorder.warning(vm, "FailedCreate", f"Error creating VirtualMachineInstance: {exc}")
            raise
        await self.recorder.normal(
            vm,
            "SuccessfulCreate",
            f"Started the virtual machine by creating the new virtual machine "
            f"instance {created['metadata']['name']}",
        )

    async def _stop(self, vmi: Obj, vm: Obj, why: str) -> None:
        if vmi["metadata"].get("deletionTimestamp"):
            return
        await self._delete_vmi(vmi)
        await self.recorder.normal(vm, "SuccessfulDelete", f"Stopped the virtual machine ({why})")

    async def _delete_vmi(self, vmi: Obj) -> None:
        meta = vmi["metadata"]
        try:
            await self.vmis.delete(meta["name"], meta["namespace"], preconditions={"uid": meta["uid"]})
        except errors.NotFoundError:
            pass

    async def _write_status(
        self, key: str, vm: Obj, vmi: Obj | None, strategy: str, *, provisioning: str | None = None
    ) -> None:
        status = copy.deepcopy(vm.get("status") or {})
        old = copy.deepcopy(status)
        printable = printable_status(vm, vmi, strategy, self._crash_looping(key))
        if printable == "Starting" and self._missing_claims(vm):
            printable = "ErrorPvcNotFound"
        if printable == "Starting" and vmi is None and provisioning:
            printable = provisioning
        status["printableStatus"] = printable
        status["runStrategy"] = strategy
        vmi_phase = ((vmi or {}).get("status") or {}).get("phase")
        status["created"] = vmi is not None or bool(status.get("created") and strategy == "Once")
        ready_cond = condition(vmi, "Ready") if vmi is not None else None
        ready = bool(
            vmi is not None and vmi_phase == "Running" and ready_cond and ready_cond.get("status") == "True"
        )
        status["ready"] = ready
        conditions = [c for c in status.get("conditions") or [] if c.get("type") not in ("Ready", "Paused")]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        previous_ready = condition(vm, "Ready")
        ready_value = "True" if ready else "False"
        transition = (
            previous_ready.get("lastTransitionTime")
            if previous_ready is not None and previous_ready.get("status") == ready_value
            else now
        )
        conditions.append(
            {
                "type": "Ready",
                "status": ready_value,
                "lastProbeTime": None,
                "lastTransitionTime": transition,
                **({} if ready else {"reason": "VMINotExists" if vmi is None else "VMINotReady"}),
            }
        )
        paused = condition(vmi, "Paused") if vmi is not None else None
        if paused is not None:
            conditions.append(dict(paused))
        status["conditions"] = conditions
        requests = [r for r in status.get("stateChangeRequests") or [] if not self._fulfilled(r, vmi)]
        if requests:
            status["stateChangeRequests"] = requests
        else:
            status.pop("stateChangeRequests", None)
        if status == old:
            return
        body = dict(vm, status=status)
        try:
            await self.vms.update_status(body)
        except errors.NotFoundError:
            return

    @staticmethod
    def _fulfilled(request: Obj, vmi: Obj | None) -> bool:
        if request.get("action") == "Start":
            return vmi is not None and not vmi["metadata"].get("deletionTimestamp")
        if request.get("action") == "Stop":
            uid = (request.get("data") or {}).get("uid")
            return vmi is None or (bool(uid) and uid != vmi["metadata"].get("uid"))
        return True
