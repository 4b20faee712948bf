"""Defaulting and validation of kubevirt.io/v1 objects, as KubeVirt's virt-api admission webhooks do them.

The functions work on the JSON the user sent (already checked against the pydantic models, so every typed
field has its type) and are wired into the registry as the kinds' defaulter and validator hooks.

Defaulting follows KubeVirt (``pkg/defaults``, ``pkg/virt-api/webhooks/mutating-webhook``):

* a **VirtualMachine** gets only what virt-api's VM mutator sets: the instancetype and preference kinds
  (cluster-scoped by default), the template's architecture (amd64) and machine type (q35). The rest of the
  template is defaulted when the VM controller creates the VMI from it, after applying the instancetype and
  preference (a preference's preferredDiskBus must still be able to apply).
* a **VirtualMachineInstance** gets the full set: architecture and machine type; memory requests from the
  guest memory and guest memory from the requests; CPU topology (sockets from the CPU request or limit,
  else 1/1/1) and model host-model; container disk pull policies; a ``default`` interface with ``bridge``
  binding on the ``pod`` network when no interfaces and no networks are given and
  ``autoattachPodInterface`` is not false (KubeVirt's ``DefaultNetworkInterface`` is ``bridge``); a disk for
  every volume without one; ``disk: {}`` for a disk with no type; on x86_64 the empty disk, CD-ROM and LUN
  bus becomes ``sata`` (KubeVirt's amd64 default, not virtio); firmware with a UUID; CD-ROM, input, probe,
  feature, timer and watchdog defaults; and on create ``status.phase: Pending``.

Every default only fills what is missing, so defaulting is idempotent: the apiserver runs it on every
write. Validation follows ``vmi-create-admitter.go`` and ``vms-admitter.go``: error field paths are
KubeVirt's (``spec.template.spec.domain.devices.disks[1].disk.bus``), except where KubeVirt's own path is
a typo (``spec.domain.volumes[0].name``, ``spec.dataVolumeTemplate[0]``), which are given the real path.
A VM's template is validated the way virt-api does it: on a defaulted copy, so what is checked is what
will run. Checks that need other objects (instancetype lookups, DataVolume clone authorization, the VMI
a migration names) or cluster configuration (feature gates) are not done here.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import math
import posixpath
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from kubevisor.api.registry import Obj
from kubevisor.api.validation import FieldError, dns1123_label, dns1123_subdomain

# --- constants (KubeVirt's) ----------------------------------------------------------------------

ARRAY_LEN_MAX = 256
MAX_STR_LEN = 256
CLOUD_INIT_USER_MAX_LEN = 2048
CLOUD_INIT_NETWORK_MAX_LEN = 2048

DEFAULT_ARCHITECTURE = "amd64"
MACHINE_TYPES = {"amd64": "q35", "arm64": "virt", "s390x": "s390-ccw-virtio", "ppc64le": "pseries"}
EMULATED_MACHINES = {"amd64": ("q35*", "pc-q35*"), "arm64": ("virt*",), "s390x": ("s390-ccw-virtio*",)}
DEFAULT_CPU_MODEL = "host-model"
NODE_AGENT_FINALIZER = "kubevisor.io/node-agent"
"""Put on every VMI at creation (as virt-api's mutator adds KubeVirt's VMI finalizer), so that neither the
VMI controller nor the node agent spends an API write on it. The node agent removes it once the guest is down
and its run directory gone; the VMI controller removes it from a VMI deleted before it reached a node."""
CLUSTER_INSTANCETYPE_KIND = "virtualmachineclusterinstancetype"
CLUSTER_PREFERENCE_KIND = "virtualmachineclusterpreference"

RUN_STRATEGIES = ("Halted", "Manual", "Always", "RerunOnFailure", "Once", "WaitAsReceiver")
DISK_BUSES = ("virtio", "scsi", "sata", "usb")
DISK_TYPES = ("disk", "lun", "cdrom")
INTERFACE_MODELS = ("e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio")
INTERFACE_BINDINGS = ("bridge", "masquerade", "sriov", "slirp", "macvtap", "passt", "passtBinding", "binding")
NETWORK_TYPES = ("pod", "multus", "resourceClaim")
VOLUME_SOURCES = (
    "persistentVolumeClaim",
    "sysprep",
    "cloudInitNoCloud",
    "cloudInitConfigDrive",
    "containerDisk",
    "ephemeral",
    "emptyDisk",
    "hostDisk",
    "dataVolume",
    "configMap",
    "secret",
    "downwardAPI",
    "serviceAccount",
    "downwardMetrics",
    "memoryDump",
    "containerPath",
)
EVICTION_STRATEGIES = ("None", "LiveMigrate", "LiveMigrateIfPossible", "External")
IO_THREADS_POLICIES = ("shared", "auto", "supplementalPool")
CPU_FEATURE_POLICIES = ("", "force", "require", "optional", "disable", "forbid")
DISK_CACHES = ("none", "writethrough", "writeback")
DISK_IO_MODES = ("native", "threads")
DISK_ERROR_POLICIES = ("stop", "ignore", "report", "enospace")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
INFER_FAILURE_POLICIES = ("Ignore", "Reject")

INTERFACE_NAME = re.compile(r"^[A-Za-z0-9-_]+$")
SERIAL = re.compile(r"^[A-Za-z0-9_.+-]+$")
PCI_ADDRESS = re.compile(r"^[\da-fA-F]{4}:[\da-fA-F]{2}:[\da-fA-F]{2}\.[0-7]$")
MAC_COLON = re.compile(
    r"^[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}(?:[0-9A-Fa-f]{2}\1){0,2}[0-9A-Fa-f]{2}$"
)
MAC_DOTTED = re.compile(r"^[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){2,3}$")
PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
QUANTITY_MESSAGE = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
UINT32_MAX = 2**32 - 1


# --- small helpers -------------------------------------------------------------------------------


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity (``64M``, ``100m``, ``1Gi``, ``2``, ``1e3``) as a number; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    if not isinstance(value, str):
        return None
    match = QUANTITY.match(value)
    if match is None:
        return None
    number_text, suffix = match.group(1), match.group(2) or ""
    try:
        number = Decimal(number_text)
        if suffix[:1] in ("e", "E"):
            exponent = int(suffix[1:])
            if abs(exponent) > 100:  # far beyond any real quantity; keeps Decimal arithmetic cheap
                return None
            return number.scaleb(exponent)
        return number * _SUFFIXES[suffix]
    except (InvalidOperation, ValueError):
        return None


def _value(value: Any) -> int:
    """A quantity rounded up to an integer, as apimachinery's ``Quantity.Value()``; 0 if absent/invalid."""
    number = parse_quantity(value)
    if number is None:
        return 0
    return math.ceil(number)


def _dict(parent: Obj, key: str) -> Obj:
    """``parent[key]`` as a dict, created (or replaced, when null) if missing."""
    value = parent.get(key)
    if not isinstance(value, dict):
        value = {}
        parent[key] = value
    return value


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _list(value: Any) -> list[Any]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _truthy(value: Any) -> bool:
    return value is not None and value is not False


def _invalid(field: str, message: str) -> FieldError:
    return FieldError(field, message, "FieldValueInvalid")


def _required(field: str, message: str) -> FieldError:
    return FieldError(field, message, "FieldValueRequired")


def _not_supported(field: str, message: str) -> FieldError:
    return FieldError(field, message, "FieldValueNotSupported")


def _duplicate(field: str, message: str) -> FieldError:
    return FieldError(field, message, "FieldValueDuplicate")


def _obj(value: Any) -> Obj:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _mem(domain: Obj) -> Obj:
    return _obj(domain.get("memory"))


def _resources(domain: Obj, key: str) -> Obj:
    resources = _obj(domain.get("resources"))
    value = resources.get(key)
    return value if isinstance(value, dict) else {}


# --- defaulting ----------------------------------------------------------------------------------


