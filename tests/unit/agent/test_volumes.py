"""Volumes whose data comes from the cluster: claims (persistentVolumeClaim, dataVolume, ephemeral),
ConfigMaps, Secrets, ServiceAccounts, the VMI's metadata (downwardAPI), and the kernel of a kernelBoot.
Real qemu-img and real pycdlib; the API objects come from a dict standing in for the cluster."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from kubevisor.agent import claims, converting, preparing
from kubevisor.api.kubevirt_admission import default_vmi_spec
from kubevisor.api.registry import Obj
from kubevisor.virt import qemucmd, qemuimg
from kubevisor.virt.domain import KernelBoot, RunPaths
from kubevisor.virt.process import Reverter
from tests.unit.testing.test_guest import read_iso

MIB = 1024 * 1024


def read_iso_bytes(path: Path) -> tuple[str, dict[str, bytes]]:
    """Volume id and Rock Ridge file name -> bytes."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    files: dict[str, bytes] = {}
    for root, _dirs, names in iso.walk(rr_path="/"):
        for name in names:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"{root.rstrip('/')}/{name}")
            files[f"{root.rstrip('/')}/{name}"] = out.getvalue()
    label = iso.pvd.volume_identifier.decode().strip()
    iso.close()
    return label, files


def vmi_spec(*volumes: dict[str, Any], firmware: dict[str, Any] | None = None) -> Any:
    raw: dict[str, Any] = {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}, "volumes": list(volumes)}
    if firmware is not None:
        raw["domain"]["firmware"] = firmware
    default_vmi_spec(raw)
    return converting.parse_spec(raw)


def claim(
    name: str, volume: str = "", phase: str = "Bound", modes: tuple[str, ...] = ("ReadWriteOnce",)
) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {"accessModes": list(modes), "volumeName": volume or f"pv-{name}"},
        "status": {"phase": phase},
    }


def volume(
    name: str,
    path: Path,
    claim_name: str,
    *,
    source: str = "hostPath",
    modes: tuple[str, ...] = ("ReadWriteOnce",),
    annotations: dict[str, str] | None = None,
    capacity: str = "16Mi",
) -> Obj:
    return {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "capacity": {"storage": capacity},
            "accessModes": list(modes),
            source: {"path": str(path)},
            "claimRef": {"namespace": "default", "name": claim_name},
        },
        "status": {"phase": "Bound"},
    }


