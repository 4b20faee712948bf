"""The node agent's end of a VirtualMachineExport download: the disk of a claim, or of a VM snapshot, as
the guest sees it (KubeVirt's export server pod).

Why in the agent: only the node that holds a volume (or a snapshot's stored images) can read it. The
apiserver checked the export's token and that the export is Ready (:mod:`kubevisor.apiserver.exports`),
and says what to read:

- ``GET /v1/namespaces/{ns}/persistentvolumeclaims/{claim}/export?format=raw|gzip``: the claim's image
  (:func:`kubevisor.agent.claims.resolve`: the claim must be bound to a volume of this node);
- ``GET /v1/namespaces/{ns}/virtualmachinesnapshotcontents/{content}/volumes/{volume}/export?format=...``:
  the snapshot's copy of ``volume`` (``DATA/snapshots/<ns>/<content>/<volume>.img``, written by
  :mod:`kubevisor.agent.snapshots`), only once the copy is complete. Read only: nothing here writes it.

What is sent is always the raw disk: a raw image as it is; a qcow2 one (the PersistentVolume's
:data:`~kubevisor.agent.claims.FORMAT_ANNOTATION`; images are never format-probed) is first converted with
``qemu-img convert -O raw`` into a sparse temporary file in ``DATA/exports`` (unlinked once opened: its
space is freed when the response ends, however it ends). ``format=raw`` streams it with
``Content-Length``; ``format=gzip`` compresses it on the fly (``Content-Type: application/gzip``, no
length known in advance). Either way the response carries the raw
disk's sha256 and size (:data:`DIGEST_HEADER`, :data:`SIZE_HEADER`), computed in one pass before the first
byte is sent (remembered per file identity, so a second download of an unchanged image costs no extra
pass), so the client can verify what it got, also after decompressing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from kubevisor.agent import claims, nfsvolumes
from kubevisor.agent.refusals import Refusal
from kubevisor.api.registry import Obj
from kubevisor.client import errors as client_errors
from kubevisor.client.requesting import Client
from kubevisor.storage import importing
from kubevisor.virt.process import Reverter

__all__ = ["DIGEST_HEADER", "SIZE_HEADER", "ExportError", "ExportSender", "sha256_of"]

log = logging.getLogger(__name__)

DIGEST_HEADER = "x-kubevisor-disk-sha256"
"""Hex sha256 of the raw disk (for ``gzip``: of the decompressed bytes)."""
SIZE_HEADER = "x-kubevisor-disk-size"
"""Bytes of the raw disk."""
CHUNK = 4 << 20
GZIP_LEVEL = 6
"""gzip's default level, as KubeVirt's export server compresses."""
TAKEN = "taken.json"
"""In a snapshot content's directory, written last by the snapshot agent: the copy is complete."""
SNAP = "snapshot.kubevirt.io/v1beta1"


class ExportError(Refusal):
    """A download the agent refuses."""


