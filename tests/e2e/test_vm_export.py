"""VirtualMachineExport end to end, on a real platform (API server, controllers, node agent): a DataVolume
imports the test guest's disk (qcow2 over loopback HTTP) into a claim of the ``local`` class;
``kubevisor vmexport download`` (a subprocess, as a user runs it) gets that claim raw and gzip-compressed,
each compared by sha256 with ``qemu-img convert -O raw`` of the source. A VM using the claim is started: an
export of it stays Pending (``inUse``) until the VM is stopped; then the VM's volume, and a snapshot of the
VM (the snapshot agent's stored image, read-only), are downloaded and compared likewise.

Every test kills the QEMUs of its data directory at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from tests.e2e import libvmi
from tests.unit.storage import imageserving

pytestmark = pytest.mark.e2e

NODE = "e2e-export"
EXPORT = "export.kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"


@pytest.fixture
async def plat(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Platform]:
    async with libvmi.guest_platform(data_dir, NODE, test_guest) as platform:
        yield platform


@pytest.fixture
def server(test_guest: guest.Guest, tmp_path: Path) -> Iterator[imageserving.ImageServer]:
    (tmp_path / "served").mkdir()
    convert(test_guest.disk, "raw", tmp_path / "served" / "guest.qcow2", "qcow2")
    with imageserving.serving(tmp_path / "served") as s:
        yield s


def convert(source: Path, source_format: str, target: Path, target_format: str) -> None:
    argv = ["qemu-img", "convert", "-f", source_format, "-O", target_format, str(source), str(target)]
    subprocess.run(argv, check=True)


def sha256(path: Path, *, gzipped: bool = False) -> tuple[str, int]:
    data = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def expected_disk(source_qcow2: Path, size: int, work: Path) -> tuple[str, int]:
    """sha256 of ``qemu-img convert -O raw`` of the source, grown (zeros) to the claim's size as the import
    grows it."""
    raw = work / "expected.raw"
    convert(source_qcow2, "qcow2", raw, "raw")
    assert raw.stat().st_size <= size
    with raw.open("r+b") as f:
        f.truncate(size)
    return sha256(raw)


async def vmexport(plat: Platform, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubevisor.cli.main",
        "vmexport",
        *args,
        "--kubeconfig",
        str(plat.kubeconfig),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def export_phase(client: Client, name: str, want: str) -> Obj:
    exports = client.resource(EXPORT, "virtualmachineexports")
    return await libvmi.until(
        functools.partial(libvmi.get_or_empty, exports, name),
        lambda e: (e.get("status") or {}).get("phase") == want,
        30,
        f"VirtualMachineExport {name} {want}",
    )


async def test_export_claim_vm_and_snapshot(
    plat: Platform, client: Client, server: imageserving.ImageServer, tmp_path: Path
) -> None:
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(
        {
            "apiVersion": CDI,
            "kind": "DataVolume",
            "metadata": {"name": "exp-disk"},
            "spec": {
                "source": {"http": {"url": f"{server.url}/guest.qcow2"}},
                "storage": {"resources": {"requests": {"storage": "32Mi"}}},
            },
        },
        libvmi.NAMESPACE,
    )
    await libvmi.until(
        functools.partial(libvmi.get_or_empty, dvs, "exp-disk"),
        lambda d: libvmi.phase(d) == "Succeeded",
        60,
        "DataVolume exp-disk Succeeded",
    )

    # the claim, raw and gzip, through the CLI (the raw download creates and deletes its own export)
    raw = tmp_path / "claim.img"
    out = await vmexport(
        plat, "download", "exp-claim", "--pvc", "exp-disk", "--format", "raw", "--output", str(raw)
    )
    assert "sha256 verified" in out
    digest, size = sha256(raw)
    assert size >= guest.disk_image().stat().st_size
    want = expected_disk(server.root / "guest.qcow2", size, tmp_path)
    assert (digest, size) == want
    await vmexport(plat, "create", "exp-gz", "--pvc", "exp-disk")
    packed = tmp_path / "claim.img.gz"
    await vmexport(plat, "download", "exp-gz", "--output", str(packed))
    assert sha256(packed, gzipped=True) == want
    await vmexport(plat, "delete", "exp-gz")

    # a VM using the claim: its export waits while it runs, and is served once it is stopped
    name = "exported"
    vm = libvmi.vm_manifest(
        name,
        disks=[{"name": "data", "disk": {"bus": "virtio"}}],
        volumes=[{"name": "data", "dataVolume": {"name": "exp-disk"}}],
        grace=0,  # stopped at once: the guest has nothing to flush
    )
    vms = client.resource(libvmi.KV, "virtualmachines")
    await vms.create(vm, libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name, 60)
    await vmexport(plat, "create", "exp-vm", "--vm", name)
    pending = await export_phase(client, "exp-vm", "Pending")
    ready = next(c for c in pending["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "inUse", ready
    await vms.patch(name, {"spec": {"runStrategy": "Halted"}}, libvmi.NAMESPACE)
    await libvmi.vm_printable(client, name, "Stopped", 60)
    done = await export_phase(client, "exp-vm", "Ready")
    assert done["status"]["virtualMachineName"] == name
    assert [v["name"] for v in done["status"]["links"]["external"]["volumes"]] == ["exp-disk"]
    from_vm = tmp_path / "vm.img"
    await vmexport(
        plat, "download", "exp-vm", "--volume", "exp-disk", "--format", "raw", "--output", str(from_vm)
    )
    vm_disk = sha256(from_vm)  # the guest ran: compare with the claim as it is now
    volume = next((plat.data_dir / "volumes").glob("*/disk.img"))
    assert vm_disk == sha256(volume)

    # a snapshot of the stopped VM, exported from the snapshot's stored image
    snap = await libvmi.snapshot_vm(client, "snap-exported", name)
    assert snap["status"]["phase"] == "Succeeded", snap["status"]
    from_snapshot = tmp_path / "snapshot.img.gz"
    out = await vmexport(
        plat, "download", "exp-snap", "--snapshot", "snap-exported", "--output", str(from_snapshot)
    )
    assert "sha256 verified" in out
    assert sha256(from_snapshot, gzipped=True) == vm_disk
