"""The garbage collector against the real API server: Background, Foreground and Orphan propagation.

Each test names its objects with its own prefix. Besides keeping failures readable, this sidesteps a
known apiserver issue: ``kubevisor.apiserver.watching.SHARED`` caches decoded watch events per process
by (key, revision), so two platforms in one process that write the same key at the same revision (two
tests doing the same steps) can stream each other's objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kubevisor.client import Client, NotFoundError
from kubevisor.controllers import GarbageCollector
from kubevisor.platform import Platform
from tests.integration.client.libcluster import gone, until

HOLD = "test.kubevisor.io/hold"


@pytest.fixture
async def gc(client: Client, cluster: Platform) -> AsyncIterator[GarbageCollector]:
    collector = GarbageCollector(client, cluster.registry, recheck_interval=0.5)
    async with collector:
        yield collector


def owner_ref(owner: dict[str, Any], block: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": False,
        "blockOwnerDeletion": block,
    }


async def make(
    client: Client, plural: str, name: str, *owners: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    api_version = "test.kubevisor.io/v1" if plural == "widgets" else "v1"
    meta: dict[str, Any] = {"name": name}
    if owners:
        meta["ownerReferences"] = list(owners)
    meta.update(extra.pop("metadata", {}))
    body: dict[str, Any] = {"metadata": meta, **extra}
    return await client.resource(api_version, plural).create(body, "default")


async def exists(client: Client, plural: str, name: str) -> dict[str, Any] | None:
    api_version = "test.kubevisor.io/v1" if plural == "widgets" else "v1"
    try:
        return await client.resource(api_version, plural).get(name, "default")
    except NotFoundError:
        return None


async def test_background_deletion_collects_dependents_of_every_kind(
    client: Client, gc: GarbageCollector
) -> None:
    cms = client.resource("v1", "configmaps")
    owner = await make(client, "configmaps", "bg-owner")
    survivor = await make(client, "configmaps", "bg-survivor")
    await make(client, "configmaps", "bg-dep-cm", owner_ref(owner))
    await make(client, "widgets", "bg-dep-widget", owner_ref(owner), spec={"size": 1})
    await make(client, "secrets", "bg-dep-secret", owner_ref(owner))
    await make(client, "configmaps", "bg-two-owners", owner_ref(owner), owner_ref(survivor))
    await make(client, "configmaps", "bg-unrelated")

    await cms.delete("bg-owner", "default", propagation_policy="Background")

    await gone(cms, "bg-dep-cm", "default")
    await gone(client.resource("test.kubevisor.io/v1", "widgets"), "bg-dep-widget", "default")
    await gone(client.resource("v1", "secrets"), "bg-dep-secret", "default")
    kept = await until(
        lambda: cms.get("bg-two-owners", "default"),
        lambda obj: len(obj["metadata"].get("ownerReferences") or []) == 1,
        what="the reference to the deleted owner removed",
    )
    assert kept["metadata"]["ownerReferences"][0]["uid"] == survivor["metadata"]["uid"]
    assert await exists(client, "configmaps", "bg-unrelated") is not None
    assert await exists(client, "configmaps", "bg-survivor") is not None


async def test_only_an_object_with_the_same_uid_is_the_owner(client: Client, gc: GarbageCollector) -> None:
    owner = await make(client, "configmaps", "uid-owner")
    impostor_ref = {**owner_ref(owner), "uid": "00000000-0000-0000-0000-000000000000"}
    await make(client, "configmaps", "uid-points-at-a-namesake", impostor_ref)
    await make(client, "configmaps", "uid-points-at-the-owner", owner_ref(owner))
    await gone(client.resource("v1", "configmaps"), "uid-points-at-a-namesake", "default")
    assert await exists(client, "configmaps", "uid-points-at-the-owner") is not None
    assert await exists(client, "configmaps", "uid-owner") is not None


async def test_orphans_left_while_the_collector_was_down_are_collected_on_start(
    client: Client, cluster: Platform
) -> None:
    cms = client.resource("v1", "configmaps")
    owner = await make(client, "configmaps", "down-owner")
    await make(client, "configmaps", "down-dep", owner_ref(owner))
    await cms.delete("down-owner", "default")
    assert await exists(client, "configmaps", "down-dep") is not None
    async with GarbageCollector(client, cluster.registry):
        await gone(cms, "down-dep", "default")


async def test_foreground_deletes_blocking_dependents_first(client: Client, gc: GarbageCollector) -> None:
    cms = client.resource("v1", "configmaps")
    owner = await make(client, "configmaps", "fg-owner")
    blocker = await make(
        client, "configmaps", "fg-blocker", owner_ref(owner, block=True), metadata={"finalizers": [HOLD]}
    )
    await make(client, "configmaps", "fg-grandchild", owner_ref(blocker, block=True))
    await make(client, "widgets", "fg-non-blocking", owner_ref(owner, block=False), spec={"size": 1})

    deleting = await cms.delete("fg-owner", "default", propagation_policy="Foreground")
    assert "foregroundDeletion" in deleting["metadata"]["finalizers"]

    await gone(cms, "fg-grandchild", "default")
    await gone(client.resource("test.kubevisor.io/v1", "widgets"), "fg-non-blocking", "default")
    held = await until(
        lambda: cms.get("fg-blocker", "default"),
        lambda obj: (
            bool(obj["metadata"].get("deletionTimestamp")) and obj["metadata"]["finalizers"] == [HOLD]
        ),
        what="the blocker deleted in the foreground, only our hold left",
    )
    still = await exists(client, "configmaps", "fg-owner")
    assert still is not None, "the owner must wait for its blocking dependent"
    assert still["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in still["metadata"]["finalizers"]

    held["metadata"]["finalizers"] = []
    await cms.update(held)
    await gone(cms, "fg-blocker", "default")
    await gone(cms, "fg-owner", "default")


async def test_foreground_without_dependents_completes(client: Client, gc: GarbageCollector) -> None:
    cms = client.resource("v1", "configmaps")
    await make(client, "configmaps", "fg0-lonely")
    await cms.delete("fg0-lonely", "default", propagation_policy="Foreground")
    await gone(cms, "fg0-lonely", "default")


async def test_a_dependent_with_another_live_owner_survives_foreground(
    client: Client, gc: GarbageCollector
) -> None:
    cms = client.resource("v1", "configmaps")
    owner = await make(client, "configmaps", "fg2-owner")
    other = await make(client, "configmaps", "fg2-other")
    await make(client, "configmaps", "fg2-shared", owner_ref(owner), owner_ref(other))
    await cms.delete("fg2-owner", "default", propagation_policy="Foreground")
    await gone(cms, "fg2-owner", "default")
    shared = await cms.get("fg2-shared", "default")
    assert [ref["uid"] for ref in shared["metadata"]["ownerReferences"]] == [other["metadata"]["uid"]]


async def test_orphan_keeps_dependents_and_drops_their_references(
    client: Client, gc: GarbageCollector
) -> None:
    cms = client.resource("v1", "configmaps")
    owner = await make(client, "configmaps", "orph-owner")
    other = await make(client, "configmaps", "orph-other")
    await make(client, "configmaps", "orph-child-1", owner_ref(owner))
    await make(client, "widgets", "orph-child-2", owner_ref(owner), owner_ref(other), spec={"size": 2})

    deleting = await cms.delete("orph-owner", "default", propagation_policy="Orphan")
    assert "orphan" in deleting["metadata"]["finalizers"]
    await gone(cms, "orph-owner", "default")

    child1 = await cms.get("orph-child-1", "default")
    assert "ownerReferences" not in child1["metadata"]
    child2 = await client.resource("test.kubevisor.io/v1", "widgets").get("orph-child-2", "default")
    assert [ref["uid"] for ref in child2["metadata"]["ownerReferences"]] == [other["metadata"]["uid"]]
    assert child2["spec"] == {"size": 2}


async def test_cluster_scoped_owner_of_namespaced_dependents(client: Client, gc: GarbageCollector) -> None:
    node = await client.resource("v1", "nodes").create({"metadata": {"name": "node-owner"}})
    await make(client, "configmaps", "node-dependent", owner_ref(node))
    await client.resource("v1", "nodes").delete("node-owner")
    await gone(client.resource("v1", "configmaps"), "node-dependent", "default")
