"""The shared storage class end to end, on two nodes (two agents of one platform) and a real NFS server
(nfs-ganesha on loopback, :mod:`kubevisor.testing.nfs`):

- NFS: an http import and a blank DataVolume fill claims of a ``server``/``share`` class (the imported
  bytes are in the exported directory, no temporary file is left); a VM on node A boots with both,
  reads the imported bytes and writes into the ReadWriteOnce disk through QEMU's own NFS driver (its
  command line has ``"driver": "nfs"``), and the write is read back from the exported directory; a VM on
  node B attaches the ReadWriteMany claim at the same time and boots; another VM on node B asking for the
  ReadWriteOnce claim is refused (``FailedAttachVolume``, naming the VMI that has it) while the first
  runs. The VM on node A also has an ``ephemeral`` volume on the imported claim (a local overlay reading
  the base over NFS: it reads the payload, its write never reaches the server). The ReadWriteMany claim
  is grown while both guests run: both see the new size (node A's QEMU grows it, node B's follows), and
  the claim's status says so. Deleting the DataVolumes deletes the volumes and their directories on the
  server.
- NFS without a guest: ``kubevisor image-upload`` into an NFS DataVolume, a clone of it into another NFS
  claim, ``kubevisor vmexport download`` of the clone (sha256 verified), a snapshot of a stopped VM with
  the NFS disk and a restore over changed data, and an offline expansion (by the first Ready node).
- ``path``: a blank DataVolume of a class whose directory every node mounts (here: a directory both
  agents list with ``--volume-dir``) is written by a VM of node B and read back from the directory.
- VolumeAttachments: two VMs of two nodes asking for one ReadWriteOnce claim of the ``path`` class at the
  same moment: exactly one runs and holds the claim's VolumeAttachment, the other waits
  (``FailedAttachVolume`` naming the holder's node); hotplugging the claim into a VM of the waiting node is
  refused too; once the first VM is deleted the second starts and holds it; after cleanup no attachment is
  left.

Every test kills the QEMUs of its data directories at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.agent.running import AgentConfig, start_agent
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import cluster, guest, nfs
from kubevisor.testing.console import Console
from tests.e2e import libvmi
from tests.e2e.test_vm_hotplug import run_in_guest
from tests.unit.storage import imageserving

pytestmark = pytest.mark.e2e

NODE_A, NODE_B = "e2e-shared-a", "e2e-shared-b"
SNAP = "snapshot.kubevirt.io/v1beta1"
PAYLOAD = b"kubevisor-imported"
READ_AND_WRITE = r"""#!/bin/sh
echo "vdc=$(head -c 18 /dev/vdc)"
echo "vde=$(head -c 18 /dev/vde)"
printf ephemeral | dd of=/dev/vde bs=512 conv=fsync 2>/dev/null; echo wrote-vde-$?
printf written-by-$(hostname) | dd of=/dev/vdd bs=512 conv=fsync 2>/dev/null; echo wrote-$?
"""
READ_ONLY = r"""#!/bin/sh
echo "vdc=$(head -c 18 /dev/vdc)"
"""
MIB = 1024 * 1024
WAIT_FOR_VDC = (
    "i=0; while [ $i -lt 150 ] && [ $(cat /sys/class/block/vdc/size) = {old} ]; do sleep 0.2; i=$((i+1)); "
    "done; echo grown-$(cat /sys/class/block/vdc/size)"
)
WRITE = r"""#!/bin/sh
printf written-by-$(hostname) | dd of=/dev/vdc bs=512 conv=fsync 2>/dev/null; echo wrote-$?
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kv-shared-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir_b() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kv-"))
    yield path
    libvmi.kill_qemus(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def plat(
    data_dir: Path, data_dir_b: Path, shared_dir: Path, test_guest: guest.Guest
) -> AsyncIterator[Platform]:
    mirror = {libvmi.IMAGE: test_guest.disk}
    config = AgentConfig(
        data_dir=data_dir, node_name=NODE_A, accel="tcg", volume_dirs=(shared_dir,), image_mirror=mirror
    )
    async with cluster.running_platform(data_dir, agent=True, agent_config=config) as platform:
        second = await start_agent(
            platform.kubeconfig,
            platform.registry,
            AgentConfig(
                data_dir=data_dir_b,
                node_name=NODE_B,
                accel="tcg",
                volume_dirs=(shared_dir,),
                image_mirror=mirror,
            ),
        )
        try:
            yield platform
        finally:
            await second.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[imageserving.ImageServer]:
    with (tmp_path / "payload.img").open("wb") as f:
        f.write(PAYLOAD)
        f.truncate(1024 * 1024)
    with imageserving.serving(tmp_path) as s:
        yield s


async def storage_class(client: Client, name: str, **parameters: str) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(
        {
            "metadata": {"name": name},
            "provisioner": "kubevisor.io/shared",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": True,
            "parameters": parameters,
        }
    )
    profiles = client.resource("cdi.kubevirt.io/v1beta1", "storageprofiles")
    await libvmi.until(  # DataVolumes without accessModes take them from the profile
        functools.partial(libvmi.get_or_empty, profiles, name),
        lambda p: bool((p.get("status") or {}).get("claimPropertySets")),
        20,
        f"StorageProfile {name}",
    )


async def data_volume(client: Client, name: str, sc: str, source: Obj, modes: list[str] | None = None) -> Obj:
    storage: Obj = {"storageClassName": sc, "resources": {"requests": {"storage": "8Mi"}}}
    if modes:
        storage["accessModes"] = modes
    dvs = client.resource("cdi.kubevirt.io/v1beta1", "datavolumes")
    await dvs.create(
        {"metadata": {"name": name}, "spec": {"source": source, "storage": storage}}, libvmi.NAMESPACE
    )
    await libvmi.until(
        functools.partial(libvmi.get_or_empty, dvs, name),
        lambda d: libvmi.phase(d) == "Succeeded",
        60,
        f"DataVolume {name} Succeeded",
    )
    pvc: Obj = await client.resource("v1", "persistentvolumeclaims").get(name, libvmi.NAMESPACE)
    return pvc


def vm_on(name: str, node: str, user_data: str, claims: list[str]) -> Obj:
    vm = libvmi.vm_manifest(
        name,
        grace=0,
        user_data=user_data,
        disks=[{"name": claim, "disk": {"bus": "virtio"}} for claim in claims],
        volumes=[{"name": claim, "dataVolume": {"name": claim}} for claim in claims],
    )
    vm["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return vm


async def test_nfs_claims_across_two_nodes(
    client: Client,
    data_dir: Path,
    data_dir_b: Path,
    nfs_server: nfs.NfsServer,
    server: imageserving.ImageServer,
) -> None:
    await storage_class(client, "nfs", server=nfs_server.address, share=str(nfs_server.export))
    # no accessModes: the class's StorageProfile says ReadWriteMany
    imported = await data_volume(client, "imported", "nfs", {"http": {"url": f"{server.url}/payload.img"}})
    assert imported["status"]["accessModes"] == ["ReadWriteMany"]
    single = await data_volume(client, "single", "nfs", {"blank": {}}, ["ReadWriteOnce"])
    imported_dir = nfs_server.export / imported["spec"]["volumeName"]
    single_dir = nfs_server.export / single["spec"]["volumeName"]
    assert sorted(p.name for p in imported_dir.iterdir()) == ["disk.img"]  # no temporary file left
    assert (imported_dir / "disk.img").read_bytes()[: len(PAYLOAD)] == PAYLOAD
    assert (imported_dir / "disk.img").stat().st_size == 8 * 1024 * 1024
    assert sorted(p.name for p in single_dir.iterdir()) == ["disk.img"]

    vms = client.resource(libvmi.KV, "virtualmachines")
    vm_a = vm_on("nfs-a", NODE_A, READ_AND_WRITE, ["imported", "single"])
    template = vm_a["spec"]["template"]["spec"]  # and an ephemeral overlay on the imported claim: vde
    template["domain"]["devices"]["disks"].append({"name": "scratch", "disk": {"bus": "virtio"}})
    template["volumes"].append(
        {"name": "scratch", "ephemeral": {"persistentVolumeClaim": {"claimName": "imported"}}}
    )
    await vms.create(vm_a, libvmi.NAMESPACE)
    # ReadWriteMany: a VM of the other node attaches the imported claim at the same time
    await vms.create(vm_on("nfs-b", NODE_B, READ_ONLY, ["imported"]), libvmi.NAMESPACE)
    text = await libvmi.serial_line(data_dir, "nfs-a", f"{guest.USERDATA_END} rc=0", 120)
    assert f"vdc={PAYLOAD.decode()}" in text
    assert f"vde={PAYLOAD.decode()}" in text and "wrote-vde-0" in text  # the base read over NFS
    assert "wrote-0" in text
    pid = libvmi.qemu_pid(data_dir, "nfs-a")
    assert pid is not None
    cmdline = libvmi.read_log(Path(f"/proc/{pid}/cmdline"))
    assert '"driver": "nfs"' in cmdline or '"driver":"nfs"' in cmdline  # QEMU's own NFS client
    written = b"written-by-nfs-a"
    assert (single_dir / "disk.img").read_bytes()[: len(written)] == written
    await libvmi.vmi_running(client, "nfs-a")

    # ReadWriteOnce: refused on node B while nfs-a runs on node A
    await vms.create(vm_on("nfs-c", NODE_B, READ_ONLY, ["single"]), libvmi.NAMESPACE)
    refused = await libvmi.until(
        lambda: libvmi.events_for(client, "nfs-c"),
        lambda events: any(e.get("reason") == "FailedAttachVolume" for e in events),
        60,
        "FailedAttachVolume for nfs-c",
    )
    message = next(e["message"] for e in refused if e.get("reason") == "FailedAttachVolume")
    assert "'single' (ReadWriteOnce) is attached by running VMI default/nfs-a on another node" in message
    vmi_c = await client.resource(libvmi.KV, "virtualmachineinstances").get("nfs-c", libvmi.NAMESPACE)
    assert libvmi.phase(vmi_c) != "Running"
    assert libvmi.qemu_pid(data_dir_b, "nfs-c") is None
    attachments = client.resource("storage.k8s.io/v1", "volumeattachments")
    held = [(a["metadata"]["name"], a["spec"]["nodeName"]) for a in (await attachments.list()).items]
    assert held == [(f"kubevisor-{single['spec']['volumeName']}", NODE_A)]  # ReadWriteMany needs none

    text = await libvmi.serial_line(data_dir_b, "nfs-b", f"{guest.USERDATA_END} rc=0", 120)
    assert f"vdc={PAYLOAD.decode()}" in text
    for name in ("nfs-a", "nfs-b"):  # both at once
        await libvmi.vmi_running(client, name)

    # live expansion of the ReadWriteMany claim both guests have open: node A (the first node running a
    # user) grows it in its QEMU (block_resize over NFS), node B's QEMU follows; both guests see it
    await client.resource("v1", "persistentvolumeclaims").patch(
        "imported", {"spec": {"resources": {"requests": {"storage": "16Mi"}}}}, libvmi.NAMESPACE
    )
    for directory, name in ((data_dir, "nfs-a"), (data_dir_b, "nfs-b")):
        await libvmi.serial_line(directory, name, guest.READY_MARKER, 60)
        async with Console(libvmi.run_dir(directory, name) / "serial.sock") as console:
            grown = await run_in_guest(console, WAIT_FOR_VDC.format(old=8 * MIB // 512), "grown")
            assert grown == str(16 * MIB // 512), name
    assert (imported_dir / "disk.img").stat().st_size == 16 * MIB
    assert (imported_dir / "disk.img").read_bytes()[: len(PAYLOAD)] == PAYLOAD
    pvcs = client.resource("v1", "persistentvolumeclaims")
    grown_pvc = await libvmi.until(
        functools.partial(pvcs.get, "imported", libvmi.NAMESPACE),
        lambda c: (c.get("status") or {}).get("capacity") == {"storage": "16Mi"},
        30,
        "the claim's new capacity",
    )
    assert grown_pvc["status"]["capacity"] == {"storage": "16Mi"}
    await libvmi.until(  # the event follows the status write
        functools.partial(libvmi.events_for, client, "imported"),
        lambda events: {"Resizing", "VolumeResizeSuccessful"} <= {e["reason"] for e in events},
        30,
        "the resize events",
    )

    # a snapshot of the running VM: blockdev-backup reads its NFS disks, the copies stay on node A
    snapshots = client.resource(SNAP, "virtualmachinesnapshots")
    await snapshots.create(
        {
            "metadata": {"name": "snap-a"},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "nfs-a"}},
        },
        libvmi.NAMESPACE,
    )
    snap = await libvmi.until(
        functools.partial(libvmi.get_or_empty, snapshots, "snap-a"),
        lambda s: libvmi.phase(s) in ("Succeeded", "Failed"),
        60,
        "snapshot of nfs-a finished",
    )
    assert libvmi.phase(snap) == "Succeeded", snap.get("status")
    assert "Online" in snap["status"]["indications"]
    taken = data_dir / "snapshots" / libvmi.NAMESPACE / snap["status"]["virtualMachineSnapshotContentName"]
    assert head(taken / "imported.img", len(PAYLOAD)) == PAYLOAD
    assert (taken / "imported.img").stat().st_size == 16 * MIB
    assert head(taken / "single.img", len(written)) == written

    # reclaim Delete: the volumes and their directories on the server go with the DataVolumes
    for name in ("nfs-a", "nfs-b", "nfs-c"):
        await vms.delete(name, libvmi.NAMESPACE)
    for name in ("nfs-a", "nfs-b", "nfs-c"):
        await libvmi.gone(client.resource(libvmi.KV, "virtualmachineinstances"), name)
    assert (await attachments.list()).items == []
    dvs = client.resource("cdi.kubevirt.io/v1beta1", "datavolumes")
    pvs = client.resource("v1", "persistentvolumes")
    for pvc in (imported, single):
        await dvs.delete(pvc["metadata"]["name"], libvmi.NAMESPACE)
        await libvmi.gone(pvs, pvc["spec"]["volumeName"])
    assert not imported_dir.exists() and not single_dir.exists()


async def test_path_class_volume_written_on_another_node(
    client: Client, data_dir_b: Path, shared_dir: Path
) -> None:
    await storage_class(client, "cluster-fs", path=str(shared_dir))
    pvc = await data_volume(client, "scratch", "cluster-fs", {"blank": {}}, ["ReadWriteOnce"])
    directory = shared_dir / pvc["spec"]["volumeName"]
    assert (directory / "disk.img").stat().st_size == 8 * 1024 * 1024
    pv = await client.resource("v1", "persistentvolumes").get(pvc["spec"]["volumeName"])
    assert pv["spec"]["hostPath"]["path"] == str(directory) and "nodeAffinity" not in pv["spec"]

    await client.resource(libvmi.KV, "virtualmachines").create(
        vm_on("path-b", NODE_B, WRITE, ["scratch"]), libvmi.NAMESPACE
    )
    text = await libvmi.serial_line(data_dir_b, "path-b", f"{guest.USERDATA_END} rc=0", 120)
    assert "wrote-0" in text
    written = b"written-by-path-b"
    assert (directory / "disk.img").read_bytes()[: len(written)] == written

    await client.resource(libvmi.KV, "virtualmachines").delete("path-b", libvmi.NAMESPACE)
    await libvmi.gone(client.resource(libvmi.KV, "virtualmachineinstances"), "path-b")
    await client.resource("cdi.kubevirt.io/v1beta1", "datavolumes").delete("scratch", libvmi.NAMESPACE)
    await libvmi.gone(client.resource("v1", "persistentvolumes"), pvc["spec"]["volumeName"])
    assert not directory.exists()  # reclaimPolicy Delete


def idle_on(name: str, node: str, claims: list[str]) -> Obj:
    """A VM of ``node`` attaching ``claims`` (virtio), without user data: only its QEMU matters."""
    vm = libvmi.vm_manifest(
        name,
        grace=0,
        disks=[{"name": claim, "disk": {"bus": "virtio"}} for claim in claims],
        volumes=[{"name": claim, "dataVolume": {"name": claim}} for claim in claims],
    )
    vm["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return vm


ADD_RACE: Obj = {
    "name": "race",
    "disk": {"name": "race", "disk": {"bus": "scsi"}},
    "volumeSource": {"persistentVolumeClaim": {"claimName": "race", "hotpluggable": True}},
}


async def hotplug(client: Client, action: str, body: Obj) -> None:
    path = f"/apis/subresources.kubevirt.io/v1/namespaces/{libvmi.NAMESPACE}/virtualmachineinstances/hot"
    await client.request("PUT", f"{path}/{action}", body=body)


def hotplugged(vmi: Obj) -> list[tuple[str, str]]:
    return [
        (v["name"], v["phase"])
        for v in (vmi.get("status") or {}).get("volumeStatus") or []
        if "hotplugVolume" in v
    ]


async def refused_event(client: Client, name: str, holder_node: str) -> str:
    events = await libvmi.until(
        lambda: libvmi.events_for(client, name),
        lambda found: any(
            e.get("reason") == "FailedAttachVolume" and f"({holder_node}, VolumeAttachment" in e["message"]
            for e in found
        ),
        120,
        f"FailedAttachVolume for {name}",
    )
    return str(next(e["message"] for e in events if e.get("reason") == "FailedAttachVolume"))


async def test_read_write_once_claim_is_attached_by_one_node_at_a_time(
    client: Client, data_dir: Path, data_dir_b: Path, shared_dir: Path
) -> None:
    await storage_class(client, "cluster-fs", path=str(shared_dir))
    pvc = await data_volume(client, "race", "cluster-fs", {"blank": {}}, ["ReadWriteOnce"])
    attachment = f"kubevisor-{pvc['spec']['volumeName']}"
    vms = client.resource(libvmi.KV, "virtualmachines")
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    attachments = client.resource("storage.k8s.io/v1", "volumeattachments")
    await asyncio.gather(  # both at the same moment, one per node
        vms.create(idle_on("race-a", NODE_A, ["race"]), libvmi.NAMESPACE),
        vms.create(idle_on("race-b", NODE_B, ["race"]), libvmi.NAMESPACE),
    )
    held = await libvmi.until(
        functools.partial(libvmi.get_or_empty, attachments, attachment),
        lambda a: (a.get("status") or {}).get("attached") is True,
        120,
        f"VolumeAttachment {attachment}",
    )
    holder_node = held["spec"]["nodeName"]
    winner, loser = ("race-a", "race-b") if holder_node == NODE_A else ("race-b", "race-a")
    loser_node, loser_dir = (NODE_B, data_dir_b) if holder_node == NODE_A else (NODE_A, data_dir)
    assert held["spec"]["attacher"] == "kubevisor.io/agent"
    assert held["metadata"]["annotations"]["kubevisor.io/vmi"] == f"{libvmi.NAMESPACE}/{winner}"
    await libvmi.vmi_running(client, winner, 120)
    message = await refused_event(client, loser, holder_node)
    assert f"'race' (ReadWriteOnce) is attached by running VMI {libvmi.NAMESPACE}/{winner}" in message
    assert libvmi.phase(await vmis.get(loser, libvmi.NAMESPACE)) != "Running"
    assert libvmi.qemu_pid(loser_dir, loser) is None

    # hotplug into a running VM of the waiting node is refused as well
    await vms.create(idle_on("hot", loser_node, []), libvmi.NAMESPACE)
    await libvmi.vmi_running(client, "hot", 120)
    await hotplug(client, "addvolume", ADD_RACE)
    await refused_event(client, "hot", holder_node)
    hot = await vmis.get("hot", libvmi.NAMESPACE)
    assert hotplugged(hot) == [("race", "Pending")]
    await hotplug(client, "removevolume", {"name": "race"})  # while its spec names it, it has the node's turn
    await libvmi.until(
        functools.partial(vmis.get, "hot", libvmi.NAMESPACE), lambda o: not hotplugged(o), 60, "unplugged"
    )

    # the holder goes: the waiting VM starts and holds the claim
    await vms.delete(winner, libvmi.NAMESPACE)
    await libvmi.gone(vmis, winner)
    await libvmi.vmi_running(client, loser, 120)
    held = await attachments.get(attachment)
    assert held["spec"]["nodeName"] == loser_node
    assert libvmi.qemu_pid(loser_dir, loser) is not None

    await vms.delete(loser, libvmi.NAMESPACE)
    await libvmi.gone(vmis, loser)
    assert (await attachments.list()).items == []  # released with the last QEMU

    # hotplugged: held while QEMU has the disk, released when it is unplugged
    await hotplug(client, "addvolume", ADD_RACE)
    await libvmi.until(
        functools.partial(vmis.get, "hot", libvmi.NAMESPACE),
        lambda o: hotplugged(o) == [("race", "Ready")],
        60,
        "hotplugged race Ready",
    )
    held = await attachments.get(attachment)
    assert held["spec"]["nodeName"] == loser_node
    assert held["metadata"]["annotations"]["kubevisor.io/vmi"] == f"{libvmi.NAMESPACE}/hot"
    await hotplug(client, "removevolume", {"name": "race"})
    await libvmi.gone(attachments, attachment)
    await vms.delete("hot", libvmi.NAMESPACE)
    await libvmi.gone(vmis, "hot")
    assert (await attachments.list()).items == []
    await client.resource("cdi.kubevirt.io/v1beta1", "datavolumes").delete("race", libvmi.NAMESPACE)
    await libvmi.gone(client.resource("v1", "persistentvolumes"), pvc["spec"]["volumeName"])


async def cli_run(plat: Platform, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubevisor.cli.main",
        *args,
        "--kubeconfig",
        str(plat.kubeconfig),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


def head(path: Path, count: int) -> bytes:
    with path.open("rb") as f:
        return f.read(count)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_nfs_claims_upload_clone_export_snapshot_and_grow(
    plat: Platform, client: Client, nfs_server: nfs.NfsServer, tmp_path: Path
) -> None:
    """Without a guest: every storage feature on NFS claims (the live expansion is in the test above)."""
    await storage_class(client, "nfs", server=nfs_server.address, share=str(nfs_server.export))
    dvs = client.resource("cdi.kubevirt.io/v1beta1", "datavolumes")
    pvcs = client.resource("v1", "persistentvolumeclaims")
    storage: Obj = {
        "storageClassName": "nfs",
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "8Mi"}},
    }
    # upload (kubevisor image-upload, through the upload proxy): scratch on the node, renamed into place
    await dvs.create(
        {"metadata": {"name": "uploaded"}, "spec": {"source": {"upload": {}}, "storage": storage}},
        libvmi.NAMESPACE,
    )
    await libvmi.until(
        functools.partial(libvmi.get_or_empty, dvs, "uploaded"),
        lambda d: libvmi.phase(d) == "UploadReady",
        30,
        "UploadReady",
    )
    image = tmp_path / "upload.img"
    with image.open("wb") as f:
        f.write(b"uploaded-to-nfs")
        f.truncate(4 * MIB)
    await cli_run(plat, "image-upload", "dv", "uploaded", "--no-create", "--image-path", str(image))
    await libvmi.until(
        functools.partial(libvmi.get_or_empty, dvs, "uploaded"),
        lambda d: libvmi.phase(d) == "Succeeded",
        30,
        "upload Succeeded",
    )
    uploaded = await pvcs.get("uploaded", libvmi.NAMESPACE)
    uploaded_dir = nfs_server.export / uploaded["spec"]["volumeName"]
    assert names(uploaded_dir) == ["disk.img"]
    assert head(uploaded_dir / "disk.img", 15) == b"uploaded-to-nfs"

    # clone from an NFS claim into another NFS claim
    copy = await data_volume(
        client, "copy", "nfs", {"pvc": {"namespace": libvmi.NAMESPACE, "name": "uploaded"}}, ["ReadWriteOnce"]
    )
    copy_dir = nfs_server.export / copy["spec"]["volumeName"]
    assert names(copy_dir) == ["disk.img"]
    assert sha256(copy_dir / "disk.img") == sha256(uploaded_dir / "disk.img")

    # export (kubevisor vmexport download): read over NFS, sha256 verified
    raw = tmp_path / "export.img"
    out = await cli_run(
        plat, "vmexport", "download", "exp-nfs", "--pvc", "copy", "--format", "raw", "--output", str(raw)
    )
    assert "sha256 verified" in out
    assert sha256(raw) == sha256(copy_dir / "disk.img")

    # a snapshot of a stopped VM with the NFS disk, then a restore over changed data
    vm = vm_on("snap-vm", NODE_A, READ_ONLY, ["copy"])
    vm["spec"]["runStrategy"] = "Halted"
    vm["spec"].pop("running", None)
    await client.resource(libvmi.KV, "virtualmachines").create(vm, libvmi.NAMESPACE)
    snapshots = client.resource(SNAP, "virtualmachinesnapshots")
    await snapshots.create(
        {
            "metadata": {"name": "snap-nfs"},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "snap-vm"}},
        },
        libvmi.NAMESPACE,
    )
    snap = await libvmi.until(
        functools.partial(libvmi.get_or_empty, snapshots, "snap-nfs"),
        lambda s: libvmi.phase(s) in ("Succeeded", "Failed"),
        30,
        "snapshot finished",
    )
    assert libvmi.phase(snap) == "Succeeded", snap.get("status")
    with (copy_dir / "disk.img").open("r+b") as f:
        f.write(b"changed-after-the-snapshot")
    restores = client.resource(SNAP, "virtualmachinerestores")
    await restores.create(
        {
            "metadata": {"name": "restore-nfs"},
            "spec": {
                "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "snap-vm"},
                "virtualMachineSnapshotName": "snap-nfs",
            },
        },
        libvmi.NAMESPACE,
    )
    await libvmi.until(
        functools.partial(libvmi.get_or_empty, restores, "restore-nfs"),
        lambda r: bool((r.get("status") or {}).get("complete")),
        30,
        "restore complete",
    )
    assert head(copy_dir / "disk.img", 15) == b"uploaded-to-nfs"
    assert names(copy_dir) == ["disk.img"]

    # offline expansion: no VMI uses the claim, the first Ready node grows it with qemu-img resize nfs://
    await pvcs.patch("uploaded", {"spec": {"resources": {"requests": {"storage": "16Mi"}}}}, libvmi.NAMESPACE)
    await libvmi.until(
        functools.partial(libvmi.get_or_empty, pvcs, "uploaded"),
        lambda c: (c.get("status") or {}).get("capacity") == {"storage": "16Mi"},
        30,
        "the claim's new capacity",
    )
    assert (uploaded_dir / "disk.img").stat().st_size == 16 * MIB
    assert head(uploaded_dir / "disk.img", 15) == b"uploaded-to-nfs"
    resizing = [e for e in await libvmi.events_for(client, "uploaded") if e["reason"] == "Resizing"]
    assert resizing and NODE_A in resizing[0]["message"]  # the first Ready node by name