class Cluster:
    """The API objects preparing may read, by (resource, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.users: dict[str, list[str]] = {}

    def add(self, resource: str, obj: Obj) -> None:
        self.objects[(resource, obj["metadata"]["name"])] = obj

    def bind(self, name: str, path: Path, **kwargs: Any) -> None:
        """A claim ``name`` bound to a volume ``pv-<name>`` at ``path``."""
        modes = kwargs.get("modes", ("ReadWriteOnce",))
        self.add("persistentvolumeclaims", claim(name, modes=modes))
        self.add("persistentvolumes", volume(f"pv-{name}", path, name, **kwargs))

    async def read(self, resource: str, name: str) -> Obj | None:
        return self.objects.get((resource, name))

    async def token(self, account: str) -> str | None:
        return f"token-of-{account}"

    def sources(self) -> preparing.Sources:
        return preparing.Sources(
            read=self.read,
            request_token=self.token,
            claim_users=lambda c: self.users.get(c, []),
            metadata={
                "name": "vm1",
                "namespace": "default",
                "uid": "uid-1",
                "labels": {"app": "web", "tier": 'a"b'},
                "annotations": {"note": "hello"},
            },
        )


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture
def volumes_dir(tmp_path: Path) -> Path:
    path = tmp_path / "volumes"
    path.mkdir()
    return path


async def prepare(tmp_path: Path, spec: Any, cluster: Cluster, **storage: Any) -> preparing.Prepared:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)

    async def no_secret(name: str) -> None:
        return None

    with Reverter() as revert:
        prepared = await preparing.prepare(
            spec,
            namespace="default",
            name="vm1",
            uid="uid-1",
            run_dir=run_dir,
            storage=preparing.NodeStorage(
                "node-a", volume_dirs=storage.pop("volume_dirs", (tmp_path / "volumes",)), **storage
            ),
            read_secret=no_secret,
            revert=revert,
            sources=cluster.sources(),
        )
        revert.success()
    return prepared


# --- claims ----------------------------------------------------------------------------------------------


async def test_claim_bound_to_an_image_file_is_attached_in_place(
    tmp_path: Path, cluster: Cluster, volumes_dir: Path
) -> None:
    image = volumes_dir / "data.img"
    await qemuimg.create(image, "raw", MIB)
    cluster.bind("data", image)
    spec = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})
    assert (await prepare(tmp_path, spec, cluster)).volumes["d"] == converting.PreparedVolume(image, "raw")
    # readOnly on the volume, and a ReadOnlyMany volume, attach read-only
    ro = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}})
    assert (await prepare(tmp_path, ro, cluster)).volumes["d"].readonly
    cluster.bind("shared", image, modes=("ReadOnlyMany",))
    many = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "shared"}})
    assert (await prepare(tmp_path, many, cluster)).volumes["d"].readonly


async def test_directory_volume_gets_disk_img_of_its_capacity(
    tmp_path: Path, cluster: Cluster, volumes_dir: Path
) -> None:
    directory = volumes_dir / "pv-fs"
    directory.mkdir()
    cluster.bind("fs", directory, source="local", capacity="8Mi")
    spec = vmi_spec({"name": "d", "dataVolume": {"name": "fs"}})  # a DataVolume is its claim of the same name
    prepared = await prepare(tmp_path, spec, cluster)
    assert prepared.volumes["d"] == converting.PreparedVolume(directory / claims.DISK_IMG, "raw")
    info = await qemuimg.info(directory / claims.DISK_IMG)
    assert info["format"] == "raw" and info["virtual-size"] == 8 * MIB
    # the next start uses the same image
    (directory / claims.DISK_IMG).write_bytes(b"x" * 512)
    assert (await prepare(tmp_path, spec, cluster)).volumes["d"].path == directory / claims.DISK_IMG
    assert (directory / claims.DISK_IMG).read_bytes() == b"x" * 512


async def test_format_comes_from_the_volume_annotation_never_from_the_image(
    tmp_path: Path, cluster: Cluster, volumes_dir: Path
) -> None:
    image = volumes_dir / "disk.qcow2"
    await qemuimg.create(image, "qcow2", MIB)  # a guest could have written this header into a raw disk
    cluster.bind("probe", image)
    spec = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "probe"}})
    assert (await prepare(tmp_path, spec, cluster)).volumes["d"].format == "raw"
    cluster.bind("probe", image, annotations={claims.FORMAT_ANNOTATION: "qcow2"})
    assert (await prepare(tmp_path, spec, cluster)).volumes["d"].format == "qcow2"
    cluster.bind("probe", image, annotations={claims.FORMAT_ANNOTATION: "vmdk"})
    with pytest.raises(preparing.PrepareError, match=r"kubevisor\.io/disk-format='vmdk' is not raw or qcow2"):
        await prepare(tmp_path, spec, cluster)


async def test_missing_or_unbound_claims_wait(tmp_path: Path, cluster: Cluster, volumes_dir: Path) -> None:
    spec = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})
    with pytest.raises(preparing.VolumeNotReady) as caught:
        await prepare(tmp_path, spec, cluster)
    assert caught.value.reason == "FailedPvcNotFound"
    assert (
        "spec.volumes[0].persistentVolumeClaim.claimName: PersistentVolumeClaim 'data' does not exist"
        in str(caught.value)
    )
    cluster.add("persistentvolumeclaims", claim("data", phase="Pending"))
    with pytest.raises(preparing.VolumeNotReady) as caught:
        await prepare(tmp_path, spec, cluster)
    assert caught.value.reason == "PvcNotBound" and "is Pending, not Bound" in str(caught.value)
    cluster.add("persistentvolumeclaims", claim("data"))
    with pytest.raises(preparing.VolumeNotReady) as caught:
        await prepare(tmp_path, spec, cluster)
    assert caught.value.reason == "PvNotFound"
    # a volume bound to another claim is not this claim's
    cluster.add("persistentvolumes", volume("pv-data", volumes_dir, "other"))
    with pytest.raises(preparing.VolumeNotReady, match="not bound to it"):
        await prepare(tmp_path, spec, cluster)


async def test_volume_paths_only_under_the_volume_directories(
    tmp_path: Path, cluster: Cluster, volumes_dir: Path
) -> None:
    spec = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})
    cluster.bind("data", Path("/etc/passwd"))
    with pytest.raises(
        preparing.PrepareError, match=r"path /etc/passwd is not under a volume directory of node node-a"
    ):
        await prepare(tmp_path, spec, cluster)
    (volumes_dir / "escape").symlink_to("/etc/passwd")
    cluster.bind("data", volumes_dir / "escape")
    with pytest.raises(preparing.PrepareError, match="is not under a volume directory"):
        await prepare(tmp_path, spec, cluster)
    trap = volumes_dir / "trap"
    trap.mkdir()
    (trap / claims.DISK_IMG).symlink_to("/etc/passwd")
    cluster.bind("data", trap)
    with pytest.raises(preparing.PrepareError, match=r"disk\.img is not a regular file under a volume dir"):
        await prepare(tmp_path, spec, cluster)
    cluster.bind("data", volumes_dir / "missing")
    with pytest.raises(preparing.PrepareError, match="does not exist on node node-a"):
        await prepare(tmp_path, spec, cluster)
    iscsi = volume("pv-data", volumes_dir, "data")
    del iscsi["spec"]["hostPath"]
    iscsi["spec"]["iscsi"] = {
        "targetPortal": "10.0.0.1:3260",
        "iqn": "iqn.2001-04.com.example:disk",
        "lun": 0,
    }
    cluster.add("persistentvolumes", iscsi)
    with pytest.raises(preparing.PrepareError, match=r"only volumes with spec\.hostPath, spec\.local"):
        await prepare(tmp_path, spec, cluster)
    nfs = volume("pv-data", volumes_dir, "data")
    del nfs["spec"]["hostPath"]
    nfs["spec"]["nfs"] = {"server": "nfs.example;rm", "path": "/export"}
    cluster.add("persistentvolumes", nfs)
    with pytest.raises(
        preparing.PrepareError, match=r"spec\.nfs\.server 'nfs.example;rm' is not a host name"
    ):
        await prepare(tmp_path, spec, cluster)


async def test_read_write_once_claim_is_attached_by_one_running_vmi(
    tmp_path: Path, cluster: Cluster, volumes_dir: Path
) -> None:
    image = volumes_dir / "data.img"
    await qemuimg.create(image, "raw", MIB)
    cluster.bind("data", image)
    cluster.users["data"] = ["default/other"]
    spec = vmi_spec({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})
    with pytest.raises(preparing.VolumeNotReady) as caught:
        await prepare(tmp_path, spec, cluster)
    assert caught.value.reason == "FailedAttachVolume"
    assert "(ReadWriteOnce) is attached by VMI default/other on this node" in str(caught.value)
    cluster.bind("data", image, modes=("ReadWriteMany",))
    assert (await prepare(tmp_path, spec, cluster)).volumes["d"].path == image


async def test_ephemeral_is_an_overlay_on_the_untouched_claim(
    tmp_path: Path, cluster: Cluster, volumes_dir: Path
) -> None:
    image = volumes_dir / "base.img"
    await qemuimg.create(image, "raw", MIB)
    real = os.path.realpath(image)  # noqa: ASYNC240 (a test)
    cluster.bind("base", image)
    cluster.users["base"] = ["default/other"]  # a read-only base may be shared
    spec = vmi_spec({"name": "e", "ephemeral": {"persistentVolumeClaim": {"claimName": "base"}}})
    prepared = await prepare(tmp_path, spec, cluster)
    overlay = prepared.volumes["e"]
    assert overlay == converting.PreparedVolume(tmp_path / "run" / "ephemeral-e.qcow2", "qcow2")
    info = await qemuimg.info(overlay.path)
    assert info["backing-filename"] == real
    assert info["backing-filename-format"] == "raw"


async def test_a_failed_start_removes_the_disk_img_it_created(
    tmp_path: Path, cluster: Cluster, volumes_dir: Path
) -> None:
    directory = volumes_dir / "pv-fs"
    directory.mkdir()
    cluster.bind("fs", directory)
    spec = vmi_spec(
        {"name": "d", "persistentVolumeClaim": {"claimName": "fs"}},
        {"name": "c", "configMap": {"name": "missing"}},
    )
    with pytest.raises(preparing.VolumeNotReady):
        await prepare(tmp_path, spec, cluster)
    assert not (directory / claims.DISK_IMG).exists()


# --- config disks ----------------------------------------------------------------------------------------


async def test_config_map_secret_service_account_and_downward_api_disks(
    tmp_path: Path, cluster: Cluster
) -> None:
    cluster.add(
        "configmaps",
        {
            "metadata": {"name": "app"},
            "data": {"greeting": "hello from the ConfigMap\n", "mode": "prod"},
            "binaryData": {"blob": base64.b64encode(b"\x00\x01binary").decode()},
        },
    )
    cluster.add(
        "secrets", {"metadata": {"name": "creds"}, "data": {"password": base64.b64encode(b"s3cret").decode()}}
    )
    cluster.add("serviceaccounts", {"metadata": {"name": "default"}})
    spec = vmi_spec(
        {"name": "cm", "configMap": {"name": "app"}},
        {"name": "sec", "secret": {"secretName": "creds", "volumeLabel": "creds"}},
        {"name": "sa", "serviceAccount": {"serviceAccountName": "default"}},
        {
            "name": "meta",
            "downwardAPI": {
                "fields": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations['note']"}},
                ]
            },
        },
    )
    prepared = await prepare(tmp_path, spec, cluster)
    for name in ("cm", "sec", "sa", "meta"):
        prepared_volume = prepared.volumes[name]
        assert prepared_volume.readonly and prepared_volume.format == "raw"
        assert prepared_volume.path == tmp_path / "run" / f"config-{name}.iso"
    label, files = read_iso_bytes(prepared.volumes["cm"].path)
    assert label == preparing.CONFIG_LABEL
    assert files == {"/greeting": b"hello from the ConfigMap\n", "/mode": b"prod", "/blob": b"\x00\x01binary"}
    assert read_iso(prepared.volumes["sec"].path) == ("creds", {"/password": "s3cret"})
    assert read_iso(prepared.volumes["sa"].path) == (
        "cfgdata",
        {"/namespace": "default", "/token": "token-of-default"},
    )
    assert read_iso(prepared.volumes["meta"].path)[1] == {
        "/labels": 'app="web"\ntier="a\\"b"\n',
        "/name": "vm1",
        "/note": "hello",
    }


async def test_missing_config_sources_wait_unless_optional(tmp_path: Path, cluster: Cluster) -> None:
    for source, field in (
        ({"configMap": {"name": "app"}}, "configMap.name: ConfigMap 'app'"),
        ({"secret": {"secretName": "creds"}}, "secret.secretName: Secret 'creds'"),
        ({"serviceAccount": {"serviceAccountName": "robot"}}, "serviceAccountName: ServiceAccount 'robot'"),
    ):
        with pytest.raises(preparing.VolumeNotReady) as caught:
            await prepare(tmp_path, vmi_spec({"name": "v", **source}), cluster)
        assert caught.value.reason == "FailedMount"
        assert f"{field} does not exist in the VMI's namespace; create it" in str(caught.value)
    optional = vmi_spec({"name": "v", "configMap": {"name": "app", "optional": True}})
    assert read_iso((await prepare(tmp_path, optional, cluster)).volumes["v"].path) == ("cfgdata", {})


async def test_downward_api_refuses_what_it_cannot_fill(tmp_path: Path, cluster: Cluster) -> None:
    spec = vmi_spec(
        {"name": "m", "downwardAPI": {"fields": [{"path": "x", "fieldRef": {"fieldPath": "spec.nodeName"}}]}}
    )
    with pytest.raises(preparing.PrepareError, match=r"downwardAPI\.fields\[0\]\.fieldRef\.fieldPath"):
        await prepare(tmp_path, spec, cluster)
    escape = vmi_spec(
        {
            "name": "m",
            "downwardAPI": {"fields": [{"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}]},
        }
    )
    with pytest.raises(preparing.PrepareError, match="must be a relative path"):
        await prepare(tmp_path, escape, cluster)


# --- kernel boot -----------------------------------------------------------------------------------------


async def test_kernel_boot_from_a_mirrored_image_directory(tmp_path: Path, cluster: Cluster) -> None:
    image = tmp_path / "images" / "kernel-image"
    (image / "boot").mkdir(parents=True)
    (image / "boot" / "vmlinuz").write_bytes(b"kernel")
    (image / "boot" / "initrd.img").write_bytes(b"initrd")
    (image / "escape").symlink_to("/etc/passwd")
    firmware: dict[str, Any] = {
        "kernelBoot": {
            "kernelArgs": "console=ttyS0",
            "container": {
                "image": "registry.local/kernel:1",
                "kernelPath": "/boot/vmlinuz",
                "initrdPath": "/boot/initrd.img",
            },
        }
    }
    spec = vmi_spec(firmware=firmware)
    prepared = await prepare(tmp_path, spec, cluster, image_mirror={"registry.local/kernel:1": image})
    boot = KernelBoot(image / "boot" / "vmlinuz", image / "boot" / "initrd.img", "console=ttyS0")
    assert prepared.kernel_boot == boot
    domain = converting.domain(
        spec,
        namespace="default",
        name="vm1",
        uid="uid-1",
        run=RunPaths(tmp_path / "run"),
        volumes={},
        accel="tcg",
        kernel_boot=prepared.kernel_boot,
    )
    argv = qemucmd.command(domain)
    assert argv[argv.index("-kernel") + 1] == str(boot.kernel)
    assert argv[argv.index("-append") + 1] == "console=ttyS0"
    # by path: a directory under an image directory
    firmware["kernelBoot"]["container"]["image"] = str(image)
    assert (
        await prepare(tmp_path, vmi_spec(firmware=firmware), cluster, image_dirs=(tmp_path / "images",))
    ).kernel_boot == boot
    with pytest.raises(
        preparing.ImageNotFound, match=r"kernelBoot\.container\.image: image .* is not a directory"
    ):
        await prepare(tmp_path, vmi_spec(firmware=firmware), cluster)
    firmware["kernelBoot"]["container"]["kernelPath"] = "/escape"
    with pytest.raises(
        preparing.PrepareError, match=r"kernelBoot\.container\.kernelPath: '/escape' is not a file"
    ):
        await prepare(tmp_path, vmi_spec(firmware=firmware), cluster, image_dirs=(tmp_path / "images",))


async def test_volume_label_must_fit_iso_9660(tmp_path: Path, cluster: Cluster) -> None:
    cluster.add("configmaps", {"metadata": {"name": "app"}, "data": {"k": "v"}})
    spec = vmi_spec({"name": "cm", "configMap": {"name": "app", "volumeLabel": "x" * 33}})
    with pytest.raises(preparing.PrepareError, match=r"volumeLabel 'x+' is not an ISO 9660 volume label"):
        await prepare(tmp_path, spec, cluster)
    assert not (tmp_path / "run" / "config-cm.iso").exists()


async def test_a_claim_being_imported_into_waits_until_the_import_succeeded(
    tmp_path: Path, cluster: Cluster, volumes_dir: Path
) -> None:
    (volumes_dir / "pv-root").mkdir()
    cluster.bind("root", volumes_dir / "pv-root")
    annotations = cluster.objects[("persistentvolumeclaims", "root")]["metadata"].setdefault(
        "annotations", {}
    )
    annotations["cdi.kubevirt.io/storage.import.source"] = "http"
    spec = vmi_spec({"name": "d", "dataVolume": {"name": "root"}})
    for phase in (None, "Running", "Failed"):
        if phase:
            annotations["cdi.kubevirt.io/storage.pod.phase"] = phase
        with pytest.raises(preparing.VolumeNotReady) as caught:
            await prepare(tmp_path, spec, cluster)
        assert caught.value.reason == "DataVolumeNotReady"
        assert not (volumes_dir / "pv-root" / "disk.img").exists()  # not even created
    annotations["cdi.kubevirt.io/storage.pod.phase"] = "Succeeded"
    prepared = await prepare(tmp_path, spec, cluster)
    assert prepared.volumes["d"].path == volumes_dir / "pv-root" / "disk.img"
