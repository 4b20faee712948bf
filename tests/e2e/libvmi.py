"""libvmi: VirtualMachines for end-to-end tests of the platform with its node agent, and waiting on them.

What the agent tests share: a VM manifest booting the test guest from a containerDisk served by the node's
image mirror, waiting for VMI phases and VM printable statuses with deadlines, recording every phase a
VMI passes through (a watch: a Failed phase can last milliseconds before the VM controller replaces the
VMI), and finding the QEMU processes of a data directory, so a test can kill what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from kubevisor.agent.running import AgentConfig
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import Client, NotFoundError
from kubevisor.client.requesting import ResourceClient
from kubevisor.platform import Platform
from kubevisor.testing import cluster, guest
from kubevisor.virt import cgroups, process

KV = "kubevirt.io/v1"
IMAGE = "registry.local/kubevisor/test-guest:latest"
"""The containerDisk image the node's image mirror maps to the test guest's disk image."""
NAMESPACE = "default"

T = TypeVar("T")


@contextlib.asynccontextmanager
async def guest_platform(
    data_dir: Path, node: str, test_guest: guest.Guest | None = None
) -> AsyncIterator[Platform]:
    """A running platform on ``data_dir`` with one node agent ``node`` (TCG) whose image mirror maps
    :data:`IMAGE` to the test guest's disk; without ``test_guest``, no image mirror (for tests that bring
    the guest's disk in through DataVolumes)."""
    mirror = {IMAGE: test_guest.disk} if test_guest is not None else {}
    config = AgentConfig(data_dir=data_dir, node_name=node, image_mirror=mirror, accel="tcg")
    async with cluster.running_platform(data_dir, agent=True, agent_config=config) as platform:
        yield platform


def vm_manifest(
    name: str,
    strategy: str = "Always",
    *,
    user_data: str | None = None,
    disks: list[Obj] | None = None,
    volumes: list[Obj] | None = None,
    grace: int | None = None,
) -> Obj:
    """A VM booting the test guest from a virtio containerDisk (the guest has no SATA driver), with a
    NoCloud seed on virtio when ``user_data`` is given, and ``disks``/``volumes`` added after those."""
    all_disks: list[Obj] = [{"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 1}]
    all_volumes: list[Obj] = [{"name": "rootdisk", "containerDisk": {"image": IMAGE}}]
    if user_data is not None:
        all_disks.append({"name": "cloudinitdisk", "disk": {"bus": "virtio"}})
        all_volumes.append({"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": user_data}})
    all_disks += disks or []
    all_volumes += volumes or []
    spec: Obj = {
        "domain": {
            "devices": {"disks": all_disks, "interfaces": [{"name": "default", "masquerade": {}}]},
            "memory": {"guest": "256Mi"},
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": all_volumes,
    }
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": KV,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"runStrategy": strategy, "template": {"metadata": {"labels": {"app": name}}, "spec": spec}},
    }


async def until(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float, what: str
) -> T:
    """Call ``probe`` until ``accept`` likes its result; fail after ``timeout`` seconds."""
    last: T | None = None
    deadline = time.monotonic() + timeout
    while True:
        last = await probe()
        if accept(last):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true after {timeout:g} s: {what} (last: {last!r})")
        await asyncio.sleep(0.02)


async def get_or_empty(resources: ResourceClient, name: str) -> Obj:
    try:
        found: Obj = await resources.get(name, NAMESPACE)
    except NotFoundError:
        return {}
    return found


def phase(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or "")


async def vmi_running(client: Client, name: str, timeout: float = 60, *, not_uid: str = "") -> Obj:
    """The VMI ``name`` once it is Running (and, with ``not_uid``, is another VMI than that one)."""
    vmis = client.resource(KV, "virtualmachineinstances")
    return await until(
        lambda: get_or_empty(vmis, name),
        lambda o: phase(o) == "Running" and o["metadata"]["uid"] != not_uid,
        timeout,
        f"VMI {name} Running",
    )


async def vm_printable(client: Client, name: str, want: str, timeout: float = 60) -> Obj:
    vms = client.resource(KV, "virtualmachines")
    return await until(
        lambda: get_or_empty(vms, name),
        lambda o: (o.get("status") or {}).get("printableStatus") == want,
        timeout,
        f"VM {name} printableStatus {want}",
    )


async def gone(resources: ResourceClient, name: str, timeout: float = 60) -> None:
    await until(
        lambda: get_or_empty(resources, name), lambda o: not o, timeout, f"{resources.plural}/{name} gone"
    )


async def snapshot_vm(client: Client, snapshot: str, vm: str, timeout: float = 60) -> Obj:
    """A new VirtualMachineSnapshot ``snapshot`` of the VM ``vm``, once it is Succeeded or Failed."""
    snapshots = client.resource("snapshot.kubevirt.io/v1beta1", "virtualmachinesnapshots")
    await snapshots.create(
        {
            "apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineSnapshot",
            "metadata": {"name": snapshot},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}},
        },
        NAMESPACE,
    )
    return await until(
        lambda: get_or_empty(snapshots, snapshot),
        lambda s: phase(s) in ("Succeeded", "Failed"),
        timeout,
        f"VirtualMachineSnapshot {snapshot} finished",
    )


async def vm_action(client: Client, name: str, action: str) -> None:
    """PUT the VM's start/stop/restart subresource, as ``virtctl`` does."""
    path = f"/apis/subresources.kubevirt.io/v1/namespaces/{NAMESPACE}/virtualmachines/{name}/{action}"
    await client.request("PUT", path)


