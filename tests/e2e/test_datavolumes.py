"""DataVolumes end to end: a VM whose ``dataVolumeTemplates`` import the test guest's disk over loopback
HTTP (as qcow2, made with ``qemu-img convert``) into a volume of the default ``local`` class, and add a
blank disk, shows Provisioning, then boots from the imported disk and sees the blank one.

Every test kills the QEMUs of its data directory at the end, whatever happened.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.agent.running import AgentConfig
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import cluster, guest
from tests.e2e import libvmi
from tests.unit.storage import imageserving

pytestmark = pytest.mark.e2e

NODE = "e2e-datavolumes"
USER_DATA = r"""#!/bin/sh
for d in /sys/class/block/vd*; do echo "disk ${d##*/} sectors=$(cat "$d/size")"; done
"""


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    config = AgentConfig(data_dir=data_dir, node_name=NODE, accel="tcg")
    async with cluster.running_platform(data_dir, agent=True, agent_config=config) as platform:
        yield platform


@pytest.fixture
def server(test_guest: guest.Guest, tmp_path: Path) -> Iterator[imageserving.ImageServer]:
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            str(test_guest.disk),
            str(tmp_path / "guest.qcow2"),
        ],
        check=True,
    )
    with imageserving.serving(tmp_path) as s:
        yield s


def template(name: str, source: Obj, size: str) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}},
    }


async def test_vm_boots_from_an_imported_disk_with_a_blank_one(
    client: Client, data_dir: Path, server: imageserving.ImageServer
) -> None:
    name = "dv-vm"
    vm = libvmi.vm_manifest(
        name,
        user_data=USER_DATA,
        disks=[{"name": "scratch", "disk": {"bus": "virtio"}}],
        volumes=[{"name": "scratch", "dataVolume": {"name": f"{name}-scratch"}}],
    )
    vm["spec"]["template"]["spec"]["volumes"][0] = {
        "name": "rootdisk",
        "dataVolume": {"name": f"{name}-root"},
    }
    vm["spec"]["dataVolumeTemplates"] = [
        template(f"{name}-root", {"http": {"url": f"{server.url}/guest.qcow2"}}, "256Mi"),
        template(f"{name}-scratch", {"blank": {}}, "8Mi"),
    ]
    await client.resource(libvmi.KV, "virtualmachines").create(vm, libvmi.NAMESPACE)
    await libvmi.vm_printable(client, name, "Provisioning", 20)

    dvs = client.resource("cdi.kubevirt.io/v1beta1", "datavolumes")
    for dv in (f"{name}-root", f"{name}-scratch"):
        done = await libvmi.until(
            functools.partial(libvmi.get_or_empty, dvs, dv),
            lambda d: libvmi.phase(d) == "Succeeded",
            40,
            f"DataVolume {dv} Succeeded",
        )
        assert done["status"]["progress"] == "100.0%"

    await libvmi.vmi_running(client, name, 60)
    text = await libvmi.serial_line(data_dir, name, f"{guest.USERDATA_END} rc=0", 60)
    assert "disk vdc sectors=16384" in text  # the blank 8 MiB disk
    await libvmi.serial_line(data_dir, name, f"{guest.READY_MARKER} hostname={name}")
    await libvmi.vm_printable(client, name, "Running")
