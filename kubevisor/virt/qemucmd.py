"""A :class:`~kubevisor.virt.domain.Domain` -> the ``qemu-system-x86_64`` argument list that runs it.

Pure: no I/O beyond looking for OVMF files in :func:`find_ovmf`, so every rule here is unit-tested.

Choices that hold for every VM:

- ``-nodefaults -no-user-config``: only the devices listed here exist; no host config file leaks in.
- ``-sandbox on`` with obsolete calls, privilege elevation, spawning and resource control denied: a
  compromised QEMU cannot exec or setuid. Nothing here needs QEMU to spawn (tap devices are opened by
  name with ``script=no``).
- Control and console are unix sockets in the run directory, QEMU listening (``server=on,wait=off``), so
  they survive the agent and a restarted agent reconnects. The serial console is also logged to a file,
  which keeps what the guest printed while nobody was connected.
- QEMU runs in the foreground (no ``-daemonize``); :mod:`kubevisor.virt.process` spawns it in its own
  session and finds it again by pidfile.
- ``-device`` and ``-blockdev`` are passed as JSON (QEMU >= 6.2), so file names need no escaping;
  ``-chardev``, ``-netdev`` and ``-vnc`` take ``key=value`` lists, where commas in values are doubled.
- QEMU ids: a disk or NIC device is ``ua-<name>`` (KubeVirt's alias convention, valid even when the name
  starts with a digit); block nodes are ``file-<i>`` and ``drive-<i>`` by disk index (node names are
  limited to 31 characters, KubeVirt names to 63).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubevisor.virt.domain import Disk, Domain, Nic, RunPaths

__all__ = [
    "HOTPLUG_PORTS",
    "MAX_SOCKET_PATH",
    "QEMU_BINARY",
    "SCSI_CONTROLLER",
    "DomainError",
    "OvmfFiles",
    "command",
    "device_id",
    "drive_node",
    "find_ovmf",
    "hotplug_port",
]

QEMU_BINARY = "qemu-system-x86_64"
MAX_SOCKET_PATH = 107
"""Longest unix socket path the kernel accepts (``sun_path`` is 108 bytes with its NUL)."""
AHCI_PORTS = 6
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
OVMF_DIRS = (Path("/usr/share/OVMF"), Path("/usr/share/ovmf"), Path("/usr/share/qemu"))
_CACHE_MODES = {
    # mode: (O_DIRECT on the host, ignore flushes, guest-visible write cache)
    "none": (True, False, True),
    "writethrough": (False, False, False),
    "writeback": (False, False, True),
    "directsync": (True, False, False),
    "unsafe": (False, True, True),
}
_NIC_DRIVERS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}


class DomainError(ValueError):
    """The domain cannot be expressed as a QEMU command line. The message names the field and the fix."""


@dataclass(frozen=True)
class OvmfFiles:
    """An installed OVMF build: firmware code, and the variable store template to copy per VM."""

    code: Path
    """Read-only firmware code."""
    vars_template: Path
    """Pristine variable store; each VM gets its own writable copy."""


def find_ovmf(*, secure_boot: bool = False, dirs: tuple[Path, ...] = OVMF_DIRS) -> OvmfFiles | None:
    """The installed OVMF files (Debian package ``ovmf``), or ``None`` when UEFI is not available."""
    pairs = (
        [("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"), ("OVMF_CODE.secboot.fd", "OVMF_VARS.ms.fd")]
        if secure_boot
        else [("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd")]
    )
    for directory in dirs:
        for code, variables in pairs:
            if (directory / code).is_file() and (directory / variables).is_file():
                return OvmfFiles(directory / code, directory / variables)
    return None


def device_id(name: str) -> str:
    """The QEMU device id of the disk or interface named ``name`` in the VMI."""
    return f"ua-{name}"


def drive_node(index: int) -> str:
    """The block node name of the format layer of ``domain.disks[index]`` (for block jobs, snapshots)."""
    return f"drive-{index}"


TCG_TB_SIZE_MIB = 64
"""TCG's translation cache in MiB. QEMU's default is an eighth of the host's memory, up to 1 GiB, touched as
guest code is translated: bounded, so that a guest's memory cgroup limit (:mod:`kubevisor.virt.cgroups`)
can count it; 64 MiB holds the hot code of a small guest (a full cache is flushed and refilled)."""


def command(domain: Domain, *, binary: str = QEMU_BINARY) -> list[str]:
    """The full argument list (``argv[0]`` is ``binary``) that runs ``domain``."""
    _validate(domain)
    run = domain.run
    argv = [
        binary,
        "-name", f"guest={_esc(domain.name)},debug-threads=on",
        "-nodefaults",
        "-no-user-config",
        "-sandbox", SANDBOX,
        "-msg", "timestamp=on",
        "-machine", _machine(domain),
        "-accel", f"tcg,tb-size={TCG_TB_SIZE_MIB}" if domain.accel == "tcg" else domain.accel,
        "-m", f"size={domain.memory_mib}M",
        "-smp", _smp(domain),
        "-display", "none",
        "-pidfile", str(run.pidfile),
        "-chardev", f"socket,id=qmp,path={_esc(str(run.qmp))},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", _serial_chardev(domain),
        "-device", _json({"driver": "isa-serial", "chardev": "serial0", "id": "serial0"}),
    ]  # fmt: skip
    cpu_model = domain.cpu.model or ("host" if domain.accel == "kvm" else None)
    if cpu_model:
        argv += ["-cpu", cpu_model]
    if domain.uuid:
        argv += ["-uuid", domain.uuid]
    if domain.start_paused:
        argv.append("-S")
    argv += _firmware(domain)
    if domain.kernel_boot:
        kb = domain.kernel_boot
        argv += ["-kernel", str(kb.kernel)]
        if kb.initrd:
            argv += ["-initrd", str(kb.initrd)]
        if kb.cmdline:
            argv += ["-append", kb.cmdline]
    argv += _disks(domain.disks, scsi_controller=domain.hotplug)
    if domain.hotplug and "q35" in domain.machine:
        argv += _hotplug_ports()
    for index, nic in enumerate(domain.nics):
        argv += _nic(index, nic)
    if domain.graphics:
        argv += ["-device", _json({"driver": "VGA", "id": "video0"}), "-vnc", f"unix:{_esc(str(run.vnc))}"]
    if domain.rng:
        argv += [
            "-object", _json({"qom-type": "rng-random", "id": "rng0", "filename": "/dev/urandom"}),
            "-device", _json({"driver": "virtio-rng-pci", "rng": "rng0", "id": "rng0-dev"}),
        ]  # fmt: skip
    if domain.guest_agent:
        argv += _guest_agent_channel(run)
    return argv


GUEST_AGENT_PORT_ID = "channel-qga"
"""The virtserialport's id: QMP's ``VSERPORT_CHANGE`` event names it when qemu-ga opens or closes it."""


def _guest_agent_channel(run: RunPaths) -> list[str]:
    return [
        "-chardev", f"socket,id=qga0,path={_esc(str(run.qga))},server=on,wait=off",
        "-device", _json({"driver": "virtio-serial-pci", "id": "virtio-serial0"}),
        "-device", _json({
            "driver": "virtserialport", "bus": "virtio-serial0.0", "chardev": "qga0",
            "name": "org.qemu.guest_agent.0", "id": GUEST_AGENT_PORT_ID,
        }),
    ]  # fmt: skip


# --- validation ---------------------------------------------------------------------------------------


def _validate(domain: Domain) -> None:
    if domain.memory_mib <= 0:
        raise DomainError(f"domain {domain.name}: memory_mib must be positive, got {domain.memory_mib}")
    cpu = domain.cpu
    if min(cpu.sockets, cpu.cores, cpu.threads) < 1:
        raise DomainError(f"domain {domain.name}: cpu sockets, cores and threads must each be at least 1")
    sockets = [domain.run.qmp, domain.run.serial] + ([domain.run.vnc] if domain.graphics else [])
    sockets += [domain.run.qga] if domain.guest_agent else []
    for path in sockets:
        if len(str(path).encode()) > MAX_SOCKET_PATH:
            raise DomainError(
                f"domain {domain.name}: socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
                "use a shorter run directory"
            )
    for kind, names in (("disks", [d.name for d in domain.disks]), ("nics", [n.name for n in domain.nics])):
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        if dupes:
            raise DomainError(f"domain {domain.name}: {kind}: duplicate names {dupes}; names must be unique")
    orders = [d.boot_order for d in domain.disks] + [n.boot_order for n in domain.nics]
    dupes_order = sorted(o for o, c in Counter(o for o in orders if o is not None).items() if c > 1)
    if dupes_order:
        raise DomainError(f"domain {domain.name}: boot orders {dupes_order} are used twice; make them unique")
    for i, disk in enumerate(domain.disks):
        where = f"domain {domain.name}: disks[{i}] ({disk.name})"
        if disk.cdrom and disk.bus == "virtio":
            raise DomainError(f"{where}: a CD-ROM cannot be on the virtio bus; use bus sata or scsi")
        if disk.boot_order is not None and disk.boot_order < 1:
            raise DomainError(f"{where}: boot_order must be 1 or more, got {disk.boot_order}")
    for i, nic in enumerate(domain.nics):
        if nic.tap and nic.port_forwards:
            raise DomainError(
                f"domain {domain.name}: nics[{i}] ({nic.name}): port_forwards need user-mode networking, "
                "not a tap device"
            )
    fw = domain.firmware
    if fw.secure_boot and not fw.uefi:
        raise DomainError(f"domain {domain.name}: firmware.secure_boot needs firmware.uefi")
    if fw.uefi and (fw.code is None or fw.vars is None):
        raise DomainError(
            f"domain {domain.name}: firmware.uefi needs firmware.code and firmware.vars "
            "(install the ovmf package; see find_ovmf)"
        )


# --- pieces -------------------------------------------------------------------------------------------


def _esc(value: str) -> str:
    """Escape a value inside a QEMU ``key=value,...`` option list."""
    return value.replace(",", ",,")


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _machine(domain: Domain) -> str:
    opts = [domain.machine, f"acpi={'on' if domain.acpi else 'off'}"]
    if domain.firmware.uefi:
        opts += ["pflash0=ovmf-code", "pflash1=ovmf-vars"]
    if domain.firmware.secure_boot:
        opts.append("smm=on")
    return ",".join(opts)


def _smp(domain: Domain) -> str:
    cpu = domain.cpu
    return f"cpus={cpu.count},sockets={cpu.sockets},cores={cpu.cores},threads={cpu.threads}"


def _serial_chardev(domain: Domain) -> str:
    opts = f"socket,id=serial0,path={_esc(str(domain.run.serial))},server=on,wait=off"
    if domain.serial_log:
        opts += f",logfile={_esc(str(domain.run.serial_log))},logappend=on"
    return opts


def _firmware(domain: Domain) -> list[str]:
    fw = domain.firmware
    if not fw.uefi:
        return []
    assert fw.code is not None and fw.vars is not None  # checked by _validate
    code = {"driver": "file", "filename": str(fw.code), "read-only": True}
    variables = {"driver": "file", "filename": str(fw.vars)}
    argv = [
        "-blockdev", _json({"driver": "raw", "node-name": "ovmf-code", "read-only": True, "file": code}),
        "-blockdev", _json({"driver": "raw", "node-name": "ovmf-vars", "file": variables}),
    ]  # fmt: skip
    if fw.secure_boot:
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return argv


HOTPLUG_PORTS = 2
"""Free PCIe root ports on q35 for virtio disks hotplugged while the VM runs."""
SCSI_CONTROLLER = "scsi0"
"""The id of the virtio-scsi controller (its bus is ``scsi0.0``)."""


def hotplug_port(index: int) -> str:
    """The id of the ``index``-th free PCIe root port (a virtio disk hotplugged on q35 is plugged there)."""
    return f"hotplug{index}"


def _hotplug_ports() -> list[str]:
    argv: list[str] = []
    for index in range(HOTPLUG_PORTS):
        port = {"driver": "pcie-root-port", "id": hotplug_port(index), "chassis": 100 + index, "slot": 0}
        argv += ["-device", _json(port)]
    return argv


def _disks(disks: tuple[Disk, ...], *, scsi_controller: bool = False) -> list[str]:
    argv: list[str] = []
    sata = [d for d in disks if d.bus == "sata"]
    for controller in range((len(sata) + AHCI_PORTS - 1) // AHCI_PORTS):
        argv += ["-device", _json({"driver": "ahci", "id": f"sata{controller}"})]
    if scsi_controller or any(d.bus == "scsi" for d in disks):
        argv += ["-device", _json({"driver": "virtio-scsi-pci", "id": "scsi0"})]
    sata_port = scsi_lun = 0
    for index, disk in enumerate(disks):
        readonly = disk.readonly or disk.cdrom
        direct, no_flush, write_cache = _CACHE_MODES.get(disk.cache or "writeback", (False, False, True))
        file_node: dict[str, Any] = {
            "driver": "host_device" if disk.path.parts[1:2] == ("dev",) else "file",  # a Block claim's loop
            "filename": str(disk.path),
            "node-name": f"file-{index}",
            "read-only": readonly,
        }
        if disk.nfs_server is not None:  # QEMU's own NFS client (BlockdevOptionsNfs); no host mount
            del file_node["filename"]
            file_node |= {
                "driver": "nfs",
                "server": {"type": "inet", "host": disk.nfs_server},
                "path": str(disk.path),
            }
        if disk.cache:
            file_node["cache"] = {"direct": direct, "no-flush": no_flush}
        fmt_node = {
            "driver": disk.format,
            "file": f"file-{index}",
            "node-name": drive_node(index),
            "read-only": readonly,
        }
        argv += ["-blockdev", _json(file_node), "-blockdev", _json(fmt_node)]
        device: dict[str, Any] = {"id": device_id(disk.name), "drive": drive_node(index)}
        if disk.bus == "virtio":
            device["driver"] = "virtio-blk-pci"
        elif disk.bus == "sata":
            device["driver"] = "ide-cd" if disk.cdrom else "ide-hd"
            device["bus"] = f"sata{sata_port // AHCI_PORTS}.{sata_port % AHCI_PORTS}"
            sata_port += 1
        else:
            device["driver"] = "scsi-cd" if disk.cdrom else "scsi-hd"
            device.update({"bus": "scsi0.0", "channel": 0, "scsi-id": 0, "lun": scsi_lun})
            scsi_lun += 1
        if disk.cache and not disk.cdrom:
            device["write-cache"] = "on" if write_cache else "off"
        if disk.boot_order is not None:
            device["bootindex"] = disk.boot_order
        if disk.serial:
            device["serial"] = disk.serial
        if disk.shareable:
            device["share-rw"] = True
        argv += ["-device", _json(device)]
    return argv


def _nic(index: int, nic: Nic) -> list[str]:
    netdev = f"net-{index}"
    if nic.tap:
        backend = f"tap,id={netdev},ifname={_esc(nic.tap)},script=no,downscript=no"
    else:
        backend = f"user,id={netdev}"
        for fwd in nic.port_forwards:
            backend += f",hostfwd={fwd.protocol}:{fwd.host_address}:{fwd.host_port}-:{fwd.guest_port}"
    device: dict[str, Any] = {"driver": _NIC_DRIVERS[nic.model], "id": device_id(nic.name), "netdev": netdev}
    if nic.mac:
        device["mac"] = nic.mac
    if nic.boot_order is not None:
        device["bootindex"] = nic.boot_order
    else:
        device["romfile"] = ""  # no PXE option ROM: nothing to load, faster firmware
    return ["-netdev", backend, "-device", _json(device)]
