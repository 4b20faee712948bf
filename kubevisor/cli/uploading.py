"""``kubevisor image-upload``: virtctl's image-upload, through the apiserver's upload proxy.

``image-upload dv NAME --image-path FILE --size 2Gi`` creates a DataVolume with ``source.upload`` unless it
exists (``--no-create``: it must), waits until it is ``UploadReady``; ``image-upload pvc NAME ...`` does
the same with a claim annotated ``cdi.kubevirt.io/storage.upload.target``, waiting until it is Bound.
Then it asks for an ``UploadTokenRequest``, computes the file's sha256 and sends the file to
``/v1beta1/upload`` (``--uploadproxy-url``, default the kubeconfig's server) with ``Content-Digest``
(RFC 9530), streamed in 1 MiB reads with a progress bar, never read whole into memory. A 503 ("not ready":
the volume is not on its node yet) is retried until ``--wait-secs``. For a DataVolume it then waits until
it is ``Succeeded``. Exit code 0 on success, 1 with a message naming the object otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from kubevisor.client import Client, Config

__all__ = ["COMMAND", "add_parser", "run"]

COMMAND = "image-upload"
CHUNK = 1 << 20
POLL = 0.5
# kubevisor.api.upload.UPLOAD_TARGET and kubevisor.api.cdi's annotations, not imported: the API types load
# pydantic, which every CLI start would pay for.
UPLOAD_TARGET = "cdi.kubevirt.io/storage.upload.target"
POD_PHASE = "cdi.kubevirt.io/storage.pod.phase"


class UploadFailed(Exception):
    """The upload cannot go on; the message says why and what to do."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(COMMAND, help="upload a disk image into a DataVolume or a PersistentVolumeClaim")
    cmd.add_argument("kind", choices=["dv", "pvc"], help="dv (a DataVolume, source upload) or pvc")
    cmd.add_argument("name", help="name of the DataVolume or claim")
    cmd.add_argument("--image-path", required=True, type=Path, help="the image (raw, qcow2, .gz, .xz...)")
    cmd.add_argument("--size", default=None, help="size of the volume to create, e.g. 2Gi")
    cmd.add_argument("--storage-class", default=None, help="storage class of the volume to create")
    cmd.add_argument("--access-mode", default=None, help="access mode of the volume to create")
    cmd.add_argument(
        "--volume-mode", default=None, choices=["block", "filesystem"], help="volume mode of the volume"
    )
    cmd.add_argument("--no-create", action="store_true", help="the DataVolume or claim must exist")
    cmd.add_argument("--insecure", action="store_true", help="do not verify the upload proxy's certificate")
    cmd.add_argument("--uploadproxy-url", default=None, help="upload proxy URL (default: the API server)")
    cmd.add_argument("--wait-secs", type=float, default=300.0, help="seconds to wait for readiness")
    cmd.add_argument("-n", "--namespace", default="default")
    cmd.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)")


def run(args: argparse.Namespace, kubeconfig: str) -> int:
    from kubevisor.client import ClientError, KubeconfigError

    try:
        return asyncio.run(_run(args, kubeconfig))
    except (UploadFailed, ClientError, KubeconfigError, OSError, ValueError) as exc:
        print(f"kubevisor {COMMAND}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _what(args: argparse.Namespace) -> str:
    kind = "DataVolume" if args.kind == "dv" else "PersistentVolumeClaim"
    return f"{kind} {args.namespace}/{args.name}"


def _storage(args: argparse.Namespace) -> dict[str, Any]:
    if not args.size:
        raise UploadFailed(f"{_what(args)} does not exist: give --size (e.g. --size 2Gi) to create it")
    spec: dict[str, Any] = {"resources": {"requests": {"storage": args.size}}}
    if args.storage_class:
        spec["storageClassName"] = args.storage_class
    if args.access_mode:
        spec["accessModes"] = [args.access_mode]
    if args.volume_mode:
        spec["volumeMode"] = "Block" if args.volume_mode == "block" else "Filesystem"
    return spec


async def _ensure_target(client: Client, args: argparse.Namespace) -> None:
    from kubevisor.client import NotFoundError

    if args.kind == "dv":
        dvs = client.resource("cdi.kubevirt.io/v1beta1", "datavolumes")
        try:
            dv = await dvs.get(args.name, args.namespace)
        except NotFoundError:
            if args.no_create:
                raise UploadFailed(f"{_what(args)} does not exist (--no-create)") from None
            body = {
                "apiVersion": "cdi.kubevirt.io/v1beta1",
                "kind": "DataVolume",
                "metadata": {"name": args.name, "namespace": args.namespace},
                "spec": {"source": {"upload": {}}, "storage": _storage(args)},
            }
            await dvs.create(body)
            print(f"DataVolume {args.namespace}/{args.name} created")
            return
        if ((dv.get("spec") or {}).get("source") or {}).get("upload") is None:
            raise UploadFailed(f"{_what(args)} has no spec.source.upload: it is not an upload target")
        return
    pvcs = client.resource("v1", "persistentvolumeclaims")
    try:
        pvc = await pvcs.get(args.name, args.namespace)
    except NotFoundError:
        if args.no_create:
            raise UploadFailed(f"{_what(args)} does not exist (--no-create)") from None
        spec = _storage(args)
        spec.setdefault("accessModes", ["ReadWriteOnce"])
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": args.name,
                "namespace": args.namespace,
                "annotations": {UPLOAD_TARGET: ""},
            },
            "spec": spec,
        }
        await pvcs.create(body)
        print(f"PersistentVolumeClaim {args.namespace}/{args.name} created")
        return
    if UPLOAD_TARGET not in (pvc["metadata"].get("annotations") or {}):
        raise UploadFailed(
            f"{_what(args)} is not an upload target: annotate it {UPLOAD_TARGET}, or upload into a new one"
        )


