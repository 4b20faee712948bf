"""Density benchmark, in the style of KubeVirt's perf-scale tests: many minimal VMIs on one node.

``kubevisor up`` (API server, controllers, node agent) runs in its own process. ``--count`` VMIs (default
100) booting the test guest (containerDisk through the node image mirror, 90Mi of guest memory, 1 vCPU
requesting 10m of CPU, TCG) are created ``--interval`` seconds apart (default 0.1 s, KubeVirt's perf-scale
creation pace), and every guest really runs. One watch, opened before the first create, records per VMI:

- creation -> Running: from the create request to the watch event with phase Running (P50, P95, max);
- API writes: the watch's ADDED and MODIFIED events from creation up to Running (goal: <= 3), and all of
  them until the end of the run.

Then every VMI is deleted (grace period 0) and the run waits until all are gone. Beside the figures: the
agent process's RSS with every guest running, and the machine's load. No thresholds are asserted. On a
2-core machine 100 TCG guests booting at once take minutes; use ``--count`` to scale down.
Usage: ``python bench/density.py [--count N] [--interval S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kvup import KV, NAMESPACE, Up, load_note, pct, run, vmi_manifest

from kubevisor.client.timestamps import parse_time
from kubevisor.testing import guest

CPU_REQUEST = "10m"
"""Per VMI. KubeVirt's default (100m per vCPU) lets the scheduler put 20 VMIs on a 2-core node; density
tests measure the platform, not that rule, so each asks for 10m."""


async def bench(count: int, interval: float, timeout: float) -> None:
    test_guest = guest.build()
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp:
        async with Up(Path(tmp) / "data", test_guest.disk) as up, up.client() as client:
            vmis = client.resource(KV, "virtualmachineinstances")
            current = await vmis.list(NAMESPACE)
            created: dict[str, float] = {}
            running: dict[str, float] = {}
            writes_to_running: Counter[str] = Counter()
            writes: Counter[str] = Counter()
            all_running = asyncio.Event()
            interruptions: list[str] = []

            async def watch() -> None:
                rv = current.resource_version
                while True:  # a watch stream may end (server timeout): go on from the last event seen
                    stream = vmis.watch(NAMESPACE, resource_version=rv, label_selector="bench=vm")
                    try:
                        async with stream as events:
                            async for event in events:
                                rv = event.object["metadata"].get("resourceVersion") or rv
                                record(event.type, event.object)
                    except Exception as e:  # 410 Gone, a broken stream, a failed re-list: re-list
                        # (writes in between are not counted) and say so: a silent watch looks like a stall
                        interruptions.append(repr(e))
                        print(f"# watch interrupted: {e!r}; re-listing", flush=True)
                        try:
                            listed = await vmis.list(NAMESPACE, label_selector="bench=vm")
                        except Exception as again:
                            print(f"# re-list failed: {again!r}; retrying", flush=True)
                            await asyncio.sleep(1)
                            continue
                        for obj in listed:
                            name = obj["metadata"]["name"]
                            if name not in running and (obj.get("status") or {}).get("phase") == "Running":
                                record("MODIFIED", obj)
                        rv = listed.resource_version

            def record(kind: str, obj: dict[str, Any]) -> None:
                name = obj["metadata"]["name"]
                if kind not in ("ADDED", "MODIFIED"):
                    return
                writes[name] += 1
                phase = (obj.get("status") or {}).get("phase")
                if name not in running:
                    writes_to_running[name] += 1
                    if phase == "Running":
                        running[name] = time.monotonic()
                        if len(running) == count:
                            all_running.set()
                if phase == "Failed":
                    print(f"VMI {name} Failed: {obj['status']}", flush=True)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.2)
            start = time.monotonic()

            async def create(i: int) -> None:
                name = f"density-{i:03d}"
                created[name] = time.monotonic()
                await vmis.create(vmi_manifest(name, memory="90Mi", cpu_request=CPU_REQUEST), NAMESPACE)

            creates = []
            for i in range(count):
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                creates.append(asyncio.create_task(create(i)))
            await asyncio.gather(*creates)
            try:
                await asyncio.wait_for(all_running.wait(), timeout)
            except TimeoutError:
                print(f"# only {len(running)}/{count} Running after {timeout:g} s", flush=True)
                for vmi in await vmis.list(NAMESPACE, label_selector="bench=vm"):
                    if vmi["metadata"]["name"] not in running:
                        status = vmi.get("status") or {}
                        why = [c.get("message") for c in status.get("conditions") or [] if c.get("message")]
                        print(f"#   {vmi['metadata']['name']}: {status.get('phase')} {why}", flush=True)
            all_up = time.monotonic() - start
            phase_times = [
                running_after(vmi) for vmi in await vmis.list(NAMESPACE, label_selector="bench=vm")
            ]
            agent_rss = up.rss_kib() / 1024
            note = load_note()
            await asyncio.sleep(2)  # let late status writes (guest agent, conditions) arrive
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            total_writes = dict(writes)

            for name in created:
                await vmis.delete(name, NAMESPACE)
            deadline = time.monotonic() + 300
            while (remaining := len((await vmis.list(NAMESPACE, label_selector="bench=vm")).items)) > 0:
                if time.monotonic() > deadline:
                    print(f"# cleanup: {remaining} VMIs still there after 300 s", flush=True)
                    break
                await asyncio.sleep(0.5)
            cleanup = time.monotonic() - deadline + 300

    latencies = [running[n] - created[n] for n in running]
    server_side = [t for t in phase_times if t is not None]
    to_running = [writes_to_running[n] for n in running]
    print(f"# density: {count} VMIs (90Mi, 1 vCPU, TCG, test guest) created {interval:g} s apart; {note}")
    if latencies:
        print(
            f"creation -> Running (s)        P50 {pct(latencies, 0.5):8.2f}   P95 {pct(latencies, 0.95):8.2f}"
            f"   max {max(latencies):8.2f}   ({len(latencies)}/{count} Running)"
        )
        print(
            f"API writes per VMI to Running  max {max(to_running)}"
            f"   mean {sum(to_running) / len(to_running):.2f}"
            f"   (watch ADDED+MODIFIED events; goal <= 3)"
        )
    if server_side:
        print(
            f"creation -> Running, server clock (s, 1 s resolution: creationTimestamp to the Running "
            f"phaseTransitionTimestamp, as KubeVirt's perf-scale reads it)  P50 {pct(server_side, 0.5):.0f}"
            f"   P95 {pct(server_side, 0.95):.0f}   max {max(server_side):.0f}   ({len(server_side)}/{count})"
        )
    totals = list(total_writes.values())
    if totals:
        print(f"API writes per VMI in the run   max {max(totals)}   mean {sum(totals) / len(totals):.2f}")
    print(f"all Running after {all_up:.1f} s; kubevisor up RSS with all running {agent_rss:.0f} MiB")
    if interruptions:
        print(f"# the watch was interrupted {len(interruptions)} times (re-listed): {interruptions[:3]}")
    print(f"cleanup (delete all, wait until gone) {cleanup:.1f} s")


def running_after(vmi: dict[str, Any]) -> float | None:
    """Seconds from the VMI's creationTimestamp to its Running phaseTransitionTimestamp (server clock)."""
    stamps = {
        t.get("phase"): t.get("phaseTransitionTimestamp")
        for t in (vmi.get("status") or {}).get("phaseTransitionTimestamps") or []
    }
    created, ran = vmi["metadata"].get("creationTimestamp"), stamps.get("Running")
    if not created or not ran:
        return None
    return (parse_time(ran) - parse_time(created)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for all to be Running")
    args = parser.parse_args()
    run(bench(args.count, args.interval, args.timeout))


if __name__ == "__main__":
    main()
