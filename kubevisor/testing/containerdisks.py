"""libregistry: containerDisk images in a real OCI registry on loopback, for tests of registry pulls.

Why it exists: a node pulls containerDisks with the OCI distribution API
(:mod:`kubevisor.storage.registry`), and the honest test of that is a real registry. Debian ships one:
``docker-registry`` (the CNCF distribution registry); ``skopeo`` pushes images into it. There is no
Docker engine here to build images, so images are written in Python as OCI image layouts
(https://github.com/opencontainers/image-spec/blob/main/image-layout.md): one tar layer per list of
:class:`Entry`, a config, a manifest and ``index.json``; :func:`push` copies a layout into the registry.

- :func:`disk_layout`: the KubeVirt containerDisk shape, ``/disk/disk.img`` (e.g. the test guest's disk).
- :func:`oci_layout`: any layers, including broken ones (symlinks, ``..``, no ``/disk``) for tests of
  what a node must refuse.
- :class:`LocalRegistry`: ``docker-registry`` on ``127.0.0.1:<free port>`` with its storage in a temporary
  directory; :meth:`LocalRegistry.blob_file` finds a blob's file (to corrupt it on purpose). With
  ``tls`` (a certificate and key for 127.0.0.1) it speaks HTTPS, and with ``logins`` it wants HTTP basic
  auth checked against an htpasswd file of bcrypt hashes (the only kind it accepts; written with the
  ``bcrypt`` package): the real thing for registry logins and CAs.
- :class:`LayoutRegistry`: a fake registry at httpx's transport seam serving a layout, for what the real
  one does not do without more machinery (logins, token services).

Both tools come from Debian (``make install``); :class:`ToolMissing` says so when one is absent.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

__all__ = [
    "REGISTRY_BINARY",
    "SKOPEO",
    "Entry",
    "LayoutRegistry",
    "LocalRegistry",
    "ToolMissing",
    "disk_layout",
    "oci_layout",
    "push",
    "require",
    "running_registry",
]

REGISTRY_BINARY = "docker-registry"
SKOPEO = "skopeo"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class ToolMissing(AssertionError):
    """A tool these tests need is not installed; the message says how to install it."""


def require(tool: str) -> str:
    """The path of ``tool`` (``docker-registry`` or ``skopeo``), or :class:`ToolMissing`."""
    found = shutil.which(tool)
    if found is None:
        package = "docker-registry" if tool == REGISTRY_BINARY else tool
        raise ToolMissing(
            f"{tool} is not installed: containerDisk registry tests push images into a real registry. "
            f"Run `make install` (it installs the Debian package {package})."
        )
    return found


@dataclass(frozen=True)
class Entry:
    """One member of a layer tar."""

    name: str
    """Path in the image, e.g. ``disk/disk.img`` (written as given: tests may use ``../x``)."""
    data: bytes | Path | None = None
    """Content of a regular file (bytes, or a file to copy); None with no link: a directory."""
    symlink: str | None = None
    """Target of a symbolic link."""
    hardlink: str | None = None
    """Target of a hard link (a member name)."""
    mode: int = 0o644


def _tar(entries: Sequence[Entry], out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.mode
            info.mtime = 0
            info.uid = info.gid = 107  # KubeVirt's qemu user owns /disk
            if entry.symlink is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.symlink
                tar.addfile(info)
            elif entry.hardlink is not None:
                info.type, info.linkname = tarfile.LNKTYPE, entry.hardlink
                tar.addfile(info)
            elif entry.data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(entry.data, bytes):
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                info.size = entry.data.stat().st_size
                with open(entry.data, "rb") as source:
                    tar.addfile(info, source)


def _digest_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


def _put_blob(layout: Path, source: Path) -> tuple[str, int]:
    """Move ``source`` into ``blobs/sha256/``; its (digest, size)."""
    digest = _digest_file(source)
    target = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    size = source.stat().st_size
    source.replace(target)
    return digest, size


def _put_json(layout: Path, value: object) -> tuple[str, int]:
    data = json.dumps(value, separators=(",", ":")).encode()
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return digest, len(data)


def _image(layout: Path, layers: Sequence[Sequence[Entry]], *, compress: bool, arch: str) -> tuple[str, int]:
    """Write the layers, config and manifest of one image; the manifest's (digest, size)."""
    descriptors, diff_ids = [], []
    for entries in layers:
        raw = layout / "blobs" / ".layer.tar"
        _tar(entries, raw)
        diff_ids.append(_digest_file(raw))
        if compress:
            packed = layout / "blobs" / ".layer.tar.gz"
            with open(raw, "rb") as source, gzip.open(packed, "wb", compresslevel=1) as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
            raw.unlink()
            raw = packed
        digest, size = _put_blob(layout, raw)
        media = OCI_LAYER + ("+gzip" if compress else "")
        descriptors.append({"mediaType": media, "digest": digest, "size": size})
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_digest, config_size = _put_json(layout, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }
    return _put_json(layout, manifest)


