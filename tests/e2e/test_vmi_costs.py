"""What a running VMI costs the platform, end to end with the node agent booting the test guest: API writes
(at most three from create to Running: create, Scheduled, Running; the agent's finalizer is on from
creation) and QEMU's memory cgroup (QEMU inside it, limit = guest memory + overhead, removed with the VMI).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.agent.running import AgentConfig
from kubevisor.agent.vmis import CGROUP_RECORD, FINALIZER
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from kubevisor.virt import cgroups, qemucmd
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

NODE = "costs-node"
MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def platform_client(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Client]:
    config = AgentConfig(
        data_dir=data_dir, node_name=NODE, image_mirror={libvmi.IMAGE: test_guest.disk}, accel="tcg"
    )
    async with (
        Platform(data_dir, "127.0.0.1:0", agent=True, agent_config=config) as plat,
        Client.from_kubeconfig(plat.kubeconfig) as c,
    ):
        yield c


@pytest.fixture
async def client(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Client]:
    async with platform_client(data_dir, test_guest) as c:
        yield c


def is_there(path: Path) -> bool:
    return path.exists()


def bare_vmi(name: str) -> Obj:
    return {
        "apiVersion": libvmi.KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": libvmi.NAMESPACE},
        "spec": {
            "domain": {
                "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]},
                "memory": {"guest": "128Mi"},
            },
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": libvmi.IMAGE}}],
        },
    }


async def test_three_writes_to_running_and_qemu_in_its_memory_cgroup(client: Client, data_dir: Path) -> None:
    name = "costs"
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    async with libvmi.PhaseRecorder(client, name) as phases:
        created = await vmis.create(bare_vmi(name), libvmi.NAMESPACE)
        assert FINALIZER in created["metadata"]["finalizers"]
        vmi = await libvmi.vmi_running(client, name, timeout=90)
        await phases.wait(lambda seen: any(p == "Running" for _, _, p in seen), 10, "Running seen")
    uid = vmi["metadata"]["uid"]
    seen = [(kind, p) for kind, u, p in phases.seen if u == uid]
    to_running = seen[: [p for _, p in seen].index("Running") + 1]
    print(f"\nVMI writes from create to Running: {len(to_running)}: {to_running}")
    assert to_running == [("ADDED", "Pending"), ("MODIFIED", "Scheduled"), ("MODIFIED", "Running")]

    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None
    hierarchy = cgroups.detect()
    if hierarchy is None:
        pytest.skip("no writable memory cgroups here")
    path = cgroups.pid_cgroup(pid, hierarchy)
    assert path == hierarchy.root / f"{libvmi.NAMESPACE}_{name}"
    assert (libvmi.run_dir(data_dir, name) / CGROUP_RECORD).read_text().strip() == str(path)
    assert pid in cgroups.members(path)
    overhead = cgroups.overhead_bytes(  # graphics: VNC is attached by default, as in KubeVirt
        vcpus=1, graphics=True, guest_bytes=128 * MiB, tcg_cache_bytes=qemucmd.TCG_TB_SIZE_MIB * MiB
    )
    assert cgroups.limit_of(path) == 128 * MiB + overhead

    await vmis.delete(name, libvmi.NAMESPACE)
    await libvmi.gone(vmis, name)
    assert not is_there(path)


async def test_an_adopted_qemu_keeps_its_cgroup_which_goes_with_it(
    data_dir: Path, test_guest: guest.Guest
) -> None:
    name = "adopted"
    async with platform_client(data_dir, test_guest) as client:
        await client.resource(libvmi.KV, "virtualmachineinstances").create(bare_vmi(name), libvmi.NAMESPACE)
        await libvmi.vmi_running(client, name, timeout=90)
    pid = libvmi.qemu_pid(data_dir, name)  # the platform is stopped; QEMU runs on
    assert pid is not None
    path = Path((libvmi.run_dir(data_dir, name) / CGROUP_RECORD).read_text().strip())
    if not str(path).startswith("/"):
        pytest.skip("no writable memory cgroups here")
    assert pid in cgroups.members(path)
    async with platform_client(data_dir, test_guest) as client:  # a new agent adopts it
        vmis = client.resource(libvmi.KV, "virtualmachineinstances")
        await libvmi.vmi_running(client, name, timeout=30)
        assert libvmi.qemu_pid(data_dir, name) == pid and pid in cgroups.members(path)
        await vmis.delete(name, libvmi.NAMESPACE)
        await libvmi.gone(vmis, name)
    assert not is_there(path)
