"""The pod network on a node, end to end, inside network namespaces each test creates.

Topology (``kvtest-<random>-*``)::

    client ns: eth0 (MAC of the attachment) ─veth─ vc0 ┐
                                                       ├ node ns: kv0 10.244.0.1/24, nft "inet kubevisor"
    outside ns: eth0 192.0.2.2/24 ──────veth────────── up0 192.0.2.1/24 (the node's "uplink")

The client namespace stands in for a guest (busybox udhcpc asks for its address); the last tests boot a
real guest under QEMU (TCG) on a tap device instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from kubevisor.network import bindings, dhcp, ip, netns, nft, podnet
from kubevisor.network.errors import NetworkError
from kubevisor.network.ipam import Ipam
from kubevisor.network.podnet import NodeNetwork, Port
from kubevisor.network.portforward import Forwarder
from kubevisor.testing import guest
from kubevisor.virt.domain import Nic
from tests.e2e import libnet, libvm

pytestmark = pytest.mark.e2e

POD_CIDR = IPv4Network("10.244.0.0/24")
DNS = (IPv4Address("10.96.0.10"),)
UPLINK = IPv4Interface("192.0.2.1/24")
OUTSIDE = IPv4Interface("192.0.2.2/24")
HTTP_PORT = 8080


@dataclass
class Node:
    """A node's pod network in its own namespace, plus an "outside" namespace behind its uplink."""

    namespaces: libnet.Namespaces
    network: NodeNetwork
    ipam: Ipam
    dhcp: dhcp.Server
    outside: str
    work: Path

    @property
    def ns(self) -> str:
        assert self.network.netns is not None
        return self.network.netns

    async def client(
        self, role: str, binding: bindings.Binding, *, ports: tuple[Port, ...] = ()
    ) -> tuple[str, bindings.Attachment]:
        """A namespace attached like a guest: a veth whose node end is the attachment's device."""
        client = await self.namespaces.add(role)
        uid = f"uid-{role}"
        mac = bindings.mac_address(uid)
        device = f"v{role}"[:15]
        await self.namespaces.veth((self.ns, device), (client, "eth0"), b_mac=mac)
        attachment = await bindings.attach(
            self.network, self.ipam, self.dhcp, owner=f"default/{role}", uid=uid, binding=binding,
            mac=mac, ports=ports, hostname=role, device=device,
        )  # fmt: skip
        return client, attachment


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with libnet.Namespaces() as namespaces:
        node_ns = await namespaces.add("node")
        outside = await namespaces.add("outside")
        network = NodeNetwork(POD_CIDR, dns=DNS, netns=node_ns)
        await podnet.ensure_node(network)
        await namespaces.veth((node_ns, "up0"), (outside, "eth0"))
        await ip.ensure_address("up0", UPLINK, netns=node_ns)
        await ip.ensure_address("eth0", OUTSIDE, netns=outside)
        server = dhcp.Server(netns=node_ns)
        try:
            yield Node(namespaces, network, Ipam(tmp_path / "ipam.json", POD_CIDR), server, outside, tmp_path)
        finally:
            await server.close()


async def test_node_setup_is_idempotent_and_teardown_leaves_nothing(node: Node) -> None:
    network = node.network
    await podnet.ensure_node(network)  # again: nothing changes, nothing fails
    bridge = await ip.link("kv0", netns=node.ns)
    assert bridge is not None and bridge["linkinfo"]["info_kind"] == "bridge"
    assert bridge["address"] == podnet.bridge_mac(network)
    assert await ip.addresses("kv0", netns=node.ns) == [IPv4Interface("10.244.0.1/24")]
    assert netns.call(node.ns, lambda: Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()) == "1"
    table = await node.namespaces.run(node.ns, ["nft", "list", "table", "inet", "kubevisor"])
    assert table.count("chain postrouting") == 1 and table.count("masquerade") == 2

    # a VM's tap: named from the uid, on the bridge, gone again on detach
    attachment = await bindings.attach(
        network, node.ipam, node.dhcp, owner="default/vm", uid="0f1e2d3c", binding="bridge"
    )
    assert attachment.device == podnet.tap_name("0f1e2d3c") and len(attachment.device) == 15
    assert attachment.created_device
    tap = await ip.link(attachment.device, netns=node.ns)
    assert tap is not None and tap["master"] == "kv0" and tap["linkinfo"]["info_data"]["type"] == "tap"
    again = await bindings.attach(
        network, node.ipam, node.dhcp, owner="default/vm", uid="0f1e2d3c", binding="bridge"
    )
    assert again.ip == attachment.ip and again.mac == attachment.mac and not again.created_device
    assert node.ipam.allocations() == {"default/vm": attachment.ip}

    await bindings.detach(network, node.ipam, node.dhcp, owner="default/vm", uid="0f1e2d3c")
    await bindings.detach(network, node.ipam, node.dhcp, owner="default/vm", uid="0f1e2d3c")
    assert await ip.link(attachment.device, netns=node.ns) is None
    assert node.ipam.allocations() == {}
    assert node.dhcp.leases() == {}

    await podnet.teardown_node(network)
    await podnet.teardown_node(network)
    assert await ip.link("kv0", netns=node.ns) is None
    assert not await nft.table_exists("inet", "kubevisor", netns=node.ns)


