"""Pod addresses of one node: which owner (``namespace/name``) holds which address of the node's pod CIDR.

Invariants:

- An address is held by at most one owner, and an owner holds at most one address: asking again for the
  same owner returns the same address (allocation is idempotent), so a retried or repeated VM start
  never takes a second address.
- The network address, the broadcast address and the gateway (the first host, ``.1``, which the node
  bridge holds) are never handed out, nor any ``reserved`` address.
- The state is a JSON file under the node's data directory. Every change is read-modify-write under an
  exclusive ``flock`` (so several processes or threads can share one file) and written atomically
  (temporary file, ``fsync``, ``rename``, ``fsync`` of the directory): a crash leaves the old or the new
  file, never a torn one, and the allocations survive agent restarts.
- Addresses are handed out round robin from the one allocated last, as CNI's host-local IPAM does: a
  released address is not reused at once, so a stale ARP or conntrack entry for a deleted VM does not
  reach the next one.

File format (``version`` 1)::

    {"version": 1, "cidr": "10.244.0.0/24", "last": "10.244.0.7",
     "allocations": {"default/vm-a": "10.244.0.2", "default/vm-b": "10.244.0.7"}}

The calls block for the time of a small file write; an asyncio caller may run them in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from kubevisor.network.errors import AddressesExhausted, ConfigError, IpamError

__all__ = ["FORMAT_VERSION", "Ipam"]

FORMAT_VERSION = 1


@dataclass
class _State:
    last: IPv4Address | None = None
    allocations: dict[str, IPv4Address] = field(default_factory=dict)


class Ipam:
    """The address allocations of one pod CIDR, kept in ``path``."""

    def __init__(self, path: Path, cidr: IPv4Network, *, reserved: Iterable[IPv4Address] = ()) -> None:
        if cidr.prefixlen > 30:
            raise ConfigError(f"pod CIDR {cidr}: needs at least a /30 (a gateway and one pod address)")
        self.path = path
        """The JSON file."""
        self.cidr = cidr
        """The node's pod CIDR."""
        self.gateway = cidr.network_address + 1
        """The first host address: the node bridge's, never allocated."""
        self._reserved = frozenset({self.gateway, *reserved})
        self._lock = threading.Lock()

    # --- queries -------------------------------------------------------------------------------------

    def get(self, owner: str) -> IPv4Address | None:
        """The address ``owner`` holds, if any."""
        with self._locked(write=False) as state:
            return state.allocations.get(owner)

    def allocations(self) -> dict[str, IPv4Address]:
        """Owner -> address, for every allocation."""
        with self._locked(write=False) as state:
            return dict(state.allocations)

    def owner_of(self, address: IPv4Address) -> str | None:
        """Who holds ``address``, if anyone."""
        return next((o for o, a in self.allocations().items() if a == address), None)

    # --- changes -------------------------------------------------------------------------------------

    def allocate(self, owner: str) -> IPv4Address:
        """The address of ``owner``: the one it holds, else the next free one (persisted before return)."""
        _check_owner(owner)
        with self._locked(write=True) as state:
            held = state.allocations.get(owner)
            if held is not None:
                return held
            address = self._next_free(state)
            state.allocations[owner] = address
            state.last = address
            return address

    def release(self, owner: str) -> IPv4Address | None:
        """Free the address of ``owner``; the address it held, or ``None`` when it held none."""
        with self._locked(write=True) as state:
            return state.allocations.pop(owner, None)

    # --- internals -----------------------------------------------------------------------------------

    def _next_free(self, state: _State) -> IPv4Address:
        used = set(state.allocations.values()) | self._reserved
        first = int(self.cidr.network_address) + 1
        last = int(self.cidr.broadcast_address) - 1
        size = last - first + 1
        start = int(state.last) + 1 if state.last is not None and state.last in self.cidr else first
        for step in range(size):
            candidate = IPv4Address(first + (start - first + step) % size)
            if candidate not in used:
                return candidate
        raise AddressesExhausted(
            f"pod CIDR {self.cidr} ({self.path}): all {size - len(self._reserved)} pod addresses are "
            "allocated; delete VMs or give the node a larger pod CIDR"
        )

    @contextmanager
    def _locked(self, *, write: bool) -> Iterator[_State]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._load()
                before = _encode(self.cidr, state)
                yield state
                if write and _encode(self.cidr, state) != before:
                    self._store(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> _State:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return _State()
        try:
            data = json.loads(raw)
            return self._decode(data)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IpamError(
                f"address store {self.path} is not valid ({e}); restore it from a backup, or remove it "
                "after stopping every VM on this node"
            ) from e

    def _decode(self, data: Any) -> _State:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown format version {data.get('version')!r}")
        cidr = IPv4Network(data["cidr"])
        allocations = {str(o): IPv4Address(a) for o, a in dict(data["allocations"]).items()}
        if cidr != self.cidr and allocations:
            raise IpamError(
                f"address store {self.path} holds addresses of pod CIDR {cidr}, but the node's pod CIDR "
                f"is {self.cidr}; delete the node's VMs before changing its pod CIDR"
            )
        seen: dict[IPv4Address, str] = {}
        for owner, address in allocations.items():
            if address not in self.cidr:
                raise ValueError(f"{owner}: {address} is outside {self.cidr}")
            if address in seen:
                raise ValueError(f"{address} is held by both {seen[address]} and {owner}")
            seen[address] = owner
        last = data.get("last")
        return _State(IPv4Address(last) if last else None, allocations)

    def _store(self, state: _State) -> None:
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_encode(self.cidr, state))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _encode(cidr: IPv4Network, state: _State) -> str:
    data = {
        "version": FORMAT_VERSION,
        "cidr": str(cidr),
        "last": str(state.last) if state.last is not None else None,
        "allocations": {o: str(a) for o, a in sorted(state.allocations.items())},
    }
    return json.dumps(data, indent=1) + "\n"


def _check_owner(owner: str) -> None:
    namespace, _, name = owner.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"IPAM owner {owner!r}: expected namespace/name")
