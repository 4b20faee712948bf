"""Pulling containerDisks (kubevisor.storage.registry) from a real docker-registry on loopback, images
pushed with skopeo: by tag and digest, the node cache (served without network for digests), pull
policies, multi-platform indexes, and what must be refused (unknown tags, corrupt blobs, images without a
disk, unsafe layers). Basic logins and a registry CA against the real registry (TLS, htpasswd); token
services through a fake at the httpx transport seam."""

from __future__ import annotations

import asyncio
import base64
import json
import tarfile
from pathlib import Path

import pytest

from kubevisor.storage import registry
from kubevisor.storage.registry import Credentials, ImageCache, Reference
from kubevisor.testing import containerdisks
from kubevisor.testing.containerdisks import Entry, LocalRegistry
from tests.unit.storage.conftest import qcow2


def publish(
    tmp_path: Path,
    local_registry: LocalRegistry,
    repository: str,
    layers: list[list[Entry]],
    *,
    tag: str = "latest",
    compress: bool = True,
) -> tuple[str, str]:
    """Push an image made of ``layers``; (reference by tag, manifest digest)."""
    layout = tmp_path / f"layout-{repository.replace('/', '-')}"
    digest = containerdisks.oci_layout(layout, layers, tag=tag, compress=compress)
    reference = f"{local_registry.host}/{repository}:{tag}"
    containerdisks.push(layout, reference, tag=tag)
    return reference, digest


def disk_layers(disk: Path, name: str = "disk.img") -> list[list[Entry]]:
    return [[Entry("disk"), Entry(f"disk/{name}", disk)]]


# --- references and logins -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker://127.0.0.1:5000/kubevisor/guest:1", ("127.0.0.1:5000", "kubevisor/guest", "1", None)),
        ("quay.io/kubevirt/cirros-disk", ("quay.io", "kubevirt/cirros-disk", "latest", None)),
        ("fedora", ("docker.io", "library/fedora", "latest", None)),
        ("kubevirt/fedora:39", ("docker.io", "kubevirt/fedora", "39", None)),
        ("localhost/a/b:1.0", ("localhost", "a/b", "1.0", None)),
        ("[::1]:5000/x@sha256:" + "a" * 64, ("[::1]:5000", "x", None, "sha256:" + "a" * 64)),
        ("reg.io:443/x:v1@sha256:" + "b" * 64, ("reg.io:443", "x", "v1", "sha256:" + "b" * 64)),
    ],
)  # fmt: skip
def test_reference_parse(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize(
    "text", ["Upper/Case", "x@sha256:short", "x@md5:" + "a" * 32, "reg.io/x:bad/tag", "", "reg.io/-x"]
)
def test_reference_parse_refuses(text: str) -> None:
    with pytest.raises(registry.InvalidReference):
        Reference.parse(text)


def test_scheme_http_only_for_loopback_and_insecure(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path, insecure_registries=("reg.lab:5000", "plain.lab"))
    assert cache.scheme(Reference.parse("127.0.0.1:5000/x")) == "http"
    assert cache.scheme(Reference.parse("localhost:5000/x")) == "http"
    assert cache.scheme(Reference.parse("[::1]:5000/x")) == "http"
    assert cache.scheme(Reference.parse("reg.lab:5000/x")) == "http"
    assert cache.scheme(Reference.parse("plain.lab:8080/x")) == "http"
    assert cache.scheme(Reference.parse("reg.lab:5001/x")) == "https"
    assert cache.scheme(Reference.parse("quay.io/x")) == "https"


def test_credentials_from_docker_config() -> None:
    auth = base64.b64encode(b"alice:s3cret").decode()
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": auth},
            "http://reg.lab:5000": {"username": "bob", "password": "pw"},
        }
    }
    data = {".dockerconfigjson": json.dumps(config)}
    assert registry.credentials_from_docker_config(data, "docker.io") == Credentials("alice", "s3cret")
    assert registry.credentials_from_docker_config(data, "reg.lab:5000") == Credentials("bob", "pw")
    assert registry.credentials_from_docker_config(data, "quay.io") is None
    legacy = {".dockercfg": json.dumps({"quay.io": {"auth": auth}})}
    assert registry.credentials_from_docker_config(legacy, "quay.io") == Credentials("alice", "s3cret")
    with pytest.raises(ValueError, match=r"\.dockerconfigjson"):
        registry.credentials_from_docker_config({"password": "x"}, "quay.io")
    with pytest.raises(ValueError, match="not JSON"):
        registry.credentials_from_docker_config({".dockerconfigjson": "{"}, "quay.io")


# --- the real registry ---------------------------------------------------------------------------------


