"""VirtualMachines end to end: the real platform (API server, controllers, node agent) boots the test
guest under QEMU.

Covered: the Node the agent registers (labels, capacity, Lease); a VM with runStrategy Always from a
containerDisk (through the node's image mirror), a NoCloud seed, an emptyDisk and a hostDisk reaching
Running, its user data run in the guest; stop through the subresource (ACPI powerdown, VM Stopped, run
directory gone) and start again; RerunOnFailure after QEMU is killed with SIGKILL (VMI Failed, a new VMI
Running); and a platform restart that adopts the running QEMU instead of starting a second one.

Every test kills the QEMUs of its data directory at the end, whatever happened: guests outlive the
platform by design.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.agent.node import HYPERVISOR_LABEL, LEASE_NAMESPACE, SCHEDULABLE_LABEL
from kubevisor.agent.running import AgentConfig
from kubevisor.agent.vmis import FINALIZER
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from kubevisor.testing.console import Console
from kubevisor.virt import probe, process
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

NODE = "e2e-node"
USER_DATA = (
    "#!/bin/sh\n"
    "echo user-data says $((6 * 7)) on $(hostname)\n"
    "echo disks: $(ls /sys/class/block | grep -v '[0-9]$' | sort | tr '\\n' ' ')\n"
)


def agent_config(data_dir: Path, test_guest: guest.Guest) -> AgentConfig:
    probe_guest = probe.ProbeGuest(
        test_guest.kernel, test_guest.initrd, guest.KERNEL_CMDLINE, guest.READY_MARKER
    )
    return AgentConfig(
        data_dir=data_dir,
        node_name=NODE,
        image_mirror={libvmi.IMAGE: test_guest.disk},
        host_disk_dirs=(data_dir / "hostdisks",),
        probe_guest=probe_guest,
    )


def new_platform(data_dir: Path, test_guest: guest.Guest) -> Platform:
    return Platform(data_dir, "127.0.0.1:0", agent=True, agent_config=agent_config(data_dir, test_guest))


@pytest.fixture
async def plat(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Platform]:
    platform = new_platform(data_dir, test_guest)
    await platform.start()
    try:
        yield platform
    finally:
        await platform.stop()


async def first_serial_line(log: Path, timeout: float) -> float:
    """``time.monotonic()`` when the serial log first holds a non-empty line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = libvmi.read_log(log).split("\n")[:-1]
        if any(line.strip() for line in lines):
            return time.monotonic()
        await asyncio.sleep(0.01)
    raise AssertionError(f"no serial line in {log} within {timeout:g} s")


async def test_node_registration(plat: Platform, client: Client) -> None:
    node = await client.resource("v1", "nodes").get(NODE)
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == NODE
    assert labels[SCHEDULABLE_LABEL] == "true"
    assert labels[HYPERVISOR_LABEL] in ("kvm", "tcg")
    if not probe.kvm_device_usable():
        assert labels[HYPERVISOR_LABEL] == "tcg"
    status = node["status"]
    assert int(status["capacity"]["cpu"]) == os.cpu_count()
    capacity_kib = int(status["capacity"]["memory"].removesuffix("Ki"))
    allocatable_kib = int(status["allocatable"]["memory"].removesuffix("Ki"))
    assert capacity_kib - allocatable_kib == 512 * 1024
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    lease = await client.resource("coordination.k8s.io/v1", "leases").get(NODE, LEASE_NAMESPACE)
    assert lease["spec"]["holderIdentity"] == NODE
    assert lease["spec"]["renewTime"].endswith("Z")


