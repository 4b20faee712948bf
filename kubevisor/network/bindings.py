"""Interface bindings (KubeVirt ``interfaces[].bridge`` / ``interfaces[].masquerade``) of a VM's pod
network interface: what the host does so the guest gets an address by DHCP and can be reached at the
VMI's IP, and what the hypervisor driver needs (:class:`Attachment`: a tap device and a MAC address).

**bridge**: the VM's tap is a port of the node bridge; DHCP on the bridge gives the guest its pod IP
(from IPAM), the bridge's address as gateway. The guest sits on the pod network's layer 2 like a
container would; the VMI's IP is the guest's own.

**masquerade**: KubeVirt gives the guest a private address inside the pod's own network namespace and
NATs the pod IP to it. VMs here have no network namespace of their own, so the same idea is laid out on
the node, in the simplest way that keeps the guest's address private:

- the VM's tap is *not* on the bridge: it is a routed point-to-point link with a private /30 taken from
  the node's masquerade CIDR at the pod IP's offset (pod IP 10.244.0.5 -> 100.64.0.20/30; the tap holds
  .21, the guest gets .22 by DHCP, served on the tap itself, with .21 as its gateway). Deriving the /30
  from the pod IP means IPAM stays the only allocator, and no two guests' links can collide;
- the pod IP is added to the bridge as a /32, so the node and every pod on the bridge reach it (the node
  answers ARP for it) and the node's nftables DNAT it to the guest: every port, or only the ports the
  interface lists; other ports of the pod IP are rejected, never answered by the node itself;
- the guest's outgoing traffic leaves the node masqueraded to the node's address, and inside the pod
  network it carries the pod IP (SNAT), so peers see the VMI's IP as KubeVirt's masquerade shows.

Rejected alternatives: a network namespace per VM (KubeVirt's literal layout) would need QEMU started
inside it and a veth pair per VM, for no behaviour the guest could see; putting a masquerade guest on the
bridge with the pod IP would make it a bridge binding with extra rules, not a private address.

Both bindings report the pod IP as the VMI's IP (``status.interfaces[].ipAddress``). The node reaches
any port of the guest at :attr:`Attachment.guest_ip` (for a bridge binding that is the pod IP itself);
that is the address port-forward connects to, so it works also for ports a masquerade binding does not
list.

:func:`attach` is idempotent (an agent restart re-attaches running VMs and gets the same tap, MAC and
addresses) and undoes what it did itself when a step fails; :func:`detach` is idempotent and needs only
the owner key and the VMI's uid, so it also cleans up after a crashed agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Literal

from kubevisor.network import dhcp, ip, podnet
from kubevisor.network.errors import ConfigError
from kubevisor.network.ipam import Ipam
from kubevisor.network.podnet import NodeNetwork, Port

__all__ = ["BINDINGS", "Attachment", "Binding", "attach", "detach", "mac_address"]

Binding = Literal["bridge", "masquerade"]
BINDINGS: tuple[Binding, ...] = ("bridge", "masquerade")


@dataclass(frozen=True)
class Attachment:
    """A VM interface attached to the pod network: what the agent gives QEMU and writes in the status."""

    owner: str
    """The IPAM owner key, ``namespace/name`` of the VMI."""
    binding: Binding
    """How the guest is attached."""
    device: str
    """The host-side link: the tap QEMU attaches to (``-netdev tap,ifname=...``)."""
    mac: str
    """The guest NIC's MAC address; DHCP answers this MAC only."""
    ip: IPv4Address
    """The VMI's IP: its pod address (``status.interfaces[].ipAddress``)."""
    guest: IPv4Interface
    """The address and prefix the guest is given by DHCP."""
    gateway: IPv4Address
    """The guest's default gateway."""
    created_device: bool
    """Whether :func:`attach` created ``device`` (it is deleted by :func:`detach` then)."""

    @property
    def guest_ip(self) -> IPv4Address:
        """Where the node reaches the guest on any port (port-forward's target)."""
        return self.guest.ip


