"""The clone engine (:mod:`kubevisor.storage.cloning`) on real files with the real ``cp`` and ``qemu-img``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kubevisor.storage import cloning, importing

MiB = 1024 * 1024


def raw_source(path: Path, size: int = 16 * MiB) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(2 * MiB)
        f.write(b"kubevisor-clone" * 1000)
    return path


def qcow2_of(raw: Path) -> Path:
    out = raw.with_suffix(".qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    return out


def test_argv() -> None:
    assert cloning.convert_argv(Path("/a"), "qcow2", Path("/b"), "raw") == [
        "qemu-img", "convert", "-p", "-U", "-f", "qcow2", "-O", "raw", "-W", "/a", "/b",
    ]  # fmt: skip
    assert cloning.resize_argv(Path("/b"), "qcow2", 5) == [
        "qemu-img",
        "resize",
        "-q",
        "-f",
        "qcow2",
        "/b",
        "5",
    ]


async def test_raw_copy_grows_sparse_and_leaves_the_source(tmp_path: Path) -> None:
    source = raw_source(tmp_path / "src.img")
    before = source.read_bytes()
    target = tmp_path / "dst" / "disk.img"
    target.parent.mkdir()
    seen: list[float] = []
    result = await cloning.clone_image(source, target, size=32 * MiB, progress=seen.append)
    assert result.method == "copy" and result.virtual_size == 16 * MiB and result.size == 32 * MiB
    assert target.stat().st_size == 32 * MiB
    assert target.read_bytes()[: 16 * MiB] == before
    assert target.stat().st_blocks * 512 < 4 * MiB
    assert seen[-1] == 1.0
    assert source.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["disk.img"]  # no temporary file left


async def test_qcow2_source_is_converted(tmp_path: Path) -> None:
    raw = raw_source(tmp_path / "src.img")
    target = tmp_path / "disk.img"
    result = await cloning.clone_image(qcow2_of(raw), target, size=16 * MiB, source_format="qcow2")
    assert result.method == "convert"
    assert target.read_bytes() == raw.read_bytes()


async def test_qcow2_target_is_resized(tmp_path: Path) -> None:
    raw = raw_source(tmp_path / "src.img")
    target = tmp_path / "disk.qcow2"
    await cloning.clone_image(raw, target, size=32 * MiB, target_format="qcow2")
    assert await cloning.virtual_size(target, "qcow2") == 32 * MiB


async def test_a_source_larger_than_the_target_is_refused(tmp_path: Path) -> None:
    source = raw_source(tmp_path / "src.img", 32 * MiB)
    target = tmp_path / "disk.img"
    with pytest.raises(importing.ImageTooLarge, match="larger than the target"):
        await cloning.clone_image(source, target, size=16 * MiB)
    assert not target.exists()


async def test_a_source_written_during_the_copy_is_refused_as_transient(tmp_path: Path) -> None:
    source = qcow2_of(raw_source(tmp_path / "src.img"))
    target = tmp_path / "disk.img"

    def writer(fraction: float) -> None:  # something writing the source while it is read
        with source.open("ab") as f:
            f.write(bytes(512))

    with pytest.raises(cloning.SourceChanged, match="written during the copy") as caught:
        await cloning.clone_image(source, target, size=16 * MiB, source_format="qcow2", progress=writer)
    assert isinstance(caught.value, importing.TransientImportError)
    assert not target.exists() and not cloning.temporary(target).exists()
