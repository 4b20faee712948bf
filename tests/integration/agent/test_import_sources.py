"""DataVolume imports from each kind of source against the real API server, controllers and node agent
(no guest boots), every imported disk checked byte for byte: the sha256 of ``qemu-img convert -O raw``
of the claim's image equals that of the source image expanded to the claim's size.

- ``http`` over a loopback server: raw, xz-compressed raw and qcow2 (with ``checksum``); a wrong checksum,
  a corrupt qcow2, a truncated xz stream and a raw image larger than the claim end ``Failed`` with the
  reason, and leave no imported data behind; a malformed checksum is refused at admission.
- ``s3`` from a real radosgw (:mod:`kubevisor.testing.ceph`, one cluster per session, ~20 s to start):
  qcow2 and raw objects, over HTTP and over HTTPS with ``certConfigMap``; a missing object, a missing
  bucket, wrong keys, no keys and HTTPS without the CA end ``Failed``; an endpoint that refuses
  connections is retried.
- ``registry`` from a real ``docker-registry`` with TLS and htpasswd logins: ``secretRef`` and
  ``certConfigMap``; a wrong password, an untrusted certificate and a digest-pinned image whose layer was
  tampered with end ``Failed``.

(qcow2 over http, 404, HTML, a qcow2 larger than the claim, retries, basic auth over TLS and a plain
registry import are in tests/integration/agent/test_storage.py.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import lzma
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from kubevisor.api.registry import Obj
from kubevisor.client import Client, errors
from kubevisor.platform import Platform
from kubevisor.testing import ceph, containerdisks
from tests.integration.agent.libagent import agent_platform
from tests.integration.client.libcluster import until
from tests.unit.storage import imageserving

NODE = "import-node"
CDI = "cdi.kubevirt.io/v1beta1"
MiB = 1024 * 1024
CLAIM = "16Mi"
CLAIM_BYTES = 16 * MiB
PATTERN = b"kubevisor-import-sources"


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    async with agent_platform(data_dir, NODE) as p:
        yield p


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``disk.raw`` (8 MiB: random data, a pattern, holes), its qcow2 and xz forms, a corrupt qcow2, a
    truncated xz stream and ``large.raw`` (20 MiB, more than the claim)."""
    root = tmp_path_factory.mktemp("sources")
    raw = root / "disk.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(64 * 1024))
        f.seek(MiB)
        f.write(PATTERN * 1000)
        f.seek(5 * MiB)
        f.write(os.urandom(300 * 1024))
        f.truncate(8 * MiB)
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(root / "disk.qcow2"))
    packed = lzma.compress(raw.read_bytes(), preset=0)
    (root / "disk.raw.xz").write_bytes(packed)
    (root / "truncated.raw.xz").write_bytes(packed[: len(packed) // 2])
    qcow2 = bytearray((root / "disk.qcow2").read_bytes())
    qcow2[0x100:0x40000] = os.urandom(0x40000 - 0x100)  # the header survives, the tables do not
    (root / "corrupt.qcow2").write_bytes(bytes(qcow2))
    with open(root / "large.raw", "wb") as f:
        f.write(os.urandom(4096))
        f.truncate(20 * MiB)
    return root


@pytest.fixture
def server(images: Path) -> Iterator[imageserving.ImageServer]:
    with imageserving.serving(images) as s:
        yield s


def data_volume(name: str, source: Obj) -> Obj:
    return {
        "apiVersion": CDI,
        "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": CLAIM}}}},
    }


async def finished(client: Client, names: list[str], timeout: float = 40) -> dict[str, Obj]:
    """Each DataVolume once it is Succeeded or Failed."""
    dvs = client.resource(CDI, "datavolumes")

    async def one(name: str) -> Obj:
        return await until(
            lambda: dvs.get(name, "default"),
            lambda d: d.get("status", {}).get("phase") in ("Succeeded", "Failed"),
            timeout,
            f"DataVolume {name} Succeeded or Failed",
        )

    found = await asyncio.gather(*(one(n) for n in names))
    return dict(zip(names, found, strict=True))


def running(dv: Obj) -> Obj:
    return next(c for c in dv["status"]["conditions"] if c["type"] == "Running")


async def image_of(client: Client, claim: str) -> Path:
    pvc = await client.resource("v1", "persistentvolumeclaims").get(claim, "default")
    pv = await client.resource("v1", "persistentvolumes").get(pvc["spec"]["volumeName"])
    return Path(pv["spec"]["hostPath"]["path"]) / "disk.img"


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def raw_sha256(image: Path, scratch: Path) -> tuple[str, int]:
    """sha256 and size of ``qemu-img convert -O raw`` of ``image``."""
    out = scratch / f"{image.parent.name}.raw"
    _run("qemu-img", "convert", "-O", "raw", str(image), str(out))
    hasher = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(4 * MiB):
            hasher.update(chunk)
    size = out.stat().st_size
    out.unlink()
    return hasher.hexdigest(), size


