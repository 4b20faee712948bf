"""NFS PersistentVolumes (``spec.nfs``) on a node that mounts nothing: QEMU reads and writes the image with
its own NFS client.

Why no mount: the agent should not need a kernel NFS client or root mounts per volume (this project's
test machines have neither), and QEMU's NFS block driver (libnfs, NFSv3, package ``qemu-block-extra``)
opens ``nfs://server/path`` images directly, as ``qemu-img`` does. Directory work and renames, which
those two cannot do, go through :mod:`kubevisor.storage.nfsfiles` (the same libnfs).

Layout, as for hostPath volumes: ``spec.nfs.path`` is a directory holding ``disk.img`` (raw, unless the
volume's ``kubevisor.io/disk-format`` annotation says qcow2), or the image file itself.

- :func:`image`: the image a VMI attaches; a missing ``disk.img`` is created at the volume's capacity: made
  under a temporary name, then linked to ``disk.img`` only if no other node made one meanwhile (never
  replacing an image).
- :func:`fill`: what a DataVolume import or a blank DataVolume writes: the image is converted into a
  temporary file in the volume's directory (``qemu-img convert`` to ``nfs://``), then renamed over
  ``disk.img`` in one NFS operation, so a half-written image is never under the name a VMI opens (and
  the claim is not attached before the import's ``Succeeded`` anyway).
- :func:`remove`: the volume's directory and images, for reclaimPolicy Delete.

What every other storage feature needs of an NFS image, used by the modules that own those features:

- :func:`replace`: an image replaced by a copy of another (local file or ``nfs://`` URL), under a
  temporary name beside it, renamed over it (uploads from their local scratch image,
  :mod:`kubevisor.agent.uploading`; restores of VM snapshots, :mod:`kubevisor.agent.snapshots`);
- :func:`copy_out`: an image copied into a local file (``qemu-img convert``; exports, snapshots of
  stopped VMs);
- :func:`virtual_size`, :func:`grow`: offline expansion (``qemu-img resize nfs://...``, never shrinking);
  :func:`open_nodes`: the disks of a QEMU that has the image open, for ``block_resize``
  (:mod:`kubevisor.agent.expanding`);
- :func:`overlay`: a local qcow2 overlay whose backing file is ``nfs://server/path`` (``ephemeral``
  volumes on NFS claims, :mod:`kubevisor.agent.preparing`).

Clones read an NFS source with ``qemu-img convert nfs://...`` (:mod:`kubevisor.storage.cloning`) and
fill an NFS target like an import (:func:`fill` from a local scratch copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kubevisor.storage import nfsfiles
from kubevisor.virt import qemuimg

__all__ = [
    "DISK_IMG",
    "NfsLocation",
    "NfsVolumeError",
    "copy_out",
    "fill",
    "grow",
    "image",
    "location",
    "open_nodes",
    "overlay",
    "remove",
    "replace",
    "virtual_size",
]

DISK_IMG = "disk.img"


class NfsVolumeError(Exception):
    """The NFS volume cannot be used; the message names the volume and what to do."""


@dataclass(frozen=True)
class NfsLocation:
    """Where an NFS volume's data is."""

    server: str
    """Host name or IP address of the NFS server."""
    path: str
    """Absolute path on the server: the volume's directory (or image file)."""

    def url(self, path: str | None = None) -> str:
        """The ``nfs://`` URL of ``path`` (default: the volume's own path)."""
        return nfsfiles.url(self.server, path or self.path)


def location(pv: Mapping[str, Any], where: str) -> NfsLocation | None:
    """The NFS location of PersistentVolume ``pv`` (None if it is not an NFS volume)."""
    nfs = (pv.get("spec") or {}).get("nfs")
    if not nfs:
        return None
    server, path = str(nfs.get("server") or ""), str(nfs.get("path") or "")
    problem = nfsfiles.validate_server(server)
    if problem:
        raise NfsVolumeError(f"{where}: spec.nfs.server {problem}")
    normal = posixpath.normpath(path) if path else ""
    if not path.startswith("/") or normal == "/" or ".." in path.split("/"):
        raise NfsVolumeError(
            f"{where}: spec.nfs.path {path!r} must be an absolute path other than / (without ..)"
        )
    return NfsLocation(server, normal)


