"""TCP port forwarding from the node to a guest: a local listener (``127.0.0.1`` by default) whose every
connection is spliced to ``guest_ip:port``.

This is the node end of ``kubevisor port-forward vmi/NAME LOCAL:REMOTE``: the agent runs it (or calls
:func:`open_connection` for one stream it proxies from the API server) in the node's network namespace,
where the guest's address is routable (see :mod:`kubevisor.network.bindings`: the target is
``Attachment.guest_ip``). Both the listening socket and each outgoing socket are created inside
``netns``, so the forwarder works from a process that is not itself in that namespace.

Each connection is copied both ways until both sides have finished; a half-close (EOF) is passed on as a
half-close, so request/response protocols that shut down their sending side still get their answer.
Closing the forwarder stops listening and drops the open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from types import TracebackType

from kubevisor.network import netns as _netns

__all__ = ["BUFFER", "Forwarder", "open_connection", "splice"]

log = logging.getLogger(__name__)

BUFFER = 64 * 1024
CONNECT_TIMEOUT = 10.0


async def open_connection(
    host: str, port: int, *, netns: str | None = None, timeout: float = CONNECT_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``host:port`` made from inside ``netns``."""
    sock = _netns.socket(netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=BUFFER)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Copy ``a`` to ``b`` and ``b`` to ``a`` until both directions end; then close both."""
    try:
        await asyncio.gather(_copy(a[0], b[1]), _copy(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
        for writer in (a[1], b[1]):
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class Forwarder:
    """Forwards ``listen_host:listen_port`` (in ``netns``) to ``target_host:target_port``.

    ``async with Forwarder(...) as fwd:`` listens on entry (``fwd.port`` is the bound port, useful with
    ``listen_port=0``) and stops on exit."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_port: int = 0,
        listen_host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        """Where connections go."""
        self.listen = (listen_host, listen_port)
        """Where it listens (the port is 0 until started, if it was 0)."""
        self.netns = netns
        """The network namespace of both ends."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The listening port."""
        return self.listen[1]

    async def start(self) -> None:
        """Start listening."""
        sock = _netns.socket(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.listen)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.listen = (self.listen[0], sock.getsockname()[1])
        self._server = await asyncio.start_server(self._handle, sock=sock, limit=BUFFER)
        log.info("port-forward %s:%d -> %s:%d (netns %s)", *self.listen, *self.target, self.netns)

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()  # (from Python 3.12 on, this waits for the connections too)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                upstream = await open_connection(*self.target, netns=self.netns)
            except (OSError, TimeoutError) as e:
                log.warning("port-forward to %s:%d failed: %s", *self.target, e)
                return
            await splice((reader, writer), upstream)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
