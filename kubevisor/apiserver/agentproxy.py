"""What the apiserver's proxies to node agents share (uploads, :mod:`kubevisor.apiserver.uploads`; export
downloads, :mod:`kubevisor.apiserver.exports`): which node holds a claim's volume, where that node's agent
serves (``status.addresses`` ``InternalIP`` and ``status.daemonEndpoints.kubeletEndpoint.Port``), and an
agent's error answer turned into the apiserver's.

Each proxy words its own 503: the functions take ``unavailable``, which makes the proxy's "cannot now,
retry" error (with ``Retry-After``) from a reason."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from kubevisor.api.registry import Kind, Obj
from kubevisor.apiserver import errors
from kubevisor.apiserver.resources import Filter, Objects

__all__ = ["RETRY_AFTER", "Unavailable", "agent_base", "agent_error", "node_of_volume"]

RETRY_AFTER = "2"
"""Seconds a client waits before retrying a proxied request answered 503."""
SELECTED_NODE = "volume.kubernetes.io/selected-node"
HOSTNAME_LABEL = "kubernetes.io/hostname"

Unavailable = Callable[[str], errors.ApiError]
"""The proxy's 503 for a reason."""


def node_of_volume(pv: Obj | None, pvc: Obj) -> str | None:
    """The node holding the volume: the PersistentVolume's hostname node affinity, else the claim's
    selected node; None when neither says."""
    terms = ((((pv or {}).get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get(
        "nodeSelectorTerms"
    ) or []
    for term in terms:
        for expr in term.get("matchExpressions") or []:
            values = expr.get("values") or []
            if expr.get("key") == HOSTNAME_LABEL and expr.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    selected = (pvc["metadata"].get("annotations") or {}).get(SELECTED_NODE)
    return str(selected) if selected else None


async def agent_base(
    objects: Objects, node_kind: Kind, node_name: str | None, unavailable: Unavailable, *, no_node: str
) -> str:
    """``https://host:port`` of the node agent of ``node_name``; None: the cluster's only node
    (``unavailable(no_node)`` when there are several or none)."""
    if node_name is None:
        nodes = (await objects.list(node_kind, None, Filter(None, None))).items
        if len(nodes) != 1:
            raise unavailable(no_node)
        node: Obj = nodes[0]
    else:
        try:
            node = await objects.get(node_kind, None, node_name)
        except errors.ApiError as e:
            if e.code == 404:
                raise unavailable(f"its node {node_name} does not exist") from e
            raise
    status: Obj = node.get("status") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    host = addresses.get("InternalIP")
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    if not host or not isinstance(port, int) or not port:
        raise unavailable(f"the agent of node {node['metadata']['name']} publishes no server")
    host_part = f"[{host}]" if ":" in str(host) else str(host)
    return f"https://{host_part}:{port}"


def agent_error(code: int, body: bytes, unavailable: Unavailable) -> errors.ApiError:
    """The apiserver's answer to an agent's error answer ``code``: the agent's Status as it is (with
    ``Retry-After`` on a 503), else ``unavailable(...)`` naming the HTTP code."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("kind") == "Status" and data.get("message"):
        headers = {"Retry-After": RETRY_AFTER} if code == 503 else None
        return errors.ApiError(
            code, str(data.get("reason") or "InternalError"), str(data["message"]), headers=headers
        )
    return unavailable(f"its node agent answered HTTP {code}")
