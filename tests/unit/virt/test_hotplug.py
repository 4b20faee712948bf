"""Disk hotplug over QMP: the arguments of blockdev-add and device_add, the order of the calls, and that a
failed attach leaves no block node behind (a fake QMP session records the calls)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from kubevisor.virt import hotplug, qemucmd
from kubevisor.virt.domain import Domain, RunPaths
from kubevisor.virt.qmp import QmpError, Session


class FakeQmp:
    """Records commands; ``refuse`` maps a command to a predicate of its arguments that makes it fail."""

    def __init__(self, blocks: list[dict[str, Any]] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse: dict[str, Any] = {}
        self.blocks = blocks or []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        args = dict(arguments or {})
        self.calls.append((command, args))
        if command in self.refuse and self.refuse[command](args):
            raise QmpError(f"{command} refused")
        if command == "query-block":
            return self.blocks
        if command == "device_del":
            self.blocks = [b for b in self.blocks if args["id"] not in b["qdev"]]
        return {}

    @contextlib.contextmanager
    def listen(self, *names: str) -> Iterator[object]:
        yield object()

    async def wait_event(self, listener: object, name: str, timeout: float) -> dict[str, Any]:
        return {"event": name}


def session(fake: FakeQmp) -> Session:
    return cast(Session, fake)


DISK = hotplug.HotplugDisk(name="data", path=Path("/vol/pv1/disk.img"))


def test_node_names_are_short_stable_and_paired() -> None:
    node = hotplug.format_node("a-volume-name-that-is-sixty-three-characters-long-xxxxxxxxxxxxxx")
    assert node.startswith("hpd-") and len(node) <= 31
    assert hotplug.format_node("data") == hotplug.format_node("data") != hotplug.format_node("data2")
    assert hotplug.file_node(node) == "hpf-" + node.removeprefix("hpd-")
    assert hotplug.file_node("drive-3") == "file-3"  # a disk the VM started with
    assert hotplug.file_node("ovmf-code") == ""


def test_blockdev_args_file_then_format_node() -> None:
    fmt = hotplug.format_node("data")
    qcow = hotplug.HotplugDisk(name="data", path=Path("/v/x.qcow2"), format="qcow2", readonly=True)
    assert hotplug.blockdev_args(qcow) == [
        {"driver": "file", "filename": "/v/x.qcow2", "node-name": hotplug.file_node(fmt), "read-only": True},
        {"driver": "qcow2", "file": hotplug.file_node(fmt), "node-name": fmt, "read-only": True},
    ]


def test_device_args_scsi_on_the_controller_virtio_on_a_port() -> None:
    fmt = hotplug.format_node("data")
    assert hotplug.device_args(DISK, bus=None) == {
        "id": "ua-data",
        "drive": fmt,
        "driver": "scsi-hd",
        "bus": "scsi0.0",
    }
    virtio = hotplug.HotplugDisk(name="data", path=DISK.path, bus="virtio", serial="S1")
    assert hotplug.device_args(virtio, bus="hotplug1") == {
        "id": "ua-data",
        "drive": fmt,
        "driver": "virtio-blk-pci",
        "bus": "hotplug1",
        "serial": "S1",
    }


async def test_attach_adds_nodes_then_the_device() -> None:
    fake = FakeQmp()
    await hotplug.attach(session(fake), DISK, machine="q35")
    assert [c for c, _ in fake.calls] == ["blockdev-add", "blockdev-add", "device_add"]
    assert fake.calls[2][1]["driver"] == "scsi-hd"


async def test_virtio_attach_tries_each_free_root_port() -> None:
    fake = FakeQmp()
    fake.refuse["device_add"] = lambda args: args.get("bus") == "hotplug0"  # taken
    virtio = hotplug.HotplugDisk(name="data", path=DISK.path, bus="virtio")
    await hotplug.attach(session(fake), virtio, machine="pc-q35-8.2")
    assert [a.get("bus") for c, a in fake.calls if c == "device_add"] == ["hotplug0", "hotplug1"]


async def test_a_failed_attach_deletes_its_nodes() -> None:
    fake = FakeQmp()
    fake.refuse["device_add"] = lambda args: True
    with pytest.raises(QmpError, match="no free PCIe root port"):
        await hotplug.attach(
            session(fake), hotplug.HotplugDisk(name="data", path=DISK.path, bus="virtio"), machine="q35"
        )
    deleted = [a["node-name"] for c, a in fake.calls if c == "blockdev-del"]
    fmt = hotplug.format_node("data")
    assert deleted == [fmt, hotplug.file_node(fmt)]


async def test_attached_reads_device_ids_and_nodes_from_query_block() -> None:
    fake = FakeQmp(
        [
            {"qdev": "/machine/peripheral/ua-root/virtio-backend", "inserted": {"node-name": "drive-0"}},
            {"qdev": "ua-data", "inserted": {"node-name": "hpd-1"}},
            {"qdev": "/machine/peripheral/ua-cd", "device": ""},  # an empty CD-ROM: no node
        ]
    )
    assert await hotplug.attached(session(fake)) == {"ua-root": "drive-0", "ua-data": "hpd-1"}


async def test_detach_deletes_the_device_then_its_nodes() -> None:
    fmt = hotplug.format_node("data")
    fake = FakeQmp([{"qdev": "ua-data", "inserted": {"node-name": fmt}}])
    assert await hotplug.detach(session(fake), "ua-data", fmt)
    calls = [(c, a.get("id") or a.get("node-name")) for c, a in fake.calls if c != "query-block"]
    assert calls == [
        ("device_del", "ua-data"),
        ("blockdev-del", fmt),
        ("blockdev-del", hotplug.file_node(fmt)),
    ]


def test_hotplug_domains_have_a_scsi_controller_and_free_root_ports() -> None:
    domain = Domain(name="d", run=RunPaths(Path("/run/kv/d")), memory_mib=64, guest_agent=False, hotplug=True)
    argv = qemucmd.command(domain)
    devices = [arg for i, arg in enumerate(argv[1:]) if argv[i] == "-device"]
    assert '{"driver":"virtio-scsi-pci","id":"scsi0"}' in devices
    ports = [d for d in devices if "pcie-root-port" in d]
    assert len(ports) == qemucmd.HOTPLUG_PORTS
    assert '"id":"hotplug0"' in ports[0]
    plain = qemucmd.command(Domain(name="d", run=RunPaths(Path("/run/kv/d")), memory_mib=64))
    assert not any("scsi" in a or "pcie-root-port" in a for a in plain)
