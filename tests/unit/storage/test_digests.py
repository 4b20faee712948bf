"""The DataImportCron's registry poll (kubevisor.storage.digests over registry.resolve_digest): the digest a
tag points to now, from a real docker-registry on loopback (the tag moving between two pushes; over TLS
with an htpasswd login: the CA bundle, a wrong password, an untrusted certificate) and, for token logins
and the insecure-registry transport rule, from the fake at the httpx transport seam; only a HEAD per
poll, no blob."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.storage import digests, registry
from kubevisor.testing import containerdisks
from kubevisor.testing.containerdisks import Entry, LocalRegistry
from tests.unit.storage import imageserving
from tests.unit.storage.conftest import qcow2


def push_disk(tmp_path: Path, local_registry: LocalRegistry, name: str, size: str) -> str:
    layout = tmp_path / f"layout-{name}"
    disk = qcow2(tmp_path / f"{name}.qcow2", size)
    digest = containerdisks.oci_layout(layout, [[Entry("disk"), Entry("disk/disk.img", disk)]])
    containerdisks.push(layout, f"{local_registry.host}/kubevisor/golden:latest")
    return digest


async def test_digest_follows_the_tag(tmp_path: Path, local_registry: LocalRegistry) -> None:
    image = f"docker://{local_registry.host}/kubevisor/golden:latest"
    first = push_disk(tmp_path, local_registry, "v1", "1M")
    assert await digests.current_digest(image) == first
    second = push_disk(tmp_path, local_registry, "v2", "2M")
    assert second != first
    assert await digests.current_digest(image) == second
    pinned = f"{local_registry.host}/kubevisor/golden@{first}"
    assert await digests.current_digest(pinned) == first  # asks nobody


async def test_unknown_tag(local_registry: LocalRegistry) -> None:
    with pytest.raises(registry.ManifestUnknown, match="not found"):
        await digests.current_digest(f"{local_registry.host}/kubevisor/absent:latest")


async def test_unreachable_and_invalid() -> None:
    with pytest.raises(registry.RegistryUnreachable, match="unreachable"):
        await digests.current_digest("127.0.0.1:9/kubevisor/x:latest", timeout=2)
    with pytest.raises(registry.InvalidReference):
        await digests.current_digest("docker://127.0.0.1:5000/UPPER:latest")


async def test_login_and_head_only(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digest = containerdisks.oci_layout(
        layout, [[Entry("disk"), Entry("disk/disk.img", qcow2(tmp_path / "d"))]]
    )
    fake = containerdisks.LayoutRegistry(layout, login=("alice", "pw"), token_realm="https://auth.example/t")
    got = await digests.current_digest(
        "reg.example/team/guest:latest", credentials=registry.Credentials("alice", "pw"), transport=fake
    )
    assert got == digest
    manifest_requests = [r for r in fake.requests if "/manifests/" in r.url.path]
    assert {r.method for r in manifest_requests} == {"HEAD"}
    assert not [r for r in fake.requests if "/blobs/" in r.url.path]
    with pytest.raises(registry.Unauthorized):
        await digests.current_digest("reg.example/team/guest:latest", transport=fake)


async def test_login_and_ca_of_a_tls_registry(tmp_path: Path) -> None:
    login = ("poller", "registry-password")
    (tmp_path / "ca").mkdir()
    (tmp_path / "other").mkdir()
    ca = imageserving.make_ca(tmp_path / "ca")
    other = imageserving.make_ca(tmp_path / "other")  # did not sign the registry's certificate
    with containerdisks.running_registry(tls=(ca.cert_file, ca.key_file), logins=[login]) as secure:
        layout = tmp_path / "layout"
        digest = containerdisks.oci_layout(
            layout, [[Entry("disk"), Entry("disk/disk.img", qcow2(tmp_path / "d"))]]
        )
        containerdisks.push(layout, f"{secure.host}/kubevisor/protected:latest", login=login)
        image = f"docker://{secure.host}/kubevisor/protected:latest"
        good = registry.Credentials(*login)
        # a CA bundle means HTTPS even on loopback
        assert await digests.current_digest(image, credentials=good, ca_bundle=ca.ca_pem) == digest
        with pytest.raises(registry.Unauthorized, match="401"):
            await digests.current_digest(
                image, credentials=registry.Credentials(login[0], "wrong"), ca_bundle=ca.ca_pem
            )
        with pytest.raises(registry.Unauthorized, match="wants a login"):
            await digests.current_digest(image, ca_bundle=ca.ca_pem)
        with pytest.raises(registry.Untrusted, match="does not verify"):
            await digests.current_digest(image, credentials=good, ca_bundle=other.ca_pem)
        with pytest.raises(registry.InvalidReference, match="CA bundle"):
            await digests.current_digest(image, credentials=good, ca_bundle="not a certificate")


async def test_insecure_registries_are_polled_over_http(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digest = containerdisks.oci_layout(
        layout, [[Entry("disk"), Entry("disk/disk.img", qcow2(tmp_path / "d"))]]
    )
    fake = containerdisks.LayoutRegistry(layout)
    image = "reg.example:5000/team/guest:latest"
    assert await digests.current_digest(image, transport=fake) == digest
    assert (
        await digests.current_digest(image, insecure_registries=("reg.example:5000",), transport=fake)
        == digest
    )
    assert await digests.current_digest(image, insecure_registries=("reg.example",), transport=fake) == digest
    assert [r.url.scheme for r in fake.requests] == ["https", "http", "http"]
    assert all(r.method == "HEAD" for r in fake.requests)


async def test_resolve_digest_is_the_pulls_resolution(tmp_path: Path, local_registry: LocalRegistry) -> None:
    """The public resolver agrees with what a pull caches the tag under."""
    digest = push_disk(tmp_path, local_registry, "v3", "1M")
    image = f"{local_registry.host}/kubevisor/golden:latest"
    assert await registry.resolve_digest(image) == digest
    pulled = await registry.ImageCache(tmp_path / "cache").pull(image)
    assert pulled.digest == digest
