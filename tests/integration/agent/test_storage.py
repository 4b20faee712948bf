"""Storage classes, the local provisioner and DataVolume imports against the real API server, controllers
and node agent (no guest boots): provisioning and binding modes, reclaim policies, capacity, and
DataVolume phases and failures with images served over loopback HTTP. (A VM booting from an imported
disk: tests/e2e/test_datavolumes.py.)"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.api.registry import Obj
from kubevisor.client import Client, errors
from kubevisor.client.requesting import ResourceClient
from kubevisor.platform import Platform
from kubevisor.testing import containerdisks
from tests.integration.agent.libagent import agent_platform
from tests.integration.client.libcluster import gone, until
from tests.unit.storage import imageserving

NODE = "storage-node"
CDI = "cdi.kubevirt.io/v1beta1"
MiB = 1024 * 1024


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    async with agent_platform(data_dir, NODE) as p:
        yield p


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``disk.qcow2`` (8 MiB virtual, a pattern at 1 MiB), ``big.qcow2`` (1 GiB virtual), ``notes.txt``."""
    root = tmp_path_factory.mktemp("images")
    raw = root / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(b"kubevisor-import-test" * 1000)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(root / "disk.qcow2")], check=True
    )
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "big.qcow2"), "1G"], check=True)
    (root / "notes.txt").write_text("<html>this is not a disk image</html>\n" * 100)
    return root


@pytest.fixture
def server(images: Path) -> Iterator[imageserving.ImageServer]:
    with imageserving.serving(images) as s:
        yield s


def claim(name: str, storage_class: str, size: str = "16Mi") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": size}},
        },
    }


def storage_class(name: str, *, reclaim: str = "Delete", mode: str = "Immediate") -> Obj:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "kubevisor.io/local",
        "reclaimPolicy": reclaim,
        "volumeBindingMode": mode,
    }


def data_volume(name: str, source: Obj, size: str = "16Mi") -> Obj:
    return {
        "apiVersion": CDI,
        "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}},
    }


async def bound(client: Client, name: str) -> Obj:
    pvcs = client.resource("v1", "persistentvolumeclaims")
    return await until(
        lambda: pvcs.get(name, "default"), lambda c: c.get("status", {}).get("phase") == "Bound", 10, name
    )


async def provisioned(client: Client, data_dir: Path, body: Obj) -> tuple[str, Path]:
    """The claim ``body`` created; once it is bound and its volume's image exists: (the volume's name, the
    image)."""
    created = await client.resource("v1", "persistentvolumeclaims").create(body)
    await bound(client, body["metadata"]["name"])
    name = f"pvc-{created['metadata']['uid']}"
    image = data_dir / "volumes" / name / "disk.img"
    await until(lambda: asyncio.to_thread(image.exists), bool, 10, "the image")
    return name, image


async def dv_phase(client: Client, name: str, phase: str, timeout: float = 20) -> Obj:
    dvs = client.resource(CDI, "datavolumes")
    return await until(
        lambda: dvs.get(name, "default"),
        lambda d: d.get("status", {}).get("phase") == phase,
        timeout,
        f"DataVolume {name} {phase}",
    )


async def maybe(resources: ResourceClient, name: str, namespace: str | None = None) -> Obj:
    """The object, or {} while it does not exist."""
    try:
        return await resources.get(name, namespace)
    except errors.NotFoundError:
        return {}


def condition(obj: Obj, kind: str) -> Obj:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


async def test_default_class_and_its_profile(client: Client, plat: Platform) -> None:
    sc = await client.resource("storage.k8s.io/v1", "storageclasses").get("local")
    assert sc["provisioner"] == "kubevisor.io/local"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["reclaimPolicy"] == "Delete" and sc["allowVolumeExpansion"] is True
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    profiles = client.resource(CDI, "storageprofiles")
    profile = await until(lambda: maybe(profiles, "local"), lambda p: bool(p.get("status")), 10, "profile")
    assert profile["status"]["claimPropertySets"] == [
        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}
    ]
    assert (plat.data_dir / "default-storageclass-created").exists()


async def test_immediate_provisioning_and_delete_reclaim(client: Client, data_dir: Path) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(storage_class("fast"))
    pvcs = client.resource("v1", "persistentvolumeclaims")
    pvs = client.resource("v1", "persistentvolumes")
    created = await pvcs.create(claim("data", "fast"))
    pvc = await bound(client, "data")
    name = f"pvc-{created['metadata']['uid']}"
    assert pvc["spec"]["volumeName"] == name
    pv = await pvs.get(name)
    assert pv["spec"]["hostPath"]["path"] == str(data_dir / "volumes" / name)
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [NODE]
    image = data_dir / "volumes" / name / "disk.img"
    await until(lambda: _exists(image), bool, 10, "the image")
    assert image.stat().st_size == 16 * MiB
    await pvcs.delete("data", "default")
    await gone(pvs, name)
    assert not image.parent.exists()


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


