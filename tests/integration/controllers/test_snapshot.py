"""VM snapshots and restores against the real API server, with the node agent's snapshot part copying real
files (no guest runs: the VM is stopped, so the agent copies the claim's image; running guests:
tests/e2e/test_vm_snapshot.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.snapshots import SnapshotAgent
from kubevisor.agent.vmis import VmiController
from kubevisor.api.kubevirt_admission import NODE_AGENT_FINALIZER
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.controllers import GarbageCollector
from kubevisor.controllers.snapshot import RestoreController, SnapshotController
from kubevisor.controllers.volumebinding import VolumeBindingController
from kubevisor.platform import Platform
from tests.integration.client.libcluster import gone, until
from tests.libcompat import COMPAT_DIR, documents

KV = "kubevirt.io/v1"
SNAP = "snapshot.kubevirt.io/v1beta1"
NODE = "snap-node"
MiB = 1024 * 1024


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


def snapshot_agent(client: Client, node_dir: Path) -> SnapshotAgent:
    """The node agent's snapshot part on :data:`NODE`, its volumes under ``node_dir/volumes``."""
    vmis = VmiController(client, node=NODE, data_dir=node_dir, accel="tcg")  # not started: no guests
    return SnapshotAgent(client, node=NODE, data_dir=node_dir, vmis=vmis, volume_dirs=(node_dir / "volumes",))


@pytest.fixture
async def controllers(client: Client, cluster: Platform, node_dir: Path) -> AsyncIterator[None]:
    async with (
        VolumeBindingController(client),
        SnapshotController(client),
        RestoreController(client),
        snapshot_agent(client, node_dir),
        GarbageCollector(client, cluster.registry, recheck_interval=0.2),
    ):
        yield


def compat(name: str) -> Obj:
    """A manifest of KubeVirt's user guide, unchanged (../shared/compat/kubevirt-examples/)."""
    (document,) = documents(COMPAT_DIR / f"user-guide__{name}.yaml")
    return document


def pattern(seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(MiB))


async def make_claim(client: Client, node_dir: Path, name: str) -> Path:
    """A 16 MiB sparse raw image with 1 MiB of data at 4 MiB, a PV (on NODE) and a bound claim."""
    image = node_dir / "volumes" / name / "disk.img"
    image.parent.mkdir(parents=True)
    with image.open("wb") as f:
        f.truncate(16 * MiB)
        f.seek(4 * MiB)
        f.write(pattern(1))
    affinity = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}
    ]}]}}  # fmt: skip
    await client.resource("v1", "persistentvolumes").create(
        {
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "16Mi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": str(image.parent)},
                "nodeAffinity": affinity,
            },
        }
    )
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await pvcs.create(
        {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
        },
        "default",
    )
    await until(
        lambda: pvcs.get(name, "default"),
        lambda c: (c.get("status") or {}).get("phase") == "Bound",
        10,
        "claim bound",
    )
    return image


def vm(name: str, claim: str) -> Obj:
    return {
        "apiVersion": KV,
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Halted",
            "template": {
                "spec": {
                    "domain": {
                        "devices": {
                            "disks": [
                                {"name": "root", "disk": {"bus": "virtio"}},
                                {"name": "data", "disk": {"bus": "virtio"}},
                            ]
                        },
                        "resources": {"requests": {"memory": "64Mi"}},
                    },
                    "volumes": [
                        {"name": "root", "containerDisk": {"image": "registry.local/guest:latest"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                    ],
                }
            },
        },
    }


def snapshot(name: str, vm_name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": SNAP,
        "kind": "VirtualMachineSnapshot",
        "metadata": {"name": name},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm_name}, **spec},
    }


