"""NFS volumes against a real NFSv3 server (nfs-ganesha on loopback): the agent's image creation never
replaces an image, imports are renamed into place with nothing half-written left behind, and released
volumes are removed; all without mounting anything (libnfs and qemu-img's nfs:// URLs). Also what the other
storage features use: offline growth (raw and qcow2, never shrinking), copies out and replacements in
place (the old image stays when a copy fails, no temporary file is left), a clone read from an NFS source,
the QEMU disks that have an NFS image open, and a local overlay reading its base over NFS. Uploads, clones
between NFS claims, exports, snapshots and restores, offline and live expansion and ephemeral volumes end
to end: tests/e2e/test_shared_storage.py."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kubevisor.agent import nfsvolumes
from kubevisor.agent.uploading import UploadReceiver
from kubevisor.api import cdi, upload
from kubevisor.client import Client
from kubevisor.controllers.volumebinding import VolumeBindingController
from kubevisor.storage import cloning, importing, nfsfiles
from kubevisor.testing import nfs
from kubevisor.testing.cluster import running_platform
from tests.integration.client.libcluster import until

MIB = 1024 * 1024


def volume(nfs_server: nfs.NfsServer, name: str) -> nfsvolumes.NfsLocation:
    pv = {"spec": {"nfs": {"server": nfs_server.address, "path": str(nfs_server.export / name)}}}
    found = nfsvolumes.location(pv, f"PersistentVolume {name}")
    assert found is not None
    return found


async def test_image_is_created_once_and_never_replaced(nfs_server: nfs.NfsServer) -> None:
    vol = volume(nfs_server, "pvc-create")
    path = await nfsvolumes.image(vol, "pv", size=4 * MIB)
    local = nfs_server.export / "pvc-create" / "disk.img"
    assert path == str(local)
    assert local.stat().st_size == 4 * MIB
    with local.open("r+b") as f:
        f.write(b"guest data")
    assert await nfsvolumes.image(vol, "pv", size=8 * MIB) == str(local)
    assert local.read_bytes()[:10] == b"guest data" and local.stat().st_size == 4 * MIB
    assert sorted(p.name for p in local.parent.iterdir()) == ["disk.img"]
    # a volume whose path is the image file itself
    assert await nfsvolumes.image(nfsvolumes.NfsLocation(vol.server, str(local)), "pv", size=None) == str(
        local
    )
    with pytest.raises(nfsvolumes.NfsVolumeError, match="is missing and the volume has no capacity"):
        await nfsvolumes.image(volume(nfs_server, "pvc-nosize"), "pv", size=None)


async def test_fill_renames_into_place_and_a_failed_fill_leaves_the_old_image(
    nfs_server: nfs.NfsServer, tmp_path: Path
) -> None:
    vol = volume(nfs_server, "pvc-fill")
    source = tmp_path / "source.img"
    with source.open("wb") as f:
        f.write(b"imported bytes")
        f.truncate(2 * MIB)
    await nfsvolumes.fill(vol, "pv", source=str(source), size=2 * MIB)
    target = nfs_server.export / "pvc-fill" / "disk.img"
    assert target.read_bytes()[:14] == b"imported bytes"
    with pytest.raises(nfsvolumes.NfsVolumeError, match="qemu-img failed"):
        await nfsvolumes.fill(vol, "pv", source=str(tmp_path / "missing.img"), size=2 * MIB)
    assert target.read_bytes()[:14] == b"imported bytes"
    assert sorted(p.name for p in target.parent.iterdir()) == ["disk.img"]  # no temporary file left
    await nfsvolumes.fill(vol, "pv", source=None, size=3 * MIB)
    assert target.stat().st_size == 3 * MIB and target.read_bytes()[:14] == bytes(14)

    await nfsvolumes.remove(vol, "pv")
    assert not target.parent.exists()
    await nfsvolumes.remove(vol, "pv")  # already gone: nothing to do


def test_link_new_does_not_clobber(nfs_server: nfs.NfsServer) -> None:
    (nfs_server.export / "a").write_bytes(b"a")
    (nfs_server.export / "b").write_bytes(b"b")
    assert not nfsfiles.link_new(
        nfs_server.address, str(nfs_server.export / "a"), str(nfs_server.export / "b")
    )
    assert (nfs_server.export / "b").read_bytes() == b"b"
    assert nfsfiles.link_new(nfs_server.address, str(nfs_server.export / "a"), str(nfs_server.export / "c"))
    assert (nfs_server.export / "c").read_bytes() == b"a"


def test_bad_locations_are_refused() -> None:
    for spec, message in (
        ({"server": "", "path": "/export"}, "spec.nfs.server must be a host name"),
        ({"server": "h", "path": "export"}, "spec.nfs.path 'export' must be an absolute path"),
        ({"server": "h", "path": "/export/../etc"}, "must be an absolute path other than /"),
    ):
        with pytest.raises(nfsvolumes.NfsVolumeError, match=message):
            nfsvolumes.location({"spec": {"nfs": spec}}, "pv")
    assert nfsvolumes.location({"spec": {"hostPath": {"path": "/x"}}}, "pv") is None


def test_a_missing_server_program_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = r"ganesha\.nfsd.*not found: install .*nfs-ganesha"
    with pytest.raises(nfs.NfsServerUnavailable, match=missing), nfs.serve(tmp_path):
        pass


def write_image(path: Path, size: int, data: bytes, offset: int = MIB) -> None:
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(offset)
        f.write(data)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def qemu_img(*args: str, tool: str = "qemu-img") -> str:
    return subprocess.run([tool, *args], check=True, capture_output=True, text=True).stdout


async def test_grow_copy_out_and_replace(nfs_server: nfs.NfsServer, tmp_path: Path) -> None:
    (nfs_server.export / "pvc-grow").mkdir()
    raw = nfs_server.export / "pvc-grow" / "disk.img"
    write_image(raw, 4 * MIB, b"raw data")
    path = str(raw)
    assert await nfsvolumes.virtual_size(nfs_server.address, path, "raw", "pv") == 4 * MIB
    assert await nfsvolumes.grow(nfs_server.address, path, "raw", 8 * MIB, "pv")
    assert raw.stat().st_size == 8 * MIB and raw.read_bytes()[MIB : MIB + 8] == b"raw data"
    assert not await nfsvolumes.grow(nfs_server.address, path, "raw", 6 * MIB, "pv")  # never shrinks
    assert raw.stat().st_size == 8 * MIB

    qcow = nfs_server.export / "pvc-grow" / "q.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(qcow), str(4 * MIB))
    assert await nfsvolumes.grow(nfs_server.address, str(qcow), "qcow2", 16 * MIB, "pv")
    assert await nfsvolumes.virtual_size(nfs_server.address, str(qcow), "qcow2", "pv") == 16 * MIB

    # copy out (qcow2 -> raw, raw -> raw): what exports and snapshots of stopped VMs do
    out = tmp_path / "out.raw"
    await nfsvolumes.copy_out(nfs_server.address, str(qcow), "qcow2", out, "pv", target_format="raw")
    assert out.stat().st_size == 16 * MIB
    await nfsvolumes.copy_out(nfs_server.address, path, "raw", out, "pv")
    assert out.read_bytes() == raw.read_bytes()

    # replace: the old image stays when the copy fails; no temporary file is left either way
    local = tmp_path / "new.img"
    write_image(local, 8 * MIB, b"new data")
    with pytest.raises(nfsvolumes.NfsVolumeError, match="qemu-img failed"):
        await nfsvolumes.replace(nfs_server.address, path, "pv", source=str(tmp_path / "missing.img"))
    assert raw.read_bytes()[MIB : MIB + 8] == b"raw data"
    before = nfsfiles.stat_path(nfs_server.address, path)
    await nfsvolumes.replace(nfs_server.address, path, "pv", source=str(local))
    assert raw.read_bytes()[MIB : MIB + 8] == b"new data"
    after = nfsfiles.stat_path(nfs_server.address, path)  # what clones compare: inode, size and times
    assert before is not None and after is not None and after.identity != before.identity
    assert sorted(p.name for p in raw.parent.iterdir()) == ["disk.img", "q.qcow2"]
    with pytest.raises(nfsvolumes.NfsVolumeError, match="is not a regular file"):
        await nfsvolumes.virtual_size(nfs_server.address, str(nfs_server.export / "nothing"), "raw", "pv")


def test_open_nodes_finds_qemus_nfs_disks() -> None:
    blocks = [
        {"qdev": "/machine/peripheral/ua-root/virtio-backend", "inserted": {
            "node-name": "drive-0", "file": "/var/lib/root.qcow2", "image": {"virtual-size": 1}}},
        {"qdev": "/machine/peripheral/ua-data/virtio-backend", "inserted": {
            "node-name": "drive-1", "file": "nfs://127.0.0.1/export/pvc a/disk.img",
            "image": {"virtual-size": 4 * MIB}}},
        {"qdev": "/machine/peripheral/ua-cd/virtio-backend"},
    ]  # fmt: skip
    assert nfsvolumes.open_nodes(blocks, "127.0.0.1", "/export/pvc a/disk.img") == [("drive-1", 4 * MIB)]
    assert nfsvolumes.open_nodes(blocks, "127.0.0.2", "/export/pvc a/disk.img") == []
    assert nfsvolumes.open_nodes(None, "127.0.0.1", "/x") == []


async def test_clone_from_an_nfs_source(nfs_server: nfs.NfsServer, tmp_path: Path) -> None:
    (nfs_server.export / "pvc-src").mkdir()
    source = nfs_server.export / "pvc-src" / "disk.img"
    write_image(source, 4 * MIB, b"clone me")
    target = tmp_path / "disk.img"
    result = await cloning.clone_image(
        Path(str(source)), target, size=8 * MIB, source_server=nfs_server.address
    )
    assert result.method == "convert" and result.virtual_size == 4 * MIB and result.size == 8 * MIB
    assert target.stat().st_size == 8 * MIB and target.read_bytes()[MIB : MIB + 8] == b"clone me"
    qcow = nfs_server.export / "pvc-src" / "q.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(source), str(qcow))
    await cloning.clone_image(
        qcow, target, size=4 * MIB, source_format="qcow2", source_server=nfs_server.address
    )
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(importing.ImageTooLarge):
        await cloning.clone_image(source, target, size=2 * MIB, source_server=nfs_server.address)
    with pytest.raises(importing.SourceUnreachable, match="missing"):
        await cloning.clone_image(
            nfs_server.export / "pvc-src" / "gone.img", target, size=8 * MIB, source_server=nfs_server.address
        )
    assert names(tmp_path) == ["disk.img"]  # no temporary file left


async def test_an_overlay_reads_its_base_over_nfs(nfs_server: nfs.NfsServer, tmp_path: Path) -> None:
    (nfs_server.export / "pvc-base").mkdir()
    base = nfs_server.export / "pvc-base" / "disk.img"
    write_image(base, 4 * MIB, b"the base")
    overlay = await nfsvolumes.overlay(tmp_path / "eph.qcow2", nfs_server.address, str(base), "raw", "pv")
    chain = qemu_img("info", "-U", "--output=json", str(overlay))
    assert f'"backing-filename": "nfs://{nfs_server.address}{base}"' in chain
    qemu_img("compare", "-U", str(overlay), str(base))  # read through the backing chain, over NFS
    qemu_img("-f", "qcow2", "-c", "write -P 0x41 0 512", str(overlay), tool="qemu-io")
    assert base.read_bytes()[MIB : MIB + 8] == b"the base" and base.read_bytes()[:512] == bytes(512)


async def test_an_upload_into_an_nfs_claim_is_checked_then_renamed_into_place(
    nfs_server: nfs.NfsServer, tmp_path: Path
) -> None:
    """The agent's upload receiver (mounted alone, over ASGI) against a real API server and binder."""
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    directory = nfs_server.export / "pvc-upload"
    async with (
        running_platform(tmp_path / "data", controllers=False) as plat,
        Client.from_kubeconfig(plat.kubeconfig) as client,
        VolumeBindingController(client),
    ):
        await client.resource("v1", "persistentvolumes").create(
            {
                "metadata": {"name": "pv-upload"},
                "spec": {
                    "capacity": {"storage": "8Mi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "manual",
                    "nfs": {"server": nfs_server.address, "path": str(directory)},
                    "claimRef": {"namespace": "default", "name": "up"},
                },
            }
        )
        pvcs = client.resource("v1", "persistentvolumeclaims")
        await pvcs.create(
            {
                "metadata": {"name": "up", "annotations": {upload.UPLOAD_TARGET: ""}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "manual",
                    "resources": {"requests": {"storage": "8Mi"}},
                },
            },
            "default",
        )
        await until(
            lambda: pvcs.get("up", "default"),
            lambda c: (c.get("status") or {}).get("phase") == "Bound",
            30,
            "claim bound",
        )
        receiver = UploadReceiver(client, node="node-a", volume_dirs=(volumes,), fsync=False)
        path = "/v1/namespaces/{namespace}/persistentvolumeclaims/{name}/upload"

        async def endpoint(request: Request) -> Response:
            return await receiver(request)

        app = Starlette(routes=[Route(path, endpoint, methods=["PUT"])])
        data = b"uploaded over nfs" + bytes(MIB - 17)

        def digest(body: bytes) -> str:
            return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://agent") as http:
            url = path.format(namespace="default", name="up")
            answer = await http.put(url, content=data, headers={"content-digest": digest(data)})
            assert answer.status_code == 200, answer.text
            image = directory / "disk.img"
            assert image.read_bytes()[:17] == b"uploaded over nfs"
            assert names(directory) == ["disk.img"] and names(volumes) == []  # no scratch left
            # a wrong checksum: refused, the image as it was, nothing left behind
            other = b"never stored" + bytes(MIB - 12)
            answer = await http.put(url, content=other, headers={"content-digest": digest(data)})
            assert answer.status_code == 400 and "checksum" in answer.text.lower(), answer.text
            assert image.read_bytes()[:17] == b"uploaded over nfs"
            assert names(directory) == ["disk.img"] and names(volumes) == []
        claim = await pvcs.get("up", "default")
        assert claim["metadata"]["annotations"][cdi.POD_PHASE_ANNOTATION] == "Failed"
