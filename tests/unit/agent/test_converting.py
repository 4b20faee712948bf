"""VMI spec -> Domain: every KubeVirt field the agent honours lands in the right Domain field, and what the
node cannot run is refused with the field path and a fix. Specs are defaulted first, as the apiserver
stores them (so disks are on KubeVirt's default bus, sata, unless the spec says otherwise)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent import converting
from kubevisor.agent.converting import ConversionError, PreparedVolume
from kubevisor.api.kubevirt_admission import default_vmi_spec
from kubevisor.network import bindings
from kubevisor.virt import qemucmd
from kubevisor.virt.domain import Cpu, Domain, Firmware, KernelBoot, RunPaths

RUN = RunPaths(Path("/data/vms/default/vm1"))
UID = "6f1c1a2e-0000-4000-8000-000000000001"
ROOT = PreparedVolume(Path("/data/vms/default/vm1/disk-root.qcow2"), "qcow2")
SEED = PreparedVolume(Path("/data/vms/default/vm1/seed-ci.iso"), "raw", readonly=True)


def spec(**domain: Any) -> dict[str, Any]:
    """A minimal VMI spec: one containerDisk on virtio, 128Mi, plus ``domain`` fields; defaulted."""
    base: dict[str, Any] = {
        "domain": {
            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
            "resources": {"requests": {"memory": "128Mi"}},
        },
        "volumes": [{"name": "root", "containerDisk": {"image": "registry.local/guest:latest"}}],
    }
    for key, value in domain.items():
        if key == "devices":
            base["domain"]["devices"].update(value)
        else:
            base["domain"][key] = value
    default_vmi_spec(base)
    return base


def convert(raw: dict[str, Any], volumes: dict[str, PreparedVolume] | None = None, **kwargs: Any) -> Domain:
    fields: dict[str, Any] = {
        "namespace": "default",
        "name": "vm1",
        "uid": UID,
        "run": RUN,
        "volumes": {"root": ROOT} if volumes is None else volumes,
        "accel": "tcg",
    }
    fields.update(kwargs)
    return converting.domain(converting.parse_spec(raw), **fields)


def test_minimal_vmi() -> None:
    raw = spec()
    dom = convert(raw)
    assert dom.name == "default_vm1"
    assert dom.run == RUN
    assert dom.memory_mib == 128
    assert dom.cpu == Cpu(1, 1, 1, None)  # host-model (the default): the driver's choice per accelerator
    assert dom.machine == "q35"
    assert dom.accel == "tcg"
    assert dom.uuid == raw["domain"]["firmware"]["uuid"]  # defaulted by the apiserver
    assert dom.acpi and dom.start_paused and dom.serial_log and dom.graphics  # autoattachGraphicsDevice: true
    assert dom.firmware == Firmware()
    (disk,) = dom.disks
    assert (disk.name, disk.path, disk.bus, disk.format, disk.readonly, disk.cdrom) == (
        "root",
        ROOT.path,
        "virtio",
        "qcow2",
        False,
        False,
    )
    # the defaulted pod interface (bridge binding): user-mode for now, MAC derived from the uid
    (nic,) = dom.nics
    assert nic.name == "default" and nic.tap is None and nic.model == "virtio"
    assert nic.mac == bindings.mac_address(UID)
    qemucmd.command(dom)  # a valid QEMU command line


def test_memory_guest_wins_and_rounds_up_to_mib() -> None:
    assert convert(spec(memory={"guest": "1Gi"})).memory_mib == 1024
    raw = spec()
    raw["domain"]["memory"] = {"guest": "100M"}  # 100 000 000 bytes: 95.4 MiB
    assert convert(raw).memory_mib == 96
    raw = spec()
    del raw["domain"]["memory"]
    assert convert(raw).memory_mib == 128  # from resources.requests.memory


def test_no_memory_is_refused_with_the_field() -> None:
    raw = spec()
    del raw["domain"]["memory"]
    del raw["domain"]["resources"]
    with pytest.raises(ConversionError, match=r"spec\.domain\.memory\.guest: .*resources\.requests\.memory"):
        convert(raw)


def test_cpu_topology_and_models() -> None:
    dom = convert(spec(cpu={"sockets": 2, "cores": 3, "threads": 1}))
    assert dom.cpu == Cpu(sockets=2, cores=3, threads=1, model=None)
    assert dom.cpu.count == 6
    assert convert(spec(cpu={"cores": 1, "model": "host-passthrough"})).cpu.model is None
    assert convert(spec(cpu={"cores": 1, "model": "Skylake-Client"})).cpu.model == "Skylake-Client"
    kvm = convert(spec(), accel="kvm")
    assert "-cpu" in qemucmd.command(kvm)  # host under KVM


def test_machine_acpi_and_uuid() -> None:
    raw = spec(machine={"type": "pc"}, features={"acpi": {"enabled": False}}, firmware={"uuid": "u-1"})
    dom = convert(raw)
    assert (dom.machine, dom.acpi, dom.uuid) == ("pc", False, "u-1")


def test_disks_buses_cdrom_boot_order_serial_cache() -> None:
    raw = spec(
        devices={
            "disks": [
                {"name": "root", "disk": {"bus": "scsi"}, "bootOrder": 1, "serial": "ROOT1", "cache": "none"},
                {"name": "ci", "cdrom": {"bus": "sata"}},
                {"name": "data", "disk": {}, "shareable": True},
                {"name": "lun0", "lun": {}},
            ]
        }
    )
    raw["volumes"] += [
        {"name": "ci", "cloudInitNoCloud": {"userData": "#!/bin/sh\n"}},
        {"name": "data", "emptyDisk": {"capacity": "1Gi"}},
        {"name": "lun0", "emptyDisk": {"capacity": "1Gi"}},
    ]
    data = PreparedVolume(Path("/data/vms/default/vm1/empty-data.qcow2"), "qcow2")
    lun = PreparedVolume(Path("/data/vms/default/vm1/empty-lun0.qcow2"), "qcow2")
    dom = convert(raw, {"root": ROOT, "ci": SEED, "data": data, "lun0": lun})
    root, ci, disk, lun_disk = dom.disks
    assert (root.bus, root.boot_order, root.serial, root.cache) == ("scsi", 1, "ROOT1", "none")
    assert (ci.bus, ci.cdrom, ci.readonly, ci.format) == ("sata", True, True, "raw")
    assert disk.bus == "sata" and disk.shareable  # KubeVirt's amd64 default bus, from the apiserver
    assert lun_disk.bus == "sata" and not lun_disk.cdrom
    qemucmd.command(dom)


def test_a_read_only_volume_makes_a_read_only_disk() -> None:
    raw = spec(devices={"disks": [{"name": "root", "disk": {"bus": "virtio"}}]})
    assert convert(raw, {"root": SEED}).disks[0].readonly
    raw["domain"]["devices"]["disks"][0]["disk"]["readonly"] = True
    assert convert(raw).disks[0].readonly


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bus": "usb"}, r"disks\[0\]\.disk\.bus: bus 'usb' is not supported on this node; use virtio"),
        ({"cache": "unsafe"}, r"disks\[0\]\.cache: 'unsafe' is not one of none"),
    ],
)
def test_disk_settings_the_node_cannot_run(change: dict[str, Any], message: str) -> None:
    raw = spec()
    disk = raw["domain"]["devices"]["disks"][0]
    if "bus" in change:
        disk["disk"]["bus"] = change["bus"]
    else:
        disk.update(change)
    with pytest.raises(ConversionError, match=message):
        convert(raw)


def test_a_disk_whose_volume_was_not_prepared() -> None:
    with pytest.raises(
        ConversionError, match=r"spec\.domain\.devices\.disks\[0\]\.name: no volume named 'root'"
    ):
        convert(spec(), volumes={})


def test_interfaces_mac_model_boot_order() -> None:
    raw = spec(
        devices={
            "interfaces": [
                {"name": "default", "masquerade": {}, "macAddress": "52:54:00:aa:bb:cc", "model": "e1000"}
            ]
        }
    )
    raw["networks"] = [{"name": "default", "pod": {}}]
    (nic,) = convert(raw).nics
    assert (nic.mac, nic.model, nic.tap, nic.boot_order) == ("52:54:00:aa:bb:cc", "e1000", None, None)


def test_no_interfaces_when_the_pod_interface_is_not_attached() -> None:
    assert convert(spec(devices={"autoattachPodInterface": False})).nics == ()


@pytest.mark.parametrize(
    ("interface", "network", "message"),
    [
        (
            {"name": "default", "sriov": {}},
            {"name": "default", "pod": {}},
            r"the sriov binding is not supported",
        ),
        (
            {"name": "default", "bridge": {}},
            {"name": "default", "multus": {"networkName": "vlan10"}},
            r"interfaces\[0\]: network 'default' is not the pod network",
        ),
        (
            {"name": "default", "bridge": {}, "model": "igb"},
            {"name": "default", "pod": {}},
            r"interfaces\[0\]\.model: 'igb' is not supported here",
        ),
    ],
)
def test_interfaces_the_node_cannot_run(
    interface: dict[str, Any], network: dict[str, Any], message: str
) -> None:
    raw = spec(devices={"interfaces": [interface]})
    raw["networks"] = [network]
    with pytest.raises(ConversionError, match=message):
        convert(raw)


def test_uefi_needs_ovmf() -> None:
    raw = spec(firmware={"bootloader": {"efi": {"secureBoot": False}}})
    assert converting.wants_uefi(converting.parse_spec(raw)) == (True, False)
    with pytest.raises(
        ConversionError, match=r"firmware\.bootloader\.efi: UEFI firmware \(OVMF\) is not installed"
    ):
        convert(raw)
    fw = Firmware(
        uefi=True, code=Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), vars=RUN.directory / "OVMF_VARS.fd"
    )
    assert convert(raw, firmware=fw).firmware == fw
    secure = spec(firmware={"bootloader": {"efi": {}}})
    assert converting.wants_uefi(converting.parse_spec(secure)) == (True, True)  # KubeVirt's EFI default


def test_kernel_boot_uses_the_prepared_kernel() -> None:
    raw = spec(firmware={"kernelBoot": {"container": {"image": "k"}, "kernelArgs": "console=ttyS0"}})
    with pytest.raises(
        ConversionError, match=r"spec\.domain\.firmware\.kernelBoot: the kernel was not prepared"
    ):
        convert(raw)
    boot = KernelBoot(Path("/images/k/vmlinuz"), Path("/images/k/initrd.img"), "console=ttyS0")
    assert convert(raw, kernel_boot=boot).kernel_boot == boot


def test_hostname_as_kubevirt_sets_it() -> None:
    parsed = converting.parse_spec(spec())
    assert converting.hostname("vm1", parsed) == "vm1"
    assert converting.hostname("web.example", parsed) == "web"
    named = copy.deepcopy(spec())
    named["hostname"] = "custom"
    assert converting.hostname("vm1", converting.parse_spec(named)) == "custom"