def expected_sha256(source_raw: Path) -> str:
    """The source's bytes expanded with zeros to the claim's size (what an import writes)."""
    data = source_raw.read_bytes()
    return hashlib.sha256(data + bytes(CLAIM_BYTES - len(data))).hexdigest()


async def assert_imported(client: Client, claim: str, images: Path, tmp_path: Path) -> None:
    digest, size = await asyncio.to_thread(raw_sha256, await image_of(client, claim), tmp_path)
    assert size == CLAIM_BYTES
    assert digest == expected_sha256(images / "disk.raw"), f"claim {claim}: the imported data differs"


async def assert_nothing_imported(client: Client, claim: str) -> None:
    """A failed import leaves no data of its source: the volume's image is absent or still blank."""
    image = await image_of(client, claim)
    if await asyncio.to_thread(image.exists):
        assert await asyncio.to_thread(_read_at, image, MiB, len(PATTERN)) != PATTERN
    pvc = await client.resource("v1", "persistentvolumeclaims").get(claim, "default")
    assert pvc["metadata"]["annotations"]["cdi.kubevirt.io/storage.pod.phase"] == "Failed"


# --- http ---------------------------------------------------------------------------------------------


async def test_http_raw_xz_and_qcow2_with_checksum(
    client: Client, server: imageserving.ImageServer, images: Path, tmp_path: Path
) -> None:
    qcow2_sum = hashlib.sha256((images / "disk.qcow2").read_bytes()).hexdigest()
    sources = {
        "raw": {"http": {"url": f"{server.url}/disk.raw"}},
        "xz": {"http": {"url": f"{server.url}/disk.raw.xz"}},
        "qcow2-checked": {"http": {"url": f"{server.url}/disk.qcow2", "checksum": f"sha256:{qcow2_sum}"}},
    }
    dvs = client.resource(CDI, "datavolumes")
    for name, source in sources.items():
        await dvs.create(data_volume(name, source))
    done = await finished(client, list(sources))
    for name, dv in done.items():
        assert dv["status"]["phase"] == "Succeeded", running(dv)
        assert dv["status"]["progress"] == "100.0%"
        await assert_imported(client, name, images, tmp_path)
    pvc = await client.resource("v1", "persistentvolumeclaims").get("qcow2-checked", "default")
    assert pvc["metadata"]["annotations"]["kubevisor.io/import-checksum"] == f"sha256:{qcow2_sum}"


async def test_http_bad_sources_fail(client: Client, server: imageserving.ImageServer) -> None:
    cases = {
        "wrong-checksum": (
            {"http": {"url": f"{server.url}/disk.raw", "checksum": "sha256:" + "0" * 64}},
            "ChecksumMismatch",
            "expected 0000",
        ),
        "corrupt-qcow2": ({"http": {"url": f"{server.url}/corrupt.qcow2"}}, "InvalidImage", "corrupt.qcow2"),
        "truncated-xz": ({"http": {"url": f"{server.url}/truncated.raw.xz"}}, "InvalidImage", "truncated"),
        "too-large": ({"http": {"url": f"{server.url}/large.raw"}}, "ImageTooLarge", "larger than the claim"),
    }
    dvs = client.resource(CDI, "datavolumes")
    with pytest.raises(errors.InvalidError, match=r"spec\.source\.http\.checksum"):
        await dvs.create(data_volume("crc", {"http": {"url": f"{server.url}/disk.raw", "checksum": "crc:1"}}))
    for name, (source, _, _) in cases.items():
        await dvs.create(data_volume(name, source))
    done = await finished(client, list(cases))
    for name, (_, reason, words) in cases.items():
        dv = done[name]
        assert dv["status"]["phase"] == "Failed", (name, running(dv))
        condition = running(dv)
        assert condition["reason"] == reason, (name, condition)
        assert words in condition["message"], (name, condition)
        assert dv["status"]["restartCount"] == 0
        await assert_nothing_imported(client, name)


# --- s3 -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_ca(tmp_path_factory: pytest.TempPathFactory) -> imageserving.TestCA:
    """The CA of radosgw's HTTPS certificate."""
    return imageserving.make_ca(tmp_path_factory.mktemp("s3-ca"))


