"""Attach and detach disks of a running QEMU over QMP (KubeVirt's volume hotplug, without libvirt).

Attach: ``blockdev-add`` of a ``file`` node and a format node on it, then ``device_add`` of ``scsi-hd``
on the always-present virtio-scsi controller (QEMU picks a free target) or ``virtio-blk-pci`` on the first
free PCIe root port (q35; on i440fx the root bus itself hotplugs). If the device cannot be added, both
nodes are deleted again: nothing half-attached stays.

Detach: ``device_del``, then wait for QEMU's ``DEVICE_DELETED`` event for that device (a SCSI disk goes at
once; a PCI one after the guest's hotplug driver lets it go), then ``blockdev-del`` of the format node
and its file node.

What QEMU has is read back with ``query-block`` (device id -> format node), so an agent that restarted
finds the disks it hotplugged earlier. Node names of hotplugged disks are ``hpd-<hash>`` (format) and
``hpf-<hash>`` (file), from the disk's name (node names are limited to 31 characters); those of disks
the VM started with are qemucmd's ``drive-<i>`` and ``file-<i>``.

Pure argument builders (:func:`blockdev_args`, :func:`device_args`, :func:`file_node`) are apart from
the QMP calls, so every rule is unit-tested without QEMU.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kubevisor.virt import qemucmd
from kubevisor.virt.qmp import QmpError, Session

__all__ = [
    "DETACH_TIMEOUT",
    "HotplugDisk",
    "attach",
    "attached",
    "blockdev_args",
    "detach",
    "device_args",
    "file_node",
    "format_node",
]

DETACH_TIMEOUT = 10.0
"""Seconds to wait for ``DEVICE_DELETED`` after ``device_del`` before trying again later."""


@dataclass(frozen=True)
class HotplugDisk:
    """A disk to attach to a running VM."""

    name: str
    """The disk's (and volume's) name in the VMI; the device id is ``ua-<name>``."""
    path: Path
    """The image file."""
    bus: Literal["scsi", "virtio"] = "scsi"
    """scsi (scsi-hd on virtio-scsi, KubeVirt's default for hotplug) or virtio (virtio-blk-pci)."""
    format: Literal["raw", "qcow2"] = "raw"
    """Image format."""
    readonly: bool = False
    """Attach read-only."""
    serial: str | None = None
    """Serial number the guest sees."""
    nfs_server: str | None = None
    """The image is ``path`` on this NFS server, opened by QEMU's NFS driver (as :class:`Disk`'s)."""
    shareable: bool = False
    """Other QEMUs may write the image at the same time (``share-rw``, a ReadWriteMany claim)."""


def format_node(name: str) -> str:
    """The format node name of hotplugged disk ``name``."""
    return f"hpd-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def file_node(fmt_node: str) -> str:
    """The file node under format node ``fmt_node`` (hotplugged or started with)."""
    if fmt_node.startswith("hpd-"):
        return "hpf-" + fmt_node.removeprefix("hpd-")
    if fmt_node.startswith("drive-"):
        return "file-" + fmt_node.removeprefix("drive-")
    return ""


def blockdev_args(disk: HotplugDisk) -> list[dict[str, Any]]:
    """The two ``blockdev-add`` argument sets (file node first) for ``disk``."""
    fmt = format_node(disk.name)
    source: dict[str, Any] = {"driver": "file", "filename": str(disk.path)}
    if disk.nfs_server is not None:
        source = {
            "driver": "nfs",
            "server": {"type": "inet", "host": disk.nfs_server},
            "path": str(disk.path),
        }
    return [
        {**source, "node-name": file_node(fmt), "read-only": disk.readonly},
        {"driver": disk.format, "file": file_node(fmt), "node-name": fmt, "read-only": disk.readonly},
    ]


def device_args(disk: HotplugDisk, *, bus: str | None) -> dict[str, Any]:
    """The ``device_add`` arguments of ``disk``; ``bus`` is the PCIe root port of a virtio disk (None: the
    root bus)."""
    device: dict[str, Any] = {"id": qemucmd.device_id(disk.name), "drive": format_node(disk.name)}
    if disk.bus == "scsi":
        device |= {"driver": "scsi-hd", "bus": f"{qemucmd.SCSI_CONTROLLER}.0"}
    else:
        device["driver"] = "virtio-blk-pci"
        if bus is not None:
            device["bus"] = bus
    if disk.serial:
        device["serial"] = disk.serial
    if disk.shareable:
        device["share-rw"] = True
    return device


async def attached(qmp: Session) -> dict[str, str]:
    """The disks QEMU has now: device id (``ua-<name>``) -> format node name."""
    found: dict[str, str] = {}
    for entry in await qmp.execute("query-block") or []:
        qdev = str(entry.get("qdev") or "")
        node = str((entry.get("inserted") or {}).get("node-name") or "")
        device = qdev.removeprefix("/machine/peripheral/").split("/")[0]
        if device and node:
            found[device] = node
    return found


async def attach(qmp: Session, disk: HotplugDisk, *, machine: str) -> None:
    """Attach ``disk``; on failure nothing of it stays (:class:`QmpError` says why)."""
    added: list[str] = []
    try:
        for args in blockdev_args(disk):
            await qmp.execute("blockdev-add", args)
            added.append(str(args["node-name"]))
        if disk.bus == "scsi" or "q35" not in machine:
            await qmp.execute("device_add", device_args(disk, bus=None))
            return
        error: QmpError | None = None
        for index in range(qemucmd.HOTPLUG_PORTS):  # the first free root port takes it
            try:
                await qmp.execute("device_add", device_args(disk, bus=qemucmd.hotplug_port(index)))
                return
            except QmpError as e:
                error = e
        raise QmpError(
            f"no free PCIe root port for virtio disk {disk.name!r} (all {qemucmd.HOTPLUG_PORTS} in use; "
            f"use bus scsi): {error}"
        )
    except QmpError:
        for node in reversed(added):
            try:
                await qmp.execute("blockdev-del", {"node-name": node})
            except QmpError:
                pass
        raise


async def detach(qmp: Session, device: str, node: str, *, timeout: float = DETACH_TIMEOUT) -> bool:
    """Detach the disk with device id ``device`` and format node ``node``; whether it is gone (False: the
    guest has not released it within ``timeout`` seconds; call again later)."""
    with qmp.listen("DEVICE_DELETED") as events:
        try:
            await qmp.execute("device_del", {"id": device})
        except QmpError:
            if device not in await attached(qmp):  # gone meanwhile; else an unplug already pending
                return await _delete_nodes(qmp, node)
        deadline = time.monotonic() + timeout
        while device in await attached(qmp):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await qmp.wait_event(events, "DEVICE_DELETED", min(remaining, 1.0))
            except QmpError:
                continue
    return await _delete_nodes(qmp, node)


async def _delete_nodes(qmp: Session, node: str) -> bool:
    for name in (node, file_node(node)):
        if not name:
            continue
        try:
            await qmp.execute("blockdev-del", {"node-name": name})
        except QmpError as e:
            if "not found" not in str(e).lower() and "cannot find" not in str(e).lower():
                raise
    return True