def mac_address(uid: str) -> str:
    """The MAC address of a VMI's pod interface when its spec names none: locally administered, unicast,
    derived from the uid (the same across agent restarts)."""
    digest = hashlib.sha256(f"mac/{uid}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


async def attach(
    network: NodeNetwork,
    ipam: Ipam,
    server: dhcp.Server,
    *,
    owner: str,
    uid: str,
    binding: Binding,
    mac: str | None = None,
    ports: Iterable[Port] = (),
    hostname: str | None = None,
    device: str | None = None,
) -> Attachment:
    """Attach the pod interface of the VMI ``owner`` (uid ``uid``) with ``binding``.

    ``device`` names an existing host-side link to use (e.g. the host end of a veth pair); by default a
    tap device named after the uid is created. ``ports`` restricts a masquerade binding to those ports.
    The node must have been set up with :func:`podnet.ensure_node`.
    """
    if binding not in BINDINGS:
        raise ConfigError(f"binding {binding!r}: must be one of {', '.join(BINDINGS)}")
    ports = tuple(ports)
    if ports and binding != "masquerade":
        raise ConfigError(f"{owner}: ports are only supported with the masquerade binding")
    mac = dhcp.normalize_mac(mac or mac_address(uid))
    ns = network.netns
    async with contextlib.AsyncExitStack() as undo:
        held = await asyncio.to_thread(ipam.get, owner)
        pod_ip = await asyncio.to_thread(ipam.allocate, owner)
        if held is None:
            undo.callback(ipam.release, owner)

        name = device or podnet.tap_name(uid)
        created = False
        if device is None:
            created = await podnet.ensure_tap(name, network)
            if created:
                undo.push_async_callback(podnet.delete_link, name, network)

        if binding == "bridge":
            await podnet.connect(name, network, bridged=True)
            guest = IPv4Interface(f"{pod_ip}/{network.pod_cidr.prefixlen}")
            gateway = network.gateway.ip
            lease_interface = network.bridge
        else:
            link = network.masquerade_link(pod_ip)
            host_side = IPv4Interface(f"{link.network_address + 1}/{link.prefixlen}")
            guest = IPv4Interface(f"{link.network_address + 2}/{link.prefixlen}")
            gateway = host_side.ip
            lease_interface = name
            await podnet.connect(name, network, bridged=False)
            if await ip.ensure_address(name, host_side, netns=ns):
                undo.push_async_callback(ip.delete_address, name, host_side, netns=ns)
            pod_host = IPv4Interface(f"{pod_ip}/32")
            if await ip.ensure_address(network.bridge, pod_host, netns=ns):
                undo.push_async_callback(ip.delete_address, network.bridge, pod_host, netns=ns)
            if await podnet.ensure_masquerade(network, pod_ip, guest.ip, ports):
                undo.push_async_callback(podnet.remove_masquerade, network, pod_ip)

        lease = dhcp.Lease(mac, guest.ip, guest.network, gateway, dns=network.dns, hostname=hostname)
        await server.set_lease(lease_interface, lease)
        undo.push_async_callback(_forget, server, lease_interface, lease)
        undo.pop_all()
    return Attachment(owner, binding, name, mac, pod_ip, guest, gateway, created)


async def _forget(server: dhcp.Server, interface: str, lease: dhcp.Lease) -> None:
    await server.forget(address=lease.address)


async def detach(
    network: NodeNetwork, ipam: Ipam, server: dhcp.Server, *, owner: str, uid: str, device: str | None = None
) -> None:
    """Undo :func:`attach` for ``owner``, whatever its binding was: DHCP lease, masquerade entries, the
    pod IP's /32, the tap (only when ``device`` is ``None``: a caller's own link is left to it, without
    the masquerade address), and finally the address in IPAM. Idempotent; a failure leaves the IPAM
    allocation in place so that a retry finds everything again."""
    ns = network.netns
    name = device or podnet.tap_name(uid)
    pod_ip = await asyncio.to_thread(ipam.get, owner)
    await server.forget(interface=name)
    if pod_ip is not None:
        await server.forget(address=pod_ip)
        await podnet.remove_masquerade(network, pod_ip)
        await ip.delete_address(network.bridge, IPv4Interface(f"{pod_ip}/32"), netns=ns)
        if device is not None:
            link = network.masquerade_link(pod_ip)
            host_side = IPv4Interface(f"{link.network_address + 1}/{link.prefixlen}")
            await ip.delete_address(name, host_side, netns=ns)
    if device is None:
        await podnet.delete_link(name, network)
    await asyncio.to_thread(ipam.release, owner)
