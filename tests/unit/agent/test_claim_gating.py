"""A claim an upload fills is held back from VMIs until the upload has succeeded; the upload receiver
itself resolves it before (:mod:`kubevisor.agent.claims`). The cluster is a dict, qemu-img is real."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.agent import claims, preparing
from kubevisor.virt.process import Reverter
from tests.unit.agent.test_volumes import Cluster, prepare, vmi_spec


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


async def test_an_upload_target_waits_until_its_upload_succeeded(tmp_path: Path, cluster: Cluster) -> None:
    volumes_dir = tmp_path / "volumes"
    (volumes_dir / "pv-root").mkdir(parents=True)
    cluster.bind("root", volumes_dir / "pv-root")
    annotations = cluster.objects[("persistentvolumeclaims", "root")]["metadata"].setdefault(
        "annotations", {}
    )
    annotations["cdi.kubevirt.io/storage.upload.target"] = ""
    spec = vmi_spec({"name": "d", "dataVolume": {"name": "root"}})
    for phase in (None, "Running", "Failed"):
        if phase:
            annotations["cdi.kubevirt.io/storage.pod.phase"] = phase
        with pytest.raises(preparing.VolumeNotReady, match="is an upload target") as caught:
            await prepare(tmp_path, spec, cluster)
        assert caught.value.reason == "DataVolumeNotReady"
        assert not (volumes_dir / "pv-root" / "disk.img").exists()  # not even created

        async with Reverter() as revert:  # the upload itself gets the image, whatever the phase
            image = await claims.resolve(
                "root",
                claims.UPLOAD_FIELD,
                namespace="default",
                node="node-a",
                volume_dirs=(volumes_dir,),
                read=cluster.read,
                revert=revert,
            )
            revert.success()
        assert image.path == volumes_dir / "pv-root" / "disk.img"
        image.path.unlink()
    annotations["cdi.kubevirt.io/storage.pod.phase"] = "Succeeded"
    prepared = await prepare(tmp_path, spec, cluster)
    assert prepared.volumes["d"].path == volumes_dir / "pv-root" / "disk.img"
