"""VirtualMachineExport downloads, as KubeVirt's export proxy serves them: the apiserver is the proxy.

KubeVirt: ``status.links.external.volumes[].formats[].url`` points at
``/api/export.kubevirt.io/v1/namespaces/{ns}/{export}/volumes/{volume}/disk.img[.gz]`` on the export proxy,
which forwards to the export's server pod; the request carries the export's token in the header
``x-kubevirt-export-token`` (or a query parameter of that name) and no other credential. Here the same path
is served by the apiserver (TLS with the cluster CA, like every endpoint), which:

1. takes the token from the header or the query (401 without one);
2. reads the export and the token Secret it names (``status.tokenSecretRef``, else ``spec.tokenSecretRef``)
   and compares the Secret's ``token`` key with the one sent in constant time (``hmac.compare_digest``);
   a wrong token, or an export that does not exist in that namespace, is 403 with the same message, so a
   caller without the token learns nothing about which exports exist;
3. refuses an export whose ``status.ttlExpirationTime`` passed (410: the controller is about to delete it),
   one that is not ``Ready`` (503 with ``Retry-After`` and the Ready condition's message), and a volume
   that is not in its links (404);
4. streams the node agent's answer (:mod:`kubevisor.agent.exporting`, mutual TLS as for uploads,
   :mod:`kubevisor.apiserver.uploads`): for a claim (PersistentVolumeClaim or VirtualMachine source) from
   the node of the claim's PersistentVolume, for a VirtualMachineSnapshot from the node that holds its
   content (:data:`~kubevisor.api.snapshot.NODE_LABEL`). The agent's ``Content-Length`` (raw),
   ``Content-Type`` and disk digest headers are passed on; the body is never buffered.

``v1beta1`` in the path is accepted too (KubeVirt's older links).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from kubevisor.api import export as api
from kubevisor.api import snapshot as snapshot_api
from kubevisor.api.registry import Kind, Obj
from kubevisor.apiserver import errors
from kubevisor.apiserver.agentproxy import RETRY_AFTER, agent_base, agent_error, node_of_volume
from kubevisor.apiserver.resources import Objects

__all__ = ["ExportTarget", "parse_path", "proxy_download"]

log = logging.getLogger(__name__)

VERSIONS = ("v1", "v1beta1")
AGENT_CONNECT_TIMEOUT = 10.0
AGENT_READ_TIMEOUT = 3600.0
"""Seconds the agent may take before its first byte (a qcow2 conversion and a digest pass) and between
bytes."""
BATCH = 1 << 20
"""Bytes passed on per write: TLS hands the agent's answer over in 16 KiB records, and each piece costs a
write to the client."""
PASSED_HEADERS = ("content-length", "content-type", "x-kubevisor-disk-sha256", "x-kubevisor-disk-size")


@dataclass(frozen=True)
class ExportTarget:
    """One download: the export, the volume, and the format (from the file name)."""

    namespace: str
    name: str
    volume: str
    format: str

    @property
    def what(self) -> str:
        return f"VirtualMachineExport {self.namespace}/{self.name}"


def parse_path(path: str) -> ExportTarget | None:
    """The download ``path`` names, or None if it is not a download path."""
    segs = path.split("/")[1:]
    if (
        len(segs) != 9
        or segs[:2] != ["api", api.GROUP]
        or segs[2] not in VERSIONS
        or segs[3] != "namespaces"
        or segs[6] != "volumes"
        or not all(segs[4:8])
    ):
        return None
    formats = {file: fmt for fmt, file in api.FILES.items()}
    fmt = formats.get(segs[8])
    return ExportTarget(segs[4], segs[5], segs[7], fmt) if fmt else None


def _token(request: Request, target: ExportTarget) -> str:
    token = request.headers.get(api.TOKEN_HEADER) or request.query_params.get(api.TOKEN_HEADER)
    if not token:
        raise errors.ApiError(
            401,
            "Unauthorized",
            f"a download of {target.what} needs its token: header or query parameter {api.TOKEN_HEADER} "
            "(the 'token' key of the Secret in the export's status.tokenSecretRef)",
        )
    return token


def _refused(target: ExportTarget) -> errors.ApiError:
    return errors.forbidden(
        f"the token does not open {target.what} (or no such export exists): send the 'token' key of the "
        "Secret named in its status.tokenSecretRef"
    )


async def _get(objects: Objects, kind: Kind, namespace: str | None, name: str) -> Obj | None:
    try:
        return await objects.get(kind, namespace, name)
    except errors.ApiError as e:
        if e.code == 404:
            return None
        raise


async def _authenticate(objects: Objects, kinds: dict[str, Kind], target: ExportTarget, token: str) -> Obj:
    """The export, once ``token`` proved to be its token."""
    export = await _get(objects, kinds["export"], target.namespace, target.name)
    if export is None:
        raise _refused(target)
    ref = (export.get("status") or {}).get("tokenSecretRef") or (export.get("spec") or {}).get(
        "tokenSecretRef"
    )
    secret = await _get(objects, kinds["secret"], target.namespace, str(ref)) if ref else None
    encoded = ((secret or {}).get("data") or {}).get(api.TOKEN_KEY)
    try:
        expected = base64.b64decode(str(encoded), validate=True) if encoded else b""
    except (binascii.Error, ValueError):
        expected = b""
    if not expected or not hmac.compare_digest(expected, token.encode()):
        raise _refused(target)
    return export


def _check_ready(export: Obj, target: ExportTarget) -> None:
    status = export.get("status") or {}
    expires = status.get("ttlExpirationTime")
    if expires:
        try:
            moment = datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp()
        except ValueError:
            moment = None
        if moment is not None and moment <= time.time():
            raise errors.ApiError(410, "Gone", f"{target.what} expired at {expires} (spec.ttlDuration)")
    if status.get("phase") != "Ready":
        ready: Obj = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        why = ready.get("message") or "its controller has not processed it yet"
        raise errors.ApiError(
            503,
            "ServiceUnavailable",
            f"{target.what} is {status.get('phase') or 'Pending'}, not Ready: {why}",
            headers={"Retry-After": RETRY_AFTER},
        )
    volumes = ((status.get("links") or {}).get("external") or {}).get("volumes") or []
    if not any(v.get("name") == target.volume for v in volumes):
        names = ", ".join(str(v.get("name")) for v in volumes) or "none"
        raise errors.ApiError(
            404, "NotFound", f"{target.what} has no volume {target.volume} (it has {names})"
        )


def _unavailable(target: ExportTarget, why: str) -> errors.ApiError:
    return errors.ApiError(
        503,
        "ServiceUnavailable",
        f"{target.what}: volume {target.volume} cannot be read now: {why}; retry shortly",
        headers={"Retry-After": RETRY_AFTER},
    )


async def _agent_base(
    objects: Objects, kinds: dict[str, Kind], target: ExportTarget, node_name: str | None
) -> str:
    """``https://host:port`` of the node agent of ``node_name`` (None: the only node)."""
    return await agent_base(
        objects,
        kinds["node"],
        node_name,
        lambda why: _unavailable(target, why),
        no_node="its volume names no node (nodeAffinity)",
    )


