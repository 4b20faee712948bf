"""``qemu-img``: the disk images a VM's volumes need (overlays on shared images, empty disks, host disks).

One module per host tool (STYLE "host operations"): the functions named ``*_argv`` build argument lists
and are pure (unit-tested); the async functions run them with :func:`asyncio.create_subprocess_exec`,
never through a shell, and raise :class:`ImageError` carrying ``qemu-img``'s own message.

Overlays: a qcow2 file whose backing file is a shared, read-only image (a containerDisk from the node's
image cache or mirror). The guest writes into the overlay; the base is never written, so every VM using it
can share it, and deleting the VM's run directory discards what the guest wrote. An empty overlay on a raw
or qcow2 image is written directly (:mod:`kubevisor.virt.qcow2`: no qemu-img process on a VM's start path);
qemu-img makes every other one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

from kubevisor.virt import qcow2

__all__ = [
    "QEMU_IMG",
    "ImageError",
    "convert",
    "convert_argv",
    "create",
    "create_argv",
    "create_url",
    "info",
    "info_argv",
    "overlay",
    "overlay_argv",
]

QEMU_IMG = "qemu-img"
ImageFormat = Literal["raw", "qcow2"]


class ImageError(RuntimeError):
    """A qemu-img operation failed; the message names the image and carries qemu-img's error."""


def info_argv(path: Path) -> list[str]:
    """``qemu-img info`` as JSON, without following the backing chain."""
    return [QEMU_IMG, "info", "--output=json", "--force-share", str(path)]


def create_argv(path: Path, fmt: ImageFormat, size_bytes: int) -> list[str]:
    """A new empty image of ``size_bytes`` (sparse for raw; qcow2 with no preallocation)."""
    return [QEMU_IMG, "create", "-q", "-f", fmt, str(path), str(size_bytes)]


def overlay_argv(path: Path, backing: Path, backing_format: str) -> list[str]:
    """A qcow2 overlay on ``backing`` (an absolute path, opened read-only by QEMU)."""
    return [
        QEMU_IMG, "create", "-q", "-f", "qcow2",
        "-b", str(backing), "-F", backing_format,
        str(path),
    ]  # fmt: skip


async def _run(argv: list[str], what: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as e:
        raise ImageError(f"{what}: {QEMU_IMG} is not installed; install qemu-utils (`make install`)") from e
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ImageError(f"{what}: qemu-img failed (exit {proc.returncode}): {err.decode().strip()}")
    return out.decode()


async def info(path: Path) -> dict[str, Any]:
    """What ``qemu-img info`` says about ``path``: ``format``, ``virtual-size``, ``backing-filename``..."""
    result: dict[str, Any] = json.loads(await _run(info_argv(path), f"reading image {path}"))
    return result


async def create(path: Path, fmt: ImageFormat, size_bytes: int) -> Path:
    """Create an empty image (fails if ``path`` exists: never overwrite a disk)."""
    if _exists(path):
        raise ImageError(f"creating image {path}: it already exists")
    await _run(create_argv(path, fmt, size_bytes), f"creating image {path}")
    return path


async def create_url(url: str, fmt: ImageFormat, size_bytes: int) -> str:
    """Create an empty image at ``url`` (e.g. ``nfs://server/path``, through QEMU's block drivers); qemu-img
    replaces what is there, so callers create under a fresh name (:mod:`kubevisor.storage.nfsfiles`)."""
    await _run([QEMU_IMG, "create", "-q", "-f", fmt, url, str(size_bytes)], f"creating image {url}")
    return url


def convert_argv(
    source: str, source_format: ImageFormat, target: str, target_format: ImageFormat
) -> list[str]:
    """Copy the image ``source`` into the new image ``target`` (paths or URLs), sparse, formats given."""
    return [QEMU_IMG, "convert", "-f", source_format, "-O", target_format, source, target]


async def convert(source: str, source_format: ImageFormat, target: str, target_format: ImageFormat) -> None:
    """Run :func:`convert_argv`."""
    await _run(convert_argv(source, source_format, target, target_format), f"copying {source} to {target}")


_detected_formats: dict[tuple[Path, int, int, int], str] = {}
"""Formats :func:`overlay` detected, by (path, inode, size, mtime): VMs started from one read-only image (a
containerDisk) probe it once, not once per start (a ``qemu-img info`` is ~10 ms of a VM's start)."""


async def overlay(path: Path, backing: Path, *, backing_format: ImageFormat | None = None) -> Path:
    """Create a qcow2 overlay at ``path`` on ``backing``; returns ``path``. The backing file's format is
    ``backing_format``, else detected (once per unchanged file): pass it for images a guest writes (never
    probe those)."""
    backing = _absolute(backing)
    fmt = backing_format or await _detect_format(backing)
    if _write_overlay(path, backing, fmt):
        return path
    await _run(overlay_argv(path, backing, fmt), f"creating overlay {path} on {backing}")
    return path


def _write_overlay(path: Path, backing: Path, fmt: str) -> bool:
    """The overlay written without starting qemu-img (:mod:`kubevisor.virt.qcow2`), when that is simple."""
    try:
        return qcow2.write_overlay(path, backing, fmt)
    except OSError:
        return False  # qemu-img tries, and says what is wrong


def _format_key(path: Path) -> tuple[Path, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


async def _detect_format(path: Path) -> str:
    key = _format_key(path)
    if key is None:
        return str((await info(path)).get("format") or "raw")  # qemu-img says what is wrong
    fmt = _detected_formats.get(key)
    if fmt is None:
        fmt = str((await info(path)).get("format") or "raw")
        _detected_formats[key] = fmt
    return fmt


def _exists(path: Path) -> bool:
    return path.exists()


def _absolute(path: Path) -> Path:
    return path.resolve()
