"""API benchmark: 10,000 ConfigMaps through the API server, each figure beside the same work on the store.

The API server runs as ``kubevisor up`` in its own process (its own core, as in production); the client
and the store baseline run in this process. Figures:

- create rate with bounded concurrency (API) vs ``store.create`` of the same objects;
- get p50/p99 (API, one at a time over a kept-alive connection) vs ``store.get``;
- full list of 10,000 objects (API JSON list) vs ``store.range``;
- watch delivery latency p99 with 10 watchers while writing 500 objects/s, API watch streams vs store watches.

Each line prints the API figure, the store figure and their ratio. Usage: ``python bench/api.py [--count N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubevisor.store import prefix_end  # noqa: E402
from kubevisor.store.sqlite import SQLiteStore  # noqa: E402

CM = "/api/v1/namespaces/default/configmaps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def configmap(i: int, stamp: float = 0.0) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"cm-{i:05d}", "namespace": "default", "labels": {"bench": "api"}},
        "data": {"index": str(i), "payload": "x" * 200, "stamp": repr(stamp)},
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bounded(n: int, concurrency: int, op: Callable[[int], Awaitable[None]]) -> float:
    """Run op(0..n-1) with at most ``concurrency`` in flight; return seconds taken."""
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


class ApiProcess:
    """``kubevisor up`` in a subprocess with a fresh data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ApiProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubevisor.cli.main",
                "up",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                *(["--no-controllers"] if os.environ.get("BENCH_NO_CONTROLLERS") else []),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        ca = self.data_dir / "pki" / "ca.crt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kubevisor up exited early")
            if (self.data_dir / "kubeconfig").exists() and ca.exists():
                try:
                    r = httpx.get(f"https://127.0.0.1:{self.port}/readyz", verify=self.ssl(), timeout=1)
                    if r.text == "ok":
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("kubevisor up did not become ready")

    def ssl(self) -> ssl.SSLContext:
        pki = self.data_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def report(name: str, api: float, store: float, unit: str, higher_is_better: bool) -> None:
    ratio = api / store if store else float("inf")
    note = "API/store" if not higher_is_better else "API/store (throughput)"
    print(
        f"{name:<42} API {api:>10.2f} {unit:<9} store {store:>10.2f} {unit:<9} ratio {ratio:6.3f} ({note})",
        flush=True,
    )


