"""The node's pod network: one bridge, its gateway address, the ``inet kubevisor`` nftables table, and the
host side of each VM's interface (a tap device, or a link the caller made such as a veth).

Layout on a node (defaults)::

    bridge-bound guest ── tap<12 hex> ──┐
    a caller's veth (e.g. a container) ─┴─ kv0  10.244.0.1/24, plus a /32 per masquerade guest's pod IP
                                                 │
    masquerade guest ─── tap<12 hex> 100.64.x.y/30 ── routed by the node ── uplink(s)
                                                 (nftables "inet kubevisor": NAT below)

The nftables table (all of it kubevisor's own, rebuilt idempotently by :func:`ensure_node`):

- ``postrouting``: traffic from the pod CIDR or the masquerade CIDR to anywhere outside both is
  masqueraded to the address of the interface it leaves by; a masquerade guest's private source is
  rewritten to its pod IP (``masq_snat``) inside the pod network; node-local traffic to a masquerade guest
  (its source is the pod IP itself) is masqueraded to the tap's host address, as KubeVirt shows
  localhost traffic to the guest as coming from its gateway.
- ``prerouting`` and ``output``: the pod IP of a masquerade guest is DNATed to the guest's private
  address, for every port (``masq_all``) or for the listed ports only (``masq_ports``).
- ``input``: new connections to a masquerade pod IP that were not DNATed (an unlisted port) are rejected,
  so the node's own services are not reachable at a VM's address.

Per-VM entries are map elements, not rules: adding and removing a VM is one atomic nft transaction that
touches only that VM's keys, and the rules never change after the node is set up.

Every function takes the node's :class:`NodeNetwork` (which names its network namespace); ``ensure_*``
functions are idempotent and undo their own partial work on failure; ``delete``/``teardown``/``remove``
functions are idempotent and succeed when there is nothing to remove.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Literal

from kubevisor.network import ip, netns, nft
from kubevisor.network.errors import ConfigError

__all__ = [
    "DEFAULT_BRIDGE",
    "DEFAULT_MASQUERADE_CIDR",
    "FAMILY",
    "TABLE",
    "TAP_PREFIX",
    "NodeNetwork",
    "Port",
    "bridge_mac",
    "connect",
    "delete_link",
    "ensure_masquerade",
    "ensure_node",
    "ensure_tap",
    "masquerade_entries",
    "node_ruleset",
    "remove_masquerade",
    "tap_name",
    "teardown_node",
]

DEFAULT_BRIDGE = "kv0"
DEFAULT_MASQUERADE_CIDR = IPv4Network("100.64.0.0/16")
"""Private addresses of masquerade-bound guests (RFC 6598 shared space: rarely used inside clusters)."""
FAMILY = "inet"
TABLE = "kubevisor"
TAP_PREFIX = "tap"
DNAT_PRIORITY = -100
SNAT_PRIORITY = 100
FILTER_PRIORITY = 0


@dataclass(frozen=True)
class Port:
    """A port of a masquerade-bound guest reachable at its pod IP (KubeVirt ``interfaces[].ports``)."""

    port: int
    """Port number."""
    protocol: Literal["tcp", "udp"] = "tcp"
    """Transport protocol (KubeVirt spells it ``TCP``/``UDP``)."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port}: must be between 1 and 65535")
        if self.protocol.lower() not in ("tcp", "udp"):
            raise ConfigError(f"port {self.port}: protocol {self.protocol!r} is not TCP or UDP")
        object.__setattr__(self, "protocol", self.protocol.lower())


