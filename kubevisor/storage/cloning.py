"""Cloning a volume's disk image into another volume on the same node: CDI's host-assisted clone, locally.

Why not CDI's way: CDI streams the source through a source pod and an upload server into the target pod.
Both volumes of a kubevisor clone are files of one node, so the node agent copies the file:

- same format (raw -> raw, qcow2 -> qcow2): ``cp --reflink=auto --sparse=always`` (see
  :mod:`kubevisor.storage.imagecopy`): instant on file systems that share blocks (XFS, Btrfs), otherwise a
  copy of the data only, the holes left holes;
- different formats: ``qemu-img convert`` (sparse output, progress from ``-p``);
- then, when the target is bigger than the source, the image is grown to the target's size (raw: the file
  is extended sparse; qcow2: ``qemu-img resize``), so the guest sees the size the claim asked for.

Invariants:

- The target never looks complete while it is not: everything is written to ``.<target>.clone`` beside
  it, fsynced, and renamed over the target last; any failure or cancellation removes the temporary file.
- The source is only read. A source written during the copy (its size, modification time or inode
  changed) makes the copy worthless: :class:`SourceChanged`, a transient error (the caller retries once
  the writer is gone).
- A source whose virtual size is larger than the target is refused (:class:`~kubevisor.storage.importing.
  ImageTooLarge`): nothing is ever cut off.
- Formats are never probed: the caller says what each image is (the PersistentVolume's format annotation).

A source on an NFS server (a ``spec.nfs`` volume, ``source_server``) is read through QEMU's NFS driver
(``qemu-img convert nfs://server/path``, whatever the formats); whether it changed during the copy is
told by its inode, size and times on the server (:func:`kubevisor.storage.nfsfiles.stat_path`). The
target is always a local file here; the node agent copies a clone into an NFS volume from such a local
scratch image (:mod:`kubevisor.agent.importing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubevisor.storage import imagecopy, importing, nfsfiles

__all__ = [
    "CloneResult",
    "SourceChanged",
    "clone_image",
    "convert_argv",
    "resize_argv",
    "temporary",
    "virtual_size",
]

ImageFormat = Literal["raw", "qcow2"]
ProgressCallback = Callable[[float], None]
"""Called with the fraction done (0.0 to 1.0), at most every :data:`PROGRESS_INTERVAL` seconds."""

PROGRESS_INTERVAL = 0.5
QEMU_IMG = "qemu-img"
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class SourceChanged(importing.TransientImportError):
    """The source image was written while it was copied; copy again once nothing writes it."""


@dataclass(frozen=True)
class CloneResult:
    """What a clone did."""

    method: Literal["copy", "convert"]
    """``copy`` (reflink or sparse copy) or ``convert`` (qemu-img convert)."""
    virtual_size: int
    """The source's virtual size."""
    size: int
    """The target's virtual size (the source's, grown to the requested size)."""
    seconds: float


def temporary(target: Path) -> Path:
    """Where :func:`clone_image` writes before the rename."""
    return target.with_name(f".{target.name}.clone")


def convert_argv(source: Path | str, source_format: str, dest: Path, dest_format: str) -> list[str]:
    """``qemu-img convert`` with progress on stdout and sparse output, source opened read-only and shared."""
    argv = [QEMU_IMG, "convert", "-p", "-U", "-f", source_format, "-O", dest_format]
    if dest_format == "raw":
        argv.append("-W")  # out-of-order writes: faster, and fine for a file renamed into place last
    return [*argv, str(source), str(dest)]


