"""The S3 source of the import engine without an S3 server: URLs it refuses, credentials it needs in
pairs, an endpoint that does not answer, objects cut short or stalled (transient errors: retried) and
cancellation. Imports from a real radosgw: tests/integration/agent/test_import_sources.py."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubevisor.storage import importing
from tests.unit.storage import imageserving

MiB = 1024 * 1024


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    path = tmp_path / "volume"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/key.img",  # CDI reads the endpoint from the URL: it must have one
        "http://127.0.0.1:9000/bucket-only",
        "http://127.0.0.1:9000/",
        "ftp://127.0.0.1/bucket/key",
    ],
)
async def test_urls_that_name_no_object_are_refused(volume: Path, url: str) -> None:
    with pytest.raises(importing.InvalidSource, match=r"spec\.source\.s3\.url"):
        await importing.import_image(importing.S3Source(url), volume / importing.DISK_IMAGE)
    assert not os.listdir(volume)


def test_locations() -> None:
    parse = importing._S3Location.parse
    where = parse("https://s3.eu-west-1.amazonaws.com/images/a%20b/disk.qcow2", "x")
    assert where == importing._S3Location(
        "https://s3.eu-west-1.amazonaws.com", "images", "a b/disk.qcow2", "eu-west-1"
    )
    assert parse("http://[::1]:7480/b/k", "x").endpoint == "http://[::1]:7480"
    assert parse("http://rgw.lab:7480/b/k", "x").region == "us-east-1"


async def test_keys_come_in_pairs(volume: Path) -> None:
    source = importing.S3Source("http://127.0.0.1:9/bucket/key", access_key_id="AK")
    with pytest.raises(importing.InvalidSource, match="both accessKeyId and secretKey"):
        await importing.import_image(source, volume / importing.DISK_IMAGE)
    assert not os.listdir(volume)


async def test_an_endpoint_that_does_not_answer_is_retried(volume: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        source = importing.S3Source(f"http://127.0.0.1:{port}/bucket/key", "AK", "SK")
        with pytest.raises(importing.SourceUnreachable, match="retrying") as caught:
            await importing.import_image(source, volume / importing.DISK_IMAGE)
    assert caught.value.permanent is False
    assert not os.listdir(volume)


async def test_a_bad_ca_bundle_is_refused(volume: Path) -> None:
    source = importing.S3Source("https://127.0.0.1:9/bucket/key", ca_bundle="not a certificate")
    with pytest.raises(importing.InvalidSource, match="certConfigMap"):
        await importing.import_image(source, volume / importing.DISK_IMAGE)


# The loopback HTTP server answers anonymous path-style GETs as an S3 server would for a public object
# (``/<bucket>/<key>``): its ``cut`` and ``stall`` paths are then buckets whose objects break off.


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("objects")
    (root / "public").mkdir()
    with open(root / "public" / "disk.raw", "wb") as f:
        f.write(os.urandom(3 * MiB))
        f.truncate(8 * MiB)
    (root / "disk.raw").symlink_to(root / "public" / "disk.raw")  # what /cut/... and /stall/... serve
    return root


@pytest.fixture
def server(objects: Path) -> Iterator[imageserving.ImageServer]:
    with imageserving.serving(objects) as s:
        yield s


async def test_anonymous_public_object(server: imageserving.ImageServer, objects: Path, volume: Path) -> None:
    result = await importing.import_image(
        importing.S3Source(f"{server.url}/public/disk.raw"), volume / importing.DISK_IMAGE, size=16 * MiB
    )
    assert (result.source_format, result.virtual_size, result.size) == ("raw", 8 * MiB, 16 * MiB)
    data = await asyncio.to_thread((volume / importing.DISK_IMAGE).read_bytes)
    assert data == (objects / "public" / "disk.raw").read_bytes() + bytes(8 * MiB)


async def test_object_cut_short_is_transient(server: imageserving.ImageServer, volume: Path) -> None:
    with pytest.raises(importing.SourceUnreachable) as caught:
        await importing.import_image(
            importing.S3Source(f"{server.url}/cut/disk.raw"), volume / importing.DISK_IMAGE, size=16 * MiB
        )
    assert not caught.value.permanent
    assert not os.listdir(volume)


async def test_stall_times_out_and_cancel_cleans_up(server: imageserving.ImageServer, volume: Path) -> None:
    with pytest.raises(importing.SourceUnreachable, match="retrying"):
        await importing.import_image(
            importing.S3Source(f"{server.url}/stall/disk.raw"),
            volume / importing.DISK_IMAGE,
            size=16 * MiB,
            timeout=0.5,
        )
    assert not os.listdir(volume)
    started = asyncio.Event()
    task = asyncio.ensure_future(
        importing.import_image(
            importing.S3Source(f"{server.url}/stall/disk.raw"), volume / importing.DISK_IMAGE,
            size=16 * MiB, progress=lambda _: started.set(), progress_interval=0,
        )
    )  # fmt: skip
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not os.listdir(volume)
