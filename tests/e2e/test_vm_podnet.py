"""VMIs on the pod network, end to end: the platform's node agent attaches them (masquerade and bridge
bindings), reports their IP in ``status.interfaces``, keeps their network across an agent restart, and
removes every trace of it when they are deleted.

The node's pod network lives in a network namespace the test creates (``kvtest-<random>-node``), and
every request is made from inside it; the API server and the agent stay in the test's own namespace on
127.0.0.1, QEMU runs inside the node's namespace (as the agent starts it there). One guest per binding,
both booted at once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.running import AgentConfig
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.network import ip, netns, podnet
from kubevisor.network.ipam import Ipam
from kubevisor.platform import Platform
from kubevisor.testing import guest
from kubevisor.virt import process, qemucmd
from kubevisor.virt.domain import Domain
from tests.e2e import libnet, libvmi

pytestmark = pytest.mark.e2e

NODE = "podnet-node"
POD_CIDR = IPv4Network("10.244.0.0/24")


@dataclass
class Cluster:
    """A platform whose node agent runs its pod network in ``node_ns``."""

    data_dir: Path
    node_ns: str
    config: AgentConfig
    namespaces: libnet.Namespaces
    platform: Platform | None = None

    @property
    def ipam(self) -> Ipam:
        return Ipam(self.data_dir / "network" / "ipam.json", POD_CIDR)

    async def start(self) -> Platform:
        self.platform = Platform(self.data_dir, "127.0.0.1:0", agent=True, agent_config=self.config)
        await self.platform.start()
        return self.platform

    async def stop(self) -> None:
        platform, self.platform = self.platform, None
        if platform is not None:
            await platform.stop()


@pytest.fixture
async def cluster(test_guest: guest.Guest) -> AsyncIterator[Cluster]:
    data_dir = Path(tempfile.mkdtemp(prefix="kv-"))
    async with libnet.Namespaces() as namespaces:
        node_ns = await namespaces.add("node")
        config = AgentConfig(
            data_dir=data_dir,
            node_name=NODE,
            accel="tcg",
            image_mirror={libvmi.IMAGE: test_guest.disk},
            pod_network=True,
            pod_cidr=POD_CIDR,
            network_namespace=node_ns,
        )
        found = Cluster(data_dir, node_ns, config, namespaces)
        try:
            await found.start()
            yield found
        finally:
            await found.stop()
            libvmi.kill_qemus(data_dir)  # guests outlive the platform by design
            shutil.rmtree(data_dir, ignore_errors=True)


def vmi_manifest(name: str, interface: Obj) -> Obj:
    """A VMI booting the test guest (no seed: its hostname is ``kubevisor-guest``) with ``interface`` on
    the pod network."""
    return {
        "apiVersion": libvmi.KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": libvmi.NAMESPACE},
        "spec": {
            "domain": {
                "devices": {
                    "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 1}],
                    "interfaces": [dict(interface, name="default")],
                },
                "memory": {"guest": "128Mi"},
            },
            "networks": [{"name": "default", "pod": {}}],
            "terminationGracePeriodSeconds": 0,
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": libvmi.IMAGE}}],
        },
    }


async def guest_address(data_dir: Path, name: str) -> IPv4Address:
    """The address the guest's DHCP client bound (it says so on its serial console)."""
    text = await libvmi.serial_line(data_dir, name, guest.IP_MARKER, timeout=90)
    line = next(line for line in text.splitlines() if guest.IP_MARKER in line)
    return IPv4Address(line.split("eth0=", 1)[1].strip())


def network_namespace_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


