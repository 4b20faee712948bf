"""The node agent's end of an upload: the request body the apiserver streams (CDI's upload server pod).

Why in the agent: only the node that holds a claim's volume can write its image. The apiserver checked the
upload token and that the claim is an upload target (:mod:`kubevisor.apiserver.uploads`); this module
finds the claim's image on this node (:func:`kubevisor.agent.claims.resolve`), and writes the body into it
with the import engine (:func:`kubevisor.storage.importing.import_image`: format detected from the bytes,
gzip/xz decompressed, qcow2 and others converted to raw, checksum verified, written beside the image and
renamed over it at the end, refused when larger than the claim).

It reports on the claim as an importer does, with CDI's annotations (owner: this module, for upload
targets): :data:`~kubevisor.api.cdi.POD_PHASE_ANNOTATION` ``Running`` while bytes arrive, then
``Succeeded``, or ``Failed`` with :data:`~kubevisor.api.cdi.RUNNING_MESSAGE_ANNOTATION` for an upload that
cannot work as sent (bad checksum or image, too large). A transfer cut short leaves the phase as it was
and the image untouched: the client uploads again.

The checksum travels as ``Content-Digest: sha-256=:<base64>:`` (RFC 9530) and covers the bytes as sent.
One upload per claim at a time (409 for a second one).

Into a claim of an NFS volume (``spec.nfs``: nothing of it is on this node, QEMU and ``qemu-img`` reach
it over NFS, :mod:`kubevisor.agent.nfsvolumes`): the body is written as above into a scratch image in the
node's first volume directory (``.nfs-upload-<claim uid>/disk.img``; the node needs room for the image,
sparse), checksum verified there, then copied to the server under a temporary name beside the claim's
image and renamed over it in one NFS operation (:func:`kubevisor.agent.nfsvolumes.replace`); the scratch
image is removed however the upload ends. The claim's image is never half-written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from kubevisor.agent import claims, nfsvolumes
from kubevisor.agent.refusals import Refusal
from kubevisor.api import cdi, upload
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.client import errors as client_errors
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.storage import importing
from kubevisor.virt.process import Reverter

__all__ = ["UploadError", "UploadReceiver", "parse_content_digest"]

log = logging.getLogger(__name__)


class UploadError(Refusal):
    """An upload the agent refuses."""


def parse_content_digest(value: str | None) -> str | None:
    """``sha-256=:<base64>:`` (RFC 9530; ``md5`` is not in its registry) -> ``sha256:<hex>``; None if
    absent. Raises ValueError for a header without a sha-256 digest."""
    if not value:
        return None
    for item in value.split(","):
        algorithm, _, digest = item.strip().partition("=")
        if algorithm.strip().lower() != "sha-256":
            continue
        digest = digest.strip()
        if len(digest) < 2 or digest[0] != ":" or digest[-1] != ":":
            raise ValueError("the sha-256 digest must be a byte sequence, :<base64>:")
        try:
            raw = base64.b64decode(digest[1:-1], validate=True)
        except binascii.Error as e:
            raise ValueError("the sha-256 digest is not valid base64") from e
        if len(raw) != 32:
            raise ValueError("a sha-256 digest has 32 bytes")
        return f"sha256:{raw.hex()}"
    raise ValueError("Content-Digest names no sha-256 digest")


class UploadReceiver:
    """Serves ``PUT /v1/namespaces/{namespace}/persistentvolumeclaims/{name}/upload``."""

    def __init__(
        self, client: Client, *, node: str, volume_dirs: tuple[Path, ...], fsync: bool = True
    ) -> None:
        self.node = node
        self.volume_dirs = volume_dirs
        self.fsync = fsync
        """Make images durable before they are renamed into place (off only in benchmarks)."""
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self._active: set[str] = set()

    async def __call__(self, request: Request) -> Response:
        namespace = str(request.path_params["namespace"])
        name = str(request.path_params["name"])
        key = f"{namespace}/{name}"
        if key in self._active:
            return UploadError(
                409, "Conflict", f"PersistentVolumeClaim {key}: another upload into it is in progress"
            ).response()
        self._active.add(key)
        try:
            return await self._receive(request, namespace, name)
        except UploadError as err:
            return err.response()
        finally:
            self._active.discard(key)

    async def _read(self, namespace: str, resource: str, name: str) -> dict[str, Any] | None:
        client = self.pvcs if resource == "persistentvolumeclaims" else self.pvs
        try:
            obj: dict[str, Any] = await client.get(
                name, namespace if resource == "persistentvolumeclaims" else None
            )
        except client_errors.NotFoundError:
            return None
        return obj

    async def _annotate(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        try:
            await self.pvcs.patch(name, {"metadata": {"annotations": annotations}}, namespace)
        except client_errors.ApiError as e:  # the upload's result stands; the claim's report may lag
            log.warning("PersistentVolumeClaim %s/%s: cannot record the upload: %s", namespace, name, e)

    async def _receive(self, request: Request, namespace: str, name: str) -> Response:
        what = f"PersistentVolumeClaim {namespace}/{name}"
        pvc = await self._read(namespace, "persistentvolumeclaims", name)
        if pvc is None:
            raise UploadError(404, "NotFound", f"{what} not found")
        if upload.UPLOAD_TARGET not in (pvc["metadata"].get("annotations") or {}):
            raise UploadError(400, "BadRequest", f"{what} is not an upload target ({upload.UPLOAD_TARGET})")
        try:
            checksum = parse_content_digest(request.headers.get("content-digest"))
        except ValueError as e:
            raise UploadError(400, "BadRequest", f"upload into {what}: Content-Digest: {e}") from e
        length = request.headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
        volume = str((pvc.get("spec") or {}).get("volumeName") or "")
        pv = await self._read(namespace, "persistentvolumes", volume) if volume else None
        source = (((pv or {}).get("spec") or {}).get("hostPath") or {}).get("path") or (
            ((pv or {}).get("spec") or {}).get("local") or {}
        ).get("path")
        on_nfs = bool(((pv or {}).get("spec") or {}).get("nfs"))
        if pv is None or not (on_nfs or (source and await asyncio.to_thread(os.path.exists, str(source)))):
            raise UploadError(
                503, "ServiceUnavailable", f"{what}: its volume is not on node {self.node} yet; retry shortly"
            )
        async with Reverter() as revert:

            async def read(resource: str, obj_name: str) -> dict[str, Any] | None:
                return await self._read(namespace, resource, obj_name)

            try:
                image = await claims.resolve(
                    name,
                    claims.UPLOAD_FIELD,  # the upload target may be resolved before its upload succeeded
                    namespace=namespace,
                    node=self.node,
                    volume_dirs=self.volume_dirs,
                    read=read,
                    revert=revert,
                )
            except claims.ClaimNotReady as e:
                raise UploadError(503, "ServiceUnavailable", f"{e}; retry shortly") from e
            except claims.ClaimError as e:
                raise UploadError(409, "Conflict", str(e)) from e
            if image.nfs_server is not None and not self.volume_dirs:
                raise UploadError(
                    503, "ServiceUnavailable", f"{what}: node {self.node} has no volume directory for scratch"
                )
            capacity = (pvc.get("status") or {}).get("capacity") or {}
            requests = ((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}
            size = parse_quantity(capacity.get("storage") or requests.get("storage"))
            await self._annotate(namespace, name, {cdi.POD_PHASE_ANNOTATION: "Running"})
            scratch = (
                self.volume_dirs[0] / f".nfs-upload-{pvc['metadata'].get('uid') or name}"
                if image.nfs_server is not None and self.volume_dirs
                else None
            )
            try:
                result = await importing.import_image(
                    importing.StreamSource(
                        request.stream(), total=total, checksum=checksum, name=f"upload into {what}"
                    ),
                    image.path if scratch is None else await _scratch_image(scratch),
                    size=int(size) if size else None,
                    target_format=image.format,
                    fsync=self.fsync,
                )
                if scratch is not None and image.nfs_server is not None:
                    try:
                        await nfsvolumes.replace(
                            image.nfs_server,
                            str(image.path),
                            what,
                            source=str(scratch / claims.DISK_IMG),
                            source_format=image.format,
                            target_format=image.format,
                        )
                    except nfsvolumes.NfsVolumeError as e:  # the server may come back: upload again
                        raise importing.TransientImportError(str(e)) from e
            except importing.ImageImportError as e:
                if e.permanent:
                    await self._annotate(
                        namespace,
                        name,
                        {cdi.POD_PHASE_ANNOTATION: "Failed", cdi.RUNNING_MESSAGE_ANNOTATION: str(e)},
                    )
                else:
                    await self._annotate(namespace, name, {cdi.POD_PHASE_ANNOTATION: None})
                code = (
                    413
                    if isinstance(e, importing.ImageTooLarge)
                    else 500
                    if isinstance(e, importing.TargetError)
                    else 400
                    if e.permanent
                    else 503
                )
                reason = {413: "RequestEntityTooLarge", 500: "InternalError", 400: "BadRequest"}
                raise UploadError(code, reason.get(code, "ServiceUnavailable"), str(e)) from e
            except BaseException:
                await self._annotate(namespace, name, {cdi.POD_PHASE_ANNOTATION: None})
                raise
            finally:
                if scratch is not None:
                    await asyncio.shield(asyncio.to_thread(shutil.rmtree, scratch, True))
            revert.success()
        await self._annotate(
            namespace,
            name,
            {
                cdi.POD_PHASE_ANNOTATION: "Succeeded",
                cdi.RUNNING_MESSAGE_ANNOTATION: "Upload Complete",
                cdi.PROGRESS_ANNOTATION: "100.0%",
            },
        )
        log.info(
            "%s: uploaded %d bytes (%s%s) in %.1fs",
            what,
            result.transferred,
            result.source_format,
            f", {result.compression}" if result.compression else "",
            result.seconds,
        )
        return Response(
            orjson.dumps(
                {
                    "format": result.source_format,
                    "compression": result.compression,
                    "virtualSize": result.virtual_size,
                    "size": result.size,
                    "transferred": result.transferred,
                    "seconds": round(result.seconds, 3),
                }
            ),
            media_type="application/json",
        )


async def _scratch_image(directory: Path) -> Path:
    """``directory/disk.img``, the directory made empty: where an upload into an NFS volume is written
    before it is copied to the server."""
    await asyncio.to_thread(shutil.rmtree, directory, True)
    await asyncio.to_thread(directory.mkdir, 0o700, True, False)
    return directory / claims.DISK_IMG
