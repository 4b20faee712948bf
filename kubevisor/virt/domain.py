"""What one virtual machine is, as the hypervisor driver sees it: plain data, no I/O.

The node agent translates a VirtualMachineInstance (``kubevisor.api``) into a :class:`Domain` after it has
prepared the host (disk images, seed images, network backends), and the driver turns a Domain into a QEMU
command line (:mod:`kubevisor.virt.qemucmd`). Keeping this type apart from the API types keeps the driver
free of Kubernetes concerns, and keeps the API types free of host paths.

Names follow KubeVirt's where one exists (bus, bootOrder, cores/sockets/threads); every path is absolute
and already exists when QEMU starts, except the sockets, the pidfile and the logs in ``run_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "Accel",
    "Cpu",
    "Disk",
    "DiskBus",
    "Domain",
    "Firmware",
    "KernelBoot",
    "Nic",
    "PortForward",
    "RunPaths",
]

Accel = Literal["kvm", "tcg"]
"""How guest code runs: hardware virtualization, or QEMU's TCG emulation (KubeVirt's useEmulation)."""
DiskBus = Literal["virtio", "sata", "scsi"]
"""KubeVirt's disk buses this driver supports."""


@dataclass(frozen=True)
class Disk:
    """A disk or CD-ROM backed by an image file."""

    name: str
    """The disk's name in the VMI (``spec.domain.devices.disks[].name``); QEMU ids derive from it."""
    path: Path
    """The image file (raw, or qcow2 with its backing chain)."""
    bus: DiskBus = "virtio"
    """virtio (virtio-blk-pci), sata (ide-hd/ide-cd on an AHCI controller) or scsi (virtio-scsi)."""
    cdrom: bool = False
    """A CD-ROM (read-only, ide-cd or scsi-cd) instead of a disk; not on the virtio bus."""
    format: Literal["raw", "qcow2"] = "raw"
    """Image format."""
    readonly: bool = False
    """Open the image read-only (CD-ROMs always are)."""
    boot_order: int | None = None
    """Firmware boot priority, 1 first (KubeVirt ``bootOrder``)."""
    serial: str | None = None
    """Serial number the guest sees (KubeVirt ``serial``)."""
    cache: Literal["none", "writethrough", "writeback", "directsync", "unsafe"] | None = None
    """Host cache mode (KubeVirt ``cache``); ``None`` is QEMU's default (writeback)."""
    shareable: bool = False
    """Allow other processes to write the image at the same time (``share-rw``)."""
    nfs_server: str | None = None
    """The image is ``path`` on this NFS server (NFSv3), opened by QEMU's own NFS block driver (libnfs,
    package ``qemu-block-extra``) instead of a local file."""


@dataclass(frozen=True)
class PortForward:
    """A host port forwarded into a user-mode network (``hostfwd``)."""

    guest_port: int
    """Port in the guest."""
    host_port: int
    """Port on the host; ``0`` is not allowed, pick a free one."""
    host_address: str = "127.0.0.1"
    """Host address to listen on."""
    protocol: Literal["tcp", "udp"] = "tcp"
    """Transport protocol."""


