"""ControllerManager: controllers run only on the leader, and a standby takes over when it stops."""

from __future__ import annotations

import asyncio
from typing import Any

from kubevisor.client import Client
from kubevisor.controllers import ControllerManager, GarbageCollector, NamespaceController
from kubevisor.platform import Platform
from tests.integration.client.libcluster import eventually, gone


def manager(client: Client, cluster: Platform, identity: str, **options: Any) -> ControllerManager:
    controllers = [GarbageCollector(client, cluster.registry), NamespaceController(client, cluster.registry)]
    # Short enough for a quick test, long enough that a loaded 2-core machine starting 30 informers in the
    # same event loop does not miss a renewal and flap leadership.
    timing: dict[str, Any] = {"lease_duration": 4, "renew_deadline": 3, "retry_period": 0.2}
    timing.update(options)
    return ControllerManager(client, controllers, identity=identity, lease_name="test-manager", **timing)


async def collects(client: Client, tag: str) -> None:
    """The garbage collector is at work: a dependent of a deleted owner goes."""
    cms = client.resource("v1", "configmaps")
    owner = await cms.create({"metadata": {"name": f"{tag}-owner"}}, "default")
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": f"{tag}-owner", "uid": owner["metadata"]["uid"]}
    await cms.create({"metadata": {"name": f"{tag}-dependent", "ownerReferences": [ref]}}, "default")
    await cms.delete(f"{tag}-owner", "default")
    await gone(cms, f"{tag}-dependent", "default")


async def test_only_the_leader_runs_controllers_and_a_standby_takes_over(
    client: Client, cluster: Platform
) -> None:
    one, two = manager(client, cluster, "one"), manager(client, cluster, "two")
    await one.start()
    await two.start()
    try:
        await eventually(
            lambda: one.controllers_running or two.controllers_running, timeout=30, what="a leader running"
        )
        leader, standby = (one, two) if one.controllers_running else (two, one)
        assert not standby.controllers_running
        assert all(not c.running for c in standby.controllers)
        await collects(client, "first")
        assert not standby.controllers_running

        await leader.stop()
        assert all(not c.running for c in leader.controllers)
        await eventually(lambda: standby.controllers_running, timeout=30, what="the standby to take over")
        await collects(client, "second")
        lease = await client.resource("coordination.k8s.io/v1", "leases").get("test-manager", "kube-system")
        assert lease["spec"]["holderIdentity"] == standby.identity
    finally:
        await one.stop()
        await two.stop()


async def test_without_leader_election(client: Client, cluster: Platform) -> None:
    solo = manager(client, cluster, "solo", leader_election=False)
    await solo.start()
    try:
        async with asyncio.timeout(30):
            await solo.wait_started()
        assert solo.is_leader
        await collects(client, "solo")
    finally:
        await solo.stop()


async def test_controllers_share_informers_and_the_collector_reuses_whole_caches(
    client: Client, cluster: Platform
) -> None:
    """One informer per kind for all the manager's controllers; the collector, started last, uses the
    namespace controller's informer instead of a metadata-only one of its own, and still collects."""
    namespaces = NamespaceController(client, cluster.registry)
    collector = GarbageCollector(client, cluster.registry)
    shared = ControllerManager(
        client, [namespaces, collector], identity="shared", lease_name="test-manager", leader_election=False
    )
    await shared.start()
    try:
        async with asyncio.timeout(30):
            await shared.wait_started()
        assert namespaces.shared_informers is collector.shared_informers is shared.informers
        by_plural = {i.resources.plural: i for i in collector.informers}
        assert by_plural["namespaces"] is namespaces.informers[0], "reused, not a second list+watch"
        assert by_plural["configmaps"].transform is not None, "metadata only where nobody caches more"
        assert len(shared.informers) == len(collector.informers)

        owner = await client.resource("v1", "namespaces").create({"metadata": {"name": "shared-owner"}})
        uid = owner["metadata"]["uid"]
        ref = {"apiVersion": "v1", "kind": "Namespace", "name": "shared-owner", "uid": uid}
        cms = client.resource("v1", "configmaps")
        await cms.create({"metadata": {"name": "owned-by-a-namespace", "ownerReferences": [ref]}}, "default")
        await client.resource("v1", "namespaces").delete("shared-owner")
        await gone(cms, "owned-by-a-namespace", "default")
    finally:
        await shared.stop()
    assert len(shared.informers) == 0, "every informer stopped with the controllers"
