"""kubevirt.io/v1 kinds: VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
VirtualMachineInstanceReplicaSet.

JSON names are KubeVirt's (``staging/src/kubevirt.io/api/core/v1/types.go`` and ``schema.go``), so the
manifests of KubeVirt's examples and user guide are accepted unchanged. Where KubeVirt embeds an open-ended
Kubernetes type (affinity, topology spread constraints, probe handlers, DRA claims) the field is a loosely
typed ``dict``; everything a controller or the node agent acts on is typed.

Who owns what (KubeVirt's split, kept here): ``spec`` belongs to the user; the apiserver defaults it on
admission (:mod:`kubevisor.api.kubevirt_admission`) the way virt-api's mutating webhook does. A VMI's
``status.phase`` is set to Pending by the apiserver on create, then moved by the VMI controller up to
``Scheduled`` (it picks the node and sets ``status.nodeName``); from ``Scheduled`` on the node agent owns
the phase, the interfaces, the guest OS info and the conditions it observes. A VM's status is owned by the
VM controller; a migration's status by the migration controller; a replica set's by its controller.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubevisor.api import kubevirt_admission as admission
from kubevisor.api.base import KubeModel, patch_merge
from kubevisor.api.cdi import DataVolumeSpec
from kubevisor.api.core import LocalObjectReference, PodDNSConfig, Quantity, Toleration
from kubevisor.api.meta import LabelSelector, ObjectMeta
from kubevisor.api.registry import Kind, PrinterColumn

GROUP = "kubevirt.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

# --- CPU, memory, machine, firmware, clock, features ---------------------------------------------


class CPUFeature(KubeModel):
    """A CPU feature to require, forbid or leave optional."""

    name: str
    """Feature name as libvirt knows it, e.g. vmx, pcid."""
    policy: str | None = None
    """force, require (default), optional, disable or forbid."""


class NUMAGuestMappingPassthrough(KubeModel):
    """Map the guest NUMA topology onto the host's (needs dedicated CPUs and hugepages)."""


class NUMA(KubeModel):
    """Guest NUMA topology settings."""

    guest_mapping_passthrough: NUMAGuestMappingPassthrough | None = None
    """Mirror the host NUMA nodes of the VM's dedicated CPUs."""


class Realtime(KubeModel):
    """Tune the VM for real-time workloads."""

    mask: str | None = None
    """vCPUs to run with real-time scheduling, e.g. "0-3,^1"; default: all."""


class CPU(KubeModel):
    """Guest CPU topology and model."""

    cores: int | None = None
    """Cores per socket; default 1."""
    sockets: int | None = None
    """Sockets; default 1, or the CPU resource request/limit rounded up when no topology is given."""
    max_sockets: int | None = None
    """Upper bound of sockets for CPU hotplug."""
    threads: int | None = None
    """Threads per core; default 1."""
    model: str | None = None
    """CPU model: host-model (default), host-passthrough or a libvirt model name."""
    features: list[CPUFeature] | None = None
    """CPU features to add or remove."""
    dedicated_cpu_placement: bool | None = None
    """Pin each vCPU to a dedicated host CPU."""
    numa: NUMA | None = None
    """Guest NUMA topology."""
    isolate_emulator_thread: bool | None = None
    """Give the emulator thread its own dedicated host CPU (needs dedicatedCpuPlacement)."""
    realtime: Realtime | None = None
    """Real-time tuning (needs dedicatedCpuPlacement)."""


class Hugepages(KubeModel):
    """Back guest memory with hugepages."""

    page_size: str | None = None
    """Page size, e.g. 2Mi or 1Gi."""


class ReservedOverhead(KubeModel):
    """Memory reserved on top of the guest's."""

    added_overhead: Quantity | None = None
    """Extra memory added to the computed overhead."""
    mem_lock: str | None = None
    """Required or NotRequired: whether memory must be locked."""


class Memory(KubeModel):
    """Guest memory."""

    hugepages: Hugepages | None = None
    """Use hugepages instead of regular memory."""
    guest: Quantity | None = None
    """Memory the guest sees, e.g. 128Mi; default: the memory request."""
    max_guest: Quantity | None = None
    """Upper bound of guest memory for memory hotplug."""
    reserved_overhead: ReservedOverhead | None = None
    """Memory reserved beyond the guest's."""


class ResourceRequirements(KubeModel):
    """Resources the VM's node-side process requests and is limited to."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. {"memory": "64M", "cpu": "100m"}; memory defaults to the guest memory."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources."""
    overcommit_guest_overhead: bool | None = None
    """Do not add the virtualization overhead to the memory request."""


class Machine(KubeModel):
    """Emulated machine."""

    type: str | None = None
    """QEMU machine type; default q35 on x86_64."""


class BIOS(KubeModel):
    """Legacy BIOS boot."""

    use_serial: bool | None = None
    """Send BIOS output to the serial console."""


class EFI(KubeModel):
    """UEFI boot."""

    secure_boot: bool | None = None
    """Enable Secure Boot; default true (needs features.smm)."""
    persistent: bool | None = None
    """Keep the EFI variables across restarts."""


class Bootloader(KubeModel):
    """Firmware to boot with: exactly one of bios or efi."""

    bios: BIOS | None = None
    """Legacy BIOS (the default)."""
    efi: EFI | None = None
    """UEFI."""


class KernelBootContainer(KubeModel):
    """A container image holding a kernel and/or initrd to boot directly."""

    image: str
    """Image with the kernel and initrd."""
    image_pull_secret: str | None = None
    """Secret to pull the image."""
    kernel_path: str | None = None
    """Absolute path of the kernel in the image."""
    initrd_path: str | None = None
    """Absolute path of the initrd in the image."""
    image_pull_policy: str | None = None
    """Always, Never or IfNotPresent."""


class KernelBoot(KubeModel):
    """Boot a kernel directly instead of through a bootloader."""

    kernel_args: str | None = None
    """Kernel command line."""
    container: KernelBootContainer | None = None
    """Where the kernel and initrd come from."""


class ACPI(KubeModel):
    """ACPI tables from secrets."""

    slic_name_ref: str | None = None
    """Secret with a SLIC table."""
    msdm_name_ref: str | None = None
    """Secret with an MSDM table."""


class Firmware(KubeModel):
    """Firmware settings."""

    uuid: str | None = None
    """System UUID the guest sees; default: generated once."""
    bootloader: Bootloader | None = None
    """BIOS or EFI."""
    serial: str | None = None
    """System serial number the guest sees."""
    kernel_boot: KernelBoot | None = None
    """Direct kernel boot."""
    acpi: ACPI | None = None
    """Extra ACPI tables."""


class ClockOffsetUTC(KubeModel):
    """Guest clock in UTC, optionally shifted."""

    offset_seconds: int | None = None
    """Offset from UTC in seconds."""


class Timer(KubeModel):
    """One guest timer."""

    present: bool | None = None
    """Whether the timer is present."""
    tick_policy: str | None = None
    """delay, catchup, merge or discard."""
    track: str | None = None
    """For rtc: guest or wall."""


class Timers(KubeModel):
    """Guest timers."""

    hpet: Timer | None = None
    """High Precision Event Timer."""
    kvm: Timer | None = None
    """KVM paravirtual clock."""
    pit: Timer | None = None
    """Programmable Interval Timer."""
    rtc: Timer | None = None
    """Real Time Clock."""
    hyperv: Timer | None = None
    """Hyper-V reference time counter."""