async def test_retain_keeps_the_image(client: Client, data_dir: Path) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(
        storage_class("keep", reclaim="Retain")
    )
    pvcs = client.resource("v1", "persistentvolumeclaims")
    pvs = client.resource("v1", "persistentvolumes")
    name, image = await provisioned(client, data_dir, claim("kept", "keep"))
    await pvcs.delete("kept", "default")
    await until(
        lambda: pvs.get(name), lambda v: v.get("status", {}).get("phase") == "Released", 10, "Released"
    )
    assert image.exists()


async def test_wait_for_first_consumer(client: Client) -> None:
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await pvcs.create(claim("later", "local"))
    vmi = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "consumer"},
        "spec": {
            "domain": {
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                "memory": {"guest": "64Mi"},
            },
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "later"}}],
            "terminationGracePeriodSeconds": 0,
        },
    }
    assert (await pvcs.get("later", "default")).get("status", {}).get("phase") in (None, "Pending")
    vmis = client.resource("kubevirt.io/v1", "virtualmachineinstances")
    await vmis.create(vmi)
    pvc = await bound(client, "later")
    assert pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == NODE
    await vmis.delete("consumer", "default")
    await gone(vmis, "consumer", "default", timeout=30)


async def test_a_claim_larger_than_the_free_space_is_refused(client: Client) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(storage_class("fast"))
    await client.resource("v1", "persistentvolumeclaims").create(claim("huge", "fast", size="100Ti"))
    events = client.resource("v1", "events")
    found = await until(
        lambda: events.list("default"),
        lambda es: any(
            e["reason"] == "ProvisioningFailed" and e["involvedObject"]["name"] == "huge" for e in es
        ),
        10,
        "a ProvisioningFailed event",
    )
    event = next(e for e in found if e["reason"] == "ProvisioningFailed")
    assert "free space" in event["message"] and NODE in event["message"]
    pvc = await client.resource("v1", "persistentvolumeclaims").get("huge", "default")
    assert not pvc["spec"].get("volumeName")


async def test_http_import(client: Client, server: imageserving.ImageServer, images: Path) -> None:
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(data_volume("imported", {"http": {"url": f"{server.url}/disk.qcow2"}}))
    dv = await dv_phase(client, "imported", "Succeeded")
    assert dv["status"]["progress"] == "100.0%"
    assert dv["status"]["claimName"] == "imported"
    assert condition(dv, "Ready")["status"] == "True"
    assert condition(dv, "Bound")["status"] == "True"
    assert condition(dv, "Running")["reason"] == "Completed"
    pvc = await client.resource("v1", "persistentvolumeclaims").get("imported", "default")
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "DataVolume"
    assert pvc["metadata"]["annotations"]["cdi.kubevirt.io/storage.pod.phase"] == "Succeeded"
    pv = await client.resource("v1", "persistentvolumes").get(pvc["spec"]["volumeName"])
    image = Path(pv["spec"]["hostPath"]["path"]) / "disk.img"
    assert image.stat().st_size == 16 * MiB
    assert await asyncio.to_thread(_read_at, image, MiB, 21) == b"kubevisor-import-test"
    await dvs.delete("imported", "default")
    await gone(client.resource("v1", "persistentvolumeclaims"), "imported", "default")


async def test_blank(client: Client) -> None:
    await client.resource(CDI, "datavolumes").create(data_volume("empty", {"blank": {}}, size="8Mi"))
    await dv_phase(client, "empty", "Succeeded")


@pytest.mark.parametrize(
    ("path", "reason", "words"),
    [
        ("missing.qcow2", "SourceNotFound", "404"),
        ("notes.txt", "InvalidImage", ""),
        ("big.qcow2", "ImageTooLarge", ""),
    ],
)
async def test_import_failures(
    client: Client, server: imageserving.ImageServer, path: str, reason: str, words: str
) -> None:
    await client.resource(CDI, "datavolumes").create(
        data_volume("bad", {"http": {"url": f"{server.url}/{path}"}})
    )
    dv = await dv_phase(client, "bad", "Failed")
    running = condition(dv, "Running")
    assert running["status"] == "False" and running["reason"] == reason
    assert words in running["message"]
    assert condition(dv, "Ready")["status"] == "False"
    assert dv["status"]["restartCount"] == 0


