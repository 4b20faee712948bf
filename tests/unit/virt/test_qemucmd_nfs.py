"""NFS disks on the QEMU command line: QEMU's own NFS block driver (BlockdevOptionsNfs), no host file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubevisor.virt import hotplug, qemucmd
from kubevisor.virt.domain import Disk, Domain, RunPaths


def blockdevs(argv: list[str]) -> list[dict[str, Any]]:
    return [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]


def devices(argv: list[str]) -> list[dict[str, Any]]:
    return [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-device" and argv[i + 1][0] == "{"]


def test_an_nfs_disk_is_opened_by_qemus_nfs_driver_and_a_shared_one_is_share_rw() -> None:
    disk = Disk(
        name="data",
        path=Path("/export/vms/pvc-1/disk.img"),
        nfs_server="127.0.0.1",
        shareable=True,
        cache="none",
    )
    argv = qemucmd.command(
        Domain(name="ns_vm", run=RunPaths(Path("/run/kv/vm")), memory_mib=128, disks=(disk,))
    )
    file_node, fmt_node = blockdevs(argv)
    assert file_node == {
        "driver": "nfs",
        "server": {"type": "inet", "host": "127.0.0.1"},
        "path": "/export/vms/pvc-1/disk.img",
        "node-name": "file-0",
        "read-only": False,
        "cache": {"direct": True, "no-flush": False},
    }
    assert fmt_node["driver"] == "raw" and fmt_node["file"] == "file-0"
    (device,) = [d for d in devices(argv) if d.get("id") == "ua-data"]
    assert device["share-rw"] is True


def test_a_local_disk_keeps_the_file_driver() -> None:
    disk = Disk(name="data", path=Path("/var/lib/kubevisor/volumes/pv/disk.img"))
    argv = qemucmd.command(
        Domain(name="ns_vm", run=RunPaths(Path("/run/kv/vm")), memory_mib=128, disks=(disk,))
    )
    file_node = blockdevs(argv)[0]
    assert file_node["driver"] == "file" and file_node["filename"] == "/var/lib/kubevisor/volumes/pv/disk.img"


def test_a_hotplugged_nfs_disk_uses_the_nfs_driver_too() -> None:
    disk = hotplug.HotplugDisk(
        name="data", path=Path("/export/pvc-1/disk.img"), nfs_server="nfs.example", shareable=True
    )
    file_args, fmt_args = hotplug.blockdev_args(disk)
    assert file_args["driver"] == "nfs" and "filename" not in file_args
    assert file_args["server"] == {"type": "inet", "host": "nfs.example"}
    assert file_args["path"] == "/export/pvc-1/disk.img"
    assert fmt_args["file"] == file_args["node-name"]
    assert hotplug.device_args(disk, bus=None)["share-rw"] is True
