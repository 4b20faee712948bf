"""VM start benchmark: a VMI through kubevisor beside the same QEMU started by hand, runs interleaved.

kubevisor: ``kubevisor up`` (API server, controllers, node agent) in its own process; each run creates a
bare VMI booting the test guest (containerDisk through the node image mirror, 128 MiB, 1 vCPU) and measures,
from the create request:

- ``-> Running``: the watch event with phase Running (scheduling, overlay, QEMU spawn, QMP, ``cont``,
  status write);
- ``-> first serial line``: the first complete line in the VMI's ``serial.log``.

Baseline: bare ``qemu-system-x86_64`` with the argv the agent used (read from the first kubevisor run's
``/proc/<pid>/cmdline``, paths moved to a scratch directory, ``-S`` dropped so it runs at once), on a fresh
qcow2 overlay of the same disk made beforehand (not timed); ``-> Running`` is QMP answering ``running``.

Prints medians of ``--runs`` runs (default 5) each, their ratio (goal: first serial line <= 1.15x), and the
median phases of kubevisor's path (create -> Scheduled -> Running, from watch events). No thresholds are
asserted. Usage: ``python bench/vm_start.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from kvup import KV, NAMESPACE, Up, load_note, median, run, vmi_manifest, wait_first_line

from kubevisor.client import Client
from kubevisor.testing import guest
from kubevisor.virt import process, qemuimg
from kubevisor.virt.qmp import Session


async def kubevisor_run(up: Up, client: Client, name: str) -> tuple[dict[str, float], list[str]]:
    vmis = client.resource(KV, "virtualmachineinstances")
    current = await vmis.list(NAMESPACE)
    seen: dict[str, float] = {}
    done = asyncio.Event()

    async def watch() -> None:
        async with vmis.watch(
            NAMESPACE, resource_version=current.resource_version, field_selector=f"metadata.name={name}"
        ) as events:
            async for event in events:
                phase = (event.object.get("status") or {}).get("phase") or ""
                seen.setdefault(phase, time.monotonic())
                if phase == "Running":
                    done.set()
                    return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    start = time.monotonic()
    await vmis.create(vmi_manifest(name), NAMESPACE)
    await asyncio.wait_for(done.wait(), 120)
    await watcher
    first_line = await wait_first_line(up.run_dir(name) / "serial.log")
    pid = process.find(up.run_dir(name) / "qemu.pid", marker=str(up.run_dir(name) / "qmp.sock"))
    argv = process.cmdline(pid) if pid is not None else None
    await vmis.delete(name, NAMESPACE)
    deadline = time.monotonic() + 60
    while (await vmis.list(NAMESPACE, field_selector=f"metadata.name={name}")).items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"VMI {name} not deleted within 60 s")
        await asyncio.sleep(0.05)
    figures = {
        "scheduled": seen.get("Scheduled", start) - start,
        "running": seen["Running"] - start,
        "first_line": first_line - start,
    }
    return figures, argv or []


def bare_argv(agent_argv: list[str], agent_dir: Path, bare_dir: Path) -> list[str]:
    return [a.replace(str(agent_dir), str(bare_dir)) for a in agent_argv if a != "-S"]


def fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


async def bare_run(argv: list[str], bare_dir: Path, disk: Path) -> dict[str, float]:
    fresh_dir(bare_dir)
    await qemuimg.overlay(bare_dir / "disk-rootdisk.qcow2", disk)
    start = time.monotonic()
    pid = process.spawn(argv, log_path=bare_dir / "qemu.log")
    try:
        qmp = Session(bare_dir / "qmp.sock", name="bench-bare")
        await qmp.connect(timeout=30, alive=lambda: process.is_running(pid))
        for _ in range(10_000):
            if await qmp.status() == "running":
                break
            await asyncio.sleep(0.005)
        running = time.monotonic()
        await qmp.close()
        first_line = await wait_first_line(bare_dir / "serial.log")
    finally:
        process.kill(pid)
    return {"running": running - start, "first_line": first_line - start}


async def bench(runs: int) -> None:
    test_guest = guest.build()
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp:
        tmpdir = Path(tmp)
        kv: list[dict[str, float]] = []
        bare: list[dict[str, float]] = []
        async with Up(tmpdir / "data", test_guest.disk) as up, up.client() as client:
            # a first, unmeasured run warms the caches (page cache of QEMU and the disk) for both sides
            _, agent_argv = await kubevisor_run(up, client, "warmup")
            if not agent_argv:
                raise RuntimeError("could not read the agent's QEMU command line")
            argv = bare_argv(agent_argv, up.run_dir("warmup"), tmpdir / "bare")
            await bare_run(argv, tmpdir / "bare", test_guest.disk)
            for i in range(runs):
                kv.append((await kubevisor_run(up, client, f"start-{i}"))[0])
                bare.append(await bare_run(argv, tmpdir / "bare", test_guest.disk))
            note = load_note()
    print(f"# VM start, {runs} runs each, interleaved; test guest, 128 MiB, 1 vCPU, TCG; {note}")
    print(f"{'':<34}{'kubevisor':>12}{'bare QEMU':>12}{'ratio':>9}")
    rows = (("running", "create -> Running (s)"), ("first_line", "create -> first serial line (s)"))
    for key, label in rows:
        k, b = median([r[key] for r in kv]), median([r[key] for r in bare])
        print(f"{label:<34}{k:>12.3f}{b:>12.3f}{k / b:>9.3f}")
    print(
        f"kubevisor path (medians): create -> Scheduled {median([r['scheduled'] for r in kv]):.3f} s, "
        f"Scheduled -> Running {median([r['running'] - r['scheduled'] for r in kv]):.3f} s"
    )
    ratio = median([r["first_line"] for r in kv]) / median([r["first_line"] for r in bare])
    print(f"# goal first serial line <= 1.15x bare: {'met' if ratio <= 1.15 else 'NOT met'} ({ratio:.3f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    run(bench(args.runs))


if __name__ == "__main__":
    main()
