"""``spec.targetReadinessPolicy`` of VirtualMachineRestores against the real API server and the node agent's
snapshot part (no guest runs: the "running" target is a VMI object nobody starts).

The restore controller runs with a grace period of 0 s, so every check is decided by the controller's
first look, never by how long a test waits: ``WaitGracePeriod`` must fail at once, while ``WaitEventually``
must wait (and complete once the VM is stopped). The default 5-minute wait is covered by
tests/integration/controllers/test_snapshot.py (a restore that waits, then completes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.api.kubevirt_admission import NODE_AGENT_FINALIZER
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.controllers.snapshot import RestoreController, SnapshotController, go_duration
from kubevisor.controllers.volumebinding import VolumeBindingController
from kubevisor.platform import Platform
from tests.integration.client.libcluster import until
from tests.integration.controllers.test_snapshot import (
    KV,
    SNAP,
    MiB,
    condition,
    make_claim,
    pattern,
    region,
    restore,
    snapshot_agent,
    snapshotted,
    vm,
)


@pytest.fixture
async def controllers(client: Client, cluster: Platform, tmp_path: Path) -> AsyncIterator[Path]:
    node_dir = tmp_path / "node"
    async with (
        VolumeBindingController(client),
        SnapshotController(client),
        RestoreController(client, grace_period=0.0),
        snapshot_agent(client, node_dir),
    ):
        yield node_dir


async def snapshotted_and_running(client: Client, node_dir: Path, name: str) -> Path:
    """A VM ``name`` with a claim, a snapshot ``snap-<name>`` of it, then data changed and a VMI present."""
    image = await make_claim(client, node_dir, f"{name}-data")
    await client.resource(KV, "virtualmachines").create(vm(name, f"{name}-data"), "default")
    await snapshotted(client, f"snap-{name}", name)
    with image.open("r+b") as f:
        f.seek(4 * MiB)
        f.write(pattern(5))
    running: Obj = {
        "apiVersion": KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}},
    }
    await client.resource(KV, "virtualmachineinstances").create(running, "default")
    return image


def with_policy(name: str, target: str, policy: str) -> Obj:
    body = restore(name, target, f"snap-{target}")
    body["spec"]["targetReadinessPolicy"] = policy
    return body


async def stop_vmi(client: Client, name: str) -> None:
    """What the node agent and VM controller would do: the VMI goes away."""
    vmis = client.resource(KV, "virtualmachineinstances")
    vmi = await vmis.get(name, "default")
    vmi["metadata"]["finalizers"] = [
        f for f in vmi["metadata"].get("finalizers") or [] if f != NODE_AGENT_FINALIZER
    ]
    await vmis.update(vmi)
    await vmis.delete(name, "default")


async def reason_is(client: Client, name: str, reason: str) -> Obj:
    restores = client.resource(SNAP, "virtualmachinerestores")
    return await until(
        lambda: restores.get(name, "default"),
        lambda r: any(c.get("reason") == reason for c in (r.get("status") or {}).get("conditions") or []),
        15,
        f"restore {name}: reason {reason}",
    )


async def complete(client: Client, name: str) -> Obj:
    return await until(
        lambda: client.resource(SNAP, "virtualmachinerestores").get(name, "default"),
        lambda r: bool((r.get("status") or {}).get("complete")),
        15,
        f"restore {name} complete",
    )


async def events_of(client: Client, name: str) -> set[str]:
    events = await client.resource("v1", "events").list("default")
    return {str(e.get("reason")) for e in events if e["involvedObject"]["name"] == name}


def test_go_duration() -> None:
    assert go_duration(300) == "5m0s"
    assert go_duration(0) == "0s"
    assert go_duration(90) == "1m30s"
    assert go_duration(3600) == "1h0m0s"


async def test_wait_grace_period_fails_once_the_period_is_over(client: Client, controllers: Path) -> None:
    image = await snapshotted_and_running(client, controllers, "ann")
    await client.resource(SNAP, "virtualmachinerestores").create(
        with_policy("restore-ann", "ann", "WaitGracePeriod"), "default"
    )
    failed = await reason_is(client, "restore-ann", "Failed")
    failure = condition(failed, "Failure")
    assert failure["status"] == "True"
    assert failure["message"] == (
        "Restore target failed to be ready within 0s. Please power off the target VM before "
        "attempting restore"
    )
    assert not failed["status"]["complete"]
    assert region(image) == pattern(5)  # nothing restored
    vm_now = await client.resource(KV, "virtualmachines").get("ann", "default")
    assert not (vm_now.get("status") or {}).get("restoreInProgress")


async def test_fail_immediate(client: Client, controllers: Path) -> None:
    image = await snapshotted_and_running(client, controllers, "bea")
    await client.resource(SNAP, "virtualmachinerestores").create(
        with_policy("restore-bea", "bea", "FailImmediate"), "default"
    )
    failed = await reason_is(client, "restore-bea", "Failed")
    assert condition(failed, "Failure")["message"] == (
        "Restore target VMI must be powered off before restore operation"
    )
    assert region(image) == pattern(5)


async def test_wait_eventually_waits_past_the_grace_period(client: Client, controllers: Path) -> None:
    image = await snapshotted_and_running(client, controllers, "cal")
    await client.resource(SNAP, "virtualmachinerestores").create(
        with_policy("restore-cal", "cal", "WaitEventually"), "default"
    )
    waiting = await reason_is(client, "restore-cal", "VMRunning")
    assert "Waiting for target VM to be powered off" in condition(waiting, "Ready")["message"]
    assert not any(c["type"] == "Failure" for c in waiting["status"]["conditions"])
    assert "RestoreTargetNotReady" in await events_of(client, "restore-cal")
    await stop_vmi(client, "cal")
    await complete(client, "restore-cal")
    assert region(image) == pattern(1)


async def test_stop_target_stops_the_vm_then_restores(client: Client, controllers: Path) -> None:
    image = await snapshotted_and_running(client, controllers, "dee")
    vmi = await client.resource(KV, "virtualmachineinstances").get("dee", "default")
    await client.resource(SNAP, "virtualmachinerestores").create(
        with_policy("restore-dee", "dee", "StopTarget"), "default"
    )
    stopping = await reason_is(client, "restore-dee", "StoppingTarget")
    assert "Automatically stopping restore target" in condition(stopping, "Ready")["message"]
    vms = client.resource(KV, "virtualmachines")
    asked = await until(
        lambda: vms.get("dee", "default"),
        lambda v: bool((v.get("status") or {}).get("stateChangeRequests")),
        10,
        "a stop request on the VM",
    )
    # runStrategy Halted with a VMI running: virt-api's stop asks the VM controller to stop that VMI
    assert {"action": "Stop", "data": {"uid": vmi["metadata"]["uid"]}} in asked["status"][
        "stateChangeRequests"
    ]
    await stop_vmi(client, "dee")
    await complete(client, "restore-dee")
    assert region(image) == pattern(1)


async def test_unknown_policy_fails_with_the_field(client: Client, controllers: Path) -> None:
    await snapshotted_and_running(client, controllers, "eve")
    await client.resource(SNAP, "virtualmachinerestores").create(
        with_policy("restore-eve", "eve", "Sometimes"), "default"
    )
    failed = await reason_is(client, "restore-eve", "Failed")
    message = condition(failed, "Failure")["message"]
    assert "spec.targetReadinessPolicy" in message and "'Sometimes'" in message
