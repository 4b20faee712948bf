"""Imports from a real HTTP(S) server on loopback, of images made with real qemu-img, checked with
``qemu-img compare``; and that nothing of a failed import remains."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubevisor.storage import importing, registry
from tests.unit.storage import imageserving

MiB = 1 << 20
IMAGE_SIZE = 8 * MiB + 512  # not a multiple of the sparse block: the tail is written, not skipped


@dataclass(frozen=True)
class Images:
    root: Path
    raw: Path

    def __getitem__(self, name: str) -> Path:
        return self.root / name


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """raw (random data with zero runs), and the same disk as qcow2, vmdk, vhdx, gzip, xz, qcow2.gz,
    an ISO, and some files that are no disk images."""
    root = tmp_path_factory.mktemp("images")
    raw = root / "disk.raw"
    with raw.open("wb") as f:
        f.write(bytes(446) + os.urandom(66))  # an MBR-like first sector
        for i in range(IMAGE_SIZE // MiB):
            f.write(os.urandom(MiB // 2) if i % 3 else bytes(MiB // 2))
            f.write(bytes(MiB // 2) if i % 2 else os.urandom(MiB // 2))
        f.truncate(IMAGE_SIZE)
    _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(root / "disk.qcow2"))
    _qemu_img("convert", "-f", "raw", "-O", "vmdk", str(raw), str(root / "disk.vmdk"))
    _qemu_img("convert", "-f", "raw", "-O", "vhdx", str(raw), str(root / "disk.vhdx"))
    (root / "disk.raw.gz").write_bytes(gzip.compress(raw.read_bytes(), 1))
    half = IMAGE_SIZE // 2
    data = raw.read_bytes()  # two gzip members, as `cat a.gz b.gz` makes
    (root / "multi.gz").write_bytes(gzip.compress(data[:half], 1) + gzip.compress(data[half:], 1))
    (root / "disk.raw.xz").write_bytes(lzma.compress(data, preset=0))
    (root / "disk.qcow2.gz").write_bytes(gzip.compress((root / "disk.qcow2").read_bytes(), 1))
    # misleading names: the importer must look at the bytes
    shutil.copy(root / "disk.raw.xz", root / "looks-like.qcow2")
    iso_dir = root / "iso"
    iso_dir.mkdir()
    (iso_dir / "hello.txt").write_text("hello from an ISO\n")
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-V", "TEST", "-o", str(root / "cd.iso"), str(iso_dir)],
        check=True,
        capture_output=True,
    )
    (root / "page.html").write_text("<!DOCTYPE html>\n<html><body>Download page</body></html>\n")
    (root / "notes.txt").write_text("this is a text file\n" * 500)
    (root / "empty.img").write_bytes(b"")
    _qemu_img("create", "-f", "qcow2", str(root / "big.qcow2"), "64M")
    _qemu_img(
        "create", "-f", "qcow2", "-b", str(raw), "-F", "raw", str(root / "overlay.qcow2")
    )  # a backing file: would read the node's files
    (root / "disk.zst").write_bytes(b"(\xb5/\xfd" + os.urandom(100))
    return Images(root, raw)


@pytest.fixture(scope="module")
def server(images: Images) -> Iterator[imageserving.ImageServer]:
    with imageserving.serving(images.root) as srv:
        yield srv


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    directory = tmp_path / "volume"
    directory.mkdir()
    return directory


def same_disk(source: Path, target: Path, *, source_format: str = "raw", target_format: str = "raw") -> None:
    """Guest-visible contents equal (an expanded target's extra space must be zeros)."""
    result = subprocess.run(
        ["qemu-img", "compare", "-f", source_format, "-F", target_format, str(source), str(target)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def read(path: Path) -> bytes:
    return path.read_bytes()


def qemu_info(path: Path) -> str:
    return subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True, text=True
    ).stdout


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class Recorder:
    def __init__(self) -> None:
        self.reports: list[importing.Progress] = []

    def __call__(self, progress: importing.Progress) -> None:
        self.reports.append(progress)


# ------------------------------------------------------------------------------------ good imports


@pytest.mark.parametrize(
    "case",
    [
        ("disk.raw", "raw", None),
        ("disk.qcow2", "qcow2", None),
        ("disk.raw.gz", "raw", "gzip"),
        ("multi.gz", "raw", "gzip"),
        ("disk.raw.xz", "raw", "xz"),
        ("disk.qcow2.gz", "qcow2", "gzip"),
        ("looks-like.qcow2", "raw", "xz"),
        ("disk.vmdk", "vmdk", None),
        ("disk.vhdx", "vhdx", None),
    ],
)
async def test_http_import(
    server: imageserving.ImageServer, images: Images, volume: Path, case: tuple[str, str, str | None]
) -> None:
    name, fmt, compression = case
    target = volume / importing.DISK_IMAGE
    recorder = Recorder()
    claim = 16 * MiB
    result = await importing.import_image(
        importing.HTTPSource(f"{server.url}/{name}"),
        target,
        size=claim,
        progress=recorder,
        progress_interval=0,
    )
    assert (result.source_format, result.compression) == (fmt, compression)
    assert result.virtual_size == IMAGE_SIZE or fmt != "raw"
    assert result.size == claim == target.stat().st_size  # expanded to the claim, as CDI does
    assert result.transferred == (images.root / name).stat().st_size
    same_disk(images.raw, target)
    assert target.stat().st_blocks * 512 < claim  # sparse: zero runs and the expansion are holes
    assert leftovers(volume) == [importing.DISK_IMAGE]
    assert recorder.reports[-1].percent == "100.00%"
    assert recorder.reports[0].stage == "download"
    percents = [float(r.percent.rstrip("%")) for r in recorder.reports]
    assert percents == sorted(percents)


async def test_iso_imports_as_raw(server: imageserving.ImageServer, images: Images, volume: Path) -> None:
    target = volume / importing.DISK_IMAGE
    result = await importing.import_image(importing.HTTPSource(f"{server.url}/cd.iso"), target, size=4 * MiB)
    assert result.source_format == "raw"
    same_disk(images["cd.iso"], target)
    assert b"CD001" in target.read_bytes()[32768:32774]


async def test_existing_target_replaced_only_on_success(
    server: imageserving.ImageServer, images: Images, volume: Path
) -> None:
    target = volume / importing.DISK_IMAGE
    target.write_bytes(b"old disk")
    with pytest.raises(importing.SourceNotFound):
        await importing.import_image(importing.HTTPSource(f"{server.url}/missing.img"), target, size=16 * MiB)
    assert target.read_bytes() == b"old disk"
    await importing.import_image(importing.HTTPSource(f"{server.url}/disk.raw"), target, size=16 * MiB)
    same_disk(images.raw, target)


async def test_stale_files_of_a_crashed_import_removed(
    server: imageserving.ImageServer, volume: Path
) -> None:
    (volume / ".disk.img.import-0badf00d").write_bytes(b"half")
    (volume / ".disk.img.scratch-0badf00d").write_bytes(b"half")
    await importing.import_image(importing.HTTPSource(f"{server.url}/disk.qcow2"), volume / "disk.img")
    assert leftovers(volume) == ["disk.img"]


async def test_qcow2_target(server: imageserving.ImageServer, images: Images, volume: Path) -> None:
    for name in ("disk.raw.xz", "disk.qcow2"):
        target = volume / f"{name}.qcow2"
        result = await importing.import_image(
            importing.HTTPSource(f"{server.url}/{name}"), target, size=16 * MiB, target_format="qcow2"
        )
        same_disk(images.raw, target, target_format="qcow2")
        assert result.size == 16 * MiB
        info = qemu_info(target)
        assert '"format": "qcow2"' in info and f'"virtual-size": {16 * MiB}' in info


async def test_checksums(server: imageserving.ImageServer, images: Images, volume: Path) -> None:
    data = images["disk.raw.gz"].read_bytes()
    for checksum in (f"sha256:{hashlib.sha256(data).hexdigest()}", f"md5:{hashlib.md5(data).hexdigest()}"):
        target = volume / f"{checksum[:3]}.img"
        await importing.import_image(
            importing.HTTPSource(f"{server.url}/disk.raw.gz", checksum=checksum), target, size=16 * MiB
        )
        same_disk(images.raw, target)


async def test_no_size_keeps_virtual_size(
    server: imageserving.ImageServer, images: Images, volume: Path
) -> None:
    target = volume / importing.DISK_IMAGE
    result = await importing.import_image(importing.HTTPSource(f"{server.url}/disk.qcow2"), target)
    assert result.size == IMAGE_SIZE == target.stat().st_size


# ----------------------------------------------------------------------------------- TLS and auth


@pytest.fixture(scope="module")
def tls_server(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    ca = imageserving.make_ca(tmp_path_factory.mktemp("pki"))
    with imageserving.serving(images.root, tls=ca, credentials=("importer", "s3cret")) as srv:
        yield srv.url, ca.ca_pem


async def test_https_with_ca_and_basic_auth(
    tls_server: tuple[str, str], images: Images, volume: Path
) -> None:
    url, ca = tls_server
    target = volume / importing.DISK_IMAGE
    source = importing.HTTPSource(
        f"{url}/disk.qcow2", ca_bundle=ca, access_key_id="importer", secret_key="s3cret"
    )
    await importing.import_image(source, target, size=16 * MiB)
    same_disk(images.raw, target)


async def test_https_untrusted(tls_server: tuple[str, str], volume: Path) -> None:
    url, _ = tls_server
    with pytest.raises(importing.SourceUntrusted, match="certConfigMap") as caught:
        await importing.import_image(
            importing.HTTPSource(f"{url}/disk.raw"), volume / "disk.img", size=16 * MiB
        )
    assert caught.value.permanent
    assert leftovers(volume) == []


async def test_basic_auth_refused(tls_server: tuple[str, str], volume: Path) -> None:
    url, ca = tls_server
    for key in (None, "wrong"):
        source = importing.HTTPSource(
            f"{url}/disk.raw", ca_bundle=ca, access_key_id="importer", secret_key=key
        )
        with pytest.raises(importing.SourceUnauthorized, match="401") as caught:
            await importing.import_image(source, volume / "disk.img", size=16 * MiB)
        assert caught.value.permanent
    assert leftovers(volume) == []


async def test_bad_ca_bundle(tls_server: tuple[str, str], volume: Path) -> None:
    url, _ = tls_server
    source = importing.HTTPSource(f"{url}/disk.raw", ca_bundle="-----BEGIN CERTIFICATE-----\nnope\n")
    with pytest.raises(importing.InvalidSource, match="certConfigMap"):
        await importing.import_image(source, volume / "disk.img", size=16 * MiB)


# ---------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("missing.img", importing.SourceNotFound, "404"),
        ("page.html", importing.InvalidImage, "HTML"),
        ("notes.txt", importing.InvalidImage, "text"),
        ("empty.img", importing.InvalidImage, "empty"),
        ("disk.zst", importing.InvalidImage, "zstd"),
        ("overlay.qcow2", importing.InvalidImage, "backing file"),
        ("big.qcow2", importing.ImageTooLarge, f"virtual size {64 * MiB} > requested {16 * MiB}"),
    ],
)
async def test_permanent_failures(
    server: imageserving.ImageServer, volume: Path, path: str, error: type[Exception], message: str
) -> None:
    url = f"{server.url}/{path}"
    with pytest.raises(error, match=message) as caught:
        await importing.import_image(importing.HTTPSource(url), volume / "disk.img", size=16 * MiB)
    assert isinstance(caught.value, importing.PermanentImportError) and caught.value.permanent
    assert url in str(caught.value)
    assert leftovers(volume) == []


async def test_raw_larger_than_claim(server: imageserving.ImageServer, volume: Path) -> None:
    for name in ("disk.raw", "disk.raw.xz"):
        with pytest.raises(
            importing.ImageTooLarge, match=r"image is larger than the claim: virtual size .*> requested"
        ):
            await importing.import_image(
                importing.HTTPSource(f"{server.url}/{name}"), volume / "d.img", size=4 * MiB
            )
    assert leftovers(volume) == []


async def test_wrong_checksum(server: imageserving.ImageServer, volume: Path) -> None:
    source = importing.HTTPSource(f"{server.url}/disk.qcow2", checksum="sha256:" + "0" * 64)
    with pytest.raises(importing.ChecksumMismatch, match="expected 0000") as caught:
        await importing.import_image(source, volume / "disk.img", size=16 * MiB)
    assert caught.value.permanent
    assert leftovers(volume) == []
    with pytest.raises(importing.InvalidSource, match="checksum"):
        await importing.import_image(
            importing.HTTPSource(f"{server.url}/disk.raw", checksum="crc:1"), volume / "disk.img"
        )


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2", "disk.raw.xz"])
async def test_connection_cut_is_transient(server: imageserving.ImageServer, volume: Path, name: str) -> None:
    with pytest.raises(importing.SourceUnreachable) as caught:
        await importing.import_image(
            importing.HTTPSource(f"{server.url}/cut/{name}"), volume / "disk.img", size=16 * MiB
        )
    assert not caught.value.permanent
    assert leftovers(volume) == []


async def test_server_busy_is_transient(server: imageserving.ImageServer, volume: Path) -> None:
    with pytest.raises(importing.SourceUnreachable, match="503") as caught:
        await importing.import_image(importing.HTTPSource(f"{server.url}/busy"), volume / "disk.img")
    assert caught.value.retry_after == 7.0


async def test_connection_refused_is_transient(volume: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(importing.SourceUnreachable, match=f"127.0.0.1:{port}"):
        await importing.import_image(
            importing.HTTPSource(f"http://127.0.0.1:{port}/x.img"), volume / "disk.img"
        )


async def test_stall_times_out_and_cancel_cleans_up(server: imageserving.ImageServer, volume: Path) -> None:
    with pytest.raises(importing.SourceUnreachable, match="timed out"):
        await importing.import_image(
            importing.HTTPSource(f"{server.url}/stall/disk.raw"),
            volume / "disk.img",
            size=16 * MiB,
            timeout=0.5,
        )
    assert leftovers(volume) == []
    started = asyncio.Event()

    def on_progress(progress: importing.Progress) -> None:
        started.set()

    task = asyncio.ensure_future(
        importing.import_image(
            importing.HTTPSource(f"{server.url}/stall/disk.raw"), volume / "disk.img", size=16 * MiB,
            progress=on_progress, progress_interval=0,
        )
    )  # fmt: skip
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(volume) == []


async def test_unsupported_url(volume: Path) -> None:
    with pytest.raises(importing.InvalidSource, match="http or https"):
        await importing.import_image(importing.HTTPSource("ftp://127.0.0.1/x.img"), volume / "disk.img")


async def test_missing_volume_directory(server: imageserving.ImageServer, tmp_path: Path) -> None:
    with pytest.raises(importing.TargetError, match="does not exist"):
        await importing.import_image(
            importing.HTTPSource(f"{server.url}/disk.raw"), tmp_path / "nope" / "disk.img"
        )


# ------------------------------------------------------------------------------------ block volumes


@pytest.fixture
def device(tmp_path: Path) -> Path:
    """A file standing in for a block device (written in place, never truncated), holding old data."""
    path = tmp_path / "device"
    path.write_bytes(b"\xaa" * (12 * MiB))
    return path


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2", "disk.raw.xz"])
async def test_block_import(
    server: imageserving.ImageServer, images: Images, device: Path, name: str
) -> None:
    result = await importing.import_image(
        importing.HTTPSource(f"{server.url}/{name}"), device, volume_mode="Block", scratch_dir=device.parent
    )
    data = read(device)
    assert result.size == 12 * MiB == len(data)
    assert data[:IMAGE_SIZE] == images.raw.read_bytes()
    assert leftovers(device.parent) == ["device"]


async def test_block_failure_leaves_no_header(
    server: imageserving.ImageServer, images: Images, device: Path
) -> None:
    await importing.import_image(importing.HTTPSource(f"{server.url}/disk.raw"), device, volume_mode="Block")
    with pytest.raises(importing.SourceUnreachable):
        await importing.import_image(
            importing.HTTPSource(f"{server.url}/cut/disk.raw"), device, volume_mode="Block"
        )
    assert read(device)[: importing.HEAD] == bytes(importing.HEAD)
    with pytest.raises(importing.ImageTooLarge):
        await importing.import_image(
            importing.HTTPSource(f"{server.url}/big.qcow2"),
            device,
            volume_mode="Block",
            scratch_dir=device.parent,
        )
    assert read(device)[: importing.HEAD] == bytes(importing.HEAD)
    assert leftovers(device.parent) == ["device"]


# ----------------------------------------------------------------------------- files and streams


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2", "disk.raw.xz", "disk.vmdk"])
async def test_file_source(images: Images, volume: Path, name: str) -> None:
    recorder = Recorder()
    target = volume / importing.DISK_IMAGE
    data = images[name].read_bytes()
    source = importing.FileSource(images[name], checksum=f"sha256:{hashlib.sha256(data).hexdigest()}")
    await importing.import_image(source, target, size=16 * MiB, progress=recorder, progress_interval=0)
    same_disk(images.raw, target)
    assert leftovers(volume) == [importing.DISK_IMAGE]
    assert recorder.reports[-1].percent == "100.00%"


async def test_file_source_failures(images: Images, volume: Path) -> None:
    with pytest.raises(importing.InvalidSource, match="cannot be read"):
        await importing.import_image(importing.FileSource(images["nothing"]), volume / "disk.img")
    with pytest.raises(importing.ChecksumMismatch):
        await importing.import_image(
            importing.FileSource(images.raw, checksum="md5:" + "1" * 32), volume / "d.img"
        )
    with pytest.raises(importing.InvalidImage, match="HTML"):
        await importing.import_image(importing.FileSource(images["page.html"]), volume / "disk.img")
    assert leftovers(volume) == []


async def _chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    data = read(path)
    for i in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[i : i + size]


@pytest.mark.parametrize(("name", "chunk"), [("disk.raw.gz", 1000), ("disk.qcow2", 65536), ("disk.raw", 3)])
async def test_stream_source(images: Images, volume: Path, name: str, chunk: int) -> None:
    if chunk == 3:  # a pathological chunking of the first bytes, then big ones
        stream: AsyncIterator[bytes] = _mixed(images[name])
    else:
        stream = _chunks(images[name], chunk)
    source = importing.StreamSource(stream, total=images[name].stat().st_size)
    result = await importing.import_image(source, volume / importing.DISK_IMAGE, size=16 * MiB)
    assert result.transferred == images[name].stat().st_size
    same_disk(images.raw, volume / importing.DISK_IMAGE)


async def _mixed(path: Path) -> AsyncIterator[bytes]:
    data = read(path)
    for i in range(0, 30, 3):
        yield data[i : i + 3]
    for i in range(30, len(data), 300_001):
        yield data[i : i + 300_001]


async def test_stream_shorter_than_announced(images: Images, volume: Path) -> None:
    source = importing.StreamSource(_chunks(images.raw, MiB), total=IMAGE_SIZE + 1, name="upload of vm-disk")
    with pytest.raises(importing.SourceUnreachable, match="upload of vm-disk"):
        await importing.import_image(source, volume / importing.DISK_IMAGE, size=16 * MiB)
    assert leftovers(volume) == []


# --------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Pulled:
    path: Path


class _Puller:
    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.asked: list[tuple[str, Any, str | None]] = []

    async def pull(self, image: str, *, credentials: Any = None, ca_bundle: str | None = None) -> _Pulled:
        self.asked.append((image, credentials, ca_bundle))
        if image.endswith(":missing"):
            raise registry.BadImage(f"image {image}: no disk under /disk")
        if image.endswith(":tampered"):
            raise registry.DigestMismatch(f"image {image}: blob sha256:0 arrived as sha256:1")
        if image.endswith(":down"):
            raise registry.RegistryUnreachable(f"image {image}: connection refused")
        return _Pulled(self.disk)


async def test_registry_source_seam(images: Images, volume: Path) -> None:
    puller = _Puller(images["disk.qcow2"])
    source = importing.RegistrySource("quay.io/containerdisks/fedora:40", puller, credentials="creds")
    await importing.import_image(source, volume / importing.DISK_IMAGE, size=16 * MiB)
    same_disk(images.raw, volume / importing.DISK_IMAGE)
    assert puller.asked == [("quay.io/containerdisks/fedora:40", "creds", None)]
    assert images["disk.qcow2"].exists()  # the node's cache is never consumed
    # the registry's errors: permanent for what retrying cannot fix, for a DataVolume
    for tag, error in [
        ("missing", importing.InvalidImage),
        ("tampered", importing.ChecksumMismatch),
        ("down", importing.SourceUnreachable),
    ]:
        with pytest.raises(error, match=f"x/y:{tag}"):
            await importing.import_image(importing.RegistrySource(f"x/y:{tag}", puller), volume / "other.img")
    with pytest.raises(importing.InvalidSource, match="certConfigMap"):
        await importing.import_image(
            importing.RegistrySource("x/y:1", puller, ca_bundle="not a PEM"), volume / "other.img"
        )
    assert leftovers(volume) == [importing.DISK_IMAGE]


# ------------------------------------------------------------------------------------- pure parts


def test_sniff() -> None:
    assert importing.sniff(gzip.compress(b"x")).compression == "gzip"
    assert importing.sniff(lzma.compress(b"x")).compression == "xz"
    assert importing.sniff(b"QFI\xfb\x00\x00\x00\x03" + bytes(100)).format == "qcow2"
    assert importing.sniff(bytes(0x40) + b"\x7f\x10\xda\xbe" + bytes(100)).format == "vdi"
    assert importing.sniff(bytes(512)).format == "raw"
    assert importing.sniff(b"[" + bytes(511)).format == "raw"  # binary, whatever the first byte
    assert importing.sniff(b"  <html>").format is None
    assert importing.sniff("héllo wörld\n".encode() * 1000).format is None
    assert "empty" in importing.sniff(b"").reason


def test_format_percent() -> None:
    assert importing.format_percent(0.45671) == "45.67%"
    assert importing.format_percent(1) == "100.00%"
    assert importing.format_percent(None) == "N/A"


def test_argv() -> None:
    argv = importing.convert_argv(Path("/s/x"), "qcow2", Path("/dev/vdb"), "raw", existing=True)
    assert argv[:2] == ["qemu-img", "convert"] and "-n" in argv and "-W" in argv
    assert argv[-2:] == ["/s/x", "/dev/vdb"] and argv[argv.index("-f") + 1] == "qcow2"
    assert importing.info_argv(Path("/s/x"))[0] == "prlimit"


def test_errors_are_classified() -> None:
    assert importing.SourceUnreachable("x").permanent is False
    for cls in (
        importing.SourceNotFound,
        importing.ChecksumMismatch,
        importing.InvalidImage,
        importing.ImageTooLarge,
    ):
        assert cls("x").permanent is True
        assert issubclass(cls, importing.ImageImportError)


def test_image_cache_is_a_registry_puller(tmp_path: Path) -> None:
    from kubevisor.storage import registry

    puller: importing.RegistryPuller = registry.ImageCache(tmp_path)  # checked by mypy: the seam fits
    assert callable(puller.pull)


@pytest.mark.parametrize("kind", ["gzip", "xz"])
def test_decoder_concatenated_streams_any_chunking(kind: str) -> None:
    """Members/streams whose output exceeds one decompression step, fed in any chunk size (a member's
    end in the middle of a step once made zlib's leftover input count twice)."""
    a = os.urandom(3 * MiB) + bytes(5 * MiB)
    b = bytes(2 * MiB) + os.urandom(3 * MiB)
    if kind == "gzip":
        blob = gzip.compress(a, 1) + gzip.compress(b, 1)
    else:
        blob = lzma.compress(a, preset=0) + lzma.compress(b, preset=0) + bytes(8)  # with stream padding
    for chunk in (MiB, 7777, len(blob)):
        decoder = importing._Decoder("gzip" if kind == "gzip" else "xz")
        out = [piece for i in range(0, len(blob), chunk) for piece in decoder.feed(blob[i : i + chunk])]
        assert b"".join(out) == a + b
        assert decoder.complete()
    truncated = importing._Decoder("gzip" if kind == "gzip" else "xz")
    list(truncated.feed(blob[: len(blob) // 3]))
    assert not truncated.complete()


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2", "disk.raw.gz"])
async def test_file_source_onto_block(images: Images, device: Path, name: str) -> None:
    await importing.import_image(importing.FileSource(images[name]), device, volume_mode="Block")
    assert read(device)[:IMAGE_SIZE] == read(images.raw)
    assert leftovers(device.parent) == ["device"]