async def test_failed_attach_leaves_nothing_behind(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: dhcp.Server, interface: str, lease: dhcp.Lease) -> None:
        raise NetworkError("DHCP is broken")

    monkeypatch.setattr(dhcp.Server, "set_lease", broken)
    with pytest.raises(NetworkError, match="DHCP is broken"):
        await bindings.attach(
            node.network, node.ipam, node.dhcp, owner="default/vm", uid="u1", binding="masquerade"
        )
    assert await ip.link(podnet.tap_name("u1"), netns=node.ns) is None
    assert await ip.addresses("kv0", netns=node.ns) == [IPv4Interface("10.244.0.1/24")]
    assert await podnet.masquerade_entries(node.network, IPv4Address("10.244.0.2")) == []
    assert node.ipam.allocations() == {}


async def test_bridge_binding_dhcp_gives_the_ipam_address(node: Node) -> None:
    client, attachment = await node.client("c", "bridge")
    lease = await libnet.udhcpc(node.namespaces, client, "eth0", node.work)

    assert IPv4Address(lease["ip"]) == attachment.ip == node.ipam.get("default/c")
    assert attachment.guest == IPv4Interface(f"{attachment.ip}/24")
    assert lease["mask"] == "24"
    assert lease["router"] == lease["serverid"] == "10.244.0.1"
    assert lease["dns"].split() == ["10.96.0.10"]
    assert lease["hostname"] == "c"
    assert await ip.addresses("eth0", netns=client) == [attachment.guest]

    # a second client gets another address; the node reaches both
    other, second = await node.client("d", "bridge")
    assert IPv4Address((await libnet.udhcpc(node.namespaces, other, "eth0", node.work))["ip"]) == second.ip
    assert second.ip != attachment.ip
    for ns, att in ((client, attachment), (other, second)):
        await libnet.start_whoami(node.namespaces, ns, ns, HTTP_PORT, node.work)
        assert await libnet.http_get(node.ns, str(att.ip), HTTP_PORT) == f"{ns} 10.244.0.1"


async def test_pod_traffic_leaves_the_node_masqueraded(node: Node) -> None:
    client, _ = await node.client("c", "bridge")
    await libnet.udhcpc(node.namespaces, client, "eth0", node.work)
    await libnet.start_whoami(node.namespaces, node.outside, "outside", HTTP_PORT, node.work)

    # the outside sees the node's uplink address, not the pod's
    assert await libnet.http_get(client, str(OUTSIDE.ip), HTTP_PORT) == f"outside {UPLINK.ip}"
    # and without the table, the pod's own address would have left the node (it has no way back)
    await nft.apply([nft.delete("table", family="inet", name="kubevisor")], netns=node.ns)
    assert await libnet.try_get(client, str(OUTSIDE.ip), HTTP_PORT) is None
    await podnet.ensure_node(node.network)
    assert await libnet.http_get(client, str(OUTSIDE.ip), HTTP_PORT) == f"outside {UPLINK.ip}"


async def test_port_forward_from_node_loopback_to_a_pod(node: Node) -> None:
    client, attachment = await node.client("c", "bridge")
    await libnet.udhcpc(node.namespaces, client, "eth0", node.work)
    await libnet.start_whoami(node.namespaces, client, "pod", HTTP_PORT, node.work)

    async with Forwarder(str(attachment.guest_ip), HTTP_PORT, netns=node.ns) as fwd:
        assert fwd.port > 0
        answers = await asyncio.gather(*(libnet.http_get(node.ns, "127.0.0.1", fwd.port) for _ in range(5)))
        assert answers == ["pod 10.244.0.1"] * 5  # the forwarder connects from the node's bridge address
    assert await libnet.try_get(node.ns, "127.0.0.1", fwd.port) is None  # closed: nothing listens


