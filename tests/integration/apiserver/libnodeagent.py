"""A real node agent server (no guest, no VMI runtime unless given) for apiserver integration tests that
proxy to the node (uploads, exports, VMI subresources), its Node, and claims bound to PersistentVolumes
of that node made by hand (the tests run the binder, not the provisioner)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kubevisor.agent.serving import AgentServer, ExportHandlers, VmiRuntime, server_ssl_context
from kubevisor.api.registry import Obj
from kubevisor.apiserver.pki import ensure_agent_serving
from kubevisor.client import Client
from kubevisor.platform import Platform

NODE = "node-a"


@contextlib.asynccontextmanager
async def serving_agent(
    plat: Platform,
    *,
    runtime: VmiRuntime | None = None,
    vmis: Any = None,
    uploads: Callable[[Request], Awaitable[Response]] | None = None,
    exports: ExportHandlers | None = None,
) -> AsyncIterator[AgentServer]:
    """The agent server of :data:`NODE` on a free loopback port, with the serving certificate the
    platform's CA issues for it; stopped at the end."""
    assert plat.pki is not None
    cert, key = ensure_agent_serving(plat.pki, NODE, ["127.0.0.1"])
    server = AgentServer(
        runtime,  # type: ignore[arg-type]  # None: no VMIs here
        vmis,
        host="127.0.0.1",
        port=0,
        context=server_ssl_context(cert, key, plat.pki.ca_cert),
        uploads=uploads,
        exports=exports,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def register_node(client: Client, port: int, *, hostname: bool = False) -> None:
    """The Node :data:`NODE`, its agent at 127.0.0.1:``port`` (and a ``Hostname`` address if asked)."""
    nodes = client.resource("v1", "nodes")
    node = await nodes.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    addresses = [{"type": "InternalIP", "address": "127.0.0.1"}]
    if hostname:
        addresses.append({"type": "Hostname", "address": NODE})
    node["status"] = {"addresses": addresses, "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}
    await nodes.update_status(node)


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """``check()``'s first true value, polled every 50 ms; an AssertionError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def make_volume(
    client: Client,
    pv: str,
    directory: Path,
    claim: str,
    *,
    namespace: str = "default",
    size: str = "64Mi",
    annotations: dict[str, str] | None = None,
) -> None:
    """The PersistentVolume ``pv`` (class ``manual``) at ``directory`` on :data:`NODE`, pre-bound to
    ``namespace/claim``; the directory is made."""
    await asyncio.to_thread(directory.mkdir)
    await client.resource("v1", "persistentvolumes").create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "annotations": annotations} if annotations else {"name": pv},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "hostPath": {"path": str(directory)},
                "claimRef": {"namespace": namespace, "name": claim},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}
                ]}]}},
            },
        }
    )  # fmt: skip


async def bound_claim(
    client: Client, name: str, *, namespace: str = "default", annotations: dict[str, str] | None = None
) -> Obj:
    """The claim ``name`` (class ``manual``, 64Mi) once the binder has bound it."""
    pvcs = client.resource("v1", "persistentvolumeclaims")
    metadata: Obj = {"name": name, "annotations": annotations} if annotations else {"name": name}
    await pvcs.create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata,
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "resources": {"requests": {"storage": "64Mi"}},
            },
        },
        namespace,
    )

    async def bound() -> Obj | None:
        claim = await pvcs.get(name, namespace)
        return claim if claim.get("status", {}).get("phase") == "Bound" else None

    found: Obj = await eventually(bound, f"claim {name} bound")
    return found