async def events_for(client: Client, name: str) -> list[Obj]:
    """The Events about objects called ``name``, oldest first."""
    events = await client.resource("v1", "events").list(NAMESPACE)
    found = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
    return sorted(found, key=lambda e: str(e.get("firstTimestamp") or ""))


def run_dir(data_dir: Path, name: str) -> Path:
    return data_dir / "vms" / NAMESPACE / name


def qemu_pid(data_dir: Path, name: str) -> int | None:
    """The running QEMU of VMI ``name``, found as the agent finds it."""
    directory = run_dir(data_dir, name)
    return process.find(directory / "qemu.pid", marker=str(directory / "qmp.sock"))


async def serial_line(data_dir: Path, name: str, pattern: str, timeout: float = 90) -> str:
    """Wait until the VMI's serial log (``serial.log`` in its run directory) has a line containing
    ``pattern``; return the whole log."""
    log = run_dir(data_dir, name) / "serial.log"

    async def read() -> str:
        return read_log(log)

    return await until(read, lambda text: pattern in text, timeout, f"{pattern!r} in {log}")


def read_log(path: Path) -> str:
    """A log's text, carriage returns dropped; empty while the file does not exist."""
    try:
        return path.read_text(errors="replace").replace("\r", "")
    except FileNotFoundError:
        return ""


def qemu_pids(data_dir: Path) -> list[int]:
    """Every live QEMU whose command line mentions ``data_dir`` (the agent's QEMUs of that platform)."""
    found = []
    marker = str(data_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = process.cmdline(int(entry.name))
        qemu = args is not None and "qemu-system" in args[0] and any(marker in a for a in args)
        if qemu and process.is_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill_qemus(data_dir: Path) -> list[int]:
    """SIGKILL every QEMU of ``data_dir`` and remove their memory cgroups (test clean-up: QEMUs outlive the
    platform by design)."""
    pids = qemu_pids(data_dir)
    for pid in pids:
        process.kill(pid)  # its process group, then reaped (this test process spawned it)
    for record in data_dir.glob("vms/*/*/cgroup"):  # their memory cgroups (the agent records where)
        cgroups.remove(Path(record.read_text().strip()))
    return pids


class PhaseRecorder:
    """Every (uid, phase) a VMI called ``name`` passes through, from a watch started before the action."""

    def __init__(self, client: Client, name: str) -> None:
        self.vmis = client.resource(KV, "virtualmachineinstances")
        self.name = name
        self.seen: list[tuple[str, str, str]] = []
        """(event type, uid, phase) in order."""
        self.first_seen: dict[tuple[str, str], float] = {}
        """(uid, phase) -> ``time.monotonic()`` when the watch first reported it."""
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        current = await self.vmis.list(NAMESPACE, field_selector=f"metadata.name={self.name}")
        async with self.vmis.watch(
            NAMESPACE,
            resource_version=current.resource_version,
            field_selector=f"metadata.name={self.name}",
        ) as events:
            self._ready.set()
            async for event in events:
                if event.type in ("ADDED", "MODIFIED", "DELETED"):
                    uid = event.object["metadata"]["uid"]
                    self.seen.append((event.type, uid, phase(event.object)))
                    self.first_seen.setdefault((uid, phase(event.object)), time.monotonic())

    async def __aenter__(self) -> PhaseRecorder:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait(
        self, accept: Callable[[list[tuple[str, str, str]]], bool], timeout: float, what: str
    ) -> None:
        async def snapshot() -> list[tuple[str, str, str]]:
            return list(self.seen)

        await until(snapshot, accept, timeout, what)


@contextlib.asynccontextmanager
async def admin_client(kubeconfig: Path) -> AsyncIterator[Client]:
    async with Client.from_kubeconfig(kubeconfig) as client:
        yield client


READY = guest.READY_MARKER


async def claim(
    client: Client, data_dir: Path, name: str, size: str, *, image: Path | None = None, blank: bool = False
) -> Path:
    """A PersistentVolume ``pv-<name>`` (a hostPath directory under ``DATA/volumes``) and the claim ``name``
    of ``size`` (e.g. ``16Mi``) that binds to it; returns its ``disk.img``, which holds a copy of ``image``,
    a sparse blank image (``blank``), or nothing yet (the agent creates it, sparse, when it attaches it)."""
    directory = data_dir / "volumes" / f"pv-{name}"
    directory.mkdir(parents=True)
    disk = directory / "disk.img"
    if image is not None:
        shutil.copyfile(image, disk)
    elif blank:
        with disk.open("wb") as f:
            f.truncate(int(parse_quantity(size) or 0))
    await client.resource("v1", "persistentvolumes").create(
        {
            "metadata": {"name": f"pv-{name}"},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": str(directory)},
            },
        }
    )
    await client.resource("v1", "persistentvolumeclaims").create(
        {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
        },
        NAMESPACE,
    )
    return disk


def last_sector_writer(marker: str, label: str) -> str:
    """User data that writes ``marker`` into the last sector of the guest's ``vda`` and prints
    ``<label> sectors=<n>`` on the serial console."""
    return rf"""#!/bin/sh
sectors=$(cat /sys/class/block/vda/size)
printf '{marker}' | dd of=/dev/vda bs=512 seek=$((sectors - 1)) conv=notrunc 2>/dev/null
sync
echo "{label} sectors=$sectors"
"""