@dataclass(frozen=True)
class NodeNetwork:
    """One node's pod network settings."""

    pod_cidr: IPv4Network
    """The node's pod CIDR; its first host address is the bridge's (the guests' gateway)."""
    bridge: str = DEFAULT_BRIDGE
    """The node bridge's name."""
    masquerade_cidr: IPv4Network = DEFAULT_MASQUERADE_CIDR
    """Where masquerade-bound guests' private /30 links come from: four addresses per pod address, so
    it must be at least four times as large as ``pod_cidr``, and must not overlap it."""
    dns: tuple[IPv4Address, ...] = ()
    """DNS servers handed to guests by DHCP."""
    netns: str | None = None
    """The network namespace the node's networking lives in (``None``: this process's)."""

    def __post_init__(self) -> None:
        ip.check_name(self.bridge)
        if self.pod_cidr.prefixlen > 30:
            raise ConfigError(f"pod CIDR {self.pod_cidr}: needs at least a /30")
        if self.masquerade_cidr.num_addresses < 4 * self.pod_cidr.num_addresses:
            raise ConfigError(
                f"masquerade CIDR {self.masquerade_cidr} is too small for pod CIDR {self.pod_cidr}: it needs "
                f"a /{self.pod_cidr.prefixlen - 2} or larger"
            )
        if self.masquerade_cidr.overlaps(self.pod_cidr):
            raise ConfigError(f"masquerade CIDR {self.masquerade_cidr} overlaps pod CIDR {self.pod_cidr}")

    @property
    def gateway(self) -> IPv4Interface:
        """The bridge's address: the pod CIDR's first host, with the pod CIDR's prefix length."""
        return IPv4Interface(f"{self.pod_cidr.network_address + 1}/{self.pod_cidr.prefixlen}")

    def masquerade_link(self, pod_ip: IPv4Address) -> IPv4Network:
        """The private /30 of the masquerade guest holding ``pod_ip``: the host side of its tap is the
        first address, the guest the second. Derived from the pod IP, so it needs no allocator of its own."""
        if pod_ip not in self.pod_cidr:
            raise ConfigError(f"{pod_ip} is not in pod CIDR {self.pod_cidr}")
        offset = int(pod_ip) - int(self.pod_cidr.network_address)
        return IPv4Network(f"{self.masquerade_cidr.network_address + 4 * offset}/30")


def tap_name(uid: str) -> str:
    """The tap device of the VMI with ``uid``: ``tap`` + 12 hex digits of its SHA-256 (15 characters, the
    kernel's limit); stable across agent restarts, so a running VM's tap is found again."""
    return TAP_PREFIX + hashlib.sha256(uid.encode()).hexdigest()[:12]


