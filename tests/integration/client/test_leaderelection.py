"""Leader election on a real Lease: one leader at a time, hand-over on release, takeover on silence."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from kubevisor.client import Client, LeaderElector
from kubevisor.client.timestamps import parse_time
from tests.integration.client.libcluster import eventually, until


def elector(client: Client, identity: str, **options: Any) -> LeaderElector:
    timing: dict[str, Any] = {"lease_duration": 1, "renew_deadline": 0.6, "retry_period": 0.1}
    timing.update(options)
    leases = client.resource("coordination.k8s.io/v1", "leases")
    return LeaderElector(leases, "test-election", "default", identity, **timing)


def renewed_after(previous: str, lease: dict[str, Any]) -> bool:
    return bool(lease["spec"]["renewTime"] > previous)


async def test_two_candidates_never_lead_at_once_and_hand_over_on_release(client: Client) -> None:
    intervals: list[tuple[str, float, float]] = []
    loop = asyncio.get_running_loop()
    candidates = [elector(client, "a"), elector(client, "b")]
    release = {c.identity: asyncio.Event() for c in candidates}

    async def campaign(candidate: LeaderElector) -> None:
        async with candidate.leading():
            start = loop.time()
            await release[candidate.identity].wait()
            intervals.append((candidate.identity, start, loop.time()))

    tasks = [asyncio.create_task(campaign(c)) for c in candidates]
    try:
        await eventually(lambda: any(c.is_leader for c in candidates), what="a leader")
        (first,) = [c for c in candidates if c.is_leader]
        (second,) = [c for c in candidates if not c.is_leader]
        lease = await client.resource("coordination.k8s.io/v1", "leases").get("test-election", "default")
        assert lease["spec"]["holderIdentity"] == first.identity
        assert lease["spec"]["leaseDurationSeconds"] == 1
        parse_time(lease["spec"]["renewTime"])
        # Renewals keep the other candidate out for several lease durations.
        await eventually(lambda: second.leader == first.identity, what="the other candidate sees the leader")
        leases = client.resource("coordination.k8s.io/v1", "leases")
        for _ in range(3):  # three renewals: several lease durations, and the other stays out
            lease = await until(
                lambda: leases.get("test-election", "default"),
                functools.partial(renewed_after, lease["spec"]["renewTime"]),
                what="a renewal",
            )
            assert lease["spec"]["holderIdentity"] == first.identity
            assert not second.is_leader
        release[first.identity].set()
        await eventually(lambda: second.is_leader, timeout=2, what="hand-over right after the release")
        release[second.identity].set()
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    (_, _, first_end), (_, second_start, _) = sorted(intervals, key=lambda i: i[1])
    assert first_end <= second_start, f"leadership overlapped: {intervals}"
    lease = await client.resource("coordination.k8s.io/v1", "leases").get("test-election", "default")
    assert lease["spec"]["holderIdentity"] == ""
    assert lease["spec"]["leaseTransitions"] == 1


async def test_takeover_after_the_leader_stops_renewing(client: Client) -> None:
    silent, successor = elector(client, "silent"), elector(client, "successor")
    assert await silent.try_acquire_or_renew()  # then it never renews: a hung or partitioned process
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):
        await successor.acquire()
    assert loop.time() - started >= 0.9, "the successor waits out the lease duration"
    lease = await client.resource("coordination.k8s.io/v1", "leases").get("test-election", "default")
    assert lease["spec"]["holderIdentity"] == "successor"
    assert lease["spec"]["leaseTransitions"] == 1
    assert not await silent.try_acquire_or_renew(), "the old leader, back, does not take it back"