async def _agent_url(objects: Objects, kinds: dict[str, Kind], export: Obj, target: ExportTarget) -> str:
    source = (export.get("spec") or {}).get("source") or {}
    ns = quote(target.namespace, safe="")
    query = f"?format={target.format}"
    if source.get("kind") == "VirtualMachineSnapshot":
        snap = await _get(objects, kinds["snapshot"], target.namespace, str(source.get("name")))
        content_name = ((snap or {}).get("status") or {}).get("virtualMachineSnapshotContentName")
        content = (
            await _get(objects, kinds["content"], target.namespace, str(content_name))
            if content_name
            else None
        )
        if content is None:
            raise _unavailable(target, f"VirtualMachineSnapshot {source.get('name')} has no content")
        for backup in (content.get("spec") or {}).get("volumeBackups") or []:
            claim = ((backup.get("persistentVolumeClaim") or {}).get("metadata") or {}).get("name")
            if claim == target.volume:
                volume = str(backup.get("volumeName"))
                break
        else:
            raise errors.ApiError(404, "NotFound", f"{target.what} has no volume {target.volume}")
        node = (content["metadata"].get("labels") or {}).get(snapshot_api.NODE_LABEL)
        base = await _agent_base(objects, kinds, target, str(node) if node else None)
        path = (
            f"/v1/namespaces/{ns}/virtualmachinesnapshotcontents/{quote(str(content_name), safe='')}"
            f"/volumes/{quote(volume, safe='')}/export"
        )
        return base + path + query
    pvc = await _get(objects, kinds["pvc"], target.namespace, target.volume)
    if pvc is None:
        raise _unavailable(target, f"PersistentVolumeClaim {target.volume} does not exist")
    volume_name = (pvc.get("spec") or {}).get("volumeName")
    pv = await _get(objects, kinds["pv"], None, str(volume_name)) if volume_name else None
    base = await _agent_base(objects, kinds, target, node_of_volume(pv, pvc))
    path = f"/v1/namespaces/{ns}/persistentvolumeclaims/{quote(target.volume, safe='')}/export"
    return base + path + query


async def proxy_download(
    request: Request,
    target: ExportTarget,
    *,
    objects: Objects,
    kinds: dict[str, Kind],
    agent_tls: ssl.SSLContext | None,
) -> Response:
    """Check the token and the export, then stream the volume from its node agent (see the module doc).
    ``kinds``: ``export``, ``secret``, ``pvc``, ``pv``, ``node``, ``snapshot`` and ``content``."""
    if request.method != "GET":
        raise errors.method_not_allowed()
    token = _token(request, target)
    export = await _authenticate(objects, kinds, target, token)
    _check_ready(export, target)
    url = await _agent_url(objects, kinds, export, target)
    if agent_tls is None:
        raise _unavailable(target, "this apiserver has no client certificate for node agents")
    timeout = httpx.Timeout(AGENT_READ_TIMEOUT, connect=AGENT_CONNECT_TIMEOUT)
    http = httpx.AsyncClient(verify=agent_tls, timeout=timeout, trust_env=False)
    try:
        response = await http.send(http.build_request("GET", url), stream=True)
    except httpx.HTTPError as e:
        await http.aclose()
        raise _unavailable(target, f"its node agent is unreachable ({e or type(e).__name__})") from e
    if response.status_code >= 300:
        try:
            body = await response.aread()
        finally:
            await response.aclose()
            await http.aclose()
        raise agent_error(response.status_code, body, lambda why: _unavailable(target, why))

    async def body_stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw(BATCH):
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()
            await http.aclose()

    headers = {h: response.headers[h] for h in PASSED_HEADERS if h in response.headers}
    filename = api.FILES[target.format]
    headers["content-disposition"] = f'attachment; filename="{filename}"'
    log.info("download of %s volume %s (%s) started", target.what, target.volume, target.format)
    return StreamingResponse(body_stream(), headers=headers)
