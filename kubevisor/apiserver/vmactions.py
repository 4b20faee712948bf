"""The VirtualMachine actions of KubeVirt's ``subresources.kubevirt.io`` API: start, stop, restart.

As virt-api does, an action never starts or stops anything itself: it changes the VM's desired state and
the VM controller acts. Depending on the runStrategy that is the strategy itself (Halted ↔ Always) or a
request in ``status.stateChangeRequests`` (Manual, RerunOnFailure, Once, and restart for every strategy):
``Stop`` carries the uid of the VMI to stop, so a restart stops exactly the VMI that ran when it was asked.

Path: ``PUT /apis/subresources.kubevirt.io/{v1,v1alpha3}/namespaces/{ns}/virtualmachines/{name}/{action}``.
RBAC: verb ``update`` on resource ``virtualmachines/{action}`` in group ``subresources.kubevirt.io``.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from kubevisor.api.registry import Kind, Obj
from kubevisor.apiserver import errors
from kubevisor.apiserver.resources import Objects, object_key

GROUP = "subresources.kubevirt.io"
VERSIONS = ("v1", "v1alpha3")
VM_ACTIONS = ("start", "stop", "restart")
FINISHED = ("Succeeded", "Failed")


def run_strategy(vm: Obj) -> str:
    spec = vm.get("spec") or {}
    if spec.get("runStrategy"):
        return str(spec["runStrategy"])
    running = spec.get("running")
    return "Halted" if not running else "Always"


def _conflict(message: str) -> errors.ApiError:
    return errors.ApiError(409, "Conflict", message)


def _set_strategy(vm: Obj, strategy: str) -> None:
    spec = vm.setdefault("spec", {})
    if "running" in spec and spec.get("running") is not None and "runStrategy" not in spec:
        spec["running"] = strategy == "Always"
    else:
        spec["runStrategy"] = strategy


async def vm_action(
    objects: Objects,
    *,
    vm_kind: Kind,
    vmi_kind: Kind,
    namespace: str,
    name: str,
    action: str,
    body: dict[str, Any],
) -> None:
    """Apply ``action`` to the VM ``namespace/name``; raises 404/409 as virt-api does."""
    vmi_kv = await objects.store.get(object_key(vmi_kind, namespace, name))
    vmi: Obj | None = orjson.loads(vmi_kv.value) if vmi_kv is not None else None
    running = (
        vmi is not None
        and (vmi.get("status") or {}).get("phase") not in FINISHED
        and not (vmi["metadata"].get("deletionTimestamp"))
    )

    async def change_spec(current: Obj) -> Obj:
        new = copy.deepcopy(current)
        strategy = run_strategy(current)
        if action == "start":
            if strategy == "Halted":
                _set_strategy(new, "Always")
            elif strategy == "Once":
                raise _conflict("Once does not support manual start requests")
            elif running:
                raise _conflict("VM is already running")
        elif action == "stop":
            if strategy == "Always":
                _set_strategy(new, "Halted")
            elif strategy == "Halted" and not running:
                raise _conflict("VM is not running")
        elif action == "restart":
            if strategy == "Halted":
                raise _conflict("RunStategy Halted does not support manual restart requests")
            if not running:
                raise _conflict("VM is not running")
        new["metadata"].pop("resourceVersion", None)
        return new

    async def add_requests(current: Obj) -> Obj:
        strategy = run_strategy(current)
        new = copy.deepcopy(current)
        new["metadata"].pop("resourceVersion", None)
        status = new.setdefault("status", {})
        requests = list(status.get("stateChangeRequests") or [])
        uid = vmi["metadata"]["uid"] if vmi is not None else None
        if action == "restart" or (action == "stop" and strategy != "Always"):
            if uid is None:
                raise _conflict("VM is not running")
            requests.append({"action": "Stop", "data": {"uid": uid}})
        if action == "restart" or (action == "start" and strategy not in ("Halted", "Always")):
            requests.append({"action": "Start"})
        if requests == (status.get("stateChangeRequests") or []):
            return current
        status["stateChangeRequests"] = requests
        return new

    if body.get("dryRun"):
        vm = await objects.get(vm_kind, namespace, name)
        await change_spec(vm)
        return
    await objects.update(vm_kind, namespace, name, change_spec)
    await objects.update(vm_kind, namespace, name, add_requests)