def resize_argv(path: Path, fmt: str, size: int) -> list[str]:
    """Grow a qcow2 (or raw) image to ``size`` bytes."""
    return [QEMU_IMG, "resize", "-q", "-f", fmt, str(path), str(size)]


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _sync_and_rename(tmp: Path, target: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


async def _run(argv: list[str], what: str, on_stdout: Callable[[bytes], None] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        err_task = asyncio.ensure_future(proc.stderr.read())
        out = bytearray()
        while piece := await proc.stdout.read(4096):
            out += piece
            if on_stdout is not None:
                on_stdout(piece)
        err = await err_task
        await proc.wait()
    except BaseException:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        if "No space left" in message:
            raise importing.TargetError(f"{what}: no space left on the target volume's file system")
        raise importing.TargetError(f"{what}: {message}")
    return out.decode(errors="replace")


async def virtual_size(path: Path, fmt: ImageFormat, *, server: str | None = None) -> int:
    """The size the guest sees of image ``path`` of format ``fmt`` (raw: the file's size); ``server``: the
    image is ``path`` on that NFS server."""
    if fmt == "raw":
        if server is None:
            return os.stat(path).st_size
        found = await asyncio.to_thread(nfsfiles.stat_path, server, str(path))
        if found is None:
            raise FileNotFoundError(nfsfiles.url(server, str(path)))
        return found.size
    name = str(path) if server is None else nfsfiles.url(server, str(path))
    text = await _run([QEMU_IMG, "info", "-U", "-f", fmt, "--output=json", name], f"reading {name}")
    return int(json.loads(text).get("virtual-size") or 0)


def _source_identity(source: Path, server: str | None) -> tuple[int, ...]:
    if server is None:
        return _identity(source)
    found = nfsfiles.stat_path(server, str(source))
    if found is None:
        raise FileNotFoundError(nfsfiles.url(server, str(source)))
    return found.identity


async def _copy_with_progress(source: Path, dest: Path, progress: ProgressCallback | None) -> None:
    """``cp`` (reflink or sparse) while reporting the destination's allocated bytes against the source's."""
    total = max(imagecopy.allocated_bytes(source), 1)
    task = asyncio.ensure_future(imagecopy.copy(source, dest))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
            if progress is not None and not task.done():
                with contextlib.suppress(OSError):
                    done = imagecopy.allocated_bytes(imagecopy.partial(dest))
                    progress(min(done / total, 0.99))
        task.result()
    except imagecopy.CopyError as e:
        message = str(e)
        if "No space left" in message:
            raise importing.TargetError(f"{message}; free space on the node or use a smaller source") from e
        raise importing.TargetError(message) from e
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, imagecopy.CopyError):
                await task


async def clone_image(
    source: Path,
    target: Path,
    *,
    size: int,
    source_format: ImageFormat = "raw",
    target_format: ImageFormat = "raw",
    progress: ProgressCallback | None = None,
    source_server: str | None = None,
) -> CloneResult:
    """Copy the image ``source`` into ``target`` (replaced atomically), grown to ``size`` bytes.
    ``source_server``: the source is the image ``source`` on that NFS server, read through QEMU's NFS
    driver (always ``qemu-img convert``).

    Raises :class:`~kubevisor.storage.importing.ImageTooLarge` if the source's virtual size exceeds
    ``size``, :class:`SourceChanged` if the source was written meanwhile, and
    :class:`~kubevisor.storage.importing.TargetError` if the target cannot be written.
    """
    started = time.monotonic()
    name = f"clone of {source if source_server is None else nfsfiles.url(source_server, str(source))}"
    try:
        before = await asyncio.to_thread(_source_identity, source, source_server)
        vsize = await virtual_size(source, source_format, server=source_server)
    except FileNotFoundError as e:
        raise importing.SourceUnreachable(f"{name}: the source image is missing; retrying") from e
    except nfsfiles.NfsError as e:
        raise importing.SourceUnreachable(f"{name}: {e}; retrying") from e
    if vsize > size:
        raise importing.ImageTooLarge(
            f"{name}: the source's virtual size {vsize} bytes is larger than the target's {size} bytes; "
            "request at least the source's size for the DataVolume"
        )
    tmp = temporary(target)
    tmp.unlink(missing_ok=True)
    method: Literal["copy", "convert"] = (
        "copy" if source_format == target_format and source_server is None else "convert"
    )
    try:
        if method == "copy":
            await _copy_with_progress(source, tmp, progress)
        else:
            last = 0.0

            def on_stdout(piece: bytes) -> None:
                nonlocal last
                found = _PERCENT.findall(piece)
                now = time.monotonic()
                if found and progress is not None and now - last >= PROGRESS_INTERVAL:
                    last = now
                    progress(min(float(found[-1]) / 100, 0.99))

            argv = convert_argv(
                source if source_server is None else nfsfiles.url(source_server, str(source)),
                source_format,
                tmp,
                target_format,
            )
            await _run(argv, f"{name}: converting {source_format} to {target_format}", on_stdout)
        if vsize < size:
            if target_format == "raw":
                os.truncate(tmp, size)  # the grown part is a hole
            else:
                await _run(
                    resize_argv(tmp, target_format, size), f"{name}: growing the image to {size} bytes"
                )
        try:
            after = await asyncio.to_thread(_source_identity, source, source_server)
        except (OSError, nfsfiles.NfsError):
            after = ()
        if after != before:
            raise SourceChanged(f"{name}: the source image was written during the copy; copying again")
        await asyncio.to_thread(_sync_and_rename, tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        imagecopy.partial(tmp).unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(1.0)
    return CloneResult(
        method=method, virtual_size=vsize, size=max(vsize, size), seconds=time.monotonic() - started
    )
