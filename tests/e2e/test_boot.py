"""The test guest boots under QEMU through the driver's first layer, by direct kernel boot and from its
disk image, under TCG (or KVM where a probe proves it works): serial console, QMP pause/resume, ACPI
powerdown, user-mode networking with HTTP, and NoCloud/ConfigDrive seeds."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from kubevisor.testing import guest
from kubevisor.virt import probe, process
from kubevisor.virt.domain import Disk, DiskBus, Nic, PortForward
from tests.e2e import libvm

pytestmark = pytest.mark.e2e

USER_DATA = "#!/bin/sh\necho user-data says $((6 * 7)) on $(hostname)\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(url: str, timeout: float) -> str:
    """GET ``url``, retrying connection errors until ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                response = await client.get(url)
                response.raise_for_status()
                return response.text
            except httpx.TransportError:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.1)


async def power_down(vm: libvm.RunningVm) -> None:
    """ACPI powerdown: the guest says so, QEMU reports a guest shutdown, and the process exits cleanly."""
    with vm.qmp.listen("SHUTDOWN") as events:
        started = time.monotonic()
        await vm.qmp.system_powerdown()
        event = await vm.qmp.wait_event(events, "SHUTDOWN", timeout=15)
    assert event["data"]["guest"] is True, event
    assert await process.wait_exit(vm.pid, timeout=15), "QEMU still runs after the guest powered off"
    assert time.monotonic() - started < 15
    assert process.exit_status(vm.pid) == 0
    assert guest.POWEROFF_MARKER in vm.domain.run.serial_log.read_text()


async def test_direct_kernel_boot_pause_resume_network_powerdown(
    test_guest: guest.Guest, run_dir: Path
) -> None:
    port = free_port()
    nic = Nic("default", mac="52:54:00:12:34:56", port_forwards=(PortForward(guest_port=80, host_port=port),))
    domain = libvm.kernel_boot_domain(run_dir, test_guest, nics=(nic,))
    async with libvm.running(domain) as vm:
        hostname, seconds = await vm.wait_ready()
        assert hostname == "kubevisor-guest"
        print(f"direct kernel boot: ready marker {seconds:.2f} s after resume")

        address = await vm.console.wait_for(rf"{guest.IP_MARKER} eth0=(\S+)", 30)
        assert address.group(1) == "10.0.2.15"  # QEMU user-mode network's first DHCP lease
        assert "hostname=kubevisor-guest" in await http_get(f"http://127.0.0.1:{port}/", timeout=30)

        await vm.qmp.stop()
        assert await vm.qmp.status() == "paused"
        await vm.console.send("echo resumed-$((40 + 2))\n")
        await vm.qmp.cont()
        assert await vm.qmp.status() == "running"
        await vm.console.wait_for(r"^resumed-42$", 30)  # typed while paused, run once resumed

        assert process.find(domain.run.pidfile, marker=str(domain.run.qmp)) == vm.pid
        await power_down(vm)
        assert process.find(domain.run.pidfile, marker=str(domain.run.qmp)) is None


@pytest.mark.parametrize(
    ("bus", "cdrom", "machine"),
    [("virtio", False, "q35"), ("scsi", False, "q35"), ("sata", True, "q35"), ("virtio", False, "pc")],
    ids=["virtio-q35", "scsi-q35", "sata-cdrom-q35", "virtio-pc"],
)
async def test_boots_from_disk_image(
    test_guest: guest.Guest, run_dir: Path, bus: DiskBus, cdrom: bool, machine: str
) -> None:
    boot_disk = Disk("boot", test_guest.disk, bus=bus, cdrom=cdrom, readonly=True, boot_order=1)
    async with libvm.running(libvm.disk_boot_domain(run_dir, boot_disk, machine=machine)) as vm:
        hostname, seconds = await vm.wait_ready()
        assert hostname == "kubevisor-guest"
        print(f"disk boot ({bus}, {machine}): ready marker {seconds:.2f} s after resume")
        await power_down(vm)


@pytest.mark.parametrize("meta_format", ["yaml", "json"])
async def test_nocloud_seed_sets_hostname_and_runs_user_data(
    test_guest: guest.Guest, run_dir: Path, meta_format: str
) -> None:
    meta_data = None
    if meta_format == "json":  # what KubeVirt writes
        meta_data = json.dumps({"instance-id": "vm-1.default", "local-hostname": "nocloud-vm"})
    seed = guest.nocloud_seed(
        run_dir / "seed.iso", hostname="nocloud-vm", user_data=USER_DATA, meta_data=meta_data
    )
    disk = Disk("cloudinitdisk", seed, readonly=True)
    async with libvm.running(libvm.kernel_boot_domain(run_dir, test_guest, disks=(disk,))) as vm:
        hostname, _ = await vm.wait_ready()
        assert hostname == "nocloud-vm"
        output = vm.console.text.split(guest.USERDATA_BEGIN, 1)[1].split(guest.USERDATA_END, 1)
        assert output[0].strip() == "user-data says 42 on nocloud-vm"
        assert output[1].startswith(" rc=0")


async def test_configdrive_seed_on_scsi_cdrom(test_guest: guest.Guest, run_dir: Path) -> None:
    seed = guest.configdrive_seed(run_dir / "seed.iso", hostname="configdrive-vm", user_data=USER_DATA)
    disk = Disk("cloudinitdisk", seed, bus="scsi", cdrom=True)
    async with libvm.running(libvm.kernel_boot_domain(run_dir, test_guest, disks=(disk,))) as vm:
        hostname, _ = await vm.wait_ready()
        assert hostname == "configdrive-vm"
        assert "user-data says 42 on configdrive-vm" in vm.console.text


async def test_probe_boots_under_tcg_and_detects_an_accelerator(
    test_guest: guest.Guest, tmp_path: Path
) -> None:
    probe_guest = probe.ProbeGuest(
        test_guest.kernel, test_guest.initrd, guest.KERNEL_CMDLINE, guest.READY_MARKER
    )
    assert await probe.boots(probe_guest, "tcg", timeout=libvm.BOOT_TIMEOUT)

    cache_file = tmp_path / "accel.json"
    accel = await probe.detect(probe_guest, cache_file=cache_file, timeout=15)
    assert accel in ("kvm", "tcg")
    if not probe.kvm_device_usable():
        assert accel == "tcg"
    else:
        assert json.loads(cache_file.read_text())["accel"] == accel
    started = time.monotonic()
    assert await probe.detect(probe_guest, cache_file=cache_file) == accel  # remembered, not booted again
    assert time.monotonic() - started < 1


def test_guest_build_is_cached(test_guest: guest.Guest) -> None:
    guest.build.cache_clear()  # forget the in-process result: go through the on-disk cache
    started = time.monotonic()
    again = guest.build()
    assert again.directory == test_guest.directory
    assert time.monotonic() - started < 5
    assert guest.kernel_and_initrd() == (test_guest.kernel, test_guest.initrd)
    assert guest.disk_image() == test_guest.disk
