"""What the VM benchmarks share: ``kubevisor up`` (API server, controllers, node agent) in its own process,
serving the test guest's disk through the node image mirror, and VMI manifests that boot it.

The platform runs with QEMU's user-mode network (``--no-pod-network``): benchmarks send no traffic, and the
pod network would touch the host's namespace. Leaving the ``with`` block stops the platform, then kills the
QEMUs of its data directory (they outlive the platform by design) and removes their memory cgroups.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubevisor.client import Client, NotFoundError  # noqa: E402
from kubevisor.virt import cgroups, process  # noqa: E402

KV = "kubevirt.io/v1"
IMAGE = "registry.local/kubevisor/test-guest:latest"
NAMESPACE = "default"
NODE = "bench-node"


def run(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, with SIGTERM (a ``timeout``) cancelling it like Ctrl+C, so that leaving
    :class:`Up` still stops the platform and kills its QEMUs."""

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main

    asyncio.run(guarded())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def vmi_manifest(
    name: str, *, memory: str = "128Mi", grace: int = 0, cpu_request: str | None = None
) -> dict[str, Any]:
    """A bare VMI booting the test guest from a virtio containerDisk (no NIC: nothing to measure there)."""
    resources = {"resources": {"requests": {"cpu": cpu_request}}} if cpu_request else {}
    return {
        "apiVersion": KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench": "vm"}},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "domain": {
                "devices": {
                    "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}],
                    "autoattachGraphicsDevice": False,
                    "autoattachPodInterface": False,
                },
                "memory": {"guest": memory},
                **resources,
            },
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": IMAGE}}],
        },
    }


class Up:
    """``kubevisor up`` with an agent, in a subprocess with a fresh data directory."""

    def __init__(self, data_dir: Path, disk: Path) -> None:
        self.data_dir = data_dir
        self.disk = disk
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def run_dir(self, name: str) -> Path:
        return self.data_dir / "vms" / NAMESPACE / name

    async def __aenter__(self) -> Up:
        self._spawn()
        deadline = time.monotonic() + 90
        while not self._has_kubeconfig():
            self._check(deadline)
            await asyncio.sleep(0.1)
        async with Client.from_kubeconfig(self.data_dir / "kubeconfig") as client:
            nodes = client.resource("v1", "nodes")
            while True:
                self._check(deadline)
                try:
                    node = await nodes.get(NODE)
                    conditions = (node.get("status") or {}).get("conditions") or []
                    if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                        return self
                except (NotFoundError, OSError):  # the agent has not registered its Node yet
                    pass
                await asyncio.sleep(0.1)

    def _has_kubeconfig(self) -> bool:
        return (self.data_dir / "kubeconfig").exists()

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubevisor.cli.main",
                "up",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                "--node-name",
                NODE,
                "--no-pod-network",
                "--image-mirror",
                f"{IMAGE}={self.disk}",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )

    def _check(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError("kubevisor up exited early")
        if time.monotonic() > deadline:
            raise RuntimeError("kubevisor up did not become ready with its node within 90 s")

    def client(self) -> Client:
        return Client.from_kubeconfig(self.data_dir / "kubeconfig")

    def rss_kib(self) -> int:
        assert self.proc is not None
        return rss_kib(self.proc.pid)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        kill_qemus(self.data_dir)


def qemu_pids(marker: Path) -> list[int]:
    """Live QEMUs whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = process.cmdline(int(entry.name))
        if args and "qemu-system" in args[0] and any(str(marker) in a for a in args):
            found.append(int(entry.name))
    return found


def kill_qemus(data_dir: Path) -> None:
    for pid in qemu_pids(data_dir):
        process.kill(pid)
    for record in data_dir.glob("vms/*/*/cgroup"):
        cgroups.remove(Path(record.read_text().strip()))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def first_line_seen(log: Path) -> bool:
    """Whether the serial log holds a complete non-empty line."""
    try:
        text = log.read_bytes().replace(b"\r", b"")
    except FileNotFoundError:
        return False
    return any(line.strip() for line in text.split(b"\n")[:-1])


async def wait_first_line(log: Path, timeout: float = 120) -> float:
    """``time.monotonic()`` when ``log`` first holds a non-empty line (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not first_line_seen(log):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no serial line in {log} within {timeout:g} s")
        await asyncio.sleep(0.005)
    return time.monotonic()


def load_note() -> str:
    """The machine's load while measuring (benchmarks on a shared machine are noisy: say so)."""
    load = Path("/proc/loadavg").read_text().split()[0]
    return f"1-min load average {load} on {os.cpu_count()} cores"
