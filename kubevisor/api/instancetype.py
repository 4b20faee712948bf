"""instancetype.kubevirt.io/v1beta1 kinds: VirtualMachineInstancetype, VirtualMachineClusterInstancetype,
VirtualMachinePreference, VirtualMachineClusterPreference.

JSON names follow KubeVirt's ``staging/src/kubevirt.io/api/instancetype/v1beta1/types.go``. An instancetype
says how big a VM is (vCPUs, memory, devices that size it); a preference gives defaults for the rest (disk
bus, interface model, firmware, machine type). A VirtualMachine names them in ``spec.instancetype`` and
``spec.preference``; the VM controller applies them when it creates the VMI. These objects have no status.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubevisor.api import kubevirt_admission
from kubevisor.api.base import KubeModel
from kubevisor.api.core import Quantity
from kubevisor.api.kubevirt import (
    EFI,
    GPU,
    NUMA,
    BlockSize,
    CPUFeature,
    DiskIOThreads,
    FeatureAPIC,
    FeatureHyperv,
    FeatureKVM,
    FeatureState,
    HostDevice,
    Hugepages,
    InterfaceMasquerade,
    Realtime,
    Rng,
    Timers,
    TPMDevice,
)
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind, Obj
from kubevisor.api.validation import FieldError

GROUP = "instancetype.kubevirt.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"

# --- instancetypes -------------------------------------------------------------------------------


class CPUInstancetype(KubeModel):
    """The vCPUs an instancetype gives."""

    guest: int
    """Number of vCPUs; the topology comes from the preference (default: sockets)."""
    model: str | None = None
    """CPU model; default host-model."""
    dedicated_cpu_placement: bool | None = Field(default=None, alias="dedicatedCPUPlacement")
    """Pin each vCPU to a dedicated host CPU."""
    numa: NUMA | None = None
    """Guest NUMA topology."""
    isolate_emulator_thread: bool | None = None
    """Give the emulator thread its own dedicated host CPU."""
    realtime: Realtime | None = None
    """Real-time tuning."""
    max_sockets: int | None = None
    """Upper bound of sockets for CPU hotplug."""


class MemoryInstancetype(KubeModel):
    """The memory an instancetype gives."""

    guest: Quantity
    """Memory the guest sees, e.g. 128Mi."""
    hugepages: Hugepages | None = None
    """Back guest memory with hugepages."""
    overcommit_percent: int | None = None
    """Percentage of guest memory not requested from the node (0-100)."""
    max_guest: Quantity | None = None
    """Upper bound of guest memory for memory hotplug."""


class VirtualMachineInstancetypeSpec(KubeModel):
    """How big a VM is: vCPUs and memory are required."""

    node_selector: dict[str, str] | None = None
    """Labels a node must have to run VMs of this instancetype."""
    scheduler_name: str | None = None
    """Scheduler to place VMs of this instancetype."""
    cpu: CPUInstancetype
    """vCPUs."""
    memory: MemoryInstancetype
    """Memory."""
    gpus: list[GPU] | None = None
    """GPUs passed through."""
    host_devices: list[HostDevice] | None = None
    """Host devices passed through."""
    io_threads_policy: str | None = None
    """shared, auto or supplementalPool."""
    io_threads: DiskIOThreads | None = None
    """IO threads of the supplementalPool policy."""
    launch_security: dict[str, Any] | None = None
    """Confidential computing settings."""
    annotations: dict[str, str] | None = None
    """Annotations given to the VMI."""


class VirtualMachineInstancetype(KubeModel):
    """A VM size, usable by VMs of its namespace."""

    api_version: str | None = API_VERSION
    """instancetype.kubevirt.io/v1beta1."""
    kind: str | None = "VirtualMachineInstancetype"
    """VirtualMachineInstancetype."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineInstancetypeSpec
    """The size."""