async def bench_api(api: ApiProcess, count: int, concurrency: int) -> dict[str, float]:
    """The API figures. The load generator is aiohttp: it costs the client core ~3x less CPU per request
    than httpx, so the figures say more about the server (the product's own client is httpx)."""
    out: dict[str, float] = {}
    base = f"https://127.0.0.1:{api.port}"
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(ssl=api.ssl(), limit=concurrency + 20)
    async with aiohttp.ClientSession(base, connector=connector) as http:

        async def create(i: int) -> None:
            async with http.post(CM, data=orjson.dumps(configmap(i)), headers=headers) as r:
                body = await r.read()  # read it all, or aiohttp closes the connection instead of reusing it
                if r.status != 201:
                    raise RuntimeError(body.decode())

        secs = await bounded(count, concurrency, create)
        out["create_rate"] = count / secs

        lat: list[float] = []
        for i in range(0, count, max(1, count // 2000)):
            t = time.perf_counter()
            async with http.get(f"{CM}/cm-{i:05d}") as r:
                await r.read()
                assert r.status == 200
            lat.append((time.perf_counter() - t) * 1000)
        out["get_p50"], out["get_p99"] = pct(lat, 0.5), pct(lat, 0.99)

        times = []
        for _ in range(3):
            t = time.perf_counter()
            async with http.get(CM) as r:
                n = len(orjson.loads(await r.read())["items"])
            times.append(time.perf_counter() - t)
            assert n == count, n
        out["list_s"] = min(times)
        out["rss_mib"] = api.rss_mib()

        async with http.get(f"{CM}?limit=1") as r:
            rv = orjson.loads(await r.read())["metadata"]["resourceVersion"]
        latencies: list[float] = []
        n_watch, n_writes, rate = 10, 500, 500.0
        opened: list[None] = []
        ready = asyncio.Event()

        async def watcher() -> None:
            seen = 0
            url = f"{CM}?watch=1&resourceVersion={rv}&labelSelector=bench%3Dwatch"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as r:
                opened.append(None)
                if len(opened) == n_watch:
                    ready.set()
                while seen < n_writes:
                    line = await r.content.readline()
                    if not line.strip():
                        continue
                    now = time.time()
                    ev = orjson.loads(line)
                    latencies.append((now - float(ev["object"]["data"]["stamp"])) * 1000)
                    seen += 1

        watchers = [asyncio.create_task(watcher()) for _ in range(n_watch)]
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.sleep(0.2)

        async def write(i: int) -> None:
            obj = configmap(count + i, time.time())
            obj["metadata"]["labels"] = {"bench": "watch"}
            async with http.post(CM, data=orjson.dumps(obj), headers=headers) as r:
                body = await r.read()
                assert r.status == 201, body

        await paced(n_writes, rate, write)
        await asyncio.wait_for(asyncio.gather(*watchers), 60)
        out["watch_p99"] = pct(latencies, 0.99)
        out["watch_p50"] = pct(latencies, 0.5)
    return out


async def paced(n: int, rate: float, op: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start op(i) at ``rate`` per second (open loop), then wait for all."""
    start = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(op(i)))
    await asyncio.gather(*tasks)


async def bench_store(path: Path, count: int, concurrency: int) -> dict[str, float]:
    out: dict[str, float] = {}
    store = await SQLiteStore.open(path)
    try:
        prefix = "/registry/core/configmaps/default/"

        async def create(i: int) -> None:
            await store.create(f"{prefix}cm-{i:05d}", orjson.dumps(configmap(i)))

        secs = await bounded(count, concurrency, create)
        out["create_rate"] = count / secs
        lat = []
        for i in range(0, count, max(1, count // 2000)):
            t = time.perf_counter()
            await store.get(f"{prefix}cm-{i:05d}")
            lat.append((time.perf_counter() - t) * 1000)
        out["get_p50"], out["get_p99"] = pct(lat, 0.5), pct(lat, 0.99)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            res = await store.range(prefix, prefix_end(prefix))
            times.append(time.perf_counter() - t)
            assert len(res.kvs) == count
        out["list_s"] = min(times)

        latencies: list[float] = []
        n_watch, n_writes = 10, 500
        rev = await store.current_revision()

        async def watcher() -> None:
            seen = 0
            async for ev in store.watch(prefix, prefix_end(prefix), rev + 1):
                latencies.append((time.time() - float(orjson.loads(ev.kv.value)["data"]["stamp"])) * 1000)
                seen += 1
                if seen == n_writes:
                    return

        watchers = [asyncio.create_task(watcher()) for _ in range(n_watch)]
        await asyncio.sleep(0.2)

        async def write(i: int) -> None:
            await store.create(f"{prefix}w-{i:05d}", orjson.dumps(configmap(count + i, time.time())))

        await paced(n_writes, 500.0, write)
        await asyncio.wait_for(asyncio.gather(*watchers), 60)
        out["watch_p99"] = pct(latencies, 0.99)
        out["watch_p50"] = pct(latencies, 0.5)
    finally:
        await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp:
        tmpdir = Path(tmp)
        store_figures = asyncio.run(bench_store(tmpdir / "baseline.sqlite", args.count, args.concurrency))
        with ApiProcess(tmpdir / "data") as api:
            api_figures = asyncio.run(bench_api(api, args.count, args.concurrency))
    print(
        f"# {args.count} ConfigMaps, concurrency {args.concurrency}, {os.cpu_count()} cores, "
        f"API server in its own process (kubevisor up), store baseline in-process"
    )
    report("create rate (objects/s)", api_figures["create_rate"], store_figures["create_rate"], "obj/s", True)
    report("get p50 (ms)", api_figures["get_p50"], store_figures["get_p50"], "ms", False)
    report("get p99 (ms)", api_figures["get_p99"], store_figures["get_p99"], "ms", False)
    report(f"list all {args.count} (s)", api_figures["list_s"], store_figures["list_s"], "s", False)
    report(
        "watch delivery p50, 10 watchers, 500/s (ms)",
        api_figures["watch_p50"],
        store_figures["watch_p50"],
        "ms",
        False,
    )
    report(
        "watch delivery p99, 10 watchers, 500/s (ms)",
        api_figures["watch_p99"],
        store_figures["watch_p99"],
        "ms",
        False,
    )
    print(f"{'apiserver RSS after the run (MiB)':<42} {api_figures['rss_mib']:.1f}")
    goals = {
        "create >= 1000/s": api_figures["create_rate"] >= 1000,
        "list 10k < 1 s": api_figures["list_s"] < 1.0,
        "watch p99 < 50 ms": api_figures["watch_p99"] < 50,
    }
    print("# goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))


if __name__ == "__main__":
    main()
