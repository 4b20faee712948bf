"""Pulling containerDisk images from OCI registries into a node's image cache.

Why it exists: a KubeVirt ``containerDisk`` is a disk image shipped in a container image (the first
regular file under ``/disk/``). KubeVirt lets the kubelet pull it and mounts it into virt-launcher; a
kubevisor node has no container runtime in that path, so the agent pulls the image itself with the OCI
distribution API (https://github.com/opencontainers/distribution-spec/blob/main/spec.md) and keeps only
the disk file.

What a pull does (:meth:`ImageCache.pull`):

1. Parse the reference (:class:`Reference`; ``docker://`` prefix allowed; names without a registry host
   mean Docker Hub, ``library/`` added for one-component names, tag ``latest`` by default).
2. A digest reference (``repo@sha256:...``) that is in the cache is served without any network. A tag is
   re-resolved on each pull (``HEAD`` of the manifest: one cheap request) unless the pull policy is
   ``IfNotPresent`` or ``Never`` and the cache remembers what the tag pointed to.
3. Authenticate as the registry asks: ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` (the
   token flow, with the credentials as basic auth on the token request when there are any) or ``Basic``
   (the credentials themselves).
4. Fetch the manifest; for an OCI index or Docker manifest list pick ``linux/amd64``; Docker schema2 and
   OCI image manifests are understood, schema1 is not.
5. Download every layer (gzip or uncompressed tar), verifying each blob's and each manifest's sha256
   digest and size; then extract the disk: in layer order with whiteouts applied, the first regular file
   (by name) directly under ``/disk/`` (or the exact ``path`` asked for, which must lie under ``/disk/``).
   Unsafe layers are refused: ``..`` in a name, a symbolic or hard link on the way to the disk.
6. Check the disk with ``qemu-img info``: qcow2 (without a backing or external data file: those would let
   an image read the node's files) or raw; the format is recorded.

:func:`resolve_digest` asks only what a tag points to now (the ``HEAD`` of step 2, with the same
authentication, transport and errors) and downloads nothing: a DataImportCron's poll.

Cache layout (one per node, ``DATA/images/cache``)::

    <manifest digest>/disk.img     the disk (read-only base of every VM's overlay)
    <manifest digest>/disk.json    what was pulled: reference, format, size; written last (its presence
                                   means the disk is complete)
    tags/<hash of reference>       the digest a tag pointed to when last pulled (for IfNotPresent/Never)
    .tmp/                          downloads in progress, renamed into place atomically (what a crash
                                   left there is removed a day later)

``<manifest digest>`` is the digest the reference resolved to (an index's digest for multi-platform
images). Concurrent pulls of one digest by one :class:`ImageCache` are serialized by a lock: the second
finds the first's result in the cache.

Transport: plain HTTP for loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``) and for the
registries in ``insecure_registries`` (``HOST`` or ``HOST:PORT``); HTTPS verified against the system's CA
bundle otherwise. A pull given a ``ca_bundle`` (a DataVolume's ``certConfigMap``) always uses HTTPS,
verified against the system's CAs and that bundle.

Errors (every message names the image)::

    RegistryError                    a pull failed
    ├── InvalidReference             the reference does not parse (permanent)
    ├── ImageUnavailable             may work later: retry with backoff
    │   ├── ManifestUnknown          no such repository, tag or digest (404)
    │   ├── Unauthorized             the registry refused the credentials, or wants some (401/403)
    │   ├── DigestMismatch           a manifest or blob does not match its digest or size
    │   ├── NotPresent               pull policy Never and the image is not cached
    │   ├── Untrusted                the registry's TLS certificate does not verify
    │   └── RegistryUnreachable      connection failure, timeout, 429 or 5xx
    └── BadImage                     the image is no usable containerDisk (permanent): no disk under
                                     /disk, unsafe layer paths, unsupported manifest or layer types,
                                     a disk that is neither qcow2 nor raw
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import hashlib
import json
import os
import re
import shutil
import ssl
import tarfile
import tempfile
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import httpx

from kubevisor.virt import qemuimg

__all__ = [
    "DEFAULT_DISK_DIR",
    "BadImage",
    "Credentials",
    "DigestMismatch",
    "ImageCache",
    "ImageUnavailable",
    "InvalidReference",
    "ManifestUnknown",
    "NotPresent",
    "PullPolicy",
    "Pulled",
    "Reference",
    "RegistryError",
    "RegistryUnreachable",
    "Unauthorized",
    "Untrusted",
    "credentials_from_docker_config",
    "extract_disk",
    "resolve_digest",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_DISK_DIR = "disk"
"""Where a containerDisk keeps its disk image (KubeVirt: ``/disk/``)."""

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
PLATFORM = ("linux", "amd64")
CHUNK = 1024 * 1024
STALE_DOWNLOAD_SECONDS = 24 * 3600

PullPolicy = Literal["Always", "IfNotPresent", "Never"]

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?)(?::[0-9]+)?$")


class RegistryError(Exception):
    """A pull failed; the message names the image and says what to do."""


class InvalidReference(RegistryError):
    """The image reference does not parse."""


class ImageUnavailable(RegistryError):
    """The image cannot be pulled now; it may work later (retry with backoff)."""


class ManifestUnknown(ImageUnavailable):
    """The registry has no such repository, tag or digest."""


class Unauthorized(ImageUnavailable):
    """The registry refused access (no or wrong credentials)."""


class DigestMismatch(ImageUnavailable):
    """Downloaded content does not match its digest or size."""


class NotPresent(ImageUnavailable):
    """Pull policy ``Never`` and the image is not in the cache."""


class Untrusted(ImageUnavailable):
    """The registry's TLS certificate does not verify against the trusted CAs."""


