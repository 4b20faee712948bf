"""The node agent's side of the pod network: which interfaces of a VMI go on it, attaching and detaching
them with :mod:`kubevisor.network`, and what the VMI's ``status.interfaces`` says about them.

Why here and not in :mod:`kubevisor.network`: that package is a host-side library that knows nothing of
VMIs; this module maps KubeVirt's fields onto it (``interfaces[].masquerade``/``bridge`` on a
``networks[].pod`` network, ``ports``, ``macAddress``) and holds the node's one :class:`PodNetwork`
(bridge and nftables table set up once, the address store, the in-process DHCP server).

Invariants:

- A VMI has at most one interface on the pod network (the API server refuses more), and the IPAM owner is
  the VMI's key ``namespace/name``: a retried start gets the same address back.
- What is attached can be found again without the VMI: :class:`PodInterface` records go into the run
  directory's record before anything is attached, so a restarted agent re-registers the DHCP leases of
  the guests it adopts, and cleans up after a VMI that is gone with only the key and the uid
  (:meth:`PodNetwork.detach` is idempotent).
- The ``slirp`` binding keeps QEMU's user-mode network; with the pod network off (``--no-pod-network``)
  every interface does.

KubeVirt's default binding for an interface that names none is taken to be ``masquerade`` here (the
binding its own examples use on the pod network); the interface the API server adds when a VMI has
none is ``bridge``, as KubeVirt's ``DefaultNetworkInterface``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal, cast

from kubevisor.agent.converting import ConversionError
from kubevisor.api.kubevirt import VirtualMachineInstanceSpec
from kubevisor.network import bindings, dhcp, netns, podnet
from kubevisor.network.ipam import Ipam
from kubevisor.network.podnet import NodeNetwork, Port

__all__ = [
    "DEFAULT_POD_CIDR",
    "POD_INTERFACE_NAME",
    "PodInterface",
    "PodNetwork",
    "host_supports_pod_network",
    "normalize_mac",
    "pod_interfaces",
    "status_interfaces",
]

log = logging.getLogger(__name__)

DEFAULT_POD_CIDR = IPv4Network("10.244.0.0/24")
"""The node's pod CIDR unless configured (flannel's default cluster range, first /24)."""
POD_INTERFACE_NAME = "eth0"
"""KubeVirt's ``podInterfaceName`` of the pod network (the launcher pod's primary interface)."""
DEFAULT_BINDING: bindings.Binding = "masquerade"
_DOTTED_MAC = re.compile(r"^([0-9a-fA-F]{4})\.([0-9a-fA-F]{4})\.([0-9a-fA-F]{4})$")


def host_supports_pod_network() -> bool:
    """Whether this process can set up the pod network: root, with ``ip`` and ``nft`` installed."""
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None


def normalize_mac(mac: str) -> str:
    """A MAC address as KubeVirt accepts it (``aa:bb:..``, ``aa-bb-..``, ``aabb.ccdd.eeff``), as six
    lower-case colon-separated octets; ``ValueError`` otherwise."""
    dotted = _DOTTED_MAC.match(mac)
    if dotted:
        digits = "".join(dotted.groups())
        mac = ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    return dhcp.normalize_mac(mac)


@dataclass(frozen=True)
class PodInterface:
    """One interface of a VMI on the pod network, as the agent attaches it."""

    name: str
    """The interface's (and its network's) name in the VMI."""
    binding: bindings.Binding
    """bridge or masquerade."""
    mac: str
    """The guest NIC's MAC (``macAddress``, else derived from the VMI's uid)."""
    ports: tuple[Port, ...] = ()
    """For masquerade: the only ports reachable at the VMI's IP (``ports``); empty: all."""

    def record(self) -> dict[str, Any]:
        """As kept in the run directory's record."""
        return {
            "name": self.name,
            "binding": self.binding,
            "mac": self.mac,
            "ports": [[p.port, p.protocol] for p in self.ports],
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> PodInterface:
        binding = data["binding"]
        if binding not in bindings.BINDINGS:
            raise ValueError(f"binding {binding!r}")
        ports = tuple(Port(int(port), _protocol(protocol)) for port, protocol in data.get("ports") or [])
        return cls(str(data["name"]), binding, normalize_mac(str(data["mac"])), ports)


def _protocol(value: object) -> Literal["tcp", "udp"]:
    protocol = str(value).lower()
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"protocol {value!r}: must be TCP or UDP")
    return cast(Literal["tcp", "udp"], protocol)


