"""The node agent's HTTPS server: the streams and actions of this node's VMIs (KubeVirt's virt-handler
console server), for the apiserver to proxy ``subresources.kubevirt.io`` requests to.

Why it exists: only the node that runs a guest can reach its serial console, VNC and QMP sockets (in the
run directory) and its address. The apiserver authorises the user; this server trusts the apiserver and
nobody else: TLS with the cluster CA, a client certificate is required (``CERT_REQUIRED``), and a
connection whose certificate is not the apiserver's (CN :data:`APISERVER_CLIENT_NAME` by default) is
dropped right after the handshake, before any request is read.

Endpoints (``{vmi}`` = ``/v1/namespaces/{namespace}/virtualmachineinstances/{name}``):

==============================  =========  =============================================================
path                            method     what
==============================  =========  =============================================================
``{vmi}/console``               websocket  binary frames <-> the serial console socket (one client)
``{vmi}/vnc``                   websocket  binary frames <-> QEMU's VNC socket (RFB)
``{vmi}/portforward/{port}``    websocket  binary frames <-> TCP ``port`` of the guest (its pod network
                                           address, else ``status.interfaces[0].ipAddress``)
``{vmi}/pause``, ``unpause``    PUT        QMP ``stop`` / ``cont``; the VMI controller then writes the
                                           ``Paused`` condition (it compares QEMU's run state with it)
``{vmi}/guestosinfo``           GET        the guest agent's OS info, 409 while no guest agent answers
==============================  =========  =============================================================

``PUT /v1/namespaces/{namespace}/persistentvolumeclaims/{name}/upload``: an image upload into a claim
whose volume is on this node (:mod:`kubevisor.agent.uploading`).
``GET .../persistentvolumeclaims/{name}/export`` and
``GET /v1/namespaces/{namespace}/virtualmachinesnapshotcontents/{name}/volumes/{volume}/export``:
VirtualMachineExport downloads (:mod:`kubevisor.agent.exporting`).

Errors are ``Status`` bodies (code, reason, message naming the VMI) that the apiserver passes on; for a
websocket they are the HTTP answer to the upgrade request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kubevisor.agent.refusals import Refusal
from kubevisor.agent.vmis import Guest
from kubevisor.api.registry import Obj
from kubevisor.client import errors as client_errors
from kubevisor.network import portforward
from kubevisor.virt.qmp import QmpError

__all__ = ["APISERVER_CLIENT_NAME", "AgentServer", "StreamError", "VmiRuntime", "server_ssl_context"]

log = logging.getLogger(__name__)

APISERVER_CLIENT_NAME = "kubevisor-apiserver-agent-client"
"""CN of the apiserver's client certificate for node agents (``kubevisor.apiserver.pki`` issues it)."""
BUFFER = 64 * 1024
SOCKET_CONNECT_TIMEOUT = 5.0
SUBPROTOCOL = "plain.kubevirt.io"

GuestOsInfo = Callable[[str], Awaitable[Obj | None]]
"""``namespace/name`` -> the guest agent's ``guestosinfo``, None when no guest agent is connected."""


class VmiRuntime(Protocol):
    """What the server needs of the agent's VMI controller (:class:`kubevisor.agent.vmis.VmiController`)."""

    @property
    def guests(self) -> Mapping[str, Guest]: ...

    def run_dir(self, namespace: str, name: str) -> Path: ...

    def enqueue(self, key: str) -> None: ...

    def guest_address(self, key: str) -> tuple[str | None, str] | None: ...


class ExportHandlers(Protocol):
    """What the server needs of the export sender (:class:`kubevisor.agent.exporting.ExportSender`)."""

    async def claim(self, request: Request) -> Response: ...

    async def snapshot(self, request: Request) -> Response: ...


class StreamError(Refusal):
    """A stream or action request the server refuses."""


def server_ssl_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """TLS server context: ``cert``/``key``, client certificates required and verified by ``client_ca``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _common_name(cert: Mapping[str, Any]) -> str | None:
    for rdn in cert.get("subject") or ():
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    return None


def _protocol_for(allowed: frozenset[str]) -> type[HttpToolsProtocol]:
    class _ApiServerOnly(HttpToolsProtocol):
        """Drops a connection whose (CA-verified) client certificate is not one of ``allowed``."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            ssl_object = transport.get_extra_info("ssl_object")
            peer = ssl_object.getpeercert() if ssl_object is not None else None
            name = _common_name(peer) if peer else None
            if name not in allowed:
                log.warning("node agent server: refused a client presenting %r", name)
                transport.abort()
                return
            super().connection_made(transport)

    return _ApiServerOnly


@dataclass(frozen=True)
class _Target:
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def what(self) -> str:
        return f"VirtualMachineInstance {self.key}"


