"""KubeVirt's own example manifests (../shared/compat/kubevirt-examples/) run unchanged on the platform:
each that needs nothing beyond one node (no secondary networks, migration, snapshots, pools, replica sets,
DataVolume import or instancetypes) is created as written, started, and its guest boots to the ready
marker (their quay.io/registry images are mapped to the test guest by the node's image mirror, as an
air-gapped node would mirror them).

The guests boot side by side, so this costs about one TCG boot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from kubevisor.agent.running import AgentConfig
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from kubevisor.virt import process
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "compat" / "kubevirt-examples"
IMAGES = (
    "registry:5000/kubevirt/cirros-container-disk-demo:devel",
    "registry:5000/kubevirt/fedora-with-test-tooling-container-disk:devel",
    "registry:5000/kubevirt/alpine-container-disk-demo:devel",
)
RUNNABLE = {
    # manifest -> (kind, what the serial console shows once it runs)
    "kubevirt-examples__vm-cirros.yaml": ("VirtualMachine", "printed from cloud-init userdata"),
    "kubevirt-examples__vmi-fedora.yaml": ("VirtualMachineInstance", f"{guest.READY_MARKER} hostname="),
    "kubevirt-examples__vmi-migratable.yaml": ("VirtualMachineInstance", f"{guest.READY_MARKER} hostname="),
}


@pytest.fixture
async def client(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Client]:
    config = AgentConfig(
        data_dir=data_dir, node_name="compat-node", image_mirror=dict.fromkeys(IMAGES, test_guest.disk)
    )
    platform = Platform(data_dir, "127.0.0.1:0", agent=True, agent_config=config)
    await platform.start()
    try:
        async with Client.from_kubeconfig(platform.kubeconfig) as c:
            yield c
    finally:
        await platform.stop()


def load(name: str) -> dict[str, object]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    assert len(docs) == 1, name
    doc: dict[str, object] = docs[0]
    return doc


async def test_kubevirt_examples_run(client: Client, data_dir: Path) -> None:
    assert EXAMPLES.is_dir(), f"{EXAMPLES} is missing"
    vms = client.resource(libvmi.KV, "virtualmachines")
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    names = {}
    for manifest, (kind, _) in RUNNABLE.items():
        doc = load(manifest)
        assert doc["kind"] == kind
        name = str(doc["metadata"]["name"])  # type: ignore[index]
        names[manifest] = name
        if kind == "VirtualMachine":
            await vms.create(doc, libvmi.NAMESPACE)
            await libvmi.vm_printable(client, name, "Stopped")  # runStrategy Halted, as written
            await libvmi.vm_action(client, name, "start")
        else:
            await vmis.create(doc, libvmi.NAMESPACE)

    async def runs(manifest: str) -> None:
        name = names[manifest]
        await libvmi.vmi_running(client, name, timeout=120)
        await libvmi.serial_line(data_dir, name, RUNNABLE[manifest][1], timeout=180)

    await asyncio.gather(*(runs(m) for m in RUNNABLE))
    fedora = await vmis.get("vmi-fedora", libvmi.NAMESPACE)
    assert fedora["status"]["interfaces"][0]["name"] == "default"
    assert "-device" in (args := _qemu_args(data_dir, "vmi-fedora"))
    assert any("virtio-rng-pci" in a for a in args)  # devices.rng: {}


def _qemu_args(data_dir: Path, name: str) -> list[str]:
    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None
    return process.cmdline(pid) or []