def sha256_of(path: Path) -> tuple[str, int]:
    """(hex sha256, size) of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ExportSender:
    """Serves the two download endpoints of the module docstring."""

    def __init__(self, client: Client, *, node: str, data_dir: Path, volume_dirs: tuple[Path, ...]) -> None:
        self.client = client
        self.node = node
        self.snapshots_dir = Path(data_dir) / "snapshots"
        self.work_dir = Path(data_dir) / "exports"
        """Temporary raw conversions of qcow2 images (removed when their response ends)."""
        self.volume_dirs = volume_dirs
        self._digests: dict[tuple[int, int, int, int], str] = {}
        for leftover in self.work_dir.glob("*.raw"):  # of conversions cut short by an agent restart
            with contextlib.suppress(OSError):
                leftover.unlink()

    # --- endpoints ----------------------------------------------------------------------------------

    async def claim(self, request: Request) -> Response:
        namespace, name = str(request.path_params["namespace"]), str(request.path_params["name"])
        try:
            fmt = self._format(request)
            image = await self._claim_image(namespace, name)
            return await self._serve(
                image.path,
                image.format,
                fmt,
                f"PersistentVolumeClaim {namespace}/{name}",
                nfs_server=image.nfs_server,
            )
        except ExportError as err:
            return err.response()

    async def snapshot(self, request: Request) -> Response:
        params = request.path_params
        namespace, content, volume = str(params["namespace"]), str(params["name"]), str(params["volume"])
        what = f"volume {volume} of VirtualMachineSnapshotContent {namespace}/{content}"
        try:
            fmt = self._format(request)
            directory = self.snapshots_dir / namespace / content
            image = directory / f"{volume}.img"
            names = (namespace, content, volume)
            if any("/" in n or n.startswith(".") for n in names) or not (directory / TAKEN).is_file():
                raise ExportError(404, "NotFound", f"{what}: no complete copy on node {self.node}")
            if not image.is_file():
                raise ExportError(404, "NotFound", f"{what}: no image on node {self.node}")
            image_format = await self._snapshot_format(namespace, content, volume)
            return await self._serve(image, image_format, fmt, what)
        except ExportError as err:
            return err.response()

    # --- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _format(request: Request) -> str:
        fmt = request.query_params.get("format") or "raw"
        if fmt not in ("raw", "gzip"):
            raise ExportError(400, "BadRequest", f"format {fmt!r} is not served: use raw or gzip")
        return fmt

    async def _read(self, namespace: str | None, resource: str, name: str) -> Obj | None:
        try:
            found: Obj = await self.client.resource("v1", resource).get(name, namespace)
        except client_errors.NotFoundError:
            return None
        return found

    async def _claim_image(self, namespace: str, name: str) -> claims.ClaimedImage:
        async def read(resource: str, obj_name: str) -> Obj | None:
            return await self._read(
                None if resource == "persistentvolumes" else namespace, resource, obj_name
            )

        async with Reverter() as revert:
            try:
                image = await claims.resolve(
                    name,
                    "export",
                    namespace=namespace,
                    node=self.node,
                    volume_dirs=self.volume_dirs,
                    read=read,
                    revert=revert,
                )
            except claims.ClaimNotReady as e:
                raise ExportError(503, "ServiceUnavailable", f"{e}; retry shortly") from e
            except claims.ClaimError as e:
                raise ExportError(409, "Conflict", str(e)) from e
            revert.success()  # a blank image created for a never-used claim is what a VMI would get too
        return image

    async def _snapshot_format(self, namespace: str, content: str, volume: str) -> str:
        """The format of a snapshot's image: that of the claim's volume when it was taken (raw unless its
        PersistentVolume says qcow2)."""
        try:
            obj: Obj = await self.client.resource(SNAP, "virtualmachinesnapshotcontents").get(
                content, namespace
            )
        except client_errors.NotFoundError as e:
            raise ExportError(
                404, "NotFound", f"VirtualMachineSnapshotContent {namespace}/{content} not found"
            ) from e
        for backup in (obj.get("spec") or {}).get("volumeBackups") or []:
            if backup.get("volumeName") != volume:
                continue
            pv_name = (((backup.get("persistentVolumeClaim") or {}).get("spec")) or {}).get("volumeName")
            pv = await self._read(None, "persistentvolumes", str(pv_name)) if pv_name else None
            annotations = ((pv or {}).get("metadata") or {}).get("annotations") or {}
            return "qcow2" if annotations.get(claims.FORMAT_ANNOTATION) == "qcow2" else "raw"
        raise ExportError(
            404, "NotFound", f"VirtualMachineSnapshotContent {namespace}/{content} has no volume {volume}"
        )

    async def _raw_copy(self, image: Path, what: str, image_format: str, nfs_server: str | None) -> Path:
        """A sparse raw conversion of ``image`` in the work directory (the caller removes it); from
        ``nfs://nfs_server/image`` when the image is on an NFS server."""
        await asyncio.to_thread(self.work_dir.mkdir, parents=True, exist_ok=True)
        target = self.work_dir / f"{uuid.uuid4().hex}.raw"
        if nfs_server is not None:
            fmt: Literal["raw", "qcow2"] = "qcow2" if image_format == "qcow2" else "raw"
            try:
                await nfsvolumes.copy_out(nfs_server, str(image), fmt, target, what, target_format="raw")
            except nfsvolumes.NfsVolumeError as e:
                await asyncio.to_thread(target.unlink, True)
                raise ExportError(503, "ServiceUnavailable", str(e)) from e
            except BaseException:
                await asyncio.shield(asyncio.to_thread(target.unlink, True))
                raise
            return target
        argv = importing.convert_argv(image, "qcow2", target, "raw", existing=False)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            target.unlink(missing_ok=True)
            raise
        if proc.returncode != 0:
            target.unlink(missing_ok=True)
            raise ExportError(
                500, "InternalError", f"{what}: qemu-img convert failed: {err.decode().strip()}"
            )
        return target

    async def _digest(self, path: Path, *, remember: bool) -> tuple[str, int]:
        identity = await asyncio.to_thread(_identity, path)
        cached = self._digests.get(identity)
        if cached is not None:
            return cached, identity[2]
        digest, size = await asyncio.to_thread(sha256_of, path)
        if remember and await asyncio.to_thread(_identity, path) == identity:  # unchanged while read
            self._digests[identity] = digest
        return digest, size

    async def _serve(
        self, image: Path, image_format: str, fmt: str, what: str, *, nfs_server: str | None = None
    ) -> Response:
        temporary = (
            await self._raw_copy(image, what, image_format, nfs_server)
            if image_format == "qcow2" or nfs_server is not None
            else None
        )
        try:
            digest, size = await self._digest(temporary or image, remember=temporary is None)
            f = await asyncio.to_thread(open, temporary or image, "rb")
        finally:
            if temporary is not None:  # once open, its space is freed when the response closes it
                await asyncio.to_thread(temporary.unlink, True)
        headers = {DIGEST_HEADER: digest, SIZE_HEADER: str(size)}
        log.info("export of %s (%s, %d bytes) starts", what, fmt, size)
        if fmt == "raw":
            headers["content-length"] = str(size)
            return StreamingResponse(_chunks(f), headers=headers, media_type="application/octet-stream")
        return StreamingResponse(_gzipped(_chunks(f)), headers=headers, media_type="application/gzip")


async def _chunks(f: Any) -> AsyncIterator[bytes]:
    """The bytes of the open file ``f``, which is closed at the end, however it ends."""
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


async def _gzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """gzip (RFC 1952) of ``chunks``, compressed off the event loop."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    try:
        async for chunk in chunks:
            out = await asyncio.to_thread(compressor.compress, chunk)
            if out:
                yield out
        yield compressor.flush()
    finally:
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]