def default_vm(obj: Obj) -> None:
    """VirtualMachine defaults, as virt-api's VM mutator (instancetype/preference kinds, architecture,
    machine type of the template)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    default_vm_spec(spec)


def default_vm_spec(spec: Obj) -> None:
    """Defaults of a VirtualMachine spec (also the VM template of a VirtualMachinePool)."""
    for key, kind in (("instancetype", CLUSTER_INSTANCETYPE_KIND), ("preference", CLUSTER_PREFERENCE_KIND)):
        matcher = spec.get(key)
        # With inferFromVolume KubeVirt first infers name and kind from the volume; the kind is only
        # defaulted for a matcher naming the object directly.
        if not isinstance(matcher, dict) or matcher.get("kind") or matcher.get("inferFromVolume"):
            continue
        if matcher.get("name"):
            matcher["kind"] = kind
    template_spec = _get(spec, "template", "spec")
    if not isinstance(template_spec, dict) or not isinstance(template_spec.get("domain"), dict):
        return  # nothing to default; validation reports what is missing
    _default_architecture(template_spec)
    _default_machine_type(template_spec)


def default_vmi(obj: Obj) -> None:
    """VirtualMachineInstance defaults, as virt-api's VMI mutator; the initial status on create."""
    spec = obj.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("domain"), dict):
        return
    default_vmi_spec(spec)
    if "status" not in obj:  # a create (the apiserver drops the body's status); later writes keep theirs
        obj["status"] = _initial_status(spec)
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            finalizers = metadata.get("finalizers")
            finalizers = finalizers if isinstance(finalizers, list) else []
            if NODE_AGENT_FINALIZER not in finalizers:
                metadata["finalizers"] = [*finalizers, NODE_AGENT_FINALIZER]


def _initial_status(spec: Obj) -> Obj:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status: Obj = {
        "phase": "Pending",
        "phaseTransitionTimestamps": [{"phase": "Pending", "phaseTransitionTimestamp": now}],
    }
    domain = spec["domain"]
    cpu = domain.get("cpu")
    if isinstance(cpu, dict):
        status["currentCPUTopology"] = {k: cpu[k] for k in ("cores", "sockets", "threads") if k in cpu}
    guest = _get(domain, "memory", "guest")
    if guest is not None:
        status["memory"] = {"guestAtBoot": guest, "guestCurrent": guest, "guestRequested": guest}
    return status


def default_vmi_spec(spec: Obj) -> None:
    """Every default virt-api gives a VMI spec (KubeVirt's ``SetDefaultVirtualMachineInstance``)."""
    domain = _dict(spec, "domain")
    devices = _dict(domain, "devices")
    _default_architecture(spec)
    _default_machine_type(spec)
    _default_resource_requests(domain)
    _default_guest_memory(domain)
    _default_cpu_topology(domain)
    _default_pull_policies(spec)
    _default_network_interface(spec, devices)
    _default_volume_disks(spec, devices)
    _default_objects(spec, domain, devices)
    cpu = _dict(domain, "cpu")
    if not cpu.get("model"):
        cpu["model"] = DEFAULT_CPU_MODEL
    if spec.get("architecture") == "amd64":
        _default_amd64_disk_bus(devices)
        watchdog = devices.get("watchdog")
        if isinstance(watchdog, dict):
            i6300esb = _dict(watchdog, "i6300esb")
            if not i6300esb.get("action"):
                i6300esb["action"] = "reset"


def _default_architecture(spec: Obj) -> None:
    if not spec.get("architecture"):
        spec["architecture"] = DEFAULT_ARCHITECTURE


def _default_machine_type(spec: Obj) -> None:
    machine = _dict(_dict(spec, "domain"), "machine")
    if not machine.get("type"):
        machine["type"] = MACHINE_TYPES.get(
            str(spec.get("architecture")), MACHINE_TYPES[DEFAULT_ARCHITECTURE]
        )


def _default_resource_requests(domain: Obj) -> None:
    limits = _resources(domain, "limits")
    requests = _resources(domain, "requests")
    for resource in ("cpu", "memory"):
        if parse_quantity(limits.get(resource)) and not parse_quantity(requests.get(resource)):
            _dict(_dict(domain, "resources"), "requests")[resource] = limits[resource]
    if "memory" not in _resources(domain, "requests"):
        memory = _mem(domain)
        guest = memory.get("guest")
        if guest is None and isinstance(memory.get("hugepages"), dict):
            page_size = memory["hugepages"].get("pageSize")
            guest = page_size if parse_quantity(page_size) is not None else None
        if guest is not None and _value(guest) > 0:
            _dict(_dict(domain, "resources"), "requests")["memory"] = guest


def _default_guest_memory(domain: Obj) -> None:
    memory = _dict(domain, "memory")
    if memory.get("guest") is not None:
        return
    requests, limits = _resources(domain, "requests"), _resources(domain, "limits")
    if parse_quantity(requests.get("memory")):
        memory["guest"] = requests["memory"]
    elif parse_quantity(limits.get("memory")):
        memory["guest"] = limits["memory"]
    elif isinstance(memory.get("hugepages"), dict):
        page_size = memory["hugepages"].get("pageSize")
        if parse_quantity(page_size) is not None:
            memory["guest"] = page_size


def _default_cpu_topology(domain: Obj) -> None:
    cpu = domain.get("cpu")
    if isinstance(cpu, dict) and (cpu.get("cores") or cpu.get("sockets") or cpu.get("threads")):
        return
    cpu = _dict(domain, "cpu")
    sockets = 1
    limits, requests = _resources(domain, "limits"), _resources(domain, "requests")
    if "cpu" in limits:
        sockets = _value(limits["cpu"])
    elif "cpu" in requests:
        sockets = _value(requests["cpu"])
    cpu["sockets"] = min(max(sockets, 0), UINT32_MAX)
    cpu["cores"] = 1
    cpu["threads"] = 1


def _default_pull_policies(spec: Obj) -> None:
    for volume in _list(spec.get("volumes")):
        disk = volume.get("containerDisk")
        if isinstance(disk, dict) and not disk.get("imagePullPolicy"):
            image = str(disk.get("image") or "")
            untagged = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
            disk["imagePullPolicy"] = "Always" if image.endswith(":latest") or untagged else "IfNotPresent"


def _default_network_interface(spec: Obj, devices: Obj) -> None:
    if devices.get("autoattachPodInterface") is False:
        return
    if spec.get("networks") or devices.get("interfaces"):
        return
    devices["interfaces"] = [{"name": "default", "bridge": {}}]
    spec["networks"] = [{"name": "default", "pod": {}}]


def _default_volume_disks(spec: Obj, devices: Obj) -> None:
    names = {d.get("name") for d in _list(devices.get("disks"))}
    names |= {f.get("name") for f in _list(devices.get("filesystems"))}
    for volume in _list(spec.get("volumes")):
        if volume.get("name") not in names:
            if not isinstance(devices.get("disks"), list):
                devices["disks"] = []
            devices["disks"].append({"name": volume.get("name")})
            names.add(volume.get("name"))


def _default_objects(spec: Obj, domain: Obj, devices: Obj) -> None:
    """KubeVirt's generated object defaults (``SetObjectDefaults_VirtualMachineInstance``)."""
    firmware = _dict(domain, "firmware")
    if not firmware.get("uuid"):
        firmware["uuid"] = str(uuid.uuid4())
    features = _dict(domain, "features")
    for disk in _list(devices.get("disks")):
        if not any(isinstance(disk.get(t), dict) for t in DISK_TYPES):
            disk["disk"] = {}
        cdrom = disk.get("cdrom")
        if isinstance(cdrom, dict):
            cdrom.setdefault("readonly", True)
            if not cdrom.get("tray"):
                cdrom["tray"] = "closed"
    for device in _list(devices.get("inputs")):
        if not device.get("bus"):
            device["bus"] = "usb"
        if not device.get("type"):
            device["type"] = "tablet"
    for key in ("readinessProbe", "livenessProbe"):
        probe = spec.get(key)
        if isinstance(probe, dict):
            for field, default in (
                ("timeoutSeconds", 1),
                ("periodSeconds", 10),
                ("successThreshold", 1),
                ("failureThreshold", 3),
            ):
                if not isinstance(probe.get(field), int) or probe[field] < 1:
                    probe[field] = default
    _default_features(features)
    timers = _get(domain, "clock", "timer")
    if isinstance(timers, dict):
        for timer in timers.values():
            if isinstance(timer, dict):
                timer.setdefault("present", True)


def _enable(state: Any) -> None:
    if isinstance(state, dict) and state.get("enabled") is None:
        state["enabled"] = True


