"""Disk hotplug, end to end: the real platform boots the test guest under QEMU; ``kubevisor addvolume
--persist`` attaches a claim while it runs (the guest sees a new SCSI disk and writes to it, the VMI's
``volumeStatus`` says Ready, the VM's spec keeps the volume), and ``kubevisor removevolume --persist``
detaches it (the guest sees it gone, the status and both specs drop it). The same with ``--bus virtio``: a
virtio-blk disk on a free PCIe root port, released by the guest's PCIe hotplug driver.

The API's errors (unknown claim, duplicate name, VMI not running) are tests/integration/apiserver/
test_volume_hotplug.py. The test kills the QEMUs of its data directory at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.api.registry import Obj
from kubevisor.cli.main import main as cli
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from kubevisor.testing.console import Console
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

NODE = "e2e-hotplug"
CLAIM = "data"
SECTORS = 16 * 1024 * 1024 // 512
"""Size of the claim's 16 MiB image in the guest's 512-byte sectors (``/sys/class/block/sda/size``)."""


@pytest.fixture
async def plat(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Platform]:
    async with libvmi.guest_platform(data_dir, NODE, test_guest) as platform:
        yield platform


def hotplug_status(vmi: Obj) -> list[Obj]:
    return [s for s in (vmi.get("status") or {}).get("volumeStatus") or [] if "hotplugVolume" in s]


async def run_in_guest(console: Console, command: str, marker: str, timeout: float = 30) -> str:
    """Type ``command`` (which must print ``marker-<result>``) and return the result."""
    await console.send(command + "\n")
    match = await console.wait_for(rf"^{marker}-(\S+)$", timeout)
    return match.group(1)


WAIT_FOR_SDA = (
    "i=0; while [ $i -lt 100 ] && [ {test} /sys/class/block/sda ]; do sleep 0.2; i=$((i+1)); done; "
    "echo {marker}-$([ -e /sys/class/block/sda ] && cat /sys/class/block/sda/size || echo none)"
)


async def test_addvolume_and_removevolume_on_a_running_guest(
    plat: Platform, client: Client, data_dir: Path
) -> None:
    name = "hotplug"
    kubeconfig = str(plat.kubeconfig)
    image = await libvmi.claim(client, data_dir, CLAIM, "16Mi")
    await client.resource(libvmi.KV, "virtualmachines").create(libvmi.vm_manifest(name), libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name)
    await libvmi.serial_line(data_dir, name, guest.READY_MARKER, 60)
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    vms = client.resource(libvmi.KV, "virtualmachines")

    async with Console(libvmi.run_dir(data_dir, name) / "serial.sock") as console:
        assert (
            await run_in_guest(console, "echo before-$(ls /sys/class/block | grep -c ^sd)", "before") == "0"
        )

        args = ["addvolume", name, f"--volume-name={CLAIM}", "--persist", "--kubeconfig", kubeconfig]
        assert await asyncio.to_thread(cli, args) == 0
        vmi = await libvmi.until(
            lambda: vmis.get(name, libvmi.NAMESPACE),
            lambda o: [s.get("phase") for s in hotplug_status(o)] == ["Ready"],
            30,
            "hotplugged volume Ready",
        )
        (entry,) = hotplug_status(vmi)
        assert entry["name"] == CLAIM and entry["target"] == "sda" and entry["reason"] == "VolumeReady"
        vm = await vms.get(name, libvmi.NAMESPACE)
        assert {"name": CLAIM, "persistentVolumeClaim": {"claimName": CLAIM, "hotpluggable": True}} in vm[
            "spec"
        ]["template"]["spec"]["volumes"]

        # the guest sees a new 16 MiB disk and writes to it
        sectors = await run_in_guest(console, WAIT_FOR_SDA.format(test="!", marker="added"), "added")
        assert sectors == str(SECTORS)
        written = "echo kubevisor-hotplugged | dd of=/dev/sda conv=fsync 2>/dev/null; echo wrote-$?"
        assert await run_in_guest(console, written, "wrote") == "0"
        assert image.read_bytes()[:20] == b"kubevisor-hotplugged"

        # removevolume: the guest sees it gone, the status and the specs drop it
        args = ["removevolume", name, f"--volume-name={CLAIM}", "--persist", "--kubeconfig", kubeconfig]
        assert await asyncio.to_thread(cli, args) == 0
        await libvmi.until(
            lambda: vmis.get(name, libvmi.NAMESPACE), lambda o: not hotplug_status(o), 30, "volume detached"
        )
        assert (
            await run_in_guest(console, WAIT_FOR_SDA.format(test="-e", marker="removed"), "removed") == "none"
        )
        vm = await vms.get(name, libvmi.NAMESPACE)
        assert all(v["name"] != CLAIM for v in vm["spec"]["template"]["spec"]["volumes"])
        vmi = await vmis.get(name, libvmi.NAMESPACE)
        assert all(v["name"] != CLAIM for v in vmi["spec"]["volumes"])

    # the claim's image stays, with what the guest wrote
    assert image.read_bytes()[:20] == b"kubevisor-hotplugged"


async def test_virtio_disk_hotplug_on_a_pcie_root_port(
    plat: Platform, client: Client, data_dir: Path
) -> None:
    name = "hotplug-virtio"
    kubeconfig = str(plat.kubeconfig)
    await libvmi.claim(client, data_dir, CLAIM, "16Mi")
    await client.resource(libvmi.KV, "virtualmachines").create(libvmi.vm_manifest(name), libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name)
    await libvmi.serial_line(data_dir, name, guest.READY_MARKER, 60)
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    wait_vdb = (
        "i=0; while [ $i -lt 100 ] && [ {test} /sys/class/block/vdb ]; do sleep 0.2; i=$((i+1)); done; "
        "echo {marker}-$([ -e /sys/class/block/vdb ] && cat /sys/class/block/vdb/size || echo none)"
    )
    async with Console(libvmi.run_dir(data_dir, name) / "serial.sock") as console:
        args = ["addvolume", name, f"--volume-name={CLAIM}", "--bus=virtio", "--kubeconfig", kubeconfig]
        assert await asyncio.to_thread(cli, args) == 0
        vmi = await libvmi.until(
            lambda: vmis.get(name, libvmi.NAMESPACE),
            lambda o: [s.get("phase") for s in hotplug_status(o)] == ["Ready"],
            30,
            "hotplugged volume Ready",
        )
        assert hotplug_status(vmi)[0]["target"] == "vdb"
        assert await run_in_guest(console, wait_vdb.format(test="!", marker="added"), "added") == str(SECTORS)
        args = ["removevolume", name, f"--volume-name={CLAIM}", "--kubeconfig", kubeconfig]
        assert await asyncio.to_thread(cli, args) == 0
        await libvmi.until(
            lambda: vmis.get(name, libvmi.NAMESPACE), lambda o: not hotplug_status(o), 40, "volume detached"
        )
        assert await run_in_guest(console, wait_vdb.format(test="-e", marker="removed"), "removed") == "none"