async def test_pull_by_tag_then_from_cache(tmp_path: Path, local_registry: LocalRegistry) -> None:
    disk = qcow2(tmp_path / "src.qcow2")
    reference, digest = publish(tmp_path, local_registry, "kubevisor/by-tag", disk_layers(disk))
    cache = ImageCache(tmp_path / "cache")
    pulled = await cache.pull(reference)
    assert not pulled.cached
    assert pulled.digest == digest
    assert pulled.format == "qcow2"
    assert pulled.path == tmp_path / "cache" / digest / "disk.img"
    assert pulled.path.read_bytes() == disk.read_bytes()
    meta = json.loads((tmp_path / "cache" / digest / "disk.json").read_text())
    assert (meta["reference"], meta["format"]) == (reference, "qcow2")
    assert not list((tmp_path / "cache" / ".tmp").iterdir())
    again = await cache.pull(f"docker://{reference}")
    assert again.cached and again.path == pulled.path


async def test_tag_is_re_resolved_on_each_pull(tmp_path: Path, local_registry: LocalRegistry) -> None:
    first = qcow2(tmp_path / "one.qcow2", "1M")
    second = qcow2(tmp_path / "two.qcow2", "2M")
    reference, digest1 = publish(tmp_path / "a", local_registry, "kubevisor/moving", disk_layers(first))
    cache = ImageCache(tmp_path / "cache")
    assert (await cache.pull(reference)).digest == digest1
    _, digest2 = publish(tmp_path / "b", local_registry, "kubevisor/moving", disk_layers(second))
    assert digest2 != digest1
    pulled = await cache.pull(reference)  # Always: the tag now points elsewhere
    assert (pulled.digest, pulled.cached) == (digest2, False)
    assert pulled.path.read_bytes() == second.read_bytes()
    remembered = await cache.pull(reference, policy="IfNotPresent")
    assert (remembered.digest, remembered.cached) == (digest2, True)


async def test_pull_by_digest_needs_no_network_once_cached(tmp_path: Path) -> None:
    disk = qcow2(tmp_path / "src.qcow2")
    with containerdisks.running_registry() as own:
        reference, digest = publish(tmp_path, own, "kubevisor/by-digest", disk_layers(disk))
        by_digest = f"{own.host}/kubevisor/by-digest@{digest}"
        cache = ImageCache(tmp_path / "cache", timeout=5)
        assert not (await cache.pull(reference)).cached
        own.stop()
        hit = await cache.pull(by_digest)
        assert hit.cached and hit.digest == digest
        assert (await cache.pull(reference, policy="IfNotPresent")).cached
        assert (await cache.pull(reference, policy="Never")).cached
        with pytest.raises(registry.RegistryUnreachable, match="unreachable"):
            await cache.pull(reference)  # Always: a tag is re-resolved, and the registry is gone
        with pytest.raises(registry.NotPresent, match="Never"):
            await ImageCache(tmp_path / "empty").pull(by_digest, policy="Never")


async def test_unknown_tag_and_repository(tmp_path: Path, local_registry: LocalRegistry) -> None:
    reference, _ = publish(tmp_path, local_registry, "kubevisor/known", disk_layers(qcow2(tmp_path / "d")))
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(registry.ManifestUnknown, match="404"):
        await cache.pull(reference.replace(":latest", ":nope"))
    with pytest.raises(registry.ManifestUnknown, match=r"kubevisor/never-pushed"):
        await cache.pull(f"{local_registry.host}/kubevisor/never-pushed:latest")
    with pytest.raises(registry.ManifestUnknown):
        await cache.pull(f"{local_registry.host}/kubevisor/known@sha256:{'0' * 64}")


async def test_tampered_blob_is_refused(tmp_path: Path, local_registry: LocalRegistry) -> None:
    disk = qcow2(tmp_path / "src.qcow2")
    reference, digest = publish(tmp_path, local_registry, "kubevisor/tampered", disk_layers(disk))
    layout = tmp_path / "layout-kubevisor-tampered"
    manifest = json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())
    layer = manifest["layers"][0]["digest"]
    stored = local_registry.blob_file(layer)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: the registry serves it as is
    stored.write_bytes(bytes(data))
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(registry.DigestMismatch, match=layer):
        await cache.pull(reference)
    assert not (tmp_path / "cache" / digest).exists()
    assert not list((tmp_path / "cache" / ".tmp").iterdir())