def _default_features(features: Obj) -> None:
    for key in ("acpi", "apic", "smm", "pvspinlock", "hypervPassthrough"):
        _enable(features.get(key))
    hyperv = features.get("hyperv")
    if not isinstance(hyperv, dict):
        return
    for key, state in hyperv.items():
        if key == "tlbflush":
            continue
        _enable(state)
    spinlocks = hyperv.get("spinlocks")
    if (
        isinstance(spinlocks, dict)
        and spinlocks.get("enabled") is True
        and spinlocks.get("spinlocks") is None
    ):
        spinlocks["spinlocks"] = 4096
    direct = _get(hyperv, "synictimer", "direct")
    _enable(direct)


def _default_amd64_disk_bus(devices: Obj) -> None:
    # KubeVirt (pkg/defaults, amd64): "Setting SATA as the default bus since it is typically supported out
    # of the box by guest operating systems".
    for disk in _list(devices.get("disks")):
        for target_type in DISK_TYPES:
            target = disk.get(target_type)
            if isinstance(target, dict) and not target.get("bus"):
                target["bus"] = "sata"


# --- validation: VirtualMachineInstance spec -----------------------------------------------------


def validate_vmi(obj: Obj, old: Obj | None) -> list[FieldError]:
    """virt-api's VMI create admission (``ValidateVirtualMachineInstanceSpec`` and the VMI-only checks)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    return validate_vmi_spec(spec, "spec", template=False)


def validate_template_spec(template_spec: Any, path: str, *, require_memory: bool) -> list[FieldError]:
    """Validate a VMI template (of a VM, replica set or pool) the way virt-api does: on a defaulted copy."""
    spec = copy.deepcopy(template_spec) if isinstance(template_spec, dict) else {}
    _dict(_dict(spec, "domain"), "devices")
    default_vmi_spec(spec)
    return validate_vmi_spec(spec, path, template=True, require_memory=require_memory)


def validate_vmi_spec(spec: Obj, p: str, *, template: bool, require_memory: bool = True) -> list[FieldError]:
    """Errors of a VMI spec at path ``p`` (``spec`` or ``spec.template.spec``)."""
    domain = _obj(spec.get("domain"))
    devices = _obj(domain.get("devices"))
    disks = _list(devices.get("disks"))
    volumes = _list(spec.get("volumes"))
    interfaces = _list(devices.get("interfaces"))
    networks = _list(spec.get("networks"))
    for items, path in (
        (disks, f"{p}.domain.devices.disks"),
        (volumes, f"{p}.volumes"),
        (interfaces, f"{p}.domain.devices.interfaces"),
        (networks, f"{p}.networks"),
    ):
        if len(items) > ARRAY_LEN_MAX:
            return [_invalid(path, f"{path} list exceeds the {ARRAY_LEN_MAX} element limit in length")]

    errors: list[FieldError] = []
    errors += _validate_names(spec, p)
    errors += _validate_quantities(spec, domain, p)
    errors += _validate_memory_resources(domain, p)
    errors += _validate_cpu(domain, p)
    errors += _validate_machine(spec, domain, p)
    errors += _validate_start_strategy(spec, p)
    errors += _validate_eviction_strategy(spec, p)
    pod_networks = {n.get("name") for n in networks if n.get("pod") is not None}
    if sum(1 for i in interfaces if i.get("name") in pod_networks) > 1:
        return [
            *errors,
            _duplicate(
                f"{p}.domain.devices.interfaces",
                f"more than one interface is connected to a pod network in {p}.domain.devices.interfaces",
            ),
        ]
    errors += _validate_disks_match_volumes(disks, volumes, p)
    errors += _validate_networks(networks, p)
    errors += _validate_interfaces(interfaces, networks, disks, p)
    errors += _validate_inputs(devices, p)
    errors += _validate_io_threads_policy(domain, p)
    for key in ("readinessProbe", "livenessProbe"):
        errors += _validate_probe(spec.get(key), f"{p}.{key}", has_pod_interface=bool(pod_networks))
    errors += _validate_disks(disks, f"{p}.domain.devices.disks")
    errors += _validate_firmware(domain, f"{p}.domain")
    errors += _validate_volumes(volumes, f"{p}.volumes")
    errors += _validate_access_credentials(_list(spec.get("accessCredentials")), volumes, p)
    errors += _validate_dns(spec, p)
    errors += _validate_sound(devices, p)
    if not template:
        errors += _validate_volumes_have_disks(devices, volumes, p)
    if not template or require_memory:
        errors += _validate_memory_requested(domain, p)
    return errors


def _validate_names(spec: Obj, p: str) -> list[FieldError]:
    errors: list[FieldError] = []
    hostname = spec.get("hostname")
    if hostname:
        for err in dns1123_label(hostname, f"{p}.hostname"):
            errors.append(
                _invalid(
                    err.field,
                    f"{p}.hostname does not conform to the kubernetes DNS_LABEL rules : {err.message}",
                )
            )
    subdomain = spec.get("subdomain")
    if subdomain:
        for err in dns1123_subdomain(subdomain, f"{p}.subdomain"):
            errors.append(
                _invalid(
                    err.field,
                    f"{p}.subdomain does not conform to the kubernetes DNS_SUBDOMAIN rules : {err.message}",
                )
            )
    return errors


def _validate_quantities(spec: Obj, domain: Obj, p: str) -> list[FieldError]:
    """Quantities KubeVirt's typed schema would refuse to decode."""
    found: list[tuple[str, Any]] = []
    for key in ("requests", "limits"):
        for resource, value in _resources(domain, key).items():
            found.append((f"{p}.domain.resources.{key}.{resource}", value))
    memory = _mem(domain)
    for key in ("guest", "maxGuest"):
        if memory.get(key) is not None:
            found.append((f"{p}.domain.memory.{key}", memory[key]))
    for i, volume in enumerate(_list(spec.get("volumes"))):
        for source in ("emptyDisk", "hostDisk"):
            capacity = _get(volume, source, "capacity")
            if capacity is not None:
                found.append((f"{p}.volumes[{i}].{source}.capacity", capacity))
    return [
        _invalid(path, f"{value!r}: {QUANTITY_MESSAGE}")
        for path, value in found
        if parse_quantity(value) is None
    ]


def _validate_memory_resources(domain: Obj, p: str) -> list[FieldError]:
    errors: list[FieldError] = []
    requests, limits = _resources(domain, "requests"), _resources(domain, "limits")
    req_mem, lim_mem = parse_quantity(requests.get("memory")), parse_quantity(limits.get("memory"))
    req_path = f"{p}.domain.resources.requests.memory"
    lim_path = f"{p}.domain.resources.limits.memory"
    if req_mem is not None and req_mem < 0:
        errors.append(
            _invalid(req_path, f"{req_path} '{requests['memory']}': must be greater than or equal to 0.")
        )
    elif req_mem is not None and 0 < req_mem < Decimal("1e6"):
        errors.append(
            _invalid(req_path, f"{req_path} '{requests['memory']}': must be greater than or equal to 1M.")
        )
    if lim_mem is not None and lim_mem < 0:
        errors.append(
            _invalid(lim_path, f"{lim_path} '{limits['memory']}': must be greater than or equal to 0.")
        )
    if lim_mem is not None and lim_mem > 0 and req_mem is not None and req_mem > lim_mem:
        errors.append(
            _invalid(
                req_path,
                f"{req_path} '{requests['memory']}' is greater than {lim_path} '{limits['memory']}'",
            )
        )
    guest = _mem(domain).get("guest")
    guest_value = parse_quantity(guest)
    if guest_value is not None and lim_mem is not None and 0 < lim_mem < guest_value:
        errors.append(
            _invalid(
                f"{p}.domain.memory.guest",
                f"{p}.domain.memory.guest '{guest}' must be equal to or less than the memory limit "
                f"{lim_path} '{limits['memory']}'",
            )
        )
    req_cpu, lim_cpu = parse_quantity(requests.get("cpu")), parse_quantity(limits.get("cpu"))
    for value, key in ((req_cpu, "requests"), (lim_cpu, "limits")):
        if value is not None and value < 0:
            path = f"{p}.domain.resources.{key}.cpu"
            errors.append(
                _invalid(
                    path, f"{path} '{_resources(domain, key)['cpu']}': must be greater than or equal to 0."
                )
            )
    if req_cpu is not None and lim_cpu is not None and lim_cpu > 0 and req_cpu > lim_cpu:
        errors.append(
            _invalid(
                f"{p}.domain.resources.requests.cpu",
                f"{p}.domain.resources.requests.cpu '{requests['cpu']}' is greater than "
                f"{p}.domain.resources.limits.cpu '{limits['cpu']}'",
            )
        )
    return errors


