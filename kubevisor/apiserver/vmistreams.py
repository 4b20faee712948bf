"""The VirtualMachineInstance subresources of KubeVirt's ``subresources.kubevirt.io`` API that only the
VMI's node can serve: console, vnc, portforward (websockets), pause, unpause (PUT), guestosinfo (GET).

As virt-api does with virt-handler, the apiserver authorises the user (RBAC, like any request), finds the
VMI's node (``status.nodeName``) and that node's agent (the Node's ``InternalIP`` address and
``status.daemonEndpoints.kubeletEndpoint.Port``), and proxies the request to it over TLS, presenting its
own client certificate; the agent trusts nobody else (:mod:`kubevisor.agent.serving`).

Paths: ``/apis/subresources.kubevirt.io/{v1,v1alpha3}/namespaces/{ns}/virtualmachineinstances/{name}/{sub}``
with ``{sub}`` one of :data:`STREAMS` (``portforward/{port}[/{protocol}]``), :data:`ACTIONS` or
:data:`QUERIES`. RBAC, as KubeVirt's roles grant them: ``get`` on ``virtualmachineinstances/console``,
``/vnc``, ``/portforward``, ``/guestosinfo``; ``update`` on ``virtualmachineinstances/pause`` and
``/unpause``.

Websockets: the client may offer the ``plain.kubevirt.io`` subprotocol (virtctl does), which is accepted;
data travels as binary frames both ways (text frames from the client are passed on as their UTF-8
bytes). A request that cannot be served is refused before the upgrade with a ``Status`` answer: the VMI
does not exist (404), it is not running (409, naming the VMI), its node's agent cannot be reached (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from kubevisor.api.registry import Kind, Obj
from kubevisor.apiserver import errors
from kubevisor.apiserver.resources import Objects

__all__ = [
    "ACTIONS",
    "QUERIES",
    "STREAMS",
    "SUBPROTOCOL",
    "SUBRESOURCES",
    "AgentEndpoint",
    "Request",
    "action",
    "parse",
    "proxy_websocket",
    "query",
    "resource_list",
    "verb",
]

log = logging.getLogger(__name__)

STREAMS = ("console", "vnc", "portforward")
ACTIONS = ("pause", "unpause")
QUERIES = ("guestosinfo",)
SUBRESOURCES = (*STREAMS, *ACTIONS, *QUERIES)
SUBPROTOCOL = "plain.kubevirt.io"
AGENT_TIMEOUT = 10.0
MAX_FRAME = 1 << 20


@dataclass(frozen=True)
class Request:
    """A parsed VMI subresource path."""

    namespace: str
    name: str
    subresource: str
    """One of :data:`SUBRESOURCES`."""
    rest: tuple[str, ...] = ()
    """For portforward: ``(port,)`` or ``(port, protocol)``."""

    @property
    def what(self) -> str:
        return f"VirtualMachineInstance {self.namespace}/{self.name}"

    @property
    def agent_path(self) -> str:
        tail = "/".join((self.subresource, *self.rest))
        return f"/v1/namespaces/{self.namespace}/virtualmachineinstances/{self.name}/{tail}"


def parse(segs: list[str]) -> Request | None:
    """``namespaces/{ns}/virtualmachineinstances/{name}/{sub}[/...]`` as a :class:`Request`, or None."""
    if len(segs) < 5 or segs[0] != "namespaces" or segs[2] != "virtualmachineinstances":
        return None
    namespace, name, sub, rest = segs[1], segs[3], segs[4], tuple(segs[5:])
    if sub not in SUBRESOURCES or not namespace or not name:
        return None
    if sub == "portforward":
        if not 1 <= len(rest) <= 2 or not rest[0].isdigit() or not 0 < int(rest[0]) < 65536:
            return None
        if len(rest) == 2 and rest[1].lower() not in ("tcp", "udp"):
            return None
    elif rest:
        return None
    return Request(namespace, name, sub, rest)


def verb(req: Request) -> str:
    """The RBAC verb KubeVirt's roles use for this subresource."""
    return "update" if req.subresource in ACTIONS else "get"


@dataclass(frozen=True)
class AgentEndpoint:
    """Where the VMI's node agent serves it."""

    url: str
    """``https://host:port`` plus the agent path of the request."""
    node: str


