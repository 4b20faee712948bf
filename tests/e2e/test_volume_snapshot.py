"""VolumeSnapshots end to end: a DataVolume imports the test guest's disk over loopback HTTP, a
VolumeSnapshot of it is taken (offline), a VM's ``dataVolumeTemplates`` restore the snapshot
(``source.snapshot``) into a larger claim, the VM boots from it and writes a marker into its disk; then a
VolumeSnapshot of the running VM's claim is taken with QEMU's blockdev-backup (online) and holds the marker.

Every test kills the QEMUs of its data directory at the end, whatever happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from tests.e2e import libvmi
from tests.e2e.test_datavolume_clone import data_volume, image_of, sha256, succeeded
from tests.unit.storage import imageserving

pytestmark = pytest.mark.e2e

NODE = "e2e-vsnap"
VS = "snapshot.storage.k8s.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
MiB = 1024 * 1024
MARKER = "KUBEVISOR-SNAPSHOT-WRITTEN"
USER_DATA = libvmi.last_sector_writer(MARKER, "restored disk")


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    async with libvmi.guest_platform(data_dir, NODE) as platform:
        yield platform


async def snapshot_ready(client: Client, name: str, claim: str) -> Obj:
    snapshots = client.resource(VS, "volumesnapshots")
    body = {"metadata": {"name": name}, "spec": {"source": {"persistentVolumeClaimName": claim}}}
    await snapshots.create(body, libvmi.NAMESPACE)
    return await libvmi.until(
        lambda: snapshots.get(name, libvmi.NAMESPACE),
        lambda s: (
            (s.get("status") or {}).get("readyToUse") is True or bool((s.get("status") or {}).get("error"))
        ),
        60,
        f"VolumeSnapshot {name} ready",
    )


async def test_vm_boots_from_a_restored_snapshot_and_is_snapshotted_while_running(
    client: Client, data_dir: Path, guest_disk_server: imageserving.ImageServer
) -> None:
    dvs = client.resource(CDI, "datavolumes")
    http_source = {"http": {"url": f"{guest_disk_server.url}/guest.img"}}
    await dvs.create(data_volume("golden", http_source, "32Mi"), "default")
    await succeeded(client, "golden")
    golden = sha256(await image_of(client, "golden"))
    offline = await snapshot_ready(client, "golden-snap", "golden")
    assert offline["status"]["readyToUse"] is True, offline["status"]
    assert offline["status"]["restoreSize"] == "32Mi"

    name = "snap-vm"
    vm = libvmi.vm_manifest(name, user_data=USER_DATA)
    vm["spec"]["template"]["spec"]["volumes"][0] = {
        "name": "rootdisk",
        "dataVolume": {"name": f"{name}-root"},
    }
    vm["spec"]["dataVolumeTemplates"] = [
        {
            "metadata": {"name": f"{name}-root"},
            "spec": {
                "source": {"snapshot": {"namespace": libvmi.NAMESPACE, "name": "golden-snap"}},
                "storage": {"resources": {"requests": {"storage": "48Mi"}}},
            },
        }
    ]
    await client.resource(libvmi.KV, "virtualmachines").create(vm, libvmi.NAMESPACE)
    await succeeded(client, f"{name}-root")
    await libvmi.vmi_running(client, name, 60)
    text = await libvmi.serial_line(data_dir, name, f"{guest.USERDATA_END} rc=0", 90)
    assert f"restored disk sectors={48 * MiB // 512}" in text  # the requested size, not the snapshot's

    online = await snapshot_ready(client, "running-snap", f"{name}-root")  # QEMU writes it meanwhile
    assert online["status"]["readyToUse"] is True, online["status"]
    assert online["status"]["restoreSize"] == "48Mi"
    data = data_dir / "volumesnapshots" / online["status"]["boundVolumeSnapshotContentName"] / "disk.img"
    content = await client.resource(VS, "volumesnapshotcontents").get(
        online["status"]["boundVolumeSnapshotContentName"]
    )
    indications = content["metadata"]["annotations"]["snapshot.storage.kubevisor.io/indications"]
    assert indications.startswith("Online,"), indications  # blockdev-backup from the running QEMU
    with data.open("rb") as f:
        f.seek(48 * MiB - 512)
        assert f.read(len(MARKER)) == MARKER.encode()  # what the running guest wrote is in the snapshot
    assert sha256(await image_of(client, "golden")) == golden  # the source was only read