async def test_image_without_disk(tmp_path: Path, local_registry: LocalRegistry) -> None:
    layers = [[Entry("etc"), Entry("etc/hostname", b"x\n"), Entry("disk"), Entry("disk/sub")]]
    reference, _ = publish(tmp_path, local_registry, "kubevisor/no-disk", layers)
    with pytest.raises(registry.BadImage, match=r"no disk image at /disk/"):
        await ImageCache(tmp_path / "cache").pull(reference)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([Entry("disk"), Entry("disk/../../etc/x.img", b"x")], "path traversal"),
        ([Entry("../disk/disk.img", b"x")], "path traversal"),
        ([Entry("disk"), Entry("disk/disk.img", symlink="/etc/shadow")], "is a link"),
        ([Entry("etc/shadow", b"x"), Entry("disk/disk.img", hardlink="etc/shadow")], "is a link"),
        ([Entry("disk", symlink="/etc"), Entry("disk/passwd", b"x")], "is a link"),
    ],
)  # fmt: skip
async def test_unsafe_layers_are_refused(
    tmp_path: Path, local_registry: LocalRegistry, entries: list[Entry], message: str
) -> None:
    repository = f"kubevisor/{tmp_path.name.lower()}"
    reference, digest = publish(tmp_path, local_registry, repository, [entries], compress=False)
    with pytest.raises(registry.BadImage, match=message):
        await ImageCache(tmp_path / "cache").pull(reference)
    assert not (tmp_path / "cache" / digest).exists()


async def test_raw_disk_in_uncompressed_layers_with_whiteout(
    tmp_path: Path, local_registry: LocalRegistry
) -> None:
    raw = b"\0" * 4096 + b"kubevisor raw disk"
    old = qcow2(tmp_path / "old.qcow2")
    layers = [
        [Entry("disk"), Entry("disk/a-old.qcow2", old), Entry("disk/b.img", raw)],
        [Entry("disk/.wh.a-old.qcow2")],  # the later layer deletes a-old: b.img is the first file left
    ]
    reference, _ = publish(tmp_path, local_registry, "kubevisor/raw", layers, compress=False)
    pulled = await ImageCache(tmp_path / "cache").pull(reference)
    assert pulled.format == "raw"
    assert pulled.path.read_bytes() == raw


async def test_path_selects_the_disk(tmp_path: Path, local_registry: LocalRegistry) -> None:
    one, two = qcow2(tmp_path / "1.qcow2", "1M"), qcow2(tmp_path / "2.qcow2", "3M")
    layers = [[Entry("disk"), Entry("disk/a.qcow2", one), Entry("disk/b.qcow2", two)]]
    reference, digest = publish(tmp_path, local_registry, "kubevisor/two-disks", layers)
    cache = ImageCache(tmp_path / "cache")
    default = await cache.pull(reference)
    chosen = await cache.pull(reference, path="/disk/b.qcow2")
    assert default.path.read_bytes() == one.read_bytes()
    assert chosen.path.read_bytes() == two.read_bytes()
    assert chosen.path.parent == tmp_path / "cache" / digest
    with pytest.raises(registry.BadImage, match="not a file under /disk/"):
        await cache.pull(reference, path="/etc/passwd")


async def test_multi_platform_index_picks_linux_amd64(tmp_path: Path, local_registry: LocalRegistry) -> None:
    amd64, arm64 = qcow2(tmp_path / "amd64.qcow2", "1M"), qcow2(tmp_path / "arm64.qcow2", "5M")
    layout = tmp_path / "layout"
    index = containerdisks.oci_layout(
        layout, disk_layers(amd64), other_platforms=[("arm64", disk_layers(arm64))]
    )
    reference = f"{local_registry.host}/kubevisor/multi:latest"
    containerdisks.push(layout, reference, all_images=True)
    pulled = await ImageCache(tmp_path / "cache").pull(reference)
    assert pulled.digest == index
    assert pulled.path.read_bytes() == amd64.read_bytes()


async def test_qcow2_with_backing_file_is_refused(tmp_path: Path, local_registry: LocalRegistry) -> None:
    top = qcow2(tmp_path / "top.qcow2", backing=Path("/etc/hostname"))
    reference, _ = publish(tmp_path, local_registry, "kubevisor/backing", disk_layers(top))
    with pytest.raises(registry.BadImage, match="backing file"):
        await ImageCache(tmp_path / "cache").pull(reference)


async def test_concurrent_pulls_download_once(tmp_path: Path, local_registry: LocalRegistry) -> None:
    reference, digest = publish(
        tmp_path, local_registry, "kubevisor/concurrent", disk_layers(qcow2(tmp_path / "d.qcow2"))
    )
    cache = ImageCache(tmp_path / "cache")
    results = await asyncio.gather(*(cache.pull(reference) for _ in range(3)))
    assert sorted(r.cached for r in results) == [False, True, True]
    assert {r.digest for r in results} == {digest}


