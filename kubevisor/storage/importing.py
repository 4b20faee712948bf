"""Importing disk images into volumes: the engine of CDI DataVolume ``http``, ``s3``, ``registry``,
``upload`` and clone sources.

Why it exists: CDI runs an importer pod per DataVolume that "streams the file from the remote data store to
the mounted backing storage volume and performs decompression and qcow2-to-raw conversion"
(``CDI:doc/design.md``). kubevisor has no importer pods: the node agent calls :func:`import_image` on the
node that holds the volume, and the DataVolume controller turns its result, progress and errors into the
DataVolume's ``status.phase``, ``status.progress`` and conditions.

What an import does::

    source bytes ─┬─ checksum (sha256/md5 of the bytes as served, if the caller gave one)
                  └─ gzip/xz? (magic bytes, never the name) ─ stream-decompress
                       └─ format (magic bytes; ``qemu-img info`` decides for anything not raw)
                            ├─ raw/iso: straight into the target; all-zero 64 KiB blocks are skipped
                            │  (the file stays sparse); no scratch copy
                            └─ qcow2/vmdk/vhdx/...: into a scratch file (these need random access),
                               then ``qemu-img info`` (under CDI's resource limits) and
                               ``qemu-img convert -O raw`` into the target
                  then: virtual size <= claim size, expand to the claim size, fsync, rename

How bytes move: an HTTP download runs in a worker thread with httpx's blocking client (reads of 1 MiB),
handing 1 MiB batches to a second thread that hashes, decompresses and writes, so receiving overlaps
writing as ``curl | xz -d`` overlaps its two processes; the event loop only sees progress. An async
stream (upload) is received on the event loop and written by a worker thread the same way. A
non-raw image is downloaded to scratch because qemu-img needs random access: QEMU's own ``http`` driver
(``qemu-block-extra``'s curl module, which CDI's nbdkit path resembles) is not installed on the
project's machines, and a scratch file costs one sequential write.

Invariants:

- A target never looks complete while it is not. Volume mode ``Filesystem``: everything is written to a
  temporary file beside the target (``.disk.img.import-*``), fsynced, and renamed over the target as the
  last step; any failure (or cancellation) removes it and the scratch file. Volume mode ``Block``: a device
  cannot be renamed, so its first MiB (partition table, boot sector, filesystem superblocks, image
  headers) is zeroed before anything else and written last, after everything else is on the device; a
  failure zeroes it again.
- Images never read the node's files: a qcow2 with a backing file or external data file, or a vmdk whose
  extents are other files, is refused; qemu-img reads untrusted images only under ``prlimit`` (1 GiB of
  address space, 30 s of CPU for ``info``, as CDI does).
- Nothing trusts the URL: ``disk.qcow2.gz`` that is really raw xz imports as raw xz.

Errors (every message names the source and says what to do)::

    ImageImportError                       ``.permanent`` says whether retrying can help
    ├── TransientImportError               retry with backoff (``retry_after`` from the server, if any)
    │   └── SourceUnreachable              refused/reset connection, timeout, truncated body, 5xx, 408, 429
    └── PermanentImportError               retrying the same import fails the same way
        ├── InvalidSource                  a URL or source the importer cannot use (scheme, redirects)
        ├── SourceNotFound                 404/410
        ├── SourceUnauthorized             401/403: credentials missing or refused
        ├── SourceUntrusted                the server's TLS certificate does not verify
        ├── ChecksumMismatch               the bytes do not match the checksum given
        ├── InvalidImage                   empty, HTML/text, corrupt compression, unsupported or unsafe format
        ├── ImageTooLarge                  virtual size larger than the claim
        └── TargetError                    the target cannot be written (missing, not a device, no space)

The base class is not called ``ImportError``: that would shadow Python's built-in exception of that name.

Registry sources: :class:`RegistrySource` takes any :class:`RegistryPuller` (``registry.ImageCache``
satisfies it), with the DataVolume's login (``secretRef``) and CA bundle (``certConfigMap``: the registry
is then spoken to over HTTPS, even on loopback); the pulled disk is then imported as a local file. Unlike
a VMI's containerDisk pull, which is retried, a DataVolume fails for what retrying cannot fix: no such
image (``SourceNotFound``), refused login (``SourceUnauthorized``), untrusted certificate
(``SourceUntrusted``), content that does not match its digest, e.g. an image pinned by
``@sha256:...`` (``ChecksumMismatch``), no usable disk (``InvalidImage``).

S3 sources: :class:`S3Source`, ``http(s)://host[:port]/bucket/key`` read as CDI reads it (endpoint from
the URL, bucket the first path component, path-style requests, signed with SigV4 for us-east-1 unless
the host is AWS's ``s3.<region>.amazonaws.com``; anonymous without keys; never the node's own AWS
configuration). ``GetObject`` is streamed with boto3 (imported only when an S3 source is used) through
the same worker threads as HTTP. ``NoSuchKey``/``NoSuchBucket`` -> ``SourceNotFound``,
``AccessDenied``/``InvalidAccessKeyId``/``SignatureDoesNotMatch`` -> ``SourceUnauthorized``, both naming
the object and bucket; connection failures, timeouts, 5xx and ``SlowDown`` -> ``SourceUnreachable``
(retried by the caller with backoff; boto3's own retries are off).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import json
import lzma
import os
import re
import secrets
import socket
import ssl
import stat
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import httpcore
import httpx

from kubevisor.storage import registry

__all__ = [
    "DISK_IMAGE",
    "ChecksumMismatch",
    "FileSource",
    "HTTPSource",
    "ImageImportError",
    "ImageTooLarge",
    "ImportResult",
    "InvalidImage",
    "InvalidSource",
    "PermanentImportError",
    "Progress",
    "RegistryPuller",
    "RegistrySource",
    "S3Source",
    "Source",
    "SourceNotFound",
    "SourceUnauthorized",
    "SourceUnreachable",
    "SourceUntrusted",
    "StreamSource",
    "TargetError",
    "TransientImportError",
    "VolumeMode",
    "convert_argv",
    "format_percent",
    "import_image",
    "info_argv",
    "sniff",
]

DISK_IMAGE = "disk.img"
"""The file CDI writes in a Filesystem-mode volume; pass ``volume_dir / DISK_IMAGE`` as the target."""

VolumeMode = Literal["Filesystem", "Block"]
TargetFormat = Literal["raw", "qcow2"]

QEMU_IMG = "qemu-img"
PRLIMIT = "prlimit"
INFO_LIMITS = ("--as=1073741824", "--cpu=30")
"""CDI's limits for ``qemu-img info`` on untrusted images (``pkg/image/qemu.go``)."""

CHUNK = 1 << 20
"""Bytes handed to the writer thread at once (batches of received chunks)."""
ZERO_BLOCK = 64 << 10
"""Granularity of sparse detection for raw streams."""
PROBE = 64 << 10
"""Decoded bytes looked at before deciding the format (ISO 9660's descriptor is at 32 KiB)."""
HEAD = 1 << 20
"""Bytes of a block device written last (see the module docstring)."""
MAX_DECODED = 1 << 20
"""Most bytes one decompression step may produce (bounds memory on highly compressible input)."""

_ZEROS = bytes(ZERO_BLOCK)

# Formats qemu-img reads that an import accepts (``luks`` is refused: encrypted, no key).
SUPPORTED_FORMATS = frozenset(
    {"raw", "qcow2", "qcow", "qed", "vmdk", "vhdx", "vpc", "vdi", "parallels", "bochs", "cloop", "dmg"}
)