def _validate_memory_requested(domain: Obj, p: str) -> list[FieldError]:
    memory = _mem(domain)
    if _value(_resources(domain, "requests").get("memory")) != 0:
        return []
    if memory.get("guest") is not None or memory.get("hugepages") is not None:
        return []
    # KubeVirt's cause names no field; the guest memory is what most manifests set.
    return [
        _required(
            f"{p}.domain.memory.guest",
            f"no memory requested, at least one of '{p}.domain.memory.guest', "
            f"'{p}.domain.memory.hugepages.size' or '{p}.domain.resources.requests.memory' must be set",
        )
    ]


def _validate_cpu(domain: Obj, p: str) -> list[FieldError]:
    cpu = domain.get("cpu")
    if not isinstance(cpu, dict):
        return []
    errors: list[FieldError] = []
    for key in ("cores", "sockets", "threads", "maxSockets"):
        value = cpu.get(key)
        if isinstance(value, int) and not 0 <= value <= UINT32_MAX:
            errors.append(
                _invalid(f"{p}.domain.cpu.{key}", f"{p}.domain.cpu.{key} must be between 0 and {UINT32_MAX}")
            )
    for i, feature in enumerate(_list(cpu.get("features"))):
        policy = feature.get("policy") or ""
        if policy not in CPU_FEATURE_POLICIES:
            errors.append(
                _not_supported(
                    f"{p}.domain.cpu.features[{i}].policy",
                    f"CPU feature {feature.get('name')} uses policy {policy} that is not supported.",
                )
            )
    dedicated = cpu.get("dedicatedCpuPlacement") is True
    if cpu.get("isolateEmulatorThread") and not dedicated:
        errors.append(
            _invalid(
                f"{p}.domain.cpu.isolateEmulatorThread",
                "IsolateEmulatorThread should be only set in combination with DedicatedCPUPlacement",
            )
        )
    if cpu.get("realtime") is not None and not dedicated:
        errors.append(
            _required(
                f"{p}.domain.cpu.dedicatedCpuPlacement",
                f"{p}.domain.cpu.dedicatedCpuPlacement must be "
                f"set to true when {p}.domain.cpu.realtime is used",
            )
        )
    return errors


def _validate_machine(spec: Obj, domain: Obj, p: str) -> list[FieldError]:
    machine_type = _get(domain, "machine", "type")
    if not machine_type:
        return []
    arch = spec.get("architecture") or DEFAULT_ARCHITECTURE
    allowed = EMULATED_MACHINES.get(str(arch))
    if allowed is None:
        return []
    if any(re.match(pattern, str(machine_type)) for pattern in allowed):
        return []
    path = f"{p}.domain.machine.type"
    return [
        _invalid(path, f"{path} is not supported: {machine_type} (allowed values: [{' '.join(allowed)}])")
    ]


def _validate_start_strategy(spec: Obj, p: str) -> list[FieldError]:
    strategy = spec.get("startStrategy")
    if strategy is None:
        return []
    path = f"{p}.startStrategy"
    if strategy != "Paused":
        return [_invalid(path, f"{path} is set with an unrecognized option: {strategy}")]
    if spec.get("livenessProbe") is not None:
        return [
            _invalid(
                path,
                f"either {path} or {p}.livenessProbe should be provided.Pausing VMI with LivenessProbe is "
                "not supported",
            )
        ]
    return []


def _validate_eviction_strategy(spec: Obj, p: str) -> list[FieldError]:
    strategy = spec.get("evictionStrategy")
    if strategy is None or strategy in EVICTION_STRATEGIES:
        return []
    path = f"{p}.evictionStrategy"
    return [
        _invalid(
            path,
            f"{path} is set with an unrecognized option: {strategy} "
            f"(use one of {', '.join(EVICTION_STRATEGIES)})",
        )
    ]


def _validate_disks_match_volumes(disks: list[Obj], volumes: list[Obj], p: str) -> list[FieldError]:
    """Every disk shows a volume of its name; LUNs only claims; boot orders unique (``validateBootOrder``)."""
    errors: list[FieldError] = []
    by_name = {v.get("name"): v for v in volumes}
    boot_orders: set[int] = set()
    for i, disk in enumerate(disks):
        path = f"{p}.domain.devices.disks[{i}]"
        name = disk.get("name")
        volume = by_name.get(name)
        if volume is None:
            errors.append(
                _invalid(
                    f"{path}.name",
                    f"{path}.name '{name}' not found: a disk must reference a volume of the same name "
                    f"in {p}.volumes",
                )
            )
        elif (
            disk.get("lun") is not None
            and volume.get("persistentVolumeClaim") is None
            and (volume.get("dataVolume") is None)
        ):
            errors.append(
                _invalid(
                    f"{path}.lun",
                    f"{path}.lun can only be mapped to a DataVolume or PersistentVolumeClaim volume.",
                )
            )
        elif volume.get("downwardMetrics") is not None:
            target = disk.get("disk")
            if not isinstance(target, dict):
                errors.append(
                    _required(
                        f"{path}.disk",
                        "DownwardMetrics volume must be mapped to a "
                        f"disk, but disk is not set on {path}.disk.",
                    )
                )
            elif target.get("bus") not in (None, "", "virtio"):
                errors.append(
                    _invalid(
                        f"{path}.disk.bus",
                        f"DownwardMetrics volume must be mapped to virtio bus, but {path}.disk.bus is set "
                        f"to {target.get('bus')}",
                    )
                )
        order = disk.get("bootOrder")
        if isinstance(order, int):
            if order in boot_orders:
                errors.append(
                    _invalid(
                        f"{path}.bootOrder",
                        f"Boot order for {path}.bootOrder already set for a different device.",
                    )
                )
            boot_orders.add(order)
    return errors


def _validate_networks(networks: list[Obj], p: str) -> list[FieldError]:
    errors: list[FieldError] = []
    pod = False
    multus_default = 0
    for i, network in enumerate(networks):
        path = f"{p}.networks[{i}]"
        types = [t for t in NETWORK_TYPES if network.get(t) is not None]
        if not types:
            errors.append(
                _required(path, "should have a network type: set one of pod, multus or resourceClaim")
            )
        elif len(types) > 1:
            errors.append(_required(path, f"should have only one network type, found {', '.join(types)}"))
        if network.get("pod") is not None:
            pod = True
        multus = network.get("multus")
        if isinstance(multus, dict):
            if not multus.get("networkName"):
                errors.append(_required(path, "CNI delegating plugin must have a networkName"))
            if multus.get("default") is True:
                multus_default += 1
    if multus_default > 1:
        errors.append(_invalid(f"{p}.networks", "Multus CNI should only have one default network"))
    if pod and multus_default > 0:
        errors.append(
            _invalid(f"{p}.networks", "Pod network cannot be defined when Multus default network is defined")
        )
    return errors