class VirtualMachineClusterInstancetype(KubeModel):
    """A VM size, usable by VMs of every namespace."""

    api_version: str | None = API_VERSION
    """instancetype.kubevirt.io/v1beta1."""
    kind: str | None = "VirtualMachineClusterInstancetype"
    """VirtualMachineClusterInstancetype."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineInstancetypeSpec
    """The size."""


# --- preferences ---------------------------------------------------------------------------------


class SpreadOptions(KubeModel):
    """How vCPUs are spread with the spread topology."""

    across: str | None = None
    """SocketsCores (default), CoresThreads or SocketsCoresThreads."""
    ratio: int | None = None
    """Ratio of the spread (default 2)."""


class CPUPreferences(KubeModel):
    """CPU preferences."""

    preferred_cpu_topology: str | None = Field(default=None, alias="preferredCPUTopology")
    """sockets (default), cores, threads, spread or any (also the older preferSockets, ... forms)."""
    spread_options: SpreadOptions | None = None
    """Options of the spread topology."""
    preferred_cpu_features: list[CPUFeature] | None = Field(default=None, alias="preferredCPUFeatures")
    """CPU features to add."""


class DevicePreferences(KubeModel):
    """Device preferences, applied where the VM leaves the setting empty."""

    preferred_autoattach_graphics_device: bool | None = None
    """Default of autoattachGraphicsDevice."""
    preferred_autoattach_mem_balloon: bool | None = None
    """Default of autoattachMemBalloon."""
    preferred_autoattach_pod_interface: bool | None = None
    """Default of autoattachPodInterface."""
    preferred_autoattach_serial_console: bool | None = None
    """Default of autoattachSerialConsole."""
    preferred_autoattach_input_device: bool | None = None
    """Default of autoattachInputDevice."""
    preferred_disable_hotplug: bool | None = None
    """Default of disableHotplug."""
    preferred_virtual_gpu_options: dict[str, Any] | None = Field(
        default=None, alias="preferredVirtualGPUOptions"
    )
    """Default vGPU options."""
    preferred_sound_model: str | None = None
    """Default sound card model."""
    preferred_use_virtio_transitional: bool | None = None
    """Default of useVirtioTransitional."""
    preferred_input_bus: str | None = None
    """Default input device bus."""
    preferred_input_type: str | None = None
    """Default input device type."""
    preferred_disk_bus: str | None = None
    """Default bus of disks, e.g. virtio."""
    preferred_lun_bus: str | None = None
    """Default bus of LUNs."""
    preferred_cdrom_bus: str | None = None
    """Default bus of CD-ROMs."""
    preferred_disk_dedicated_io_thread: bool | None = None
    """Default of dedicatedIOThread on virtio disks."""
    preferred_disk_cache: str | None = None
    """Default disk cache mode."""
    preferred_disk_io: str | None = Field(default=None, alias="preferredDiskIO")
    """Default disk IO mode."""
    preferred_disk_block_size: BlockSize | None = None
    """Default disk block sizes."""
    preferred_interface_model: str | None = None
    """Default interface model, e.g. virtio."""
    preferred_rng: Rng | None = None
    """Default random number generator."""
    preferred_block_multi_queue: bool | None = None
    """Default of blockMultiQueue."""
    preferred_network_interface_multi_queue: bool | None = None
    """Default of networkInterfaceMultiqueue."""
    preferred_tpm: TPMDevice | None = Field(default=None, alias="preferredTPM")
    """Default TPM."""
    preferred_interface_masquerade: InterfaceMasquerade | None = None
    """Use masquerade for interfaces that name no binding."""


class FeaturePreferences(KubeModel):
    """Guest feature preferences."""

    preferred_acpi: FeatureState | None = None
    """Default ACPI."""
    preferred_apic: FeatureAPIC | None = None
    """Default APIC."""
    preferred_hyperv: FeatureHyperv | None = None
    """Default Hyper-V enlightenments."""
    preferred_kvm: FeatureKVM | None = None
    """Default KVM features."""
    preferred_pvspinlock: FeatureState | None = None
    """Default paravirtual spinlocks."""
    preferred_smm: FeatureState | None = None
    """Default SMM."""


class FirmwarePreferences(KubeModel):
    """Firmware preferences."""

    preferred_use_bios: bool | None = None
    """Boot with BIOS."""
    preferred_use_bios_serial: bool | None = None
    """Send BIOS output to the serial console."""
    preferred_use_efi: bool | None = None
    """Boot with EFI (deprecated: use preferredEfi)."""
    preferred_use_secure_boot: bool | None = None
    """Enable Secure Boot (deprecated: use preferredEfi)."""
    preferred_efi: EFI | None = None
    """EFI settings."""


class MachinePreferences(KubeModel):
    """Machine preferences."""

    preferred_machine_type: str | None = None
    """Default machine type."""


class VolumePreferences(KubeModel):
    """Volume preferences."""

    preferred_storage_class_name: str | None = None
    """Storage class for the VM's dataVolumeTemplates that name none."""