# ---------------------------------------------------------------------------------------------- errors


class ImageImportError(Exception):
    """An import failed (see the tree in the module docstring)."""

    permanent: ClassVar[bool] = True


class TransientImportError(ImageImportError):
    """May work later: retry with backoff."""

    permanent = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds the server asked to wait (``Retry-After``), if it said."""


class SourceUnreachable(TransientImportError):
    """The connection failed, timed out or was cut, or the server answered 5xx/408/429."""


class PermanentImportError(ImageImportError):
    """Retrying the same import fails the same way; the source or the request must change."""


class InvalidSource(PermanentImportError):
    """The source cannot be used as given (URL scheme, redirect loop, missing file)."""


class SourceNotFound(PermanentImportError):
    """The server answered 404 or 410."""


class SourceUnauthorized(PermanentImportError):
    """The server answered 401 or 403."""


class SourceUntrusted(PermanentImportError):
    """The server's TLS certificate does not verify against the system CAs and the given bundle."""


class ChecksumMismatch(PermanentImportError):
    """The source's bytes do not match the checksum the caller gave."""


class InvalidImage(PermanentImportError):
    """The content is no usable disk image."""


class ImageTooLarge(PermanentImportError):
    """The image's virtual size is larger than the claim."""


class TargetError(PermanentImportError):
    """The target cannot be written."""


# ----------------------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class HTTPSource:
    """An ``http`` or ``https`` URL (DataVolume ``spec.source.http``)."""

    url: str
    ca_bundle: str | None = None
    """PEM text of CA certificates trusted besides the system's (the ``certConfigMap``'s ``ca.pem``)."""
    access_key_id: str | None = field(default=None, repr=False)
    """Basic-auth user (the ``secretRef`` Secret's ``accessKeyId``)."""
    secret_key: str | None = field(default=None, repr=False)
    """Basic-auth password (the ``secretRef`` Secret's ``secretKey``)."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Extra request headers (``extraHeaders`` and ``secretExtraHeaders``, already parsed)."""
    checksum: str | None = None
    """``sha256:<hex>`` or ``md5:<hex>`` of the bytes as served (before decompression)."""

    @property
    def name(self) -> str:
        """The URL without credentials or query (what error messages show)."""
        return _url_name(self.url)


def _url_name(url: str) -> str:
    """A URL without credentials or query (what error messages show)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class S3Source:
    """An object in an S3 bucket (DataVolume ``spec.source.s3``): ``http(s)://host[:port]/bucket/key``,
    addressed path-style as CDI does; fetched with boto3."""

    url: str
    access_key_id: str | None = field(default=None, repr=False)
    """The ``secretRef`` Secret's ``accessKeyId``; with neither key the requests are anonymous."""
    secret_key: str | None = field(default=None, repr=False)
    """The ``secretRef`` Secret's ``secretKey``."""
    ca_bundle: str | None = None
    """PEM text of CA certificates trusted besides the system's (the ``certConfigMap``'s ``ca.pem``)."""

    @property
    def name(self) -> str:
        return _url_name(self.url)


