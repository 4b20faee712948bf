"""Overlays written without qemu-img, checked by qemu-img itself: consistent (``qemu-img check``), the same
geometry as ``qemu-img create`` gives, reading exactly their backing file, and writable (``qemu-io``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kubevisor.virt import qcow2, qemuimg


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def info(path: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads(run("qemu-img", "info", "--output=json", str(path)))
    return result


def header(path: Path) -> tuple[object, ...]:
    return qcow2._HEADER.unpack(path.read_bytes()[: qcow2._HEADER.size])


@pytest.fixture
def raw_backing(tmp_path: Path) -> Path:
    path = tmp_path / "base.img"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 4096))
    return path


def test_an_overlay_on_raw_is_consistent_and_reads_its_backing(tmp_path: Path, raw_backing: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    assert qcow2.write_overlay(overlay, raw_backing, "raw")
    run("qemu-img", "check", str(overlay))
    found = info(overlay)
    assert found["format"] == "qcow2" and found["virtual-size"] == raw_backing.stat().st_size
    assert found["backing-filename"] == str(raw_backing)
    assert found["backing-filename-format"] == "raw"
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(overlay), str(raw_backing))


def test_the_geometry_is_qemu_imgs(tmp_path: Path, raw_backing: Path) -> None:
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    assert qcow2.write_overlay(ours, raw_backing, "raw")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(raw_backing), "-F", "raw", str(theirs))
    mine, qemu = header(ours), header(theirs)
    # every field but where the backing file's name sits (qemu-img also writes a feature name table)
    assert mine[:2] == qemu[:2] and mine[3:] == qemu[3:]
    assert ours.stat().st_size == theirs.stat().st_size


def test_an_overlay_is_writable_and_stays_consistent(tmp_path: Path, raw_backing: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    base = raw_backing.read_bytes()
    assert qcow2.write_overlay(overlay, raw_backing, "raw")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 65536 131072", str(overlay))
    run("qemu-img", "check", str(overlay))
    run("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 65536 131072", str(overlay))
    assert raw_backing.read_bytes() == base  # the backing file is never written
    compare = ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(overlay), str(raw_backing)]
    assert subprocess.run(compare, check=False, capture_output=True).returncode == 1  # differs where written


def test_an_overlay_on_qcow2_takes_its_virtual_size(tmp_path: Path) -> None:
    base, overlay = tmp_path / "base.qcow2", tmp_path / "overlay.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G")
    assert qcow2.write_overlay(overlay, base, "qcow2")
    run("qemu-img", "check", str(overlay))
    assert info(overlay)["virtual-size"] == 1024**3


def test_what_is_not_simple_is_left_to_qemu_img(tmp_path: Path, raw_backing: Path) -> None:
    assert not qcow2.write_overlay(tmp_path / "a.qcow2", raw_backing, "vmdk")
    assert not qcow2.write_overlay(tmp_path / "b.qcow2", Path("relative.img"), "raw")
    assert not (tmp_path / "a.qcow2").exists() and not (tmp_path / "b.qcow2").exists()


async def test_qemuimg_overlay_uses_it(tmp_path: Path, raw_backing: Path) -> None:
    overlay = await qemuimg.overlay(tmp_path / "overlay.qcow2", raw_backing)
    run("qemu-img", "check", str(overlay))
    assert b"feature" not in overlay.read_bytes()[:4096]  # written here (qemu-img adds a feature table)
