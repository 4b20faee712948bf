"""Copying disk images: sparse, atomic (nothing half-written is ever at the destination)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubevisor.storage import imagecopy

MiB = 1024 * 1024


def test_argv_clones_or_copies_sparse() -> None:
    argv = imagecopy.copy_argv(Path("/a/disk.img"), Path("/b/x.img"))
    assert argv == ["cp", "--reflink=auto", "--sparse=always", "--", "/a/disk.img", "/b/x.img"]


async def test_copy_keeps_holes_and_replaces_the_destination(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    with src.open("wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(b"x" * MiB)
    dst.write_bytes(b"old")
    await imagecopy.copy(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert imagecopy.allocated_bytes(dst) < 8 * MiB
    assert not imagecopy.partial(dst).exists()


async def test_a_failed_copy_leaves_the_destination_alone(tmp_path: Path) -> None:
    dst = tmp_path / "dst.img"
    dst.write_bytes(b"keep")
    with pytest.raises(imagecopy.CopyError, match=r"missing\.img"):
        await imagecopy.copy(tmp_path / "missing.img", dst)
    assert dst.read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["dst.img"]


async def test_zeros_written_by_a_backup_job_become_holes(tmp_path: Path) -> None:
    image = tmp_path / "backup.img"
    image.write_bytes(b"\0" * 8 * MiB + b"y" * MiB)
    assert imagecopy.allocated_bytes(image) >= 9 * MiB
    await imagecopy.dig_holes(image)
    assert imagecopy.allocated_bytes(image) < 2 * MiB
    assert image.read_bytes() == b"\0" * 8 * MiB + b"y" * MiB
