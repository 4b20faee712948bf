"""The reconciler framework: what each way of ending ``reconcile`` does to the key, and handlers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from kubevisor.client import Client, Config, ConflictError, SharedInformers
from kubevisor.controllers import Controller, PermanentError, Result, TemporaryError
from tests.unit.client.fakeserver import FakeServer
from tests.unit.client.libwait import eventually

CMS = "/api/v1/namespaces/ns/configmaps"


class Scripted(Controller):
    """A controller whose reconcile does what the key says, counting calls."""

    name = "scripted"

    def __init__(self, client: Client) -> None:
        super().__init__(client, concurrency=3)
        self.calls: Counter[str] = Counter()
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    async def reconcile(self, key: str) -> Result | None:
        self.calls[key] += 1
        n = self.calls[key]
        if key == "ok":
            return None
        if key == "again-later":
            return Result(requeue_after=0.01) if n < 3 else None
        if key == "temporary":
            if n < 3:
                raise TemporaryError("not yet", delay=0.01)
            return None
        if key == "temporary-backoff":
            if n < 3:
                raise TemporaryError("not yet")
            return None
        if key == "permanent":
            raise PermanentError("never")
        if key == "conflict":
            if n < 2:
                raise ConflictError(409, "Conflict", "the object has been modified")
            return None
        if key == "bug":
            if n < 3:
                raise RuntimeError("oops")
            return None
        raise AssertionError(key)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    fake = FakeServer(CMS)
    async with Client(Config(server="https://k8s.test"), transport=httpx.MockTransport(fake.handler)) as c:
        yield c


@pytest.mark.parametrize(
    ("key", "calls"),
    [("ok", 1), ("again-later", 3), ("temporary", 3), ("temporary-backoff", 3), ("conflict", 2), ("bug", 3)],
)
async def test_outcomes_requeue_as_documented(client: Client, key: str, calls: int) -> None:
    async with Scripted(client) as ctl:
        ctl.queue.add(key)
        await eventually(
            lambda: ctl.calls[key] == calls and ctl.queue.is_idle(), what=f"{calls} calls of {key}"
        )
        assert ctl.queue.num_requeues(key) == 0, "success forgets the backoff"


async def test_a_permanent_error_is_not_retried(client: Client) -> None:
    async with Scripted(client) as ctl:
        ctl.queue.add("permanent")
        ctl.queue.add("ok")
        await eventually(lambda: ctl.calls["permanent"] == 1 and ctl.queue.is_idle(), what="one attempt")
        assert ctl.queue.delayed == frozenset()
        ctl.queue.add("permanent")  # a new event tries again
        await eventually(lambda: ctl.calls["permanent"] == 2, what="a second attempt after a new event")


async def test_restart_sets_up_afresh(client: Client) -> None:
    ctl = Scripted(client)
    async with ctl:
        assert ctl.running
        with pytest.raises(RuntimeError, match="already running"):
            await ctl.start()
    assert not ctl.running
    async with ctl:
        ctl.queue.add("ok")
        await eventually(lambda: ctl.calls["ok"] == 1, what="work after a restart")
    assert ctl.setups == 2


class Watching(Controller):
    """Enqueues the namespace of every ConfigMap event; reconcile records keys and reads the cache."""

    name = "watching"

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.seen: list[tuple[str, int]] = []

    def setup(self) -> None:
        self.cms = self.watch(
            self.client.resource("v1", "configmaps"),
            namespace="ns",
            keys=lambda obj: [obj["metadata"]["name"].split("-")[0]],
        )

    async def reconcile(self, key: str) -> Result | None:
        matching = [o for o in self.cms.list() if o["metadata"]["name"].startswith(key)]
        self.seen.append((key, len(matching)))
        return None


async def test_handlers_enqueue_keys_and_reconcile_reads_the_cache() -> None:
    fake = FakeServer(CMS)
    for name in ("a-1", "a-2", "b-1"):
        fake.put(CMS, {"metadata": {"name": name, "namespace": "ns"}})
    async with (
        Client(Config(server="https://k8s.test"), transport=httpx.MockTransport(fake.handler)) as client,
        Watching(client) as ctl,
    ):
        await eventually(lambda: {k for k, _ in ctl.seen} == {"a", "b"}, what="both keys reconciled")
        assert ("a", 2) in ctl.seen, "the workers start after the cache is synced"
        await eventually(lambda: fake.watches, what="watching")
        fake.put(CMS, {"metadata": {"name": "c-1", "namespace": "ns"}})
        await eventually(lambda: ("c", 1) in ctl.seen, what="a key from a watch event")


async def test_stop_cancels_a_stuck_worker_after_the_grace_period(client: Client) -> None:
    class Stuck(Scripted):
        stop_grace_period = 0.05

        async def reconcile(self, key: str) -> Result | None:
            self.calls[key] += 1
            await asyncio.Event().wait()
            return None

    ctl = Stuck(client)
    await ctl.start()
    ctl.queue.add("x")
    await eventually(lambda: ctl.calls["x"] == 1, what="the worker to start")
    async with asyncio.timeout(5):
        await ctl.stop()
    assert not ctl.running


async def test_controllers_with_a_shared_factory_list_and_watch_once() -> None:
    fake = FakeServer(CMS)
    for name in ("a-1", "b-1"):
        fake.put(CMS, {"metadata": {"name": name, "namespace": "ns"}})
    shared = SharedInformers()
    transport = httpx.MockTransport(fake.handler)
    async with Client(Config(server="https://k8s.test"), transport=transport) as client:
        one, two = Watching(client), Watching(client)
        one.shared_informers = two.shared_informers = shared
        try:
            await one.start()
            await two.start()  # late: the synced cache is replayed to its handlers
            assert one.cms is two.cms and len(shared) == 1
            assert len(fake.list_requests()) == 1
            await eventually(lambda: {k for k, _ in two.seen} == {"a", "b"}, what="the late one's keys")

            await one.stop()  # leaves the informer to the other controller, and gets no more events
            assert shared.users(two.cms) == 1
            seen_by_one = list(one.seen)
            await eventually(lambda: fake.watches, what="watching")
            fake.put(CMS, {"metadata": {"name": "c-1", "namespace": "ns"}})
            await eventually(lambda: ("c", 1) in two.seen, what="the running controller sees c")
            assert one.seen == seen_by_one

            await one.start()  # a restart (leadership regained) sees everything again
            await eventually(lambda: ("c", 1) in one.seen, what="the restarted controller sees c")
            assert len(fake.list_requests()) == 1, "the informer kept running for the other controller"
        finally:
            await one.stop()
            await two.stop()
        assert len(shared) == 0, "the last release stopped the informer"