def _validate_interfaces(
    interfaces: list[Obj], networks: list[Obj], disks: list[Obj], p: str
) -> list[FieldError]:
    errors: list[FieldError] = []
    by_name = {n.get("name"): n for n in networks}
    seen: set[Any] = set()
    port_names: set[str] = set()
    boot_orders = {d["bootOrder"] for d in disks if isinstance(d.get("bootOrder"), int)}
    for i, iface in enumerate(interfaces):
        path = f"{p}.domain.devices.interfaces[{i}]"
        name = iface.get("name")
        network = by_name.get(name)
        bindings = [b for b in INTERFACE_BINDINGS if iface.get(b) is not None]
        on_pod = isinstance(network, dict) and network.get("pod") is not None
        if network is None:
            errors.append(
                _invalid(
                    f"{path}.name",
                    f"{path}.name '{name}' not found: an interface must reference a network of the same "
                    f"name in {p}.networks",
                )
            )
        elif len(bindings) > 1:
            errors.append(
                _invalid(path, f"{path} must have at most one binding method, found {', '.join(bindings)}")
            )
        else:
            errors += _validate_binding(bindings[0] if bindings else None, network, path, len(interfaces))
        if name in seen:
            errors.append(
                _duplicate(f"{path}.name", "Only one interface can be connected to one specific network")
            )
        seen.add(name)
        if not isinstance(name, str) or not INTERFACE_NAME.match(name):
            errors.append(
                _invalid(
                    f"{path}.name",
                    "Network interface name can only contain alphabetical characters, numbers, dashes (-) or "
                    "underscores (_)",
                )
            )
        if on_pod:
            errors += _validate_ports(_list(iface.get("ports")), path, port_names)
        model = iface.get("model")
        if model and model not in INTERFACE_MODELS:
            errors.append(
                _not_supported(
                    f"{path}.model",
                    f"interface {path}.name uses model {model} that is not supported: use one of "
                    f"{', '.join(INTERFACE_MODELS)}",
                )
            )
        mac = iface.get("macAddress")
        if mac:
            if MAC_COLON.match(mac) is None and MAC_DOTTED.match(mac) is None:
                errors.append(
                    _invalid(
                        f"{path}.macAddress", f"interface {path}.name has malformed MAC address ({mac})."
                    )
                )
            elif len(re.sub(r"[^0-9A-Fa-f]", "", mac)) > 12:
                errors.append(
                    _invalid(
                        f"{path}.macAddress",
                        f"interface {path}.name has MAC address ({mac}) that is too long.",
                    )
                )
        order = iface.get("bootOrder")
        if isinstance(order, int):
            if order < 1:
                errors.append(
                    _invalid(f"{path}.bootOrder", f"{path} must have a boot order > 0, if supplied")
                )
            elif order in boot_orders:
                errors.append(
                    _invalid(
                        f"{path}.bootOrder",
                        f"Boot order for {path}.bootOrder already set for a different device.",
                    )
                )
            boot_orders.add(order)
        pci = iface.get("pciAddress")
        if pci and not PCI_ADDRESS.match(pci):
            errors.append(
                _invalid(f"{path}.pciAddress", f"interface {path}.name has malformed PCI address ({pci}).")
            )
        errors += _validate_dhcp(iface.get("dhcpOptions"), path)
        state = iface.get("state")
        if state not in (None, "", "up", "down", "absent"):
            errors.append(
                _not_supported(
                    f"{path}.state", f"logical {name} interface state value {state!r} is unsupported"
                )
            )
    errors += _validate_networks_have_interfaces(networks, seen, p)
    return errors


def _validate_binding(binding: str | None, network: Obj, path: str, count: int) -> list[FieldError]:
    """A binding's requirements on its network (``validateInterfaceNetworkBasics``)."""
    pod_only = {"masquerade": "Masquerade", "slirp": "Slirp", "passt": "Passt", "passtBinding": "Passt"}
    if binding in pod_only and network.get("pod") is None:
        return [_invalid(f"{path}.name", f"{pod_only[binding]} interface only implemented with pod network")]
    if binding == "macvtap" and network.get("multus") is None:
        return [_invalid(f"{path}.name", "Macvtap interface only implemented with Multus network")]
    if binding == "passt" and count > 1:
        return [
            _invalid(f"{path}.name", "Passt interface is only supported as the single interface of the VMI")
        ]
    return []


def _validate_ports(ports: list[Obj], path: str, names: set[str]) -> list[FieldError]:
    errors: list[FieldError] = []
    for j, port in enumerate(ports):
        ppath = f"{path}.ports[{j}]"
        number = port.get("port")
        if number == 0:
            errors.append(_required(ppath, "Port field is mandatory."))
        elif isinstance(number, int) and not 0 < number < 65536:
            errors.append(_invalid(ppath, "Port field must be in range 0 < x < 65536."))
        protocol = port.get("protocol")
        if protocol and protocol not in ("TCP", "UDP"):
            errors.append(_invalid(f"{ppath}.protocol", "Unknown protocol, only TCP or UDP allowed"))
        name = port.get("name")
        if name:
            if name in names:
                errors.append(_duplicate(f"{ppath}.name", f"Duplicate name of the port: {name}"))
            if (
                len(name) > 15
                or not PORT_NAME.match(name)
                or "--" in name
                or not any(c.isalpha() for c in name)
            ):
                errors.append(_invalid(f"{ppath}.name", f"Invalid name of the port: {name}"))
            names.add(name)
    return errors


def _validate_dhcp(options: Any, path: str) -> list[FieldError]:
    if not isinstance(options, dict):
        return []
    errors: list[FieldError] = []
    private = _list(options.get("privateOptions"))
    numbers = [o.get("option") for o in private]
    if len(numbers) != len(set(numbers)):
        errors.append(
            _invalid(
                f"{path}.dhcpOptions.privateOptions",
                "Found Duplicates: you have provided duplicate DHCPPrivateOptions",
            )
        )
    for j, option in enumerate(private):
        number = option.get("option")
        if not isinstance(number, int) or not 224 <= number <= 254:
            errors.append(
                _invalid(
                    f"{path}.dhcpOptions.privateOptions[{j}].option",
                    "provided DHCPPrivateOptions are out of range, must be in range 224 to 254",
                )
            )
    for j, server in enumerate(options.get("ntpServers") or []):
        try:
            ipaddress.IPv4Address(server)
        except ValueError:
            errors.append(
                _invalid(
                    f"{path}.dhcpOptions.ntpServers[{j}]",
                    "NTP servers must be a list of valid IPv4 addresses.",
                )
            )
    return errors


def _validate_networks_have_interfaces(networks: list[Obj], interfaces: set[Any], p: str) -> list[FieldError]:
    errors: list[FieldError] = []
    seen: set[Any] = set()
    for i, network in enumerate(networks):
        name = network.get("name")
        path = f"{p}.networks[{i}].name"
        if name in seen:
            errors.append(
                _duplicate(
                    path, f"Network with name {name!r} already exists, every network must have a unique name"
                )
            )
        seen.add(name)
        if name not in interfaces:
            errors.append(
                _required(
                    path,
                    f"{path} '{name}' not found: a network must be used by an interface of the same name in "
                    f"{p}.domain.devices.interfaces",
                )
            )
    return errors