class Clock(KubeModel):
    """Guest clock: exactly one of utc or timezone."""

    utc: ClockOffsetUTC | None = None
    """UTC, optionally with an offset."""
    timezone: str | None = None
    """A time zone, e.g. Europe/Berlin."""
    timer: Timers | None = None
    """Guest timers."""


class FeatureState(KubeModel):
    """A feature switched on or off."""

    enabled: bool | None = None
    """Whether the feature is on; default true when the feature is listed."""


class FeatureAPIC(KubeModel):
    """The APIC feature."""

    enabled: bool | None = None
    """Whether the APIC is on."""
    end_of_interrupt: bool | None = None
    """Paravirtual end-of-interrupt."""


class FeatureSpinlocks(KubeModel):
    """Hyper-V spinlocks."""

    enabled: bool | None = None
    """Whether the feature is on."""
    spinlocks: int | None = None
    """Retries before a spinlock is reported (default 4096)."""


class FeatureVendorID(KubeModel):
    """Hyper-V vendor id."""

    enabled: bool | None = None
    """Whether the feature is on."""
    vendorid: str | None = None
    """Vendor id, up to 12 characters."""


class SyNICTimer(KubeModel):
    """Hyper-V synthetic timers."""

    enabled: bool | None = None
    """Whether the feature is on."""
    direct: FeatureState | None = None
    """Direct mode."""


class FeatureHyperv(KubeModel):
    """Hyper-V enlightenments for Windows guests."""

    relaxed: FeatureState | None = None
    """Relaxed timing."""
    vapic: FeatureState | None = None
    """Virtual APIC."""
    spinlocks: FeatureSpinlocks | None = None
    """Paravirtual spinlocks."""
    vpindex: FeatureState | None = None
    """Virtual processor index."""
    runtime: FeatureState | None = None
    """Processor time accounting."""
    synic: FeatureState | None = None
    """Synthetic interrupt controller."""
    synictimer: SyNICTimer | None = None
    """Synthetic timers."""
    reset: FeatureState | None = None
    """Hyper-V reset."""
    vendorid: FeatureVendorID | None = None
    """Vendor id."""
    frequencies: FeatureState | None = None
    """TSC and APIC frequencies."""
    reenlightenment: FeatureState | None = None
    """Re-enlightenment after migration."""
    tlbflush: dict[str, Any] | None = None
    """Paravirtual TLB flush (enabled, direct, extended)."""
    ipi: FeatureState | None = None
    """Paravirtual IPIs."""
    evmcs: FeatureState | None = None
    """Enlightened VMCS."""


class FeatureKVM(KubeModel):
    """KVM paravirtual features."""

    hidden: bool | None = None
    """Hide the KVM hypervisor signature from the guest."""


class Features(KubeModel):
    """Guest features."""

    acpi: FeatureState | None = None
    """ACPI (on by default)."""
    apic: FeatureAPIC | None = None
    """APIC."""
    hyperv: FeatureHyperv | None = None
    """Hyper-V enlightenments."""
    hyperv_passthrough: FeatureState | None = None
    """Pass every Hyper-V enlightenment the host supports."""
    smm: FeatureState | None = None
    """System Management Mode (needed by EFI Secure Boot)."""
    kvm: FeatureKVM | None = None
    """KVM features."""
    pvspinlock: FeatureState | None = None
    """Paravirtual spinlocks."""


class Chassis(KubeModel):
    """SMBIOS chassis information."""

    manufacturer: str | None = None
    """Chassis manufacturer."""
    version: str | None = None
    """Chassis version."""
    serial: str | None = None
    """Chassis serial number."""
    asset: str | None = None
    """Chassis asset tag."""
    sku: str | None = None
    """Chassis SKU."""


class DiskIOThreads(KubeModel):
    """IO threads of the supplementalPool policy."""

    supplemental_pool_thread_count: int | None = None
    """Number of IO threads."""


# --- devices -------------------------------------------------------------------------------------


class DiskTarget(KubeModel):
    """Attach the volume as a disk."""

    bus: str | None = None
    """virtio, sata, scsi or usb; default sata on x86_64 (KubeVirt's default)."""
    readonly: bool | None = None
    """Read-only disk (not on sata)."""
    pci_address: str | None = None
    """Guest PCI address, e.g. 0000:81:01.10 (virtio only)."""


class LunTarget(KubeModel):
    """Attach the volume as a SCSI LUN (claims and DataVolumes only)."""

    bus: str | None = None
    """virtio, sata, scsi or usb."""
    readonly: bool | None = None
    """Read-only LUN."""
    reservation: bool | None = None
    """Pass SCSI persistent reservations through."""


class CDRomTarget(KubeModel):
    """Attach the volume as a CD-ROM."""

    bus: str | None = None
    """sata, scsi or usb (virtio is not valid for a CD-ROM)."""
    readonly: bool | None = None
    """Read-only; default true."""
    tray: str | None = None
    """open or closed (default)."""


class CustomBlockSize(KubeModel):
    """Explicit block sizes."""

    logical: int
    """Logical block size in bytes."""
    physical: int
    """Physical block size in bytes."""
    discard_granularity: int | None = None
    """Discard granularity in bytes."""


class BlockSize(KubeModel):
    """Block sizes the guest sees: custom, or matched to the volume."""

    custom: CustomBlockSize | None = None
    """Explicit sizes."""
    match_volume: FeatureState | None = None
    """Use the sizes of the underlying volume."""


class Disk(KubeModel):
    """A guest disk; ``name`` names the volume it shows."""

    name: str
    """Name of the disk; must match the name of a volume."""
    disk: DiskTarget | None = None
    """Attach as a disk (the default when no type is given)."""
    lun: LunTarget | None = None
    """Attach as a SCSI LUN."""
    cdrom: CDRomTarget | None = None
    """Attach as a CD-ROM."""
    boot_order: int | None = None
    """Boot order, 1 first; devices without one are not booted from."""
    serial: str | None = None
    """Serial number the guest sees."""
    dedicated_io_thread: bool | None = Field(default=None, alias="dedicatedIOThread")
    """Give the disk its own IO thread (virtio)."""
    cache: str | None = None
    """none, writethrough or writeback."""
    io: str | None = None
    """native or threads."""
    tag: str | None = None
    """Tag passed to the guest through device metadata."""
    block_size: BlockSize | None = None
    """Block sizes."""
    shareable: bool | None = None
    """Allow several VMs to use the disk at once."""
    error_policy: str | None = None
    """stop (default), ignore, report or enospace."""
    changed_block_tracking: bool | None = None
    """Track changed blocks for incremental backup."""


class InterfaceBridge(KubeModel):
    """Connect the interface to the network with a bridge (the guest gets the pod's address)."""


class InterfaceMasquerade(KubeModel):
    """Connect the interface through NAT (the guest gets a private address; pod network only)."""


class InterfaceSRIOV(KubeModel):
    """Pass an SR-IOV virtual function through."""


class InterfaceSlirp(KubeModel):
    """User-mode networking (deprecated)."""


class InterfaceMacvtap(KubeModel):
    """macvtap binding (deprecated)."""


class InterfacePasst(KubeModel):
    """passt binding (deprecated form; use passtBinding)."""


class InterfacePasstBinding(KubeModel):
    """passt user-space networking (pod network only)."""


class PluginBinding(KubeModel):
    """A network binding plugin."""

    name: str
    """Name of the plugin as registered in the cluster configuration."""


class Port(KubeModel):
    """A port to forward to the guest (masquerade and passt)."""

    name: str | None = None
    """Port name (an IANA service name)."""
    protocol: str | None = None
    """TCP (default) or UDP."""
    port: int
    """Port number, 1-65535."""


