"""libnet: network namespaces for tests, and what tests run inside them.

Traffic rule of these machines: a test sends traffic only inside namespaces it created (or to
127.0.0.0/8), and only from inside them. So every network a test builds lives in namespaces named
``kvtest-<random>-<role>``, created by :class:`Namespaces` and deleted when the test ends (processes
started in them are killed first), also when it fails. Requests are made from inside a namespace with
sockets created there (:func:`kubevisor.network.portforward.open_connection`), never from the root one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from kubevisor.network import ip, portforward
from kubevisor.testing.console import Console
from kubevisor.virt import process, qemucmd
from kubevisor.virt.domain import Domain
from kubevisor.virt.qmp import QmpError, Session
from tests.e2e import libvm

T = TypeVar("T")

WHOAMI_SERVER = r"""
import http.server, sys
name, port = sys.argv[1], int(sys.argv[2])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name} {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""
"""An HTTP server answering every GET with ``<name> <client address>``: shows what source a NAT left."""

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc hook: configure the lease and record what the server offered.
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    printf 'ip=%s\\nmask=%s\\nrouter=%s\\ndns=%s\\nserverid=%s\\nhostname=%s\\nlease=%s\\n' \\
      "$ip" "$mask" "$router" "$dns" "$serverid" "$hostname" "$lease" > {lease_file}
    ;;
esac
exit 0
"""


async def wait_until(check: Callable[[], Awaitable[T | None]], *, timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something other than ``None``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


class Namespaces:
    """Network namespaces for one test; ``async with`` deletes them (and kills what runs in them)."""

    def __init__(self) -> None:
        self.prefix = f"kvtest-{secrets.token_hex(3)}"
        self.names: list[str] = []
        self._procs: list[asyncio.subprocess.Process] = []

    async def add(self, role: str) -> str:
        """A new namespace ``kvtest-<random>-<role>`` with its loopback up."""
        name = f"{self.prefix}-{role}"
        await _run(["ip", "netns", "add", name])
        self.names.append(name)
        await ip.set_up("lo", netns=name)
        return name

    async def spawn(self, netns: str, argv: Sequence[str], *, log: Path) -> asyncio.subprocess.Process:
        """Start ``argv`` inside ``netns`` (output to ``log``); killed when the namespaces are deleted."""
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", netns, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
        self._procs.append(proc)
        return proc

    async def run(self, netns: str, argv: Sequence[str], *, timeout: float = 30) -> str:
        """Run ``argv`` inside ``netns`` to completion; its output. Fails on a non-zero exit."""
        return await _run(["ip", "netns", "exec", netns, *argv], timeout=timeout)

    async def veth(self, a: tuple[str, str], b: tuple[str, str], *, b_mac: str | None = None) -> None:
        """A veth pair from ``(netns, name)`` ``a`` to ``b``, both ends up."""
        await ip.run(ip.add_veth_args(a[1], b[1], peer_netns=b[0], peer_mac=b_mac), netns=a[0])
        await ip.set_up(a[1], netns=a[0])
        await ip.set_up(b[1], netns=b[0])

    async def close(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for name in reversed(self.names):
            await _run(["ip", "netns", "del", name])
        self.names.clear()

    async def __aenter__(self) -> Namespaces:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _run(argv: Sequence[str], *, timeout: float = 30) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{shlex.join(argv)}: no exit after {timeout:g} s") from None
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{shlex.join(argv)}: exit {proc.returncode}: {text}"
    return text


async def start_whoami(namespaces: Namespaces, netns: str, name: str, port: int, log_dir: Path) -> None:
    """Run :data:`WHOAMI_SERVER` in ``netns`` on ``port`` and wait until it answers on 127.0.0.1."""
    await namespaces.spawn(
        netns, [sys.executable, "-c", WHOAMI_SERVER, name, str(port)], log=log_dir / f"{name}.log"
    )
    await wait_until(lambda: try_get(netns, "127.0.0.1", port), timeout=20, what=f"{name}'s HTTP server")


async def http_get(netns: str, host: str, port: int, *, timeout: float = 10) -> str:
    """GET ``http://host:port/`` from inside ``netns``; the response body (status 200 required)."""
    reader, writer = await portforward.open_connection(host, port, netns=netns, timeout=timeout)
    try:
        writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    assert b" 200 " in status, f"GET http://{host}:{port}/ from {netns}: {status!r}"
    return body.decode()


async def try_get(netns: str, host: str, port: int) -> str | None:
    """Like :func:`http_get`, but ``None`` when the connection fails (for polling)."""
    try:
        return await http_get(netns, host, port, timeout=2)
    except (OSError, TimeoutError):
        return None


async def udhcpc(
    namespaces: Namespaces, netns: str, interface: str, work: Path, *, timeout: float = 30
) -> dict[str, str]:
    """Run busybox ``udhcpc`` on ``interface`` in ``netns`` until it has a lease (configured on the
    interface, default route included); what the server handed out (``ip``, ``mask``, ``router``, ...)."""
    lease_file = work / f"lease-{netns}-{interface}"
    script = work / f"udhcpc-{netns}-{interface}.sh"
    script.write_text(UDHCPC_SCRIPT.replace("{lease_file}", shlex.quote(str(lease_file))))
    script.chmod(0o755)
    argv = [
        "busybox",
        "udhcpc",
        "-f",
        "-q",
        "-n",
        "-i",
        interface,
        "-t",
        "20",
        "-T",
        "1",
        "-A",
        "1",
        "-s",
        str(script),
    ]
    await namespaces.run(netns, argv, timeout=timeout)
    return dict(line.split("=", 1) for line in lease_file.read_text().splitlines())


@asynccontextmanager
async def running_in(netns: str, domain: Domain) -> AsyncIterator[libvm.RunningVm]:
    """:func:`libvm.running`, with QEMU started inside ``netns`` (``ip netns exec`` execs QEMU in place,
    so the pid is QEMU's): QEMU opens its tap device by name in its own network namespace."""
    domain.run.directory.mkdir(parents=True, exist_ok=True)
    async with process.Reverter() as revert:
        pid = process.spawn(
            ["ip", "netns", "exec", netns, *qemucmd.command(domain)], log_path=domain.run.qemu_log
        )
        revert.add(lambda: process.kill(pid))
        qmp = Session(domain.run.qmp)
        try:
            await qmp.connect(timeout=30, alive=lambda: process.is_running(pid))
        except QmpError as e:
            raise AssertionError(f"{e}\nQEMU said:\n{libvm.qemu_log(domain)}") from e
        revert.add(qmp.close)
        console = Console(domain.run.serial)
        await console.connect()
        revert.add(console.close)
        await qmp.cont()
        vm = libvm.RunningVm(domain, pid, qmp, console, time.monotonic())
        revert.success()
    try:
        yield vm
    finally:
        await console.close()
        await qmp.close()
        process.kill(pid)