class ClockPreferences(KubeModel):
    """Clock preferences."""

    preferred_clock_offset: dict[str, Any] | None = None
    """Default clock offset (utc or timezone)."""
    preferred_timer: Timers | None = None
    """Default timers."""


class CPUPreferenceRequirement(KubeModel):
    """Minimum vCPUs the instancetype must give."""

    guest: int
    """Minimum number of vCPUs."""


class MemoryPreferenceRequirement(KubeModel):
    """Minimum memory the instancetype must give."""

    guest: Quantity
    """Minimum guest memory."""


class PreferenceRequirements(KubeModel):
    """What a preference needs from the instancetype."""

    cpu: CPUPreferenceRequirement | None = None
    """Minimum vCPUs."""
    memory: MemoryPreferenceRequirement | None = None
    """Minimum memory."""


class VirtualMachinePreferenceSpec(KubeModel):
    """Defaults for the settings a VM leaves empty."""

    clock: ClockPreferences | None = None
    """Clock preferences."""
    cpu: CPUPreferences | None = None
    """CPU preferences."""
    devices: DevicePreferences | None = None
    """Device preferences."""
    features: FeaturePreferences | None = None
    """Guest feature preferences."""
    firmware: FirmwarePreferences | None = None
    """Firmware preferences."""
    machine: MachinePreferences | None = None
    """Machine preferences."""
    volumes: VolumePreferences | None = None
    """Volume preferences."""
    preferred_subdomain: str | None = None
    """Default subdomain."""
    preferred_termination_grace_period_seconds: int | None = None
    """Default termination grace period."""
    requirements: PreferenceRequirements | None = None
    """What the instancetype must give."""
    annotations: dict[str, str] | None = None
    """Annotations given to the VMI."""
    prefer_spread_socket_to_core_ratio: int | None = None
    """Sockets-to-cores ratio of the spread topology (default 2)."""
    preferred_architecture: str | None = None
    """Default architecture."""


class VirtualMachinePreference(KubeModel):
    """VM defaults, usable by VMs of its namespace."""

    api_version: str | None = API_VERSION
    """instancetype.kubevirt.io/v1beta1."""
    kind: str | None = "VirtualMachinePreference"
    """VirtualMachinePreference."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachinePreferenceSpec
    """The preferences."""


class VirtualMachineClusterPreference(KubeModel):
    """VM defaults, usable by VMs of every namespace."""

    api_version: str | None = API_VERSION
    """instancetype.kubevirt.io/v1beta1."""
    kind: str | None = "VirtualMachineClusterPreference"
    """VirtualMachineClusterPreference."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachinePreferenceSpec
    """The preferences."""


# --- validation ----------------------------------------------------------------------------------


def _instancetype_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    guest_cpu = (spec.get("cpu") or {}).get("guest")
    if isinstance(guest_cpu, int) and guest_cpu < 1:
        errors.append(FieldError("spec.cpu.guest", "spec.cpu.guest must be at least 1 vCPU"))
    memory = spec.get("memory") or {}
    for key in ("guest", "maxGuest"):
        value = memory.get(key)
        if value is not None and kubevirt_admission.parse_quantity(value) is None:
            errors.append(
                FieldError(f"spec.memory.{key}", f"{value!r}: {kubevirt_admission.QUANTITY_MESSAGE}")
            )
    percent = memory.get("overcommitPercent")
    if isinstance(percent, int) and not 0 <= percent <= 100:
        errors.append(
            FieldError("spec.memory.overcommitPercent", "spec.memory.overcommitPercent must be 0-100")
        )
    return errors


KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineInstancetype",
        "virtualmachineinstancetypes",
        VirtualMachineInstancetype,
        short_names=("vminstancetype", "vminstancetypes", "vmf", "vmfs"),
        categories=("all",),
        validator=_instancetype_validate,
    ),
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineClusterInstancetype",
        "virtualmachineclusterinstancetypes",
        VirtualMachineClusterInstancetype,
        namespaced=False,
        short_names=("vmclusterinstancetype", "vmclusterinstancetypes", "vmcf", "vmcfs"),
        validator=_instancetype_validate,
    ),
    Kind(
        GROUP,
        VERSION,
        "VirtualMachinePreference",
        "virtualmachinepreferences",
        VirtualMachinePreference,
        short_names=("vmpref", "vmprefs", "vmp", "vmps"),
        categories=("all",),
    ),
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineClusterPreference",
        "virtualmachineclusterpreferences",
        VirtualMachineClusterPreference,
        namespaced=False,
        short_names=("vmcp", "vmcps"),
    ),
]
