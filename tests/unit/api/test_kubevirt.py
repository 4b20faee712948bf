"""KubeVirt admission: defaults as virt-api's mutating webhooks give them, validation with KubeVirt's field
paths, for VMIs, VMs (their template), replica sets, pools, migrations, snapshots and DataVolumes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from kubevisor.api import cdi, kinds, kubevirt, kubevirt_admission, pool, snapshot
from kubevisor.api.kubevirt_admission import (
    default_vm,
    default_vmi,
    default_vmi_spec,
    parse_quantity,
    selector_matches,
    validate_migration,
    validate_replica_set,
    validate_vm,
    validate_vmi,
)
from kubevisor.api.registry import Kind, Obj
from kubevisor.api.validation import FieldError


def vmi(**spec: Any) -> Obj:
    """A minimal valid VMI: one containerDisk, a cloud-init disk, 64Mi."""
    body: Obj = {
        "domain": {
            "devices": {
                "disks": [
                    {"name": "root", "disk": {"bus": "virtio"}},
                    {"name": "ci", "disk": {"bus": "virtio"}},
                ]
            },
            "memory": {"guest": "64Mi"},
        },
        "volumes": [
            {"name": "root", "containerDisk": {"image": "quay.io/kubevirt/cirros-container-disk-demo:v1"}},
            {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
        ],
    }
    body.update(spec)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "v"},
        "spec": body,
    }


def vm(**spec: Any) -> Obj:
    template = vmi()["spec"]
    body: Obj = {"runStrategy": "Halted", "template": {"metadata": {"labels": {"a": "b"}}, "spec": template}}
    body.update(spec)
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "m"}, "spec": body}


def fields(errors: list[FieldError]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for err in errors:
        out.setdefault(err.field, []).append(err.message)
    return out


def check_vmi(obj: Obj) -> dict[str, list[str]]:
    """Default then validate, as the apiserver does."""
    default_vmi(obj)
    return fields(validate_vmi(obj, None))


def at(obj: Obj, path: str) -> Any:
    target: Any = obj
    for part in path.split("."):
        target = target[int(part)] if part.isdigit() else target[part]
    return target


# --- quantities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64M", Decimal(64_000_000)),
        ("64Mi", Decimal(64 * 2**20)),
        ("100m", Decimal("0.1")),
        ("2", Decimal(2)),
        (2, Decimal(2)),
        (0.5, Decimal("0.5")),
        ("1e3", Decimal(1000)),
        ("1.5Gi", Decimal("1.5") * 2**30),
        ("+1k", Decimal(1000)),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities_parse(text: Any, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "lots", "1 Gi", "1GB", "Mi", "1e999", True, None, "--1"])
def test_bad_quantities_are_none(text: Any) -> None:
    assert parse_quantity(text) is None


# --- VMI defaults --------------------------------------------------------------------------------


def test_vmi_defaults_follow_kubevirt() -> None:
    obj = vmi()
    default_vmi(obj)
    spec = obj["spec"]
    assert spec["architecture"] == "amd64"
    assert spec["domain"]["machine"] == {"type": "q35"}
    assert spec["domain"]["cpu"] == {"sockets": 1, "cores": 1, "threads": 1, "model": "host-model"}
    assert spec["domain"]["resources"] == {"requests": {"memory": "64Mi"}}
    assert spec["domain"]["features"] == {}
    assert len(spec["domain"]["firmware"]["uuid"]) == 36
    # KubeVirt's default network interface is bridge on the pod network.
    assert spec["domain"]["devices"]["interfaces"] == [{"name": "default", "bridge": {}}]
    assert spec["networks"] == [{"name": "default", "pod": {}}]
    assert spec["volumes"][0]["containerDisk"]["imagePullPolicy"] == "IfNotPresent"
    assert obj["status"]["phase"] == "Pending"
    assert obj["status"]["currentCPUTopology"] == {"sockets": 1, "cores": 1, "threads": 1}
    assert obj["status"]["memory"] == {
        "guestAtBoot": "64Mi",
        "guestCurrent": "64Mi",
        "guestRequested": "64Mi",
    }


def test_vmi_defaulting_is_idempotent() -> None:
    obj = vmi(
        readinessProbe={"guestAgentPing": {}},
        domain={
            "devices": {
                "disks": [{"name": "root"}, {"name": "cd", "cdrom": {}}],
                "inputs": [{"name": "tablet"}],
                "watchdog": {"name": "w"},
            },
            "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}},
            "features": {"acpi": {}, "hyperv": {"spinlocks": {}, "synictimer": {"direct": {}}}},
            "clock": {"utc": {}, "timer": {"rtc": {"tickPolicy": "catchup"}}},
        },
    )
    obj["spec"]["volumes"].append({"name": "cd", "emptyDisk": {"capacity": "1Gi"}})
    default_vmi(obj)
    once = copy.deepcopy(obj)
    default_vmi(obj)
    assert obj == once
    spec = obj["spec"]
    domain = spec["domain"]
    assert domain["resources"]["requests"] == {"cpu": "1500m", "memory": "1Gi"}  # from the limits
    assert domain["memory"] == {"guest": "1Gi"}
    assert domain["cpu"]["sockets"] == 2  # the CPU limit, rounded up, as sockets
    disks = domain["devices"]["disks"]
    assert disks[0] == {"name": "root", "disk": {"bus": "sata"}}  # KubeVirt's amd64 default bus
    assert disks[1] == {"name": "cd", "cdrom": {"bus": "sata", "readonly": True, "tray": "closed"}}
    assert disks[2] == {"name": "ci", "disk": {"bus": "sata"}}  # a disk for the volume without one
    assert domain["devices"]["inputs"] == [{"name": "tablet", "bus": "usb", "type": "tablet"}]
    assert domain["devices"]["watchdog"] == {"name": "w", "i6300esb": {"action": "reset"}}
    assert domain["features"]["acpi"] == {"enabled": True}
    assert domain["features"]["hyperv"]["spinlocks"] == {"enabled": True, "spinlocks": 4096}
    assert domain["features"]["hyperv"]["synictimer"] == {"enabled": True, "direct": {"enabled": True}}
    assert domain["clock"]["timer"]["rtc"] == {"tickPolicy": "catchup", "present": True}
    assert spec["readinessProbe"] == {
        "guestAgentPing": {},
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


@pytest.mark.parametrize(
    ("devices", "networks", "interfaces", "expected_networks"),
    [
        ({"autoattachPodInterface": False}, None, None, None),
        (
            {},
            [{"name": "n", "multus": {"networkName": "x"}}],
            None,
            [{"name": "n", "multus": {"networkName": "x"}}],
        ),
        ({}, None, [{"name": "default", "masquerade": {}}], None),
    ],
    ids=["autoattach-off", "networks-given", "interfaces-given"],
)
def test_default_interface_only_when_nothing_is_given(
    devices: Obj, networks: Any, interfaces: Any, expected_networks: Any
) -> None:
    spec = vmi()["spec"]
    spec["domain"]["devices"].update(devices)
    if networks is not None:
        spec["networks"] = networks
    if interfaces is not None:
        spec["domain"]["devices"]["interfaces"] = interfaces
    default_vmi_spec(spec)
    assert spec.get("networks") == expected_networks
    assert spec["domain"]["devices"].get("interfaces") == interfaces


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("quay.io/kubevirt/cirros:latest", "Always"),
        ("quay.io/kubevirt/cirros", "Always"),
        ("registry:5000/kubevirt/cirros", "Always"),
        ("registry:5000/kubevirt/cirros:devel", "IfNotPresent"),
        ("quay.io/kubevirt/cirros@sha256:abc", "IfNotPresent"),
    ],
)
def test_container_disk_pull_policy(image: str, policy: str) -> None:
    spec = vmi()["spec"]
    spec["volumes"][0]["containerDisk"]["image"] = image
    default_vmi_spec(spec)
    assert spec["volumes"][0]["containerDisk"]["imagePullPolicy"] == policy


def test_cpu_topology_from_request_and_given_topology_kept() -> None:
    spec = vmi()["spec"]
    spec["domain"]["resources"] = {"requests": {"cpu": "100m"}}
    default_vmi_spec(spec)
    assert spec["domain"]["cpu"]["sockets"] == 1
    spec = vmi()["spec"]
    spec["domain"]["cpu"] = {"cores": 4}
    default_vmi_spec(spec)
    assert spec["domain"]["cpu"] == {"cores": 4, "model": "host-model"}


def test_guest_memory_from_hugepages_and_arm_machine() -> None:
    spec = vmi()["spec"]
    spec["architecture"] = "arm64"
    spec["domain"]["memory"] = {"hugepages": {"pageSize": "1Gi"}}
    spec["domain"]["devices"]["disks"][0]["disk"] = {}
    default_vmi_spec(spec)
    assert spec["domain"]["memory"]["guest"] == "1Gi"
    assert spec["domain"]["resources"]["requests"]["memory"] == "1Gi"
    assert spec["domain"]["machine"]["type"] == "virt"
    assert spec["domain"]["devices"]["disks"][0]["disk"] == {}  # the sata default is amd64's only


def test_status_is_initialised_only_on_create() -> None:
    obj = vmi()
    obj["status"] = {"phase": "Running", "nodeName": "n1"}
    default_vmi(obj)
    assert obj["status"] == {"phase": "Running", "nodeName": "n1"}


# --- VM defaults ---------------------------------------------------------------------------------


def test_vm_defaults_are_the_vm_mutator_s() -> None:
    obj = vm(instancetype={"name": "u1.small"}, preference={"name": "p", "kind": "VirtualMachinePreference"})
    default_vm(obj)
    spec = obj["spec"]
    assert spec["instancetype"] == {"name": "u1.small", "kind": "virtualmachineclusterinstancetype"}
    assert spec["preference"]["kind"] == "VirtualMachinePreference"
    template = spec["template"]["spec"]
    assert template["architecture"] == "amd64" and template["domain"]["machine"] == {"type": "q35"}
    assert "cpu" not in template["domain"] and "networks" not in template  # defaulted on the VMI
    assert template["domain"]["devices"]["disks"][0] == {"name": "root", "disk": {"bus": "virtio"}}
    once = copy.deepcopy(obj)
    default_vm(obj)
    assert obj == once


def test_vm_matcher_with_infer_from_volume_keeps_no_kind() -> None:
    obj = vm(instancetype={"inferFromVolume": "root"})
    default_vm(obj)
    assert obj["spec"]["instancetype"] == {"inferFromVolume": "root"}


# --- VMI validation ------------------------------------------------------------------------------


Change = Callable[[Obj], None]


def _set(path: str, value: Any) -> Change:
    def change(obj: Obj) -> None:
        *parents, last = path.split(".")
        target: Any = at(obj, ".".join(parents)) if parents else obj
        target[int(last) if last.isdigit() else last] = value

    return change


def _append(path: str, value: Any) -> Change:
    return lambda obj: at(obj, path).append(value)


def _both(*changes: Change) -> Change:
    def change(obj: Obj) -> None:
        for c in changes:
            c(obj)

    return change


D = "spec.domain.devices"
INVALID_VMIS: list[tuple[str, Change, str, str]] = [
    (
        "disk without volume",
        _set(f"{D}.disks.0.name", "nope"),
        f"{D}.disks[0].name",
        "must reference a volume",
    ),
    ("unknown bus", _set(f"{D}.disks.1.disk.bus", "floppy"), f"{D}.disks[1].disk.bus", "unrecognized bus"),
    ("ide bus", _set(f"{D}.disks.1.disk.bus", "ide"), f"{D}.disks[1].disk.bus", "IDE bus is not supported"),
    (
        "virtio cdrom",
        _set(f"{D}.disks.1", {"name": "ci", "cdrom": {"bus": "virtio"}}),
        f"{D}.disks[1].cdrom.bus",
        "invalid for CD-ROM",
    ),
    ("two targets", _set(f"{D}.disks.1.lun", {}), f"{D}.disks[1]", "single target type"),
    (
        "lun on a container disk",
        _set(f"{D}.disks.0", {"name": "root", "lun": {}}),
        f"{D}.disks[0].lun",
        "PersistentVolumeClaim",
    ),
    (
        "readonly sata disk",
        _set(f"{D}.disks.0.disk", {"bus": "sata", "readonly": True}),
        f"{D}.disks[0].disk.bus",
        "read-only",
    ),
    (
        "duplicate disk",
        _set(f"{D}.disks.1.name", "root"),
        f"{D}.disks[1].name",
        "must not have the same Name",
    ),
    (
        "disk name not a label",
        _both(_set(f"{D}.disks.1.name", "Ci"), _set("spec.volumes.1.name", "Ci")),
        f"{D}.disks[1].name",
        "RFC 1123 label",
    ),
    ("boot order 0", _set(f"{D}.disks.0.bootOrder", 0), f"{D}.disks[0].bootOrder", "boot order > 0"),
    (
        "boot order twice",
        _both(_set(f"{D}.disks.0.bootOrder", 1), _set(f"{D}.disks.1.bootOrder", 1)),
        f"{D}.disks[1].bootOrder",
        "already set",
    ),
    ("bad serial", _set(f"{D}.disks.0.serial", "a b"), f"{D}.disks[0].serial", "[A-Za-z0-9_.+-]"),
    ("bad cache", _set(f"{D}.disks.0.cache", "unsafe"), f"{D}.disks[0].cache", "invalid value unsafe"),
    ("bad io", _set(f"{D}.disks.0.io", "aio"), f"{D}.disks[0].io", "Supported modes are: native, threads"),
    (
        "bad error policy",
        _set(f"{D}.disks.0.errorPolicy", "panic"),
        f"{D}.disks[0].errorPolicy",
        "invalid value",
    ),
    (
        "pci address on sata",
        _set(f"{D}.disks.0.disk", {"bus": "sata", "pciAddress": "0000:81:01.1"}),
        f"{D}.disks[0].disk.pciAddress",
        "only possible with bus type virtio",
    ),
    (
        "block size",
        _set(f"{D}.disks.0.blockSize", {"custom": {"logical": 1000, "physical": 4096}}),
        f"{D}.disks[0].blockSize.custom.logical",
        "not a power of 2",
    ),
    (
        "duplicate volume",
        _set("spec.volumes.1.name", "root"),
        "spec.volumes[1].name",
        "must not have the same Name",
    ),
    (
        "volume with no source",
        _set("spec.volumes.1", {"name": "ci"}),
        "spec.volumes[1]",
        "exactly one source type",
    ),
    (
        "two user data",
        _set("spec.volumes.1.cloudInitNoCloud.userDataBase64", "eA=="),
        "spec.volumes[1].cloudInitNoCloud",
        "only one userdata source",
    ),
    (
        "user data too long",
        _set("spec.volumes.1.cloudInitNoCloud.userData", "x" * 2049),
        "spec.volumes[1].cloudInitNoCloud",
        "exceeds 2048 byte limit",
    ),
    (
        "bad base64",
        _set("spec.volumes.1.cloudInitNoCloud", {"userDataBase64": "%%%"}),
        "spec.volumes[1].cloudInitNoCloud.userDataBase64",
        "not a valid base64",
    ),
    (
        "empty cloud-init",
        _set("spec.volumes.1.cloudInitNoCloud", {}),
        "spec.volumes[1].cloudInitNoCloud",
        "at least one userdatasource",
    ),
    (
        "host disk type",
        _set("spec.volumes.0", {"name": "root", "hostDisk": {"path": "/d.img", "type": "File"}}),
        "spec.volumes[0].hostDisk.type",
        "allowed are 'Disk' or 'DiskOrCreate'",
    ),
    (
        "container disk path",
        _set("spec.volumes.0.containerDisk.path", "../disk.img"),
        "spec.volumes[0].containerDisk",
        "absolute path",
    ),
    (
        "secret without name",
        _set("spec.volumes.1", {"name": "ci", "secret": {}}),
        "spec.volumes[1].secret.secretName",
        "required field",
    ),
    ("no memory", _set("spec.domain.memory", {}), "spec.domain.memory.guest", "no memory requested"),
    (
        "request over limit",
        _set("spec.domain.resources", {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
        "spec.domain.resources.requests.memory",
        "is greater than",
    ),
    (
        "guest over limit",
        _set("spec.domain.resources", {"limits": {"memory": "32Mi"}}),
        "spec.domain.memory.guest",
        "must be equal to or less than the memory limit",
    ),
    (
        "tiny memory request",
        _set("spec.domain.resources", {"requests": {"memory": "512k"}}),
        "spec.domain.resources.requests.memory",
        "greater than or equal to 1M",
    ),
    (
        "cpu request over limit",
        _set("spec.domain.resources", {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}),
        "spec.domain.resources.requests.cpu",
        "is greater than",
    ),
    (
        "bad quantity",
        _set("spec.domain.resources", {"requests": {"cpu": "fast"}}),
        "spec.domain.resources.requests.cpu",
        "quantities must match",
    ),
    (
        "machine type",
        _set("spec.domain.machine", {"type": "pc-i440fx-9.0"}),
        "spec.domain.machine.type",
        "is not supported",
    ),
    (
        "cpu feature policy",
        _set("spec.domain.cpu", {"features": [{"name": "vmx", "policy": "maybe"}]}),
        "spec.domain.cpu.features[0].policy",
        "not supported",
    ),
    (
        "emulator thread",
        _set("spec.domain.cpu", {"isolateEmulatorThread": True}),
        "spec.domain.cpu.isolateEmulatorThread",
        "DedicatedCPUPlacement",
    ),
    (
        "secure boot without smm",
        _set("spec.domain.firmware", {"bootloader": {"efi": {}}}),
        "spec.domain",
        "SecureBoot requires SMM",
    ),
    (
        "bios and efi",
        _set("spec.domain.firmware", {"bootloader": {"efi": {"secureBoot": False}, "bios": {}}}),
        "spec.domain.firmware.bootloader",
        "mutually exclusive",
    ),
    (
        "kernel boot without image",
        _set("spec.domain.firmware", {"kernelBoot": {"kernelArgs": "console=ttyS0"}}),
        "spec.domain.firmware.kernelBoot.kernelArgs",
        "without an external kernel",
    ),
    ("hostname", _set("spec.hostname", "Not_A_Label"), "spec.hostname", "DNS_LABEL"),
    ("subdomain", _set("spec.subdomain", "-x-"), "spec.subdomain", "DNS_SUBDOMAIN"),
    (
        "start strategy",
        _set("spec.startStrategy", "Later"),
        "spec.startStrategy",
        "unrecognized option: Later",
    ),
    (
        "eviction strategy",
        _set("spec.evictionStrategy", "Pray"),
        "spec.evictionStrategy",
        "unrecognized option: Pray",
    ),
    (
        "interface without network",
        _set(f"{D}.interfaces", [{"name": "eth9", "bridge": {}}]),
        f"{D}.interfaces[0].name",
        "'eth9' not found",
    ),
    (
        "network without interface",
        _both(
            _set(f"{D}.interfaces", [{"name": "default", "bridge": {}}]),
            _set(
                "spec.networks",
                [{"name": "default", "pod": {}}, {"name": "x", "multus": {"networkName": "x"}}],
            ),
        ),
        "spec.networks[1].name",
        "'x' not found",
    ),
    (
        "two bindings",
        _both(
            _set(f"{D}.interfaces", [{"name": "default", "bridge": {}, "masquerade": {}}]),
            _set("spec.networks", [{"name": "default", "pod": {}}]),
        ),
        f"{D}.interfaces[0]",
        "at most one binding method",
    ),
    (
        "interface model",
        _both(
            _set(f"{D}.interfaces", [{"name": "default", "masquerade": {}, "model": "vmxnet3"}]),
            _set("spec.networks", [{"name": "default", "pod": {}}]),
        ),
        f"{D}.interfaces[0].model",
        "not supported",
    ),
    (
        "mac address",
        _both(
            _set(f"{D}.interfaces", [{"name": "default", "bridge": {}, "macAddress": "de:ad:be:ef"}]),
            _set("spec.networks", [{"name": "default", "pod": {}}]),
        ),
        f"{D}.interfaces[0].macAddress",
        "malformed MAC address",
    ),
    (
        "port zero",
        _both(
            _set(f"{D}.interfaces", [{"name": "default", "masquerade": {}, "ports": [{"port": 0}]}]),
            _set("spec.networks", [{"name": "default", "pod": {}}]),
        ),
        f"{D}.interfaces[0].ports[0]",
        "Port field is mandatory",
    ),
    (
        "port protocol",
        _both(
            _set(
                f"{D}.interfaces",
                [{"name": "default", "masquerade": {}, "ports": [{"port": 80, "protocol": "SCTP"}]}],
            ),
            _set("spec.networks", [{"name": "default", "pod": {}}]),
        ),
        f"{D}.interfaces[0].ports[0].protocol",
        "only TCP or UDP",
    ),
    (
        "two pod interfaces",
        _both(
            _set(f"{D}.interfaces", [{"name": "a", "bridge": {}}, {"name": "b", "bridge": {}}]),
            _set("spec.networks", [{"name": "a", "pod": {}}, {"name": "b", "pod": {}}]),
        ),
        f"{D}.interfaces",
        "more than one interface is connected to a pod network",
    ),
    (
        "network without type",
        _both(_set(f"{D}.interfaces", [{"name": "n", "bridge": {}}]), _set("spec.networks", [{"name": "n"}])),
        "spec.networks[0]",
        "should have a network type",
    ),
    (
        "two multus defaults",
        _both(
            _set(f"{D}.interfaces", [{"name": "a", "bridge": {}}, {"name": "b", "bridge": {}}]),
            _set(
                "spec.networks",
                [
                    {"name": "a", "multus": {"networkName": "x", "default": True}},
                    {"name": "b", "multus": {"networkName": "y", "default": True}},
                ],
            ),
        ),
        "spec.networks",
        "only have one default network",
    ),
    (
        "dhcp private option",
        _both(
            _set(
                f"{D}.interfaces",
                [
                    {
                        "name": "default",
                        "bridge": {},
                        "dhcpOptions": {"privateOptions": [{"option": 1, "value": "x"}]},
                    }
                ],
            ),
            _set("spec.networks", [{"name": "default", "pod": {}}]),
        ),
        f"{D}.interfaces[0].dhcpOptions.privateOptions[0].option",
        "224 to 254",
    ),
    (
        "input bus",
        _set(f"{D}.inputs", [{"name": "t", "bus": "ps2"}]),
        f"{D}.inputs[0].bus",
        "only virtio or usb bus",
    ),
    (
        "input type",
        _set(f"{D}.inputs", [{"name": "t", "type": "mouse"}]),
        f"{D}.inputs[0].type",
        "only tablet type",
    ),
    (
        "io threads policy",
        _set("spec.domain.ioThreadsPolicy", "lots"),
        "spec.domain.ioThreadsPolicy",
        "Invalid IOThreadsPolicy",
    ),
    (
        "probe with two handlers",
        _set("spec.readinessProbe", {"exec": {"command": ["true"]}, "guestAgentPing": {}}),
        "spec.readinessProbe",
        "exactly one probe type",
    ),
    (
        "probe with no handler",
        _set("spec.livenessProbe", {"periodSeconds": 5}),
        "spec.livenessProbe",
        "must be set if a spec.livenessProbe is specified",
    ),
    (
        "http probe without pod network",
        _both(
            _set(f"{D}.autoattachPodInterface", False), _set("spec.readinessProbe", {"httpGet": {"port": 80}})
        ),
        "spec.readinessProbe.httpGet",
        "only allowed if the Pod Network is attached",
    ),
    ("dns none without config", _set("spec.dnsPolicy", "None"), "spec.dnsConfig", "must provide `dnsConfig`"),
    (
        "dns nameserver",
        _set("spec.dnsConfig", {"nameservers": ["dns.example.com"]}),
        "spec.dnsConfig.nameservers[0]",
        "must be valid IP address",
    ),
    (
        "ssh key without volume",
        _set(
            "spec.accessCredentials",
            [
                {
                    "sshPublicKey": {
                        "source": {"secret": {"secretName": "k"}},
                        "propagationMethod": {"configDrive": {}},
                    }
                }
            ],
        ),
        "spec.accessCredentials[0].sshPublicKey.propagationMethod",
        "requires a configDrive volume",
    ),
    ("sound model", _set(f"{D}.sound", {"name": "s", "model": "sb16"}), f"{D}.sound.model", "not supported"),
]


@pytest.mark.parametrize(
    ("change", "field", "message"), [c[1:] for c in INVALID_VMIS], ids=[c[0] for c in INVALID_VMIS]
)
def test_invalid_vmi_specs_name_kubevirt_field_paths(change: Change, field: str, message: str) -> None:
    obj = vmi()
    change(obj)
    errors = check_vmi(obj)
    assert field in errors, errors
    assert any(message in m for m in errors[field]), errors[field]


def test_valid_vmi_has_no_errors() -> None:
    obj = vmi(
        hostname="web-1",
        subdomain="svc",
        evictionStrategy="LiveMigrate",
        accessCredentials=[
            {
                "sshPublicKey": {
                    "source": {"secret": {"secretName": "keys"}},
                    "propagationMethod": {"noCloud": {}},
                }
            }
        ],
        dnsPolicy="None",
        dnsConfig={"nameservers": ["10.0.0.10"], "searches": ["svc.cluster.local"]},
    )
    assert check_vmi(obj) == {}


def test_volume_without_disk_is_defaulted_not_refused() -> None:
    obj = vmi()
    obj["spec"]["domain"]["devices"]["disks"].pop()
    assert check_vmi(obj) == {}
    assert obj["spec"]["domain"]["devices"]["disks"][1]["name"] == "ci"


def test_too_many_disks_stop_validation_early() -> None:
    obj = vmi()
    obj["spec"]["domain"]["devices"]["disks"] = [{"name": f"d{i}"} for i in range(257)]
    errors = fields(validate_vmi(obj, None))
    assert list(errors) == [f"{D}.disks"] and "256 element limit" in errors[f"{D}.disks"][0]


# --- VM validation -------------------------------------------------------------------------------


T = "spec.template.spec"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            _set(f"{T}.domain.devices.disks.1.disk.bus", "floppy"),
            f"{T}.domain.devices.disks[1].disk.bus",
            "unrecognized bus floppy",
        ),
        (
            _set(f"{T}.domain.devices.disks.0.name", "gone"),
            f"{T}.domain.devices.disks[0].name",
            "must reference a volume",
        ),
        (_set(f"{T}.domain.memory", {}), f"{T}.domain.memory.guest", "no memory requested"),
        (_set("spec.running", False), "spec.running", "mutually exclusive"),
        (_set("spec.runStrategy", "Sometimes"), "spec.runStrategy", "Invalid RunStrategy (Sometimes)"),
        (
            _set("spec.instancetype", {"kind": "VirtualMachineInstancetype"}),
            "spec.instancetype",
            "Either Name or InferFromVolume",
        ),
        (
            _set("spec.preference", {"inferFromVolume": "root", "name": "p"}),
            "spec.preference.name",
            "should not be provided",
        ),
        (
            _set("spec.instancetype", {"name": "x", "inferFromVolumeFailurePolicy": "Maybe"}),
            "spec.instancetype.inferFromVolumeFailurePolicy",
            "Invalid value",
        ),
        (
            _set("spec.dataVolumeTemplates", [{"metadata": {"name": "dv"}, "spec": {}}]),
            "spec.dataVolumeTemplates[0]",
            "must be referenced",
        ),
        (
            _set("spec.dataVolumeTemplates", [{"metadata": {}, "spec": {}}]),
            "spec.dataVolumeTemplates[0].metadata.name",
            "must not be empty",
        ),
        (
            _set(f"{T}.domain.devices.interfaces", [{"name": "x", "bridge": {}}]),
            f"{T}.domain.devices.interfaces[0].name",
            "'x' not found",
        ),
    ],
)
def test_invalid_vm_specs_name_kubevirt_field_paths(change: Change, field: str, message: str) -> None:
    obj = vm()
    change(obj)
    default_vm(obj)
    errors = fields(validate_vm(obj, None))
    assert field in errors, errors
    assert any(message in m for m in errors[field]), errors[field]


def test_vm_with_instancetype_needs_no_memory_and_template_stays_undefaulted() -> None:
    obj = vm(instancetype={"name": "u1.small"})
    del obj["spec"]["template"]["spec"]["domain"]["memory"]
    before = copy.deepcopy(obj)
    assert validate_vm(obj, None) == []
    assert obj == before  # validation defaults a copy, not the object


def test_vm_being_deleted_is_not_validated() -> None:
    obj = vm(runStrategy="Sometimes")
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert validate_vm(obj, None) == []


# --- replica sets, pools, migrations, snapshots, DataVolumes -------------------------------------


def test_selector_matching() -> None:
    labels = {"app": "web", "tier": "front"}
    assert selector_matches({"matchLabels": {"app": "web"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "db"}}, labels)
    assert selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}, labels
    )
    assert not selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, labels
    )
    assert selector_matches({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)


def test_replica_set_validation() -> None:
    template = vm()["spec"]["template"]
    good = {"spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}}, "template": template}}
    assert validate_replica_set(good, None) == []
    bad = copy.deepcopy(good)
    bad["spec"]["selector"] = {"matchLabels": {"a": "c"}}
    bad["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "floppy"
    errors = fields(validate_replica_set(bad, None))
    assert "selector does not match labels" in errors["spec.selector"][0]
    assert "spec.template.spec.domain.devices.disks[0].disk.bus" in errors


def test_pool_validation_uses_the_vm_template_path() -> None:
    vm_spec = vm()["spec"]
    obj = {
        "spec": {
            "selector": {"matchLabels": {"p": "q"}},
            "virtualMachineTemplate": {"metadata": {"labels": {"p": "q"}}, "spec": vm_spec},
        }
    }
    pool_kind = pool.KINDS[0]
    assert pool_kind.validator is not None
    assert pool_kind.validator(obj, None) == []
    del vm_spec["runStrategy"]
    errors = fields(pool_kind.validator(obj, None))
    assert "spec.virtualMachineTemplate.spec.running" in errors


def test_migration_validation() -> None:
    obj = {"spec": {"vmiName": "a"}}
    assert validate_migration(obj, None) == []
    assert fields(validate_migration({"spec": {}}, None)) == {
        "spec.vmiName": ["vmiName is missing: name the VirtualMachineInstance to migrate"]
    }
    assert "spec" in fields(validate_migration({"spec": {"vmiName": "b"}}, obj))


def _kind(module_kinds: list[Kind], name: str) -> Kind:
    [kind] = [k for k in module_kinds if k.kind == name]
    return kind


def test_snapshot_and_restore_validation() -> None:
    snap = _kind(snapshot.KINDS, "VirtualMachineSnapshot")
    restore = _kind(snapshot.KINDS, "VirtualMachineRestore")
    assert snap.validator is not None and restore.validator is not None
    source = {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "larry"}
    good = {"spec": {"source": source}}
    assert snap.validator(good, None) == []
    assert "spec.source.apiGroup" in fields(
        snap.validator({"spec": {"source": {**source, "apiGroup": None}}}, None)
    )
    changed = {"spec": {"source": {**source, "name": "moe"}}}
    assert "spec" in fields(snap.validator(changed, good))
    good_restore = {"spec": {"target": source, "virtualMachineSnapshotName": "snap"}}
    assert restore.validator(good_restore, None) == []
    wrong = {"spec": {"target": {**source, "kind": "Pod"}, "virtualMachineSnapshotName": ""}}
    assert set(fields(restore.validator(wrong, None))) == {
        "spec.target.kind",
        "spec.virtualMachineSnapshotName",
    }


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"storage": {}}, "spec.source", "either Source or SourceRef"),
        (
            {"source": {"blank": {}}, "sourceRef": {"kind": "DataSource", "name": "x"}, "storage": {}},
            "spec.source",
            "cannot have both",
        ),
        ({"source": {"blank": {}, "upload": {}}, "storage": {}}, "spec.source", "exactly one source type"),
        ({"source": {"blank": {}}}, "spec.pvc", "Missing Data volume PVC"),
        ({"source": {"blank": {}}, "pvc": {}, "storage": {}}, "spec.pvc", "cannot have both"),
        (
            {"source": {"blank": {}}, "pvc": {"accessModes": ["ReadWriteOnce"]}},
            "spec.pvc.resources.requests.storage",
            "PVC size is missing",
        ),
        (
            {"sourceRef": {"kind": "PersistentVolumeClaim", "name": "x"}, "storage": {}},
            "spec.sourceRef.kind",
            "only DataSource",
        ),
        (
            {"source": {"blank": {}}, "storage": {}, "contentType": "iso"},
            "spec.contentType",
            "kubevirt or archive",
        ),
    ],
)
def test_data_volume_validation(spec: Obj, field: str, message: str) -> None:
    errors = fields(cdi.validate_data_volume_spec(spec, "spec"))
    assert field in errors and any(message in m for m in errors[field]), errors


# --- registry entries ----------------------------------------------------------------------------


def test_registry_entries_match_kubevirt() -> None:
    by_kind = {k.kind: k for k in kinds.all_kinds()}
    vm_kind, vmi_kind = by_kind["VirtualMachine"], by_kind["VirtualMachineInstance"]
    assert (vm_kind.group, vm_kind.version, vm_kind.plural) == ("kubevirt.io", "v1", "virtualmachines")
    assert vm_kind.short_names == ("vm", "vms") and vm_kind.categories == ("all",)
    assert [c.name for c in vm_kind.printer_columns] == ["Age", "Status", "Ready"]
    assert vm_kind.printer_columns[1].json_path == ".status.printableStatus"
    assert [(c.name, c.priority) for c in vmi_kind.printer_columns] == [
        ("Age", 0),
        ("Phase", 0),
        ("IP", 0),
        ("NodeName", 0),
        ("Ready", 0),
        ("Live-Migratable", 1),
        ("Paused", 1),
    ]
    assert vmi_kind.printer_columns[2].json_path == ".status.interfaces[0].ipAddress"
    for kind in kinds.all_kinds():
        if kind.group.endswith("kubevirt.io"):
            assert not kind.strategic_merge and kind.name_rule == "subdomain", kind.kind
    assert not by_kind["VirtualMachineClusterInstancetype"].namespaced
    assert not by_kind["StorageProfile"].namespaced
    assert by_kind["DataVolume"].short_names == ("dv", "dvs")
    assert kubevirt.VirtualMachine.model_fields["spec"].is_required()


def test_every_field_has_a_docstring() -> None:
    from kubevisor.api import instancetype

    modules = (kubevirt, instancetype, pool, snapshot, cdi)
    for module in modules:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and value.__module__ == module.__name__
                and hasattr(value, "model_fields")
            ):
                assert value.__doc__, value
                for name, info in value.model_fields.items():
                    assert info.description, f"{value.__name__}.{name}"
    assert kubevirt_admission.DEFAULT_CPU_MODEL == "host-model"
