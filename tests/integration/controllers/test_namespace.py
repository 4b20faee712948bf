"""Namespace deletion: contents of every kind go first, then the namespace itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.client import Client, ForbiddenError
from kubevisor.controllers import GarbageCollector, NamespaceController
from kubevisor.platform import Platform
from kubevisor.testing.cluster import running_platform
from kubevisor.testing.kinds import registry_with_test_kinds
from tests.integration.client.libcluster import gone, until

HOLD = "test.kubevisor.io/hold"


@pytest.fixture
async def controllers(client: Client, cluster: Platform) -> AsyncIterator[None]:
    async with (
        NamespaceController(client, cluster.registry, recheck_interval=0.2),
        GarbageCollector(client, cluster.registry, recheck_interval=0.2),
    ):
        yield


async def fill(client: Client, namespace: str) -> None:
    await client.resource("v1", "namespaces").create({"metadata": {"name": namespace}})
    for i in range(3):
        await client.resource("v1", "configmaps").create({"metadata": {"name": f"cm-{i}"}}, namespace)
    await client.resource("v1", "secrets").create(
        {"metadata": {"name": "s"}, "stringData": {"k": "v"}}, namespace
    )
    await client.resource("test.kubevisor.io/v1", "widgets").create({"metadata": {"name": "w"}}, namespace)
    await client.resource("coordination.k8s.io/v1", "leases").create(
        {"metadata": {"name": "l"}, "spec": {}}, namespace
    )


async def test_deleting_a_namespace_deletes_its_contents_then_itself(
    client: Client, controllers: None
) -> None:
    await fill(client, "doomed")
    await fill(client, "spared")
    namespaces = client.resource("v1", "namespaces")
    cms = client.resource("v1", "configmaps")
    await cms.create({"metadata": {"name": "held", "finalizers": [HOLD]}}, "doomed")

    await namespaces.delete("doomed")

    for plural, api_version, name in [
        ("configmaps", "v1", "cm-0"),
        ("configmaps", "v1", "cm-2"),
        ("secrets", "v1", "s"),
        ("widgets", "test.kubevisor.io/v1", "w"),
        ("leases", "coordination.k8s.io/v1", "l"),
    ]:
        await gone(client.resource(api_version, plural), name, "doomed")
    held = await until(
        lambda: cms.get("held", "doomed"),
        lambda obj: bool(obj["metadata"].get("deletionTimestamp")),
        what="the held object marked for deletion",
    )
    namespace = await namespaces.get("doomed")
    assert namespace["status"]["phase"] == "Terminating"
    assert namespace["spec"]["finalizers"] == ["kubernetes"], "not finalized while content remains"
    with pytest.raises(ForbiddenError):
        await cms.create({"metadata": {"name": "late"}}, "doomed")

    held["metadata"]["finalizers"] = []
    await cms.update(held)
    await gone(namespaces, "doomed")

    assert len(await cms.list("spared")) >= 3, "another namespace is untouched"
    assert (await namespaces.get("spared"))["status"]["phase"] == "Active"


async def test_an_empty_namespace_goes_at_once(client: Client, controllers: None) -> None:
    namespaces = client.resource("v1", "namespaces")
    await namespaces.create({"metadata": {"name": "empty"}})
    await namespaces.delete("empty")
    await gone(namespaces, "empty")


async def test_the_platform_runs_the_builtin_controllers(tmp_path: Path) -> None:
    """``kubevisor up`` (the Platform) starts GC and namespace controllers under leader election."""
    async with (
        running_platform(tmp_path / "data", registry=registry_with_test_kinds()) as plat,
        Client.from_kubeconfig(plat.kubeconfig, registry=plat.registry) as client,
    ):
        await fill(client, "ns1")
        cms = client.resource("v1", "configmaps")
        owner = await cms.get("cm-0", "ns1")
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm-0", "uid": owner["metadata"]["uid"]}
        await cms.create({"metadata": {"name": "dependent", "ownerReferences": [ref]}}, "ns1")
        await cms.delete("cm-0", "ns1")
        await gone(cms, "dependent", "ns1")

        await client.resource("v1", "namespaces").delete("ns1")
        await gone(client.resource("v1", "namespaces"), "ns1")
        lease = await client.resource("coordination.k8s.io/v1", "leases").get(
            "kubevisor-controller-manager", "kube-system"
        )
        assert lease["spec"]["holderIdentity"]
