"""``kubevisor up`` (API server, controllers and node agent in one process) killed with SIGKILL while a VM
runs: the guest keeps running, the next ``kubevisor up`` adopts the same QEMU (same pid, never a second
one) and the VM stays Running; a VM that fits on no node is ErrorUnschedulable with the reason in an
Event."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from kubevisor.client import Client
from kubevisor.testing import guest
from kubevisor.virt import cpuweights, process
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Up:
    """One ``kubevisor up`` process."""

    def __init__(self, data_dir: Path, port: int, image: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        argv = [
            sys.executable, "-m", "kubevisor.cli.main", "up",
            "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
            "--node-name", "crash-node", "--no-pod-network",
            "--image-mirror", f"{libvmi.IMAGE}={image}",
        ]  # fmt: skip
        self.log = (data_dir / "up.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.data_dir / "up.log").read_text()
            try:
                if httpx.get(f"https://127.0.0.1:{self.port}/readyz", verify=False, timeout=2).text == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"kubevisor up not ready within {timeout:g} s")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@asynccontextmanager
async def up(data_dir: Path, port: int, image: Path) -> AsyncIterator[tuple[Up, Client]]:
    proc = Up(data_dir, port, image)
    try:
        proc.wait_ready()
        async with Client.from_kubeconfig(data_dir / "kubeconfig") as client:
            yield proc, client
    finally:
        proc.stop()


async def test_sigkill_of_kubevisor_up_keeps_guests_and_adopts_them(
    data_dir: Path, test_guest: guest.Guest
) -> None:
    port = free_port()
    name = "survivor"
    async with up(data_dir, port, test_guest.disk) as (first, client):
        await client.resource(libvmi.KV, "virtualmachines").create(libvmi.vm_manifest(name), libvmi.NAMESPACE)
        vmi = await libvmi.vmi_running(client, name, timeout=120)
        await libvmi.serial_line(data_dir, name, guest.READY_MARKER, timeout=120)
        pid = libvmi.qemu_pid(data_dir, name)
        assert pid is not None
        guest_cpu = cpuweights.detect()  # the same cgroup as kubevisor up's: both are in this machine's root
        if guest_cpu is not None:  # a running guest ranks below the node's services for CPU
            assert pid in guest_cpu.members()
        first.kill()
    # everything of the platform is gone at once; the guest is not
    assert process.is_running(pid)
    assert libvmi.qemu_pids(data_dir) == [pid]

    async with up(data_dir, port, test_guest.disk) as (_, client):
        await libvmi.vm_printable(client, name, "Running")
        again = await client.resource(libvmi.KV, "virtualmachineinstances").get(name, libvmi.NAMESPACE)
        assert again["metadata"]["uid"] == vmi["metadata"]["uid"]
        log = data_dir / "up.log"

        async def read_log() -> str:
            return log.read_text(errors="replace")

        await libvmi.until(
            read_log, lambda text: f"adopted QEMU pid {pid} of VMI default/{name}" in text, 30, "adoption"
        )
        assert libvmi.qemu_pids(data_dir) == [pid], "a second QEMU was started"
        assert process.is_running(pid)
        started = [e for e in await libvmi.events_for(client, name) if e["reason"] == "Started"]
        assert len(started) == 1, started  # started once, by the first agent

        # an unschedulable VM on the same node: more memory than the node has
        big = libvmi.vm_manifest("too-big")
        big["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "4096Gi"
        await client.resource(libvmi.KV, "virtualmachines").create(big, libvmi.NAMESPACE)
        await libvmi.vm_printable(client, "too-big", "ErrorUnschedulable")
        events = await libvmi.until(
            lambda: libvmi.events_for(client, "too-big"),
            lambda events: any(e["reason"] == "FailedScheduling" for e in events),
            30,
            "a FailedScheduling event",
        )
        message = next(e["message"] for e in events if e["reason"] == "FailedScheduling")
        assert "0/1 nodes are available" in message and "memory" in message.lower(), message
        assert libvmi.qemu_pids(data_dir) == [pid]