async def _pipe(ws: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy binary frames to ``writer`` and what ``reader`` reads back as binary frames, until either side
    ends; then close both."""

    async def down() -> None:
        while data := await reader.read(BUFFER):
            await ws.send_bytes(data)

    async def up() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        with contextlib.suppress(Exception):
            await ws.close()


class AgentServer:
    """The agent's HTTPS server (``await start()``, ``port``, ``await stop()``)."""

    def __init__(
        self,
        runtime: VmiRuntime,
        vmis: Any,
        *,
        host: str,
        port: int,
        context: ssl.SSLContext,
        allowed_clients: tuple[str, ...] = (APISERVER_CLIENT_NAME,),
        guest_os_info: GuestOsInfo | None = None,
        netns: str | None = None,
        uploads: Callable[[Request], Awaitable[Response]] | None = None,
        exports: ExportHandlers | None = None,
    ) -> None:
        self.runtime = runtime
        self.vmis = vmis
        """A :class:`kubevisor.client.requesting.ResourceClient` of VMIs (portforward reads the address)."""
        self.host = host
        self.requested_port = port
        self.context = context
        self.allowed_clients = frozenset(allowed_clients)
        self.guest_os_info = guest_os_info
        """The hook of the guest agent; None: no guest agent support, guestosinfo answers 409."""
        self.netns = netns
        """The network namespace the VMIs' addresses are reached from (the pod network's); None: ours."""
        self.uploads = uploads
        """Receives image uploads (:class:`kubevisor.agent.uploading.UploadReceiver`); None: 503."""
        self.exports = exports
        """Serves VirtualMachineExport downloads (:class:`kubevisor.agent.exporting.ExportSender`);
        None: 503."""
        self.port = 0
        self._consoles: set[str] = set()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        vmi = "/v1/namespaces/{namespace}/virtualmachineinstances/{name}"
        self.app = Starlette(
            routes=[
                Route("/healthz", self._healthz),
                Route(vmi + "/pause", self._pause, methods=["PUT"]),
                Route(vmi + "/unpause", self._unpause, methods=["PUT"]),
                Route(vmi + "/guestosinfo", self._guestosinfo, methods=["GET"]),
                WebSocketRoute(vmi + "/console", self._console),
                WebSocketRoute(vmi + "/vnc", self._vnc),
                WebSocketRoute(vmi + "/portforward/{port:int}", self._portforward),
                WebSocketRoute(vmi + "/portforward/{port:int}/{protocol}", self._portforward),
                Route(
                    "/v1/namespaces/{namespace}/persistentvolumeclaims/{name}/upload",
                    self._upload,
                    methods=["PUT"],
                ),
                Route(
                    "/v1/namespaces/{namespace}/persistentvolumeclaims/{name}/export",
                    self._export_claim,
                    methods=["GET"],
                ),
                Route(
                    "/v1/namespaces/{namespace}/virtualmachinesnapshotcontents/{name}/volumes/{volume}/export",
                    self._export_snapshot,
                    methods=["GET"],
                ),
            ]
        )

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self.requested_port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http=_protocol_for(self.allowed_clients),
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws_ping_interval=None,
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=2,
            ssl_context_factory=lambda _config, _default: self.context,
        )
        config.load()
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="agent-server")
        async with asyncio.timeout(30):
            while not self._server.started:
                if self._task.done():
                    await self._task
                    raise RuntimeError("the node agent server stopped while starting")
                await asyncio.sleep(0.01)
        log.info("node agent server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None:
            server.should_exit = True
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _target(params: Mapping[str, Any]) -> _Target:
        return _Target(str(params["namespace"]), str(params["name"]))

    def _guest(self, target: _Target) -> Guest:
        guest = self.runtime.guests.get(target.key)
        if guest is None or not guest.alive():
            raise StreamError(409, "Conflict", f"{target.what} is not running on this node")
        return guest

    async def _qmp(self, target: _Target, command: str) -> str:
        guest = self._guest(target)
        if guest.qmp is None:
            raise StreamError(
                503, "ServiceUnavailable", f"{target.what}: QEMU's QMP socket is not connected; retry later"
            )
        try:
            state = await guest.qmp.status()
            if command == "stop":
                if state == "paused":
                    raise StreamError(409, "Conflict", f"{target.what} is already paused")
                await guest.qmp.stop()
            else:
                if state != "paused":
                    raise StreamError(409, "Conflict", f"{target.what} is not paused")
                await guest.qmp.cont()
        except QmpError as e:
            raise StreamError(500, "InternalError", f"{target.what}: QMP {command} failed: {e}") from e
        self.runtime.enqueue(target.key)  # the controller writes the Paused condition
        return state

    async def _deny(self, ws: WebSocket, err: StreamError) -> None:
        await ws.send_denial_response(err.response())

    @staticmethod
    async def _open_unix(
        path: Path, target: _Target, what: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=BUFFER), SOCKET_CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as e:
            raise StreamError(
                409 if isinstance(e, FileNotFoundError) else 503,
                "Conflict" if isinstance(e, FileNotFoundError) else "ServiceUnavailable",
                f"{target.what} has no {what} (cannot connect to {path.name}: {e})",
            ) from e

    async def _stream(
        self,
        ws: WebSocket,
        opener: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
    ) -> None:
        try:
            reader, writer = await opener()
        except StreamError as err:
            await self._deny(ws, err)
            return
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in ws.scope.get("subprotocols", []) else None
        try:
            await ws.accept(subprotocol=subprotocol)
        except BaseException:
            writer.close()
            raise
        await _pipe(ws, reader, writer)

    # --- endpoints ----------------------------------------------------------------------------------

    async def _upload(self, request: Request) -> Response:
        if self.uploads is None:
            return StreamError(503, "ServiceUnavailable", "this node agent receives no uploads").response()
        return await self.uploads(request)

    async def _export_claim(self, request: Request) -> Response:
        if self.exports is None:
            return StreamError(503, "ServiceUnavailable", "this node agent serves no exports").response()
        return await self.exports.claim(request)

    async def _export_snapshot(self, request: Request) -> Response:
        if self.exports is None:
            return StreamError(503, "ServiceUnavailable", "this node agent serves no exports").response()
        return await self.exports.snapshot(request)

    async def _healthz(self, request: Request) -> Response:
        return Response(b"ok", media_type="text/plain")

    async def _pause(self, request: Request) -> Response:
        target = self._target(request.path_params)
        try:
            await self._qmp(target, "stop")
        except StreamError as err:
            return err.response()
        return Response(b"", 202)

    async def _unpause(self, request: Request) -> Response:
        target = self._target(request.path_params)
        try:
            await self._qmp(target, "cont")
        except StreamError as err:
            return err.response()
        return Response(b"", 202)

    async def _guestosinfo(self, request: Request) -> Response:
        target = self._target(request.path_params)
        try:
            self._guest(target)
            info = await self.guest_os_info(target.key) if self.guest_os_info is not None else None
            if info is None:
                raise StreamError(409, "Conflict", f"{target.what}: guest agent is not connected")
        except StreamError as err:
            return err.response()
        return Response(orjson.dumps(info), media_type="application/json")

    async def _console(self, ws: WebSocket) -> None:
        target = self._target(ws.path_params)
        if target.key in self._consoles:
            await self._deny(
                ws,
                StreamError(
                    409, "Conflict", f"{target.what}: its console is already open in another session"
                ),
            )
            return
        self._consoles.add(target.key)
        try:

            async def opener() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                guest = self._guest(target)
                return await self._open_unix(guest.run.serial, target, "serial console")

            await self._stream(ws, opener)
        finally:
            self._consoles.discard(target.key)

    async def _vnc(self, ws: WebSocket) -> None:
        target = self._target(ws.path_params)

        async def opener() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            guest = self._guest(target)
            return await self._open_unix(guest.run.vnc, target, "graphics device (VNC)")

        await self._stream(ws, opener)

    async def _portforward(self, ws: WebSocket) -> None:
        target = self._target(ws.path_params)
        port = int(ws.path_params["port"])
        protocol = str(ws.path_params.get("protocol") or "tcp").lower()

        async def opener() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            if protocol != "tcp":
                raise StreamError(
                    400, "BadRequest", f"portforward: protocol {protocol!r} is not supported; use tcp"
                )
            if not 0 < port < 65536:
                raise StreamError(400, "BadRequest", f"portforward: port {port} is out of range 1-65535")
            self._guest(target)
            direct = self.runtime.guest_address(target.key)  # on the pod network: every port of the guest
            netns, address = direct if direct is not None else (self.netns, await self._address(target))
            try:
                return await portforward.open_connection(
                    address, port, netns=netns, timeout=SOCKET_CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as e:
                raise StreamError(
                    503, "ServiceUnavailable", f"{target.what}: cannot connect to {address}:{port}: {e}"
                ) from e

        await self._stream(ws, opener)

    async def _address(self, target: _Target) -> str:
        """The VMI's address: ``status.interfaces[0].ipAddress``."""
        try:
            vmi = await self.vmis.get(target.name, target.namespace)
        except client_errors.NotFoundError as e:
            raise StreamError(404, "NotFound", f"{target.what} not found") from e
        interfaces = (vmi.get("status") or {}).get("interfaces") or []
        address = interfaces[0].get("ipAddress") if interfaces else None
        if not address:
            raise StreamError(
                409,
                "Conflict",
                f"{target.what} has no IP address yet (status.interfaces[0].ipAddress); "
                "port forwarding needs a pod network interface",
            )
        return str(address)
