"""Preparing a run directory: one image per volume with qemu-img and pycdlib, errors that say what to do,
and nothing left behind when a start fails."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent import converting, preparing
from kubevisor.agent.node import host_capacity
from kubevisor.api.kubevirt_admission import default_vmi_spec
from kubevisor.virt import qemuimg
from kubevisor.virt.process import Reverter
from tests.unit.testing.test_guest import read_iso

IMAGE = "registry.local/guest:latest"


def vmi_spec(*volumes: dict[str, Any]) -> Any:
    raw: dict[str, Any] = {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}, "volumes": list(volumes)}
    default_vmi_spec(raw)
    return converting.parse_spec(raw)


def real(path: Path) -> str:
    return os.path.realpath(path)


async def no_secret(name: str) -> Mapping[str, str] | None:
    return None


async def prepare(
    tmp_path: Path,
    spec: Any,
    mirror: dict[str, Path] | None = None,
    read_secret: Any = no_secret,
    *,
    host_disk_dirs: tuple[Path, ...] | None = None,
) -> preparing.Prepared:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    with Reverter() as revert:
        prepared = await preparing.prepare(
            spec,
            namespace="default",
            name="vm1.example",
            uid="uid-1",
            run_dir=run_dir,
            storage=preparing.NodeStorage(
                "node-a",
                image_mirror=mirror or {},
                image_dirs=(tmp_path / "images",),
                host_disk_dirs=(tmp_path,) if host_disk_dirs is None else host_disk_dirs,
            ),
            read_secret=read_secret,
            revert=revert,
        )
        revert.success()
    return prepared


@pytest.fixture
async def base_image(tmp_path: Path) -> Path:
    path = tmp_path / "images" / "base.img"
    path.parent.mkdir()
    await qemuimg.create(path, "raw", 1024 * 1024)
    return path


async def test_container_disk_from_the_mirror_is_an_overlay(tmp_path: Path, base_image: Path) -> None:
    spec = vmi_spec({"name": "root", "containerDisk": {"image": IMAGE}})
    prepared = await prepare(tmp_path, spec, {IMAGE: base_image})
    root = prepared.volumes["root"]
    assert root == converting.PreparedVolume(tmp_path / "run" / "disk-root.qcow2", "qcow2")
    info = await qemuimg.info(root.path)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == real(base_image)
    assert info["backing-filename-format"] == "raw"
    # a local file path is accepted as the image too
    local = vmi_spec({"name": "root", "containerDisk": {"image": str(base_image)}})
    (tmp_path / "run" / "disk-root.qcow2").unlink()
    assert (await prepare(tmp_path, local)).volumes["root"].format == "qcow2"


async def test_unknown_image_says_what_to_do(tmp_path: Path) -> None:
    spec = vmi_spec({"name": "root", "containerDisk": {"image": "quay.io/nobody/nothing:1"}})
    with pytest.raises(preparing.ImageNotFound) as caught:
        await prepare(tmp_path, spec)
    message = str(caught.value)
    assert "spec.volumes[0].containerDisk.image" in message
    assert "node-a's image mirror" in message and "--image-mirror IMAGE=FILE" in message


@pytest.mark.parametrize("image", ["/etc/passwd", "file:///etc/passwd", "{tmp}/images/../outside.img"])
async def test_local_images_only_from_the_image_directories(tmp_path: Path, image: str) -> None:
    (tmp_path / "outside.img").write_bytes(b"\0" * 512)
    spec = vmi_spec({"name": "root", "containerDisk": {"image": image.format(tmp=tmp_path)}})
    with pytest.raises(preparing.ImageNotFound):
        await prepare(tmp_path, spec)


async def test_host_disks_only_under_the_host_disk_directories(tmp_path: Path) -> None:
    spec = vmi_spec({"name": "d", "hostDisk": {"path": "/etc/passwd", "type": "Disk"}})
    with pytest.raises(
        preparing.PrepareError, match=r"hostDisk\.path: /etc/passwd is not under a host-disk dir"
    ):
        await prepare(tmp_path, spec)
    with pytest.raises(
        preparing.PrepareError, match=r"hostDisk: hostDisk volumes are disabled on node node-a"
    ):
        await prepare(tmp_path, spec, host_disk_dirs=())
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "escape").symlink_to("/etc/passwd")
    escape = vmi_spec(
        {"name": "d", "hostDisk": {"path": str(tmp_path / "allowed" / "escape"), "type": "Disk"}}
    )
    with pytest.raises(preparing.PrepareError, match="is not under a host-disk directory"):
        await prepare(tmp_path, escape, host_disk_dirs=(tmp_path / "allowed",))


async def test_empty_disk_and_host_disks(tmp_path: Path) -> None:
    created = tmp_path / "host" / "new.img"
    existing = tmp_path / "existing.img"
    existing.write_bytes(b"\0" * 4096)
    spec = vmi_spec(
        {"name": "scratch", "emptyDisk": {"capacity": "2Mi"}},
        {"name": "new", "hostDisk": {"path": str(created), "type": "DiskOrCreate", "capacity": "3Mi"}},
        {"name": "old", "hostDisk": {"path": str(existing), "type": "Disk"}},
    )
    prepared = await prepare(tmp_path, spec)
    scratch = await qemuimg.info(prepared.volumes["scratch"].path)
    assert (scratch["format"], scratch["virtual-size"]) == ("qcow2", 2 * 1024 * 1024)
    assert prepared.volumes["new"] == converting.PreparedVolume(created, "raw")
    assert created.stat().st_size == 3 * 1024 * 1024
    assert prepared.volumes["old"] == converting.PreparedVolume(existing, "raw")


async def test_missing_host_disk(tmp_path: Path) -> None:
    spec = vmi_spec({"name": "d", "hostDisk": {"path": str(tmp_path / "nope.img"), "type": "Disk"}})
    with pytest.raises(
        preparing.PrepareError, match=r"spec\.volumes\[0\]\.hostDisk\.path: .* does not exist"
    ):
        await prepare(tmp_path, spec)


async def test_nocloud_seed_as_kubevirt_writes_it(tmp_path: Path) -> None:
    user_data = "#!/bin/sh\necho hi\n"
    spec = vmi_spec(
        {
            "name": "ci",
            "cloudInitNoCloud": {
                "userDataBase64": base64.b64encode(user_data.encode()).decode(),
                "networkData": "version: 2\n",
            },
        }
    )
    seed = (await prepare(tmp_path, spec)).volumes["ci"]
    assert seed.readonly and seed.format == "raw"
    volume_id, files = read_iso(seed.path)
    assert volume_id == "cidata"
    assert json.loads(files["/meta-data"]) == {"instance-id": "vm1.example.default", "local-hostname": "vm1"}
    assert files["/user-data"] == user_data
    assert files["/network-config"] == "version: 2\n"


async def test_config_drive_from_a_secret(tmp_path: Path) -> None:
    async def read_secret(name: str) -> Mapping[str, str] | None:
        return {"userdata": "#!/bin/sh\necho secret\n"} if name == "ci-secret" else None

    spec = vmi_spec({"name": "ci", "cloudInitConfigDrive": {"secretRef": {"name": "ci-secret"}}})
    seed = (await prepare(tmp_path, spec, read_secret=read_secret)).volumes["ci"]
    volume_id, files = read_iso(seed.path)
    assert volume_id == "config-2"
    assert files["/openstack/latest/user_data"] == "#!/bin/sh\necho secret\n"
    assert json.loads(files["/openstack/latest/meta_data.json"])["uuid"] == "uid-1"

    missing = vmi_spec({"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": "absent"}}})
    with pytest.raises(
        preparing.PrepareError, match=r"cloudInitNoCloud\.userData: Secret 'absent' does not exist"
    ):
        await prepare(tmp_path, missing)


async def test_a_failed_prepare_leaves_nothing(tmp_path: Path, base_image: Path) -> None:
    created = tmp_path / "host" / "new.img"
    spec = vmi_spec(
        {"name": "root", "containerDisk": {"image": IMAGE}},
        {"name": "new", "hostDisk": {"path": str(created), "type": "DiskOrCreate", "capacity": "1Mi"}},
        {"name": "sys", "sysprep": {"configMap": {"name": "unattend"}}},
    )
    with pytest.raises(preparing.PrepareError, match=r"spec\.volumes\[2\]\.sysprep: .*not supported"):
        await prepare(tmp_path, spec, {IMAGE: base_image})
    assert list((tmp_path / "run").iterdir()) == []
    assert not created.exists()


def test_host_capacity_keeps_the_reserve_back() -> None:
    capacity, allocatable = host_capacity(512, meminfo="MemTotal:        2048000 kB\nMemFree: 1 kB\n")
    assert capacity["memory"] == "2048000Ki"
    assert allocatable["memory"] == f"{2048000 - 512 * 1024}Ki"
    assert capacity["cpu"] == allocatable["cpu"]
