"""``kubevisor vmexport``: virtctl's vmexport, over kubevisor's VirtualMachineExport (export.kubevirt.io/v1).

- ``vmexport create NAME --pvc=CLAIM|--snapshot=SNAPSHOT|--vm=VM [--ttl 2h]``: creates the export.
- ``vmexport delete NAME``: deletes it (its generated token Secret goes with it).
- ``vmexport download NAME --output FILE [--volume V] [--format gzip|raw]``: waits until the export is
  Ready (``--wait-secs``), reads its token from the Secret in ``status.tokenSecretRef`` (RBAC: ``get`` on
  that Secret), and downloads the volume's URL from ``status.links.external`` with the token in the header
  ``x-kubevirt-export-token``, trusting the CA in the link's ``cert`` (``--insecure``: no check). With one
  of ``--pvc/--snapshot/--vm`` it creates the export first and deletes it afterwards unless ``--keep-vme``.
  ``--volume`` is needed when the export has several volumes. ``--format`` is ``gzip`` by default, as in
  virtctl (``disk.img.gz``); ``raw`` is the disk as the guest sees it.

The download goes to a temporary file beside ``FILE`` with a progress bar, and is verified before it is
renamed into place: the server reports the raw disk's size and sha256 (``x-kubevisor-disk-size``,
``x-kubevisor-disk-sha256``); a gzip download is decompressed on the fly for the check (the file stays
compressed). A mismatch, or a transfer cut short, leaves ``FILE`` untouched. A 503 (the export or its
volume's node not ready) is retried until ``--wait-secs``. Exit code 0 on success, 1 with a message naming
the object otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubevisor.client import Client, Config

__all__ = ["COMMAND", "add_parser", "run"]

COMMAND = "vmexport"
# kubevisor.api.export's names, not imported: the API types load pydantic, which every CLI start would pay.
API_VERSION = "export.kubevirt.io/v1"
PLURAL = "virtualmachineexports"
TOKEN_HEADER = "x-kubevirt-export-token"
DIGEST_HEADER = "x-kubevisor-disk-sha256"
SIZE_HEADER = "x-kubevisor-disk-size"
SOURCES = {
    "pvc": ("", "PersistentVolumeClaim"),
    "snapshot": ("snapshot.kubevirt.io", "VirtualMachineSnapshot"),
    "vm": ("kubevirt.io", "VirtualMachine"),
}
POLL = 0.5
CHUNK = 1 << 20


class ExportFailed(Exception):
    """The command cannot go on; the message says why and what to do."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(COMMAND, help="export a claim, a VM's disks or a VM snapshot (VirtualMachineExport)")
    verbs = cmd.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a VirtualMachineExport")
    delete = verbs.add_parser("delete", help="delete a VirtualMachineExport")
    download = verbs.add_parser("download", help="download a volume of a VirtualMachineExport")
    for verb in (create, delete, download):
        verb.add_argument("name", help="VirtualMachineExport name")
        verb.add_argument("-n", "--namespace", default="default")
        verb.add_argument(
            "--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)"
        )
    for verb in (create, download):
        group = verb.add_mutually_exclusive_group(required=verb is create)
        group.add_argument("--pvc", default=None, help="export this PersistentVolumeClaim")
        group.add_argument("--snapshot", default=None, help="export this VirtualMachineSnapshot")
        group.add_argument("--vm", default=None, help="export the volumes of this (stopped) VirtualMachine")
        verb.add_argument("--ttl", default=None, help="how long the export lives, e.g. 2h (default 2h)")
    download.add_argument("--output", required=True, type=Path, help="the file to write")
    download.add_argument("--volume", default=None, help="the volume to download (needed with several)")
    download.add_argument("--format", default="gzip", choices=["gzip", "raw"], help="gzip (default) or raw")
    download.add_argument("--keep-vme", action="store_true", help="keep an export this command created")
    download.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    download.add_argument("--wait-secs", type=float, default=120.0, help="seconds to wait for readiness")