@dataclass(frozen=True)
class FileSource:
    """A local file (an upload already received, a clone's source volume, a pulled containerDisk)."""

    path: Path
    checksum: str | None = None

    @property
    def name(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class StreamSource:
    """Bytes arriving as an async stream (an upload's request body)."""

    stream: AsyncIterable[bytes]
    total: int | None = None
    """The stream's length, if known (``Content-Length``); progress shows ``N/A`` without it."""
    checksum: str | None = None
    name: str = "upload"


class PulledDisk(Protocol):
    @property
    def path(self) -> Path: ...


class RegistryPuller(Protocol):
    """What a registry source needs: ``registry.ImageCache`` is one."""

    async def pull(
        self, image: str, *, credentials: Any = None, ca_bundle: str | None = None
    ) -> PulledDisk: ...


@dataclass(frozen=True)
class RegistrySource:
    """A containerDisk in an OCI registry (``spec.source.registry``): pulled, then imported as a file."""

    image: str
    puller: RegistryPuller
    credentials: Any = field(default=None, repr=False)
    """A ``registry.Credentials`` (or whatever the puller accepts)."""
    ca_bundle: str | None = None
    """PEM text of CA certificates for the registry's TLS (the ``certConfigMap``); the registry is then
    spoken to over HTTPS, even on loopback."""

    @property
    def name(self) -> str:
        return f"docker://{self.image.removeprefix('docker://')}"


Source = HTTPSource | S3Source | FileSource | StreamSource | RegistrySource


@dataclass(frozen=True)
class Progress:
    """One report, in one fixed shape: the stage, its bytes, and the overall percentage for status."""

    stage: Literal["download", "convert"]
    done: int
    """Bytes of this stage done (convert: the percentage of qemu-img's work, scaled to ``total``)."""
    total: int | None
    """Bytes this stage will take, if known."""
    percent: str
    """The whole import's progress as CDI shows it in ``status.progress`` (``"45.67%"``, ``"N/A"``)."""
    speed: float
    """Bytes per second in this stage so far."""


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote."""

    path: Path
    """The target (the file renamed into place, or the block device)."""
    source_format: str
    """The image format as found (``raw`` for ISO images too)."""
    compression: Literal["gzip", "xz"] | None
    virtual_size: int
    """The image's own virtual size (before expanding to the claim)."""
    size: int
    """The target's size after expanding."""
    transferred: int
    """Bytes read from the source (compressed size for compressed sources)."""
    seconds: float


def format_percent(fraction: float | None) -> str:
    """``0.4567`` -> ``"45.67%"`` (CDI's ``status.progress`` format); ``None`` -> ``"N/A"``."""
    if fraction is None:
        return "N/A"
    return f"{min(max(fraction, 0.0), 1.0) * 100:.2f}%"


class _Reporter:
    """Turns stage counters into :class:`Progress` calls, at most every ``interval`` seconds (and the
    last one always). With a scratch file the download is the first half of the import, conversion the
    second."""

    def __init__(self, callback: ProgressCallback | None, interval: float) -> None:
        self.callback = callback
        self.interval = interval
        self.split = False
        self._last = 0.0
        self._stage_start = time.monotonic()
        self._stage = ""

    def report(
        self, stage: Literal["download", "convert"], done: int, total: int | None, *, force: bool = False
    ) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_start = stage, now
        if not force and now - self._last < self.interval:
            return
        self._last = now
        fraction = None if not total else done / total
        if fraction is not None and self.split:
            fraction = fraction / 2 if stage == "download" else 0.5 + fraction / 2
        elif fraction is None and stage == "convert":
            fraction = 0.5
        speed = done / max(now - self._stage_start, 1e-6)
        self.callback(Progress(stage, done, total, format_percent(fraction), speed))


# ------------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Sniffed:
    """What a header says: a compression, or else an image format (``None``: not a disk image)."""

    compression: Literal["gzip", "xz"] | None = None
    format: str | None = None
    reason: str = ""


_GZIP = b"\x1f\x8b"
_XZ = b"\xfd7zXZ\x00"
_OTHER_COMPRESSION = {b"(\xb5/\xfd": "zstd", b"BZh": "bzip2", b"PK\x03\x04": "zip"}
_FORMAT_MAGIC = (
    (0, b"QFI\xfb", "qcow2"),
    (0, b"QED\x00", "qed"),
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
)
_MARKUP = re.compile(rb"^\s*(<!doctype\s+html|<html|<\?xml|<head|<body|\{|\[)", re.IGNORECASE)


def sniff(head: bytes, *, compressed_ok: bool = True) -> Sniffed:
    """Classify the first bytes of a source (qemu's own probes, by magic): ``head`` should be at least
    :data:`PROBE` bytes unless the source is shorter."""
    if compressed_ok:
        if head.startswith(_GZIP):
            return Sniffed(compression="gzip")
        if head.startswith(_XZ):
            return Sniffed(compression="xz")
    for magic, name in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            return Sniffed(reason=f"it is {name}-compressed; only gzip and xz are supported: recompress it")
    for offset, magic, fmt in _FORMAT_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return Sniffed(format=fmt)
    if not head:
        return Sniffed(reason="it is empty")
    if _is_text(head[:4096]):
        if _MARKUP.match(head[:1024]):
            return Sniffed(
                reason="it is an HTML/XML/JSON document (an error or index page?), not a disk image"
            )
        return Sniffed(reason="it is text, not a disk image (disk images have binary headers)")
    return Sniffed(format="raw")


def _is_text(sample: bytes) -> bool:
    """No NUL byte and valid UTF-8: no disk image starts like that (boot sectors, partition tables and
    filesystem superblocks all hold zeros in their first 4 KiB)."""
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(sample) - 4  # only a character cut at the sample's end
    return True


def _parse_checksum(checksum: str | None, name: str) -> tuple[str, str] | None:
    if not checksum:
        return None
    algo, sep, digest = checksum.partition(":")
    algo = algo.lower()
    lengths = {"sha256": 64, "md5": 32, "sha1": 40, "sha512": 128}
    if (
        not sep
        or algo not in lengths
        or len(digest) != lengths[algo]
        or not re.fullmatch(r"[0-9a-fA-F]+", digest)
    ):
        raise InvalidSource(
            f"{name}: checksum {checksum!r} is not '<algorithm>:<hex digest>' with algorithm sha256, sha512, "
            "sha1 or md5; fix the checksum"
        )
    return algo, digest.lower()


# ------------------------------------------------------------------------------------------- decoding


class _Decoder:
    """Stream decompression of concatenated gzip members or xz streams, bounded output per step."""

    def __init__(self, kind: Literal["gzip", "xz"]) -> None:
        self.kind = kind
        self._d: Any = self._new()
        self._started = False
        self._padding = False

    def _new(self) -> Any:
        return zlib.decompressobj(31) if self.kind == "gzip" else lzma.LZMADecompressor(lzma.FORMAT_XZ)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._padding:
            if data.strip(b"\x00"):
                raise zlib.error("data after the end of the compressed stream")
            return
        while True:
            if self._d.eof:
                data = self._d.unused_data + data
                if not data:
                    return
                if not data.strip(b"\x00"):  # xz stream padding; gzip -d also ignores trailing zeros
                    self._padding = True
                    return
                self._d = self._new()
            if data:
                self._started = True
            if self.kind == "gzip":
                out = self._d.decompress(data, MAX_DECODED)
                # at a member's end the rest is in unused_data (unconsumed_tail may repeat it)
                data = b"" if self._d.eof else self._d.unconsumed_tail
                if out:
                    yield out
                if not self._d.eof and not data and len(out) < MAX_DECODED:
                    return
            else:
                out = self._d.decompress(data, MAX_DECODED)
                data = b""
                if out:
                    yield out
                if not self._d.eof and self._d.needs_input:
                    return

    def complete(self) -> bool:
        return self._padding or (self._started and self._d.eof)


# --------------------------------------------------------------------------------------------- writing


class _Writer:
    """The writer thread's side of a stream import: checksum, decompression, format decision, and
    writing (raw into the target, anything else into scratch). Runs in one worker thread at a time,
    in order; it owns its file descriptors."""

    def __init__(
        self,
        *,
        name: str,
        raw_path: Path,
        scratch_path: Path,
        block: bool,
        limit: int | None,
        checksum: tuple[str, str] | None,
        expected: int | None,
    ) -> None:
        self.name = name
        self.raw_path = raw_path
        self.scratch_path = scratch_path
        self.block = block
        self.limit = limit
        self.expected = expected
        self.hasher = hashlib.new(checksum[0]) if checksum else None
        self.compression: Literal["gzip", "xz"] | None = None
        self.format: str | None = None
        self.decoder: _Decoder | None = None
        self.fd: int | None = None
        self.path: Path | None = None
        self.mode: Literal["sparse", "block", "plain"] = "plain"
        self.offset = 0
        self.head = bytearray()  # block: the first HEAD bytes, written last
        self._raw_head = b""  # before compression is known
        self._probe = bytearray()  # decoded bytes before the format is known
        self._decided = False

    # called in the worker thread

    def process(self, chunks: list[bytes]) -> None:
        for received in chunks:
            if self.hasher is not None:
                self.hasher.update(received)
            chunk = received
            if not self._decided:
                self._raw_head += chunk
                if len(self._raw_head) < 8:
                    continue
                chunk, self._raw_head = self._raw_head, b""
                self._decide_compression(chunk)
            self._decode(chunk)

    def finish(self) -> None:
        if not self._decided:
            chunk, self._raw_head = self._raw_head, b""
            self._decide_compression(chunk)
            self._decode(chunk)
        if self.decoder is not None and not self.decoder.complete():
            raise InvalidImage(
                f"{self.name}: the {self.compression} data ends before the compressed stream does: the file "
                "on the server is truncated; replace it"
            )
        if self.format is None:
            self._decide_format(bytes(self._probe))
            self._probe.clear()

    def _decide_compression(self, head: bytes) -> None:
        self._decided = True
        found = sniff(head)
        self.compression = found.compression
        if found.compression:
            self.decoder = _Decoder(found.compression)

    def _decode(self, chunk: bytes) -> None:
        if self.decoder is None:
            self._take(chunk)
            return
        try:
            for out in self.decoder.feed(chunk):
                self._take(out)
        except (zlib.error, lzma.LZMAError) as e:
            raise InvalidImage(
                f"{self.name}: the {self.compression} data is corrupt ({e}); replace the file"
            ) from e

    def _take(self, data: bytes) -> None:
        if self.format is None:
            self._probe += data
            if len(self._probe) < PROBE:
                return
            data = bytes(self._probe)
            self._probe.clear()
            self._decide_format(data)
        else:
            self._write(data)

    def _decide_format(self, data: bytes) -> None:
        found = sniff(data, compressed_ok=False)
        if found.format is None:
            raise InvalidImage(f"{self.name}: {found.reason}; point the source at a disk image")
        self.format = found.format
        if found.format == "luks":
            raise InvalidImage(f"{self.name}: the image is LUKS-encrypted; import an unencrypted image")
        if found.format == "raw":
            self.path = self.raw_path
            if (
                self.compression is None
                and self.expected
                and self.limit is not None
                and self.expected > self.limit
            ):
                raise _too_large(self.name, self.expected, self.limit)
            if self.block:
                self.mode = "block"
                self.fd = os.open(self.raw_path, os.O_WRONLY | os.O_CLOEXEC)
            else:
                self.mode = "sparse"
                self.fd = os.open(self.raw_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        else:
            self.mode = "plain"
            self.path = self.scratch_path
            self.fd = os.open(self.scratch_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            if self.limit is not None:  # a scratch file may hold metadata beyond the virtual size
                self.limit += max(self.limit // 10, 64 << 20)
        self._write(data)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        assert self.fd is not None
        end = self.offset + len(data)
        if self.limit is not None and end > self.limit:
            if self.format == "raw":
                raise _too_large(self.name, end, self.limit, at_least=True)
            raise ImageTooLarge(
                f"{self.name}: the {self.format} file is larger than {self.limit} bytes, more than the "
                "claim can hold; request a larger volume"
            )
        if self.mode == "block":
            self._write_block(data)
        elif self.mode == "sparse":
            self._write_sparse(data)
        else:
            _pwrite_all(self.fd, memoryview(data), self.offset)
        self.offset = end

    def _write_block(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        if self.offset < HEAD:
            keep = min(HEAD - self.offset, len(view))
            self.head += view[:keep]
            view = view[keep:]
            if not view:
                return
            _pwrite_all(self.fd, view, HEAD)
            return
        _pwrite_all(self.fd, view, self.offset)

    def _write_sparse(self, data: bytes) -> None:
        """Write ``data`` at the offset, skipping all-zero aligned blocks (the file is new, so they read
        as zeros; the final size is set at the end)."""
        assert self.fd is not None
        view = memoryview(data)
        start = None  # start of the pending non-zero run, as an index into data
        i = 0
        n = len(data)
        first = (-self.offset) % ZERO_BLOCK  # up to the next aligned block: always written
        if first:
            start, i = 0, min(first, n)
        while i < n:
            j = min(i + ZERO_BLOCK, n)
            if j - i == ZERO_BLOCK and data.startswith(_ZEROS, i, j):
                if start is not None:
                    _pwrite_all(self.fd, view[start:i], self.offset + start)
                    start = None
            elif start is None:
                start = i
            i = j
        if start is not None:
            _pwrite_all(self.fd, view[start:n], self.offset + start)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def verify(self, checksum: tuple[str, str] | None) -> None:
        if checksum is None or self.hasher is None:
            return
        got = self.hasher.hexdigest()
        if got != checksum[1]:
            raise ChecksumMismatch(
                f"{self.name}: {checksum[0]} of the downloaded data is {got}, expected {checksum[1]}; the "
                "file changed or the checksum is wrong: fix the checksum or the source"
            )


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _too_large(name: str, size: int, limit: int, *, at_least: bool = False) -> ImageTooLarge:
    more = "at least " if at_least else ""
    return ImageTooLarge(
        f"{name}: image is larger than the claim: virtual size {more}{size} > requested {limit}; request a "
        "larger volume (storage.resources.requests.storage)"
    )


async def _pump(chunks: AsyncIterator[bytes], writer: _Writer, on_received: Callable[[int], None]) -> None:
    """Receive on the event loop, write in a worker thread: one batch being written while the next is
    received."""
    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            batch.append(chunk)
            size += len(chunk)
            on_received(len(chunk))
            if size >= CHUNK:
                if pending is not None:
                    await asyncio.shield(pending)
                pending = asyncio.ensure_future(asyncio.to_thread(writer.process, batch))
                batch, size = [], 0
        if batch:
            if pending is not None:
                await asyncio.shield(pending)
            pending = asyncio.ensure_future(asyncio.to_thread(writer.process, batch))
        if pending is not None:
            await asyncio.shield(pending)
        pending = asyncio.ensure_future(asyncio.to_thread(writer.finish))
        await asyncio.shield(pending)
    finally:
        # A worker thread cannot be stopped (not even by cancelling the task that awaits it, which the
        # shield prevents from reaching it): let it finish before the caller closes its descriptor and
        # removes its files.
        if pending is not None:
            if not pending.done():
                await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # retrieved: the first error is the one raised


# ------------------------------------------------------------------------------------------- qemu-img


def info_argv(path: Path) -> list[str]:
    """``qemu-img info`` on an untrusted image, under CDI's resource limits, format probed."""
    return [PRLIMIT, *INFO_LIMITS, "--", QEMU_IMG, "info", "--output=json", str(path)]


def convert_argv(
    source: Path, source_format: str, dest: Path, dest_format: TargetFormat, *, existing: bool
) -> list[str]:
    """Convert with progress on stdout, 16 parallel requests, sparse output. ``existing``: write into
    ``dest`` as it is (a block device) instead of creating it; raw output may be written out of order."""
    argv = [QEMU_IMG, "convert", "-p", "-m", "16", "-f", source_format, "-O", dest_format]
    if dest_format == "raw":
        argv.append("-W")
    if existing:
        argv.append("-n")
    return [*argv, str(source), str(dest)]


def resize_argv(path: Path, fmt: TargetFormat, size: int) -> list[str]:
    return [QEMU_IMG, "resize", "-q", "-f", fmt, str(path), str(size)]


async def _run(argv: list[str], what: str, on_stdout: Callable[[bytes], None] | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as e:
        raise TargetError(f"{what}: {argv[0]} is not installed; install qemu-utils (`make install`)") from e
    try:
        assert proc.stdout is not None and proc.stderr is not None
        err_task = asyncio.ensure_future(proc.stderr.read())
        out = bytearray()
        while True:
            piece = await proc.stdout.read(4096)
            if not piece:
                break
            out += piece
            if on_stdout is not None:
                on_stdout(piece)
        err = await err_task
        await proc.wait()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        code = proc.returncode or 0
        message = err.decode(errors="replace").strip() or f"exit status {code}"
        if "No space left" in message:
            raise TargetError(f"{what}: no space left on the target; request a larger volume or free space")
        if code < 0 or code in (137, 152):  # killed: prlimit's CPU or memory bound
            raise InvalidImage(f"{what}: qemu-img exceeded its resource limits on this image: {message}")
        raise InvalidImage(f"{what}: {message}")
    return out.decode(errors="replace")


async def _inspect(path: Path, name: str, limit: int | None) -> tuple[str, int]:
    """``qemu-img info`` on a downloaded image: its format and virtual size, refusing unsafe images."""
    text = await _run(info_argv(path), f"{name}: reading the image")
    info: dict[str, Any] = json.loads(text)
    fmt = str(info.get("format") or "")
    vsize = int(info.get("virtual-size") or 0)
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidImage(
            f"{name}: qemu-img finds format {fmt!r}, which cannot be imported; convert it to qcow2 or raw"
        )
    if info.get("encrypted"):
        raise InvalidImage(f"{name}: the {fmt} image is encrypted; import an unencrypted image")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidImage(
            f"{name}: the {fmt} image has a backing file ({info.get('backing-filename')}); flatten it with "
            "`qemu-img convert` and import the result"
        )
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise InvalidImage(f"{name}: the {fmt} image has an external data file; convert it into one file")
    foreign = _foreign_extents(data, path)
    if foreign:
        raise InvalidImage(
            f"{name}: the {fmt} image refers to other files ({', '.join(foreign)}); convert it into one file "
            "(e.g. vmdk streamOptimized or qcow2)"
        )
    if limit is not None and vsize > limit:
        raise _too_large(name, vsize, limit)
    return fmt, vsize


def _foreign_extents(data: Mapping[str, Any], path: Path) -> list[str]:
    """Extents (vmdk) stored in files other than the image itself."""
    own = os.path.realpath(path)
    names = [str(extent.get("filename", "")) for extent in data.get("extents") or []]
    return [n for n in names if os.path.realpath(n) != own]


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


async def _convert(
    source: Path,
    source_format: str,
    dest: Path,
    dest_format: TargetFormat,
    *,
    existing: bool,
    name: str,
    vsize: int,
    reporter: _Reporter,
) -> None:
    def on_stdout(piece: bytes) -> None:
        found = _PERCENT.findall(piece)
        if found:
            reporter.report("convert", int(vsize * float(found[-1]) / 100), vsize)

    argv = convert_argv(source, source_format, dest, dest_format, existing=existing)
    await _run(argv, f"{name}: converting {source_format} to {dest_format}", on_stdout)
    reporter.report("convert", vsize, vsize, force=True)


# ------------------------------------------------------------------------------------------- sources


READ_SIZE = 1 << 20
"""Bytes asked of the socket per read (httpcore asks 64 KiB; each read costs ~60 µs of Python above it)."""


class _LargeReads(httpcore.NetworkBackend):
    """httpcore's own blocking backend, reading up to :data:`READ_SIZE` at a time: a third of the CPU
    that the download of a raw image costs with 64 KiB reads. (TLS still returns one record per read.)"""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _LargeReadStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max(max_bytes, READ_SIZE), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _LargeReadStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Transport(httpx.HTTPTransport):
    """httpx's transport over a connection pool with :class:`_LargeReads` (httpx has no parameter for
    the backend, so its pool is replaced; the pool is built exactly as httpx builds it without a proxy)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(verify=context, trust_env=False)
        self._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=_LargeReads())


def _http_client(source: HTTPSource, timeout: float, transport: httpx.BaseTransport | None) -> httpx.Client:
    context = _check_ca(source.ca_bundle, source.name) if source.ca_bundle else ssl.create_default_context()
    auth = None
    if source.access_key_id is not None or source.secret_key is not None:
        auth = httpx.BasicAuth(source.access_key_id or "", source.secret_key or "")
    return httpx.Client(
        verify=context,
        auth=auth,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        follow_redirects=True,
        trust_env=False,
        transport=transport or _Transport(context),
    )


def _http_error(source: HTTPSource, e: httpx.HTTPError) -> ImageImportError:
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return SourceUntrusted(
                f"{source.name}: the server's TLS certificate does not verify ({cause.verify_message}); give "
                "the CA that signed it in the DataVolume's certConfigMap"
            )
        cause = cause.__cause__ or cause.__context__
    if isinstance(e, httpx.TooManyRedirects):
        return InvalidSource(f"{source.name}: too many redirects; fix the URL")
    if isinstance(e, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return InvalidSource(f"{source.name}: not an http or https URL ({e}); fix spec.source.http.url")
    if isinstance(e, httpx.TimeoutException):
        return SourceUnreachable(f"{source.name}: timed out ({type(e).__name__}); retrying")
    return SourceUnreachable(
        f"{source.name}: connection failed or was cut: {e or type(e).__name__}; retrying"
    )


def _status_error(source: HTTPSource, response: httpx.Response) -> ImageImportError:
    code = response.status_code
    what = f"{source.name}: the server answered {code} {response.reason_phrase}"
    if code in (404, 410):
        return SourceNotFound(f"{what}; fix the URL")
    if code in (401, 403):
        hint = (
            "check the credentials in secretRef" if source.access_key_id else "give credentials in secretRef"
        )
        return SourceUnauthorized(f"{what}; {hint}")
    if code >= 500 or code in (408, 425, 429):
        retry_after = None
        with contextlib.suppress(ValueError):
            retry_after = float(response.headers.get("retry-after", ""))
        return SourceUnreachable(f"{what}; retrying", retry_after=retry_after)
    return InvalidSource(f"{what}; check the URL and the server")


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb", buffering=0) as f:
        while True:
            chunk = await asyncio.to_thread(f.read, 4 * CHUNK)
            if not chunk:
                return
            yield chunk


def _check_ca(ca_bundle: str, name: str) -> ssl.SSLContext:
    """The system's CAs plus ``ca_bundle``; :class:`InvalidSource` when it holds no PEM certificate."""
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cadata=ca_bundle)
    except (ssl.SSLError, ValueError) as e:
        raise InvalidSource(
            f"{name}: the CA bundle (certConfigMap) holds no valid PEM certificate ({e}); fix the ConfigMap"
        ) from e
    return context


# registry errors -> import errors (the registry module's messages already say what to do)
_REGISTRY_ERRORS: tuple[tuple[type[registry.RegistryError], type[ImageImportError]], ...] = (
    (registry.InvalidReference, InvalidSource),
    (registry.BadImage, InvalidImage),
    (registry.DigestMismatch, ChecksumMismatch),
    (registry.ManifestUnknown, SourceNotFound),
    (registry.Unauthorized, SourceUnauthorized),
    (registry.Untrusted, SourceUntrusted),
)


async def _pull(source: RegistrySource, name: str) -> PulledDisk:
    """Pull a registry source's disk. Unlike a VMI's containerDisk, which is retried, a DataVolume
    fails for what retrying cannot fix: a missing image, refused credentials, an untrusted certificate,
    content that does not match its digest (a digest-pinned image that is not what it says)."""
    if source.ca_bundle:
        _check_ca(source.ca_bundle, name)
    try:
        return await source.puller.pull(
            source.image, credentials=source.credentials, ca_bundle=source.ca_bundle
        )
    except ImageImportError:
        raise
    except registry.RegistryError as e:
        cls: type[ImageImportError] = next(
            (mine for theirs, mine in _REGISTRY_ERRORS if isinstance(e, theirs)), SourceUnreachable
        )
        raise cls(f"{name}: {e}") from e
    except Exception as e:  # another puller's errors: may work later
        raise SourceUnreachable(f"{name}: {e}") from e


# ------------------------------------------------------------------------------------------- importing


@dataclass
class _Plan:
    """Paths of one import, and how to undo it."""

    name: str
    target: Path
    block: bool
    target_format: TargetFormat
    limit: int | None
    tmp: Path
    scratch: Path
    fsync: bool
    reporter: _Reporter
    head: int = HEAD
    """Block: bytes at the device's start written last (less than HEAD only on tiny devices)."""

    @property
    def output(self) -> Path:
        """Where the image is written: the temporary file, or the device itself."""
        return self.target if self.block else self.tmp

    def cleanup(self) -> None:
        for path in (self.scratch, *(() if self.block else (self.tmp,))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.block:
            with contextlib.suppress(OSError):
                _write_head(self.target, bytes(self.head), fsync=self.fsync)


def _write_head(device: Path, head: bytes, *, fsync: bool) -> None:
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _pwrite_all(fd, memoryview(head), 0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def import_image(
    source: Source,
    target: Path,
    *,
    size: int | None = None,
    volume_mode: VolumeMode = "Filesystem",
    target_format: TargetFormat = "raw",
    progress: ProgressCallback | None = None,
    progress_interval: float = 0.5,
    scratch_dir: Path | None = None,
    timeout: float = 60.0,
    fsync: bool = True,
    transport: httpx.BaseTransport | None = None,
) -> ImportResult:
    """Import ``source`` into ``target`` (see the module docstring).

    ``target``: volume mode ``Filesystem``: the image file to create (``volume_dir / DISK_IMAGE``, as
    CDI writes); its directory must exist; an existing file is replaced only when the import succeeds.
    ``Block``: an existing block device (or a file standing in for one), written in place.
    ``size``: the claim's usable size in bytes: larger images are refused, smaller ones expanded to it
    (Filesystem mode; pass the PVC size less filesystem overhead, as CDI does). For ``Block`` it
    defaults to the device's size. ``target_format``: ``qcow2`` writes a qcow2 file (Filesystem only).
    ``progress``: called on the event loop with :class:`Progress`, at most every ``progress_interval``
    seconds. ``scratch_dir``: where non-raw images are downloaded before conversion (default: beside the
    target; for Block mode the system's temporary directory). ``timeout``: seconds a connection may
    stall. ``fsync``: make the image durable before it is renamed into place (keep it on outside
    benchmarks). ``transport`` replaces httpx's network (tests).

    Raises :class:`ImageImportError` subclasses only; ``.permanent`` says whether to retry. Retrying is
    the caller's job (the DataVolume controller, with backoff); nothing of a failed import remains.
    """
    started = time.monotonic()
    block = volume_mode == "Block"
    name = source.name
    if volume_mode not in ("Filesystem", "Block"):
        raise TargetError(f"{name}: volumeMode {volume_mode!r} is neither Filesystem nor Block")
    if block and target_format != "raw":
        raise TargetError(f"{name}: a Block volume holds a raw image; target_format must be raw")
    target = Path(target)
    if block:
        try:
            mode = target.stat().st_mode
        except OSError as e:
            raise TargetError(f"{name}: the block device {target} cannot be opened ({e.strerror})") from e
        if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
            raise TargetError(f"{name}: {target} is not a block device")
        device_size = await asyncio.to_thread(_device_size, target)
        size = device_size if size is None else min(size, device_size)
    elif not target.parent.is_dir():
        raise TargetError(f"{name}: the volume directory {target.parent} does not exist")
    token = secrets.token_hex(4)
    scratch_root = scratch_dir or (Path(tempfile.gettempdir()) if block else target.parent)
    plan = _Plan(
        name=name,
        target=target,
        block=block,
        target_format=target_format,
        limit=size,
        tmp=target.with_name(f".{target.name}.import-{token}"),
        scratch=scratch_root / f".{target.name}.scratch-{token}",
        fsync=fsync,
        reporter=_Reporter(progress, progress_interval),
        head=min(HEAD, size or 0) if block else HEAD,
    )
    # Left by a crash (SIGKILL skips the cleanup): one import per target at a time, so they are stale.
    stale = [*scratch_root.glob(f".{target.name}.scratch-*")]
    if not block:
        stale += target.parent.glob(f".{target.name}.import-*")
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    try:
        if block:
            await asyncio.to_thread(_write_head, target, bytes(plan.head), fsync=fsync)
        if isinstance(source, RegistrySource):
            pulled = await _pull(source, name)
            result = await _import_file(FileSource(pulled.path), plan)
        elif isinstance(source, S3Source):
            result = await _import_s3(source, plan, timeout)
        elif isinstance(source, FileSource):
            result = await _import_file(source, plan)
        elif isinstance(source, StreamSource):
            result = await _import_stream(
                source.stream.__aiter__(), plan, total=source.total, checksum=source.checksum
            )
        else:
            result = await _import_http(source, plan, timeout, transport)
        await _finalize(plan)
    except ImageImportError:
        await asyncio.to_thread(plan.cleanup)
        raise
    except OSError as e:
        await asyncio.to_thread(plan.cleanup)
        if e.errno == errno.ENOSPC:
            raise TargetError(f"{name}: no space left writing {target}; request a larger volume") from e
        raise TargetError(f"{name}: writing {target} failed: {e}") from e
    except BaseException:
        await asyncio.to_thread(plan.cleanup)
        raise
    final_size = await asyncio.to_thread(_device_size, target) if block else target.stat().st_size
    if not block and target_format == "qcow2":
        final_size = size or result[1]
    return ImportResult(
        path=target,
        source_format=result[0],
        compression=result[2],
        virtual_size=result[1],
        size=final_size,
        transferred=result[3],
        seconds=time.monotonic() - started,
    )


_Outcome = tuple[str, int, Literal["gzip", "xz"] | None, int]
"""(source format, virtual size, compression, bytes transferred)."""


class _Transfer:
    """One download run in a worker thread with a blocking client, which feeds the writer itself: on a
    loaded two-core machine this moves bytes 2-4x faster than an asyncio client (whose per-64-KiB-read
    overhead made the import half as fast as ``curl -o``), and the event loop only receives progress.
    :meth:`cancel` (from the loop) makes it stop at the next chunk, and shuts the socket down so that a
    stalled read returns at once. Subclasses implement :meth:`run` with :meth:`_receive`."""

    def __init__(self, writer: _Writer, on_received: Callable[[int, int | None], None]) -> None:
        self.writer = writer
        self.on_received = on_received
        self.total: int | None = None
        self.received = 0
        self._stop = threading.Event()
        self._socket: socket.socket | None = None

    def run(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        self._stop.set()
        if self._socket is not None:
            with contextlib.suppress(OSError):
                # the plain socket's shutdown, not SSLSocket's (which drops its TLS state under the reader)
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)

    def _receive(self, chunks: Iterable[bytes]) -> None:
        """Receive here, write in a second thread: one batch being written (decompressed, hashed) while
        the next arrives, as ``curl | xz -d`` overlaps the two."""
        batch: list[bytes] = []
        size = 0
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="import-writer") as pool:
            pending: concurrent.futures.Future[None] | None = None
            for chunk in chunks:
                if self._stop.is_set():
                    break
                batch.append(chunk)
                size += len(chunk)
                if size >= CHUNK:
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(self._write, batch, size)
                    batch, size = [], 0
            if pending is not None:
                pending.result()  # the pool's exit waits for it in any case
        if self._stop.is_set():
            return
        if batch:
            self._write(batch, size)
        self.writer.finish()

    def _write(self, batch: list[bytes], size: int) -> None:
        # one buffer: fewer, larger writes, and zero blocks found across receive boundaries
        self.writer.process([b"".join(batch)] if len(batch) > 1 else batch)
        self.received += size
        self.on_received(self.received, self.total)


class _Download(_Transfer):
    """One HTTP transfer with httpx's blocking client (see :class:`_Transfer`)."""

    def __init__(
        self,
        source: HTTPSource,
        writer: _Writer,
        *,
        timeout: float,
        transport: httpx.BaseTransport | None,
        on_received: Callable[[int, int | None], None],
    ) -> None:
        super().__init__(writer, on_received)
        self.source = source
        self.timeout = timeout
        self.transport = transport

    def run(self) -> None:
        source = self.source
        headers = {"Accept-Encoding": "identity", **source.headers}
        try:
            with (
                _http_client(source, self.timeout, self.transport) as client,
                client.stream("GET", source.url, headers=headers) as response,
            ):
                if response.status_code != 200:
                    raise _status_error(source, response)
                with contextlib.suppress(ValueError):
                    self.total = int(response.headers.get("content-length", ""))
                self.writer.expected = self.total
                stream = response.extensions.get("network_stream")
                if stream is not None:
                    self._socket = stream.get_extra_info("socket")
                if self._stop.is_set():
                    return
                self._receive(response.iter_raw())
        except httpx.HTTPError as e:
            if self._stop.is_set():
                return
            raise _http_error(source, e) from e
        finally:
            self.writer.close()


async def _import_http(
    source: HTTPSource, plan: _Plan, timeout: float, transport: httpx.BaseTransport | None
) -> _Outcome:
    parsed = _parse_checksum(source.checksum, plan.name)
    parts = urllib.parse.urlsplit(source.url)
    if parts.scheme not in ("http", "https"):
        raise InvalidSource(f"{plan.name}: not an http or https URL; fix spec.source.http.url")
    writer = _new_writer(plan, parsed, None)
    return await _transfer(
        plan,
        writer,
        parsed,
        lambda on_received: _Download(
            source, writer, timeout=timeout, transport=transport, on_received=on_received
        ),
    )


async def _import_s3(source: S3Source, plan: _Plan, timeout: float) -> _Outcome:
    location = _S3Location.parse(source.url, plan.name)  # a bad URL is refused before anything is created
    writer = _new_writer(plan, None, None)
    return await _transfer(
        plan,
        writer,
        None,
        lambda on_received: _S3Download(source, location, writer, timeout=timeout, on_received=on_received),
    )


async def _transfer(
    plan: _Plan,
    writer: _Writer,
    parsed: tuple[str, str] | None,
    make: Callable[[Callable[[int, int | None], None]], _Transfer],
) -> _Outcome:
    """Run a :class:`_Transfer` in a worker thread, its progress reported on the loop; cancelling the
    caller stops it (and waits for it) before its files are removed."""
    loop = asyncio.get_running_loop()

    def report(received: int, total: int | None) -> None:  # on the loop
        if writer.path is not None:
            plan.reporter.split = writer.path == plan.scratch
            plan.reporter.report("download", received, total)

    def from_thread(received: int, total: int | None) -> None:
        loop.call_soon_threadsafe(report, received, total)

    download = make(from_thread)
    running = asyncio.ensure_future(asyncio.to_thread(download.run))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        download.cancel()
        await asyncio.wait({running})  # its files are removed only once it has stopped
        if not running.cancelled():
            running.exception()
        raise
    return await _after_download(plan, writer, parsed, download.received, download.total)


# ---------------------------------------------------------------------------------------------- S3


_AMAZON_REGION = re.compile(r"(?:^|\.)s3[.-]([a-z0-9-]+)\.amazonaws\.com$")
S3_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "RequestTimeTooSkewed",
    }
)
S3_AUTH_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)


@dataclass(frozen=True)
class _S3Location:
    """Where an S3 URL points, as CDI reads it: endpoint ``scheme://host[:port]``, the first path
    component the bucket, the rest the key (path-style addressing)."""

    endpoint: str
    bucket: str
    key: str
    region: str

    @classmethod
    def parse(cls, url: str, name: str) -> _S3Location:
        parts = urllib.parse.urlsplit(url)
        bucket, _, key = urllib.parse.unquote(parts.path).strip("/").partition("/")
        if parts.scheme not in ("http", "https") or not parts.hostname or not bucket or not key:
            raise InvalidSource(
                f"{name}: not an S3 object URL; fix spec.source.s3.url: http(s)://host[:port]/bucket/key"
            )
        host = parts.hostname if not parts.port else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname:  # an IPv6 literal
            host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
        found = _AMAZON_REGION.search(parts.hostname)
        # the signing region: AWS's from its host name; other servers (radosgw, MinIO) take us-east-1
        region = found.group(1) if found else "us-east-1"
        return cls(f"{parts.scheme}://{host}", bucket, key, region)


class _S3Download(_Transfer):
    """``GetObject`` with boto3 (imported here: only nodes that import from S3 pay for it), streamed
    into the writer (see :class:`_Transfer`). boto3's own retries are off: retrying is the caller's
    job, with the backoff every source gets."""

    def __init__(
        self,
        source: S3Source,
        location: _S3Location,
        writer: _Writer,
        *,
        timeout: float,
        on_received: Callable[[int, int | None], None],
    ) -> None:
        super().__init__(writer, on_received)
        self.source = source
        self.location = location
        self.timeout = timeout
        self._body: Any = None

    def cancel(self) -> None:
        super().cancel()
        if self._socket is None and self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()

    def run(self) -> None:
        import botocore.exceptions

        source, name = self.source, self.source.name
        if bool(source.access_key_id) != bool(source.secret_key):
            raise InvalidSource(
                f"{name}: the secretRef Secret must hold both accessKeyId and secretKey (or give no "
                "secretRef for anonymous access); fix the Secret"
            )
        ca_file = None
        try:
            if source.ca_bundle:
                _check_ca(source.ca_bundle, name)
                ca_file = _ca_file(source.ca_bundle)
            client = self._client(ca_file)
            try:
                response = client.get_object(Bucket=self.location.bucket, Key=self.location.key)
            except botocore.exceptions.ClientError as e:
                raise self._client_error(e) from e
            body = self._body = response["Body"]
            self.total = int(response.get("ContentLength") or 0) or None
            self.writer.expected = self.total
            self._socket = _socket_of(body)
            if self._stop.is_set():
                return
            self._receive(body.iter_chunks(READ_SIZE))
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            if self._stop.is_set():
                return
            raise self._connection_error(e) from e
        except Exception as e:
            # urllib3's errors reach through botocore's streaming body
            if self._stop.is_set() or type(e).__module__.split(".")[0] != "urllib3":
                raise
            raise self._connection_error(e) from e
        finally:
            if self._body is not None:
                with contextlib.suppress(Exception):
                    self._body.close()
            self.writer.close()
            if ca_file is not None:
                with contextlib.suppress(OSError):
                    os.unlink(ca_file)

    def _client(self, ca_file: str | None) -> Any:
        import boto3.session
        import botocore
        import botocore.config

        source = self.source
        anonymous = not source.access_key_id
        config = botocore.config.Config(
            region_name=self.location.region,
            signature_version=botocore.UNSIGNED if anonymous else "s3v4",
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=min(self.timeout, 10.0),
            read_timeout=self.timeout,
        )
        # a session of its own: nothing of the node's own AWS configuration or credentials is used
        session = boto3.session.Session(
            aws_access_key_id=source.access_key_id or None,
            aws_secret_access_key=source.secret_key or None,
            region_name=self.location.region,
        )
        return session.client(
            "s3",
            endpoint_url=self.location.endpoint,
            config=config,
            verify=ca_file if ca_file is not None else True,
        )

    def _where(self) -> str:
        return f"object {self.location.key!r} in bucket {self.location.bucket!r}"

    def _client_error(self, e: Any) -> ImageImportError:
        error = e.response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = int((e.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        name, where = self.source.name, self._where()
        if code == "NoSuchBucket":
            return SourceNotFound(
                f"{name}: bucket {self.location.bucket!r} does not exist (NoSuchBucket); fix "
                "spec.source.s3.url"
            )
        if code in ("NoSuchKey", "NotFound") or status == 404:
            return SourceNotFound(f"{name}: {where} does not exist ({code or 404}); fix spec.source.s3.url")
        if code in S3_AUTH_CODES or status in (401, 403):
            hint = (
                "check accessKeyId and secretKey in the secretRef Secret"
                if self.source.access_key_id
                else "give credentials in secretRef (a Secret with accessKeyId and secretKey)"
            )
            return SourceUnauthorized(f"{name}: the S3 server refused access to {where} ({code}); {hint}")
        if code in S3_TRANSIENT_CODES or status >= 500 or status in (408, 429):
            return SourceUnreachable(f"{name}: the S3 server answered {status} {code} for {where}; retrying")
        message = error.get("Message") or ""
        return InvalidSource(
            f"{name}: the S3 server answered {status} {code} {message} for {where}; check the URL and "
            "the object"
        )

    def _connection_error(self, e: BaseException) -> ImageImportError:
        name = self.source.name
        cause: BaseException | None = e
        while cause is not None:
            if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cause):
                return SourceUntrusted(
                    f"{name}: the S3 server's TLS certificate does not verify; give the CA that signed it in "
                    "the DataVolume's certConfigMap"
                )
            cause = cause.__cause__ or cause.__context__
        return SourceUnreachable(f"{name}: reading {self._where()} failed: {type(e).__name__}: {e}; retrying")


def _ca_file(ca_bundle: str) -> str:
    """A file with the system's CAs and ``ca_bundle`` (botocore takes a file, and only one)."""
    paths = ssl.get_default_verify_paths()
    system = ""
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            with open(candidate) as f:
                system = f.read()
            break
    fd, path = tempfile.mkstemp(prefix="kubevisor-s3-ca-", suffix=".pem")
    with os.fdopen(fd, "w") as f:
        f.write(system.rstrip("\n") + "\n" + ca_bundle.strip() + "\n")
    return path


def _socket_of(body: Any) -> socket.socket | None:
    """The socket under a botocore streaming body (urllib3 response -> connection -> socket), to shut it
    down on cancel; None where the libraries keep it elsewhere."""
    raw = getattr(body, "_raw_stream", None)
    connection = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _new_writer(plan: _Plan, parsed: tuple[str, str] | None, total: int | None) -> _Writer:
    return _Writer(
        name=plan.name,
        # raw for a qcow2 target goes to scratch first, to be converted from there
        raw_path=plan.scratch if plan.target_format == "qcow2" else plan.output,
        scratch_path=plan.scratch,
        block=plan.block,
        limit=plan.limit,
        checksum=parsed,
        expected=total,
    )


async def _import_stream(
    chunks: AsyncIterator[bytes], plan: _Plan, *, total: int | None, checksum: str | None
) -> _Outcome:
    parsed = _parse_checksum(checksum, plan.name)
    writer = _new_writer(plan, parsed, total)
    received = 0

    def on_received(n: int) -> None:
        nonlocal received
        received += n
        if writer.path is None:  # the format is not known yet: it decides how the percentage is split
            return
        plan.reporter.split = writer.path == plan.scratch
        plan.reporter.report("download", received, total)

    try:
        await _pump(chunks, writer, on_received)
    finally:
        writer.close()
    return await _after_download(plan, writer, parsed, received, total)


async def _after_download(
    plan: _Plan, writer: _Writer, parsed: tuple[str, str] | None, received: int, total: int | None
) -> _Outcome:
    """Everything arrived: verify it, then convert, or finish the raw image."""
    if total is not None and received != total:
        raise SourceUnreachable(
            f"{plan.name}: the transfer ended after {received} of {total} bytes; retrying"
        )
    plan.reporter.split = writer.path == plan.scratch
    plan.reporter.report("download", received, total, force=True)
    writer.verify(parsed)
    if writer.path == plan.scratch:  # a non-raw image, or raw for a qcow2 target
        fmt, vsize = await _convert_into(plan, plan.scratch)
        return fmt, vsize, writer.compression, received
    vsize = writer.offset
    if plan.block:
        head = bytes(writer.head).ljust(plan.head, b"\x00")
        await asyncio.to_thread(_finish_block, plan.target, head, plan.fsync)
        return "raw", vsize, writer.compression, received
    # qemu-img has the last word on the format: an image whose magic the sniffer does not know (bochs,
    # cloop, dmg...) is converted rather than copied.
    found, _ = await _inspect(plan.tmp, plan.name, None)
    if found != "raw":
        plan.scratch = plan.tmp.with_name(plan.tmp.name + ".source")
        await asyncio.to_thread(os.replace, plan.tmp, plan.scratch)
        fmt, vsize = await _convert_into(plan, plan.scratch)
        return fmt, vsize, writer.compression, received
    await asyncio.to_thread(_expand_raw, plan.tmp, vsize, plan.limit, plan.fsync)
    return "raw", vsize, writer.compression, received


def _expand_raw(path: Path, written: int, size: int | None, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, max(written, size or 0))
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _finish_block(device: Path, head: bytes, fsync: bool) -> None:
    """Everything past the head is written: make it durable, then write the head (see the module
    docstring)."""
    if fsync:
        _fsync_path(device)
    _write_head(device, head, fsync=fsync)


async def _convert_into(plan: _Plan, image: Path) -> tuple[str, int]:
    """Check ``image`` with qemu-img info and convert it into the output (removing it if it is the
    scratch file); returns its format and virtual size."""
    fmt, vsize = await _inspect(image, plan.name, plan.limit)
    await _convert(
        image,
        fmt,
        plan.output,
        plan.target_format,
        existing=plan.block,
        name=plan.name,
        vsize=vsize,
        reporter=plan.reporter,
    )
    if image == plan.scratch:
        await asyncio.to_thread(image.unlink)
    if plan.block:
        if plan.fsync:
            await asyncio.to_thread(_fsync_path, plan.target)
    elif plan.target_format == "raw":
        await asyncio.to_thread(_expand_raw, plan.tmp, vsize, plan.limit, plan.fsync)
    else:
        if plan.limit and plan.limit > vsize:
            await _run(resize_argv(plan.tmp, "qcow2", plan.limit), f"{plan.name}: expanding the image")
        if plan.fsync:
            await asyncio.to_thread(_fsync_path, plan.tmp)
    return fmt, vsize


async def _import_file(source: FileSource, plan: _Plan) -> _Outcome:
    path = Path(source.path)
    try:
        head, length = await asyncio.to_thread(_read_head, path)
    except OSError as e:
        raise InvalidSource(f"{plan.name}: the file cannot be read ({e.strerror})") from e
    found = sniff(head)
    if found.compression is not None or (plan.block and found.format == "raw"):
        # compressed: decompress as a stream; raw onto a device: the streaming writer writes its head last
        return await _import_stream(_file_chunks(path), plan, total=length, checksum=source.checksum)
    if found.format is None:
        raise InvalidImage(f"{plan.name}: {found.reason}; point the source at a disk image")
    parsed = _parse_checksum(source.checksum, plan.name)
    if parsed is not None:
        await asyncio.to_thread(_verify_file, path, parsed, plan.name)
    # an uncompressed local file: qemu-img converts it directly (no scratch copy; holes stay holes)
    fmt, vsize = await _convert_into(plan, path)
    return fmt, vsize, None, length


def _read_head(path: Path) -> tuple[bytes, int]:
    with path.open("rb") as f:
        return f.read(PROBE), os.fstat(f.fileno()).st_size


def _verify_file(path: Path, checksum: tuple[str, str], name: str) -> None:
    hasher = hashlib.new(checksum[0])
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(4 * CHUNK):
            hasher.update(chunk)
    if hasher.hexdigest() != checksum[1]:
        raise ChecksumMismatch(
            f"{name}: {checksum[0]} of the file is {hasher.hexdigest()}, expected {checksum[1]}; fix the "
            "checksum or the source"
        )


async def _finalize(plan: _Plan) -> None:
    """Filesystem: rename the finished image into place and make the rename durable."""
    if plan.block:
        return
    await asyncio.to_thread(os.replace, plan.tmp, plan.target)
    if plan.fsync:
        await asyncio.to_thread(_fsync_path, plan.target.parent)
