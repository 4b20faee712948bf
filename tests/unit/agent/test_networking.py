"""The agent's pod network mapping, without touching the host: which interfaces of a VMI go on the pod
network and how (binding, MAC, ports), what is refused with the field, the run directory record of an
interface, the NIC QEMU gets from an attachment, and ``status.interfaces`` as KubeVirt writes it."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent import converting, networking
from kubevisor.agent.converting import ConversionError, PreparedVolume
from kubevisor.agent.networking import PodInterface
from kubevisor.api.kubevirt_admission import default_vmi_spec
from kubevisor.network import bindings
from kubevisor.network.podnet import Port
from kubevisor.virt import qemucmd
from kubevisor.virt.domain import RunPaths

UID = "6f1c1a2e-0000-4000-8000-000000000001"


def spec(*interfaces: dict[str, Any], networks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "domain": {
            "devices": {
                "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                "interfaces": list(interfaces),
            },
            "memory": {"guest": "128Mi"},
        },
        "networks": networks if networks is not None else [{"name": "default", "pod": {}}],
        "volumes": [{"name": "root", "containerDisk": {"image": "registry.local/guest:latest"}}],
    }
    if not interfaces:
        del raw["domain"]["devices"]["interfaces"]
        del raw["networks"]
    default_vmi_spec(raw)
    return raw


def plan(raw: dict[str, Any]) -> list[PodInterface]:
    return networking.pod_interfaces(converting.parse_spec(raw), UID)


def test_masquerade_with_ports_and_a_mac_from_the_spec() -> None:
    raw = spec(
        {
            "name": "default",
            "masquerade": {},
            "macAddress": "DE:AD:00:00:BE:AF",
            "ports": [{"port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        }
    )
    assert plan(raw) == [
        PodInterface("default", "masquerade", "de:ad:00:00:be:af", (Port(80, "tcp"), Port(53, "udp")))
    ]


def test_bridge_and_the_default_interface() -> None:
    assert plan(spec({"name": "default", "bridge": {}})) == [
        PodInterface("default", "bridge", bindings.mac_address(UID))
    ]
    # no interfaces and no networks: the apiserver adds KubeVirt's default (bridge on the pod network)
    assert [i.binding for i in plan(spec())] == ["bridge"]
    # an interface that names no binding
    assert [i.binding for i in plan(spec({"name": "default"}))] == ["masquerade"]


def test_interfaces_that_stay_off_the_pod_network() -> None:
    assert plan(spec({"name": "default", "slirp": {}})) == []  # QEMU's user-mode network
    multus = [{"name": "default", "multus": {"networkName": "vlan10"}}]
    assert plan(spec({"name": "default", "bridge": {}}, networks=multus)) == []  # converting refuses it


@pytest.mark.parametrize(
    ("interface", "message"),
    [
        (
            {"name": "default", "bridge": {}, "ports": [{"port": 80}]},
            r"interfaces\[0\]\.ports: ports are only supported with the masquerade binding",
        ),
        (
            {"name": "default", "masquerade": {}, "portRanges": [{"start": 80, "end": 90}]},
            r"interfaces\[0\]\.portRanges: port ranges are not supported",
        ),
    ],
)
def test_what_is_refused(interface: dict[str, Any], message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        plan(spec(interface))


def test_macs_in_every_form_kubevirt_accepts() -> None:
    assert networking.normalize_mac("02-00-00-AA-bb-01") == "02:00:00:aa:bb:01"
    assert networking.normalize_mac("0200.00aa.bb01") == "02:00:00:aa:bb:01"
    with pytest.raises(ValueError, match="is not a MAC address"):
        networking.normalize_mac("02:00:00:aa:bb")


def test_the_record_round_trips() -> None:
    iface = PodInterface("default", "masquerade", "02:00:00:aa:bb:01", (Port(80), Port(53, "udp")))
    assert PodInterface.from_record(iface.record()) == iface
    with pytest.raises(ValueError, match="binding 'sriov'"):
        PodInterface.from_record(dict(iface.record(), binding="sriov"))


def attachment(binding: bindings.Binding) -> bindings.Attachment:
    pod_ip = IPv4Address("10.244.0.5")
    guest = IPv4Interface("100.64.0.22/30") if binding == "masquerade" else IPv4Interface("10.244.0.5/24")
    gateway = IPv4Address("100.64.0.21") if binding == "masquerade" else IPv4Address("10.244.0.1")
    return bindings.Attachment(
        "default/vm1", binding, "tap0123456789ab", "02:00:00:aa:bb:01", pod_ip, guest, gateway, True
    )


def test_the_nic_of_an_attached_interface_is_its_tap() -> None:
    raw = spec({"name": "default", "masquerade": {}, "model": "e1000"})
    run = RunPaths(Path("/data/vms/default/vm1"))
    dom = converting.domain(
        converting.parse_spec(raw),
        namespace="default",
        name="vm1",
        uid=UID,
        run=run,
        volumes={"root": PreparedVolume(Path("/data/root.qcow2"), "qcow2")},
        accel="tcg",
        attachments={"default": attachment("masquerade")},
    )
    (nic,) = dom.nics
    assert (nic.tap, nic.mac, nic.model) == ("tap0123456789ab", "02:00:00:aa:bb:01", "e1000")
    argv = qemucmd.command(dom)
    assert "tap,id=net-0,ifname=tap0123456789ab,script=no,downscript=no" in argv
    assert not any(a.startswith("user,") for a in argv)


@pytest.mark.parametrize("binding", bindings.BINDINGS)
def test_status_interfaces(binding: bindings.Binding) -> None:
    nics = [("default", "02:00:00:aa:bb:01"), ("other", "02:00:00:aa:bb:02")]
    assert networking.status_interfaces(nics, {"default": attachment(binding)}) == [
        {
            "name": "default",
            "mac": "02:00:00:aa:bb:01",
            "infoSource": "domain",
            "ipAddress": "10.244.0.5",  # the VMI's IP is the pod IP for both bindings
            "ipAddresses": ["10.244.0.5"],
            "interfaceName": "eth0",
            "podInterfaceName": "eth0",
            "queueCount": 1,
        },
        {"name": "other", "mac": "02:00:00:aa:bb:02", "infoSource": "domain"},
    ]
