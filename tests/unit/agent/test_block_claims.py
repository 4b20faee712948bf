"""volumeMode Block claims on the node (:mod:`kubevisor.agent.claims`, :mod:`kubevisor.agent.blockdevices`):
a mode that differs between claim and volume is refused, a Block volume is a raw image that QEMU gets as a
loop device (when this process may attach one), released once QEMU has it open."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.agent import blockdevices, preparing
from kubevisor.virt import qemucmd
from kubevisor.virt.domain import Disk
from tests.unit.agent.test_volumes import Cluster, prepare, vmi_spec


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def bind(cluster: Cluster, tmp_path: Path, *, claim_mode: str | None, volume_mode: str | None) -> Path:
    directory = tmp_path / "volumes" / "pv-data"
    directory.mkdir(parents=True)
    cluster.bind("data", directory)
    if claim_mode:
        cluster.objects[("persistentvolumeclaims", "data")]["spec"]["volumeMode"] = claim_mode
    if volume_mode:
        cluster.objects[("persistentvolumes", "pv-data")]["spec"]["volumeMode"] = volume_mode
    return directory / "disk.img"


@pytest.mark.parametrize(("claim_mode", "volume_mode"), [("Block", None), (None, "Block")])
async def test_claim_and_volume_modes_must_match(
    tmp_path: Path, cluster: Cluster, claim_mode: str | None, volume_mode: str | None
) -> None:
    bind(cluster, tmp_path, claim_mode=claim_mode, volume_mode=volume_mode)
    spec = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})
    with pytest.raises(
        preparing.PrepareError, match=r"the claim asks for volumeMode \w+ .* but the volume is"
    ):
        await prepare(tmp_path, spec, cluster)


async def test_a_block_volume_is_never_qcow2(tmp_path: Path, cluster: Cluster) -> None:
    bind(cluster, tmp_path, claim_mode="Block", volume_mode="Block")
    annotations = cluster.objects[("persistentvolumes", "pv-data")]["metadata"]["annotations"]
    annotations["kubevisor.io/disk-format"] = "qcow2"
    spec = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})
    with pytest.raises(preparing.PrepareError, match="volumeMode Block volume is a raw image"):
        await prepare(tmp_path, spec, cluster)


async def test_a_block_volume_is_a_loop_device_over_its_raw_image(tmp_path: Path, cluster: Cluster) -> None:
    image = bind(cluster, tmp_path, claim_mode="Block", volume_mode="Block")
    spec = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})
    prepared = await prepare(tmp_path, spec, cluster)
    volume = prepared.volumes["d"]
    assert volume.format == "raw" and image.stat().st_size == 16 * 1024 * 1024
    if not blockdevices.available():  # an unprivileged run: the raw file itself
        assert volume.path == image
        return
    try:
        assert blockdevices.is_loop(volume.path)
        assert await blockdevices.devices_of(image) == [volume.path]
        argv = " ".join(qemucmd._disks((Disk(name="d", path=volume.path),)))
        assert '"driver":"host_device"' in argv.replace(" ", "")
        # nothing holds it open: releasing detaches it at once
        await blockdevices.release_opened([volume.path])
        assert await blockdevices.devices_of(image) == []
    finally:
        await blockdevices.release(volume.path, image)
