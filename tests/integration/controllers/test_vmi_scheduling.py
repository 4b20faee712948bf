"""The scheduler under concurrency: VMIs created at once, scheduled by several workers, never overcommit a
node (each worker counts the VMIs the others have just bound, before their watch events arrive)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kubevisor.client import Client
from kubevisor.controllers.vmi import VirtualMachineInstanceController
from tests.integration.client.libcluster import until
from tests.integration.controllers.test_vm import add_node
from tests.integration.controllers.test_vmi_finalizer import bare_vmi

KV = "kubevirt.io/v1"


@pytest.fixture
async def controller(client: Client) -> AsyncIterator[None]:
    async with VirtualMachineInstanceController(client, concurrency=8):
        yield


async def test_a_burst_of_vmis_fills_a_node_exactly(client: Client, controller: None) -> None:
    await add_node(client, "two-cpus", memory="64Gi", cpu="2")  # 100m per vCPU by default: 20 fit
    vmis = client.resource(KV, "virtualmachineinstances")
    await asyncio.gather(*(vmis.create(bare_vmi(f"burst-{i:02d}"), "default") for i in range(30)))

    def settled(items: list[dict[str, object]]) -> bool:
        phases = [(o.get("status") or {}).get("phase") for o in items]  # type: ignore[attr-defined]
        unschedulable = [
            o
            for o in items
            if any(
                c.get("reason") == "Unschedulable"
                for c in (o.get("status") or {}).get("conditions") or []  # type: ignore[attr-defined]
            )
        ]
        return phases.count("Scheduled") + len(unschedulable) == 30

    async def listed() -> list[dict[str, object]]:
        return list(await vmis.list("default"))

    items = await until(listed, settled, 20, "every VMI scheduled or unschedulable")
    scheduled = [o for o in items if (o.get("status") or {}).get("phase") == "Scheduled"]  # type: ignore[attr-defined]
    assert len(scheduled) == 20


async def test_a_vmi_goes_where_its_local_volume_is(client: Client, controller: None) -> None:
    await add_node(client, "roomy", memory="64Gi")
    await add_node(client, "small", memory="4Gi")
    affinity = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["small"]}
    await client.resource("v1", "persistentvolumes").create(
        {
            "metadata": {"name": "pv-on-small"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": "/var/lib/kubevisor/volumes/pv-on-small"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [affinity]}]}},
            },
        }
    )
    await client.resource("v1", "persistentvolumeclaims").create(
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "volumeName": "pv-on-small",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        "default",
    )
    vmi = bare_vmi("pinned")
    vmi["spec"]["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": "data"}})
    vmis = client.resource(KV, "virtualmachineinstances")
    await vmis.create(vmi, "default")
    scheduled = await until(
        lambda: vmis.get("pinned", "default"),
        lambda o: bool((o.get("status") or {}).get("nodeName")),
        10,
        "the VMI scheduled",
    )
    assert scheduled["status"]["nodeName"] == "small"  # not the roomier node: the volume is on small