def _error(where: str, e: Exception) -> NfsVolumeError:
    return NfsVolumeError(f"{where}: {e}; check that the NFS server serves it over NFSv3 to this node")


async def image(volume: NfsLocation, where: str, *, size: int | None) -> str:
    """The path on the server of the volume's image, created (raw, ``size`` bytes) when missing."""
    try:
        found = await asyncio.to_thread(nfsfiles.stat_path, volume.server, volume.path)
        if found is not None and found.is_file:
            return volume.path
        target = posixpath.join(volume.path, DISK_IMG)
        if found is not None and found.is_dir:
            existing = await asyncio.to_thread(nfsfiles.stat_path, volume.server, target)
            if existing is not None:
                if not existing.is_file:
                    raise NfsVolumeError(f"{where}: {volume.url(target)} is not a regular file")
                return target
        if not size or size <= 0:
            raise NfsVolumeError(
                f"{where}: {volume.url(target)} is missing and the volume has no capacity.storage"
            )
        await asyncio.to_thread(nfsfiles.mkdir, volume.server, volume.path)
        temporary = posixpath.join(volume.path, f".{DISK_IMG}.new-{secrets.token_hex(4)}")
        try:
            await qemuimg.create_url(volume.url(temporary), "raw", size)
            await asyncio.to_thread(nfsfiles.link_new, volume.server, temporary, target)
        finally:
            await asyncio.to_thread(nfsfiles.unlink, volume.server, temporary)
        return target
    except nfsfiles.NfsError as e:
        raise _error(where, e) from e
    except qemuimg.ImageError as e:
        raise _error(where, e) from e


async def fill(
    volume: NfsLocation,
    where: str,
    *,
    source: str | None,
    source_format: Literal["raw", "qcow2"] = "raw",
    size: int,
    target_format: Literal["raw", "qcow2"] = "raw",
) -> str:
    """Replace the volume's ``disk.img`` by a copy of the image ``source`` (a local path or an ``nfs://``
    URL; None: a blank image of ``size`` bytes), written under a temporary name and renamed into place;
    returns its path."""
    target = posixpath.join(volume.path, DISK_IMG)
    try:
        await asyncio.to_thread(nfsfiles.mkdir, volume.server, volume.path)
    except nfsfiles.NfsError as e:
        raise _error(where, e) from e
    await replace(
        volume.server,
        target,
        where,
        source=source,
        source_format=source_format,
        target_format=target_format,
        size=size,
    )
    return target


async def replace(
    server: str,
    path: str,
    where: str,
    *,
    source: str | None,
    source_format: Literal["raw", "qcow2"] = "raw",
    target_format: Literal["raw", "qcow2"] = "raw",
    size: int = 0,
) -> None:
    """Replace the image at ``path`` on ``server`` (its directory must exist) by a copy of ``source`` (a
    local path or an ``nfs://`` URL; None: a blank image of ``size`` bytes): converted into a temporary
    file beside it, then renamed over it in one NFS operation. On any failure the old image stays and the
    temporary file is removed."""
    temporary = posixpath.join(
        posixpath.dirname(path), f".{posixpath.basename(path)}.new-{secrets.token_hex(4)}"
    )
    target_url = nfsfiles.url(server, temporary)
    try:
        try:
            if source is None:
                await qemuimg.create_url(target_url, target_format, size)
            else:
                await qemuimg.convert(source, source_format, target_url, target_format)
            await asyncio.to_thread(nfsfiles.rename, server, temporary, path)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(nfsfiles.unlink, server, temporary))
            raise
    except nfsfiles.NfsError as e:
        raise _error(where, e) from e
    except qemuimg.ImageError as e:
        raise _error(where, e) from e