async def test_masquerade_and_bridge_vmis_on_the_pod_network(cluster: Cluster) -> None:
    assert cluster.platform is not None
    async with Client.from_kubeconfig(cluster.platform.kubeconfig) as client:
        vmis = client.resource(libvmi.KV, "virtualmachineinstances")
        bindings_of: dict[str, Obj] = {
            "masq": {"masquerade": {}, "ports": [{"port": 80}]},
            "br": {"bridge": {}},
        }
        for name, interface in bindings_of.items():
            await vmis.create(vmi_manifest(name, interface), libvmi.NAMESPACE)
        running = await asyncio.gather(*(libvmi.vmi_running(client, name, 90) for name in bindings_of))
        status = {vmi["metadata"]["name"]: vmi["status"] for vmi in running}
        uids = {vmi["metadata"]["name"]: vmi["metadata"]["uid"] for vmi in running}

        # status.interfaces, in the one Running write: the pod IP, as IPAM holds it
        allocations = cluster.ipam.allocations()
        for name in bindings_of:
            (iface,) = status[name]["interfaces"]
            pod_ip = allocations[f"default/{name}"]
            assert iface["ipAddress"] == str(pod_ip) and iface["ipAddresses"] == [str(pod_ip)]
            assert iface["name"] == "default" and iface["mac"].startswith("02:")
            assert iface["podInterfaceName"] == "eth0" and iface["infoSource"] == "domain"
            # QEMU runs inside the node's network namespace, where its tap is
            pid = libvmi.qemu_pid(cluster.data_dir, name)
            assert pid is not None
            assert network_namespace_inode(pid) == os.stat(netns.path(cluster.node_ns)).st_ino
        masq_ip = IPv4Address(status["masq"]["interfaces"][0]["ipAddress"])
        br_ip = IPv4Address(status["br"]["interfaces"][0]["ipAddress"])

        # the guests got their addresses by DHCP: masquerade a private one behind the pod IP, bridge the
        # pod IP itself
        network = podnet.NodeNetwork(POD_CIDR, netns=cluster.node_ns)
        masq_guest, br_guest = await asyncio.gather(
            guest_address(cluster.data_dir, "masq"), guest_address(cluster.data_dir, "br")
        )
        assert masq_guest == network.masquerade_link(masq_ip).network_address + 2
        assert br_guest == br_ip

        # each guest's HTTP server answers at the VMI's IP, from inside the node's namespace
        async def answers(address: IPv4Address) -> str:
            return await libnet.wait_until(
                lambda: libnet.try_get(cluster.node_ns, str(address), 80),
                timeout=30,
                what=f"the guest's HTTP server at {address}",
            )

        for address in (masq_ip, br_ip):
            assert "kubevisor-guest" in await answers(address)
        assert await podnet.masquerade_entries(network, masq_ip) != []
        # port-forward's target: every port of the guest, from the node
        assert cluster.platform.agent is not None and cluster.platform.agent.vmis is not None
        assert cluster.platform.agent.vmis.guest_address("default/masq") == (cluster.node_ns, str(masq_guest))

        # an agent restart: the guests keep running, the new agent re-registers their DHCP leases
        macs = {name: status[name]["interfaces"][0]["mac"] for name in bindings_of}
    await cluster.stop()
    platform = await cluster.start()
    assert platform.agent is not None and platform.agent.pod_network is not None
    leases = platform.agent.pod_network.dhcp.leases()
    assert sorted(le.mac for found in leases.values() for le in found) == sorted(macs.values())
    for address in (masq_ip, br_ip):
        assert "kubevisor-guest" in await answers(address)

    # "br" is removed (finalizers and all) while no agent runs: the next agent kills its QEMU and
    # releases its network, from what the run directory's record says
    br_pid = libvmi.qemu_pid(cluster.data_dir, "br")
    await cluster.stop()
    async with (
        Platform(cluster.data_dir, "127.0.0.1:0") as without_agent,
        Client.from_kubeconfig(without_agent.kubeconfig) as client,
    ):
        vmis = client.resource(libvmi.KV, "virtualmachineinstances")
        await vmis.delete("br", libvmi.NAMESPACE)
        await vmis.patch("br", {"metadata": {"finalizers": None}}, libvmi.NAMESPACE)
        await libvmi.gone(vmis, "br")
    platform = await cluster.start()
    assert br_pid is not None and await process.wait_exit(br_pid, 30)

    async def br_released() -> bool | None:
        tap = await ip.link(podnet.tap_name(uids["br"]), netns=cluster.node_ns)
        return True if tap is None and "default/br" not in cluster.ipam.allocations() else None

    await libnet.wait_until(br_released, timeout=30, what="the gone VMI's tap and address released")
    assert "kubevisor-guest" in await answers(masq_ip)  # the other guest is untouched

    # delete: tap, nftables entries, DHCP leases and addresses are gone
    async with Client.from_kubeconfig(platform.kubeconfig) as client:
        vmis = client.resource(libvmi.KV, "virtualmachineinstances")
        await vmis.delete("masq", libvmi.NAMESPACE)
        await libvmi.gone(vmis, "masq")
    assert await ip.link(podnet.tap_name(uids["masq"]), netns=cluster.node_ns) is None
    assert await podnet.masquerade_entries(network, masq_ip) == []
    assert await ip.addresses("kv0", netns=cluster.node_ns) == [network.gateway]
    assert cluster.ipam.allocations() == {}
    assert platform.agent is not None and platform.agent.pod_network is not None
    assert platform.agent.pod_network.dhcp.leases() == {}
    assert await libnet.try_get(cluster.node_ns, str(br_ip), 80) is None


