"""Uploads into claims, as CDI's upload proxy serves them: the apiserver is the upload proxy.

CDI: the client asks the apiserver for an ``UploadTokenRequest`` (RBAC: ``create`` on
``uploadtokenrequests`` in the namespace), then sends the image to ``cdi-uploadproxy`` at
``/v1beta1/upload`` with ``Authorization: Bearer <token>``; the proxy checks the token and forwards the
body to the claim's upload server pod. Here the token is an ES256 JWT of the cluster's token key
(:class:`~kubevisor.apiserver.pki.TokenIssuer`) for the audience :data:`TOKEN_AUDIENCE` only, so it is no
API credential, binding namespace and claim (``extra``) for :data:`TOKEN_SECONDS`; the body is streamed,
never buffered, to the node agent that holds the claim's volume (mutual TLS, as console and VNC are
proxied, :mod:`kubevisor.apiserver.vmistreams`), which imports it (:mod:`kubevisor.agent.uploading`).

Paths (POST or PUT; the body is the image; optional ``Content-Digest: sha-256=:<base64>:`` (RFC 9530),
verified end to end by the agent):

- ``/v1beta1/upload`` and ``/v1beta1/upload-async`` (and ``v1alpha1``): CDI's upload proxy paths; the
  token says which claim. ``upload-async`` is answered like ``upload``, once the image is written.
- ``/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/persistentvolumeclaims/{pvc}/upload``: the same,
  with the claim in the path; a token for another claim is refused (403).

Answers: 401 without a valid token; 403 for a token of another claim; 404 no such claim; 400 a claim
that is no upload target; 409 an upload that already succeeded; 503 with ``Retry-After`` while the
claim is not bound or its node's agent cannot take it yet ("not ready": the client retries); then what the
agent answers (200 with the import's result, 400 for a bad image or checksum, 413 too large).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from starlette.requests import Request
from starlette.responses import Response

from kubevisor.api import cdi, upload
from kubevisor.api.registry import Kind, Obj
from kubevisor.apiserver import errors
from kubevisor.apiserver.agentproxy import RETRY_AFTER, agent_base, agent_error, node_of_volume
from kubevisor.apiserver.auth import User
from kubevisor.apiserver.pki import TokenIssuer
from kubevisor.apiserver.resources import Objects

__all__ = [
    "PROXY_PATHS",
    "TOKEN_AUDIENCE",
    "TOKEN_SECONDS",
    "UploadTarget",
    "issue_token",
    "parse_path",
    "proxy_upload",
]

log = logging.getLogger(__name__)

TOKEN_AUDIENCE = "upload.cdi.kubevirt.io"
"""The only audience of upload tokens: they authenticate nothing but an upload."""
TOKEN_SECONDS = 300
"""Lifetime of an upload token (CDI's: 5 minutes); the transfer may outlast it."""
PROXY_PATHS = frozenset(
    f"/{version}/{path}" for version in ("v1beta1", "v1alpha1") for path in ("upload", "upload-async")
)
AGENT_CONNECT_TIMEOUT = 10.0
AGENT_RESULT_TIMEOUT = 3600.0
"""Seconds the agent may take between bytes, and to convert after the last one."""
BATCH = 1 << 20
FORWARDED_HEADERS = ("content-length", "content-digest", "content-type")


@dataclass(frozen=True)
class UploadTarget:
    """The claim an upload request names (in its path), or None for the upload proxy paths."""

    namespace: str
    pvc: str

    @property
    def what(self) -> str:
        return f"PersistentVolumeClaim {self.namespace}/{self.pvc}"

    @property
    def agent_path(self) -> str:
        return f"/v1/namespaces/{self.namespace}/persistentvolumeclaims/{self.pvc}/upload"


def parse_path(path: str) -> tuple[bool, UploadTarget | None]:
    """(whether ``path`` is an upload path, the claim it names if any)."""
    if path in PROXY_PATHS:
        return True, None
    segs = [s for s in path.split("/") if s]
    if (
        len(segs) == 8
        and segs[:3] == ["apis", upload.GROUP, upload.VERSION]
        and segs[3] == "namespaces"
        and segs[5] == "persistentvolumeclaims"
        and segs[7] in ("upload", "upload-async")
        and segs[4]
        and segs[6]
    ):
        return True, UploadTarget(segs[4], segs[6])
    return False, None


def issue_token(tokens: TokenIssuer, user: User, namespace: str, body: Obj) -> Obj:
    """The UploadTokenRequest ``body`` answered: ``status.token`` for ``spec.pvcName`` in ``namespace``."""
    pvc = str((body.get("spec") or {}).get("pvcName") or "")
    if not pvc:
        raise errors.ApiError(
            422,
            "Invalid",
            "UploadTokenRequest is invalid: spec.pvcName: Required value: name the claim to upload into",
        )
    token, _ = tokens.issue(
        username=user.name,
        uid=user.uid,
        groups=list(user.groups),
        audiences=[TOKEN_AUDIENCE],
        expiration_seconds=TOKEN_SECONDS,
        extra={"namespace": namespace, "pvc": pvc},
    )
    meta = dict(body.get("metadata") or {})
    meta["namespace"] = namespace
    meta.setdefault("creationTimestamp", None)
    return {
        "apiVersion": f"{upload.GROUP}/{upload.VERSION}",
        "kind": "UploadTokenRequest",
        "metadata": meta,
        "spec": {"pvcName": pvc},
        "status": {"token": token},
    }


def _token_target(request: Request, tokens: TokenIssuer) -> UploadTarget:
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise errors.ApiError(
            401, "Unauthorized", "an upload needs 'Authorization: Bearer <token>' (an UploadTokenRequest's)"
        )
    claims = tokens.verify(auth[7:].strip(), audiences=[TOKEN_AUDIENCE])
    namespace, pvc = (claims.extra.get("namespace"), claims.extra.get("pvc")) if claims else (None, None)
    if not namespace or not pvc:
        raise errors.ApiError(
            401, "Unauthorized", "the upload token is invalid or expired; request a new UploadTokenRequest"
        )
    return UploadTarget(namespace, pvc)


def _unavailable(target: UploadTarget, why: str) -> errors.ApiError:
    return errors.ApiError(
        503,
        "ServiceUnavailable",
        f"{target.what} is not ready for an upload: {why}; retry shortly",
        headers={"Retry-After": RETRY_AFTER},
    )


async def _agent_url(objects: Objects, kinds: dict[str, Kind], target: UploadTarget) -> str:
    try:
        pvc = await objects.get(kinds["pvc"], target.namespace, target.pvc)
    except errors.ApiError as e:
        if e.code == 404:
            raise errors.ApiError(
                404, "NotFound", f"{target.what} not found; create it (or its DataVolume) first"
            ) from e
        raise
    annotations = pvc["metadata"].get("annotations") or {}
    if upload.UPLOAD_TARGET not in annotations:
        raise errors.bad_request(
            f"{target.what} is not an upload target: create a DataVolume with source.upload, or annotate "
            f"the claim {upload.UPLOAD_TARGET}"
        )
    if annotations.get(cdi.POD_PHASE_ANNOTATION) == "Succeeded":
        raise errors.ApiError(
            409, "Conflict", f"{target.what} already holds an uploaded image; delete and re-create it"
        )
    if pvc["metadata"].get("deletionTimestamp"):
        raise errors.ApiError(409, "Conflict", f"{target.what} is being deleted")
    volume = (pvc.get("spec") or {}).get("volumeName")
    phase = (pvc.get("status") or {}).get("phase") or "Pending"
    if phase != "Bound" or not volume:
        raise _unavailable(target, f"the claim is {phase}, not Bound")
    try:
        pv: Obj | None = await objects.get(kinds["pv"], None, str(volume))
    except errors.ApiError:
        pv = None
    base = await agent_base(
        objects,
        kinds["node"],
        node_of_volume(pv, pvc),
        lambda why: _unavailable(target, why),
        no_node=f"PersistentVolume {volume} names no node (nodeAffinity)",
    )
    return base + target.agent_path


async def _batched(request: Request) -> AsyncIterator[bytes]:
    """The body in pieces of at least :data:`BATCH` bytes: TLS hands it over in 16 KiB records, and each
    piece costs a write on the way to the agent."""
    pending: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        pending.append(chunk)
        size += len(chunk)
        if size >= BATCH:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


async def proxy_upload(
    request: Request,
    path_target: UploadTarget | None,
    *,
    objects: Objects,
    tokens: TokenIssuer,
    kinds: dict[str, Kind],
    agent_tls: ssl.SSLContext | None,
) -> Response:
    """Check the token, find the claim's node, and stream the body to its agent (see the module doc).
    ``kinds``: ``pvc``, ``pv`` and ``node`` kinds."""
    if request.method not in ("POST", "PUT"):
        raise errors.method_not_allowed()
    target = _token_target(request, tokens)
    if path_target is not None and path_target != target:
        raise errors.forbidden(
            f"the upload token is for {target.what}, not {path_target.what}; request a token for it"
        )
    url = await _agent_url(objects, kinds, target)
    if agent_tls is None:
        raise _unavailable(target, "this apiserver has no client certificate for node agents")
    headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
    timeout = httpx.Timeout(AGENT_RESULT_TIMEOUT, connect=AGENT_CONNECT_TIMEOUT)
    try:
        async with httpx.AsyncClient(verify=agent_tls, timeout=timeout, trust_env=False) as http:
            response = await http.request("PUT", url, content=_batched(request), headers=headers)
    except httpx.HTTPError as e:
        raise _unavailable(target, f"its node agent is unreachable ({e or type(e).__name__})") from e
    if response.status_code >= 300:
        raise agent_error(response.status_code, response.content, lambda why: _unavailable(target, why))
    log.info("upload into %s done", target.what)
    return Response(response.content, 200, media_type="application/json")
