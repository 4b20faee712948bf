"""DataVolume clone end to end: a DataVolume imports the test guest's disk over loopback HTTP, a VM's
``dataVolumeTemplates`` clone it (``source.pvc``) into a larger claim, the VM boots from the clone, sees the
requested size, and writes into its disk; the source's image is byte for byte what it was (sha256).

Every test kills the QEMUs of its data directory at the end, whatever happened.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from tests.e2e import libvmi
from tests.unit.storage import imageserving

pytestmark = pytest.mark.e2e

NODE = "e2e-clone"
CDI = "cdi.kubevirt.io/v1beta1"
MiB = 1024 * 1024
MARKER = "KUBEVISOR-CLONE-WRITTEN"
USER_DATA = libvmi.last_sector_writer(MARKER, "clone disk")


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    async with libvmi.guest_platform(data_dir, NODE) as platform:
        yield platform


def data_volume(name: str, source: Obj, size: str) -> Obj:
    return {
        "apiVersion": CDI,
        "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}},
    }


async def succeeded(client: Client, name: str, timeout: float = 60) -> Obj:
    dvs = client.resource(CDI, "datavolumes")
    return await libvmi.until(
        functools.partial(libvmi.get_or_empty, dvs, name),
        lambda d: libvmi.phase(d) == "Succeeded",
        timeout,
        f"DataVolume {name} Succeeded",
    )


async def image_of(client: Client, claim: str) -> Path:
    pvc = await client.resource("v1", "persistentvolumeclaims").get(claim, libvmi.NAMESPACE)
    pv = await client.resource("v1", "persistentvolumes").get(pvc["spec"]["volumeName"])
    return Path(pv["spec"]["hostPath"]["path"]) / "disk.img"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


async def test_vm_boots_from_a_clone_that_is_independent_of_its_source(
    client: Client, data_dir: Path, guest_disk_server: imageserving.ImageServer
) -> None:
    dvs = client.resource(CDI, "datavolumes")
    http_source = {"http": {"url": f"{guest_disk_server.url}/guest.img"}}
    await dvs.create(data_volume("golden", http_source, "32Mi"), "default")
    await succeeded(client, "golden")
    source = await image_of(client, "golden")
    before = sha256(source)

    name = "clone-vm"
    vm = libvmi.vm_manifest(name, user_data=USER_DATA)
    vm["spec"]["template"]["spec"]["volumes"][0] = {
        "name": "rootdisk",
        "dataVolume": {"name": f"{name}-root"},
    }
    vm["spec"]["dataVolumeTemplates"] = [
        {
            "metadata": {"name": f"{name}-root"},
            "spec": {
                "source": {"pvc": {"namespace": libvmi.NAMESPACE, "name": "golden"}},
                "storage": {"resources": {"requests": {"storage": "48Mi"}}},
            },
        }
    ]
    await client.resource(libvmi.KV, "virtualmachines").create(vm, libvmi.NAMESPACE)
    clone = await succeeded(client, f"{name}-root")
    assert clone["status"]["progress"] == "100.0%"

    await libvmi.vmi_running(client, name, 60)
    text = await libvmi.serial_line(data_dir, name, f"{guest.USERDATA_END} rc=0", 90)
    assert f"clone disk sectors={48 * MiB // 512}" in text  # the requested size, not the source's
    await libvmi.serial_line(data_dir, name, f"{guest.READY_MARKER} hostname={name}")

    target = await image_of(client, f"{name}-root")
    with target.open("rb") as f:
        f.seek(48 * MiB - 512)
        assert f.read(len(MARKER)) == MARKER.encode()  # the guest wrote into its clone
    assert sha256(source) == before  # ... and not into the source
