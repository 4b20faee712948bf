"""A DataImportCron polling registries that want more than anonymous plain HTTP, against the real API
server, controllers and node agent (no guest boots; each import is a small disk pulled by the agent).

- Debian's docker-registry over TLS with an htpasswd login: a cron whose template has a ``secretRef``
  and a ``certConfigMap`` polls it (the controller reads both through the API) and the node agent imports
  the digest-pinned image with the same two; with a wrong password the poll fails with a ``Warning``
  Event ``PollSourceFailed`` naming the Secret, the cron is ``UpToDate: False`` (``NoDigest``) and no
  DataVolume is created; once the Secret is fixed, the next poll imports.
- A plain-HTTP registry that is not on a loopback *name* (``2130706433``: 127.0.0.1 written as one number,
  so the test stays on loopback while kubevisor treats the host as remote) is polled and imported only
  because the node agent's ``insecure_registries`` reach the cron controller too (the platform passes
  them on).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.api import cdi
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.controllers.dataimportcron import import_name
from kubevisor.platform import Platform
from kubevisor.storage import digests, registry
from kubevisor.testing import containerdisks
from tests.integration.agent.libagent import agent_platform
from tests.integration.client.libcluster import until
from tests.integration.controllers.test_dataimportcron import condition, get_or_empty
from tests.unit.storage import imageserving

NODE = "cron-registry-node"
CDI = "cdi.kubevirt.io/v1beta1"
NS = "default"
LOGIN = ("poller", "registry-password")
NUMERIC_LOOPBACK = "2130706433"
"""127.0.0.1 as a single number: the resolver maps it to loopback, kubevisor's loopback check does not."""


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 MiB raw disk with a recognizable start."""
    path = tmp_path_factory.mktemp("disk") / "disk.raw"
    path.write_bytes(b"kubevisor-cron-registry".ljust(1024 * 1024, b"\0"))
    return path


def _tools() -> None:
    try:
        containerdisks.require(containerdisks.SKOPEO)
        containerdisks.require(containerdisks.REGISTRY_BINARY)
    except containerdisks.ToolMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def secure_registry(
    tmp_path_factory: pytest.TempPathFactory, disk: Path
) -> Iterator[tuple[containerdisks.LocalRegistry, imageserving.TestCA, str]]:
    """docker-registry over TLS with an htpasswd login holding ``kubevisor/protected:latest``; (the
    registry, its CA, the image's digest)."""
    _tools()
    root = tmp_path_factory.mktemp("secure")
    ca = imageserving.make_ca(root)
    with containerdisks.running_registry(tls=(ca.cert_file, ca.key_file), logins=[LOGIN]) as secure:
        digest = containerdisks.disk_layout(root / "layout", disk)
        containerdisks.push(root / "layout", f"{secure.host}/kubevisor/protected:latest", login=LOGIN)
        yield secure, ca, digest


@pytest.fixture(scope="module")
def plain_registry(
    tmp_path_factory: pytest.TempPathFactory, disk: Path
) -> Iterator[tuple[containerdisks.LocalRegistry, str]]:
    """docker-registry over plain HTTP holding ``kubevisor/plain:latest``; (the registry, the digest)."""
    _tools()
    root = tmp_path_factory.mktemp("plain")
    with containerdisks.running_registry() as plain:
        digest = containerdisks.disk_layout(root / "layout", disk)
        containerdisks.push(root / "layout", f"{plain.host}/kubevisor/plain:latest")
        yield plain, digest


@pytest.fixture
async def plat(
    data_dir: Path, plain_registry: tuple[containerdisks.LocalRegistry, str]
) -> AsyncIterator[Platform]:
    plain, _ = plain_registry
    async with agent_platform(data_dir, NODE, insecure_registries=(f"{NUMERIC_LOOPBACK}:{plain.port}",)) as p:
        yield p


def cron(name: str, url: str, **registry_fields: str) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 0 1 1 *",  # yearly: only the creation poll and the test's triggers poll
            "managedDataSource": name,
            "template": {
                "spec": {
                    "source": {"registry": {"url": url, **registry_fields}},
                    "storage": {"resources": {"requests": {"storage": "16Mi"}}},
                }
            },
        },
    }


