"""Websocket streams of the API (a VMI's console, VNC, port-forward), as virtctl opens them.

One call, :func:`open_stream`, opens ``wss://<server><path>`` with the same credentials as the
:class:`~kubevisor.client.requesting.Client` (the kubeconfig's CA, client certificate or bearer token),
offering KubeVirt's ``plain.kubevirt.io`` subprotocol: data travels as binary frames both ways. A refused
upgrade raises the :class:`~kubevisor.client.errors.ApiError` of the server's ``Status`` answer (403, 404,
409, 503...), like any other request.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from kubevisor.client import errors
from kubevisor.client.kubeconfig import Config

__all__ = ["SUBPROTOCOL", "open_stream"]

SUBPROTOCOL = "plain.kubevirt.io"
MAX_FRAME = 1 << 20


async def open_stream(config: Config, path: str, *, timeout: float = 10.0) -> ClientConnection:
    """The websocket at ``path`` of ``config``'s server; close it when done (``async with`` works)."""
    server = config.server.rstrip("/")
    if server.startswith("https://"):
        url = "wss://" + server.removeprefix("https://") + path
    else:
        url = "ws://" + server.removeprefix("http://") + path
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    options: dict[str, Any] = {}
    if url.startswith("wss://"):
        options["ssl"] = config.ssl_context()
        if config.tls_server_name:
            options["server_hostname"] = config.tls_server_name
    try:
        return await connect(
            url,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            additional_headers=headers,
            open_timeout=timeout,
            max_size=MAX_FRAME,
            compression=None,
            proxy=None,
            ping_interval=None,
            **options,
        )
    except InvalidStatus as e:
        response = e.response
        raise errors.from_response(response.status_code, bytes(response.body or b"")) from e
    except (OSError, TimeoutError, WebSocketException) as e:
        raise errors.TransportError(f"{url}: {e or type(e).__name__}") from e
