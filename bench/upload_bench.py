"""Upload benchmark: an image upload through kubevisor (apiserver upload proxy -> node agent -> import
engine) beside a plain ``curl -T`` of the same file to a loopback HTTP server that writes it to disk.

A raw image of ``--size`` MiB (default 512) of random data is made once. Per run:

- baseline: ``curl -T FILE http://127.0.0.1:PORT/...``; the server (its own process) writes the body to a
  file in 1 MiB reads;
- kubevisor (curl): ``curl -T FILE https://APISERVER/v1beta1/upload`` with the upload token and
  ``Content-Digest``: the same client, through TLS to the apiserver, mutual TLS to the agent, the agent's
  import (format sniffing, sha256 verification, write, rename);
- kubevisor (CLI): ``kubevisor image-upload pvc ...`` as a subprocess (token, sha256 pass over the file,
  streaming with the progress bar).

A real platform (embedded store, TLS) and a real agent server run in this process; each run uploads into
a fresh claim. Images are not fsynced in any of them (the agent's ``fsync=False``; the baseline never
syncs). Prints MB/s (best of ``--repeat``) and the ratio kubevisor / baseline. Usage:
``python bench/upload_bench.py [--size MiB] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.server
import os
import socketserver
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubevisor.agent.serving import AgentServer, server_ssl_context  # noqa: E402
from kubevisor.agent.uploading import UploadReceiver  # noqa: E402
from kubevisor.apiserver.pki import ensure_agent_serving  # noqa: E402
from kubevisor.client import Client  # noqa: E402
from kubevisor.controllers.volumebinding import VolumeBindingController  # noqa: E402
from kubevisor.platform import Platform  # noqa: E402
from kubevisor.testing.cluster import running_platform  # noqa: E402

MiB = 1 << 20
NODE = "bench-node"


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    target = Path("/dev/null")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_PUT(self) -> None:
        left = int(self.headers.get("Content-Length") or 0)
        with open(self.target, "wb") as f:
            while left:
                chunk = self.rfile.read(min(left, MiB))
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve_sink(target: Path, port_file: Path) -> None:
    _Sink.target = target
    with socketserver.TCPServer(("127.0.0.1", 0), _Sink) as server:
        port_file.write_text(str(server.server_address[1]))
        server.serve_forever()


def make_image(path: Path, size_mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))


async def run_curl(*args: str) -> float:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--fail", "-o", "/dev/null", *args, stdout=subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"curl {' '.join(args)} failed")
    return time.monotonic() - started


async def make_claim(client: Client, volumes: Path, name: str, size_mib: int) -> None:
    directory = volumes / name
    directory.mkdir()
    size = f"{size_mib + 64}Mi"
    await client.resource("v1", "persistentvolumes").create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pv-{name}"},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "bench",
                "hostPath": {"path": str(directory)},
                "claimRef": {"namespace": "default", "name": name},
            },
        }
    )
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await pvcs.create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "annotations": {"cdi.kubevirt.io/storage.upload.target": ""}},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "bench",
                "resources": {"requests": {"storage": size}},
            },
        },
        "default",
    )
    deadline = time.monotonic() + 30
    while (await pvcs.get(name, "default")).get("status", {}).get("phase") != "Bound":
        if time.monotonic() > deadline:
            raise RuntimeError(f"claim {name} was not bound")
        await asyncio.sleep(0.05)


async def best(runs: int, once: Callable[[int], Awaitable[float]]) -> float:
    return min([await once(i) for i in range(runs)])


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kv-upload-bench-") as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "image.raw"
        make_image(image, args.size)
        size = image.stat().st_size
        sha = base64.b64encode(hashlib.sha256(image.read_bytes()).digest()).decode()
        port_file = tmp / "sink.port"
        import multiprocessing

        sink = multiprocessing.get_context("spawn").Process(
            target=_serve_sink, args=(tmp / "sink.img", port_file), daemon=True
        )
        sink.start()
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline:
                    raise RuntimeError("the baseline server did not start")
                await asyncio.sleep(0.05)
            sink_url = f"http://127.0.0.1:{port_file.read_text()}/upload"
            baseline = await best(args.repeat, lambda _: run_curl("-T", str(image), sink_url))
            async with running_platform(tmp / "data", controllers=False) as plat:
                results = await _kubevisor(args, plat, tmp, image, sha)
        finally:
            sink.terminate()
            sink.join()

    def rate(seconds: float) -> float:
        return size / seconds / 1e6

    print(f"upload of a {args.size} MiB raw image (random data), best of {args.repeat}, no fsync")
    print(f"  baseline curl -T to a loopback server     {rate(baseline):8.1f} MB/s")
    for name, seconds in results.items():
        print(f"  {name:<40} {rate(seconds):8.1f} MB/s  ratio {baseline / seconds:.2f}")


async def _kubevisor(
    args: argparse.Namespace, plat: Platform, tmp: Path, image: Path, sha: str
) -> dict[str, float]:
    pki = plat.pki
    assert pki is not None
    volumes = tmp / "volumes"
    volumes.mkdir()
    results: dict[str, float] = {}
    async with Client.from_kubeconfig(plat.kubeconfig) as client:
        cert, key = ensure_agent_serving(pki, NODE, ["127.0.0.1"])
        server = AgentServer(
            None,  # type: ignore[arg-type]  # no VMIs
            None,
            host="127.0.0.1",
            port=0,
            context=server_ssl_context(cert, key, pki.ca_cert),
            uploads=UploadReceiver(client, node=NODE, volume_dirs=(volumes,), fsync=False),
        )
        await server.start()
        try:
            nodes = client.resource("v1", "nodes")
            node = await nodes.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
            node["status"] = {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": server.port}},
            }
            await nodes.update_status(node)
            async with VolumeBindingController(client):

                async def via_curl(i: int) -> float:
                    name = f"curl-{i}"
                    await make_claim(client, volumes, name, args.size)
                    answer: Any = await client.request(
                        "POST",
                        "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/default/uploadtokenrequests",
                        body={"spec": {"pvcName": name}},
                    )
                    return await run_curl(
                        "-T",
                        str(image),
                        "--cacert",
                        str(pki.ca_cert),
                        "-H",
                        f"Authorization: Bearer {answer['status']['token']}",
                        "-H",
                        f"Content-Digest: sha-256=:{sha}:",
                        f"{plat.url}/v1beta1/upload",
                    )

                results["kubevisor upload proxy (curl -T)"] = await best(args.repeat, via_curl)

                async def via_cli(i: int) -> float:
                    name = f"cli-{i}"
                    await make_claim(client, volumes, name, args.size)
                    started = time.monotonic()
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "kubevisor.cli.main",
                        "image-upload",
                        "pvc",
                        name,
                        "--image-path",
                        str(image),
                        "--no-create",
                        env=dict(os.environ, KUBECONFIG=str(plat.kubeconfig)),
                        stdout=subprocess.DEVNULL,
                        cwd=ROOT,
                    )
                    if await proc.wait() != 0:
                        raise RuntimeError("kubevisor image-upload failed")
                    return time.monotonic() - started

                results["kubevisor image-upload (CLI, +sha256)"] = await best(args.repeat, via_cli)
        finally:
            await server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512, help="image size in MiB (default 512)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, best counted (default 2)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