async def imported_into_data_source(client: Client, managed: str, dv_name: str) -> Obj:
    """Wait until DataVolume ``dv_name`` Succeeded and DataSource ``managed`` is Ready on it; the DV."""
    dvs = client.resource(CDI, "datavolumes")
    dv: Obj = await until(
        functools.partial(get_or_empty, dvs, dv_name),
        lambda d: (d.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        60,
        f"DataVolume {dv_name} Succeeded",
    )
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    sources = client.resource(CDI, "datasources")
    await until(
        functools.partial(get_or_empty, sources, managed),
        lambda d: (
            (d.get("spec") or {}).get("source") == {"pvc": {"namespace": NS, "name": dv_name}}
            and condition(d, "Ready").get("status") == "True"
        ),
        20,
        f"DataSource {managed} Ready on {dv_name}",
    )
    return dv


async def poll_failure(client: Client, cron_name: str) -> Obj:
    """The ``PollSourceFailed`` Warning of DataImportCron ``cron_name``, once there is one."""

    def of_cron(events: list[Obj]) -> list[Obj]:
        return [
            x
            for x in events
            if x.get("reason") == "PollSourceFailed" and x["involvedObject"]["name"] == cron_name
        ]

    found = await until(
        lambda: client.resource("v1", "events").list(NS),
        lambda e: bool(of_cron(e.items)),
        20,
        f"a PollSourceFailed event for {cron_name}",
    )
    event = of_cron(found.items)[0]
    assert event["type"] == "Warning"
    return event


async def secret(client: Client, name: str, user: str, password: str) -> None:
    body = {"metadata": {"name": name}, "stringData": {"accessKeyId": user, "secretKey": password}}
    await client.resource("v1", "secrets").create(body, NS)


async def test_cron_polls_a_registry_with_its_secret_and_ca(
    client: Client, secure_registry: tuple[containerdisks.LocalRegistry, imageserving.TestCA, str]
) -> None:
    secure, ca, digest = secure_registry
    await client.resource("v1", "configmaps").create(
        {"metadata": {"name": "registry-ca"}, "data": {"ca.pem": ca.ca_pem}}, NS
    )
    await secret(client, "registry-login", *LOGIN)
    await secret(client, "registry-wrong", LOGIN[0], "wrong-password")
    url = f"docker://{secure.host}/kubevisor/protected:latest"
    crons = client.resource(CDI, "dataimportcrons")
    await crons.create(cron("protected", url, secretRef="registry-login", certConfigMap="registry-ca"), NS)
    await crons.create(cron("refused", url, secretRef="registry-wrong", certConfigMap="registry-ca"), NS)
    await crons.create(cron("no-secret", url, secretRef="absent", certConfigMap="registry-ca"), NS)

    # the good login: polled, imported by the node agent with the same Secret and CA, DataSource on it
    dv = await imported_into_data_source(client, "protected", import_name("protected", digest))
    assert dv["spec"]["source"]["registry"] == {
        "url": f"docker://{secure.host}/kubevisor/protected@{digest}",
        "secretRef": "registry-login",
        "certConfigMap": "registry-ca",
    }
    done = await until(
        lambda: crons.get("protected", NS), lambda c: condition(c, "UpToDate").get("status") == "True", 10
    )
    assert done["metadata"]["annotations"][cdi.DESIRED_DIGEST_ANNOTATION] == digest

    # the wrong password: a Warning naming the Secret, NoDigest, and no DataVolume
    event = await poll_failure(client, "refused")
    assert f"Secret {NS}/registry-wrong" in event["message"] and "401" in event["message"], event["message"]
    missing = await poll_failure(client, "no-secret")
    assert f"Secret {NS}/absent" in missing["message"] and "does not exist" in missing["message"]
    refused = await until(
        lambda: crons.get("refused", NS), lambda c: condition(c, "UpToDate").get("reason") == "NoDigest", 10
    )
    assert condition(refused, "UpToDate")["status"] == "False"
    assert "registry-wrong" in condition(refused, "UpToDate")["message"]
    assert cdi.DESIRED_DIGEST_ANNOTATION not in (refused["metadata"].get("annotations") or {})
    dvs = (await client.resource(CDI, "datavolumes").list(NS)).items
    assert [d["metadata"]["name"] for d in dvs] == [import_name("protected", digest)]

    # the Secret fixed, the next poll (CDI's trigger: nextCronTime in the past) imports
    await client.resource("v1", "secrets").patch(
        "registry-wrong", {"stringData": {"secretKey": LOGIN[1]}}, NS
    )
    past = {"metadata": {"annotations": {cdi.NEXT_CRON_TIME_ANNOTATION: "2000-01-01T00:00:00Z"}}}
    await crons.patch("refused", past, NS)
    await imported_into_data_source(client, "refused", import_name("refused", digest))


async def test_insecure_registry_setting_reaches_the_cron_poll(
    client: Client, plat: Platform, plain_registry: tuple[containerdisks.LocalRegistry, str]
) -> None:
    plain, digest = plain_registry
    remote_looking = f"{NUMERIC_LOOPBACK}:{plain.port}"
    assert plat.insecure_registries == (remote_looking,)  # from the agent's config
    url = f"docker://{remote_looking}/kubevisor/plain:latest"
    # without the setting the host is not loopback, so it is spoken to over HTTPS, which it does not speak
    with pytest.raises(registry.RegistryUnreachable):
        await digests.current_digest(url, timeout=5)

    await client.resource(CDI, "dataimportcrons").create(cron("plain", url), NS)
    await imported_into_data_source(client, "plain", import_name("plain", digest))