def oci_layout(
    directory: Path,
    layers: Sequence[Sequence[Entry]],
    *,
    tag: str = "latest",
    compress: bool = True,
    other_platforms: Sequence[tuple[str, Sequence[Sequence[Entry]]]] = (),
) -> str:
    """Write an OCI image layout holding one image (``tag``) made of ``layers`` (base first); return the
    digest of its manifest. With ``other_platforms`` ((architecture, layers), ...) the tag names an
    image index of the linux/amd64 image and those (push it with ``all_images=True``); the index's digest
    is returned."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    digest, size = _image(directory, layers, compress=compress, arch="amd64")
    media = OCI_MANIFEST
    if other_platforms:
        manifests = [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "platform": _platform("amd64")}
        ]
        for arch, other in other_platforms:
            d, s = _image(directory, other, compress=compress, arch=arch)
            manifests.append({"mediaType": OCI_MANIFEST, "digest": d, "size": s, "platform": _platform(arch)})
        digest, size = _put_json(
            directory, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        )
        media = OCI_INDEX
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": media,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return digest


def _platform(arch: str) -> dict[str, str]:
    return {"os": "linux", "architecture": arch}


def disk_layout(directory: Path, disk: Path, *, name: str = "disk.img", tag: str = "latest") -> str:
    """An OCI layout of a KubeVirt containerDisk: one layer with ``disk/<name>`` (a copy of ``disk``)."""
    return oci_layout(directory, [[Entry("disk"), Entry(f"disk/{name}", disk, mode=0o444)]], tag=tag)


def push(
    layout: Path,
    reference: str,
    *,
    tag: str = "latest",
    all_images: bool = False,
    login: tuple[str, str] | None = None,
) -> None:
    """Copy the image ``tag`` of an OCI layout to ``reference`` (``host:port/repo:tag``; HTTP, or HTTPS
    without verifying the certificate), with ``login`` (user, password) if the registry wants one."""
    argv = [
        require(SKOPEO), "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
        *(["--all"] if all_images else []),
        *([f"--dest-creds={login[0]}:{login[1]}"] if login else []),
        f"oci:{layout}:{tag}", f"docker://{reference}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(
            f"skopeo copy to {reference} failed (exit {done.returncode}): {done.stderr.strip()}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: kubevisor-test-registry
"""
TLS_CONFIG = """  tls:
    certificate: {certificate}
    key: {key}
"""
AUTH_CONFIG = """auth:
  htpasswd:
    realm: kubevisor-test-registry
    path: {htpasswd}
"""


def htpasswd_line(user: str, password: str) -> str:
    """One htpasswd entry with a bcrypt hash (what docker-registry's htpasswd auth accepts)."""
    try:
        import bcrypt
    except ImportError as e:
        raise ToolMissing(
            "the Python package bcrypt is not installed: the registry login tests write an htpasswd file. "
            "Run `make install` (it installs the dev dependencies)."
        ) from e
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{user}:{hashed}\n"