class DHCPPrivateOption(KubeModel):
    """A private DHCP option."""

    option: int
    """Option number, 224-254."""
    value: str
    """Option value."""


class DHCPOptions(KubeModel):
    """Extra DHCP options offered to the guest."""

    boot_file_name: str | None = None
    """Boot file name (option 67)."""
    tftp_server_name: str | None = None
    """TFTP server (option 66)."""
    ntp_servers: list[str] | None = None
    """NTP servers, IPv4 (option 42)."""
    private_options: list[DHCPPrivateOption] | None = None
    """Private options."""


class Interface(KubeModel):
    """A guest network interface; ``name`` names the network it connects to."""

    name: str
    """Name of the interface; must match the name of a network."""
    model: str | None = None
    """virtio (default), e1000, e1000e, igb, ne2k_pci, pcnet or rtl8139."""
    bridge: InterfaceBridge | None = None
    """Bridge binding."""
    masquerade: InterfaceMasquerade | None = None
    """Masquerade (NAT) binding."""
    sriov: InterfaceSRIOV | None = None
    """SR-IOV binding."""
    slirp: InterfaceSlirp | None = None
    """Slirp binding (deprecated)."""
    macvtap: InterfaceMacvtap | None = None
    """macvtap binding (deprecated)."""
    passt: InterfacePasst | None = None
    """passt binding (deprecated form)."""
    passt_binding: InterfacePasstBinding | None = None
    """passt binding."""
    binding: PluginBinding | None = None
    """A network binding plugin."""
    ports: list[Port] | None = None
    """Ports to forward; default: all."""
    port_ranges: list[dict[str, Any]] | None = None
    """Port ranges to forward."""
    mac_address: str | None = None
    """MAC address, e.g. de:ad:00:00:be:af; default: generated."""
    boot_order: int | None = None
    """Boot order (network boot), unique across disks and interfaces."""
    pci_address: str | None = None
    """Guest PCI address."""
    dhcp_options: DHCPOptions | None = None
    """Extra DHCP options."""
    tag: str | None = None
    """Tag passed to the guest through device metadata."""
    acpi_index: int | None = None
    """ACPI index, for predictable interface names in the guest."""
    state: str | None = None
    """Link state: up (default), down or absent (hot-unplug)."""


class Input(KubeModel):
    """An input device."""

    bus: str | None = None
    """usb (default) or virtio."""
    type: str | None = None
    """tablet (the only type)."""
    name: str
    """Device name."""


class I6300ESBWatchdog(KubeModel):
    """The i6300esb watchdog."""

    action: str | None = None
    """poweroff, reset (default) or shutdown."""


class Watchdog(KubeModel):
    """A watchdog device."""

    name: str
    """Device name."""
    i6300esb: I6300ESBWatchdog | None = None
    """Intel 6300ESB watchdog (x86_64)."""
    diag288: I6300ESBWatchdog | None = None
    """diag288 watchdog (s390x)."""


class Rng(KubeModel):
    """A virtio random number generator fed from the host."""


class GPU(KubeModel):
    """A GPU passed through."""

    name: str
    """Device name."""
    device_name: str | None = None
    """Resource name of the GPU, e.g. nvidia.com/TU104GL_Tesla_T4."""
    virtual_gpu_options: dict[str, Any] | None = Field(default=None, alias="virtualGPUOptions")
    """vGPU display options."""
    tag: str | None = None
    """Tag passed to the guest."""
    claim_name: str | None = None
    """DRA claim providing the GPU."""
    request_name: str | None = None
    """Request within the DRA claim."""


class HostDevice(KubeModel):
    """A host PCI or mediated device passed through."""

    name: str
    """Device name."""
    device_name: str | None = None
    """Resource name of the device."""
    tag: str | None = None
    """Tag passed to the guest."""
    claim_name: str | None = None
    """DRA claim providing the device."""
    request_name: str | None = None
    """Request within the DRA claim."""


class FilesystemVirtiofs(KubeModel):
    """Share the volume with virtiofs."""


class Filesystem(KubeModel):
    """A volume shared as a filesystem instead of a disk."""

    name: str
    """Name of the filesystem; must match the name of a volume."""
    virtiofs: FilesystemVirtiofs
    """Share with virtiofs."""


class SoundDevice(KubeModel):
    """An emulated sound card."""

    name: str
    """Device name."""
    model: str | None = None
    """ich9 (default) or ac97."""


class TPMDevice(KubeModel):
    """An emulated TPM."""

    enabled: bool | None = None
    """Whether the TPM is present; default true when listed."""
    persistent: bool | None = None
    """Keep the TPM state across restarts."""


class VideoDevice(KubeModel):
    """The graphics device."""

    type: str | None = None
    """Video device model, e.g. virtio, vga, bochs."""


class PanicDevice(KubeModel):
    """A panic notifier."""

    model: str | None = None
    """hyperv, isa or pvpanic."""


class Devices(KubeModel):
    """Guest devices."""

    use_virtio_transitional: bool | None = None
    """Use virtio-transitional devices for old guests."""
    disable_hotplug: bool | None = None
    """Do not reserve room for hotplugged disks."""
    disks: list[Disk] | None = None
    """Disks, each showing one volume."""
    watchdog: Watchdog | None = None
    """A watchdog."""
    interfaces: list[Interface] | None = None
    """Network interfaces, each connected to one network."""
    inputs: list[Input] | None = None
    """Input devices."""
    autoattach_pod_interface: bool | None = None
    """Add a default interface on the pod network when none is given (default true)."""
    autoattach_graphics_device: bool | None = None
    """Add a VNC graphics device (default true)."""
    autoattach_serial_console: bool | None = None
    """Add a serial console (default true)."""
    log_serial_console: bool | None = None
    """Log the serial console."""
    autoattach_mem_balloon: bool | None = None
    """Add a memory balloon (default true)."""
    autoattach_input_device: bool | None = None
    """Add a tablet input device."""
    autoattach_vsock: bool | None = Field(default=None, alias="autoattachVSOCK")
    """Add a vsock device."""
    rng: Rng | None = None
    """A random number generator."""
    block_multi_queue: bool | None = None
    """One virtio queue per vCPU for disks."""
    network_interface_multiqueue: bool | None = None
    """One virtio queue per vCPU for interfaces."""
    gpus: list[GPU] | None = None
    """GPUs passed through."""
    host_devices: list[HostDevice] | None = None
    """Host devices passed through."""
    filesystems: list[Filesystem] | None = None
    """Volumes shared as filesystems."""
    client_passthrough: dict[str, Any] | None = None
    """USB redirection from a client."""
    sound: SoundDevice | None = None
    """A sound card."""
    tpm: TPMDevice | None = None
    """A TPM."""
    video: VideoDevice | None = None
    """The video device."""
    panic_devices: list[PanicDevice] | None = None
    """Panic notifiers."""
    downward_metrics: dict[str, Any] | None = None
    """A virtio-serial port exposing host metrics to the guest."""