@pytest.fixture(scope="session")
def radosgw(s3_ca: imageserving.TestCA) -> Iterator[ceph.CephCluster]:
    """A single-node Ceph with radosgw (HTTP and HTTPS) for the whole session (a missing package fails
    the tests)."""
    with ceph.running_ceph(tls=(s3_ca.cert_file, s3_ca.key_file)) as cluster:
        yield cluster


BUCKET = "vm-images"


@pytest.fixture(scope="module")
def bucket(radosgw: ceph.CephCluster, images: Path) -> str:
    """A private bucket holding ``disk.qcow2`` and ``disk.raw`` under ``os/``."""
    user = radosgw.user
    assert user is not None
    s3 = boto3.client(
        "s3",
        endpoint_url=radosgw.endpoint,
        aws_access_key_id=user.access_key,
        aws_secret_access_key=user.secret_key,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    for name in ("disk.qcow2", "disk.raw"):
        s3.upload_file(str(images / name), BUCKET, f"os/{name}")
    return f"{radosgw.endpoint}/{BUCKET}"


async def _secret(client: Client, name: str, access_key: str, secret_key: str) -> None:
    await client.resource("v1", "secrets").create(
        {"metadata": {"name": name}, "stringData": {"accessKeyId": access_key, "secretKey": secret_key}}
    )


async def test_s3_qcow2_and_raw(
    client: Client,
    radosgw: ceph.CephCluster,
    *,
    s3_ca: imageserving.TestCA,
    bucket: str,
    images: Path,
    tmp_path: Path,
) -> None:
    assert radosgw.user is not None
    await _secret(client, "s3-keys", radosgw.user.access_key, radosgw.user.secret_key)
    await client.resource("v1", "configmaps").create(
        {"metadata": {"name": "s3-ca"}, "data": {"ca.pem": s3_ca.ca_pem}}
    )
    https = bucket.replace(radosgw.endpoint, radosgw.tls_endpoint)
    sources = {
        "from-s3-qcow2": {"url": f"{bucket}/os/disk.qcow2", "secretRef": "s3-keys"},
        "from-s3-raw": {"url": f"{bucket}/os/disk.raw", "secretRef": "s3-keys"},
        "from-s3-https": {"url": f"{https}/os/disk.qcow2", "secretRef": "s3-keys", "certConfigMap": "s3-ca"},
    }
    for name, source in sources.items():
        await client.resource(CDI, "datavolumes").create(data_volume(name, {"s3": source}))
    names = list(sources)
    done = await finished(client, names)
    for name, dv in done.items():
        assert dv["status"]["phase"] == "Succeeded", running(dv)
        await assert_imported(client, name, images, tmp_path)


async def test_s3_failures(client: Client, radosgw: ceph.CephCluster, bucket: str) -> None:
    assert radosgw.user is not None
    await _secret(client, "s3-keys", radosgw.user.access_key, radosgw.user.secret_key)
    await _secret(client, "s3-wrong", radosgw.user.access_key, "not-the-secret-key")
    cases = {
        "missing-object": (
            {"url": f"{bucket}/os/missing.qcow2", "secretRef": "s3-keys"},
            "SourceNotFound",
            "object 'os/missing.qcow2' in bucket 'vm-images' does not exist",
        ),
        "missing-bucket": (
            {"url": f"{radosgw.endpoint}/no-such-bucket/disk.qcow2", "secretRef": "s3-keys"},
            "SourceNotFound",
            "bucket 'no-such-bucket' does not exist",
        ),
        "wrong-key": (
            {"url": f"{bucket}/os/disk.qcow2", "secretRef": "s3-wrong"},
            "SourceUnauthorized",
            "check accessKeyId and secretKey",
        ),
        "no-key": ({"url": f"{bucket}/os/disk.qcow2"}, "SourceUnauthorized", "give credentials in secretRef"),
        "no-ca": (
            {
                "url": f"{bucket.replace(radosgw.endpoint, radosgw.tls_endpoint)}/os/disk.qcow2",
                "secretRef": "s3-keys",
            },
            "SourceUntrusted",
            "certConfigMap",
        ),
    }
    for name, (source, _, _) in cases.items():
        await client.resource(CDI, "datavolumes").create(data_volume(name, {"s3": source}))
    done = await finished(client, list(cases))
    for name, (_, reason, words) in cases.items():
        dv = done[name]
        condition = running(dv)
        assert dv["status"]["phase"] == "Failed" and condition["reason"] == reason, (name, condition)
        assert words in condition["message"], (name, condition)
        assert dv["status"]["restartCount"] == 0
        await assert_nothing_imported(client, name)


async def test_s3_endpoint_down_is_retried(client: Client) -> None:
    """Connection errors are transient: the import is retried with backoff, the DataVolume stays
    ImportInProgress with its restart count and the error, until the claim goes."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/{BUCKET}/os/disk.qcow2"
        dvs = client.resource(CDI, "datavolumes")
        await dvs.create(data_volume("s3-down", {"s3": {"url": url}}))
        dv = await until(
            lambda: dvs.get("s3-down", "default"),
            lambda d: d.get("status", {}).get("restartCount", 0) >= 1,
            20,
            "a retry",
        )
    assert dv["status"]["phase"] == "ImportInProgress"
    condition = running(dv)
    assert condition["reason"] == "SourceUnreachable" and "retrying" in condition["message"]
    await dvs.delete("s3-down", "default")


# --- registry with TLS and logins ---------------------------------------------------------------------


LOGIN = ("importer", "registry-password")


@pytest.fixture(scope="module")
def secure_registry(
    tmp_path_factory: pytest.TempPathFactory, images: Path
) -> Iterator[tuple[containerdisks.LocalRegistry, imageserving.TestCA, str]]:
    """docker-registry over TLS with an htpasswd login, holding ``kubevisor/disk:1`` (a containerDisk of
    ``disk.qcow2``) and ``kubevisor/tampered`` pinned by digest, whose layer was altered after the push;
    (the registry, its CA, that pinned reference)."""
    root = tmp_path_factory.mktemp("registry")
    ca = imageserving.make_ca(root)
    with containerdisks.running_registry(tls=(ca.cert_file, ca.key_file), logins=[LOGIN]) as registry:
        layout = root / "layout"
        containerdisks.disk_layout(layout, images / "disk.qcow2")
        containerdisks.push(layout, f"{registry.host}/kubevisor/disk:1", login=LOGIN)
        tampered = root / "tampered"
        digest = containerdisks.disk_layout(tampered, images / "disk.raw")
        containerdisks.push(tampered, f"{registry.host}/kubevisor/tampered:1", login=LOGIN)
        manifest = json.loads((tampered / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())
        blob = registry.blob_file(manifest["layers"][0]["digest"])
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, other bytes: the registry serves them as they are
        blob.write_bytes(bytes(data))
        yield registry, ca, f"{registry.host}/kubevisor/tampered@{digest}"


async def test_registry_login_and_ca(
    client: Client,
    secure_registry: tuple[containerdisks.LocalRegistry, imageserving.TestCA, str],
    images: Path,
    tmp_path: Path,
) -> None:
    registry, ca, pinned = secure_registry
    other_ca = imageserving.make_ca(tmp_path)  # not the one that signed the registry's certificate
    configmaps = client.resource("v1", "configmaps")
    await configmaps.create({"metadata": {"name": "registry-ca"}, "data": {"ca.pem": ca.ca_pem}})
    await configmaps.create({"metadata": {"name": "other-ca"}, "data": {"ca.pem": other_ca.ca_pem}})
    await _secret(client, "registry-login", *LOGIN)
    await _secret(client, "registry-wrong", LOGIN[0], "wrong-password")
    image = f"docker://{registry.host}/kubevisor/disk:1"
    cases: dict[str, tuple[Obj, str, str]] = {
        "pulled": ({"url": image, "secretRef": "registry-login", "certConfigMap": "registry-ca"}, "", ""),
        "wrong-password": (
            {"url": image, "secretRef": "registry-wrong", "certConfigMap": "registry-ca"},
            "SourceUnauthorized",
            "401",
        ),
        "no-login": ({"url": image, "certConfigMap": "registry-ca"}, "SourceUnauthorized", "wants a login"),
        "untrusted": (
            {"url": image, "secretRef": "registry-login", "certConfigMap": "other-ca"},
            "SourceUntrusted",
            "does not verify",
        ),
        "tampered": (
            {"url": f"docker://{pinned}", "secretRef": "registry-login", "certConfigMap": "registry-ca"},
            "ChecksumMismatch",
            "corrupt",
        ),
    }
    for name, (source, _, _) in cases.items():
        await client.resource(CDI, "datavolumes").create(data_volume(name, {"registry": source}))
    done = await finished(client, list(cases))
    for name, (_, reason, words) in cases.items():
        dv = done[name]
        condition = running(dv)
        if not reason:
            assert dv["status"]["phase"] == "Succeeded", (name, condition)
            await assert_imported(client, name, images, tmp_path)
            continue
        assert dv["status"]["phase"] == "Failed" and condition["reason"] == reason, (name, condition)
        assert words in condition["message"], (name, condition)
        await assert_nothing_imported(client, name)