async def _wait(
    client: Client, args: argparse.Namespace, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll the DataVolume or claim until ``check`` holds (``--wait-secs``)."""
    resource = (
        client.resource("cdi.kubevirt.io/v1beta1", "datavolumes")
        if args.kind == "dv"
        else client.resource("v1", "persistentvolumeclaims")
    )
    deadline = time.monotonic() + args.wait_secs
    while True:
        obj: dict[str, Any] = await resource.get(args.name, args.namespace)
        if check(obj):
            return obj
        if time.monotonic() > deadline:
            raise UploadFailed(f"{_what(args)} is not {what} after {args.wait_secs:.0f}s (--wait-secs)")
        await asyncio.sleep(POLL)


def _dv_phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "")


def _ready(args: argparse.Namespace) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        if args.kind == "pvc":
            annotations = obj["metadata"].get("annotations") or {}
            if annotations.get(POD_PHASE) == "Succeeded":
                raise UploadFailed(f"{_what(args)} already holds an uploaded image")
            return (obj.get("status") or {}).get("phase") == "Bound"
        phase = _dv_phase(obj)
        if phase == "Succeeded":
            raise UploadFailed(f"{_what(args)} already holds an uploaded image (phase Succeeded)")
        return phase in ("UploadReady", "Failed")  # Failed: a failed upload may be sent again

    return check


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")


async def _chunks(f: BinaryIO, progress: Progress, task: TaskID) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(f.read, CHUNK):
        progress.advance(task, len(chunk))
        yield chunk


async def _send(config: Config, args: argparse.Namespace, token: str, digest: str) -> dict[str, Any]:
    """POST the file to the upload proxy; retries 503 until ``--wait-secs``; the answer's JSON."""
    import httpx
    import orjson

    from kubevisor.cli.progress import transfer_progress
    from kubevisor.client import errors

    base = (args.uploadproxy_url or config.server).rstrip("/")
    url = f"{base}/v1beta1/upload"
    ctx: Any = False if args.insecure else config.ssl_context()
    size = args.image_path.stat().st_size
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Length": str(size),
        "Content-Digest": f"sha-256=:{digest}:",
        "Content-Type": "application/octet-stream",
    }
    deadline = time.monotonic() + args.wait_secs
    timeout = httpx.Timeout(3600.0, connect=10.0)
    print(f"Uploading data to {url}", file=sys.stderr)
    async with httpx.AsyncClient(verify=ctx, timeout=timeout, trust_env=False) as http:
        while True:
            with (
                transfer_progress() as progress,
                open(args.image_path, "rb") as f,  # noqa: ASYNC230 (reads go to a thread)
            ):
                task = progress.add_task("upload", total=size)
                try:
                    response = await http.post(
                        url,
                        content=_chunks(f, progress, task),
                        headers=headers,
                    )
                except httpx.TransportError as e:  # refused before the body was read: retried as a 503
                    if time.monotonic() > deadline:
                        raise UploadFailed(f"uploading to {url} failed: {e or type(e).__name__}") from e
                    await asyncio.sleep(2)
                    continue
            if response.status_code == 503 and time.monotonic() < deadline:
                await asyncio.sleep(float(response.headers.get("retry-after") or 2))
                continue
            if response.status_code >= 300:
                raise errors.from_response(response.status_code, response.content)
            result: dict[str, Any] = orjson.loads(response.content) if response.content else {}
            return result


async def _run(args: argparse.Namespace, kubeconfig: str) -> int:
    from kubevisor.client import Client
    from kubevisor.client import kubeconfig as kc

    path: Path = args.image_path
    if not await asyncio.to_thread(path.is_file):
        raise UploadFailed(f"--image-path {path}: no such file")
    config = kc.load(kubeconfig)
    async with Client(config) as client:
        await _ensure_target(client, args)
        await _wait(client, args, _ready(args), "ready for an upload")
        answer = await client.request(
            "POST",
            f"/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{args.namespace}/uploadtokenrequests",
            body={
                "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
                "kind": "UploadTokenRequest",
                "metadata": {"name": args.name, "namespace": args.namespace},
                "spec": {"pvcName": args.name},
            },
        )
        token = str((answer.get("status") or {}).get("token") or "")
        if not token:
            raise UploadFailed(f"the UploadTokenRequest for {_what(args)} returned no token")
        digest = await asyncio.to_thread(_sha256, path)
        result = await _send(config, args, token, digest)
        print("Uploading data completed successfully, waiting for processing to complete", file=sys.stderr)
        if args.kind == "dv":

            def done(obj: dict[str, Any]) -> bool:
                phase = _dv_phase(obj)
                if phase == "Failed":
                    conditions = (obj.get("status") or {}).get("conditions") or []
                    why = next((c.get("message") for c in conditions if c.get("type") == "Running"), "")
                    raise UploadFailed(f"{_what(args)} failed: {why}")
                return phase == "Succeeded"

            await _wait(client, args, done, "Succeeded")
    print(
        f"Uploading {path} completed successfully: {_what(args)}, {result.get('format', 'raw')} image"
        f"{' (' + str(result['compression']) + ')' if result.get('compression') else ''}, "
        f"virtual size {result.get('virtualSize', '?')} bytes"
    )
    return 0
