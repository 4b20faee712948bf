"""Operating inside a network namespace without moving the whole process into it.

Why: a node of a multi-node test (and every test of this package) lives in its own network namespace,
while the agent's process and its asyncio loop stay where they are. Two mechanisms cover everything the
package does:

- host tools run with a prefix: ``ip -n NAME ...`` and ``ip netns exec NAME nft ...``;
- sockets (the DHCP server, port-forward listeners and their outgoing connections) are *created* by a
  short-lived thread that has entered the namespace with ``setns(2)``. A socket belongs for life to the
  namespace it was created in, whichever thread then uses it, so the event loop serves it as any other.

Linux switches the network namespace per thread, so entering one in a helper thread never changes the
namespace of the loop's thread. ``None`` everywhere means "the namespace this process is in".
"""

from __future__ import annotations

import ctypes
import os
import socket as _socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kubevisor.network.errors import NetnsError

__all__ = ["RUN_DIR", "call", "exec_prefix", "path", "socket", "write_sysctl"]

RUN_DIR = Path("/run/netns")
"""Where ``ip netns add`` keeps the named namespaces (bind mounts of ``/proc/<pid>/ns/net``)."""
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def path(name: str) -> Path:
    """The file that names the namespace ``name``."""
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"network namespace name {name!r} is not a plain file name")
    return RUN_DIR / name


def exec_prefix(netns: str | None) -> list[str]:
    """The argv prefix that runs a command inside ``netns`` (empty for the current namespace)."""
    if netns is None:
        return []
    path(netns)  # validates the name
    return ["ip", "netns", "exec", netns]


def _enter(netns: str) -> None:
    try:
        fd = os.open(path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NetnsError(f"network namespace {netns} does not exist (ip netns add {netns})") from e
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetnsError(f"cannot enter network namespace {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def call(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` run by a thread inside ``netns`` (by this thread when ``netns`` is ``None``).

    Blocks until it returns; meant for quick work (creating a socket, writing a sysctl)."""
    if netns is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            _enter(netns)
            result.append(fn())
        except BaseException as e:
            error.append(e)

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def socket(
    netns: str | None, family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = 0
) -> _socket.socket:
    """A new socket that lives in ``netns``."""
    return call(netns, lambda: _socket.socket(family, type, proto))


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Set the sysctl ``key`` (``net.ipv4.ip_forward`` or ``net/ipv4/ip_forward``) inside ``netns``."""
    file = Path("/proc/sys") / key.replace(".", "/")

    def write() -> None:
        file.write_text(value)

    call(netns, write)