async def snapshotted(client: Client, name: str, vm_name: str) -> Obj:
    """A new snapshot ``name`` of the VM ``vm_name``, once it is Succeeded."""
    snapshots = client.resource(SNAP, "virtualmachinesnapshots")
    await snapshots.create(snapshot(name, vm_name), "default")
    return await until(
        lambda: snapshots.get(name, "default"),
        lambda s: (s.get("status") or {}).get("phase") == "Succeeded",
        15,
        "snapshot succeeded",
    )


def restore(name: str, vm_name: str, snap: str) -> Obj:
    return {
        "apiVersion": SNAP,
        "kind": "VirtualMachineRestore",
        "metadata": {"name": name},
        "spec": {
            "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm_name},
            "virtualMachineSnapshotName": snap,
        },
    }


def region(image: Path) -> bytes:
    with image.open("rb") as f:
        f.seek(4 * MiB)
        return f.read(MiB)


def condition(obj: Obj, kind: str) -> Obj:
    found: Obj = next(c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind)
    return found


async def test_snapshot_of_a_stopped_vm_restore_and_delete(
    client: Client, controllers: None, node_dir: Path
) -> None:
    image = await make_claim(client, node_dir, "larry-data")
    await client.resource(KV, "virtualmachines").create(vm("larry", "larry-data"), "default")
    snapshots = client.resource(SNAP, "virtualmachinesnapshots")
    await snapshots.create(compat("vmsnapshot-snap-larry"), "default")  # KubeVirt's user-guide manifest
    snap = await until(
        lambda: snapshots.get("snap-larry", "default"),
        lambda s: (s.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        15,
        "snapshot finished",
    )
    status = snap["status"]
    assert status["phase"] == "Succeeded", status
    assert status["readyToUse"] is True and status["creationTime"]
    assert status["snapshotVolumes"] == {"includedVolumes": ["data"], "excludedVolumes": ["root"]}
    assert status["indications"] == []
    assert condition(snap, "Ready")["status"] == "True"
    content_name = status["virtualMachineSnapshotContentName"]
    contents = client.resource(SNAP, "virtualmachinesnapshotcontents")
    content = await contents.get(content_name, "default")
    assert content["spec"]["source"]["virtualMachine"]["metadata"]["name"] == "larry"
    assert [b["volumeName"] for b in content["spec"]["volumeBackups"]] == ["data"]
    assert content["status"]["readyToUse"] is True
    copied = node_dir / "snapshots" / "default" / content_name / "data.img"
    assert region(copied) == pattern(1)
    assert os.stat(copied).st_size == 16 * MiB
    assert os.stat(copied).st_blocks * 512 < 8 * MiB  # sparse (or a reflink clone)

    # the VM changes: data overwritten, a volume added to the spec; the restore puts both back
    with image.open("r+b") as f:
        f.seek(4 * MiB)
        f.write(pattern(7))
    vms = client.resource(KV, "virtualmachines")
    current = await vms.get("larry", "default")
    current["spec"]["template"]["metadata"] = {"labels": {"changed": "yes"}}
    await vms.update(current)
    restores = client.resource(SNAP, "virtualmachinerestores")
    await restores.create(compat("vmrestore-restore-larry"), "default")
    done = await until(
        lambda: restores.get("restore-larry", "default"),
        lambda r: bool((r.get("status") or {}).get("complete")),
        15,
        "restore complete",
    )
    assert done["status"]["restoreTime"]
    assert condition(done, "Ready")["status"] == "True"
    assert done["status"]["restores"][0]["persistentVolumeClaim"] == "larry-data"
    assert region(image) == pattern(1)
    restored = await vms.get("larry", "default")
    assert restored["spec"]["template"] == content["spec"]["source"]["virtualMachine"]["spec"]["template"]
    assert "changed" not in str(restored["spec"]["template"])
    assert not (restored.get("status") or {}).get("restoreInProgress")

    # deleting the snapshot deletes its content and frees the node's space
    await snapshots.delete("snap-larry", "default")
    await gone(contents, content_name, "default")
    await until(lambda: _probe(copied.parent), lambda exists: not exists, 10, "snapshot files removed")


async def _probe(path: Path) -> bool:
    return os.access(path, os.F_OK)


async def test_restore_waits_for_a_running_vm_to_stop(
    client: Client, controllers: None, node_dir: Path
) -> None:
    image = await make_claim(client, node_dir, "moe-data")
    await client.resource(KV, "virtualmachines").create(vm("moe", "moe-data"), "default")
    await snapshotted(client, "snap-moe", "moe")
    with image.open("r+b") as f:
        f.seek(4 * MiB)
        f.write(pattern(9))
    vmis = client.resource(KV, "virtualmachineinstances")
    running: Obj = {
        "apiVersion": KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "moe"},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}},
    }
    await vmis.create(running, "default")
    restores = client.resource(SNAP, "virtualmachinerestores")
    await restores.create(restore("restore-moe", "moe", "snap-moe"), "default")
    waiting = await until(
        lambda: restores.get("restore-moe", "default"),
        lambda r: any(
            c.get("reason") == "VMRunning" for c in (r.get("status") or {}).get("conditions") or []
        ),
        10,
        "restore waiting for the VM to stop",
    )
    assert "virtctl stop moe" in condition(waiting, "Ready")["message"]
    assert region(image) == pattern(9)  # nothing copied while it runs
    vmi = await vmis.get("moe", "default")
    vmi["metadata"]["finalizers"] = [
        f for f in vmi["metadata"].get("finalizers") or [] if f != NODE_AGENT_FINALIZER
    ]
    await vmis.update(vmi)
    await vmis.delete("moe", "default")
    await until(
        lambda: restores.get("restore-moe", "default"),
        lambda r: bool((r.get("status") or {}).get("complete")),
        15,
        "restore complete after the VM stopped",
    )
    assert region(image) == pattern(1)