@dataclass(frozen=True)
class Nic:
    """A network interface. Backends: QEMU's user-mode network, or an existing tap device."""

    name: str
    """The interface's name in the VMI (``spec.domain.devices.interfaces[].name``)."""
    mac: str | None = None
    """MAC address; ``None`` lets QEMU choose."""
    model: Literal["virtio", "e1000", "e1000e", "rtl8139"] = "virtio"
    """Emulated NIC model (KubeVirt ``model``; virtio is virtio-net-pci)."""
    tap: str | None = None
    """An existing tap device to attach to; ``None`` means user-mode networking."""
    port_forwards: tuple[PortForward, ...] = ()
    """Host ports forwarded to the guest (user-mode networking only)."""
    boot_order: int | None = None
    """Firmware boot priority (PXE); a NIC without one gets no option ROM."""


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot (KubeVirt ``firmware.kernelBoot``): QEMU loads the kernel, no boot loader."""

    kernel: Path
    """Kernel image (bzImage)."""
    initrd: Path | None = None
    """Initial ramdisk."""
    cmdline: str = ""
    """Kernel command line."""


@dataclass(frozen=True)
class Firmware:
    """BIOS (SeaBIOS, QEMU's default) or UEFI (OVMF)."""

    uefi: bool = False
    """Boot with OVMF instead of SeaBIOS."""
    secure_boot: bool = False
    """UEFI Secure Boot (needs the secboot OVMF build and SMM)."""
    code: Path | None = None
    """OVMF code image (read-only), for UEFI."""
    vars: Path | None = None
    """This VM's own writable copy of the OVMF variable store, for UEFI."""


@dataclass(frozen=True)
class Cpu:
    """vCPU topology and model (KubeVirt ``domain.cpu``)."""

    sockets: int = 1
    """Sockets."""
    cores: int = 1
    """Cores per socket."""
    threads: int = 1
    """Threads per core."""
    model: str | None = None
    """QEMU CPU model (``host``, ``max``, ``qemu64``...); ``None``: ``host`` under KVM, QEMU's default
    under TCG."""

    @property
    def count(self) -> int:
        """Total vCPUs."""
        return self.sockets * self.cores * self.threads


@dataclass(frozen=True)
class RunPaths:
    """Where one QEMU keeps its sockets, pidfile and logs: the VM's run directory
    (``DATA/vms/<namespace>/<name>/``). Unix socket paths must stay under 108 bytes."""

    directory: Path
    """The run directory."""

    @property
    def qmp(self) -> Path:
        """QMP control socket."""
        return self.directory / "qmp.sock"

    @property
    def serial(self) -> Path:
        """Serial console socket (QEMU listens)."""
        return self.directory / "serial.sock"

    @property
    def vnc(self) -> Path:
        """VNC socket (QEMU listens), when graphics are on."""
        return self.directory / "vnc.sock"

    @property
    def qga(self) -> Path:
        """The guest agent channel's socket (QEMU listens; :mod:`kubevisor.virt.guestagent` connects)."""
        return self.directory / "qga.sock"

    @property
    def pidfile(self) -> Path:
        """QEMU's pidfile."""
        return self.directory / "qemu.pid"

    @property
    def serial_log(self) -> Path:
        """Everything the guest wrote on its serial console, also while nobody was connected."""
        return self.directory / "serial.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stdout and stderr."""
        return self.directory / "qemu.log"


@dataclass(frozen=True)
class Domain:
    """One virtual machine, ready to be turned into a QEMU command line."""

    name: str
    """Unique on the node, e.g. ``<namespace>_<name>``; shown as QEMU's ``-name``."""
    run: RunPaths
    """Run directory for sockets, pidfile and logs."""
    memory_mib: int
    """Guest memory in MiB (KubeVirt ``memory.guest``)."""
    cpu: Cpu = field(default_factory=Cpu)
    """vCPU topology."""
    accel: Accel = "tcg"
    """KVM or TCG (see :mod:`kubevisor.virt.probe`)."""
    machine: str = "q35"
    """QEMU machine type (KubeVirt ``machine.type``)."""
    uuid: str | None = None
    """SMBIOS system UUID (KubeVirt sets the VMI's firmware UUID)."""
    firmware: Firmware = field(default_factory=Firmware)
    """BIOS or UEFI."""
    kernel_boot: KernelBoot | None = None
    """Direct kernel boot, instead of booting from a disk."""
    disks: tuple[Disk, ...] = ()
    """Disks and CD-ROMs, in the order they are attached."""
    nics: tuple[Nic, ...] = ()
    """Network interfaces."""
    graphics: bool = False
    """A VGA device and a VNC server on ``run.vnc``."""
    serial_log: bool = True
    """Also log the serial console to ``run.serial_log``."""
    start_paused: bool = True
    """Start with vCPUs stopped (``-S``): the driver connects to the console and QMP, then ``cont``."""
    acpi: bool = True
    """ACPI (needed for a clean ``system_powerdown``)."""
    rng: bool = False
    """A virtio-rng device fed from the host's ``/dev/urandom`` (KubeVirt ``devices.rng``)."""
    guest_agent: bool = True
    """A virtio-serial port ``org.qemu.guest_agent.0`` on ``run.qga`` for qemu-ga, as KubeVirt always adds."""
    hotplug: bool = False
    """Room for disks attached while it runs (:mod:`kubevisor.virt.hotplug`): a virtio-scsi controller, and
    on q35 free PCIe root ports for virtio-blk (KubeVirt reserves both unless ``disableHotplug``)."""
