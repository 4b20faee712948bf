"""Clone benchmark: a DataVolume clone (``source.pvc``) through the platform beside ``cp`` of the same file.

A sparse raw disk of ``--size`` GiB (default 10) holding ``--data`` MiB of random data (default 1024, in
64 MiB extents spread evenly over the disk) is the image of a claim ``golden`` of a platform started in
this process (API server, controllers and node agent, as ``kubevisor up`` runs them, on a temporary data
directory). Each round, interleaved:

- ``cp --sparse=always SRC DST`` (what the agent falls back to without reflinks, no fsync);
- ``cp --reflink=auto SRC DST`` (instant where the file system shares blocks: XFS, Btrfs);
- ``cp --sparse=always SRC DST && sync DST`` (durable, as the platform's clone is);
- the platform: a DataVolume ``source: {pvc: golden}`` of the same size, from its create request until its
  ``status.phase`` is ``Succeeded`` (claim created, provisioned, bound, handed to the node agent, copied
  with ``cp --reflink=auto --sparse=always`` into a temporary file, fsynced, renamed, status written).
  The agent's own copy time (its log line) is printed beside it.

Prints the best of ``--repeat`` rounds (default 3) of each, and the platform's time over each baseline's.
Usage: ``python bench/clone_bench.py [--size GiB] [--data MiB] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubevisor.agent.running import AgentConfig  # noqa: E402
from kubevisor.client import Client, errors  # noqa: E402
from kubevisor.testing import cluster  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
EXTENT = 64 * MiB
CDI = "cdi.kubevirt.io/v1beta1"
NODE = "bench-node"


class _CopyTimes(logging.Handler):
    """Collects the agent's "clone of claim ... in X s" log lines."""

    pattern = re.compile(
        r"clone of claim .* into PersistentVolumeClaim \S+/(\S+): \w+ of \d+ bytes in ([\d.]+) s"
    )

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = self.pattern.search(record.getMessage())
        if found:
            self.seconds[found.group(1)] = float(found.group(2))