def _validate_inputs(devices: Obj, p: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, device in enumerate(_list(devices.get("inputs"))):
        path = f"{p}.domain.devices.inputs[{i}]"
        if device.get("bus") not in (None, "", "virtio", "usb"):
            errors.append(_invalid(f"{path}.bus", "Input device can have only virtio or usb bus."))
        if device.get("type") != "tablet":
            errors.append(_invalid(f"{path}.type", "Input device can have only tablet type."))
    return errors


def _validate_io_threads_policy(domain: Obj, p: str) -> list[FieldError]:
    policy = domain.get("ioThreadsPolicy")
    if policy is None or policy in IO_THREADS_POLICIES:
        return []
    return [
        _invalid(
            f"{p}.domain.ioThreadsPolicy",
            f"Invalid IOThreadsPolicy ({policy}): use one of {', '.join(IO_THREADS_POLICIES)}",
        )
    ]


def _validate_probe(probe: Any, path: str, *, has_pod_interface: bool) -> list[FieldError]:
    if not isinstance(probe, dict):
        return []
    handlers = [h for h in ("httpGet", "tcpSocket", "exec", "guestAgentPing") if probe.get(h) is not None]
    if len(handlers) > 1:
        return [_invalid(path, f"{path} must have exactly one probe type set")]
    if not handlers:
        return [
            _required(
                path,
                f"either {path}.tcpSocket, {path}.exec or "
                f"{path}.httpGet must be set if a {path} is specified",
            )
        ]
    if not has_pod_interface and handlers[0] in ("httpGet", "tcpSocket"):
        hpath = f"{path}.{handlers[0]}"
        return [_invalid(hpath, f"{hpath} is only allowed if the Pod Network is attached")]
    return []


def _validate_disks(disks: list[Obj], path: str) -> list[FieldError]:
    """``validateDisks``: names unique and DNS labels, one target type, a known bus, and disk settings."""
    errors: list[FieldError] = []
    first: dict[Any, int] = {}
    for i, disk in enumerate(disks):
        dpath = f"{path}[{i}]"
        name = disk.get("name")
        if name in first:
            errors.append(
                _invalid(f"{dpath}.name", f"{dpath} and {path}[{first[name]}] must not have the same Name.")
            )
        else:
            first[name] = i
        targets = [t for t in DISK_TYPES if disk.get(t) is not None]
        if len(targets) > 1:
            errors.append(_invalid(dpath, f"{dpath} can only have a single target type defined"))
        target_type = targets[-1] if targets else None
        target = disk.get(target_type) if target_type else None
        bus = target.get("bus") if isinstance(target, dict) else None
        if isinstance(target, dict) and target_type == "disk" and target.get("pciAddress"):
            pci = target["pciAddress"]
            if bus != "virtio":
                errors.append(
                    _invalid(
                        f"{dpath}.disk.pciAddress",
                        f"disk {dpath}.name - setting a PCI address is only possible with bus type virtio.",
                    )
                )
            if not PCI_ADDRESS.match(pci):
                errors.append(
                    _invalid(
                        f"{dpath}.disk.pciAddress", f"disk {dpath}.name has malformed PCI address ({pci})."
                    )
                )
        order = disk.get("bootOrder")
        if isinstance(order, int) and order < 1:
            errors.append(_invalid(f"{dpath}.bootOrder", f"{dpath} must have a boot order > 0, if supplied"))
        if bus:
            bpath = f"{dpath}.{target_type}.bus"
            if bus == "ide":
                errors.append(_invalid(bpath, "IDE bus is not supported"))
            elif bus not in DISK_BUSES:
                errors.append(
                    _invalid(
                        bpath,
                        f"{dpath} is set with an unrecognized bus {bus}, "
                        f"must be one of: [{' '.join(DISK_BUSES)}]",
                    )
                )
            if target_type == "cdrom" and bus == "virtio":
                errors.append(_invalid(bpath, f"Bus type {bus} is invalid for CD-ROM device"))
            if (
                target_type == "disk"
                and bus == "sata"
                and isinstance(target, dict)
                and target.get("readonly")
            ):
                errors.append(_invalid(bpath, f"{bus} hard-disks do not support read-only."))
            if disk.get("dedicatedIOThread") is True and target_type == "disk" and bus == "sata":
                errors.append(_not_supported(dpath, "IOThreads are not supported for disks on a SATA bus"))
        serial = disk.get("serial")
        if serial:
            if not SERIAL.match(serial):
                errors.append(
                    _invalid(
                        f"{dpath}.serial",
                        f"{dpath} must be made up of the following characters [A-Za-z0-9_.+-], if specified",
                    )
                )
            if len(serial) > MAX_STR_LEN:
                errors.append(
                    _invalid(
                        f"{dpath}.serial",
                        f"{dpath} must be less than or equal to {MAX_STR_LEN} in length, if specified",
                    )
                )
        cache = disk.get("cache")
        if cache and cache not in DISK_CACHES:
            errors.append(
                _invalid(
                    f"{dpath}.cache",
                    f"{dpath}.cache has invalid value {cache}: use one of {', '.join(DISK_CACHES)}",
                )
            )
        io_mode = disk.get("io")
        if io_mode and io_mode not in DISK_IO_MODES:
            errors.append(
                _not_supported(
                    f"{dpath}.io",
                    f"Disk IO mode for {dpath}.io is not supported. Supported modes are: native, threads.",
                )
            )
        policy = disk.get("errorPolicy")
        if policy is not None and policy not in DISK_ERROR_POLICIES:
            errors.append(
                _invalid(
                    f"{dpath}.errorPolicy",
                    f'{dpath}.errorPolicy has invalid value "{policy}": '
                    f"use one of {', '.join(DISK_ERROR_POLICIES)}",
                )
            )
        if isinstance(name, str):
            errors += dns1123_label(name, f"{dpath}.name")
        errors += _validate_block_size(disk.get("blockSize"), dpath)
    return errors


def _validate_block_size(block_size: Any, dpath: str) -> list[FieldError]:
    if not isinstance(block_size, dict):
        return []
    custom = block_size.get("custom")
    match = block_size.get("matchVolume")
    matching = isinstance(match, dict) and match.get("enabled") is not False
    if isinstance(custom, dict) and matching:
        return [
            _invalid(
                f"{dpath}.blockSize", "Block size matching can't be enabled together with a custom value"
            )
        ]
    if not isinstance(custom, dict):
        return []
    logical, physical = custom.get("logical"), custom.get("physical")
    if not isinstance(logical, int) or not isinstance(physical, int):
        return []
    if logical > physical:
        return [
            _invalid(
                f"{dpath}.blockSize.custom.logical",
                f"Logical size {logical} must be the same or less than the physical size of {physical}",
            )
        ]
    errors: list[FieldError] = []
    for key, size in (("logical", logical), ("physical", physical)):
        if size < 512:
            reason = f"Provided size of {size} is less than the supported minimum size of 512"
        elif size > 2097152:
            reason = f"Provided size of {size} is greater than the supported maximum size of 2 MiB"
        elif size & (size - 1):
            reason = f"Provided size of {size} is not a power of 2"
        else:
            continue
        errors.append(_invalid(f"{dpath}.blockSize.custom.{key}", reason))
    return errors


def _validate_firmware(domain: Obj, dpath: str) -> list[FieldError]:
    firmware = domain.get("firmware")
    if not isinstance(firmware, dict):
        return []
    errors: list[FieldError] = []
    fpath = f"{dpath}.firmware"
    serial = firmware.get("serial")
    if serial:
        if len(serial) > MAX_STR_LEN:
            errors.append(
                _invalid(
                    f"{fpath}.serial",
                    f"{fpath}.serial must be less than or equal to {MAX_STR_LEN} in length, if specified",
                )
            )
        if not SERIAL.match(serial):
            errors.append(
                _invalid(
                    f"{fpath}.serial",
                    f"{fpath}.serial must be made up of the following "
                    "characters [A-Za-z0-9_.+-], if specified",
                )
            )
    bootloader = firmware.get("bootloader")
    efi = bootloader.get("efi") if isinstance(bootloader, dict) else None
    if isinstance(bootloader, dict) and efi is not None and bootloader.get("bios") is not None:
        errors.append(
            _invalid(
                f"{fpath}.bootloader",
                f"{fpath}.bootloader has both EFI and BIOS configured, but they are mutually exclusive.",
            )
        )
    kernel_boot = firmware.get("kernelBoot")
    if isinstance(kernel_boot, dict):
        errors += _validate_kernel_boot(kernel_boot, f"{fpath}.kernelBoot")
    if isinstance(efi, dict) and efi.get("secureBoot") is not False:
        smm = _get(domain, "features", "smm")
        if not isinstance(smm, dict) or smm.get("enabled") is False:
            errors.append(
                _invalid(
                    dpath,
                    f"{dpath} has EFI SecureBoot enabled. SecureBoot "
                    "requires SMM, which is currently disabled: "
                    f"set {dpath}.features.smm or {fpath}.bootloader.efi.secureBoot: false",
                )
            )
    return errors


def _validate_kernel_boot(kernel_boot: Obj, path: str) -> list[FieldError]:
    container = kernel_boot.get("container")
    if not isinstance(container, dict):
        if kernel_boot.get("kernelArgs"):
            return [
                _invalid(
                    f"{path}.kernelArgs", "kernel arguments cannot be provided without an external kernel"
                )
            ]
        return []
    cpath = f"{path}.container"
    errors: list[FieldError] = []
    if not container.get("image"):
        errors.append(_required(f"{cpath}.image", f"{cpath} must be defined with an image"))
    if not container.get("initrdPath") and not container.get("kernelPath"):
        errors.append(
            _required(
                cpath, f"{cpath} must be defined with at least one of the following: kernelPath, initrdPath"
            )
        )
    for key in ("kernelPath", "initrdPath"):
        if container.get(key):
            errors += _validate_path(f"{cpath}.{key}", container[key])
    return errors


def _validate_path(field: str, path: str) -> list[FieldError]:
    if path == "/":
        return [_invalid(field, f"{field} must not point to root")]
    if posixpath.normpath(posixpath.join("/", path)) != path.rstrip("/"):
        return [_invalid(field, f"{field} must be an absolute path to a file without relative components")]
    return []


def _validate_volumes(volumes: list[Obj], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    first: dict[Any, int] = {}
    singletons = {"serviceAccount": 0, "downwardMetrics": 0, "memoryDump": 0}
    for i, volume in enumerate(volumes):
        vpath = f"{path}[{i}]"
        name = volume.get("name")
        if name in first:
            errors.append(
                _invalid(f"{vpath}.name", f"{vpath} and {path}[{first[name]}] must not have the same Name.")
            )
        else:
            first[name] = i
        sources = [s for s in VOLUME_SOURCES if volume.get(s) is not None]
        for source in sources:
            if source in singletons:
                singletons[source] += 1
        if len(sources) != 1:
            errors.append(
                _invalid(
                    vpath,
                    f"{vpath} must have exactly one source type set"
                    + (f", found {', '.join(sources)}" if sources else ""),
                )
            )
        for source in ("cloudInitNoCloud", "cloudInitConfigDrive"):
            if isinstance(volume.get(source), dict):
                errors += _validate_cloud_init(volume[source], f"{vpath}.{source}")
        host_disk = volume.get("hostDisk")
        if isinstance(host_disk, dict):
            hpath = f"{vpath}.hostDisk"
            if not host_disk.get("path"):
                errors.append(
                    FieldError(
                        f"{hpath}.path", f"{hpath}.path is required for hostDisk volume", "FieldValueNotFound"
                    )
                )
            disk_type = host_disk.get("type")
            if disk_type not in ("Disk", "DiskOrCreate"):
                errors.append(
                    _invalid(
                        f"{hpath}.type",
                        f"{hpath}.type has invalid value '{disk_type}', allowed are 'Disk' or 'DiskOrCreate'",
                    )
                )
            if disk_type == "Disk" and _value(host_disk.get("capacity")) != 0:
                errors.append(
                    _invalid(
                        f"{hpath}.capacity",
                        f"{hpath}.capacity is allowed to pass only with {hpath}.type equal to 'DiskOrCreate'",
                    )
                )
        for source, key in (
            ("configMap", "name"),
            ("secret", "secretName"),
            ("serviceAccount", "serviceAccountName"),
        ):
            if isinstance(volume.get(source), dict) and not volume[source].get(key):
                errors.append(
                    _invalid(f"{vpath}.{source}.{key}", f"{vpath}.{source}.{key} is a required field")
                )
        if isinstance(volume.get("dataVolume"), dict) and not volume["dataVolume"].get("name"):
            errors.append(_required(f"{vpath}.name", "DataVolume 'name' must be set"))
        disk_path = _get(volume, "containerDisk", "path")
        if disk_path:
            errors += _validate_path(f"{vpath}.containerDisk", disk_path)
    for source, label in (
        ("serviceAccount", "serviceAccount"),
        ("downwardMetrics", "downwardMetric"),
        ("memoryDump", "memory dump"),
    ):
        if singletons[source] > 1:
            errors.append(_invalid(path, f"{path} must have max one {label} volume set"))
    return errors


def _validate_cloud_init(source: Obj, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    counts: dict[str, int] = {}
    for kind, max_len, secret_key, ref in (
        ("user", CLOUD_INIT_USER_MAX_LEN, "secretRef", "UserDataSecretRef"),
        ("network", CLOUD_INIT_NETWORK_MAX_LEN, "networkDataSecretRef", "NetworkDataSecretRef"),
    ):
        count = 1 if _get(source, secret_key, "name") else 0
        length = 0
        encoded = source.get(f"{kind}DataBase64")
        if encoded:
            count += 1
            try:
                length = len(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError):
                field = f"{path}.{kind}DataBase64"
                errors.append(_invalid(field, f"{field} is not a valid base64 value."))
        plain = source.get(f"{kind}Data")
        if plain:
            count += 1
            length = len(plain.encode())
        if count > 1:
            errors.append(_invalid(path, f"{path} must have only one {kind}data source set."))
        if length > max_len:
            errors.append(
                _invalid(
                    path, f"{path} {kind}data exceeds {max_len} byte limit. Should use {ref} for larger data."
                )
            )
        counts[kind] = count
    if not counts["user"] and not counts["network"]:
        errors.append(
            _invalid(path, f"{path} must have at least one userdatasource or one networkdatasource set.")
        )
    return errors


def _validate_access_credentials(creds: list[Obj], volumes: list[Obj], p: str) -> list[FieldError]:
    path = f"{p}.accessCredentials"
    if len(creds) > ARRAY_LEN_MAX:
        return [_invalid(path, f"{path} list exceeds the {ARRAY_LEN_MAX} element limit in length")]
    has_no_cloud = any(v.get("cloudInitNoCloud") is not None for v in volumes)
    has_config_drive = any(v.get("cloudInitConfigDrive") is not None for v in volumes)
    errors: list[FieldError] = []
    for i, cred in enumerate(creds):
        cpath = f"{path}[{i}]"
        kinds = [k for k in ("sshPublicKey", "userPassword") if cred.get(k) is not None]
        if len(kinds) != 1:
            errors.append(_invalid(cpath, f"{cpath} must have exactly one access credential type set"))
        ssh = cred.get("sshPublicKey")
        if isinstance(ssh, dict):
            method = ssh.get("propagationMethod") or {}
            mpath = f"{cpath}.sshPublicKey.propagationMethod"
            methods = [m for m in ("noCloud", "configDrive", "qemuGuestAgent") if method.get(m) is not None]
            if "noCloud" in methods and not has_no_cloud:
                errors.append(
                    _invalid(
                        mpath,
                        f"{cpath} requires a noCloud volume to exist "
                        "when the noCloud propagationMethod is in use.",
                    )
                )
            if "configDrive" in methods and not has_config_drive:
                errors.append(
                    _invalid(
                        mpath,
                        f"{cpath} requires a configDrive volume to exist "
                        "when the configDrive propagationMethod is in use.",
                    )
                )
            agent = method.get("qemuGuestAgent")
            if isinstance(agent, dict) and not agent.get("users"):
                errors.append(
                    _invalid(
                        f"{mpath}.qemuGuestAgent.users",
                        f"{cpath} requires at least one user to be present in the users list",
                    )
                )
            if _get(ssh, "source", "secret") is None:
                errors.append(
                    _invalid(f"{cpath}.sshPublicKey.source", f"{cpath} must have exactly one source set")
                )
            if len(methods) != 1:
                errors.append(_invalid(mpath, f"{cpath} must have exactly one propagationMethod set"))
        password = cred.get("userPassword")
        if isinstance(password, dict):
            if _get(password, "source", "secret") is None:
                errors.append(
                    _invalid(f"{cpath}.userPassword.source", f"{cpath} must have exactly one source set")
                )
            if _get(password, "propagationMethod", "qemuGuestAgent") is None:
                errors.append(
                    _invalid(
                        f"{cpath}.userPassword.propagationMethod",
                        f"{cpath} must have exactly one propagationMethod set",
                    )
                )
    return errors


def _validate_dns(spec: Obj, p: str) -> list[FieldError]:
    errors: list[FieldError] = []
    policy = spec.get("dnsPolicy")
    config = spec.get("dnsConfig")
    if policy and policy not in DNS_POLICIES:
        errors.append(
            _not_supported(
                f"{p}.dnsPolicy",
                f"DNSPolicy: {policy} is not supported, valid values: {', '.join(DNS_POLICIES)}",
            )
        )
    if policy == "None":
        if not isinstance(config, dict):
            return [*errors, _required(f"{p}.dnsConfig", "must provide `dnsConfig` when `dnsPolicy` is None")]
        if not config.get("nameservers"):
            return [
                *errors,
                _required(
                    f"{p}.dnsConfig.nameservers",
                    "must provide at least one DNS nameserver when `dnsPolicy` is None",
                ),
            ]
    if not isinstance(config, dict):
        return errors
    nameservers = config.get("nameservers") or []
    if len(nameservers) > 3:
        errors.append(
            _invalid(f"{p}.dnsConfig.nameservers", f"must not have more than 3 nameservers: {nameservers}")
        )
    for i, server in enumerate(nameservers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            errors.append(_invalid(f"{p}.dnsConfig.nameservers[{i}]", f"must be valid IP address: {server}"))
    searches = config.get("searches") or []
    if len(searches) > 6:
        errors.append(_invalid(f"{p}.dnsConfig.searches", "must not have more than 6 search paths"))
    if len(" ".join(searches)) > 256:
        errors.append(
            _invalid(
                f"{p}.dnsConfig.searches",
                "must not have more than 256 characters (including spaces) in the search list",
            )
        )
    for i, search in enumerate(searches):
        errors += dns1123_subdomain(search, f"{p}.dnsConfig.searches[{i}]")
    for i, option in enumerate(_list(config.get("options"))):
        if not option.get("name"):
            errors.append(_invalid(f"{p}.dnsConfig.options[{i}].name", "Option.Name must not be empty"))
    return errors


def _validate_sound(devices: Obj, p: str) -> list[FieldError]:
    sound = devices.get("sound")
    if not isinstance(sound, dict):
        return []
    path = f"{p}.domain.devices.sound"
    errors: list[FieldError] = []
    if sound.get("model") not in (None, "", "ich9", "ac97"):
        errors.append(
            _invalid(f"{path}.model", "Sound device type is not supported. Options: 'ich9' or 'ac97'")
        )
    if not sound.get("name"):
        errors.append(_invalid(f"{path}.name", "Sound device requires a name field."))
    return errors


def _validate_volumes_have_disks(devices: Obj, volumes: list[Obj], p: str) -> list[FieldError]:
    names = {d.get("name") for d in _list(devices.get("disks"))}
    names |= {f.get("name") for f in _list(devices.get("filesystems"))}
    errors: list[FieldError] = []
    for i, volume in enumerate(volumes):
        if volume.get("memoryDump") is not None or volume.get("name") in names:
            continue
        path = f"{p}.volumes[{i}].name"
        errors.append(
            _invalid(
                path,
                f"{path} '{volume.get('name')}' not found: a volume "
                "must be used by a disk or filesystem of the "
                "same name",
            )
        )
    return errors


# --- validation: VirtualMachine, replica set, migration ------------------------------------------


def validate_vm(obj: Obj, old: Obj | None) -> list[FieldError]:
    """virt-api's VM admission (``vms-admitter.go``), for what needs no other object."""
    if _get(obj, "metadata", "deletionTimestamp"):
        return []  # as KubeVirt: a VM being deleted is not validated again
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    return validate_vm_spec(spec, "spec")


def validate_vm_spec(spec: Obj, p: str) -> list[FieldError]:
    """Errors of a VirtualMachine spec at path ``p`` (``spec``, or a pool's VM template spec)."""
    errors: list[FieldError] = []
    errors += _validate_matcher(spec.get("instancetype"), f"{p}.instancetype", "InstancetypeMatcher")
    errors += _validate_matcher(spec.get("preference"), f"{p}.preference", "PreferenceMatcher")
    template = spec.get("template")
    if not isinstance(template, dict):
        return [*errors, _required(f"{p}.template", "missing virtual machine template.")]
    errors += validate_template_spec(
        template.get("spec"), f"{p}.template.spec", require_memory=spec.get("instancetype") is None
    )
    volumes = _list(_get(template, "spec", "volumes"))
    for i, dv in enumerate(_list(spec.get("dataVolumeTemplates"))):
        path = f"{p}.dataVolumeTemplates[{i}]"
        name = _get(dv, "metadata", "name")
        if not name:
            errors.append(
                _required(
                    f"{path}.metadata.name",
                    f"'name' field must not be empty for DataVolumeTemplate entry {path}.",
                )
            )
            continue
        if not any(
            _get(v, "persistentVolumeClaim", "claimName") == name or _get(v, "dataVolume", "name") == name
            for v in volumes
        ):
            errors.append(
                _required(
                    path,
                    f"DataVolumeTemplate entry {path} must be "
                    "referenced in the VMI template's 'volumes' list",
                )
            )
    errors += _validate_run_strategy(spec, p)
    return errors


def _validate_run_strategy(spec: Obj, p: str) -> list[FieldError]:
    running, strategy = spec.get("running"), spec.get("runStrategy")
    if running is not None and strategy is not None:
        return [
            _invalid(
                f"{p}.running",
                "Running and RunStrategy are mutually exclusive: remove spec.running (deprecated) and keep "
                "spec.runStrategy",
            )
        ]
    if running is None and strategy is None:
        return [
            _invalid(
                f"{p}.running",
                f"One of Running or RunStrategy must be specified: set spec.runStrategy to one of "
                f"{', '.join(RUN_STRATEGIES)}",
            )
        ]
    if strategy is not None and strategy not in RUN_STRATEGIES:
        return [
            _invalid(
                f"{p}.runStrategy",
                f"Invalid RunStrategy ({strategy}): use one of {', '.join(RUN_STRATEGIES)}",
            )
        ]
    return []


def _validate_matcher(matcher: Any, path: str, what: str) -> list[FieldError]:
    if not isinstance(matcher, dict):
        return []
    errors: list[FieldError] = []
    if not matcher.get("name") and not matcher.get("inferFromVolume"):
        errors.append(
            FieldError(
                path,
                f"Either Name or InferFromVolume should be provided within the {what}",
                "FieldValueNotFound",
            )
        )
    if matcher.get("inferFromVolume"):
        for key in ("name", "kind"):
            if matcher.get(key):
                errors.append(
                    FieldError(
                        f"{path}.{key}",
                        f"{key.capitalize()} should not be provided when "
                        f"InferFromVolume is used within the {what}",
                        "FieldValueNotFound",
                    )
                )
    policy = matcher.get("inferFromVolumeFailurePolicy")
    if policy is not None and policy not in INFER_FAILURE_POLICIES:
        errors.append(
            _invalid(
                f"{path}.inferFromVolumeFailurePolicy",
                f"Invalid value '{policy}' for InferFromVolumeFailurePolicy",
            )
        )
    return errors


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects ``labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in _list(selector.get("matchExpressions")):
        key, operator, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if operator == "In" and (not present or labels[key] not in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def selector_errors(selector: Any, labels: Any, path: str) -> list[FieldError]:
    """The selector at ``path`` must be valid and select the template's labels."""
    if not isinstance(selector, dict):
        return []
    errors: list[FieldError] = []
    for i, expr in enumerate(_list(selector.get("matchExpressions"))):
        operator = expr.get("operator")
        epath = f"{path}.matchExpressions[{i}]"
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            errors.append(
                _not_supported(f"{epath}.operator", f"{operator!r} is not a valid label selector operator")
            )
        elif operator in ("In", "NotIn") and not expr.get("values"):
            errors.append(
                _required(f"{epath}.values", "must be specified when `operator` is 'In' or 'NotIn'")
            )
        elif operator in ("Exists", "DoesNotExist") and expr.get("values"):
            errors.append(
                _invalid(
                    f"{epath}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                )
            )
    if errors:
        return errors
    if not selector_matches(selector, labels if isinstance(labels, dict) else {}):
        return [
            _invalid(path, "selector does not match labels: the template's labels must match the selector")
        ]
    return []


def validate_replica_set(obj: Obj, old: Obj | None) -> list[FieldError]:
    """virt-api's VMI replica set admission: a valid template its selector selects."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    template = _obj(spec.get("template"))
    errors = validate_template_spec(template.get("spec"), "spec.template.spec", require_memory=True)
    errors += selector_errors(spec.get("selector"), _get(template, "metadata", "labels"), "spec.selector")
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        errors.append(_invalid("spec.replicas", "spec.replicas must be greater than or equal to 0"))
    return errors


def validate_migration(obj: Obj, old: Obj | None) -> list[FieldError]:
    """virt-api's migration admission: a VMI name; the spec does not change after creation."""
    spec = _obj(obj.get("spec"))
    if old is not None and old.get("spec") != obj.get("spec"):
        return [
            _invalid(
                "spec", "Update of Migration object's spec is restricted: create a new migration instead"
            )
        ]
    if not spec.get("vmiName"):
        return [_required("spec.vmiName", "vmiName is missing: name the VirtualMachineInstance to migrate")]
    return []
