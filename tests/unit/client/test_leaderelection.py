"""Leader election logic against an in-memory server with resourceVersion conflicts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kubevisor.client import Client, Config, LeaderElector, LeadershipLost
from kubevisor.client.timestamps import parse_time
from tests.unit.client.fakeserver import FakeServer
from tests.unit.client.libwait import eventually

LEASES = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"


@pytest.fixture
async def fake() -> FakeServer:
    return FakeServer(LEASES)


@pytest.fixture
async def client(fake: FakeServer) -> AsyncIterator[Client]:
    async with Client(Config(server="https://k8s.test"), transport=httpx.MockTransport(fake.handler)) as c:
        yield c


def elector(client: Client, identity: str, **options: Any) -> LeaderElector:
    timing: dict[str, Any] = {"lease_duration": 1, "renew_deadline": 0.5, "retry_period": 0.05}
    timing.update(options)
    return LeaderElector(client.resource("coordination.k8s.io/v1", "leases"), "ctl", "ns", identity, **timing)


def spec(fake: FakeServer) -> dict[str, Any]:
    result: dict[str, Any] = fake.objects[LEASES]["ctl"]["spec"]
    return result


def test_timing_must_leave_room_for_the_old_leader_to_stop(client: Client) -> None:
    with pytest.raises(ValueError, match="renew_deadline < lease_duration"):
        elector(client, "a", lease_duration=1, renew_deadline=2)
    with pytest.raises(ValueError, match="Lease resource"):
        LeaderElector(client.resource("v1", "configmaps"), "x", "ns", "a")


async def test_first_candidate_creates_the_lease_with_micro_times(fake: FakeServer, client: Client) -> None:
    a = elector(client, "a")
    assert await a.try_acquire_or_renew()
    lease = spec(fake)
    assert lease["holderIdentity"] == "a"
    assert lease["leaseDurationSeconds"] == 1
    assert lease["leaseTransitions"] == 0
    for field in ("acquireTime", "renewTime"):
        assert len(lease[field]) == len("2024-01-01T00:00:00.000000Z") and lease[field].endswith("Z")
        parse_time(lease[field])
    acquired = lease["acquireTime"]
    assert await a.try_acquire_or_renew()
    assert spec(fake)["acquireTime"] == acquired, "renewing keeps the acquire time"
    assert spec(fake)["renewTime"] >= acquired


async def test_only_one_holder_while_the_leader_renews(fake: FakeServer, client: Client) -> None:
    a, b = elector(client, "a"), elector(client, "b")
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(results) == [False, True], "a create race has one winner"
    leader, other = (a, b) if results[0] else (b, a)
    async with leader.leading():
        assert leader.is_leader
        attempt = asyncio.create_task(other.acquire())
        # Well past the lease duration: the leader keeps renewing, so the other never gets in.
        done, _ = await asyncio.wait({attempt}, timeout=1.5)
        assert not done
        assert other.leader == leader.identity
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
    assert not leader.is_leader


async def test_release_on_exit_lets_the_next_candidate_in_at_once(fake: FakeServer, client: Client) -> None:
    a, b = (
        elector(client, "a", lease_duration=30, renew_deadline=10),
        elector(client, "b", lease_duration=30, renew_deadline=10),
    )
    async with a.leading():
        pass
    assert spec(fake)["holderIdentity"] == ""
    async with asyncio.timeout(2):  # far less than the 30 s lease
        async with b.leading():
            assert spec(fake)["holderIdentity"] == "b"
            assert spec(fake)["leaseTransitions"] == 1


async def test_takeover_after_the_leader_stops_renewing(fake: FakeServer, client: Client) -> None:
    a, b = elector(client, "a"), elector(client, "b")
    assert await a.try_acquire_or_renew()  # a leads once, then goes silent
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(5):
        await b.acquire()
    assert loop.time() - started >= 0.9, "b must wait a full lease duration after it first saw a's record"
    assert spec(fake)["holderIdentity"] == "b"
    assert spec(fake)["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew(), "a, back from its pause, must not take the lease back"


async def test_losing_the_lease_cancels_the_block(fake: FakeServer, client: Client) -> None:
    stopped: list[str] = []
    a = elector(client, "a", on_stopped_leading=lambda: stopped.append("a"))
    entered = asyncio.Event()
    with pytest.raises(LeadershipLost):
        async with asyncio.timeout(5), a.leading():
            entered.set()
            current = fake.objects[LEASES]["ctl"]
            fake.put(LEASES, {**current, "spec": {**current["spec"], "holderIdentity": "thief"}})
            await asyncio.Event().wait()  # would block forever if not cancelled
    assert entered.is_set()
    assert stopped == ["a"]
    assert not a.is_leader
    assert spec(fake)["holderIdentity"] == "thief", "a lost leader does not release someone else's lease"


async def test_run_reacquires_after_losing_and_returns_when_the_body_returns(
    fake: FakeServer, client: Client
) -> None:
    a = elector(client, "a")
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            current = fake.objects[LEASES]["ctl"]
            fake.put(
                LEASES,
                {
                    **current,
                    "spec": {**current["spec"], "holderIdentity": "thief", "leaseDurationSeconds": 1},
                },
            )
            await asyncio.Event().wait()

    async with asyncio.timeout(5):
        await a.run(body)
    assert runs == 2
    assert spec(fake)["holderIdentity"] == "", "released after the body returned"


async def test_an_outside_cancel_is_not_mistaken_for_a_lost_lease(fake: FakeServer, client: Client) -> None:
    a = elector(client, "a")
    entered = asyncio.Event()

    async def lead() -> None:
        async with a.leading():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(lead())
    async with asyncio.timeout(5):
        await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: spec(fake)["holderIdentity"] == "", what="released on cancel")