async def _endpoint(objects: Objects, vmi_kind: Kind, node_kind: Kind, req: Request) -> AgentEndpoint:
    vmi = await objects.get(vmi_kind, req.namespace, req.name)  # 404 names the VMI
    status = vmi.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase != "Running" or vmi["metadata"].get("deletionTimestamp"):
        why = "is being deleted" if phase == "Running" else f"is not running (phase {phase})"
        raise errors.ApiError(
            409, "Conflict", f"{req.what} {why}; start it first (its VirtualMachine's start subresource)"
        )
    node_name = str(status.get("nodeName") or "")
    if not node_name:
        raise errors.ApiError(409, "Conflict", f"{req.what} has no node (status.nodeName is empty)")
    try:
        node = await objects.get(node_kind, None, node_name)
    except errors.ApiError as e:
        raise _unavailable(req, node_name, "the Node does not exist") from e
    node_status: Obj = node.get("status") or {}
    addresses = {a.get("type"): a.get("address") for a in node_status.get("addresses") or []}
    host = addresses.get("InternalIP")
    port = ((node_status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    if not host or not isinstance(port, int) or not port:
        raise _unavailable(req, node_name, "the node agent publishes no server (InternalIP, kubeletEndpoint)")
    host_part = f"[{host}]" if ":" in str(host) else str(host)
    return AgentEndpoint(f"https://{host_part}:{port}{req.agent_path}", node_name)


def _unavailable(req: Request, node: str, why: str) -> errors.ApiError:
    return errors.ApiError(
        503, "ServiceUnavailable", f"{req.what}: the node agent of node {node} is unreachable: {why}"
    )


def _agent_error(status_code: int, body: bytes, req: Request, node: str) -> errors.ApiError:
    """The agent's Status answer as an :class:`errors.ApiError` (its message already names the VMI)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("kind") == "Status" and data.get("message"):
        return errors.ApiError(status_code, str(data.get("reason") or "InternalError"), str(data["message"]))
    return _unavailable(req, node, f"it answered HTTP {status_code}")


def _no_agent_credentials(req: Request) -> errors.ApiError:
    return errors.ApiError(
        503,
        "ServiceUnavailable",
        f"{req.what}: this apiserver has no client certificate for node agents (it runs without a PKI)",
    )


async def action(
    objects: Objects,
    *,
    vmi_kind: Kind,
    node_kind: Kind,
    req: Request,
    agent_tls: ssl.SSLContext | None,
    body: Obj,
) -> None:
    """pause or unpause: QMP ``stop``/``cont`` on the VMI's node; raises 404/409/503 as virt-api does."""
    endpoint = await _endpoint(objects, vmi_kind, node_kind, req)
    if body.get("dryRun"):
        return
    await _call(endpoint, req, "PUT", agent_tls)


async def query(
    objects: Objects, *, vmi_kind: Kind, node_kind: Kind, req: Request, agent_tls: ssl.SSLContext | None
) -> bytes:
    """guestosinfo: the agent's JSON answer."""
    endpoint = await _endpoint(objects, vmi_kind, node_kind, req)
    return await _call(endpoint, req, "GET", agent_tls)


async def _call(
    endpoint: AgentEndpoint, req: Request, method: str, agent_tls: ssl.SSLContext | None
) -> bytes:
    if agent_tls is None:
        raise _no_agent_credentials(req)
    try:
        async with httpx.AsyncClient(verify=agent_tls, timeout=AGENT_TIMEOUT, trust_env=False) as http:
            response = await http.request(method, endpoint.url)
    except httpx.HTTPError as e:
        raise _unavailable(req, endpoint.node, str(e) or type(e).__name__) from e
    if response.status_code >= 300:
        raise _agent_error(response.status_code, response.content, req, endpoint.node)
    return response.content


async def _connect_agent(
    endpoint: AgentEndpoint, req: Request, agent_tls: ssl.SSLContext
) -> ClientConnection:
    try:
        return await connect(
            endpoint.url.replace("https://", "wss://", 1),
            ssl=agent_tls,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=AGENT_TIMEOUT,
            max_size=MAX_FRAME,
            ping_interval=None,
            compression=None,
            proxy=None,  # node agents are reached directly, never through $https_proxy
        )
    except InvalidStatus as e:
        raise _agent_error(e.response.status_code, bytes(e.response.body or b""), req, endpoint.node) from e
    except (OSError, TimeoutError, WebSocketException) as e:
        raise _unavailable(req, endpoint.node, str(e) or type(e).__name__) from e


async def proxy_websocket(
    ws: WebSocket,
    objects: Objects,
    *,
    vmi_kind: Kind,
    node_kind: Kind,
    req: Request,
    agent_tls: ssl.SSLContext | None,
) -> None:
    """Connect to the agent, then accept ``ws`` and copy frames both ways until one side closes. Errors
    before the upgrade raise :class:`errors.ApiError` (for the caller to answer as a denial)."""
    endpoint = await _endpoint(objects, vmi_kind, node_kind, req)
    if agent_tls is None:
        raise _no_agent_credentials(req)
    agent = await _connect_agent(endpoint, req, agent_tls)
    try:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        await _splice(ws, agent)
    finally:
        await agent.close()
        with contextlib.suppress(Exception):
            await ws.close()


async def _splice(ws: WebSocket, agent: ClientConnection) -> None:
    async def up() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data: Any = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            await agent.send(data)

    async def down() -> None:
        async for message in agent:
            await ws.send_bytes(message if isinstance(message, bytes) else message.encode())

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(
                asyncio.CancelledError, ConnectionClosed, WebSocketDisconnect, RuntimeError, OSError
            ):
                await task


def resource_list(version: str, vm_actions: tuple[str, ...]) -> bytes:
    """The APIResourceList virt-api serves for ``subresources.kubevirt.io/{version}``: every subresource
    as ``{plural}/{subresource}``, with the verb RBAC checks for it."""
    resources: list[Obj] = []
    for sub in SUBRESOURCES:
        resources.append(
            {
                "name": f"virtualmachineinstances/{sub}",
                "singularName": "",
                "namespaced": True,
                "kind": "VirtualMachineInstance",
                "verbs": ["update"] if sub in ACTIONS else ["get"],
            }
        )
    for sub in vm_actions:
        resources.append(
            {
                "name": f"virtualmachines/{sub}",
                "singularName": "",
                "namespaced": True,
                "kind": "VirtualMachine",
                "verbs": ["update"],
            }
        )
    return orjson.dumps(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"subresources.kubevirt.io/{version}",
            "resources": resources,
        }
    )