def pod_interfaces(spec: VirtualMachineInstanceSpec, uid: str) -> list[PodInterface]:
    """The interfaces of ``spec`` that go on the pod network: bridge or masquerade bindings (or none) on a
    ``pod`` network. Other bindings are left to :mod:`kubevisor.agent.converting`, which refuses what the
    node cannot run."""
    pod_networks = {n.name for n in spec.networks or [] if n.pod is not None}
    found: list[PodInterface] = []
    for index, iface in enumerate(spec.domain.devices.interfaces or []):
        where = f"spec.domain.devices.interfaces[{index}]"
        if iface.name not in pod_networks:
            continue
        others = (iface.slirp, iface.sriov, iface.macvtap, iface.passt, iface.passt_binding, iface.binding)
        if any(b is not None for b in others):
            continue
        binding: bindings.Binding = (
            "bridge"
            if iface.bridge is not None
            else "masquerade"
            if iface.masquerade is not None
            else DEFAULT_BINDING
        )
        if iface.port_ranges:
            raise ConversionError(
                f"{where}.portRanges: port ranges are not supported on this node yet; list ports"
            )
        if iface.ports and binding != "masquerade":
            raise ConversionError(
                f"{where}.ports: ports are only supported with the masquerade binding; remove them or use "
                "masquerade"
            )
        try:
            ports = tuple(Port(p.port, _protocol(p.protocol or "TCP")) for p in iface.ports or [])
            mac = normalize_mac(iface.mac_address) if iface.mac_address else bindings.mac_address(uid)
        except ValueError as e:
            raise ConversionError(f"{where}: {e}") from e
        found.append(PodInterface(iface.name, binding, mac, ports))
    if len(found) > 1:
        raise ConversionError(
            "spec.domain.devices.interfaces: more than one interface is on the pod network; keep one"
        )
    return found


def status_interfaces(
    nics: Iterable[tuple[str | None, str | None]], attachments: Mapping[str, bindings.Attachment]
) -> list[dict[str, Any]]:
    """``status.interfaces`` for the guest NICs ``nics`` (name, MAC) as KubeVirt's virt-handler writes
    them: the pod network's interface has the VMI's IP (the pod IP, for both bindings) and
    ``podInterfaceName``; the source is the domain (there is no guest agent to ask)."""
    found: list[dict[str, Any]] = []
    for name, mac in nics:
        entry: dict[str, Any] = {"name": name, "mac": mac, "infoSource": "domain"}
        attachment = attachments.get(name or "")
        if attachment is not None:
            address = str(attachment.ip)
            entry.update(
                ipAddress=address,
                ipAddresses=[address],
                interfaceName=POD_INTERFACE_NAME,
                podInterfaceName=POD_INTERFACE_NAME,
                queueCount=1,
            )
        found.append(entry)
    return found


class PodNetwork:
    """The node's pod network as the agent uses it: :meth:`start` once, then attach and detach VMIs."""

    def __init__(self, network: NodeNetwork, ipam: Ipam, server: dhcp.Server) -> None:
        self.network = network
        """Bridge, CIDRs and network namespace."""
        self.ipam = ipam
        """Pod addresses, by VMI key."""
        self.dhcp = server
        """The DHCP server of every attached guest."""

    @classmethod
    async def start(cls, data_dir: Path, pod_cidr: IPv4Network, *, netns: str | None = None) -> PodNetwork:
        """Set up the node (idempotent: a restarted agent finds what the last one left), and the DHCP
        server."""
        network = NodeNetwork(pod_cidr, netns=netns)
        await podnet.ensure_node(network)
        ipam = Ipam(data_dir / "network" / "ipam.json", pod_cidr)
        return cls(network, ipam, dhcp.Server(netns=netns))

    async def close(self) -> None:
        """Stop serving DHCP. The bridge, the nftables table and every guest's attachment stay: guests
        outlive the agent, and the next agent re-registers their leases."""
        await self.dhcp.close()

    def exec_prefix(self) -> list[str]:
        """What QEMU's command line is prefixed with so that it runs (and opens its tap) in the node's
        network namespace: ``ip netns exec NAME`` (which execs QEMU in place), or nothing."""
        return netns.exec_prefix(self.network.netns)

    async def attach(
        self, key: str, uid: str, interfaces: Sequence[PodInterface], *, hostname: str | None
    ) -> dict[str, bindings.Attachment]:
        """Attach ``interfaces`` of the VMI ``key`` (idempotent); interface name -> attachment. A failure
        undoes what this call attached."""
        attached: dict[str, bindings.Attachment] = {}
        try:
            for iface in interfaces:
                attached[iface.name] = await bindings.attach(
                    self.network, self.ipam, self.dhcp, owner=key, uid=uid, binding=iface.binding,
                    mac=iface.mac, ports=iface.ports, hostname=hostname,
                )  # fmt: skip
        except BaseException:
            if attached:
                await asyncio.shield(self.detach(key, uid))
            raise
        return attached

    async def detach(self, key: str, uid: str) -> None:
        """Undo :meth:`attach` of the VMI ``key`` with ``uid`` (its tap is named from the uid); idempotent."""
        await bindings.detach(self.network, self.ipam, self.dhcp, owner=key, uid=uid)

    async def release_unknown(self, keep: Iterable[str]) -> list[str]:
        """Release the addresses of VMIs other than ``keep`` (their run directories are gone, so they
        run nowhere); the keys released."""
        wanted = set(keep)
        stale = [owner for owner in await asyncio.to_thread(self.ipam.allocations) if owner not in wanted]
        for owner in stale:
            log.info("pod network: releasing %s of VMI %s: it runs no more", self.ipam.get(owner), owner)
            await bindings.detach(self.network, self.ipam, self.dhcp, owner=owner, uid="")
        return stale

    def guest_address(self, attachment: bindings.Attachment) -> tuple[str | None, IPv4Address]:
        """(network namespace, address) where the node reaches ``attachment``'s guest on any port."""
        return self.network.netns, attachment.guest_ip
