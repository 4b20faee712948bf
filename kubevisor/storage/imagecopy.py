"""Copying a disk image on the node: ``cp --reflink=auto --sparse=always``, into place atomically.

Why ``cp``: it clones (reflink) on file systems that can (XFS, Btrfs: the copy is instant and shares
blocks until either side is written), and otherwise copies only the data, leaving holes where the source
has holes or zeros (``--sparse=always``), which Python's ``shutil`` does not. The argument list is built
by :func:`copy_argv` (pure, no shell).

Invariant: :func:`copy` never leaves a half-written destination. It writes ``<dst>.part`` beside the
destination and renames it over ``dst`` only once complete; on any failure the partial file is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

__all__ = ["CopyError", "allocated_bytes", "copy", "copy_argv", "dig_holes", "dig_holes_argv", "partial"]

CP = "cp"
FALLOCATE = "fallocate"


class CopyError(Exception):
    """A copy failed; the message names both files and what ``cp`` said."""


def copy_argv(src: Path, dst: Path) -> list[str]:
    """The ``cp`` command that copies ``src`` to ``dst`` (clone if possible, else sparse)."""
    return [CP, "--reflink=auto", "--sparse=always", "--", str(src), str(dst)]


def partial(dst: Path) -> Path:
    """Where :func:`copy` writes before the rename."""
    return dst.with_name(dst.name + ".part")


async def copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (replacing it) through :func:`partial`; :class:`CopyError` on failure."""
    tmp = partial(dst)
    tmp.unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *copy_argv(src, tmp), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await proc.communicate()
    except BaseException:  # cancelled (a deadline): stop cp, leave nothing behind
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise CopyError(f"copying {src} to {dst} failed: {err.decode(errors='replace').strip()}")
    os.replace(tmp, dst)


def dig_holes_argv(path: Path) -> list[str]:
    """The ``fallocate`` command that turns the zero blocks of ``path`` into holes (util-linux)."""
    return [FALLOCATE, "--dig-holes", "--", str(path)]


async def dig_holes(path: Path) -> None:
    """Make ``path`` sparse where it holds zeros (QEMU's backup jobs write zeros as allocated blocks);
    the contents do not change. :class:`CopyError` on failure."""
    proc = await asyncio.create_subprocess_exec(
        *dig_holes_argv(path), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise CopyError(f"making {path} sparse failed: {err.decode(errors='replace').strip()}")


def allocated_bytes(path: Path) -> int:
    """Bytes ``path`` really occupies on disk (sparse files: less than their size)."""
    return os.stat(path).st_blocks * 512
