"""A VirtualMachineInstance's spec -> the :class:`~kubevisor.virt.domain.Domain` the driver runs.

Pure: the host is prepared first (:mod:`kubevisor.agent.preparing` turns each volume into an image file),
and this module only maps KubeVirt's fields onto the driver's, so every rule here is unit-tested without
QEMU. What the driver cannot do yet is refused with a :class:`ConversionError` naming the field and what to
use instead, never silently dropped.

Mapping (KubeVirt's field -> Domain):

- memory: ``domain.memory.guest``, else ``domain.resources.requests.memory``, else the limit; MiB,
  rounded up.
- CPU: ``domain.cpu`` sockets/cores/threads (1 each by default); ``host-model`` and ``host-passthrough``
  become the driver's default (``host`` under KVM, QEMU's default model under TCG), a named model passes.
- ``domain.machine.type`` (q35 by default), ``domain.firmware.uuid``, ACPI unless
  ``domain.features.acpi.enabled`` is false; ``firmware.kernelBoot``: QEMU loads the prepared kernel and
  initrd with ``kernelArgs`` as the command line; ``bootloader.efi``: OVMF (refused when not installed).
- disks, in ``devices.disks`` order: ``disk``/``lun`` (bus virtio, sata or scsi) and ``cdrom`` (sata or
  scsi), ``bootOrder``, ``serial``, ``cache``, ``shareable``, read-only when the target or the volume is.
- interfaces on the pod network (bridge, masquerade or slirp binding; model virtio, e1000, e1000e or
  rtl8139; ``macAddress``, else one derived from the VMI's uid; ``bootOrder``): the tap device of the
  interface's pod network attachment (:mod:`kubevisor.agent.networking` attached it before), or, for an
  interface without one (slirp, or the node's pod network is off), QEMU's private user-mode network
  (guest address 10.0.2.15 by DHCP, outbound NAT, no inbound).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from kubevisor.api.kubevirt import (
    Disk as ApiDisk,
)
from kubevisor.api.kubevirt import (
    Interface,
    VirtualMachineInstanceSpec,
)
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.network import bindings
from kubevisor.virt.domain import Accel, Cpu, Disk, DiskBus, Domain, Firmware, KernelBoot, Nic, RunPaths

__all__ = [
    "ConversionError",
    "PreparedVolume",
    "domain",
    "domain_name",
    "guest_memory_mib",
    "hostname",
    "parse_spec",
    "wants_uefi",
]

MIB = 1024 * 1024
DEFAULT_MACHINE = "q35"
HOST_CPU_MODELS = ("host-model", "host-passthrough")
DISK_BUSES: tuple[DiskBus, ...] = ("virtio", "sata", "scsi")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")
CACHE_MODES = ("none", "writethrough", "writeback")
USER_MODE_BINDINGS = ("bridge", "masquerade", "slirp")


class ConversionError(ValueError):
    """The VMI asks for something this node cannot run; the message names the field and the fix."""


@dataclass(frozen=True)
class PreparedVolume:
    """A volume made ready on the host: the image file a disk attaches."""

    path: Path
    """Absolute path of the image."""
    format: Literal["raw", "qcow2"]
    """Image format (never probed from the file's content for user-supplied images)."""
    readonly: bool = False
    """The volume itself is read-only (a cloud-init seed), whatever its disk says."""
    shareable: bool = False
    """Other QEMUs may write the image at the same time (a ReadWriteMany claim): ``share-rw``."""
    nfs_server: str | None = None
    """The image is ``path`` on this NFS server, opened by QEMU's own NFS driver."""


def parse_spec(spec: Mapping[str, Any]) -> VirtualMachineInstanceSpec:
    """The VMI spec as the typed model (the apiserver already validated it)."""
    try:
        return VirtualMachineInstanceSpec.model_validate(spec)
    except ValueError as e:
        raise ConversionError(f"spec: cannot be read: {e}") from e


def domain_name(namespace: str, name: str) -> str:
    """The QEMU ``-name`` of a VMI: unique on a node."""
    return f"{namespace}_{name}"


def hostname(name: str, spec: VirtualMachineInstanceSpec) -> str:
    """The guest's hostname as KubeVirt sets it: ``spec.hostname``, else the VMI name up to its first dot,
    cut to 63 characters."""
    return spec.hostname or name.split(".", 1)[0][:63]


def guest_memory_mib(spec: VirtualMachineInstanceSpec) -> int:
    """Guest memory in MiB (rounded up): ``memory.guest``, else the memory request, else the limit."""
    dom = spec.domain
    resources = dom.resources
    candidates: list[tuple[str, Any]] = [
        ("spec.domain.memory.guest", dom.memory.guest if dom.memory else None),
        (
            "spec.domain.resources.requests.memory",
            ((resources.requests or {}) if resources else {}).get("memory"),
        ),
        (
            "spec.domain.resources.limits.memory",
            ((resources.limits or {}) if resources else {}).get("memory"),
        ),
    ]
    for field, value in candidates:
        if value is None:
            continue
        amount = parse_quantity(value)
        if amount is None or amount <= 0:
            raise ConversionError(f"{field}: {value!r} is not a positive memory quantity, e.g. 128Mi")
        return max(1, math.ceil(amount / MIB))
    raise ConversionError(
        "spec.domain.memory.guest: the VMI gives no guest memory; "
        "set spec.domain.memory.guest or spec.domain.resources.requests.memory"
    )


def wants_uefi(spec: VirtualMachineInstanceSpec) -> tuple[bool, bool]:
    """(UEFI, Secure Boot) as ``domain.firmware.bootloader`` asks (BIOS by default; KubeVirt's EFI
    default is Secure Boot on)."""
    bootloader = spec.domain.firmware.bootloader if spec.domain.firmware else None
    if bootloader is None or bootloader.efi is None:
        return False, False
    secure = bootloader.efi.secure_boot
    return True, True if secure is None else secure


def _cpu(spec: VirtualMachineInstanceSpec) -> Cpu:
    cpu = spec.domain.cpu
    if cpu is None:
        return Cpu()
    model = None if not cpu.model or cpu.model in HOST_CPU_MODELS else cpu.model
    return Cpu(sockets=cpu.sockets or 1, cores=cpu.cores or 1, threads=cpu.threads or 1, model=model)


def _disk(index: int, disk: ApiDisk, volumes: Mapping[str, PreparedVolume]) -> Disk:
    where = f"spec.domain.devices.disks[{index}]"
    volume = volumes.get(disk.name)
    if volume is None:
        raise ConversionError(f"{where}.name: no volume named {disk.name!r} in spec.volumes; add one")
    cdrom = disk.cdrom is not None
    if disk.cdrom is not None:
        target_field, bus, readonly = "cdrom", disk.cdrom.bus or "sata", disk.cdrom.readonly is not False
    elif disk.lun is not None:
        target_field, bus, readonly = "lun", disk.lun.bus or "scsi", bool(disk.lun.readonly)
    else:
        target = disk.disk
        target_field = "disk"
        bus = (target.bus if target else None) or "virtio"
        readonly = bool(target and target.readonly)
    if bus not in DISK_BUSES:
        raise ConversionError(
            f"{where}.{target_field}.bus: bus {bus!r} is not supported on this node; use virtio, sata or scsi"
        )
    if cdrom and bus == "virtio":
        raise ConversionError(f"{where}.cdrom.bus: a CD-ROM cannot be on the virtio bus; use sata or scsi")
    if disk.cache is not None and disk.cache not in CACHE_MODES:
        raise ConversionError(f"{where}.cache: {disk.cache!r} is not one of {', '.join(CACHE_MODES)}")
    return Disk(
        name=disk.name,
        path=volume.path,
        bus=bus,
        cdrom=cdrom,
        format=volume.format,
        readonly=readonly or volume.readonly,
        boot_order=disk.boot_order,
        serial=disk.serial,
        cache=cast(Literal["none", "writethrough", "writeback"] | None, disk.cache),
        shareable=bool(disk.shareable) or volume.shareable,
        nfs_server=volume.nfs_server,
    )


def _nic(
    index: int,
    iface: Interface,
    spec: VirtualMachineInstanceSpec,
    uid: str,
    attachment: bindings.Attachment | None = None,
) -> Nic:
    where = f"spec.domain.devices.interfaces[{index}]"
    network = next((n for n in spec.networks or [] if n.name == iface.name), None)
    if network is None:
        raise ConversionError(f"{where}.name: no network named {iface.name!r} in spec.networks; add one")
    if network.pod is None:
        raise ConversionError(
            f"{where}: network {iface.name!r} is not the pod network; secondary networks are not supported "
            "on this node yet"
        )
    binding = next(
        (b for b in ("bridge", "masquerade", "slirp", "sriov", "macvtap", "passt") if getattr(iface, b)), None
    )
    if iface.passt_binding is not None:
        binding = "passtBinding"
    elif iface.binding is not None:
        binding = f"{iface.binding.name} plugin"
    if binding is not None and binding not in USER_MODE_BINDINGS:
        raise ConversionError(
            f"{where}: the {binding} binding is not supported on this node yet; use masquerade or bridge"
        )
    model = iface.model or "virtio"
    if model not in NIC_MODELS:
        raise ConversionError(
            f"{where}.model: {model!r} is not supported here; use one of {', '.join(NIC_MODELS)}"
        )
    if attachment is not None:
        return Nic(
            name=iface.name,
            mac=attachment.mac,
            model=cast(Literal["virtio", "e1000", "e1000e", "rtl8139"], model),
            tap=attachment.device,
            boot_order=iface.boot_order,
        )
    return Nic(
        name=iface.name,
        mac=iface.mac_address or bindings.mac_address(uid),
        model=cast(Literal["virtio", "e1000", "e1000e", "rtl8139"], model),
        boot_order=iface.boot_order,
    )


def domain(
    spec: VirtualMachineInstanceSpec,
    *,
    namespace: str,
    name: str,
    uid: str,
    run: RunPaths,
    volumes: Mapping[str, PreparedVolume],
    accel: Accel,
    firmware: Firmware | None = None,
    attachments: Mapping[str, bindings.Attachment] | None = None,
    kernel_boot: KernelBoot | None = None,
) -> Domain:
    """The Domain running the VMI ``namespace/name`` (``uid``) from the prepared ``volumes`` (volume name
    -> image). ``firmware`` is the UEFI set-up :mod:`~kubevisor.agent.preparing` made when
    :func:`wants_uefi`; BIOS otherwise. ``attachments`` (interface name -> its pod network attachment)
    give interfaces their tap device; the others get QEMU's user-mode network. ``kernel_boot`` is the kernel
    (and initrd) :mod:`~kubevisor.agent.preparing` found for ``firmware.kernelBoot``."""
    dom = spec.domain
    if dom.firmware is not None and dom.firmware.kernel_boot is not None and kernel_boot is None:
        raise ConversionError(
            "spec.domain.firmware.kernelBoot: the kernel was not prepared; name it in kernelBoot.container"
        )
    uefi, _ = wants_uefi(spec)
    firmware = firmware or Firmware()
    if uefi and not firmware.uefi:
        raise ConversionError(
            "spec.domain.firmware.bootloader.efi: UEFI firmware (OVMF) is not installed on this node; "
            "install the ovmf package or use bootloader.bios"
        )
    devices = dom.devices
    disks = tuple(_disk(i, d, volumes) for i, d in enumerate(devices.disks or []))
    attached = attachments or {}
    nics = tuple(
        _nic(i, iface, spec, uid, attached.get(iface.name))
        for i, iface in enumerate(devices.interfaces or [])
    )
    acpi = dom.features.acpi if dom.features else None
    return Domain(
        name=domain_name(namespace, name),
        run=run,
        memory_mib=guest_memory_mib(spec),
        cpu=_cpu(spec),
        accel=accel,
        machine=(dom.machine.type if dom.machine else None) or DEFAULT_MACHINE,
        uuid=dom.firmware.uuid if dom.firmware else None,
        firmware=firmware,
        kernel_boot=kernel_boot,
        disks=disks,
        nics=nics,
        graphics=devices.autoattach_graphics_device is not False,  # KubeVirt: VGA + VNC unless turned off
        serial_log=True,
        start_paused=True,
        acpi=acpi is None or acpi.enabled is not False,
        rng=devices.rng is not None,
        hotplug=not devices.disable_hotplug,  # room for kubevisor.agent.hotplug
    )
