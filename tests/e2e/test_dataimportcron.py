"""Golden images kept up to date, end to end: the test guest is published as a containerDisk in Debian's
docker-registry on loopback; a DataImportCron imports it (the node agent pulls the digest-pinned image
into a volume) and its DataSource points at the import. The tag then moves to a second build (the same
guest as qcow2: another digest); a tick (CDI's ``nextCronTime`` annotation set to the past, so the test
never waits for the clock) imports it, the DataSource moves, and with ``importsToKeep: 1`` the first
import is garbage-collected. Finally a VM whose ``dataVolumeTemplates`` clone the DataSource through
``sourceRef`` (KubeVirt's common pattern) boots from it.

One guest, under TCG.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.agent.running import AgentConfig
from kubevisor.api import cdi
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.controllers.dataimportcron import import_name
from kubevisor.platform import Platform
from kubevisor.testing import cluster, containerdisks, guest
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

NODE = "e2e-dic-node"
REPOSITORY = "kubevisor/golden-guest"
CDI = "cdi.kubevirt.io/v1beta1"
NS = libvmi.NAMESPACE


@pytest.fixture(scope="module")
def local_registry() -> Iterator[containerdisks.LocalRegistry]:
    try:
        containerdisks.require(containerdisks.SKOPEO)
        with containerdisks.running_registry() as registry:
            yield registry
    except containerdisks.ToolMissing as e:
        pytest.fail(str(e), pytrace=False)


def publish(registry: containerdisks.LocalRegistry, disk: Path, layout: Path) -> str:
    """Push ``disk`` as ``REPOSITORY:latest``; the manifest digest."""
    digest = containerdisks.disk_layout(layout, disk)
    containerdisks.push(layout, f"{registry.host}/{REPOSITORY}:latest")
    return digest


@pytest.fixture
def builds(test_guest: guest.Guest, tmp_path: Path) -> tuple[Path, Path]:
    """Two builds of the golden image: the test guest's disk, and the same as qcow2 (other bytes, so
    another image digest)."""
    converted = tmp_path / "guest.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(test_guest.disk), str(converted)], check=True
    )
    return test_guest.disk, converted


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    config = AgentConfig(data_dir=data_dir, node_name=NODE, accel="tcg")
    async with cluster.running_platform(data_dir, agent=True, agent_config=config) as platform:
        yield platform


def condition(obj: Obj, kind: str) -> Obj:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


async def imported(client: Client, name: str) -> None:
    dvs = client.resource(CDI, "datavolumes")
    await libvmi.until(
        functools.partial(libvmi.get_or_empty, dvs, name),
        lambda d: libvmi.phase(d) == "Succeeded",
        90,
        f"DataVolume {name} Succeeded",
    )


async def points_at(client: Client, claim: str) -> Obj:
    sources = client.resource(CDI, "datasources")
    found: Obj = await libvmi.until(
        functools.partial(libvmi.get_or_empty, sources, "golden"),
        lambda d: (
            (d.get("spec") or {}).get("source") == {"pvc": {"namespace": NS, "name": claim}}
            and condition(d, "Ready").get("status") == "True"
        ),
        30,
        f"DataSource golden Ready on {claim}",
    )
    return found


async def test_cron_keeps_a_data_source_current_and_a_vm_boots_from_it(
    client: Client,
    data_dir: Path,
    tmp_path: Path,
    local_registry: containerdisks.LocalRegistry,
    builds: tuple[Path, Path],
) -> None:
    first = publish(local_registry, builds[0], tmp_path / "v1")
    crons = client.resource(CDI, "dataimportcrons")
    cron = {
        "apiVersion": CDI,
        "kind": "DataImportCron",
        "metadata": {"name": "golden-cron"},
        "spec": {
            "schedule": "* * * * *",
            "managedDataSource": "golden",
            "importsToKeep": 1,
            "template": {
                "spec": {
                    "source": {
                        "registry": {
                            "url": f"docker://{local_registry.host}/{REPOSITORY}:latest",
                            "pullMethod": "pod",
                        }
                    },
                    "storage": {"resources": {"requests": {"storage": "64Mi"}}},
                }
            },
        },
    }
    await crons.create(cron, NS)
    name1 = import_name("golden", first)
    await imported(client, name1)
    await points_at(client, name1)

    # the tag moves to another build; a tick imports it and the DataSource follows
    second = publish(local_registry, builds[1], tmp_path / "v2")
    assert second != first
    past = {"metadata": {"annotations": {cdi.NEXT_CRON_TIME_ANNOTATION: "2000-01-01T00:00:00Z"}}}
    await crons.patch("golden-cron", past, NS)
    name2 = import_name("golden", second)
    await imported(client, name2)
    await points_at(client, name2)
    status = (await crons.get("golden-cron", NS))["status"]
    assert status["lastImportedPVC"] == {"namespace": NS, "name": name2}
    assert condition({"status": status}, "UpToDate")["status"] == "True"

    # importsToKeep: 1 -> the first import (DataVolume and claim) is garbage-collected
    await libvmi.gone(client.resource(CDI, "datavolumes"), name1, 30)
    await libvmi.gone(client.resource("v1", "persistentvolumeclaims"), name1, 30)

    # a VM cloning the DataSource through sourceRef boots from it
    vm = libvmi.vm_manifest("golden-vm")
    vm["spec"]["template"]["spec"]["volumes"][0] = {
        "name": "rootdisk",
        "dataVolume": {"name": "golden-vm-root"},
    }
    vm["spec"]["dataVolumeTemplates"] = [
        {
            "metadata": {"name": "golden-vm-root"},
            "spec": {
                "sourceRef": {"kind": "DataSource", "name": "golden"},
                "storage": {"resources": {"requests": {"storage": "64Mi"}}},
            },
        }
    ]
    await client.resource(libvmi.KV, "virtualmachines").create(vm, NS)
    await imported(client, "golden-vm-root")
    root = await client.resource("v1", "persistentvolumeclaims").get("golden-vm-root", NS)
    assert root["metadata"]["annotations"]["k8s.io/CloneRequest"] == f"{NS}/{name2}"
    await libvmi.vmi_running(client, "golden-vm", 60)
    await libvmi.serial_line(data_dir, "golden-vm", guest.READY_MARKER, 90)