async def test_snapshot_fails_at_its_deadline(client: Client, controllers: None) -> None:
    vms = client.resource(KV, "virtualmachines")
    await vms.create(vm("curly", "no-such-claim"), "default")
    snapshots = client.resource(SNAP, "virtualmachinesnapshots")
    await snapshots.create(snapshot("snap-curly", "curly", failureDeadline="1s"), "default")
    failed = await until(
        lambda: snapshots.get("snap-curly", "default"),
        lambda s: (s.get("status") or {}).get("phase") == "Failed",
        10,
        "snapshot failed",
    )
    assert "failureDeadline" in failed["status"]["error"]["message"]
    assert condition(failed, "Failure")["status"] == "True"


async def test_restore_as_a_new_vm(client: Client, controllers: None, node_dir: Path) -> None:
    await make_claim(client, node_dir, "shemp-data")
    await client.resource(KV, "virtualmachines").create(vm("shemp", "shemp-data"), "default")
    await snapshotted(client, "snap-shemp", "shemp")
    restores = client.resource(SNAP, "virtualmachinerestores")
    created = await restores.create(restore("restore-joe", "joe", "snap-shemp"), "default")
    done = await until(
        lambda: restores.get("restore-joe", "default"),
        lambda r: bool((r.get("status") or {}).get("complete")),
        15,
        "restore as a new VM complete",
    )
    claim = f"restore-{created['metadata']['uid']}-data"
    assert done["status"]["restores"][0]["persistentVolumeClaim"] == claim
    joe = await client.resource(KV, "virtualmachines").get("joe", "default")
    volumes = joe["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in volumes
    assert {"name": "root", "containerDisk": {"image": "registry.local/guest:latest"}} in volumes
    pvc = await until(
        lambda: client.resource("v1", "persistentvolumeclaims").get(claim, "default"),
        lambda c: (c.get("status") or {}).get("phase") == "Bound",
        10,
        "restored claim bound",
    )
    assert pvc["spec"]["volumeName"] == claim
    assert region(node_dir / "volumes" / claim / "disk.img") == pattern(1)