def make_disk(path: Path, size: int, data: int) -> None:
    """``size`` bytes, sparse, with ``data`` bytes of random data in :data:`EXTENT` pieces spread evenly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extents = max(data // EXTENT, 1)
    stride = size // extents
    with path.open("wb") as f:
        f.truncate(size)
        for i in range(extents):
            f.seek(i * stride)
            f.write(os.urandom(EXTENT))
        f.flush()
        os.fsync(f.fileno())


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - started


async def source_claim(client: Client, directory: Path, size: int) -> None:
    await client.resource("v1", "persistentvolumes").create(
        {
            "metadata": {"name": "pv-golden"},
            "spec": {
                "capacity": {"storage": str(size)},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": str(directory)},
                "storageClassName": "",
            },
        }
    )
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await pvcs.create(
        {
            "metadata": {"name": "golden"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": "pv-golden",
                "resources": {"requests": {"storage": str(size)}},
            },
        },
        "default",
    )

    async def bound() -> bool:
        return bool((await pvcs.get("golden", "default")).get("status", {}).get("phase") == "Bound")

    await poll(bound)


async def poll(check: Callable[[], Awaitable[bool]]) -> None:
    """Until ``check()`` is true (every 50 ms)."""
    while True:
        if await check():
            return
        await asyncio.sleep(0.05)


async def clone(client: Client, name: str, size: int) -> float:
    dvs = client.resource(CDI, "datavolumes")
    body = {
        "apiVersion": CDI,
        "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": {
            "source": {"pvc": {"namespace": "default", "name": "golden"}},
            "storage": {"resources": {"requests": {"storage": str(size)}}},
        },
    }
    started = time.perf_counter()
    await dvs.create(body, "default")
    while True:
        phase = ((await dvs.get(name, "default")).get("status") or {}).get("phase")
        if phase == "Succeeded":
            return time.perf_counter() - started
        if phase == "Failed":
            raise RuntimeError(f"DataVolume {name} failed: {(await dvs.get(name, 'default'))['status']}")
        await asyncio.sleep(0.01)


async def image_of(client: Client, claim: str) -> Path:
    pvc = await client.resource("v1", "persistentvolumeclaims").get(claim, "default")
    pv = await client.resource("v1", "persistentvolumes").get(pvc["spec"]["volumeName"])
    return Path(pv["spec"]["hostPath"]["path"]) / "disk.img"


async def run(args: argparse.Namespace, work: Path) -> None:
    size, data = args.size * GiB, args.data * MiB
    data_dir = work / "data"
    source_dir = data_dir / "volumes" / "pv-golden"
    source = source_dir / "disk.img"
    started = time.monotonic()
    await asyncio.to_thread(make_disk, source, size, data)
    allocated = source.stat().st_blocks * 512
    print(
        f"source: {size / GiB:.0f} GiB sparse raw, {allocated / MiB:.0f} MiB allocated, made in "
        f"{time.monotonic() - started:.1f} s; file system {fs_type(work)}",
        flush=True,
    )
    copies = _CopyTimes()
    logging.getLogger("kubevisor.agent.importing").addHandler(copies)
    logging.getLogger("kubevisor.agent.importing").setLevel(logging.INFO)
    baselines = {
        "cp --sparse=always": ["cp", "--sparse=always"],
        "cp --reflink=auto": ["cp", "--reflink=auto"],
    }
    best: dict[str, float] = {}
    agent_best = float("inf")
    dst = work / "baseline.img"
    config = AgentConfig(data_dir=data_dir, node_name=NODE, accel="tcg")
    async with (
        cluster.running_platform(data_dir, agent=True, agent_config=config) as plat,
        Client.from_kubeconfig(plat.kubeconfig) as client,
    ):
        await source_claim(client, source_dir, size)
        for round_ in range(args.repeat):
            for label, argv in baselines.items():
                seconds = await asyncio.to_thread(timed, [*argv, "--", str(source), str(dst)])
                best[label] = min(best.get(label, float("inf")), seconds)
                dst.unlink()
            seconds = await asyncio.to_thread(timed, ["cp", "--sparse=always", "--", str(source), str(dst)])
            seconds += await asyncio.to_thread(timed, ["sync", str(dst)])
            label = "cp --sparse=always && sync"
            best[label] = min(best.get(label, float("inf")), seconds)
            dst.unlink()
            name = f"clone-{round_}"
            seconds = await clone(client, name, size)
            best["platform"] = min(best.get("platform", float("inf")), seconds)
            agent_best = min(agent_best, copies.seconds.get(name, float("inf")))
            target = await image_of(client, name)
            if round_ == 0:
                same = await asyncio.to_thread(
                    subprocess.run, ["cmp", "--silent", str(source), str(target)], check=False
                )
                assert same.returncode == 0, "the clone differs from its source"
                print(
                    f"clone: {target.stat().st_size / GiB:.0f} GiB, "
                    f"{target.stat().st_blocks * 512 / MiB:.0f} MiB allocated, identical to the source",
                    flush=True,
                )
            with contextlib.suppress(errors.NotFoundError):
                await client.resource(CDI, "datavolumes").delete(name, "default")

            async def freed(path: Path = target) -> bool:
                return not await asyncio.to_thread(path.exists)

            await poll(freed)  # the volume's space is freed before the next round
    platform = best.pop("platform")
    print(f"\nbest of {args.repeat}: DataVolume clone, create -> Succeeded: {platform:.2f} s", end="")
    print(f" (the agent's copy itself: {agent_best:.2f} s)")
    print(f"{'baseline':30} {'seconds':>8} {'platform / baseline':>20}")
    for label, seconds in best.items():
        print(f"{label:30} {seconds:8.2f} {platform / seconds:20.2f}")


def fs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10, help="disk size in GiB (default 10)")
    parser.add_argument("--data", type=int, default=1024, help="MiB of data in it (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best of each counts")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: a temporary directory)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clone-bench-", dir=args.dir))
    try:
        asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