async def test_vm_runs_stops_and_starts_again(plat: Platform, client: Client, data_dir: Path) -> None:
    name = "lifecycle"
    host_disk = data_dir / "hostdisks" / "data.img"
    vm = libvmi.vm_manifest(
        name,
        user_data=USER_DATA,
        disks=[{"name": "scratch", "disk": {"bus": "virtio"}}, {"name": "data", "disk": {"bus": "virtio"}}],
        volumes=[
            {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
            {
                "name": "data",
                "hostDisk": {"path": str(host_disk), "type": "DiskOrCreate", "capacity": "32Mi"},
            },
        ],
    )
    vms = client.resource(libvmi.KV, "virtualmachines")
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    async with libvmi.PhaseRecorder(client, name) as phases:
        created = time.monotonic()
        await vms.create(vm, libvmi.NAMESPACE)
        vmi = await libvmi.vmi_running(client, name)
        serial_log = libvmi.run_dir(data_dir, name) / "serial.log"
        first_line = await first_serial_line(serial_log, 60)
        text = await libvmi.serial_line(data_dir, name, f"{guest.READY_MARKER} hostname={name}")
        ready = time.monotonic()
        uid = vmi["metadata"]["uid"]
        vmi_created = phases.first_seen.get((uid, "Pending"), created)
        running = phases.first_seen[(uid, "Running")]
    print(
        f"\nstart latency: VMI created -> Running {running - vmi_created:.2f} s, "
        f"-> first serial line {first_line - vmi_created:.2f} s, -> guest ready {ready - vmi_created:.2f} s"
    )

    # the status the agent wrote in one go
    status = vmi["status"]
    assert status["nodeName"] == NODE
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["LiveMigratable"]["status"] == "False"
    assert [i["name"] for i in status["interfaces"]] == ["default"]
    assert status["interfaces"][0]["mac"].startswith("02:")
    assert [t["phase"] for t in status["phaseTransitionTimestamps"]][-1] == "Running"
    assert FINALIZER in vmi["metadata"]["finalizers"]
    seen = [p for _, u, p in phases.seen if u == uid]
    assert seen[-1] == "Running" and seen.index("Scheduled") < seen.index("Running"), seen
    print(f"VMI writes seen by a watch (create included): {len(seen)}: {seen}")

    # the guest: user data ran, every disk is attached
    assert "user-data says 42 on lifecycle" in text
    assert "disks: vda vdb vdc vdd" in text
    assert host_disk.stat().st_size == 32 * 1024 * 1024
    await libvmi.vm_printable(client, name, "Running")

    # the guest runs qemu-ga: AgentConnected and guestOSInfo, as KubeVirt shows them
    def agent_connected(o: dict[str, object]) -> bool:
        conditions = (o.get("status") or {}).get("conditions") or []  # type: ignore[attr-defined]
        return any(c["type"] == "AgentConnected" and c["status"] == "True" for c in conditions)

    vmi = await libvmi.until(lambda: libvmi.get_or_empty(vmis, name), agent_connected, 60, "AgentConnected")
    assert vmi["status"]["guestOSInfo"]["id"] == "kubevisor-guest"
    assert vmi["status"]["guestOSInfo"]["prettyName"] == "kubevisor test guest 1"
    assert "AgentConnected" in [e["reason"] for e in await libvmi.events_for(client, name)]

    # the QEMU: sandboxed, its own process group
    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None
    assert os.getpgid(pid) == pid
    args = process.cmdline(pid) or []
    assert args[args.index("-sandbox") + 1].startswith("on")

    # stop: the guest gets the ACPI power button and powers off; nothing is left behind
    console = Console(libvmi.run_dir(data_dir, name) / "serial.sock")
    await console.connect()
    try:
        stopping = time.monotonic()
        await libvmi.vm_action(client, name, "stop")
        await console.wait_for(guest.POWEROFF_MARKER, 30)
    finally:
        await console.close()
    await libvmi.vm_printable(client, name, "Stopped")
    print(f"stop: VM Stopped {time.monotonic() - stopping:.2f} s after the stop request")
    assert await process.wait_exit(pid, 10)
    await libvmi.gone(vmis, name)
    assert not libvmi.run_dir(data_dir, name).exists()
    reasons = [e["reason"] for e in await libvmi.events_for(client, name)]
    assert "ShuttingDown" in reasons and "Stopped" in reasons and "Killed" not in reasons
    stopped = next(e for e in await libvmi.events_for(client, name) if e["reason"] == "Stopped")
    assert "The guest powered off" in stopped["message"]
    assert host_disk.exists()  # a hostDisk is the user's: it outlives the VM

    # start again: a new VMI, a new QEMU
    await libvmi.vm_action(client, name, "start")
    again = await libvmi.vmi_running(client, name, not_uid=uid)
    await libvmi.serial_line(data_dir, name, f"{guest.READY_MARKER} hostname={name}")
    new_pid = libvmi.qemu_pid(data_dir, name)
    assert new_pid is not None and new_pid != pid
    assert again["metadata"]["uid"] != uid

    # delete the VM: the VMI goes (after its guest), and so does the QEMU
    await vms.delete(name, libvmi.NAMESPACE)
    await libvmi.gone(vmis, name)
    assert await process.wait_exit(new_pid, 10)
    assert libvmi.qemu_pids(data_dir) == []


async def test_rerun_on_failure_after_qemu_is_killed(plat: Platform, client: Client, data_dir: Path) -> None:
    name = "crashy"
    await client.resource(libvmi.KV, "virtualmachines").create(
        libvmi.vm_manifest(name, "RerunOnFailure"), libvmi.NAMESPACE
    )
    vmi = await libvmi.vmi_running(client, name)
    uid = vmi["metadata"]["uid"]
    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None
    async with libvmi.PhaseRecorder(client, name) as phases:
        os.kill(pid, 9)
        await phases.wait(
            lambda seen: any(u == uid and p == "Failed" for _, u, p in seen), 30, f"VMI {uid} Failed"
        )
        again = await libvmi.vmi_running(client, name, not_uid=uid)
    new_pid = libvmi.qemu_pid(data_dir, name)
    assert new_pid is not None and new_pid != pid
    assert not process.is_running(pid)
    assert libvmi.qemu_pids(data_dir) == [new_pid]
    crashed = [e for e in await libvmi.events_for(client, name) if e["reason"] == "Crashed"]
    assert crashed and "SIGKILL" in crashed[0]["message"], crashed
    assert again["status"]["phase"] == "Running"


async def test_platform_restart_adopts_the_running_guest(data_dir: Path, test_guest: guest.Guest) -> None:
    name = "survivor"
    first = new_platform(data_dir, test_guest)
    await first.start()
    try:
        async with Client.from_kubeconfig(first.kubeconfig) as c:
            await c.resource(libvmi.KV, "virtualmachines").create(libvmi.vm_manifest(name), libvmi.NAMESPACE)
            vmi = await libvmi.vmi_running(c, name)
            await libvmi.serial_line(data_dir, name, guest.READY_MARKER)
    finally:
        await first.stop()
    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None, "the guest must outlive the platform"

    second = new_platform(data_dir, test_guest)
    await second.start()
    try:
        assert second.agent is not None and second.agent.vmis is not None
        adopted = second.agent.vmis.guests[f"{libvmi.NAMESPACE}/{name}"]
        assert adopted.pid == pid and adopted.adopted and adopted.qmp is not None
        async with Client.from_kubeconfig(second.kubeconfig) as c:
            vmis = c.resource(libvmi.KV, "virtualmachineinstances")
            still = await vmis.get(name, libvmi.NAMESPACE)
            assert still["metadata"]["uid"] == vmi["metadata"]["uid"]
            assert still["status"]["phase"] == "Running"
            assert libvmi.qemu_pids(data_dir) == [pid], "one QEMU for one VMI"

            # the reconnected QMP session works: the stop is a graceful ACPI powerdown
            await libvmi.vm_action(c, name, "stop")
            await libvmi.vm_printable(c, name, "Stopped")
            stopped = [e for e in await libvmi.events_for(c, name) if e["reason"] == "Stopped"]
            assert stopped and "The guest powered off" in stopped[-1]["message"], stopped
            assert not process.is_running(pid)
    finally:
        await second.stop()


async def test_a_guest_that_ignores_the_power_button_is_killed_after_the_grace_period(
    plat: Platform, client: Client, data_dir: Path
) -> None:
    name = "deaf"
    vm = libvmi.vm_manifest(name, grace=2)
    vm["spec"]["template"]["spec"]["domain"]["features"] = {"acpi": {"enabled": False}}  # no power button
    await client.resource(libvmi.KV, "virtualmachines").create(vm, libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name)
    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None
    stopping = time.monotonic()
    await libvmi.vm_action(client, name, "stop")
    await libvmi.vm_printable(client, name, "Stopped", timeout=30)
    took = time.monotonic() - stopping
    assert 2 <= took < 15, took
    assert not process.is_running(pid)
    killed = [e for e in await libvmi.events_for(client, name) if e["reason"] == "Killed"]
    assert killed and killed[0]["type"] == "Warning", killed
    assert "did not power off within terminationGracePeriodSeconds=2" in killed[0]["message"]
    assert not libvmi.run_dir(data_dir, name).exists()


async def test_a_guest_that_powers_off_by_itself_succeeds(
    plat: Platform, client: Client, data_dir: Path
) -> None:
    """RerunOnFailure: a guest shutdown is no failure, so the VMI ends Succeeded and the VM stays stopped."""
    name = "oneshot"
    vm = libvmi.vm_manifest(name, "RerunOnFailure", user_data="#!/bin/sh\necho bye\npoweroff -f\n")
    await client.resource(libvmi.KV, "virtualmachines").create(vm, libvmi.NAMESPACE)
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    done = await libvmi.until(
        lambda: libvmi.get_or_empty(vmis, name),
        lambda o: libvmi.phase(o) in ("Succeeded", "Failed"),
        90,
        f"VMI {name} finished",
    )
    assert libvmi.phase(done) == "Succeeded", done["status"]
    ready = next(c for c in done["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "GuestShutdown")
    assert "bye" in libvmi.read_log(libvmi.run_dir(data_dir, name) / "serial.log")  # kept until deletion
    await libvmi.vm_printable(client, name, "Stopped")
    assert libvmi.qemu_pids(data_dir) == []
    await client.resource(libvmi.KV, "virtualmachines").delete(name, libvmi.NAMESPACE)
    await libvmi.gone(vmis, name)
    assert not libvmi.run_dir(data_dir, name).exists()
