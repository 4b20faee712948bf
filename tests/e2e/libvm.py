"""libvm: run one :class:`~kubevisor.virt.domain.Domain` under QEMU for a test, the way the agent will.

Start sequence: spawn QEMU paused, connect QMP (retrying until the socket answers), connect the serial
console (so no early output is lost), check the run state, then ``cont``. Each step registers its undo
with a reverter, so a failed start leaves no QEMU behind; leaving the ``async with`` kills QEMU.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from kubevisor.testing import guest
from kubevisor.testing.console import Console
from kubevisor.virt import process, qemucmd
from kubevisor.virt.domain import Disk, Domain, KernelBoot, Nic, RunPaths
from kubevisor.virt.qmp import QmpError, Session

BOOT_TIMEOUT = 90.0
"""Deadline for a TCG boot to the guest's ready marker (about 4 s on an idle 2-core machine)."""


@dataclass
class RunningVm:
    """A started VM: its QEMU process, QMP session and serial console."""

    domain: Domain
    pid: int
    qmp: Session
    console: Console
    resumed_at: float
    """``time.monotonic()`` when the vCPUs were started."""

    async def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> tuple[str, float]:
        """Wait for the guest's ready marker; its hostname and the seconds since the vCPUs started."""
        match = await self.console.wait_for(rf"{guest.READY_MARKER} hostname=(\S+)", timeout)
        return match.group(1), time.monotonic() - self.resumed_at


def kernel_boot_domain(
    run_dir: Path, test_guest: guest.Guest, *, disks: tuple[Disk, ...] = (), nics: tuple[Nic, ...] = ()
) -> Domain:
    """A domain booting the test guest's kernel and initramfs directly."""
    kernel_boot = KernelBoot(test_guest.kernel, test_guest.initrd, guest.KERNEL_CMDLINE)
    return Domain(
        name="e2e", run=RunPaths(run_dir), memory_mib=256, kernel_boot=kernel_boot, disks=disks, nics=nics
    )


def disk_boot_domain(run_dir: Path, boot_disk: Disk, *, machine: str = "q35") -> Domain:
    """A domain whose firmware boots from ``boot_disk``."""
    return Domain(name="e2e", run=RunPaths(run_dir), memory_mib=256, machine=machine, disks=(boot_disk,))


def qemu_log(domain: Domain) -> str:
    try:
        return domain.run.qemu_log.read_text()
    except FileNotFoundError:
        return ""


@asynccontextmanager
async def running(domain: Domain) -> AsyncIterator[RunningVm]:
    """Start ``domain`` (paused, then resumed once QMP and the console are connected); kill it at exit."""
    domain.run.directory.mkdir(parents=True, exist_ok=True)
    async with process.Reverter() as revert:
        pid = process.spawn(qemucmd.command(domain), log_path=domain.run.qemu_log)
        revert.add(lambda: process.kill(pid))
        qmp = Session(domain.run.qmp)
        try:
            await qmp.connect(timeout=30, alive=lambda: process.is_running(pid))
        except QmpError as e:
            raise AssertionError(f"{e}\nQEMU said:\n{qemu_log(domain)}") from e
        revert.add(qmp.close)
        console = Console(domain.run.serial)
        await console.connect()
        revert.add(console.close)
        status = await qmp.status()
        assert status == "prelaunch", f"QEMU should start paused, is {status}"
        await qmp.cont()
        vm = RunningVm(domain, pid, qmp, console, time.monotonic())
        revert.success()
    try:
        yield vm
    finally:
        await console.close()
        await qmp.close()
        process.kill(pid)