class DomainSpec(KubeModel):
    """The virtual hardware."""

    resources: ResourceRequirements | None = None
    """Resources requested for and limited on the host side."""
    cpu: CPU | None = None
    """CPU topology and model."""
    memory: Memory | None = None
    """Guest memory."""
    machine: Machine | None = None
    """Emulated machine type."""
    firmware: Firmware | None = None
    """Firmware."""
    clock: Clock | None = None
    """Guest clock."""
    features: Features | None = None
    """Guest features."""
    devices: Devices
    """Guest devices."""
    io_threads_policy: str | None = None
    """shared, auto or supplementalPool."""
    io_threads: DiskIOThreads | None = None
    """IO threads of the supplementalPool policy."""
    chassis: Chassis | None = None
    """SMBIOS chassis."""
    launch_security: dict[str, Any] | None = None
    """Confidential computing (SEV, SNP, TDX) settings."""
    reboot_policy: str | None = None
    """Reboot (default) or Terminate when the guest reboots."""


# --- volumes -------------------------------------------------------------------------------------


class ContainerDiskSource(KubeModel):
    """A disk image shipped in a container image; ephemeral, discarded when the VM stops."""

    image: str
    """Image reference, e.g. quay.io/kubevirt/cirros-container-disk-demo."""
    image_pull_secret: str | None = None
    """Secret to pull the image."""
    path: str | None = None
    """Path of the disk image in the container image; default: the one file in /disk."""
    image_pull_policy: str | None = None
    """Always, Never or IfNotPresent; default Always for :latest or no tag, IfNotPresent otherwise."""


class HostDisk(KubeModel):
    """A disk image file on the node."""

    path: str
    """Path of the image on the node."""
    type: str
    """Disk (must exist) or DiskOrCreate (created with capacity when missing)."""
    capacity: Quantity | None = None
    """Size of a created image."""
    shared: bool | None = None
    """Whether several nodes see the same file (for migration)."""


class EmptyDiskSource(KubeModel):
    """A blank ephemeral disk."""

    capacity: Quantity
    """Size, e.g. 2Gi."""


class PersistentVolumeClaimVolumeSource(KubeModel):
    """A persistent volume claim, as in a pod."""

    claim_name: str
    """Name of the claim."""
    read_only: bool | None = None
    """Mount read-only."""


class EphemeralVolumeSource(KubeModel):
    """A claim used as the read-only base of a throw-away overlay."""

    persistent_volume_claim: PersistentVolumeClaimVolumeSource | None = None
    """The base claim."""


class PersistentVolumeClaimSource(KubeModel):
    """A persistent volume claim."""

    claim_name: str
    """Name of the claim."""
    read_only: bool | None = None
    """Attach read-only."""
    hotpluggable: bool | None = None
    """Attached while the VM runs."""


class DataVolumeVolumeSource(KubeModel):
    """A DataVolume (its claim, once populated)."""

    name: str
    """Name of the DataVolume."""
    hotpluggable: bool | None = None
    """Attached while the VM runs."""


class CloudInitNoCloudSource(KubeModel):
    """cloud-init NoCloud data on a small disk."""

    secret_ref: LocalObjectReference | None = None
    """Secret holding the user data (key userdata or userData)."""
    user_data_base64: str | None = None
    """Base64-encoded user data."""
    user_data: str | None = None
    """User data, e.g. a #cloud-config document (at most 2048 bytes; larger data in a secret)."""
    network_data_secret_ref: LocalObjectReference | None = None
    """Secret holding the network data."""
    network_data_base64: str | None = None
    """Base64-encoded network data."""
    network_data: str | None = None
    """Network data (netplan v1 or v2)."""


class CloudInitConfigDriveSource(KubeModel):
    """cloud-init ConfigDrive data on a small disk."""

    secret_ref: LocalObjectReference | None = None
    """Secret holding the user data."""
    user_data_base64: str | None = None
    """Base64-encoded user data."""
    user_data: str | None = None
    """User data (at most 2048 bytes; larger data in a secret)."""
    network_data_secret_ref: LocalObjectReference | None = None
    """Secret holding the network data."""
    network_data_base64: str | None = None
    """Base64-encoded network data."""
    network_data: str | None = None
    """Network data."""


class SysprepSource(KubeModel):
    """An unattend.xml answer file for Windows sysprep: exactly one of secret or configMap."""

    secret: LocalObjectReference | None = None
    """Secret with the answer file."""
    config_map: LocalObjectReference | None = None
    """ConfigMap with the answer file."""


class ConfigMapVolumeSource(KubeModel):
    """A ConfigMap shown as a disk (or a virtiofs filesystem)."""

    name: str | None = None
    """Name of the ConfigMap."""
    optional: bool | None = None
    """Start even if the ConfigMap is missing."""
    volume_label: str | None = None
    """Label of the generated filesystem."""


class SecretVolumeSource(KubeModel):
    """A Secret shown as a disk (or a virtiofs filesystem)."""

    secret_name: str | None = None
    """Name of the Secret."""
    optional: bool | None = None
    """Start even if the Secret is missing."""
    volume_label: str | None = None
    """Label of the generated filesystem."""


class DownwardAPIVolumeSource(KubeModel):
    """Object fields (labels, annotations, ...) shown as files."""

    fields: list[dict[str, Any]] | None = None
    """Files to create, as in a pod's downwardAPI volume."""
    volume_label: str | None = None
    """Label of the generated filesystem."""


class ServiceAccountVolumeSource(KubeModel):
    """A service account token shown as a disk."""

    service_account_name: str | None = None
    """Name of the service account."""


class DownwardMetricsVolumeSource(KubeModel):
    """Host metrics shown to the guest on a disk."""


class MemoryDumpVolumeSource(KubeModel):
    """The claim a memory dump is written to."""

    claim_name: str
    """Name of the claim."""
    read_only: bool | None = None
    """Attach read-only."""
    hotpluggable: bool | None = None
    """Attached while the VM runs."""


class Volume(KubeModel):
    """A source of data for a disk or filesystem: exactly one source field is set."""

    name: str
    """Name of the volume, referenced by a disk or filesystem of the same name."""
    container_disk: ContainerDiskSource | None = None
    """An ephemeral disk from a container image."""
    host_disk: HostDisk | None = None
    """An image file on the node."""
    empty_disk: EmptyDiskSource | None = None
    """A blank ephemeral disk."""
    ephemeral: EphemeralVolumeSource | None = None
    """A claim behind a throw-away overlay."""
    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    """A persistent volume claim."""
    data_volume: DataVolumeVolumeSource | None = None
    """A DataVolume."""
    cloud_init_no_cloud: CloudInitNoCloudSource | None = None
    """cloud-init NoCloud data."""
    cloud_init_config_drive: CloudInitConfigDriveSource | None = None
    """cloud-init ConfigDrive data."""
    sysprep: SysprepSource | None = None
    """Windows sysprep answer file."""
    config_map: ConfigMapVolumeSource | None = None
    """A ConfigMap."""
    secret: SecretVolumeSource | None = None
    """A Secret."""
    downward_api: DownwardAPIVolumeSource | None = Field(default=None, alias="downwardAPI")
    """Object fields as files."""
    service_account: ServiceAccountVolumeSource | None = None
    """A service account token."""
    downward_metrics: DownwardMetricsVolumeSource | None = None
    """Host metrics."""
    memory_dump: MemoryDumpVolumeSource | None = None
    """Target of a memory dump."""
    container_path: dict[str, Any] | None = None
    """A path inside the VM's pod (new in KubeVirt 1.8)."""


# --- networks ------------------------------------------------------------------------------------


class PodNetwork(KubeModel):
    """The pod network: the cluster network every pod is on."""

    vm_network_cidr: str | None = Field(default=None, alias="vmNetworkCIDR")
    """IPv4 range of the masquerade network inside the VM; default 10.0.2.0/24."""
    vm_ipv6_network_cidr: str | None = Field(default=None, alias="vmIPv6NetworkCIDR")
    """IPv6 range of the masquerade network inside the VM; default fd10:0:2::/120."""


