"""Growing a disk image: offline (``qemu-img resize`` for qcow2, ``truncate`` for raw) or in a running QEMU
(QMP ``block_resize``, so the guest sees the new size at once).

Invariants: an image never shrinks (a smaller size than the image has is a no-op, reported as such); a
qcow2 image is only grown by ``qemu-img`` (its header and tables change), a raw one by extending the
file (sparse). An image a QEMU has open is grown by that QEMU: ``qemu-img`` cannot take the image's write
lock then, and a raw file extended behind QEMU's back keeps its old size for the guest.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Literal

from kubevisor.virt import qemuimg
from kubevisor.virt.qmp import QmpError, Session

__all__ = ["GrowError", "grow", "open_nodes", "resize_in_qemu", "virtual_size"]

QEMU_IMG = "qemu-img"


class GrowError(Exception):
    """The image could not be grown; the message says which and why."""


async def virtual_size(path: Path, fmt: Literal["raw", "qcow2"]) -> int:
    """The size the guest sees: a raw file's length, a qcow2 image's virtual size."""
    if fmt == "raw":
        return (await asyncio.to_thread(os.stat, path)).st_size
    try:
        return int((await qemuimg.info(path))["virtual-size"])
    except (qemuimg.ImageError, KeyError, ValueError) as e:
        raise GrowError(f"reading the size of {path}: {e}") from e


def _extend(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        if os.fstat(f.fileno()).st_size < size:
            f.truncate(size)
            os.fsync(f.fileno())


async def grow(path: Path, fmt: Literal["raw", "qcow2"], size: int) -> bool:
    """Grow the image at ``path`` (not open in any QEMU) to ``size`` bytes; False if it already had them."""
    if await virtual_size(path, fmt) >= size:
        return False
    if fmt == "raw":
        try:
            await asyncio.to_thread(_extend, path, size)
        except OSError as e:
            raise GrowError(f"growing {path} to {size} bytes: {e}") from e
        return True
    argv = [QEMU_IMG, "resize", "-q", "-f", "qcow2", str(path), str(size)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise GrowError(f"growing {path} to {size} bytes: {err.decode(errors='replace').strip()}")
    return True


def _filename(entry: Any) -> str:
    inserted = entry.get("inserted") or {} if isinstance(entry, dict) else {}
    return str(inserted.get("file") or (inserted.get("image") or {}).get("filename") or "")


async def open_nodes(qmp: Session, path: Path) -> list[str]:
    """The format nodes of the disk devices of this QEMU whose image is ``path`` (none if it has not)."""
    candidates: list[tuple[str, str]] = []
    for entry in await qmp.execute("query-block") or []:
        name = _filename(entry)
        node = str((entry.get("inserted") or {}).get("node-name") or "")
        if node and name and not name.startswith("json:"):
            candidates.append((node, name))

    def matching() -> list[str]:
        target = os.path.realpath(path)
        return [node for node, name in candidates if os.path.realpath(name) == target]

    return await asyncio.to_thread(matching) if candidates else []


async def resize_in_qemu(qmp: Session, node: str, size: int) -> None:
    """Grow format node ``node`` (and its file) to ``size`` bytes; the guest is told (virtio-blk config
    change, SCSI capacity change)."""
    try:
        await qmp.execute("block_resize", {"node-name": node, "size": size})
    except QmpError as e:
        raise GrowError(str(e)) from e
