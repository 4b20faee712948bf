"""The node agent against the real API server, where no guest needs to boot: what it says when it cannot
start a VMI, that its finalizer never keeps a deleted VMI forever, and that it cleans run directories
whose VMI is gone. (Booting guests: tests/e2e/test_vm_lifecycle.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.vmis import FINALIZER
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from tests.integration.agent.libagent import agent_platform
from tests.integration.client.libcluster import gone, until

KV = "kubevirt.io/v1"
NODE = "agent-node"


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    (data_dir / "vms" / "default" / "orphan").mkdir(parents=True)  # a run directory whose VMI is gone
    async with agent_platform(data_dir, NODE, lease_interval=0.2) as p:
        yield p


def vmi(name: str, volume: Obj) -> Obj:
    return {
        "apiVersion": KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "domain": {
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                "memory": {"guest": "64Mi"},
            },
            "volumes": [dict(volume, name="root")],
        },
    }


async def events(client: Client, name: str, reason: str) -> list[Obj]:
    found = await client.resource("v1", "events").list("default")
    return [e for e in found if e["involvedObject"].get("name") == name and e["reason"] == reason]


async def test_the_node_and_its_lease_are_kept(client: Client, data_dir: Path) -> None:
    leases = client.resource("coordination.k8s.io/v1", "leases")
    first = await leases.get(NODE, "kube-node-lease")
    renewed = await until(
        lambda: leases.get(NODE, "kube-node-lease"),
        lambda lease: lease["spec"]["renewTime"] != first["spec"]["renewTime"],
        5,
        "the Lease renewed",
    )
    node = await client.resource("v1", "nodes").get(NODE)
    assert renewed["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    assert node["metadata"]["labels"]["kubevisor.io/hypervisor"] == "tcg"
    # the run directory of a VMI that does not exist was removed when the agent started
    await until(
        lambda: _exists(data_dir / "vms" / "default" / "orphan"), lambda e: not e, 5, "orphan run dir removed"
    )


async def _exists(path: Path) -> bool:
    return _is_there(path)


def _is_there(path: Path) -> bool:
    return path.exists()


async def test_a_missing_image_is_reported_and_deleting_still_works(client: Client, data_dir: Path) -> None:
    vmis = client.resource(KV, "virtualmachineinstances")
    await vmis.create(vmi("noimage", {"containerDisk": {"image": "127.0.0.1:9/nobody/nothing:1"}}), "default")
    found = await until(lambda: events(client, "noimage", "ErrImagePull"), bool, 15, "an ErrImagePull Event")
    message = found[0]["message"]
    assert "spec.volumes[0].containerDisk.image" in message and "--image-mirror" in message
    current = await vmis.get("noimage", "default")
    assert current["status"]["phase"] == "Scheduled"
    assert current["status"]["nodeName"] == NODE
    assert FINALIZER in current["metadata"]["finalizers"]
    assert not (data_dir / "vms" / "default" / "noimage").exists()  # the failed start left nothing

    await vmis.delete("noimage", "default")
    await gone(vmis, "noimage", "default", timeout=10)


@pytest.mark.parametrize(
    ("volume", "field"),
    [
        ({"sysprep": {"configMap": {"name": "unattend"}}}, "spec.volumes[0].sysprep"),
        (
            {"hostDisk": {"path": "/etc/passwd", "type": "Disk"}},
            "spec.volumes[0].hostDisk: hostDisk volumes are disabled",
        ),
    ],
)
async def test_what_cannot_run_fails_the_vmi_with_the_field(
    client: Client, data_dir: Path, volume: dict[str, Any], field: str
) -> None:
    vmis = client.resource(KV, "virtualmachineinstances")
    await vmis.create(vmi("bad", volume), "default")
    failed = await until(
        lambda: vmis.get("bad", "default"),
        lambda o: (o.get("status") or {}).get("phase") == "Failed",
        15,
        "VMI Failed",
    )
    ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "FailedCreate"
    assert field in ready["message"]
    (event,) = await events(client, "bad", "FailedCreate")
    assert field in event["message"]
    assert [t["phase"] for t in failed["status"]["phaseTransitionTimestamps"]][-1] == "Failed"
    await vmis.delete("bad", "default")
    await gone(vmis, "bad", "default", timeout=10)
    assert not (data_dir / "vms" / "default" / "bad").exists()
