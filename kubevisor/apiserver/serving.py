"""Serving the API over TLS with uvicorn, passing the verified client certificate to the app.

uvicorn does not put the peer certificate in the ASGI scope, so the HTTP protocol is subclassed to add
it as the ASGI TLS extension (``scope["extensions"]["tls"]``). The TLS context verifies client
certificates against the cluster CA when one is presented (CERT_OPTIONAL): bearer-token clients need none.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request as WebSocketRequest

from kubevisor.apiserver.app import ApiServer


class _TLSProtocol(HttpToolsProtocol):
    """HTTP protocol that exposes the verified client certificate to the app."""

    _client_der: bytes | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._client_der = der or None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._client_der is not None:
            scope: Any = self.scope
            scope["extensions"] = {"tls": {"client_cert_der": self._client_der}}


class _TLSWebSocketProtocol(WebSocketsSansIOProtocol):
    """Websocket protocol (console, VNC, port-forward streams) that exposes the client certificate too."""

    _client_der: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._client_der = der or None

    def handle_connect(self, event: WebSocketRequest) -> None:
        super().handle_connect(event)  # the app's task is created, not yet run: the scope can still change
        scope: Any = getattr(self, "scope", None)
        if scope is not None and self._client_der is not None:
            scope.setdefault("extensions", {})["tls"] = {"client_cert_der": self._client_der}


@dataclass
class Listener:
    """A bound, listening socket: bind first, then serve, so callers know the port before serving."""

    sock: socket.socket

    @classmethod
    def bind(cls, host: str, port: int) -> Listener:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when it is set, and
        # without it a response's header and body records wait out the client's 40 ms delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        return cls(sock)

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port


class Server:
    """uvicorn serving an :class:`ApiServer` on a listener with TLS."""

    def __init__(self, app: ApiServer, listener: Listener, context: ssl.SSLContext) -> None:
        self.app = app
        self.listener = listener
        config = uvicorn.Config(
            app,
            http=_TLSProtocol,
            ws=_TLSWebSocketProtocol,
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=60,
            timeout_graceful_shutdown=5,
            limit_concurrency=None,
            backlog=1024,
            ssl_context_factory=lambda _config, _default: context,
        )
        config.load()
        self.config = config
        self.server = uvicorn.Server(config)

    async def serve(self) -> None:
        """Serve until :meth:`shutdown`; the app must already be started."""
        await self.server.serve(sockets=[self.listener.sock])

    def shutdown(self) -> None:
        self.server.should_exit = True

    async def wait_started(self, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not self.server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
                await asyncio.sleep(0.01)