def bridge_mac(network: NodeNetwork) -> str:
    """A fixed, locally administered MAC for the bridge, so the guests' gateway MAC never changes."""
    digest = hashlib.sha256(f"{network.bridge}/{network.pod_cidr}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


# --- the node ---------------------------------------------------------------------------------------


def _chain(name: str, kind: str, hook: str, priority: int) -> nft.Command:
    return nft.add(
        "chain", family=FAMILY, table=TABLE, name=name, type=kind, hook=hook, prio=priority, policy="accept"
    )


def _rule(chain: str, *expr: Any) -> nft.Command:
    return nft.add("rule", family=FAMILY, table=TABLE, chain=chain, expr=list(expr))


def _dnat_rules(chain: str) -> list[nft.Command]:
    daddr = nft.payload("ip", "daddr")
    by_port = {"concat": [daddr, nft.meta("l4proto"), nft.payload("th", "dport")]}
    return [
        _rule(chain, {"dnat": {"family": "ip", "addr": {"map": {"key": by_port, "data": "@masq_ports"}}}}),
        _rule(chain, {"dnat": {"family": "ip", "addr": {"map": {"key": daddr, "data": "@masq_all"}}}}),
    ]


def node_ruleset(network: NodeNetwork) -> list[nft.Command]:
    """The nft transaction that creates (or resets to the current rules) the ``inet kubevisor`` table;
    the per-VM map elements already there are kept."""
    pod_networks = {"set": [nft.prefix(network.pod_cidr), nft.prefix(network.masquerade_cidr)]}
    saddr, daddr = nft.payload("ip", "saddr"), nft.payload("ip", "daddr")
    commands = [
        nft.add("table", family=FAMILY, name=TABLE),
        nft.add("set", family=FAMILY, table=TABLE, name="masq_ips", type="ipv4_addr"),
        nft.add("map", family=FAMILY, table=TABLE, name="masq_all", type="ipv4_addr", map="ipv4_addr"),
        nft.add(
            "map",
            family=FAMILY,
            table=TABLE,
            name="masq_ports",
            type=["ipv4_addr", "inet_proto", "inet_service"],
            map="ipv4_addr",
        ),
        nft.add("map", family=FAMILY, table=TABLE, name="masq_snat", type="ipv4_addr", map="ipv4_addr"),
        _chain("prerouting", "nat", "prerouting", DNAT_PRIORITY),
        _chain("output", "nat", "output", DNAT_PRIORITY),
        _chain("postrouting", "nat", "postrouting", SNAT_PRIORITY),
        _chain("input", "filter", "input", FILTER_PRIORITY),
    ]
    commands += [
        nft.flush("chain", family=FAMILY, table=TABLE, name=c)
        for c in ("prerouting", "output", "postrouting", "input")
    ]
    commands += _dnat_rules("prerouting") + _dnat_rules("output")
    commands += [
        # leaving the pod network: the node's address
        _rule(
            "postrouting",
            nft.match(saddr, pod_networks),
            nft.match(daddr, pod_networks, "!="),
            {"masquerade": None},
        ),
        # the node itself talking to a masquerade guest (its source is then the guest's pod IP)
        _rule("postrouting", nft.match(saddr, "@masq_ips"), {"masquerade": None}),
        # a masquerade guest inside the pod network: its pod IP
        _rule(
            "postrouting", {"snat": {"family": "ip", "addr": {"map": {"key": saddr, "data": "@masq_snat"}}}}
        ),
        # unlisted ports of a masquerade guest's pod IP are not the node's to answer
        _rule(
            "input",
            nft.match(daddr, "@masq_ips"),
            nft.match({"ct": {"key": "state"}}, "new", "in"),
            {"reject": None},
        ),
    ]
    return commands


async def ensure_node(network: NodeNetwork) -> None:
    """Set up the node's pod network: the bridge (created with a fixed MAC if missing) holding the
    gateway address, IPv4 forwarding, and the nftables table. Idempotent; on failure, what this call
    created is removed again."""
    ns = network.netns
    async with contextlib.AsyncExitStack() as undo:
        existing = await ip.link(network.bridge, netns=ns)
        if existing is None:
            await ip.run(ip.add_bridge_args(network.bridge, mac=bridge_mac(network)), netns=ns)
            undo.push_async_callback(ip.delete_link, network.bridge, netns=ns)
        elif existing.get("linkinfo", {}).get("info_kind") != "bridge":
            raise ConfigError(f"{network.bridge} exists and is not a bridge; choose another bridge name")
        await ip.ensure_address(network.bridge, network.gateway, netns=ns)
        await ip.set_up(network.bridge, netns=ns)
        netns.write_sysctl(ns, "net/ipv4/ip_forward", "1")
        await nft.apply(node_ruleset(network), netns=ns)
        undo.pop_all()


async def teardown_node(network: NodeNetwork) -> None:
    """Remove the nftables table and the bridge. Idempotent. IPv4 forwarding is left as it is."""
    if await nft.table_exists(FAMILY, TABLE, netns=network.netns):
        await nft.apply([nft.delete("table", family=FAMILY, name=TABLE)], netns=network.netns)
    await ip.delete_link(network.bridge, netns=network.netns)


# --- a VM's host-side link ------------------------------------------------------------------------------


async def ensure_tap(name: str, network: NodeNetwork) -> bool:
    """Create the tap device ``name`` unless it exists; whether it was created. A link of that name that
    is not a tap is an error (it belongs to something else)."""
    existing = await ip.link(name, netns=network.netns)
    if existing is None:
        await ip.run(ip.add_tap_args(name), netns=network.netns)
        return True
    info = existing.get("linkinfo", {})
    if info.get("info_kind") != "tun" or info.get("info_data", {}).get("type") != "tap":
        raise ConfigError(f"link {name} exists and is not a tap device; delete it or rename it")
    return False


async def connect(name: str, network: NodeNetwork, *, bridged: bool) -> None:
    """Bring the link ``name`` up, as a port of the node bridge (``bridged``) or routed on its own."""
    existing = await ip.link(name, netns=network.netns)
    if existing is None:
        raise ConfigError(f"link {name} does not exist")
    master = existing.get("master")
    if bridged and master != network.bridge:
        await ip.set_master(name, network.bridge, netns=network.netns)
    elif not bridged and master is not None:
        await ip.run(["link", "set", "dev", name, "nomaster"], netns=network.netns)
    await ip.set_up(name, netns=network.netns)


async def delete_link(name: str, network: NodeNetwork) -> None:
    """Delete the link ``name`` (a tap) if it exists."""
    await ip.delete_link(name, netns=network.netns)


# --- masquerade entries ------------------------------------------------------------------------------


def _elements(obj: dict[str, Any] | None) -> list[Any]:
    return list(obj.get("elem", [])) if obj else []


async def masquerade_entries(network: NodeNetwork, pod_ip: IPv4Address) -> list[nft.Command]:
    """The ``delete element`` commands that would remove every entry of ``pod_ip`` (empty: none)."""
    ns, pod = network.netns, str(pod_ip)
    found: dict[str, list[Any]] = {
        name: _elements(
            await nft.list_object("map" if name != "masq_ips" else "set", FAMILY, TABLE, name, netns=ns)
        )
        for name in ("masq_all", "masq_ports", "masq_snat", "masq_ips")
    }
    keys: dict[str, list[Any]] = {
        "masq_all": [k for k, _ in found["masq_all"] if k == pod],
        "masq_ports": [k for k, _ in found["masq_ports"] if k["concat"][0] == pod],
        "masq_snat": [k for k, v in found["masq_snat"] if v == pod],
        "masq_ips": [k for k in found["masq_ips"] if k == pod],
    }
    return [
        nft.delete("element", family=FAMILY, table=TABLE, name=name, elem=elems)
        for name, elems in keys.items()
        if elems
    ]


async def ensure_masquerade(
    network: NodeNetwork, pod_ip: IPv4Address, guest_ip: IPv4Address, ports: Iterable[Port] = ()
) -> bool:
    """Make ``pod_ip`` lead to ``guest_ip`` (every port, or only ``ports``), in one transaction that
    replaces whatever entries ``pod_ip`` had. Whether ``pod_ip`` had none before."""
    stale = await masquerade_entries(network, pod_ip)
    pod, guest = str(pod_ip), str(guest_ip)
    wanted = sorted(set(ports), key=lambda p: (p.protocol, p.port))
    if wanted:
        dnat = nft.add(
            "element", family=FAMILY, table=TABLE, name="masq_ports",
            elem=[[{"concat": [pod, p.protocol, p.port]}, guest] for p in wanted],
        )  # fmt: skip
    else:
        dnat = nft.add("element", family=FAMILY, table=TABLE, name="masq_all", elem=[[pod, guest]])
    await nft.apply(
        [
            *stale,
            dnat,
            nft.add("element", family=FAMILY, table=TABLE, name="masq_snat", elem=[[guest, pod]]),
            nft.add("element", family=FAMILY, table=TABLE, name="masq_ips", elem=[pod]),
        ],
        netns=network.netns,
    )
    return not stale


async def remove_masquerade(network: NodeNetwork, pod_ip: IPv4Address) -> None:
    """Remove every entry of ``pod_ip``. Idempotent (also when the table is gone)."""
    if not await nft.table_exists(FAMILY, TABLE, netns=network.netns):
        return
    await nft.apply(await masquerade_entries(network, pod_ip), netns=network.netns)