class MultusNetwork(KubeModel):
    """A secondary network from a NetworkAttachmentDefinition."""

    network_name: str
    """NetworkAttachmentDefinition name, <name> or <namespace>/<name>."""
    default: bool | None = None
    """Use it as the default network instead of the pod network."""


class ResourceClaimNetworkSource(KubeModel):
    """A network device from a DRA resource claim."""

    claim_name: str
    """Name of the claim."""
    request_name: str
    """Request within the claim."""


class Network(KubeModel):
    """A network interfaces connect to: exactly one of pod, multus or resourceClaim."""

    name: str
    """Name of the network, referenced by an interface of the same name."""
    pod: PodNetwork | None = None
    """The pod network."""
    multus: MultusNetwork | None = None
    """A secondary network."""
    resource_claim: ResourceClaimNetworkSource | None = None
    """A DRA network device."""


# --- probes, access credentials ------------------------------------------------------------------


class ExecAction(KubeModel):
    """A command run in the guest through the guest agent."""

    command: list[str] | None = None
    """Command line; exit status 0 is success."""


class GuestAgentPing(KubeModel):
    """Succeeds while the guest agent answers."""


class Probe(KubeModel):
    """A health check of the guest: exactly one of exec, httpGet, tcpSocket, guestAgentPing."""

    exec: ExecAction | None = None
    """Run a command through the guest agent."""
    http_get: dict[str, Any] | None = None
    """An HTTP GET to the guest (pod network only)."""
    tcp_socket: dict[str, Any] | None = None
    """A TCP connect to the guest (pod network only)."""
    guest_agent_ping: GuestAgentPing | None = None
    """Ping the guest agent."""
    initial_delay_seconds: int | None = None
    """Seconds after start before the first probe."""
    timeout_seconds: int | None = None
    """Seconds before a probe times out; default 1."""
    period_seconds: int | None = None
    """Seconds between probes; default 10."""
    success_threshold: int | None = None
    """Successes after a failure to count as success; default 1."""
    failure_threshold: int | None = None
    """Failures after a success to count as failure; default 3."""


class AccessCredentialSecretSource(KubeModel):
    """A Secret holding credentials."""

    secret_name: str
    """Name of the Secret."""


class SSHPublicKeyAccessCredentialSource(KubeModel):
    """Where SSH public keys come from."""

    secret: AccessCredentialSecretSource | None = None
    """A Secret whose values are public keys."""


class QemuGuestAgentSSHPublicKeyAccessCredentialPropagation(KubeModel):
    """Write keys into users' authorized_keys through the guest agent."""

    users: list[str]
    """Guest users to give the keys to."""


class SSHPublicKeyAccessCredentialPropagationMethod(KubeModel):
    """How SSH public keys reach the guest: exactly one field is set."""

    config_drive: dict[str, Any] | None = None
    """Through the cloud-init ConfigDrive volume."""
    no_cloud: dict[str, Any] | None = None
    """Through the cloud-init NoCloud volume."""
    qemu_guest_agent: QemuGuestAgentSSHPublicKeyAccessCredentialPropagation | None = None
    """Through the guest agent, at run time."""


class SSHPublicKeyAccessCredential(KubeModel):
    """SSH public keys injected into the guest."""

    source: SSHPublicKeyAccessCredentialSource
    """Where the keys come from."""
    propagation_method: SSHPublicKeyAccessCredentialPropagationMethod
    """How the keys reach the guest."""


class UserPasswordAccessCredentialSource(KubeModel):
    """Where user passwords come from."""

    secret: AccessCredentialSecretSource | None = None
    """A Secret mapping user names to passwords."""


class UserPasswordAccessCredentialPropagationMethod(KubeModel):
    """How passwords reach the guest."""

    qemu_guest_agent: dict[str, Any] | None = None
    """Through the guest agent."""


class UserPasswordAccessCredential(KubeModel):
    """User passwords set in the guest."""

    source: UserPasswordAccessCredentialSource
    """Where the passwords come from."""
    propagation_method: UserPasswordAccessCredentialPropagationMethod
    """How the passwords reach the guest."""


class AccessCredential(KubeModel):
    """Credentials injected into the guest: exactly one of sshPublicKey or userPassword."""

    ssh_public_key: SSHPublicKeyAccessCredential | None = None
    """SSH public keys."""
    user_password: UserPasswordAccessCredential | None = None
    """User passwords."""


# --- VirtualMachineInstance ----------------------------------------------------------------------


class VirtualMachineInstanceSpec(KubeModel):
    """A running virtual machine's hardware, storage, networks and scheduling."""

    priority_class_name: str | None = None
    """Priority class of the VM."""
    domain: DomainSpec
    """The virtual hardware."""
    node_selector: dict[str, str] | None = None
    """Labels a node must have to run the VM."""
    affinity: dict[str, Any] | None = None
    """Node and pod (anti-)affinity, as in a pod spec."""
    scheduler_name: str | None = None
    """Scheduler to place the VM; default: the built-in one."""
    tolerations: list[Toleration] | None = None
    """Taints the VM tolerates."""
    topology_spread_constraints: list[dict[str, Any]] | None = None
    """How VMs spread across topology domains, as in a pod spec."""
    eviction_strategy: str | None = None
    """On node drain: None, LiveMigrate, LiveMigrateIfPossible or External."""
    start_strategy: str | None = None
    """Paused: start the VM paused."""
    termination_grace_period_seconds: int | None = None
    """Seconds between asking the guest to shut down and forcing it off."""
    volumes: list[Volume] | None = None
    """Volumes disks and filesystems refer to."""
    liveness_probe: Probe | None = None
    """The VM is restarted when this fails."""
    readiness_probe: Probe | None = None
    """The VM is not Ready while this fails."""
    hostname: str | None = None
    """Guest hostname; default: the VMI name up to its first dot, cut to 63 characters."""
    subdomain: str | None = None
    """DNS subdomain: the VM is <hostname>.<subdomain>.<namespace>.svc.<cluster domain>."""
    networks: list[Network] | None = None
    """Networks interfaces connect to."""
    dns_policy: str | None = None
    """ClusterFirst (default), ClusterFirstWithHostNet, Default or None."""
    dns_config: PodDNSConfig | None = None
    """DNS settings merged with the policy's."""
    access_credentials: list[AccessCredential] | None = None
    """SSH keys and passwords injected into the guest."""
    architecture: str | None = None
    """Guest architecture: amd64 (default), arm64 or s390x."""
    resource_claims: list[dict[str, Any]] | None = None
    """DRA resource claims, as in a pod spec."""
    utility_volumes: list[dict[str, Any]] | None = None
    """Volumes attached to the VM's pod but not to the guest."""


