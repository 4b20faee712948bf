"""Disks and images end to end, the real platform booting the test guest under QEMU: a claim of the
default ``local`` class grown while its guest runs (the node grows the image through QEMU's
``block_resize``; the guest's ``/sys/class/block/vdb/size`` follows at once, the claim's and the VMI's
status show the new capacity), with ``status.volumeStatus`` listing every volume; and a VM booting from
the test guest's disk uploaded through the upload proxy into a volumeMode Block DataVolume (held back
until the upload succeeded; a loop device when the test runs as root).

What the apiserver refuses and the offline growth: tests/integration/agent/test_volume_expansion.py.
The test kills the QEMUs of its data directory at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.agent import blockdevices
from kubevisor.api.registry import Obj
from kubevisor.cli.main import main as cli
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from kubevisor.testing.console import Console
from tests.e2e import libvmi
from tests.e2e.test_vm_hotplug import run_in_guest

pytestmark = pytest.mark.e2e

NODE = "e2e-expansion"
CDI = "cdi.kubevirt.io/v1beta1"
MiB = 1024 * 1024
WAIT_FOR_SIZE = (
    "i=0; while [ $i -lt 150 ] && [ $(cat /sys/class/block/vdb/size) = {old} ]; do sleep 0.2; i=$((i+1)); "
    "done; echo {marker}-$(cat /sys/class/block/vdb/size)"
)


@pytest.fixture
async def plat(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Platform]:
    async with libvmi.guest_platform(data_dir, NODE, test_guest) as platform:
        yield platform


def claim(name: str, size: str) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local",
            "resources": {"requests": {"storage": size}},
        },
    }


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def entries(vmi: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in (vmi.get("status") or {}).get("volumeStatus") or []}


async def test_a_running_guest_sees_its_disk_grow(plat: Platform, client: Client) -> None:
    name = "grows"
    pvcs = client.resource("v1", "persistentvolumeclaims")
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    await pvcs.create(claim("grow-data", "16Mi"), libvmi.NAMESPACE)
    manifest = libvmi.vm_manifest(
        name,
        disks=[{"name": "data", "disk": {"bus": "virtio"}}],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "grow-data"}}],
    )
    await client.resource(libvmi.KV, "virtualmachines").create(manifest, libvmi.NAMESPACE)
    vmi = await libvmi.vmi_running(client, name)
    await libvmi.serial_line(plat.data_dir, name, guest.READY_MARKER, 60)

    # every volume is listed, as KubeVirt does: targets, the claim's facts, sizes
    listed = entries(vmi)
    assert list(listed) == ["rootdisk", "data"]
    assert listed["rootdisk"]["target"] == "vda" and "persistentVolumeClaimInfo" not in listed["rootdisk"]
    data = listed["data"]
    assert data["target"] == "vdb" and data["size"] == 16 * MiB
    assert data["persistentVolumeClaimInfo"] == {
        "claimName": "grow-data",
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Filesystem",
        "capacity": {"storage": "16Mi"},
        "requests": {"storage": "16Mi"},
        "filesystemOverhead": "0",
    }
    assert "phase" not in data  # phases are for hotplugged volumes only

    async with Console(libvmi.run_dir(plat.data_dir, name) / "serial.sock") as console:
        assert await run_in_guest(console, "echo size-$(cat /sys/class/block/vdb/size)", "size") == str(
            16 * MiB // 512
        )
        await pvcs.patch("grow-data", {"spec": {"resources": {"requests": {"storage": "48Mi"}}}}, "default")
        grown = await run_in_guest(
            console, WAIT_FOR_SIZE.format(old=16 * MiB // 512, marker="grown"), "grown"
        )
        assert grown == str(48 * MiB // 512)
        wrote = (
            "printf kubevisor-grown | dd of=/dev/vdb bs=512 seek=65536 conv=fsync 2>/dev/null; echo wrote-$?"
        )
        assert await run_in_guest(console, wrote, "wrote") == "0"  # past the old end

    pvc = await pvcs.get("grow-data", libvmi.NAMESPACE)
    assert pvc["status"]["capacity"] == {"storage": "48Mi"}
    vmi = await libvmi.until(
        lambda: vmis.get(name, libvmi.NAMESPACE),
        lambda o: entries(o)["data"].get("size") == 48 * MiB,
        30,
        "volumeStatus with the new size",
    )
    assert entries(vmi)["data"]["persistentVolumeClaimInfo"]["capacity"] == {"storage": "48Mi"}
    image = plat.data_dir / "volumes" / pvc["spec"]["volumeName"] / "disk.img"
    assert read_at(image, 65536 * 512, 15) == b"kubevisor-grown"
    await libvmi.until(  # the event follows the status write
        lambda: libvmi.events_for(client, "grow-data"),
        lambda events: {"Resizing", "VolumeResizeSuccessful"} <= {e["reason"] for e in events},
        30,
        "the resize events",
    )


async def test_a_vm_boots_from_an_uploaded_block_data_volume(
    plat: Platform, client: Client, test_guest: guest.Guest
) -> None:
    """The test guest's disk uploaded through the upload proxy into a volumeMode Block DataVolume: the VM
    waits until the upload has succeeded, then boots from it as a loop device; the guest writes to it and
    sees it grow; the loop device goes with QEMU."""
    name = "uploaded"
    dvs = client.resource(CDI, "datavolumes")
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    await dvs.create(
        {
            "apiVersion": CDI,
            "kind": "DataVolume",
            "metadata": {"name": name},
            "spec": {
                "source": {"upload": {}},
                "storage": {"volumeMode": "Block", "resources": {"requests": {"storage": "64Mi"}}},
            },
        },
        libvmi.NAMESPACE,
    )
    await libvmi.until(
        lambda: dvs.get(name, libvmi.NAMESPACE),
        lambda dv: (dv.get("status") or {}).get("phase") == "UploadReady",
        30,
        "UploadReady",
    )
    manifest = libvmi.vm_manifest(name)
    manifest["spec"]["template"]["spec"]["volumes"][0] = {"name": "rootdisk", "dataVolume": {"name": name}}
    await client.resource(libvmi.KV, "virtualmachines").create(manifest, libvmi.NAMESPACE)

    # held back while nothing is uploaded: an Event says why, no QEMU
    events = await libvmi.until(
        lambda: libvmi.events_for(client, name),
        lambda es: any("is an upload target" in e.get("message", "") for e in es),
        30,
        "the VMI waiting for the upload",
    )
    assert any(e["reason"] == "DataVolumeNotReady" for e in events)
    assert libvmi.qemu_pid(plat.data_dir, name) is None

    args = ["image-upload", "dv", name, "--no-create", "--image-path", str(test_guest.disk)]
    assert await asyncio.to_thread(cli, [*args, "--kubeconfig", str(plat.kubeconfig)]) == 0
    vmi = await libvmi.vmi_running(client, name, 60)
    await libvmi.serial_line(plat.data_dir, name, guest.READY_MARKER, 60)

    pvc = await client.resource("v1", "persistentvolumeclaims").get(name, libvmi.NAMESPACE)
    image = plat.data_dir / "volumes" / pvc["spec"]["volumeName"] / "disk.img"
    (loop,) = await blockdevices.devices_of(image) if blockdevices.available() else (image,)
    assert entries(vmi)["rootdisk"]["persistentVolumeClaimInfo"]["volumeMode"] == "Block"
    assert "filesystemOverhead" not in entries(vmi)["rootdisk"]["persistentVolumeClaimInfo"]

    sectors = 64 * MiB // 512
    async with Console(libvmi.run_dir(plat.data_dir, name) / "serial.sock") as console:
        assert await run_in_guest(console, "echo size-$(cat /sys/class/block/vda/size)", "size") == str(
            sectors
        )
        wrote = (
            f"printf kubevisor-block | dd of=/dev/vda bs=512 seek={sectors - 8} conv=fsync 2>/dev/null; "
            "echo wrote-$?"
        )
        assert await run_in_guest(console, wrote, "wrote") == "0"
        await client.resource("v1", "persistentvolumeclaims").patch(
            name, {"spec": {"resources": {"requests": {"storage": "96Mi"}}}}, libvmi.NAMESPACE
        )
        grow = WAIT_FOR_SIZE.replace("vdb", "vda").format(old=sectors, marker="grown")
        assert await run_in_guest(console, grow, "grown") == str(96 * MiB // 512)
    assert read_at(image, (sectors - 8) * 512, 15) == b"kubevisor-block"
    assert image.stat().st_size == 96 * MiB

    # the loop device goes with QEMU
    await client.resource(libvmi.KV, "virtualmachines").patch(
        name, {"spec": {"runStrategy": "Halted"}}, libvmi.NAMESPACE
    )
    await libvmi.gone(vmis, name)
    if blockdevices.available():
        await libvmi.until(
            lambda: blockdevices.devices_of(image), lambda found: loop not in found, 30, "detached"
        )
