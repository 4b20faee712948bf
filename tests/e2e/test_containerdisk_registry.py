"""containerDisks pulled from a registry, end to end: the test guest's disk is published as a KubeVirt
containerDisk image (``/disk/disk.img``) in Debian's docker-registry on loopback (pushed with skopeo), and
the platform's node agent, with no image mirror, pulls it into its image cache and boots it; a VM whose
image does not exist gets an ``ErrImagePull`` Event and stays unstarted (retried, not failed).

One guest, under TCG without a probe, to keep this quick.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.agent.running import AgentConfig
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import containerdisks, guest
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

NODE = "e2e-registry-node"
REPOSITORY = "kubevisor/test-guest"


@pytest.fixture(scope="module")
def local_registry(test_guest: guest.Guest) -> Iterator[containerdisks.LocalRegistry]:
    """docker-registry on 127.0.0.1:<port> holding the test guest as ``kubevisor/test-guest:latest``."""
    try:
        containerdisks.require(containerdisks.SKOPEO)
        with containerdisks.running_registry() as registry:
            layout = registry.directory / "layout"
            containerdisks.disk_layout(layout, test_guest.disk)
            containerdisks.push(layout, f"{registry.host}/{REPOSITORY}:latest")
            yield registry
    except containerdisks.ToolMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
async def client(data_dir: Path) -> AsyncIterator[Client]:
    config = AgentConfig(data_dir=data_dir, node_name=NODE, accel="tcg")  # no mirror: pulls only
    platform = Platform(data_dir, "127.0.0.1:0", agent=True, agent_config=config)
    await platform.start()
    try:
        async with Client.from_kubeconfig(platform.kubeconfig) as c:
            yield c
    finally:
        await platform.stop()


def vm_from(name: str, image: str) -> Obj:
    vm = libvmi.vm_manifest(name)
    vm["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"] = image
    return vm


async def test_vm_boots_from_a_pulled_container_disk(
    client: Client, data_dir: Path, local_registry: containerdisks.LocalRegistry, test_guest: guest.Guest
) -> None:
    name = "pulled"
    image = f"{local_registry.host}/{REPOSITORY}:latest"
    await client.resource(libvmi.KV, "virtualmachines").create(vm_from(name, image), libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name, timeout=60)
    await libvmi.serial_line(data_dir, name, guest.READY_MARKER, timeout=60)  # no seed: default hostname
    cached = list((data_dir / "images" / "cache").glob("sha256:*/disk.img"))
    assert len(cached) == 1
    assert cached[0].read_bytes() == test_guest.disk.read_bytes()


async def test_missing_image_gets_err_image_pull(
    client: Client, local_registry: containerdisks.LocalRegistry
) -> None:
    name = "absent"
    image = f"{local_registry.host}/kubevisor/no-such-image:latest"
    await client.resource(libvmi.KV, "virtualmachines").create(vm_from(name, image), libvmi.NAMESPACE)

    async def pull_errors() -> list[Obj]:
        return [e for e in await libvmi.events_for(client, name) if e.get("reason") == "ErrImagePull"]

    events = await libvmi.until(pull_errors, bool, 30, f"an ErrImagePull Event for {name}")
    message = events[0]["message"]
    assert image in message and "volume 'rootdisk'" in message and "404" in message
    assert events[0]["type"] == "Warning"
    vmi = await client.resource(libvmi.KV, "virtualmachineinstances").get(name, libvmi.NAMESPACE)
    assert libvmi.phase(vmi) not in ("Running", "Failed")