class VirtualMachineInstanceCondition(KubeModel):
    """A condition of a VMI: Ready, Paused, LiveMigratable, AgentConnected, ..."""

    type: str
    """Condition type."""
    status: str
    """True, False or Unknown."""
    last_probe_time: str | None = None
    """When the condition was last checked."""
    last_transition_time: str | None = None
    """When the status last changed."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class VirtualMachineInstancePhaseTransitionTimestamp(KubeModel):
    """When a VMI entered a phase."""

    phase: str | None = None
    """The phase entered."""
    phase_transition_timestamp: str | None = None
    """When it was entered."""


class VirtualMachineInstanceNetworkInterface(KubeModel):
    """An interface of a running VMI as observed."""

    ip_address: str | None = None
    """First IP address of the interface."""
    ip_addresses: list[str] | None = None
    """Every IP address of the interface."""
    mac: str | None = None
    """MAC address."""
    name: str | None = None
    """Name of the interface (the network it is connected to)."""
    pod_interface_name: str | None = None
    """Name of the node-side interface."""
    interface_name: str | None = None
    """Name of the interface inside the guest."""
    info_source: str | None = None
    """Where the data comes from: domain, guest-agent, multus-status."""
    queue_count: int | None = None
    """Queues allocated by multi-queue."""
    link_state: str | None = None
    """up or down."""


class VirtualMachineInstanceGuestOSInfo(KubeModel):
    """Guest OS facts reported by the guest agent."""

    name: str | None = None
    """OS name."""
    kernel_release: str | None = None
    """Kernel release."""
    version: str | None = None
    """OS version."""
    pretty_name: str | None = None
    """OS pretty name."""
    version_id: str | None = None
    """OS version id."""
    kernel_version: str | None = None
    """Kernel version."""
    machine: str | None = None
    """Machine architecture."""
    id: str | None = None
    """OS id."""


class VirtualMachineInstanceMigrationState(KubeModel):
    """Progress of the VMI's latest live migration; owner: the migration controller and the node agents."""

    start_timestamp: str | None = None
    """When the migration began."""
    end_timestamp: str | None = None
    """When it ended."""
    target_node_domain_ready_timestamp: str | None = None
    """When the target saw the VM running."""
    target_node_domain_detected: bool | None = None
    """Whether the target saw the VM start."""
    target_node_address: str | None = None
    """Address of the target node for the migration stream."""
    target_direct_migration_node_ports: dict[str, int] | None = None
    """Ports opened on the target node."""
    target_node: str | None = None
    """Node the VMI moves to."""
    target_pod: str | None = None
    """Target-side process or pod."""
    target_attachment_pod_uid: str | None = Field(default=None, alias="targetAttachmentPodUID")
    """Attachment pod of hotplugged volumes on the target."""
    source_node: str | None = None
    """Node the VMI moves from."""
    source_pod: str | None = None
    """Source-side process or pod."""
    completed: bool | None = None
    """Whether the migration completed."""
    failed: bool | None = None
    """Whether the migration failed."""
    abort_requested: bool | None = None
    """Whether an abort was requested."""
    abort_status: str | None = None
    """Succeeded, Failed or Aborting."""
    failure_reason: str | None = None
    """Why it failed."""
    migration_uid: str | None = None
    """UID of the VirtualMachineInstanceMigration."""
    mode: str | None = None
    """PreCopy or PostCopy."""
    migration_policy_name: str | None = None
    """MigrationPolicy applied, if any."""
    migration_configuration: dict[str, Any] | None = None
    """Migration settings applied."""
    target_cpu_set: list[int] | None = Field(default=None, alias="targetCPUSet")
    """Dedicated CPUs on the target."""
    target_node_topology: str | None = None
    """NUMA topology on the target."""
    target_memory_overhead: Quantity | None = None
    """Memory overhead on the target."""


class VolumeStatus(KubeModel):
    """State of one volume of a VMI."""

    name: str
    """Name of the volume."""
    target: str | None = None
    """Device name in the guest, e.g. vda."""
    phase: str | None = None
    """Hotplug phase: Pending, Bound, AttachedToNode, MountedToPod, Ready, Detaching, ..."""
    reason: str | None = None
    """Why it is in this phase."""
    message: str | None = None
    """Details of the phase."""
    persistent_volume_claim_info: dict[str, Any] | None = None
    """Claim facts the node agent needs."""
    hotplug_volume: dict[str, Any] | None = None
    """Hotplug attachment details."""
    size: int | None = None
    """Size of the volume in bytes."""
    memory_dump_volume: dict[str, Any] | None = None
    """Memory dump details."""
    container_disk_volume: dict[str, Any] | None = None
    """Container disk details."""


class CPUTopology(KubeModel):
    """A CPU topology."""

    cores: int | None = None
    """Cores per socket."""
    sockets: int | None = None
    """Sockets."""
    threads: int | None = None
    """Threads per core."""


class MemoryStatus(KubeModel):
    """Guest memory as booted, as now, as requested."""

    guest_at_boot: Quantity | None = None
    """Guest memory at boot."""
    guest_current: Quantity | None = None
    """Guest memory now."""
    guest_requested: Quantity | None = None
    """Guest memory requested (hotplug)."""
    memory_overhead: Quantity | None = None
    """Virtualization overhead."""


class VirtualMachineInstanceStatus(KubeModel):
    """Observed state of a VMI.

    Owners: ``phase`` is Pending from the apiserver, then the VMI controller's up to Scheduled (it sets
    ``nodeName``); from Scheduled on the node agent's, as are interfaces, guestOSInfo, volumeStatus and the
    conditions it observes. ``migrationState`` belongs to the migration controller and the node agents.
    """

    node_name: str | None = None
    """Node the VMI runs on."""
    reason: str | None = None
    """Why the VMI is in this state, e.g. NodeUnresponsive."""
    conditions: list[VirtualMachineInstanceCondition] | None = Field(
        default=None, json_schema_extra=patch_merge("type")
    )
    """Ready, Paused, LiveMigratable, AgentConnected, ..."""
    phase: str | None = None
    """Pending, Scheduling, Scheduled, Running, Succeeded, Failed, WaitingForSync or Unknown."""
    phase_transition_timestamps: list[VirtualMachineInstancePhaseTransitionTimestamp] | None = None
    """When each phase was entered."""
    interfaces: list[VirtualMachineInstanceNetworkInterface] | None = None
    """Network interfaces and their addresses."""
    guest_os_info: VirtualMachineInstanceGuestOSInfo | None = Field(default=None, alias="guestOSInfo")
    """Guest OS facts from the guest agent."""
    migration_state: VirtualMachineInstanceMigrationState | None = None
    """The latest live migration."""
    migration_method: str | None = None
    """BlockMigration or LiveMigration."""
    migration_transport: str | None = None
    """How the migration stream travels."""
    qos_class: str | None = None
    """Guaranteed, Burstable or BestEffort."""
    launcher_container_image_version: str | None = None
    """Version of the node-side runtime running the VMI."""
    evacuation_node_name: str | None = None
    """Node being drained that this VMI must leave."""
    active_pods: dict[str, str] | None = None
    """Node-side processes (UID to node name); two during a migration."""
    volume_status: list[VolumeStatus] | None = None
    """State of each volume."""
    kernel_boot_status: dict[str, Any] | None = None
    """Checksums of a directly booted kernel and initrd."""
    fs_freeze_status: str | None = None
    """frozen or thawed."""
    topology_hints: dict[str, Any] | None = None
    """Scheduling hints (TSC frequency)."""
    virtual_machine_revision_name: str | None = None
    """VM revision the VMI was started from."""
    runtime_user: int | None = None
    """UID the VM runs as."""
    vsockcid: int | None = Field(default=None, alias="VSOCKCID")
    """Allocated vsock context id."""
    selinux_context: str | None = None
    """SELinux context of the VM's process."""
    machine: Machine | None = None
    """The machine type QEMU actually uses."""
    current_cpu_topology: CPUTopology | None = Field(default=None, alias="currentCPUTopology")
    """CPU topology now (may differ from spec during hotplug)."""
    memory: MemoryStatus | None = None
    """Guest memory."""
    migrated_volumes: list[dict[str, Any]] | None = None
    """Volumes moved by a storage migration."""
    changed_block_tracking: dict[str, Any] | None = None
    """State of changed block tracking."""
    device_status: dict[str, Any] | None = None
    """State of GPUs and host devices."""