class RegistryUnreachable(ImageUnavailable):
    """The registry could not be reached or answered with a server error."""


class BadImage(RegistryError):
    """The image is not a usable containerDisk."""


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``[registry/]repository[:tag][@digest]``."""

    registry: str
    """``host[:port]``; ``docker.io`` for Docker Hub."""
    repository: str
    """e.g. ``kubevirt/cirros-container-disk-demo`` (``library/x`` for Docker Hub's ``x``)."""
    tag: str | None = None
    """The tag (``latest`` when neither tag nor digest is given)."""
    digest: str | None = None
    """``sha256:<hex>``: when set, the tag is informative only."""

    @classmethod
    def parse(cls, text: str) -> Reference:
        raw = text.strip().removeprefix("docker://")
        name, _, digest = raw.partition("@")
        if digest and not _DIGEST.match(digest):
            raise InvalidReference(f"image {text!r}: digest {digest!r} is not sha256:<64 hex digits>")
        registry = DOCKER_HUB
        first, slash, rest = name.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, name = first, rest
            if not _HOST.match(registry):
                raise InvalidReference(f"image {text!r}: {registry!r} is not a registry host[:port]")
        tag: str | None = None
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = name.rsplit(":", 1)
            if not _TAG.match(tag):
                raise InvalidReference(f"image {text!r}: tag {tag!r} is not a valid tag")
        if registry in (DOCKER_HUB, "index.docker.io"):
            registry = DOCKER_HUB
            if "/" not in name:
                name = f"library/{name}"
        if not _REPOSITORY.match(name):
            raise InvalidReference(
                f"image {text!r}: repository {name!r} must be lowercase path components "
                "(letters, digits, '.', '_', '-') separated by '/'"
            )
        if tag is None and not digest:
            tag = "latest"
        return cls(registry, name, tag, digest or None)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def host(self) -> str:
        """The host without the port (brackets of an IPv6 literal removed)."""
        if self.registry.startswith("["):
            return self.registry[1 : self.registry.index("]")]
        return self.registry.rsplit(":", 1)[0]


@dataclass(frozen=True)
class Credentials:
    """A registry login (from an imagePullSecret)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Pulled:
    """A containerDisk's disk in the node's cache."""

    reference: str
    """The reference as asked for."""
    digest: str
    """The manifest digest it resolved to (the cache key)."""
    path: Path
    """The disk image (never write it: VMs use it as their overlay's backing file)."""
    format: Literal["qcow2", "raw"]
    """The disk's format, as qemu-img reported it."""
    cached: bool
    """True when no blob had to be downloaded."""


def _normalize_config_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://host:5000/x`` -> ``host:5000``."""
    key = key.strip()
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    key = key.split("/", 1)[0]
    if key in ("index.docker.io", DOCKER_HUB_API):
        return DOCKER_HUB
    return key


def credentials_from_docker_config(data: Mapping[str, str], registry: str) -> Credentials | None:
    """The login for ``registry`` in an imagePullSecret's decoded data (``.dockerconfigjson`` of type
    ``kubernetes.io/dockerconfigjson``, or the legacy ``.dockercfg``); None when it has none.

    Raises :class:`ValueError` when the data is malformed."""
    if ".dockerconfigjson" in data:
        key = ".dockerconfigjson"
    elif ".dockercfg" in data:
        key = ".dockercfg"
    else:
        raise ValueError("has neither a .dockerconfigjson nor a .dockercfg key")
    try:
        parsed = json.loads(data[key])
    except json.JSONDecodeError as e:
        raise ValueError(f"{key} is not JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise ValueError(f"{key} is not a JSON object")
    auths = parsed.get("auths", {}) if key == ".dockerconfigjson" else parsed
    if not isinstance(auths, dict):
        raise ValueError(f"{key}: auths is not an object")
    for server, entry in auths.items():
        if _normalize_config_key(str(server)) != registry or not isinstance(entry, dict):
            continue
        username, password = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as e:
                raise ValueError(f"{key}: auth of {server!r} is not base64 of user:password") from e
            username, sep, password = decoded.partition(":")
            if not sep:
                raise ValueError(f"{key}: auth of {server!r} is not base64 of user:password")
        if isinstance(username, str) and isinstance(password, str):
            return Credentials(username, password)
    return None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# --- the extraction (pure file work, no network) -------------------------------------------------------


def _member_name(name: str, image: str) -> str:
    """A layer member's path without ``./`` or ``/``; refuses ``..`` (path traversal)."""
    cleaned = name
    while cleaned.startswith(("./", "/")):
        cleaned = cleaned[1:] if cleaned.startswith("/") else cleaned[2:]
    parts = [p for p in cleaned.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadImage(f"image {image}: layer member {name!r} leaves the image's root (path traversal)")
    return "/".join(parts)


def extract_disk(layers: list[Path], dest: Path, *, image: str, path: str | None = None) -> str:
    """Write the containerDisk's disk found in ``layers`` (tar files, gzip or not, base layer first) to
    ``dest``; return its path in the image.

    ``path`` (e.g. ``/disk/rhel.qcow2``) names the file; default: the first regular file, by name,
    directly under ``/disk/``. Whiteouts (``.wh.<name>``, ``.wh..wh..opq``) of later layers apply."""
    if path is not None:
        wanted = _member_name(path, image)
        directory, _, basename = wanted.rpartition("/")
        if directory.split("/")[0] != DEFAULT_DISK_DIR or not basename:
            raise BadImage(f"image {image}: path {path!r} is not a file under /{DEFAULT_DISK_DIR}/")
    else:
        directory, basename = DEFAULT_DISK_DIR, ""
    ancestors = {"/".join(directory.split("/")[: i + 1]) for i in range(directory.count("/") + 1)}
    work = dest.parent / f".{dest.name}.files"
    work.mkdir()
    found: dict[str, Path] = {}
    try:
        for number, layer in enumerate(layers):
            try:
                _extract_layer(
                    layer,
                    number,
                    work,
                    found=found,
                    directory=directory,
                    basename=basename,
                    ancestors=ancestors,
                    image=image,
                )
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
                raise BadImage(f"image {image}: layer {number} is not a readable tar archive: {e}") from e
        if not found:
            where = f"/{directory}/{basename}" if basename else f"/{directory}/"
            raise BadImage(
                f"image {image}: no disk image at {where}; a containerDisk image holds its disk (qcow2 or "
                f"raw) as a regular file under /{DEFAULT_DISK_DIR}/"
            )
        chosen = sorted(found)[0]
        os.replace(found[chosen], dest)
        return f"/{directory}/{chosen}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract_layer(
    layer: Path,
    number: int,
    work: Path,
    *,
    found: dict[str, Path],
    directory: str,
    basename: str,
    ancestors: set[str],
    image: str,
) -> None:
    with tarfile.open(layer, mode="r|*") as tar:
        for member in tar:
            name = _member_name(member.name, image)
            parent, _, leaf = name.rpartition("/")
            if name in ancestors:
                if member.issym() or member.islnk():
                    raise BadImage(f"image {image}: /{name} is a link; it must be a directory")
                continue
            if leaf.startswith(".wh."):  # whiteouts hide what earlier layers had
                hidden = f"{parent}/{leaf.removeprefix('.wh.')}".strip("/")
                if (leaf == ".wh..wh..opq" and parent in ancestors) or hidden in ancestors:
                    _forget(found, list(found))
                elif parent == directory:
                    _forget(found, [leaf.removeprefix(".wh.")])
                continue
            if parent != directory or (basename and leaf != basename):
                continue
            if member.issym() or member.islnk():
                raise BadImage(
                    f"image {image}: /{name} is a link; a containerDisk's disk must be a regular file"
                )
            if not member.isreg():  # a directory, device or fifo replaces a file of that name
                _forget(found, [leaf])
                continue
            source = tar.extractfile(member)
            assert source is not None
            target = work / f"{number}-{member.offset}"
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            _forget(found, [leaf])
            found[leaf] = target


def _forget(found: dict[str, Path], names: list[str]) -> None:
    for name in names:
        if name in found:
            found.pop(name).unlink(missing_ok=True)


# --- the cache ----------------------------------------------------------------------------------------


class ImageCache:
    """One node's cache of pulled containerDisks (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        insecure_registries: tuple[str, ...] = (),
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.insecure_registries = tuple(insecure_registries)
        self.transport = transport
        """Replaces the network (tests)."""
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}

    # paths

    def _disk_file(self, digest: str, path: str | None) -> Path:
        directory = self.root / digest
        if path is None:
            return directory / "disk.img"
        return directory / f"disk-{hashlib.sha256(path.encode()).hexdigest()[:16]}.img"

    def _tag_file(self, ref: Reference) -> Path:
        key = f"{ref.registry}/{ref.repository}:{ref.tag}"
        return self.root / "tags" / hashlib.sha256(key.encode()).hexdigest()

    def cached(self, reference: str, digest: str, path: str | None = None) -> Pulled | None:
        """The disk of ``digest`` if it is complete in the cache."""
        disk = self._disk_file(digest, path)
        try:
            meta = json.loads(disk.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None
        if not disk.is_file() or meta.get("format") not in ("qcow2", "raw"):
            return None
        return Pulled(reference, digest, disk, meta["format"], cached=True)

    def _remembered(self, ref: Reference) -> str | None:
        try:
            digest = self._tag_file(ref).read_text().strip()
        except OSError:
            return None
        return digest if _DIGEST.match(digest) else None

    def _remember(self, ref: Reference, digest: str) -> None:
        if ref.digest or not ref.tag:
            return
        target = self._tag_file(ref)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w") as out:
            out.write(digest + "\n")
        os.replace(tmp, target)

    def scheme(self, ref: Reference, *, tls: bool = False) -> str:
        """``http`` for loopback and insecure registries, else (or with ``tls``) ``https``."""
        return _scheme(ref, self.insecure_registries, tls=tls)

    # pulling

    async def pull(
        self,
        image: str,
        *,
        credentials: Credentials | None = None,
        policy: PullPolicy = "Always",
        path: str | None = None,
        ca_bundle: str | None = None,
    ) -> Pulled:
        """The disk of ``image`` in the cache, pulled if needed (see the module docstring).
        ``ca_bundle``: PEM CA certificates to trust besides the system's; the registry is then spoken to
        over HTTPS even on loopback."""
        ref = Reference.parse(image)
        if ref.digest:
            hit = self.cached(image, ref.digest, path)
            if hit is not None:
                return hit
        elif policy in ("IfNotPresent", "Never"):
            known = self._remembered(ref)
            hit = self.cached(image, known, path) if known else None
            if hit is not None:
                return hit
        if policy == "Never":
            raise NotPresent(
                f"image {image}: not in this node's image cache and imagePullPolicy is Never; "
                "pull it once with another policy, or change the policy"
            )
        async with self._session(ref, image, credentials, ca_bundle) as session:
            digest = ref.digest or await session.resolve()
            hit = self.cached(image, digest, path)
            if hit is None:
                lock = self._locks.setdefault(digest, asyncio.Lock())
                async with lock:
                    hit = self.cached(image, digest, path)
                    if hit is None:
                        hit = await self._download(session, image, digest, path)
        self._remember(ref, digest)
        return hit

    @asynccontextmanager
    async def _session(
        self, ref: Reference, image: str, credentials: Credentials | None, ca_bundle: str | None = None
    ) -> AsyncIterator[_Session]:
        async with _connect(
            ref,
            image,
            credentials,
            ca_bundle,
            insecure_registries=self.insecure_registries,
            transport=self.transport,
            timeout=self.timeout,
        ) as session:
            yield session

    async def _download(self, session: _Session, image: str, digest: str, path: str | None) -> Pulled:
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        _remove_stale(tmp_root)
        work = Path(tempfile.mkdtemp(prefix="pull-", dir=tmp_root))
        try:
            manifest = await self._image_manifest(session, digest)
            layers = []
            for number, layer in enumerate(manifest.get("layers") or []):
                media = str(layer.get("mediaType") or "")
                if media not in LAYER_TYPES:
                    raise BadImage(
                        f"image {image}: layer {number} has media type {media!r}; only tar and gzip-"
                        "compressed tar layers are supported"
                    )
                blob = work / f"layer-{number}"
                await session.blob(_descriptor(layer, image), blob)
                layers.append(blob)
            disk = work / "disk.img"
            await asyncio.to_thread(extract_disk, layers, disk, image=image, path=path)
            for blob in layers:
                blob.unlink()
            fmt = await _check_disk(disk, image)
            final = self._disk_file(digest, path)
            final.parent.mkdir(parents=True, exist_ok=True)
            disk.chmod(0o444)
            os.replace(disk, final)
            meta = {
                "reference": image,
                "digest": digest,
                "format": fmt,
                "size": final.stat().st_size,
                "path": path,
                "pulled": time.time(),
            }
            meta_tmp = work / "disk.json"
            meta_tmp.write_text(json.dumps(meta) + "\n")
            os.replace(meta_tmp, final.with_suffix(".json"))
            return Pulled(image, digest, final, fmt, cached=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _image_manifest(self, session: _Session, digest: str) -> dict[str, Any]:
        """The image manifest of ``digest``, through an index or manifest list if it is one."""
        current = digest
        for _ in range(3):
            media, manifest = await session.manifest(current)
            if media in (OCI_MANIFEST, DOCKER_MANIFEST):
                return manifest
            if media not in (OCI_INDEX, DOCKER_LIST):
                raise BadImage(
                    f"image {session.image}: manifest type {media!r} is not supported; push the image "
                    "with an OCI or Docker schema 2 manifest"
                )
            current = _pick_platform(manifest, session.image)
        raise BadImage(f"image {session.image}: indexes nested too deep")


# --- resolving without pulling ---------------------------------------------------------------------


async def resolve_digest(
    image: str,
    *,
    credentials: Credentials | None = None,
    ca_bundle: str | None = None,
    insecure_registries: tuple[str, ...] = (),
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float = 30.0,
) -> str:
    """The ``sha256:<hex>`` manifest digest ``image`` (``[docker://]host/repo[:tag][@digest]``) points to
    now, without pulling anything: one ``HEAD`` of the manifest after the registry's authentication
    challenge, the digest read from ``Docker-Content-Digest`` (a ``GET`` and the body's sha256 when the
    registry does not send it). For an index or manifest list this is the index's digest, the same key a
    pull of the tag caches under. A reference that names a digest is returned without any request.

    The transport is a pull's (module docstring): plain HTTP for loopback registries and those in
    ``insecure_registries`` (``HOST`` or ``HOST:PORT``); HTTPS otherwise, and always with ``ca_bundle``
    (PEM CA certificates trusted besides the system's, e.g. a DataVolume's ``certConfigMap``).
    ``credentials`` answer a ``Basic`` or ``Bearer`` challenge. ``transport`` replaces the network (tests).

    Raises :class:`InvalidReference` (the reference or the CA bundle cannot work) or an
    :class:`ImageUnavailable` (:class:`ManifestUnknown`, :class:`Unauthorized`, :class:`Untrusted`,
    :class:`RegistryUnreachable`: may work later), each naming the image."""
    ref = Reference.parse(image)
    if ref.digest:
        return ref.digest
    async with _connect(
        ref,
        image,
        credentials,
        ca_bundle,
        insecure_registries=tuple(insecure_registries),
        transport=transport,
        timeout=timeout,
    ) as session:
        return await session.resolve()


def _scheme(ref: Reference, insecure_registries: tuple[str, ...], *, tls: bool = False) -> str:
    if tls:
        return "https"
    insecure = ref.registry in insecure_registries or ref.host in insecure_registries
    return "http" if insecure or _is_loopback(ref.host) else "https"


@asynccontextmanager
async def _connect(
    ref: Reference,
    image: str,
    credentials: Credentials | None,
    ca_bundle: str | None,
    *,
    insecure_registries: tuple[str, ...],
    transport: httpx.AsyncBaseTransport | None,
    timeout: float,
) -> AsyncIterator[_Session]:
    """A session with ``ref``'s registry, over the transport the module docstring describes."""
    host = DOCKER_HUB_API if ref.registry == DOCKER_HUB else ref.registry
    scheme = _scheme(ref, insecure_registries, tls=bool(ca_bundle))
    verify: ssl.SSLContext | bool = False
    if scheme == "https":
        verify = ssl.create_default_context()
        if ca_bundle:
            try:
                verify.load_verify_locations(cadata=ca_bundle)
            except (ssl.SSLError, ValueError) as e:
                raise InvalidReference(
                    f"image {image}: the CA bundle holds no valid PEM certificate ({e}); fix it"
                ) from e
    async with httpx.AsyncClient(
        base_url=f"{scheme}://{host}",
        transport=transport,
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        follow_redirects=True,
        trust_env=False,
    ) as client:
        yield _Session(client, ref, image, credentials)


def _remove_stale(directory: Path) -> None:
    """Remove downloads an agent that died mid-pull left behind (untouched for a day)."""
    cutoff = time.time() - STALE_DOWNLOAD_SECONDS
    for entry in directory.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def _descriptor(entry: Mapping[str, Any], image: str) -> tuple[str, int]:
    digest, size = entry.get("digest"), entry.get("size")
    if not isinstance(digest, str) or not _DIGEST.match(digest) or not isinstance(size, int) or size < 0:
        raise BadImage(f"image {image}: descriptor {dict(entry)!r} has no valid sha256 digest and size")
    return digest, size


def _pick_platform(index: Mapping[str, Any], image: str) -> str:
    seen = []
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        os_arch = (platform.get("os"), platform.get("architecture"))
        seen.append("/".join(str(p) for p in os_arch))
        if os_arch == PLATFORM:
            return _descriptor(entry, image)[0]
    raise BadImage(
        f"image {image}: the index has no {'/'.join(PLATFORM)} image (it has: {', '.join(seen) or 'none'})"
    )


async def _check_disk(disk: Path, image: str) -> Literal["qcow2", "raw"]:
    try:
        info = await qemuimg.info(disk)
    except qemuimg.ImageError as e:
        raise BadImage(f"image {image}: the disk cannot be read: {e}") from e
    fmt = info.get("format")
    if fmt == "raw":
        return "raw"
    if fmt != "qcow2":
        raise BadImage(f"image {image}: the disk is {fmt}; a containerDisk must be qcow2 or raw")
    if info.get("backing-filename"):
        raise BadImage(f"image {image}: the qcow2 disk has a backing file; flatten it (qemu-img convert)")
    data = ((info.get("format-specific") or {}).get("data")) or {}
    if data.get("data-file"):
        raise BadImage(f"image {image}: the qcow2 disk has an external data file; convert it to one file")
    return "qcow2"


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> (``bearer``, {realm: x, service: y})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


class _Session:
    """Requests to one repository, authenticating as the registry asks (once per session)."""

    def __init__(
        self, client: httpx.AsyncClient, ref: Reference, image: str, credentials: Credentials | None
    ) -> None:
        self.client = client
        self.ref = ref
        self.image = image
        self.credentials = credentials
        self.authorization: str | None = None

    def _unreachable(self, e: httpx.HTTPError) -> RegistryUnreachable | Untrusted:
        cause: BaseException | None = e
        while cause is not None:
            if isinstance(cause, ssl.SSLCertVerificationError):
                return Untrusted(
                    f"image {self.image}: the TLS certificate of registry {self.ref.registry} does not "
                    f"verify ({cause.verify_message}); trust the CA that signed it (a DataVolume's "
                    "certConfigMap)"
                )
            cause = cause.__cause__ or cause.__context__
        return RegistryUnreachable(
            f"image {self.image}: registry {self.ref.registry} is unreachable: {type(e).__name__}: {e}"
        )

    @asynccontextmanager
    async def _send(self, method: str, url: str, accept: str | None = None) -> AsyncIterator[httpx.Response]:
        """A streamed response, after answering one authentication challenge."""
        for attempt in range(2):
            headers = {"Accept": accept} if accept else {}
            if self.authorization:
                headers["Authorization"] = self.authorization
            request = self.client.build_request(method, url, headers=headers)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError as e:
                raise self._unreachable(e) from e
            try:
                if response.status_code == 401 and attempt == 0:
                    challenge = response.headers.get("WWW-Authenticate", "")
                    await response.aclose()
                    await self._authenticate(challenge)
                    continue
                self._check_status(response, url)
                try:
                    yield response
                except httpx.HTTPError as e:  # while reading the body
                    raise self._unreachable(e) from e
                return
            finally:
                await response.aclose()

    def _check_status(self, response: httpx.Response, url: str) -> None:
        status = response.status_code
        if status < 400:
            return
        what = f"image {self.image}: registry {self.ref.registry} answered {status} for {url}"
        if status in (401, 403):
            hint = (
                "give a login for this registry (a containerDisk's imagePullSecret, a DataVolume's secretRef)"
            )
            if self.credentials is not None:
                hint = "check the login (a containerDisk's imagePullSecret, a DataVolume's secretRef)"
            raise Unauthorized(f"{what} (access denied); {hint}")
        if status == 404:
            raise ManifestUnknown(f"{what} (not found); check the image name, tag or digest")
        if status == 429 or status >= 500:
            raise RegistryUnreachable(f"{what}; retrying later")
        raise ImageUnavailable(what)

    async def _authenticate(self, challenge: str) -> None:
        scheme, params = _challenge(challenge)
        creds = self.credentials
        if scheme == "basic":
            if creds is None:
                raise Unauthorized(
                    f"image {self.image}: registry {self.ref.registry} wants a login; give one (a "
                    "containerDisk's imagePullSecret, a DataVolume's secretRef)"
                )
            self.authorization = _basic(creds)
            return
        if scheme != "bearer" or "realm" not in params:
            raise Unauthorized(
                f"image {self.image}: registry {self.ref.registry} asks for unsupported authentication "
                f"{challenge!r}"
            )
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        headers = {"Authorization": _basic(creds)} if creds else {}
        try:
            response = await self.client.get(params["realm"], params=query, headers=headers)
        except httpx.HTTPError as e:
            raise self._unreachable(e) from e
        if response.status_code in (401, 403):
            raise Unauthorized(
                f"image {self.image}: the token service {params['realm']} refused "
                f"{'the login of the imagePullSecret' if creds else 'anonymous access'} "
                f"({response.status_code})"
            )
        if response.status_code >= 400:
            raise RegistryUnreachable(
                f"image {self.image}: the token service {params['realm']} answered {response.status_code}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unauthorized(f"image {self.image}: the token service {params['realm']} returned no token")
        self.authorization = f"Bearer {token}"

    async def resolve(self) -> str:
        """The digest the tag points to now: a HEAD of the manifest (a GET if the registry does not say)."""
        url = f"/v2/{self.ref.repository}/manifests/{self.ref.tag}"
        async with self._send("HEAD", url, MANIFEST_ACCEPT) as response:
            digest = str(response.headers.get("Docker-Content-Digest", ""))
        if _DIGEST.match(digest):
            return digest
        async with self._send("GET", url, MANIFEST_ACCEPT) as response:
            body = await self._read_limited(response, url)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    async def _read_limited(self, response: httpx.Response, url: str) -> bytes:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_MANIFEST_BYTES:
                raise BadImage(
                    f"image {self.image}: manifest {url} is larger than {MAX_MANIFEST_BYTES} bytes"
                )
        return bytes(body)

    async def manifest(self, digest: str) -> tuple[str, dict[str, Any]]:
        """(media type, manifest) of ``digest``, its content verified against the digest."""
        url = f"/v2/{self.ref.repository}/manifests/{digest}"
        async with self._send("GET", url, MANIFEST_ACCEPT) as response:
            body = await self._read_limited(response, url)
            header_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"image {self.image}: manifest {digest} has digest {actual}")
        try:
            manifest = json.loads(body)
        except ValueError as e:
            raise BadImage(f"image {self.image}: manifest {digest} is not JSON: {e}") from e
        if not isinstance(manifest, dict):
            raise BadImage(f"image {self.image}: manifest {digest} is not a JSON object")
        media = str(manifest.get("mediaType") or header_type)
        return media, manifest

    async def blob(self, descriptor: tuple[str, int], dest: Path) -> None:
        """Download a blob to ``dest``, verifying its size and sha256 digest."""
        digest, size = descriptor
        url = f"/v2/{self.ref.repository}/blobs/{digest}"
        hasher = hashlib.sha256()
        written = 0
        out: BinaryIO = await asyncio.to_thread(dest.open, "wb")
        try:
            async with self._send("GET", url) as response:
                async for chunk in response.aiter_bytes(CHUNK):
                    written += len(chunk)
                    if written > size:
                        raise DigestMismatch(
                            f"image {self.image}: blob {digest} is larger than its descriptor ({size} bytes)"
                        )
                    hasher.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
        finally:
            out.close()
        actual = "sha256:" + hasher.hexdigest()
        if written != size or actual != digest:
            raise DigestMismatch(
                f"image {self.image}: blob {digest} ({size} bytes) arrived as {actual} ({written} bytes); "
                "the registry's copy or the transfer is corrupt"
            )


def _basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