# --- logins, through the fake at the transport seam ------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    directory = tmp_path / "layout"
    containerdisks.oci_layout(directory, disk_layers(qcow2(tmp_path / "d.qcow2")))
    return directory


async def test_token_flow_with_credentials(tmp_path: Path, layout: Path) -> None:
    fake = containerdisks.LayoutRegistry(
        layout, login=("alice", "pw"), token_realm="https://auth.example/token"
    )
    cache = ImageCache(tmp_path / "cache", transport=fake)
    pulled = await cache.pull("reg.example/team/guest:latest", credentials=Credentials("alice", "pw"))
    assert pulled.format == "qcow2"
    token_requests = [r for r in fake.requests if r.url.host == "auth.example"]
    assert len(token_requests) == 1
    assert token_requests[0].url.params["service"] == "fake"
    assert token_requests[0].url.params["scope"] == "repository:x:pull"
    assert all(r.url.scheme == "https" for r in fake.requests)
    with pytest.raises(registry.Unauthorized, match="refused the login"):
        await ImageCache(tmp_path / "c2", transport=fake).pull(
            "reg.example/team/guest:latest", credentials=Credentials("alice", "wrong")
        )
    with pytest.raises(registry.Unauthorized, match="anonymous"):
        await ImageCache(tmp_path / "c3", transport=fake).pull("reg.example/team/guest:latest")


async def test_basic_auth(tmp_path: Path, layout: Path) -> None:
    fake = containerdisks.LayoutRegistry(layout, login=("bob", "pw"))
    pulled = await ImageCache(tmp_path / "cache", transport=fake).pull(
        "reg.example/guest:latest", credentials=Credentials("bob", "pw")
    )
    assert not pulled.cached
    with pytest.raises(registry.Unauthorized, match="imagePullSecret"):
        await ImageCache(tmp_path / "c2", transport=fake).pull("reg.example/guest:latest")
    with pytest.raises(registry.Unauthorized, match="401"):
        await ImageCache(tmp_path / "c3", transport=fake).pull(
            "reg.example/guest:latest", credentials=Credentials("bob", "nope")
        )


# --- extraction without a registry --------------------------------------------------------------------


def test_extract_disk_opaque_whiteout(tmp_path: Path) -> None:
    def layer(name: str, entries: list[Entry]) -> Path:
        out = tmp_path / name
        containerdisks._tar(entries, out)
        return out

    first = layer("1.tar", [Entry("disk"), Entry("disk/a.img", b"a"), Entry("disk/z.img", b"z")])
    second = layer("2.tar", [Entry("disk/.wh..wh..opq"), Entry("disk/y.img", b"y")])
    dest = tmp_path / "out.img"
    assert registry.extract_disk([first, second], dest, image="t") == "/disk/y.img"
    assert dest.read_bytes() == b"y"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(registry.BadImage, match="not a readable tar"):
        registry.extract_disk([garbage], tmp_path / "out2.img", image="t")
    assert tarfile.is_tarfile(first)


async def test_real_registry_with_tls_and_htpasswd_logins(tmp_path: Path) -> None:
    """docker-registry itself over HTTPS with an htpasswd login (not the fake): a login and the CA that
    signed its certificate pull; a wrong password, no login, or another CA are refused as such."""
    from tests.unit.storage import imageserving

    ca = imageserving.make_ca(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_ca = imageserving.make_ca(other)
    login = ("puller", "correct horse")
    with containerdisks.running_registry(tls=(ca.cert_file, ca.key_file), logins=[login]) as secure:
        layout = tmp_path / "layout"
        containerdisks.oci_layout(layout, disk_layers(qcow2(tmp_path / "src.qcow2")))
        await asyncio.to_thread(containerdisks.push, layout, f"{secure.host}/private/disk:1", login=login)
        reference = f"{secure.host}/private/disk:1"
        cache = ImageCache(tmp_path / "cache")
        pulled = await cache.pull(reference, credentials=Credentials(*login), ca_bundle=ca.ca_pem)
        assert pulled.format == "qcow2" and not pulled.cached
        with pytest.raises(registry.Unauthorized, match="401"):
            await cache.pull(reference, credentials=Credentials(login[0], "wrong"), ca_bundle=ca.ca_pem)
        with pytest.raises(registry.Unauthorized, match="wants a login"):
            await cache.pull(reference, ca_bundle=ca.ca_pem)
        with pytest.raises(registry.Untrusted, match="does not verify"):
            await cache.pull(reference, credentials=Credentials(*login), ca_bundle=other_ca.ca_pem)