class VirtualMachineInstance(KubeModel):
    """A running virtual machine."""

    api_version: str | None = API_VERSION
    """kubevirt.io/v1."""
    kind: str | None = "VirtualMachineInstance"
    """VirtualMachineInstance."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineInstanceSpec
    """The virtual machine to run."""
    status: VirtualMachineInstanceStatus | None = None
    """Observed state."""


class VirtualMachineInstanceTemplateSpec(KubeModel):
    """A VMI to create: metadata and spec."""

    metadata: ObjectMeta | None = None
    """Labels and annotations of the VMIs created."""
    spec: VirtualMachineInstanceSpec | None = None
    """Spec of the VMIs created."""


# --- VirtualMachine ------------------------------------------------------------------------------


class InstancetypeMatcher(KubeModel):
    """Which instancetype fills in the VM's CPU and memory."""

    name: str | None = None
    """Name of the instancetype."""
    kind: str | None = None
    """VirtualMachineInstancetype or VirtualMachineClusterInstancetype (the default)."""
    revision_name: str | None = None
    """ControllerRevision the VM is pinned to; set by the VM controller."""
    infer_from_volume: str | None = None
    """Volume whose labels name the instancetype, instead of name."""
    infer_from_volume_failure_policy: str | None = None
    """Reject (default) or Ignore when inference fails."""


class PreferenceMatcher(KubeModel):
    """Which preference fills in the VM's remaining defaults."""

    name: str | None = None
    """Name of the preference."""
    kind: str | None = None
    """VirtualMachinePreference or VirtualMachineClusterPreference (the default)."""
    revision_name: str | None = None
    """ControllerRevision the VM is pinned to; set by the VM controller."""
    infer_from_volume: str | None = None
    """Volume whose labels name the preference, instead of name."""
    infer_from_volume_failure_policy: str | None = None
    """Reject (default) or Ignore when inference fails."""


class DataVolumeTemplateSpec(KubeModel):
    """A DataVolume the VM owns, created before its VMI starts."""

    api_version: str | None = None
    """cdi.kubevirt.io/v1beta1."""
    kind: str | None = None
    """DataVolume."""
    metadata: ObjectMeta | None = None
    """Name and labels of the DataVolume."""
    spec: DataVolumeSpec
    """The DataVolume's spec."""
    status: dict[str, Any] | None = None
    """Ignored; kept for compatibility."""


class VirtualMachineSpec(KubeModel):
    """A virtual machine: a VMI template, its disks, and whether it should run."""

    running: bool | None = None
    """Deprecated: whether the VM should run; use runStrategy. Mutually exclusive with runStrategy."""
    run_strategy: str | None = None
    """When the VM runs: Always, Halted, Manual, RerunOnFailure, Once or WaitAsReceiver."""
    instancetype: InstancetypeMatcher | None = None
    """Instancetype providing CPU and memory."""
    preference: PreferenceMatcher | None = None
    """Preference providing defaults."""
    template: VirtualMachineInstanceTemplateSpec
    """The VMI to create when the VM runs."""
    data_volume_templates: list[DataVolumeTemplateSpec] | None = None
    """DataVolumes created for (and deleted with) the VM."""
    update_volumes_strategy: str | None = None
    """Replacement (default) or Migration: how volume changes reach a running VM."""


class VirtualMachineCondition(KubeModel):
    """A condition of a VM: Ready, Failure, Paused, RestartRequired, ..."""

    type: str
    """Condition type."""
    status: str
    """True, False or Unknown."""
    last_probe_time: str | None = None
    """When the condition was last checked."""
    last_transition_time: str | None = None
    """When the status last changed."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class VirtualMachineStateChangeRequest(KubeModel):
    """A requested start or stop of the VM's VMI."""

    action: str
    """Start or Stop."""
    data: dict[str, str] | None = None
    """Extra data for the action."""
    uid: str | None = None
    """UID of the VMI the request is about."""


class HotplugVolumeSource(KubeModel):
    """Where a hotplugged volume's data is: exactly one of a claim or a DataVolume."""

    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    """A persistent volume claim (``hotpluggable: true``)."""
    data_volume: DataVolumeVolumeSource | None = None
    """A DataVolume (``hotpluggable: true``)."""


class AddVolumeOptions(KubeModel):
    """Body of the ``addvolume`` subresource (VM and VMI) of ``subresources.kubevirt.io``."""

    name: str
    """Name of the new volume, and of its disk."""
    disk: Disk
    """The disk the guest sees (its ``name`` is set to ``name``); KubeVirt hotplugs on bus scsi."""
    volume_source: HotplugVolumeSource
    """The claim or DataVolume to attach."""
    dry_run: list[str] | None = None
    """``["All"]``: validate only."""


class RemoveVolumeOptions(KubeModel):
    """Body of the ``removevolume`` subresource (VM and VMI) of ``subresources.kubevirt.io``."""

    name: str
    """Name of the hotplugged volume to detach."""
    dry_run: list[str] | None = None
    """``["All"]``: validate only."""


class VolumeSnapshotStatus(KubeModel):
    """Whether a volume can be snapshotted."""

    name: str
    """Volume name."""
    enabled: bool
    """Whether snapshots are supported."""
    reason: str | None = None
    """Why not, when not."""


class VirtualMachineMemoryDumpRequest(KubeModel):
    """A memory dump in progress or done."""

    claim_name: str
    """Claim the dump is written to."""
    phase: str
    """InProgress, Completed, Unmounting, Failed, Dissociating, ..."""
    remove: bool | None = None
    """Whether the claim should be detached."""
    start_timestamp: str | None = None
    """When the dump started."""
    end_timestamp: str | None = None
    """When it completed."""
    file_name: str | None = None
    """Name of the dump file."""
    message: str | None = None
    """Why it failed."""


class VirtualMachineStatus(KubeModel):
    """Observed state of a VM; owner: the VM controller (volumeRequests and stateChangeRequests: the VM
    subresources)."""

    snapshot_in_progress: str | None = None
    """VirtualMachineSnapshot being taken."""
    restore_in_progress: str | None = None
    """VirtualMachineRestore being applied."""
    created: bool | None = None
    """Whether the VMI exists."""
    ready: bool | None = None
    """Whether the VMI is running and ready."""
    printable_status: str | None = None
    """Stopped, Provisioning, Starting, Running, Paused, Stopping, Terminating, CrashLoopBackOff, ..."""
    conditions: list[VirtualMachineCondition] | None = Field(
        default=None, json_schema_extra=patch_merge("type")
    )
    """Ready, Failure, Paused, RestartRequired, ..."""
    state_change_requests: list[VirtualMachineStateChangeRequest] | None = None
    """Pending start and stop requests."""
    volume_requests: list[dict[str, Any]] | None = None
    """Pending volume hotplug and unplug requests."""
    volume_snapshot_statuses: list[VolumeSnapshotStatus] | None = None
    """Which volumes can be snapshotted."""
    start_failure: dict[str, Any] | None = None
    """Consecutive start failures, for crash-loop backoff."""
    memory_dump_request: VirtualMachineMemoryDumpRequest | None = None
    """The latest memory dump."""
    observed_generation: int | None = None
    """Generation of the VM the VMI was started from."""
    desired_generation: int | None = None
    """Generation the VMI should reflect."""
    run_strategy: str | None = None
    """The run strategy in effect."""
    volume_update_state: dict[str, Any] | None = None
    """State of a volume update (storage migration)."""
    changed_block_tracking: dict[str, Any] | None = None
    """State of changed block tracking."""
    instancetype_ref: dict[str, Any] | None = None
    """The instancetype revision in use."""
    preference_ref: dict[str, Any] | None = None
    """The preference revision in use."""


