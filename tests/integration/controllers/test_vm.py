"""The VM and VMI controllers against the real API server: runStrategy, scheduling, printableStatus.

No node agent runs here: the test plays its part by writing VMI phases, as virt-handler would, and
:class:`FakeAgent` removes the agent's finalizer from deleted VMIs (their guests are not running anyway).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kubevisor.api.kubevirt_admission import NODE_AGENT_FINALIZER
from kubevisor.api.registry import Obj
from kubevisor.client import Client, ConflictError, NotFoundError
from kubevisor.controllers import GarbageCollector
from kubevisor.controllers.reconciling import Controller, Result
from kubevisor.controllers.vm import VirtualMachineController
from kubevisor.controllers.vmi import Scheduler, VirtualMachineInstanceController
from kubevisor.platform import Platform
from tests.integration.client.libcluster import gone, until

KV = "kubevirt.io/v1"


class FakeAgent(Controller):
    """Plays the node agent at deletion: removes its finalizer from a deleted VMI bound to a node."""

    name = "fake-agent"

    def setup(self) -> None:
        self.vmis = self.client.resource(KV, "virtualmachineinstances")
        self.informer = self.watch(self.vmis)

    async def reconcile(self, key: str) -> Result | None:
        vmi = self.informer.get(key)
        if vmi is None or not vmi["metadata"].get("deletionTimestamp"):
            return None
        finalizers = vmi["metadata"].get("finalizers") or []
        if NODE_AGENT_FINALIZER in finalizers and (vmi.get("status") or {}).get("nodeName"):
            vmi["metadata"]["finalizers"] = [f for f in finalizers if f != NODE_AGENT_FINALIZER]
            await self.vmis.update(vmi)
        return None


@pytest.fixture
async def controllers(client: Client, cluster: Platform) -> AsyncIterator[None]:
    async with (
        VirtualMachineController(client),
        VirtualMachineInstanceController(client),
        FakeAgent(client),
        GarbageCollector(client, cluster.registry, recheck_interval=0.2),
    ):
        yield


async def add_node(client: Client, name: str, memory: str = "4Gi", cpu: str = "2", **spec: Any) -> None:
    nodes = client.resource("v1", "nodes")
    node = await nodes.create(
        {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": spec}
    )
    node["status"] = {
        "capacity": {"memory": memory, "cpu": cpu},
        "allocatable": {"memory": memory, "cpu": cpu},
        "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady"}],
    }
    await nodes.update_status(node)


def vm(name: str, strategy: str = "Always", memory: str = "64Mi", **extra: Any) -> Obj:
    return {
        "apiVersion": KV,
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "domain": {
                        "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                        "resources": {"requests": {"memory": memory}},
                    },
                    "volumes": [{"name": "root", "containerDisk": {"image": "registry.local/guest:latest"}}],
                    **extra,
                },
            },
        },
    }


def getter(client: Client, plural: str, name: str) -> Callable[[], Awaitable[Obj]]:
    """A probe for ``until``: the object, or {} while it does not exist."""
    resources = client.resource(KV, plural)

    async def get() -> Obj:
        try:
            found: Obj = await resources.get(name, "default")
        except NotFoundError:
            return {}
        return found

    return get


async def vm_status(client: Client, name: str, want: str, timeout: float = 10.0) -> Obj:
    vms = client.resource(KV, "virtualmachines")
    result: Obj = await until(
        lambda: vms.get(name, "default"),
        lambda o: (o.get("status") or {}).get("printableStatus") == want,
        timeout,
        f"VM {name} printableStatus {want}",
    )
    return result


async def set_vmi_phase(client: Client, name: str, phase: str, ready: bool = False) -> Obj:
    """Play the node agent: set the VMI's phase (a merge patch of status, racing nobody's resourceVersion)."""
    status: Obj = {"phase": phase}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    vmis = client.resource(KV, "virtualmachineinstances")
    result: Obj = await vmis.patch(name, {"status": status}, "default", subresource="status")
    return result


async def test_always_creates_schedules_and_reports(client: Client, controllers: None) -> None:
    await add_node(client, "node-a")
    vms = client.resource(KV, "virtualmachines")
    vmis = client.resource(KV, "virtualmachineinstances")
    created = await vms.create(vm("web"), "default")

    vmi = await until(
        getter(client, "virtualmachineinstances", "web"),
        lambda o: ((o or {}).get("status") or {}).get("phase") == "Scheduled",
        10,
        "VMI scheduled",
    )
    assert vmi["status"]["nodeName"] == "node-a"
    ref = vmi["metadata"]["ownerReferences"][0]
    assert ref["uid"] == created["metadata"]["uid"] and ref["controller"] and ref["blockOwnerDeletion"]
    assert vmi["metadata"]["labels"]["app"] == "web"
    await vm_status(client, "web", "Starting")

    await set_vmi_phase(client, "web", "Running", ready=True)
    running = await vm_status(client, "web", "Running")
    assert running["status"]["ready"] is True and running["status"]["created"] is True

    await vms.patch("web", {"spec": {"runStrategy": "Halted"}}, "default")
    await gone(vmis, "web", "default")
    stopped = await vm_status(client, "web", "Stopped")
    assert stopped["status"]["ready"] is False

    await vms.patch("web", {"spec": {"runStrategy": "Always"}}, "default")
    await until(getter(client, "virtualmachineinstances", "web"), bool, 10, "VMI recreated")
    await vms.delete("web", "default")
    await gone(vmis, "web", "default")


async def test_restart_policies(client: Client, controllers: None) -> None:
    await add_node(client, "node-a")
    vms = client.resource(KV, "virtualmachines")
    vmis = client.resource(KV, "virtualmachineinstances")

    await vms.create(vm("always"), "default")
    first = await until(getter(client, "virtualmachineinstances", "always"), bool, 10, "VMI")
    await set_vmi_phase(client, "always", "Succeeded")
    again = await until(
        getter(client, "virtualmachineinstances", "always"),
        lambda o: bool(o) and o["metadata"]["uid"] != first["metadata"]["uid"],
        10,
        "VMI recreated",
    )
    assert again["metadata"]["name"] == "always"

    await vms.create(vm("rerun", "RerunOnFailure"), "default")
    first = await until(getter(client, "virtualmachineinstances", "rerun"), bool, 10, "VMI")
    await set_vmi_phase(client, "rerun", "Failed")
    await until(
        getter(client, "virtualmachineinstances", "rerun"),
        lambda o: bool(o) and o["metadata"]["uid"] != first["metadata"]["uid"],
        10,
        "VMI rerun after failure",
    )

    await vms.create(vm("clean", "RerunOnFailure"), "default")
    await until(getter(client, "virtualmachineinstances", "clean"), bool, 10, "VMI")
    await set_vmi_phase(client, "clean", "Succeeded")
    await vm_status(client, "clean", "Stopped")
    assert (await vmis.get("clean", "default"))["status"]["phase"] == "Succeeded"  # not restarted

    await vms.create(vm("manual", "Manual"), "default")
    await vm_status(client, "manual", "Stopped")


async def test_unschedulable_vm_reports_why(client: Client, controllers: None) -> None:
    await add_node(client, "small", memory="1Gi")
    vms = client.resource(KV, "virtualmachines")
    await vms.create(vm("huge", memory="64Gi"), "default")
    await vm_status(client, "huge", "ErrorUnschedulable")
    events = client.resource("v1", "events")
    found = await until(
        lambda: events.list("default", field_selector="involvedObject.name=huge,reason=FailedScheduling"),
        lambda lst: bool(lst.items),
        10,
        "FailedScheduling event",
    )
    assert found.items[0]["message"] == "0/1 nodes are available: 1 Insufficient memory."

    # room appears: the VMI is scheduled without being touched
    await add_node(client, "big", memory="128Gi", cpu="8")
    vmi = await until(
        getter(client, "virtualmachineinstances", "huge"),
        lambda o: (o.get("status") or {}).get("nodeName") == "big",
        10,
        "scheduled on big",
    )
    assert vmi["status"]["phase"] == "Scheduled"


def node(name: str, memory: str = "4Gi", labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    return {
        "metadata": {"name": name, "uid": name, "labels": labels or {}},
        "spec": spec,
        "status": {
            "allocatable": {"memory": memory, "cpu": "2"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def bare_vmi(name: str, memory: str = "1Gi", **spec: Any) -> Obj:
    return {
        "metadata": {"name": name, "uid": name},
        "spec": {"domain": {"resources": {"requests": {"memory": memory}}}, **spec},
    }


def test_scheduler_rules() -> None:
    s = Scheduler()
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    nodes = [node("a", "2Gi"), node("b", "8Gi", {"disk": "ssd"}), node("c", "16Gi", taints=[taint])]
    assert s.choose(bare_vmi("v"), nodes, [])[0] == "b"  # c is tainted; b has more room than a
    assert s.choose(bare_vmi("v", nodeSelector={"disk": "ssd"}), nodes, [])[0] == "b"
    tol = [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    assert s.choose(bare_vmi("v", tolerations=tol), nodes, [])[0] == "c"
    running = [dict(bare_vmi("x", "7Gi"), status={"nodeName": "b", "phase": "Running"})]
    assert s.choose(bare_vmi("v"), nodes, running)[0] == "a"
    finished = [dict(bare_vmi("x", "7Gi"), status={"nodeName": "b", "phase": "Succeeded"})]
    assert s.choose(bare_vmi("v"), nodes, finished)[0] == "b"
    name, why = s.choose(bare_vmi("v", "32Gi", nodeSelector={"disk": "ssd"}), nodes, [])
    assert name is None
    expected = "1 Insufficient memory, 2 node(s) didn't match Pod's node affinity/selector."
    assert why == f"0/3 nodes are available: {expected}"
    _, why = s.choose(bare_vmi("v", "12Gi"), nodes, [])
    expected = "2 Insufficient memory, 1 node(s) had untolerated taint {dedicated: gpu}."
    assert why == f"0/3 nodes are available: {expected}"


async def action(client: Client, name: str, verb: str) -> None:
    await client.request(
        "PUT", f"/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/{name}/{verb}"
    )


async def test_start_stop_restart_subresources(client: Client, controllers: None) -> None:
    await add_node(client, "node-a")
    vms = client.resource(KV, "virtualmachines")
    vmis = client.resource(KV, "virtualmachineinstances")
    await vms.create(vm("svc", "Halted"), "default")
    await vm_status(client, "svc", "Stopped")
    with pytest.raises(ConflictError, match="VM is not running"):
        await action(client, "svc", "stop")

    await action(client, "svc", "start")  # Halted -> Always
    assert (await vms.get("svc", "default"))["spec"]["runStrategy"] == "Always"
    first = await until(getter(client, "virtualmachineinstances", "svc"), bool, 10, "VMI")
    await set_vmi_phase(client, "svc", "Running", ready=True)
    await vm_status(client, "svc", "Running")
    with pytest.raises(ConflictError, match="already running"):
        await action(client, "svc", "start")

    await action(client, "svc", "restart")  # stop exactly this VMI, then start a new one
    await until(
        getter(client, "virtualmachineinstances", "svc"),
        lambda o: bool(o) and o["metadata"]["uid"] != first["metadata"]["uid"],
        10,
        "VMI restarted",
    )
    status = await until(
        getter(client, "virtualmachines", "svc"),
        lambda o: not (o.get("status") or {}).get("stateChangeRequests"),
        10,
        "requests consumed",
    )
    assert status["spec"]["runStrategy"] == "Always"

    await action(client, "svc", "stop")  # Always -> Halted
    await gone(vmis, "svc", "default")
    await vm_status(client, "svc", "Stopped")

    await vms.create(vm("man", "Manual"), "default")
    await vm_status(client, "man", "Stopped")
    await action(client, "man", "start")
    await until(getter(client, "virtualmachineinstances", "man"), bool, 10, "Manual VM started")
    await set_vmi_phase(client, "man", "Running", ready=True)
    await action(client, "man", "stop")
    await gone(vmis, "man", "default")
    assert (await vms.get("man", "default"))["spec"]["runStrategy"] == "Manual"


async def test_cli_start_stop(client: Client, cluster: Platform, controllers: None) -> None:
    import asyncio
    import sys

    await add_node(client, "node-a")
    vms = client.resource(KV, "virtualmachines")
    await vms.create(vm("clivm", "Halted"), "default")

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kubevisor.cli.main",
            *args,
            "--kubeconfig",
            str(cluster.kubeconfig),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()

    code, out = await cli("start", "clivm")
    assert code == 0 and "scheduled to start" in out, out
    await until(getter(client, "virtualmachineinstances", "clivm"), bool, 10, "VMI")
    code, out = await cli("stop", "clivm")
    assert code == 0
    code, out = await cli("stop", "nosuchvm")
    assert code == 1 and "nosuchvm" in out and "not found" in out