async def _qemu_img(argv: list[str], where: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as e:
        raise NfsVolumeError(f"{where}: {qemuimg.QEMU_IMG} is not installed; install qemu-utils") from e
    try:
        out, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise NfsVolumeError(
            f"{where}: qemu-img {argv[1]} failed: {err.decode(errors='replace').strip()}; check that the "
            "NFS server serves it over NFSv3 to this node"
        )
    return out.decode(errors="replace")


async def virtual_size(server: str, path: str, fmt: Literal["raw", "qcow2"], where: str) -> int:
    """The size the guest sees of the image at ``path``: a raw file's length, a qcow2 image's virtual
    size."""
    if fmt == "raw":
        try:
            found = await asyncio.to_thread(nfsfiles.stat_path, server, path)
        except nfsfiles.NfsError as e:
            raise _error(where, e) from e
        if found is None or not found.is_file:
            raise NfsVolumeError(f"{where}: {nfsfiles.url(server, path)} is not a regular file")
        return found.size
    argv = [qemuimg.QEMU_IMG, "info", "-U", "-f", fmt, "--output=json", nfsfiles.url(server, path)]
    text = await _qemu_img(argv, where)
    try:
        return int(json.loads(text)["virtual-size"])
    except (ValueError, KeyError, TypeError) as e:
        raise NfsVolumeError(f"{where}: qemu-img info gave no virtual size: {e}") from e


async def grow(server: str, path: str, fmt: Literal["raw", "qcow2"], size: int, where: str) -> bool:
    """Grow the image at ``path`` (open in no QEMU) to ``size`` bytes with ``qemu-img resize`` through
    QEMU's NFS driver; never shrinks. False if it already had the size."""
    if await virtual_size(server, path, fmt, where) >= size:
        return False
    argv = [qemuimg.QEMU_IMG, "resize", "-q", "-f", fmt, nfsfiles.url(server, path), str(size)]
    await _qemu_img(argv, where)
    return True


async def copy_out(
    server: str,
    path: str,
    fmt: Literal["raw", "qcow2"],
    target: Path,
    where: str,
    *,
    target_format: Literal["raw", "qcow2"] | None = None,
) -> None:
    """Copy the image at ``path`` into the new local file ``target`` (sparse; ``target_format``, default
    the same format). The caller writes ``target`` under a temporary name of its own."""
    out = target_format or fmt
    argv = [qemuimg.QEMU_IMG, "convert", "-U", "-f", fmt, "-O", out]
    if out == "raw":
        argv.append("-W")
    await _qemu_img([*argv, nfsfiles.url(server, path), str(target)], where)


def open_nodes(blocks: Any, server: str, path: str) -> list[tuple[str, int]]:
    """(format node, virtual size) of the disks in QMP ``query-block``'s answer ``blocks`` whose image is
    ``path`` on ``server`` (QEMU names NFS images ``nfs://server/path``)."""
    wanted = {f"nfs://{server}{path}", nfsfiles.url(server, path)}
    found: list[tuple[str, int]] = []
    for entry in blocks or []:
        inserted = (entry.get("inserted") or {}) if isinstance(entry, dict) else {}
        image = inserted.get("image") or {}
        name = str(inserted.get("file") or image.get("filename") or "").split("?", 1)[0]
        node = str(inserted.get("node-name") or "")
        if node and name in wanted:
            found.append((node, int(image.get("virtual-size") or 0)))
    return found


async def remove(volume: NfsLocation, where: str) -> None:
    """Delete the volume's directory (or image file) and what it holds."""
    try:
        await asyncio.to_thread(nfsfiles.remove_tree, volume.server, volume.path)
    except nfsfiles.NfsError as e:
        raise _error(where, e) from e


async def overlay(path: Path, server: str, image: str, fmt: Literal["raw", "qcow2"], where: str) -> Path:
    """A new local qcow2 overlay at ``path`` whose backing file is the image ``image`` on ``server``
    (``nfs://server/image``, format ``fmt``): QEMU reads the base over NFS and writes only the overlay
    (an ``ephemeral`` volume on an NFS claim)."""
    argv = [
        qemuimg.QEMU_IMG, "create", "-q", "-f", "qcow2",
        "-b", nfsfiles.url(server, image), "-F", fmt,
        str(path),
    ]  # fmt: skip
    await _qemu_img(argv, where)
    return path