class VirtualMachine(KubeModel):
    """A virtual machine that can be started and stopped; running, it has a VirtualMachineInstance."""

    api_version: str | None = API_VERSION
    """kubevirt.io/v1."""
    kind: str | None = "VirtualMachine"
    """VirtualMachine."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineSpec
    """The VM and when it runs."""
    status: VirtualMachineStatus | None = None
    """Observed state."""


# --- VirtualMachineInstanceMigration -------------------------------------------------------------


class VirtualMachineInstanceMigrationSpec(KubeModel):
    """Which VMI to move."""

    vmi_name: str | None = None
    """Name of the VMI to migrate, in the migration's namespace."""
    added_node_selector: dict[str, str] | None = None
    """Extra node labels the target node must have."""
    send_to: dict[str, Any] | None = None
    """Decentralized migration: where to send the VM."""
    receive: dict[str, Any] | None = None
    """Decentralized migration: receive a VM from elsewhere."""
    priority: str | None = None
    """Priority among queued migrations."""


class VirtualMachineInstanceMigrationCondition(KubeModel):
    """A condition of a migration."""

    type: str
    """Condition type."""
    status: str
    """True, False or Unknown."""
    last_probe_time: str | None = None
    """When the condition was last checked."""
    last_transition_time: str | None = None
    """When the status last changed."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class VirtualMachineInstanceMigrationStatus(KubeModel):
    """Observed state of a migration; owner: the migration controller."""

    phase: str | None = None
    """Pending, Scheduling, Scheduled, PreparingTarget, TargetReady, Running, Succeeded or Failed."""
    phase_transition_timestamps: list[VirtualMachineInstancePhaseTransitionTimestamp] | None = None
    """When each phase was entered."""
    conditions: list[VirtualMachineInstanceMigrationCondition] | None = None
    """Conditions."""
    migration_state: VirtualMachineInstanceMigrationState | None = None
    """Progress of the migration."""
    synchronization_addresses: list[str] | None = None
    """Decentralized migration: synchronization endpoints."""


class VirtualMachineInstanceMigration(KubeModel):
    """A request to live-migrate a VMI to another node."""

    api_version: str | None = API_VERSION
    """kubevirt.io/v1."""
    kind: str | None = "VirtualMachineInstanceMigration"
    """VirtualMachineInstanceMigration."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineInstanceMigrationSpec
    """Which VMI to move."""
    status: VirtualMachineInstanceMigrationStatus | None = None
    """Observed state."""


# --- VirtualMachineInstanceReplicaSet ------------------------------------------------------------


class VirtualMachineInstanceReplicaSetSpec(KubeModel):
    """Keep a number of identical VMIs running."""

    replicas: int | None = None
    """Number of VMIs; default 1."""
    selector: LabelSelector
    """Label query over the VMIs the set owns; must match the template's labels."""
    template: VirtualMachineInstanceTemplateSpec
    """The VMIs to create."""
    paused: bool | None = None
    """Stop reconciling."""


class VirtualMachineInstanceReplicaSetCondition(KubeModel):
    """A condition of a replica set."""

    type: str
    """Condition type, e.g. ReplicaFailure."""
    status: str
    """True, False or Unknown."""
    last_probe_time: str | None = None
    """When the condition was last checked."""
    last_transition_time: str | None = None
    """When the status last changed."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class VirtualMachineInstanceReplicaSetStatus(KubeModel):
    """Observed state of a replica set; owner: the replica set controller."""

    replicas: int | None = None
    """VMIs owned and not finished."""
    ready_replicas: int | None = None
    """VMIs ready."""
    conditions: list[VirtualMachineInstanceReplicaSetCondition] | None = None
    """Conditions."""
    label_selector: str | None = None
    """The selector in string form (for the scale subresource)."""


class VirtualMachineInstanceReplicaSet(KubeModel):
    """A set of identical, interchangeable VMIs."""

    api_version: str | None = API_VERSION
    """kubevirt.io/v1."""
    kind: str | None = "VirtualMachineInstanceReplicaSet"
    """VirtualMachineInstanceReplicaSet."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineInstanceReplicaSetSpec
    """How many VMIs, and which."""
    status: VirtualMachineInstanceReplicaSetStatus | None = None
    """Observed state."""


# --- registry ------------------------------------------------------------------------------------

# Names follow the default rule (DNS-1123 subdomain), as KubeVirt's CRDs: KubeVirt does not restrict VM or VMI
# names further; the guest hostname is the name up to its first dot, cut to 63 characters (SanitizeHostname).
AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")
READY = PrinterColumn("Ready", json_path=".status.conditions[?(@.type=='Ready')].status")

KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "VirtualMachine",
        "virtualmachines",
        VirtualMachine,
        short_names=("vm", "vms"),
        categories=("all",),
        printer_columns=(
            AGE,
            PrinterColumn("Status", json_path=".status.printableStatus", description="Human Readable Status"),
            READY,
        ),
        defaulter=admission.default_vm,
        validator=admission.validate_vm,
    ),
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineInstance",
        "virtualmachineinstances",
        VirtualMachineInstance,
        short_names=("vmi", "vmis"),
        categories=("all",),
        printer_columns=(
            AGE,
            PrinterColumn("Phase", json_path=".status.phase"),
            PrinterColumn("IP", json_path=".status.interfaces[0].ipAddress"),
            PrinterColumn("NodeName", json_path=".status.nodeName"),
            READY,
            PrinterColumn(
                "Live-Migratable",
                json_path=".status.conditions[?(@.type=='LiveMigratable')].status",
                priority=1,
            ),
            PrinterColumn("Paused", json_path=".status.conditions[?(@.type=='Paused')].status", priority=1),
        ),
        field_selectors={"status.nodeName": "status.nodeName", "status.phase": "status.phase"},
        defaulter=admission.default_vmi,
        validator=admission.validate_vmi,
    ),
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineInstanceMigration",
        "virtualmachineinstancemigrations",
        VirtualMachineInstanceMigration,
        short_names=("vmim", "vmims"),
        categories=("all",),
        printer_columns=(
            PrinterColumn(
                "Phase", json_path=".status.phase", description="The current phase of VM instance migration"
            ),
            PrinterColumn(
                "VMI",
                json_path=".spec.vmiName",
                description="The name of the VMI to perform the migration on",
            ),
        ),
        validator=admission.validate_migration,
    ),
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineInstanceReplicaSet",
        "virtualmachineinstancereplicasets",
        VirtualMachineInstanceReplicaSet,
        short_names=("vmirs", "vmirss"),
        categories=("all",),
        printer_columns=(
            PrinterColumn(
                "Desired",
                "integer",
                ".spec.replicas",
                description="Number of desired VirtualMachineInstances",
            ),
            PrinterColumn(
                "Current",
                "integer",
                ".status.replicas",
                description="Number of managed and not final or deleted VirtualMachineInstances",
            ),
            PrinterColumn(
                "Ready",
                "integer",
                ".status.readyReplicas",
                description="Number of managed VirtualMachineInstances which are ready to receive traffic",
            ),
            AGE,
        ),
        validator=admission.validate_replica_set,
    ),
]
