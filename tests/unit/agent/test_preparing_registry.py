"""containerDisk volumes pulled from a registry while preparing a run directory: the mirror and local files
come first, pulls land in the node's image cache under the overlay, and errors say which volume and image
and whether the agent retries (ImageNotFound: ErrImagePull) or fails the VMI (PrepareError)."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent import converting, preparing
from kubevisor.api.kubevirt_admission import default_vmi_spec
from kubevisor.storage import registry
from kubevisor.testing import containerdisks
from kubevisor.testing.containerdisks import Entry, LocalRegistry
from kubevisor.virt import qemuimg
from kubevisor.virt.process import Reverter


@pytest.fixture(scope="module")
def local_registry() -> Iterator[LocalRegistry]:
    try:
        containerdisks.require(containerdisks.SKOPEO)
        with containerdisks.running_registry() as started:
            yield started
    except containerdisks.ToolMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def pushed(local_registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``127.0.0.1:PORT/kubevisor/disk:latest``: a containerDisk holding a small qcow2."""
    tmp = tmp_path_factory.mktemp("image")
    containerdisks.disk_layout(tmp / "layout", qcow2(tmp / "disk.qcow2"))
    reference = f"{local_registry.host}/kubevisor/disk:latest"
    containerdisks.push(tmp / "layout", reference)
    return reference


def qcow2(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    return path


def spec_with(container_disk: dict[str, Any]) -> Any:
    raw: dict[str, Any] = {
        "domain": {"devices": {}, "memory": {"guest": "64Mi"}},
        "volumes": [{"name": "root", "containerDisk": container_disk}],
    }
    default_vmi_spec(raw)
    return converting.parse_spec(raw)


def secrets(found: Mapping[str, Mapping[str, str]]) -> preparing.SecretReader:
    async def read(name: str) -> Mapping[str, str] | None:
        return found.get(name)

    return read


async def prepare(
    tmp_path: Path,
    container_disk: dict[str, Any],
    *,
    cache: registry.ImageCache | None,
    mirror: dict[str, Path] | None = None,
    read_secret: preparing.SecretReader | None = None,
) -> preparing.Prepared:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    with Reverter() as revert:
        prepared = await preparing.prepare(
            spec_with(container_disk),
            namespace="default",
            name="vm1",
            uid="uid-1",
            run_dir=run_dir,
            storage=preparing.NodeStorage("node-a", image_mirror=mirror or {}, image_cache=cache),
            read_secret=read_secret or secrets({}),
            revert=revert,
        )
        revert.success()
    return prepared


async def test_pulled_image_backs_the_overlay(tmp_path: Path, pushed: str) -> None:
    cache = registry.ImageCache(tmp_path / "cache")
    prepared = await prepare(tmp_path, {"image": pushed}, cache=cache)
    overlay = prepared.volumes["root"].path
    info = await qemuimg.info(overlay)
    backing = Path(info["backing-filename"])
    assert backing.parent.parent == tmp_path / "cache"
    assert backing.name == "disk.img"
    assert info["backing-filename-format"] == "qcow2"


async def test_mirror_comes_before_the_registry(tmp_path: Path) -> None:
    local = tmp_path / "mirrored.img"
    local.write_bytes(b"\0" * 512)
    cache = registry.ImageCache(tmp_path / "cache", transport=containerdisks.LayoutRegistry(tmp_path))
    await prepare(tmp_path, {"image": "quay.io/kubevirt/cirros:latest"}, cache=cache, mirror={
        "quay.io/kubevirt/cirros:latest": local
    })  # fmt: skip
    assert not (tmp_path / "cache").exists()


async def test_unknown_image_is_retried(tmp_path: Path, local_registry: LocalRegistry) -> None:
    image = f"{local_registry.host}/kubevisor/absent:latest"
    with pytest.raises(preparing.ImageNotFound, match=rf"volume 'root'.*{image}.*404"):
        await prepare(tmp_path, {"image": image}, cache=registry.ImageCache(tmp_path / "cache"))


async def test_without_an_image_cache_nothing_is_pulled(tmp_path: Path, pushed: str) -> None:
    with pytest.raises(preparing.ImageNotFound, match="--image-mirror"):
        await prepare(tmp_path, {"image": pushed}, cache=None)


async def test_image_without_disk_fails(tmp_path: Path, local_registry: LocalRegistry) -> None:
    layout = tmp_path / "layout"
    containerdisks.oci_layout(layout, [[Entry("etc/motd", b"hi")]])
    image = f"{local_registry.host}/kubevisor/no-disk:latest"
    containerdisks.push(layout, image)
    with pytest.raises(preparing.PrepareError, match="no disk image") as failure:
        await prepare(tmp_path, {"image": image}, cache=registry.ImageCache(tmp_path / "cache"))
    assert not isinstance(failure.value, preparing.ImageNotFound)


async def test_invalid_reference_and_policy(tmp_path: Path) -> None:
    cache = registry.ImageCache(tmp_path / "cache")
    with pytest.raises(preparing.PrepareError, match=r"containerDisk\.image.*repository"):
        await prepare(tmp_path, {"image": "Reg.io/UPPER"}, cache=cache)
    with pytest.raises(preparing.PrepareError, match=r"imagePullPolicy: 'Sometimes'"):
        await prepare(tmp_path, {"image": "reg.io/x:1", "imagePullPolicy": "Sometimes"}, cache=cache)


async def test_image_pull_secret(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    containerdisks.disk_layout(layout, qcow2(tmp_path / "disk.qcow2"))
    fake = containerdisks.LayoutRegistry(layout, login=("alice", "pw"), token_realm="https://auth.lab/token")
    cache = registry.ImageCache(tmp_path / "cache", transport=fake)
    login = base64.b64encode(b"alice:pw").decode()
    good = {".dockerconfigjson": json.dumps({"auths": {"reg.lab": {"auth": login}}})}
    source = {"image": "reg.lab/private/guest:latest", "imagePullSecret": "regcred"}
    with pytest.raises(preparing.ImageNotFound, match=r"imagePullSecret: Secret 'regcred'.*does not exist"):
        await prepare(tmp_path, source, cache=cache)
    with pytest.raises(preparing.PrepareError, match=r"dockerconfigjson"):
        await prepare(tmp_path, source, cache=cache, read_secret=secrets({"regcred": {"x": "y"}}))
    other = {".dockerconfigjson": json.dumps({"auths": {"other.lab": {"auth": login}}})}
    with pytest.raises(preparing.ImageNotFound, match=r"volume 'root'.*anonymous"):
        await prepare(tmp_path, source, cache=cache, read_secret=secrets({"regcred": other}))
    prepared = await prepare(tmp_path, source, cache=cache, read_secret=secrets({"regcred": good}))
    assert prepared.volumes["root"].path.exists()