class LocalRegistry:
    """``docker-registry`` serving plain HTTP on ``127.0.0.1:<port>`` from a temporary directory (HTTPS with
    ``tls``: paths of a PEM certificate and key valid for 127.0.0.1; basic-auth ``logins``: (user,
    password) pairs)."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: tuple[Path, Path] | None = None,
        logins: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.directory = directory
        self.storage = directory / "storage"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = tls
        self.logins = tuple(logins)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: prefix of image references."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        binary = require(REGISTRY_BINARY)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        config = self.directory / "config.yml"
        text = CONFIG.format(storage=self.storage, port=self.port)
        if self.tls:
            text += TLS_CONFIG.format(certificate=self.tls[0], key=self.tls[1])
        if self.logins:
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(user, password) for user, password in self.logins))
            text += AUTH_CONFIG.format(htpasswd=htpasswd)
        config.write_text(text)
        log = open(self.directory / "registry.log", "ab")  # noqa: SIM115 (the child keeps it)
        with log:
            self.process = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{REGISTRY_BINARY} exited: {self.log()}")
            try:
                # 200, or 401 when it wants a login: either way it serves
                answer = httpx.get(f"{self.scheme}://{self.host}/v2/", timeout=1, verify=False)
                if answer.status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{REGISTRY_BINARY} did not answer within {timeout:g} s: {self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the registry (its storage stays: :meth:`start` serves the same images again)."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def log(self) -> str:
        try:
            return (self.directory / "registry.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def blob_file(self, digest: str) -> Path:
        """Where the registry's filesystem driver keeps blob ``digest`` (it serves it without checking)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def running_registry(
    *, tls: tuple[Path, Path] | None = None, logins: Sequence[tuple[str, str]] = ()
) -> Iterator[LocalRegistry]:
    """A :class:`LocalRegistry` in a new temporary directory, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="kv-registry-"))
    try:
        with LocalRegistry(directory, tls=tls, logins=logins) as registry:
            yield registry
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class LayoutRegistry(httpx.AsyncBaseTransport):
    """A fake registry at the httpx transport seam, serving an OCI layout's blobs by digest and its
    ``index.json`` tags: for what the real one cannot do here (logins, token services). With ``login`` it
    answers 401 with a ``Bearer`` challenge (``token_realm`` set) or a ``Basic`` one."""

    def __init__(
        self,
        layout: Path,
        *,
        login: tuple[str, str] | None = None,
        token_realm: str | None = None,
    ) -> None:
        self.layout = layout
        self.login = login
        self.token_realm = token_realm
        self.token = "kubevisor-test-token"
        self.requests: list[httpx.Request] = []
        """Every request received, in order."""

    def _basic_ok(self, request: httpx.Request) -> bool:
        if self.login is None:
            return True
        expected = base64.b64encode(f"{self.login[0]}:{self.login[1]}".encode()).decode()
        return bool(request.headers.get("Authorization") == f"Basic {expected}")

    def _authorized(self, request: httpx.Request) -> bool:
        if self.login is None:
            return True
        if self.token_realm is not None:
            return bool(request.headers.get("Authorization") == f"Bearer {self.token}")
        return self._basic_ok(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = request.url
        if self.token_realm is not None and str(url).startswith(self.token_realm):
            if not self._basic_ok(request):
                return httpx.Response(401)
            return httpx.Response(200, json={"token": self.token})
        if not self._authorized(request):
            if self.token_realm is not None:
                challenge = f'Bearer realm="{self.token_realm}",service="fake",scope="repository:x:pull"'
            else:
                challenge = 'Basic realm="fake"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        parts = url.path.split("/")
        if len(parts) < 5 or parts[1] != "v2" or parts[-2] not in ("manifests", "blobs"):
            return httpx.Response(404)
        reference = parts[-1]
        if not reference.startswith("sha256:"):
            index = json.loads((self.layout / "index.json").read_text())
            tagged = [
                m
                for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == reference
            ]
            if not tagged:
                return httpx.Response(404)
            reference = tagged[0]["digest"]
        blob = self.layout / "blobs" / "sha256" / reference.removeprefix("sha256:")
        if not blob.is_file():
            return httpx.Response(404)
        data = b"" if request.method == "HEAD" else blob.read_bytes()
        headers = {"Docker-Content-Digest": reference}
        if parts[-2] == "manifests":
            headers["Content-Type"] = json.loads(blob.read_bytes()).get("mediaType", OCI_MANIFEST)
        return httpx.Response(200, headers=headers, content=data)
