"""Snapshot benchmark: a VirtualMachineSnapshot of a running VM beside a plain copy of the same image.

The platform (API server, controllers, node agent) runs in this process. A VM boots the test guest with a
claim whose raw image (``--size-mib``, default 1024) is mostly written (``--written`` of its MiBs, default
0.9, random data, written on the host before boot). Once its guest agent is connected, each run creates a
VirtualMachineSnapshot and measures, from the create request to phase Succeeded, the whole path: snapshot
controller -> content -> node agent (freeze, blockdev-backup transaction, thaw, job to completion) ->
content status -> snapshot status. The snapshot is deleted between runs (the agent frees its files).

Baseline: ``cp --sparse=always`` of the same image (while the VM runs), the copy a user would do by hand
of a stopped VM. Prints medians of ``--runs`` runs (default 3) and their ratio; nothing is asserted.
Usage: ``python bench/snapshot_bench.py [--runs N] [--size-mib M] [--written F]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubevisor.agent.running import AgentConfig
from kubevisor.client import Client, NotFoundError
from kubevisor.platform import Platform
from kubevisor.testing import guest
from kubevisor.virt import process

KV = "kubevirt.io/v1"
SNAP = "snapshot.kubevirt.io/v1beta1"
NS = "default"
MiB = 1024 * 1024
IMAGE = "registry.local/kubevisor/test-guest:latest"


def fill(image: Path, size_mib: int, written: float) -> None:
    rng = random.Random(1)
    chunk = os.urandom(MiB)
    with image.open("wb") as f:
        f.truncate(size_mib * MiB)
        for index in range(size_mib):
            if rng.random() < written:
                f.seek(index * MiB)
                f.write(chunk[index % 7 :] + chunk[: index % 7])


async def until_true(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await probe():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def bench(runs: int, size_mib: int, written: float) -> None:
    test_guest = guest.build()
    data = Path(tempfile.mkdtemp(prefix="kv-"))
    try:
        directory = data / "volumes" / "pv-bench"
        directory.mkdir(parents=True)
        image = directory / "disk.img"
        fill(image, size_mib, written)
        allocated = os.stat(image).st_blocks * 512 / MiB
        config = AgentConfig(
            data_dir=data, node_name="bench", image_mirror={IMAGE: test_guest.disk}, accel="tcg"
        )
        platform = Platform(data, "127.0.0.1:0", agent=True, agent_config=config)
        await platform.start()
        try:
            async with Client.from_kubeconfig(platform.kubeconfig) as client:
                snapshot_seconds = await snapshot_runs(client, image, size_mib, runs)
        finally:
            await platform.stop()
        baseline = []
        for _ in range(runs):
            target = data / "baseline.img"
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec("cp", "--sparse=always", str(image), str(target))
            await proc.wait()
            baseline.append(round(time.monotonic() - started, 2))
            target.unlink()
        snap, base = statistics.median(snapshot_seconds), statistics.median(baseline)
        print(f"image: {size_mib} MiB, {allocated:.0f} MiB allocated; runs: {runs}")
        print(f"snapshot of the running VM (create -> Succeeded): {snap:.2f} s  {snapshot_seconds}")
        print(f"cp --sparse=always of the image:                  {base:.2f} s  {baseline}")
        print(f"ratio: {snap / base:.2f}x")
    finally:
        for pid in _qemus(data):
            process.kill(pid)
        shutil.rmtree(data, ignore_errors=True)


def _qemus(data: Path) -> list[int]:
    found = []
    for pidfile in (data / "vms").glob("*/*/qemu.pid"):
        pid = process.find(pidfile, marker=str(pidfile.parent / "qmp.sock"))
        if pid is not None:
            found.append(pid)
    return found


async def snapshot_runs(client: Client, image: Path, size_mib: int, runs: int) -> list[float]:
    await client.resource("v1", "persistentvolumes").create(
        {
            "metadata": {"name": "pv-bench"},
            "spec": {
                "capacity": {"storage": f"{size_mib}Mi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": str(image.parent)},
            },
        }
    )
    await client.resource("v1", "persistentvolumeclaims").create(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": f"{size_mib}Mi"}},
            },
        },
        NS,
    )
    vm = {
        "apiVersion": KV,
        "kind": "VirtualMachine",
        "metadata": {"name": "bench"},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {
                    "domain": {
                        "devices": {
                            "disks": [
                                {"name": "rootdisk", "disk": {"bus": "virtio"}},
                                {"name": "data", "disk": {"bus": "virtio"}},
                            ]
                        },
                        "memory": {"guest": "256Mi"},
                    },
                    "volumes": [
                        {"name": "rootdisk", "containerDisk": {"image": IMAGE}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "bench"}},
                    ],
                }
            },
        },
    }
    await client.resource(KV, "virtualmachines").create(vm, NS)
    vmis = client.resource(KV, "virtualmachineinstances")

    async def agent_connected() -> bool:
        try:
            vmi = await vmis.get("bench", NS)
        except NotFoundError:
            return False
        conditions = (vmi.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "AgentConnected" and c.get("status") == "True" for c in conditions)

    await until_true(agent_connected, 180, "the guest agent connected")
    snapshots = client.resource(SNAP, "virtualmachinesnapshots")
    seconds = []
    for run in range(runs):
        name = f"bench-{run}"
        body = {
            "apiVersion": SNAP,
            "kind": "VirtualMachineSnapshot",
            "metadata": {"name": name},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "bench"}},
        }
        started = time.monotonic()
        await snapshots.create(body, NS)
        phase = ""

        async def finished(name: str = name) -> bool:
            nonlocal phase
            phase = ((await snapshots.get(name, NS)).get("status") or {}).get("phase") or ""
            return phase in ("Succeeded", "Failed")

        await until_true(finished, 600, f"snapshot {name} finished")
        seconds.append(round(time.monotonic() - started, 2))
        if phase != "Succeeded":
            raise RuntimeError(f"snapshot {name}: {phase}")
        for copy in (image.parents[2] / "snapshots").glob("*/*/data.img"):
            print(f"snapshot {name}: {copy.stat().st_blocks * 512 / MiB:.0f} MiB allocated")
        await snapshots.delete(name, NS)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--written", type=float, default=0.9)
    args = parser.parse_args()
    asyncio.run(bench(args.runs, args.size_mib, args.written))


if __name__ == "__main__":
    main()