async def test_vm_waits_for_its_data_volumes(client: Client, server: imageserving.ImageServer) -> None:
    vm = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "vm"},
        "spec": {
            "runStrategy": "Always",
            "dataVolumeTemplates": [data_volume("vm-root", {"http": {"url": f"{server.url}/missing.qcow2"}})],
            "template": {
                "spec": {
                    "domain": {
                        "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                        "memory": {"guest": "64Mi"},
                    },
                    "volumes": [{"name": "root", "dataVolume": {"name": "vm-root"}}],
                }
            },
        },
    }
    created = await client.resource("kubevirt.io/v1", "virtualmachines").create(vm)
    vms = client.resource("kubevirt.io/v1", "virtualmachines")
    status = await until(
        lambda: vms.get("vm", "default"),
        lambda v: v.get("status", {}).get("printableStatus") == "DataVolumeError",
        20,
        "DataVolumeError",
    )
    assert status["status"]["ready"] is False
    dv = await client.resource(CDI, "datavolumes").get("vm-root", "default")
    assert dv["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    vmis = await client.resource("kubevirt.io/v1", "virtualmachineinstances").list("default")
    assert not list(vmis)


async def test_transient_errors_are_retried_and_deleting_stops_the_import(
    client: Client, server: imageserving.ImageServer
) -> None:
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(data_volume("busy", {"http": {"url": f"{server.url}/busy"}}))
    dv = await until(
        lambda: dvs.get("busy", "default"),
        lambda d: d.get("status", {}).get("restartCount", 0) >= 1,
        20,
        "a retry",
    )
    assert dv["status"]["phase"] == "ImportInProgress"
    running = condition(dv, "Running")
    assert running["reason"] == "SourceUnreachable" and "503" in running["message"]
    await dvs.delete("busy", "default")
    await gone(client.resource("v1", "persistentvolumeclaims"), "busy", "default")


async def test_https_with_a_ca_config_map_and_basic_auth(
    client: Client, images: Path, tmp_path: Path
) -> None:
    ca = imageserving.make_ca(tmp_path)
    await client.resource("v1", "configmaps").create(
        {"metadata": {"name": "ca"}, "data": {"ca.pem": ca.ca_pem}}
    )
    await client.resource("v1", "secrets").create(
        {"metadata": {"name": "auth"}, "stringData": {"accessKeyId": "user", "secretKey": "pass"}}
    )
    with imageserving.serving(images, tls=ca, credentials=("user", "pass")) as tls:
        source = {"http": {"url": f"{tls.url}/disk.qcow2", "certConfigMap": "ca", "secretRef": "auth"}}
        await client.resource(CDI, "datavolumes").create(data_volume("secure", source))
        await dv_phase(client, "secure", "Succeeded")


async def test_registry_import(client: Client, images: Path, tmp_path: Path) -> None:
    with containerdisks.running_registry() as registry:
        layout = tmp_path / "layout"
        containerdisks.disk_layout(layout, images / "disk.raw")
        await asyncio.to_thread(containerdisks.push, layout, f"{registry.host}/test/disk:latest")
        source = {"registry": {"url": f"docker://{registry.host}/test/disk:latest"}}
        await client.resource(CDI, "datavolumes").create(data_volume("pulled", source))
        await dv_phase(client, "pulled", "Succeeded", timeout=40)
    pvc = await client.resource("v1", "persistentvolumeclaims").get("pulled", "default")
    pv = await client.resource("v1", "persistentvolumes").get(pvc["spec"]["volumeName"])
    image = Path(pv["spec"]["hostPath"]["path"]) / "disk.img"
    assert await asyncio.to_thread(_read_at, image, MiB, 21) == b"kubevisor-import-test"


async def test_provisioned_capacity_counts_against_the_node(client: Client) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(storage_class("fast"))
    nodes = client.resource("v1", "nodes")
    node = await until(
        lambda: nodes.get(NODE),
        lambda n: "kubevisor.io/volume-capacity-bytes" in (n["metadata"].get("annotations") or {}),
        10,
        "the node's volume capacity",
    )
    capacity = int(node["metadata"]["annotations"]["kubevisor.io/volume-capacity-bytes"])
    size = str(capacity * 6 // 10 // MiB * MiB)  # two of these do not fit, though images are sparse
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await pvcs.create(claim("first", "fast", size=size))
    await bound(client, "first")
    await pvcs.create(claim("second", "fast", size=size))
    events = client.resource("v1", "events")
    found = await until(
        lambda: events.list("default"),
        lambda es: any(
            e["reason"] == "ProvisioningFailed" and e["involvedObject"]["name"] == "second" for e in es
        ),
        10,
        "a ProvisioningFailed event",
    )
    event = next(e for e in found if e["involvedObject"]["name"] == "second")
    assert "already provisioned" in event["message"]
    await pvcs.delete("first", "default")  # its volume is deleted: now the second fits
    await bound(client, "second")
