"""addvolume and removevolume of subresources.kubevirt.io through the real API server: what they write
into the VMI's and the VM's spec, and their errors (unknown claim, duplicate name, VMI not running, not
hotpluggable, bad body), and discovery. The node agent's side is tests/e2e/test_vm_hotplug.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.api.registry import Obj
from kubevisor.client import Client, ConflictError, NotFoundError
from kubevisor.client import errors as client_errors
from kubevisor.platform import Platform
from kubevisor.testing.cluster import running_platform

KV = "kubevirt.io/v1"
SUB = "/apis/subresources.kubevirt.io/v1/namespaces/default"


@pytest.fixture
async def plat(tmp_path: Path) -> AsyncIterator[Platform]:
    async with running_platform(tmp_path / "data", controllers=False) as p:
        yield p


def add_body(name: str, claim: str | None = None, **disk: Any) -> Obj:
    return {
        "name": name,
        "disk": {"name": name, "disk": disk or {"bus": "scsi"}},
        "volumeSource": {"persistentVolumeClaim": {"claimName": claim or name, "hotpluggable": True}},
    }


async def make_pvc(client: Client, name: str) -> None:
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    }
    await client.resource("v1", "persistentvolumeclaims").create(pvc, "default")


async def make_vmi(client: Client, name: str, phase: str) -> Obj:
    vmis = client.resource(KV, "virtualmachineinstances")
    body = {
        "apiVersion": KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}},
    }
    vmi = await vmis.create(body, "default")
    vmi["status"] = {"phase": phase, "nodeName": "node-a"}
    updated: Obj = await vmis.update_status(vmi)
    return updated


async def put(client: Client, plural: str, name: str, action: str, body: Obj) -> None:
    await client.request("PUT", f"{SUB}/{plural}/{name}/{action}", body=body)


async def test_vmi_addvolume_and_removevolume_write_the_vmi_spec(client: Client) -> None:
    await make_pvc(client, "data")
    await make_vmi(client, "vm1", "Running")
    await put(client, "virtualmachineinstances", "vm1", "addvolume", add_body("data"))
    vmi = await client.resource(KV, "virtualmachineinstances").get("vm1", "default")
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "data", "hotpluggable": True}} in vmi[
        "spec"
    ]["volumes"]
    assert {"name": "data", "disk": {"bus": "scsi"}} in vmi["spec"]["domain"]["devices"]["disks"]

    with pytest.raises(ConflictError, match=r"volume with that name already exists"):
        await put(client, "virtualmachineinstances", "vm1", "addvolume", add_body("data"))

    await put(client, "virtualmachineinstances", "vm1", "removevolume", {"name": "data"})
    vmi = await client.resource(KV, "virtualmachineinstances").get("vm1", "default")
    assert all(v["name"] != "data" for v in vmi["spec"].get("volumes") or [])
    assert all(d["name"] != "data" for d in vmi["spec"]["domain"]["devices"].get("disks") or [])
    with pytest.raises(NotFoundError, match=r"does not exist"):
        await put(client, "virtualmachineinstances", "vm1", "removevolume", {"name": "data"})


async def test_errors_name_the_field_and_the_object(client: Client) -> None:
    await make_vmi(client, "vm1", "Running")
    with pytest.raises(NotFoundError) as missing:
        await put(client, "virtualmachineinstances", "vm1", "addvolume", add_body("nope"))
    assert "'nope'" in str(missing.value)
    assert [c["field"] for c in missing.value.causes] == ["volumeSource.persistentVolumeClaim.claimName"]

    await make_pvc(client, "data")
    await make_vmi(client, "idle", "Scheduled")
    with pytest.raises(ConflictError, match=r"VirtualMachineInstance default/idle is not running"):
        await put(client, "virtualmachineinstances", "idle", "addvolume", add_body("data"))
    with pytest.raises(NotFoundError):
        await put(client, "virtualmachineinstances", "ghost", "addvolume", add_body("data"))
    with pytest.raises(client_errors.BadRequestError, match=r"requires volumeSource"):
        await put(client, "virtualmachineinstances", "vm1", "addvolume", {"name": "x", "disk": {}})
    with pytest.raises(client_errors.BadRequestError, match=r"disk.disk.bus"):
        await put(client, "virtualmachineinstances", "vm1", "addvolume", add_body("data", bus="sata"))


async def test_vm_addvolume_persists_and_hotplugs_into_the_running_vmi(client: Client) -> None:
    await make_pvc(client, "data")
    manifest: Obj = {
        "apiVersion": KV,
        "kind": "VirtualMachine",
        "metadata": {"name": "vm1"},
        "spec": {
            "runStrategy": "Manual",
            "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}},
        },
    }
    await client.resource(KV, "virtualmachines").create(manifest, "default")
    await make_vmi(client, "vm1", "Running")
    await put(client, "virtualmachines", "vm1", "addvolume", add_body("data"))
    vm = await client.resource(KV, "virtualmachines").get("vm1", "default")
    template = vm["spec"]["template"]["spec"]
    assert [v["name"] for v in template["volumes"]] == ["data"]
    assert [d["name"] for d in template["domain"]["devices"]["disks"]] == ["data"]
    vmi = await client.resource(KV, "virtualmachineinstances").get("vm1", "default")
    assert [v["name"] for v in vmi["spec"]["volumes"]] == ["data"]

    with pytest.raises(ConflictError):
        await put(client, "virtualmachines", "vm1", "addvolume", add_body("data"))
    await put(client, "virtualmachines", "vm1", "removevolume", {"name": "data"})
    vm = await client.resource(KV, "virtualmachines").get("vm1", "default")
    assert not vm["spec"]["template"]["spec"]["volumes"]
    vmi = await client.resource(KV, "virtualmachineinstances").get("vm1", "default")
    assert not vmi["spec"]["volumes"]


async def test_volumes_the_vmi_started_with_cannot_be_removed(client: Client) -> None:
    vmis = client.resource(KV, "virtualmachineinstances")
    body = {
        "apiVersion": KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "default"},
        "spec": {
            "domain": {"devices": {"disks": [{"name": "root"}]}, "memory": {"guest": "64Mi"}},
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "root"}}],
        },
    }
    vmi = await vmis.create(body, "default")
    vmi["status"] = {"phase": "Running", "nodeName": "node-a"}
    await vmis.update_status(vmi)
    with pytest.raises(client_errors.ApiError, match=r"not hotpluggable") as refused:
        await put(client, "virtualmachineinstances", "vm1", "removevolume", {"name": "root"})
    assert refused.value.code == 422


async def test_discovery_lists_the_volume_subresources(client: Client) -> None:
    listing = await client.request("GET", "/apis/subresources.kubevirt.io/v1")
    names = {r["name"] for r in listing["resources"]}
    for plural in ("virtualmachines", "virtualmachineinstances"):
        assert {f"{plural}/addvolume", f"{plural}/removevolume"} <= names
