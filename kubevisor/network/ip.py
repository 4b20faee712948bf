"""iproute2's ``ip``: argument lists for the link and address operations the pod network needs.

Why ``ip`` and not ``pyroute2``: iproute2 is on every Debian host already (no extra dependency to keep
in step with the kernel), ``ip -n NAME`` enters a network namespace by itself, ``-json`` gives output
that parses without scraping, and a failed step prints the exact command an operator can rerun by hand.
Each call costs one ``fork``/``exec`` (about a millisecond); the agent changes links only when a VM
starts or stops, so that cost never matters.

Builders (``*_args``) are pure and return the arguments after ``ip``; the ``async`` functions run them
in a namespace and are idempotent where the name says ``ensure``/``delete``.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Interface
from typing import Any

from kubevisor.network import _exec
from kubevisor.network.errors import CommandError, ConfigError

__all__ = [
    "MAX_NAME",
    "add_bridge_args",
    "add_tap_args",
    "add_veth_args",
    "addresses",
    "argv",
    "check_name",
    "delete_address",
    "delete_link",
    "ensure_address",
    "link",
    "run",
    "set_master",
    "set_up",
]

MAX_NAME = 15
"""Longest interface name the kernel accepts (IFNAMSIZ - 1)."""


def check_name(name: str) -> str:
    """``name`` if the kernel accepts it as an interface name; :class:`ConfigError` otherwise."""
    if not 0 < len(name) <= MAX_NAME or any(c in name for c in "/: \t\n") or name in (".", ".."):
        raise ConfigError(f"interface name {name!r}: 1 to {MAX_NAME} characters, no '/', ':' or spaces")
    return name


def argv(args: list[str], *, netns: str | None = None, as_json: bool = False) -> list[str]:
    """The full argument list for ``ip [-n NETNS] [-json] ARGS``."""
    return ["ip", *(["-n", netns] if netns else []), *(["-json"] if as_json else []), *args]


async def run(args: list[str], *, netns: str | None = None) -> None:
    """Run ``ip ARGS`` in ``netns``."""
    await _exec.run(argv(args, netns=netns))


async def _query(args: list[str], *, netns: str | None) -> Any:
    out = await _exec.run(argv(args, netns=netns, as_json=True))
    return json.loads(out) if out.strip() else []


def add_bridge_args(name: str, *, mac: str | None = None) -> list[str]:
    """A Linux bridge without STP that forwards as soon as a port comes up; a fixed ``mac`` keeps the
    gateway's MAC stable when ports come and go (a bridge otherwise takes the lowest port MAC)."""
    return [
        "link", "add", check_name(name), *(["address", mac] if mac else []),
        "type", "bridge", "stp_state", "0", "forward_delay", "0",
    ]  # fmt: skip


def add_tap_args(name: str) -> list[str]:
    """A persistent tap device (it stays when the process that opens it exits, until deleted)."""
    return ["tuntap", "add", "dev", check_name(name), "mode", "tap"]


def add_veth_args(
    name: str, peer: str, *, peer_netns: str | None = None, peer_mac: str | None = None
) -> list[str]:
    """A veth pair ``name`` <-> ``peer``; the peer may go straight into another namespace."""
    peer_opts = [*(["netns", peer_netns] if peer_netns else []), *(["address", peer_mac] if peer_mac else [])]
    return ["link", "add", check_name(name), "type", "veth", "peer", "name", check_name(peer), *peer_opts]


async def link(name: str, *, netns: str | None = None) -> dict[str, Any] | None:
    """``ip -details -json link show NAME``: the link's attributes, or ``None`` when it does not exist."""
    try:
        found = await _query(["-details", "link", "show", "dev", check_name(name)], netns=netns)
    except CommandError as e:
        if "does not exist" in e.stderr or "Cannot find device" in e.stderr:
            return None
        raise
    return found[0] if found else None


async def set_up(name: str, *, netns: str | None = None) -> None:
    """Bring ``name`` up."""
    await run(["link", "set", "dev", check_name(name), "up"], netns=netns)


async def set_master(name: str, master: str, *, netns: str | None = None) -> None:
    """Enslave ``name`` to the bridge ``master``."""
    await run(["link", "set", "dev", check_name(name), "master", check_name(master)], netns=netns)


async def delete_link(name: str, *, netns: str | None = None) -> bool:
    """Delete ``name`` if it exists; whether it did."""
    if await link(name, netns=netns) is None:
        return False
    try:
        await run(["link", "del", "dev", name], netns=netns)
    except CommandError:
        if await link(name, netns=netns) is not None:
            raise
        return False  # deleted meanwhile (e.g. a veth whose peer went away)
    return True


async def addresses(name: str, *, netns: str | None = None) -> list[IPv4Interface]:
    """The IPv4 addresses on ``name``, primary first."""
    found = await _query(["-4", "addr", "show", "dev", check_name(name)], netns=netns)
    return [
        IPv4Interface(f"{a['local']}/{a['prefixlen']}")
        for entry in found
        for a in entry.get("addr_info", [])
        if a.get("family") == "inet"
    ]


async def ensure_address(name: str, address: IPv4Interface, *, netns: str | None = None) -> bool:
    """Put ``address`` on ``name`` unless it is there; whether it was added."""
    if address in await addresses(name, netns=netns):
        return False
    await run(["addr", "replace", str(address), "dev", check_name(name)], netns=netns)
    return True


async def delete_address(name: str, address: IPv4Interface, *, netns: str | None = None) -> bool:
    """Remove ``address`` from ``name`` if the link exists and has it; whether it did."""
    if await link(name, netns=netns) is None or address not in await addresses(name, netns=netns):
        return False
    await run(["addr", "del", str(address), "dev", name], netns=netns)
    return True
