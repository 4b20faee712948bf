"""nftables' ``nft``: commands as JSON objects (libnftables' JSON schema, ``man libnftables-json``).

Why JSON and not the ``nft`` language: a batch of commands is data built with dicts, never a string
assembled from names, so no quoting rules apply; ``nft -j -f -`` applies the whole batch as one atomic
transaction (all of it or nothing), and ``nft -j list`` answers in the same schema. The command runs as
``[ip netns exec NETNS] nft -j -f -`` with the batch on stdin.

Builders here are generic (table, chain, map, element, rule expressions); what kubevisor puts in its table
is in :mod:`kubevisor.network.podnet`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from ipaddress import IPv4Network
from typing import Any

from kubevisor.network import _exec
from kubevisor.network.errors import CommandError
from kubevisor.network.netns import exec_prefix

__all__ = [
    "Command",
    "add",
    "apply",
    "argv",
    "delete",
    "flush",
    "list_object",
    "match",
    "meta",
    "payload",
    "prefix",
    "table_exists",
]

Command = dict[str, Any]
"""One command of a batch, e.g. ``{"add": {"table": {"family": "inet", "name": "kubevisor"}}}``."""


def argv(args: Sequence[str], *, netns: str | None = None) -> list[str]:
    """``[ip netns exec NETNS] nft -j ARGS``."""
    return [*exec_prefix(netns), "nft", "-j", *args]


def add(kind: str, **spec: Any) -> Command:
    """``add <kind>``: creates it, or leaves an identical existing one alone."""
    return {"add": {kind: spec}}


def delete(kind: str, **spec: Any) -> Command:
    """``delete <kind>``: fails the whole batch when it does not exist."""
    return {"delete": {kind: spec}}


def flush(kind: str, **spec: Any) -> Command:
    """``flush <kind>``: removes the rules of a chain (or elements of a set), keeps the object."""
    return {"flush": {kind: spec}}


def payload(protocol: str, field: str) -> dict[str, Any]:
    """A packet header field, e.g. ``payload("ip", "saddr")``."""
    return {"payload": {"protocol": protocol, "field": field}}


def meta(key: str) -> dict[str, Any]:
    """Packet metadata, e.g. ``meta("oifname")``."""
    return {"meta": {"key": key}}


def prefix(network: IPv4Network) -> dict[str, Any]:
    """An address prefix operand."""
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    """A match expression: ``left op right``."""
    return {"match": {"op": op, "left": left, "right": right}}


async def apply(commands: Sequence[Command], *, netns: str | None = None) -> None:
    """Apply ``commands`` as one transaction."""
    if not commands:
        return
    batch = json.dumps({"nftables": list(commands)}).encode()
    await _exec.run(argv(["-f", "-"], netns=netns), stdin=batch)


async def list_object(
    kind: str, family: str, table: str, name: str | None = None, *, netns: str | None = None
) -> dict[str, Any] | None:
    """``nft -j list <kind> <family> <table> [<name>]``: the object, or ``None`` when it does not exist."""
    args = ["list", kind, family, table, *([name] if name else [])]
    try:
        out = await _exec.run(argv(args, netns=netns))
    except CommandError as e:
        if "No such file or directory" in e.stderr:
            return None
        raise
    for item in json.loads(out).get("nftables", []):
        if kind in item and (name is None or item[kind].get("name") == name):
            found: dict[str, Any] = item[kind]
            return found
    return None


async def table_exists(family: str, table: str, *, netns: str | None = None) -> bool:
    """Whether the table exists."""
    return await list_object("table", family, table, netns=netns) is not None