async def test_a_vmi_that_cannot_be_attached_leaves_nothing_behind(cluster: Cluster) -> None:
    """A start whose attachment fails (the pod CIDR is full) is undone and retried; once an address is
    free, the VMI starts."""
    assert cluster.platform is not None
    ipam = cluster.ipam
    squatters = [f"default/squatter-{i}" for i in range(POD_CIDR.num_addresses - 3)]
    for owner in squatters:
        ipam.allocate(owner)
    # the agent releases addresses without a run directory only when it starts: these stay
    async with Client.from_kubeconfig(cluster.platform.kubeconfig) as client:
        await client.resource(libvmi.KV, "virtualmachineinstances").create(
            vmi_manifest("full", {"masquerade": {}}), libvmi.NAMESPACE
        )

        async def failed_network() -> list[Any]:
            return [e for e in await libvmi.events_for(client, "full") if e["reason"] == "FailedNetwork"]

        events = await libvmi.until(failed_network, bool, 30, "a FailedNetwork event")
        assert "all 253 pod addresses are allocated" in events[0]["message"]
        assert libvmi.qemu_pid(cluster.data_dir, "full") is None
        assert "default/full" not in ipam.allocations()
        links = await ip.addresses("kv0", netns=cluster.node_ns)
        assert links == [podnet.NodeNetwork(POD_CIDR).gateway]

        ipam.release(squatters[0])
        vmi = await libvmi.vmi_running(client, "full", 60)
        assert vmi["status"]["interfaces"][0]["ipAddress"] == str(ipam.get("default/full"))


async def test_a_start_that_fails_after_the_attachment_undoes_it(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU refuses its command line after the interface was attached: the VMI fails, and its address,
    tap, masquerade entries and DHCP lease are gone with the rest of the start."""
    assert cluster.platform is not None and cluster.platform.agent is not None
    real = qemucmd.command
    taps: list[str | None] = []

    def broken(domain: Domain, **kw: Any) -> list[str]:
        taps.extend(nic.tap for nic in domain.nics)
        return [*real(domain, **kw), "-no-such-option"]

    monkeypatch.setattr(qemucmd, "command", broken)
    async with Client.from_kubeconfig(cluster.platform.kubeconfig) as client:
        vmis = client.resource(libvmi.KV, "virtualmachineinstances")
        created = await vmis.create(vmi_manifest("broken", {"masquerade": {}}), libvmi.NAMESPACE)
        vmi = await libvmi.until(
            lambda: libvmi.get_or_empty(vmis, "broken"), lambda o: libvmi.phase(o) == "Failed", 60, "Failed"
        )
    assert "no-such-option" in vmi["status"]["conditions"][0]["message"]
    assert taps == [podnet.tap_name(created["metadata"]["uid"])]  # it was attached when QEMU started
    network = podnet.NodeNetwork(POD_CIDR, netns=cluster.node_ns)
    assert await ip.link(podnet.tap_name(created["metadata"]["uid"]), netns=cluster.node_ns) is None
    assert await podnet.masquerade_entries(network, IPv4Address("10.244.0.2")) == []
    assert await ip.addresses("kv0", netns=cluster.node_ns) == [network.gateway]
    assert cluster.ipam.allocations() == {}
    assert cluster.platform.agent.pod_network is not None
    assert cluster.platform.agent.pod_network.dhcp.leases() == {}
