"""The node agent's finalizer on VMIs: there from creation (no API write spent on it), and removed by the VMI
controller from a deleted VMI that no node agent will ever handle, so that such deletes complete.

No node agent runs here (tests/integration/agent covers the agent's side of the finalizer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kubevisor.api.kubevirt_admission import NODE_AGENT_FINALIZER
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.controllers.vm import VirtualMachineController
from kubevisor.controllers.vmi import VirtualMachineInstanceController
from tests.integration.client.libcluster import gone, until
from tests.integration.controllers.test_vm import add_node, getter, vm

KV = "kubevirt.io/v1"


@pytest.fixture
async def controllers(client: Client) -> AsyncIterator[None]:
    async with VirtualMachineController(client), VirtualMachineInstanceController(client):
        yield


def bare_vmi(name: str, memory: str = "64Mi") -> Obj:
    return {
        "apiVersion": KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "domain": {
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                "resources": {"requests": {"memory": memory}},
            },
            "volumes": [{"name": "root", "containerDisk": {"image": "registry.local/guest:latest"}}],
        },
    }


async def test_a_created_vmi_carries_the_finalizer(client: Client, controllers: None) -> None:
    vmis = client.resource(KV, "virtualmachineinstances")
    created = await vmis.create(bare_vmi("bare"), "default")
    assert created["metadata"]["finalizers"] == [NODE_AGENT_FINALIZER]
    mine = bare_vmi("mine")
    mine["metadata"]["finalizers"] = ["example.com/keep", NODE_AGENT_FINALIZER]
    created = await vmis.create(mine, "default")
    assert created["metadata"]["finalizers"] == ["example.com/keep", NODE_AGENT_FINALIZER]
    await client.resource(KV, "virtualmachines").create(vm("fromvm"), "default")
    from_vm = await until(getter(client, "virtualmachineinstances", "fromvm"), bool, 10, "the VM's VMI")
    assert NODE_AGENT_FINALIZER in from_vm["metadata"]["finalizers"]


async def test_deleting_an_unschedulable_vmi_completes(client: Client, controllers: None) -> None:
    await add_node(client, "small", memory="1Gi")
    vmis = client.resource(KV, "virtualmachineinstances")
    await vmis.create(bare_vmi("huge", memory="64Gi"), "default")
    await until(
        lambda: vmis.get("huge", "default"),
        lambda o: any(c.get("reason") == "Unschedulable" for c in o["status"].get("conditions") or []),
        10,
        "VMI unschedulable",
    )
    await vmis.delete("huge", "default")
    await gone(vmis, "huge", "default", timeout=10)


async def test_deleting_a_pending_vmi_without_any_node_completes(client: Client, controllers: None) -> None:
    vmis = client.resource(KV, "virtualmachineinstances")
    await vmis.create(bare_vmi("lonely"), "default")
    await vmis.delete("lonely", "default")
    await gone(vmis, "lonely", "default", timeout=10)


async def test_deleting_a_vmi_whose_node_is_gone_completes(client: Client, controllers: None) -> None:
    await add_node(client, "doomed")
    vmis = client.resource(KV, "virtualmachineinstances")
    await vmis.create(bare_vmi("stranded"), "default")
    await until(
        lambda: vmis.get("stranded", "default"),
        lambda o: o["status"].get("nodeName") == "doomed",
        10,
        "VMI scheduled",
    )
    await vmis.delete("stranded", "default")
    # its node exists: its agent (none here) owns the finalizer, so the VMI stays
    held = await vmis.get("stranded", "default")
    assert held["metadata"]["deletionTimestamp"] and NODE_AGENT_FINALIZER in held["metadata"]["finalizers"]
    await client.resource("v1", "nodes").delete("doomed")
    await gone(vmis, "stranded", "default", timeout=10)