async def test_masquerade_binding_private_guest_address_nat_both_ways(node: Node) -> None:
    masq, m = await node.client("m", "masquerade")
    lease = await libnet.udhcpc(node.namespaces, masq, "eth0", node.work)
    link = node.network.masquerade_link(m.ip)
    assert IPv4Address(lease["ip"]) == m.guest_ip == link.network_address + 2
    assert lease["mask"] == "30" and IPv4Address(lease["router"]) == m.gateway == link.network_address + 1
    assert m.ip == node.ipam.get("default/m") and m.ip != m.guest_ip
    peer, b = await node.client("b", "bridge")
    await libnet.udhcpc(node.namespaces, peer, "eth0", node.work)
    for ns, name in ((masq, "m"), (peer, "b"), (node.outside, "outside")):
        await libnet.start_whoami(node.namespaces, ns, name, HTTP_PORT, node.work)

    # the node reaches the guest at the VMI's (pod) IP, and shows up as the guest's gateway
    assert await libnet.http_get(node.ns, str(m.ip), HTTP_PORT) == f"m {m.gateway}"
    # a pod on the bridge reaches it at the pod IP too, with its own address
    assert await libnet.http_get(peer, str(m.ip), HTTP_PORT) == f"m {b.ip}"
    # the guest's traffic carries its pod IP inside the pod network, the node's address outside it
    assert await libnet.http_get(masq, str(b.ip), HTTP_PORT) == f"b {m.ip}"
    assert await libnet.http_get(masq, str(OUTSIDE.ip), HTTP_PORT) == f"outside {UPLINK.ip}"

    # listing ports: only those reach the guest; other ports of the pod IP are refused, even one the
    # node itself listens on
    m2 = await bindings.attach(
        node.network, node.ipam, node.dhcp, owner="default/m", uid="uid-m", binding="masquerade",
        mac=m.mac, ports=(Port(HTTP_PORT),), device=m.device,
    )  # fmt: skip
    assert m2 == m
    await libnet.start_whoami(node.namespaces, node.ns, "node", 9090, node.work)
    assert await libnet.http_get(node.ns, str(m.ip), HTTP_PORT) == f"m {m.gateway}"
    with pytest.raises(ConnectionRefusedError):
        await libnet.http_get(peer, str(m.ip), 9090)

    await bindings.detach(node.network, node.ipam, node.dhcp, owner="default/m", uid="uid-m", device=m.device)
    assert await libnet.try_get(peer, str(m.ip), HTTP_PORT) is None
    assert await ip.addresses(m.device, netns=node.ns) == []
    assert await podnet.masquerade_entries(node.network, m.ip) == []
    assert node.ipam.get("default/m") is None


# --- with a real guest --------------------------------------------------------------------------------


@pytest.mark.parametrize("binding", ["bridge", "masquerade"])
async def test_tcg_guest_on_a_tap_gets_its_address_by_dhcp(
    node: Node, binding: bindings.Binding, test_guest: guest.Guest, run_dir: Path
) -> None:
    attachment = await bindings.attach(
        node.network, node.ipam, node.dhcp, owner="default/vm", uid="guest-uid", binding=binding
    )
    nic = Nic("default", mac=attachment.mac, tap=attachment.device)
    domain = libvm.kernel_boot_domain(run_dir, test_guest, nics=(nic,))
    async with libnet.running_in(node.ns, domain) as vm:
        address = await vm.console.wait_for(rf"{guest.IP_MARKER} eth0=(\S+)", libvm.BOOT_TIMEOUT)
        assert IPv4Address(address.group(1)) == attachment.guest_ip
        if binding == "bridge":
            assert attachment.guest_ip == attachment.ip == node.ipam.get("default/vm")
        else:
            assert attachment.guest_ip in node.network.masquerade_cidr
        # the guest's own HTTP server, from the node, at the VMI's IP (through DNAT for masquerade)
        body = await libnet.wait_until(
            lambda: libnet.try_get(node.ns, str(attachment.ip), 80),
            timeout=30,
            what="the guest's HTTP server",
        )
        assert "hostname=kubevisor-guest" in body
        # and the guest reaches the outside through the node's masquerade
        await libnet.start_whoami(node.namespaces, node.outside, "outside", HTTP_PORT, node.work)
        await vm.console.send(f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {OUTSIDE.ip} {HTTP_PORT}; echo\n")
        await vm.console.wait_for(rf"^outside {UPLINK.ip}$", 30)
    await bindings.detach(node.network, node.ipam, node.dhcp, owner="default/vm", uid="guest-uid")
    assert await ip.link(attachment.device, netns=node.ns) is None
