"""VM snapshot and restore end to end: a running test guest (with qemu-ga: its file systems are frozen)
writes a known pattern to its claim's disk, is snapshotted while it keeps writing elsewhere on that disk,
is stopped, its disk overwritten on the host, restored and started again; the guest reads the pattern back
(md5sum of the region, inside the guest).

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
from kubevisor.testing.console import Console, ConsoleTimeout
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

NODE = "e2e-snapshot"
SNAP = "snapshot.kubevirt.io/v1beta1"
MiB = 1024 * 1024


@pytest.fixture
async def plat(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Platform]:
    async with libvmi.guest_platform(data_dir, NODE, test_guest) as platform:
        yield platform


async def shell(data_dir: Path, name: str) -> Console:
    """The guest's serial console, once its shell answers."""
    console = Console(libvmi.run_dir(data_dir, name) / "serial.sock")
    await console.connect()
    for attempt in range(60):
        await console.send(f"\necho alive-$((1000 + {attempt}))\n")
        try:
            await console.wait_for(rf"^alive-{1000 + attempt}$", 2)
            return console
        except ConsoleTimeout:
            continue
    raise AssertionError(f"the guest's shell does not answer:\n{console.tail()}")


async def checksum(console: Console, tag: str) -> str:
    """md5sum, inside the guest, of the first 8 MiB of /dev/vdb."""
    await console.send(f"echo {tag}-$(dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum)\n")
    match = await console.wait_for(rf"^{tag}-([0-9a-f]{{32}})", 60)
    return match.group(1)


async def agent_connected(client: Client, name: str) -> Obj:
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    return await libvmi.until(
        lambda: libvmi.get_or_empty(vmis, name),
        lambda o: any(
            c.get("type") == "AgentConnected" and c.get("status") == "True"
            for c in (o.get("status") or {}).get("conditions") or []
        ),
        60,
        f"VMI {name} AgentConnected",
    )


async def test_snapshot_while_writing_then_restore(
    plat: Platform, client: Client, data_dir: Path, test_guest: guest.Guest
) -> None:
    name = "snappy"
    image = await libvmi.claim(client, data_dir, "snappy-data", "64Mi", blank=True)
    vm = libvmi.vm_manifest(
        name,
        disks=[{"name": "data", "disk": {"bus": "virtio"}}],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "snappy-data"}}],
    )
    vms = client.resource(libvmi.KV, "virtualmachines")
    await vms.create(vm, libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name, 60)
    await agent_connected(client, name)
    console = await shell(data_dir, name)
    try:
        # a known pattern in the first 8 MiB; then a writer that keeps writing at 16 MiB
        await console.send(
            "dd if=/dev/urandom of=/tmp/a bs=1M count=8 2>/dev/null && "
            "dd if=/tmp/a of=/dev/vdb bs=1M conv=fsync 2>/dev/null && echo written-$((40 + 2))\n"
        )
        await console.wait_for(r"^written-42$", 60)
        written = await checksum(console, "before")
        await console.send(
            "(while true; do dd if=/dev/urandom of=/dev/vdb bs=64k count=16 seek=256 conv=fsync "
            "2>/dev/null; done) & echo writer-$((1 + 1))\n"
        )
        await console.wait_for(r"^writer-2$", 20)

        snap = await libvmi.snapshot_vm(client, "snap-snappy", name)
        assert snap["status"]["phase"] == "Succeeded", snap["status"]
        assert snap["status"]["indications"] == ["Online", "GuestAgent"]
        assert snap["status"]["snapshotVolumes"]["excludedVolumes"] == ["rootdisk"]
        await console.send("kill %1; echo stopped-$((2 + 3))\n")
        await console.wait_for(r"^stopped-5$", 20)
    finally:
        await console.close()

    # stop, overwrite the pattern on the host, restore, start: the guest reads the pattern again
    await vms.patch(name, {"spec": {"runStrategy": "Halted"}}, libvmi.NAMESPACE)
    await libvmi.vm_printable(client, name, "Stopped", 60)
    with image.open("r+b") as f:
        f.write(b"\0" * 8 * MiB)
    restores = client.resource(SNAP, "virtualmachinerestores")
    await restores.create(
        {
            "apiVersion": SNAP,
            "kind": "VirtualMachineRestore",
            "metadata": {"name": "restore-snappy"},
            "spec": {
                "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": name},
                "virtualMachineSnapshotName": "snap-snappy",
            },
        },
        libvmi.NAMESPACE,
    )
    await libvmi.until(
        lambda: libvmi.get_or_empty(restores, "restore-snappy"),
        lambda r: bool((r.get("status") or {}).get("complete")),
        30,
        "restore complete",
    )
    await vms.patch(name, {"spec": {"runStrategy": "Always"}}, libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name, 60)
    console = await shell(data_dir, name)
    try:
        assert await checksum(console, "after") == written
    finally:
        await console.close()