def run(args: argparse.Namespace, kubeconfig: str) -> int:
    from kubevisor.client import ClientError, KubeconfigError

    if getattr(args, "output", None) is not None:
        args.output = Path(os.path.abspath(args.output))
    try:
        return asyncio.run(_run(args, kubeconfig))
    except (ExportFailed, ClientError, KubeconfigError, OSError, ValueError) as exc:
        print(f"kubevisor {COMMAND} {args.verb}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _what(args: argparse.Namespace) -> str:
    return f"VirtualMachineExport {args.namespace}/{args.name}"


def _source(args: argparse.Namespace) -> dict[str, str] | None:
    for flag, (group, kind) in SOURCES.items():
        name = getattr(args, flag, None)
        if name:
            return {"apiGroup": group, "kind": kind, "name": name}
    return None


async def _create(client: Client, args: argparse.Namespace, source: dict[str, str]) -> None:
    from kubevisor.client import AlreadyExistsError

    spec: dict[str, Any] = {"source": source}
    if args.ttl:
        spec["ttlDuration"] = args.ttl
    body = {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachineExport",
        "metadata": {"name": args.name, "namespace": args.namespace},
        "spec": spec,
    }
    try:
        await client.resource(API_VERSION, PLURAL).create(body)
    except AlreadyExistsError as e:
        raise ExportFailed(
            f"{_what(args)} already exists; delete it, or download from it without --pvc/--snapshot/--vm"
        ) from e
    print(f"VirtualMachineExport '{args.namespace}/{args.name}' created succesfully")


async def _wait_ready(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    exports = client.resource(API_VERSION, PLURAL)
    deadline = time.monotonic() + args.wait_secs
    while True:
        export: dict[str, Any] = await exports.get(args.name, args.namespace)
        status = export.get("status") or {}
        phase = status.get("phase")
        if phase == "Ready" and status.get("links"):
            return export
        if phase == "Skipped":
            raise ExportFailed(f"{_what(args)} was skipped: its source has no volumes to export")
        if time.monotonic() > deadline:
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
            )
            raise ExportFailed(
                f"{_what(args)} is not Ready after {args.wait_secs:.0f}s (--wait-secs): "
                f"{phase or 'no status yet'}{': ' + ready['message'] if ready.get('message') else ''}"
            )
        await asyncio.sleep(POLL)


def _pick(export: dict[str, Any], args: argparse.Namespace) -> tuple[str, str, str]:
    """(volume, url, CA PEM) to download."""
    link = ((export.get("status") or {}).get("links") or {}).get("external") or {}
    volumes = link.get("volumes") or []
    if args.volume:
        chosen = next((v for v in volumes if v.get("name") == args.volume), None)
        if chosen is None:
            names = ", ".join(str(v.get("name")) for v in volumes) or "none"
            raise ExportFailed(f"{_what(args)} has no volume {args.volume} (--volume); it has: {names}")
    elif len(volumes) == 1:
        chosen = volumes[0]
    else:
        names = ", ".join(str(v.get("name")) for v in volumes) or "none"
        raise ExportFailed(f"{_what(args)} has several volumes ({names}): choose one with --volume")
    url = next((f.get("url") for f in chosen.get("formats") or [] if f.get("format") == args.format), None)
    if not url:
        raise ExportFailed(f"{_what(args)}: volume {chosen.get('name')} is not offered as {args.format}")
    return str(chosen.get("name")), str(url), str(link.get("cert") or "")


async def _token(client: Client, export: dict[str, Any], args: argparse.Namespace) -> str:
    ref = (export.get("status") or {}).get("tokenSecretRef") or (export.get("spec") or {}).get(
        "tokenSecretRef"
    )
    if not ref:
        raise ExportFailed(f"{_what(args)} names no token Secret (status.tokenSecretRef) yet")
    secret = await client.resource("v1", "secrets").get(str(ref), args.namespace)
    encoded = (secret.get("data") or {}).get("token")
    if not encoded:
        raise ExportFailed(f"Secret {args.namespace}/{ref} has no 'token' key")
    return base64.b64decode(encoded).decode()


class _Verifier:
    """sha256 and size of the raw disk, from the bytes received (decompressed for gzip)."""

    def __init__(self, gzipped: bool) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.decompressor = zlib.decompressobj(31) if gzipped else None

    def feed(self, data: bytes) -> None:
        if self.decompressor is not None:
            data = self.decompressor.decompress(data)
        self.digest.update(data)
        self.size += len(data)

    def finish(self) -> None:
        if self.decompressor is not None:
            rest = self.decompressor.flush()
            self.digest.update(rest)
            self.size += len(rest)
            if not self.decompressor.eof:
                raise ExportFailed("the gzip stream ended early (the transfer was cut short)")


async def _fetch(config: Config, args: argparse.Namespace, url: str, cert: str, token: str) -> None:
    """GET ``url`` into a temporary file beside ``--output``, verify it, rename it into place."""
    import ssl

    import httpx

    from kubevisor.cli.progress import transfer_progress
    from kubevisor.client import errors

    verify: Any
    if args.insecure:
        verify = False
    elif cert:
        verify = ssl.create_default_context(cadata=cert)
    else:
        verify = config.ssl_context()
    output: Path = args.output
    directory = output.parent  # absolute: see run()
    deadline = time.monotonic() + args.wait_secs
    timeout = httpx.Timeout(3600.0, connect=10.0)
    print(f"Downloading file: {url}", file=sys.stderr)
    async with httpx.AsyncClient(verify=verify, timeout=timeout, trust_env=False) as http:
        while True:
            async with http.stream("GET", url, headers={TOKEN_HEADER: token}) as response:
                if response.status_code == 503 and time.monotonic() < deadline:
                    await asyncio.sleep(float(response.headers.get("retry-after") or 2))
                    continue
                if response.status_code >= 300:
                    raise errors.from_response(response.status_code, await response.aread())
                want_digest = response.headers.get(DIGEST_HEADER)
                want_size = response.headers.get(SIZE_HEADER)
                length = response.headers.get("content-length")
                verifier = _Verifier(args.format == "gzip")
                fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=directory)
                part = Path(name)
                try:
                    with os.fdopen(fd, "wb") as f, transfer_progress() as progress:
                        task = progress.add_task("download", total=int(length) if length else None)
                        async for chunk in response.aiter_bytes(CHUNK):
                            await asyncio.to_thread(f.write, chunk)
                            await asyncio.to_thread(verifier.feed, chunk)
                            progress.advance(task, len(chunk))
                        verifier.finish()
                        await asyncio.to_thread(f.flush)
                        await asyncio.to_thread(os.fsync, f.fileno())
                    if want_size is not None and int(want_size) != verifier.size:
                        raise ExportFailed(
                            f"the download has {verifier.size} bytes of disk; the server announced "
                            f"{want_size}"
                        )
                    if want_digest is not None and want_digest != verifier.digest.hexdigest():
                        raise ExportFailed(
                            f"the download's sha256 {verifier.digest.hexdigest()} is not the server's "
                            f"{want_digest}; download it again"
                        )
                    os.replace(part, output)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(part)
                    raise
                checked = "sha256 verified" if want_digest else "size verified" if want_size else "unverified"
                print(f"Download finished succesfully: {output} ({verifier.size} bytes of disk, {checked})")
                return


async def _run(args: argparse.Namespace, kubeconfig: str) -> int:
    from kubevisor.client import Client, NotFoundError
    from kubevisor.client import kubeconfig as kc

    config = kc.load(kubeconfig)
    async with Client(config) as client:
        exports = client.resource(API_VERSION, PLURAL)
        if args.verb == "delete":
            try:
                await exports.delete(args.name, args.namespace)
            except NotFoundError as e:
                raise ExportFailed(f"{_what(args)} does not exist") from e
            print(f"VirtualMachineExport '{args.namespace}/{args.name}' deleted succesfully")
            return 0
        source = _source(args)
        if args.verb == "create":
            assert source is not None
            await _create(client, args, source)
            return 0
        created = False
        if source is not None:
            await _create(client, args, source)
            created = True
        try:
            export = await _wait_ready(client, args)
            _, url, cert = _pick(export, args)
            token = await _token(client, export, args)
            await _fetch(config, args, url, cert, token)
        finally:
            if created and not args.keep_vme:
                with contextlib.suppress(NotFoundError):
                    await exports.delete(args.name, args.namespace)
                print(f"VirtualMachineExport '{args.namespace}/{args.name}' deleted succesfully")
    return 0
