"""Memory footprint benchmark: what kubevisor adds per VM beyond the guest's RAM, and its idle size.

Definitions (all from ``/proc``):

- QEMU overhead of one VM = PSS of the QEMU process (``smaps_rollup``) minus the PSS of its guest RAM
  mapping (the anonymous mapping of the guest memory's size in ``smaps``): QEMU's own heap, libraries and
  buffers, whatever the guest touched excluded.
- kubevisor's addition per VM = (QEMU overhead of a kubevisor VM - QEMU overhead of the same QEMU started
  by hand) + the growth of ``kubevisor up``'s RSS per running VM (agent state, QMP sessions, informers).
  Goal <= 30 MiB (KubeVirt's virt-launcher + virtqemud + virtlogd cost ~240 MiB per VM).
- idle RSS of ``kubevisor up`` (API server, controllers, agent, no VM) after ``--settle`` seconds idle.
  Goal <= 150 MiB.

``--count`` VMs (default 3) of each kind run side by side: kubevisor VMIs of the test guest (128 MiB,
containerDisk through the node image mirror) and bare QEMUs with the argv the agent used (paths moved,
``-S`` dropped) on their own overlays of the same disk; each is measured once its guest printed its ready
line. No thresholds are asserted. Usage: ``python bench/footprint.py [--count N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from kvup import KV, NAMESPACE, Up, load_note, median, run, vmi_manifest

from kubevisor.testing import guest
from kubevisor.virt import process, qemuimg

GUEST_MIB = 128
KiB_PER_MiB = 1024


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def guest_ram_pss_kib(pid: int, guest_mib: int) -> int:
    """The PSS of the anonymous mapping holding guest RAM (the smallest mapping at least guest-sized)."""
    best: tuple[int, int] | None = None  # (size, pss)
    size = pss = 0
    header = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and not first.endswith(":"):
            header = True
            size = pss = 0
            continue
        if header and line.startswith("Size:"):
            size = int(line.split()[1])
        elif header and line.startswith("Pss:"):
            pss = int(line.split()[1])
            if size >= guest_mib * KiB_PER_MiB and (best is None or size < best[0]):
                best = (size, pss)
    return best[1] if best else 0


def overhead_mib(pid: int) -> float:
    return (pss_kib(pid) - guest_ram_pss_kib(pid, GUEST_MIB)) / KiB_PER_MiB


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def wait_ready(log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while guest.READY_MARKER not in read_text(log):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{guest.READY_MARKER} not in {log} within {timeout:g} s")
        await asyncio.sleep(0.1)


def fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


async def bench(count: int, settle: float) -> None:
    test_guest = guest.build()
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp:
        tmpdir = Path(tmp)
        bare_pids: list[int] = []
        try:
            async with Up(tmpdir / "data", test_guest.disk) as up, up.client() as client:
                await asyncio.sleep(settle)
                idle_rss = up.rss_kib() / KiB_PER_MiB
                vmis = client.resource(KV, "virtualmachineinstances")
                names = [f"fp-{i}" for i in range(count)]
                for name in names:
                    await vmis.create(vmi_manifest(name, memory=f"{GUEST_MIB}Mi"), NAMESPACE)
                for name in names:
                    await wait_ready(up.run_dir(name) / "serial.log")
                pids = [
                    process.find(up.run_dir(n) / "qemu.pid", marker=str(up.run_dir(n) / "qmp.sock"))
                    for n in names
                ]
                kv_pids = [p for p in pids if p is not None]
                agent_argv = process.cmdline(kv_pids[0]) or []
                for i in range(count):
                    bare_dir = tmpdir / f"bare-{i}"
                    fresh_dir(bare_dir)
                    await qemuimg.overlay(bare_dir / "disk-rootdisk.qcow2", test_guest.disk)
                    argv = [
                        a.replace(str(up.run_dir(names[0])), str(bare_dir)) for a in agent_argv if a != "-S"
                    ]
                    argv = [a.replace(f"guest={NAMESPACE}_{names[0]}", f"guest=bare-{i}") for a in argv]
                    bare_pids.append(process.spawn(argv, log_path=bare_dir / "qemu.log"))
                for i in range(count):
                    await wait_ready(tmpdir / f"bare-{i}" / "serial.log")
                await asyncio.sleep(settle)  # both sides idle in their guests' shells
                busy_rss = up.rss_kib() / KiB_PER_MiB
                kv_overheads = [overhead_mib(p) for p in kv_pids]
                bare_overheads = [overhead_mib(p) for p in bare_pids]
                kv_pss = [pss_kib(p) / KiB_PER_MiB for p in kv_pids]
                bare_pss = [pss_kib(p) / KiB_PER_MiB for p in bare_pids]
                note = load_note()
        finally:
            for pid in bare_pids:
                process.kill(pid)
    kv_o, bare_o = median(kv_overheads), median(bare_overheads)
    agent_per_vm = (busy_rss - idle_rss) / count
    added = (kv_o - bare_o) + agent_per_vm
    print(f"# footprint: {count} VMs each side, test guest {GUEST_MIB} MiB, TCG; {note}")
    print(f"{'':<44}{'kubevisor':>12}{'bare QEMU':>12}{'ratio':>9}")
    print(f"{'QEMU PSS per VM (MiB, median)':<44}{median(kv_pss):>12.1f}{median(bare_pss):>12.1f}"
          f"{median(kv_pss) / median(bare_pss):>9.3f}")  # fmt: skip
    print(f"{'QEMU PSS minus guest RAM per VM (MiB)':<44}{kv_o:>12.1f}{bare_o:>12.1f}{kv_o / bare_o:>9.3f}")
    print(f"{'kubevisor up RSS growth per VM (MiB)':<44}{agent_per_vm:>12.1f}")
    print(
        f"{'kubevisor adds per VM (MiB)':<44}{added:>12.1f}   goal <= 30: "
        f"{'met' if added <= 30 else 'NOT met'}"
    )
    print(
        f"{'kubevisor up idle RSS (MiB)':<44}{idle_rss:>12.1f}   goal <= 150: "
        f"{'met' if idle_rss <= 150 else 'NOT met'}; with {count} VMs {busy_rss:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before measuring")
    args = parser.parse_args()
    run(bench(args.count, args.settle))


if __name__ == "__main__":
    main()
