"""Informer logic against a scripted in-memory server: sync, handlers, re-watch, re-list after 410, and
the shared-informer factory (one informer per key, late handlers, release)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kubevisor.client import Client, Config, Informer, SharedInformers, object_key, split_key
from tests.unit.client.fakeserver import FakeServer
from tests.unit.client.libwait import eventually

CMS = "/api/v1/namespaces/ns/configmaps"


def cm(name: str, value: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns"},
        "data": {"v": value},
    }


class Seen:
    """Handler calls as (kind, name, value) tuples."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def add(self, obj: dict[str, Any]) -> None:
        self.calls.append(("add", obj["metadata"]["name"], obj["data"]["v"]))

    def update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        assert old["metadata"]["name"] == new["metadata"]["name"]
        self.calls.append(("update", new["metadata"]["name"], f"{old['data']['v']}->{new['data']['v']}"))

    def delete(self, obj: dict[str, Any]) -> None:
        self.calls.append(("delete", obj["metadata"]["name"], obj["data"]["v"]))


@pytest.fixture
async def fake() -> FakeServer:
    return FakeServer(CMS)


@pytest.fixture
async def client(fake: FakeServer) -> AsyncIterator[Client]:
    async with Client(Config(server="https://k8s.test"), transport=httpx.MockTransport(fake.handler)) as c:
        yield c


def _informer(client: Client, seen: Seen, **options: Any) -> Informer:
    return Informer(
        client.resource("v1", "configmaps"),
        "ns",
        on_add=seen.add,
        on_update=seen.update,
        on_delete=seen.delete,
        backoff_initial=0.01,
        **options,
    )


def test_keys() -> None:
    assert object_key({"metadata": {"name": "a", "namespace": "ns"}}) == "ns/a"
    assert object_key({"metadata": {"name": "node1"}}) == "node1"
    assert split_key("ns/a") == ("ns", "a")
    assert split_key("node1") == (None, "node1")


async def test_lists_then_watches_and_keeps_the_cache(fake: FakeServer, client: Client) -> None:
    fake.put(CMS, cm("a"))
    fake.put(CMS, cm("b"))
    seen = Seen()
    async with _informer(client, seen) as informer:
        await informer.wait_synced()
        assert informer.has_synced
        assert sorted(informer.keys()) == ["ns/a", "ns/b"]
        assert seen.calls == [("add", "a", "1"), ("add", "b", "1")]
        await eventually(lambda: fake.watches, what="the informer watches")
        assert fake.watch_requests()[0].url.params["resourceVersion"] == "2", "watch from the list's version"

        fake.put(CMS, cm("a", "2"))
        fake.remove(CMS, "b")
        fake.put(CMS, cm("c"))
        await eventually(lambda: len(seen.calls) == 5, what="three more handler calls")
        assert seen.calls[2:] == [("update", "a", "1->2"), ("delete", "b", "1"), ("add", "c", "1")]
        assert informer.get("ns/a") == fake.objects[CMS]["a"]
        assert informer.get("ns/b") is None
        assert len(informer) == 2
        assert informer.last_resource_version == "5"


async def test_rewatches_from_the_last_version_including_bookmarks(fake: FakeServer, client: Client) -> None:
    fake.put(CMS, cm("a"))
    seen = Seen()
    async with _informer(client, seen) as informer:
        await informer.wait_synced()
        await eventually(lambda: fake.watches, what="the informer watches")
        fake.put(CMS, cm("b"))
        fake.bookmark(CMS, 40)  # writes to other kinds moved the revision on
        await eventually(lambda: informer.last_resource_version == "40", what="bookmark seen")
        fake.end_watches()
        await eventually(lambda: len(fake.watch_requests()) == 2, what="a second watch")
        assert fake.watch_requests()[1].url.params["resourceVersion"] == "40"
        assert informer.lists == 1, "a normally ended stream is resumed, not re-listed"
        assert seen.calls == [("add", "a", "1"), ("add", "b", "1")]


async def test_after_410_it_relists_and_reports_what_changed_meanwhile(
    fake: FakeServer, client: Client
) -> None:
    for name in ("keep", "change", "vanish"):
        fake.put(CMS, cm(name))
    seen = Seen()
    async with _informer(client, seen) as informer:
        await informer.wait_synced()
        await eventually(lambda: fake.watches, what="the informer watches")
        fake.muted = True  # the informer misses these...
        fake.put(CMS, cm("change", "2"))
        fake.remove(CMS, "vanish")
        fake.put(CMS, cm("appear"))
        fake.compact()  # ...and cannot replay them
        fake.muted = False
        fake.end_watches()
        await eventually(lambda: informer.lists == 2, what="a second list after 410")
        await eventually(lambda: len(seen.calls) == 6, what="synthetic events")
        assert sorted(seen.calls[3:]) == [
            ("add", "appear", "1"),
            ("delete", "vanish", "1"),
            ("update", "change", "1->2"),
        ]
        assert sorted(informer.keys()) == ["ns/appear", "ns/change", "ns/keep"]
        await eventually(lambda: fake.watches, what="watching again")
        assert fake.watch_requests()[-1].url.params["resourceVersion"] == str(fake.revision)


async def test_connection_errors_are_retried_with_backoff(fake: FakeServer, client: Client) -> None:
    fake.put(CMS, cm("a"))
    fake.fail_next = [httpx.ConnectError("refused"), httpx.ConnectError("refused again")]
    seen = Seen()
    async with _informer(client, seen) as informer:
        async with asyncio.timeout(5):
            await informer.wait_synced()
        assert informer.keys() == ["ns/a"]
        assert len(fake.list_requests()) == 3


async def test_a_failing_handler_does_not_stop_the_informer(fake: FakeServer, client: Client) -> None:
    fake.put(CMS, cm("a"))
    seen = Seen()

    def explode(obj: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    informer = Informer(client.resource("v1", "configmaps"), "ns", on_add=explode)
    informer.add_handlers(on_add=seen.add)
    async with informer:
        await informer.wait_synced()
        await eventually(lambda: fake.watches, what="the informer watches")
        fake.put(CMS, cm("b"))
        await eventually(lambda: len(seen.calls) == 2, what="both adds")


async def test_handlers_added_after_sync_get_the_cache_as_adds(fake: FakeServer, client: Client) -> None:
    fake.put(CMS, cm("a"))
    informer = Informer(client.resource("v1", "configmaps"), "ns")
    async with informer:
        await informer.wait_synced()
        late = Seen()
        informer.add_handlers(on_add=late.add)
        assert late.calls == [("add", "a", "1")]


async def test_wait_synced_needs_a_started_informer(client: Client) -> None:
    informer = Informer(client.resource("v1", "configmaps"), "ns")
    with pytest.raises(RuntimeError, match="before start"):
        await informer.wait_synced()
    await informer.stop()  # stopping a never-started informer is fine


async def test_wait_synced_fails_if_the_informer_is_stopped_first(fake: FakeServer, client: Client) -> None:
    fake.fail_next = [httpx.ConnectError("refused")] * 100  # never syncs
    informer = Informer(client.resource("v1", "configmaps"), "ns", backoff_initial=0.01)
    informer.start()
    waiter = asyncio.create_task(informer.wait_synced())
    await eventually(lambda: len(fake.requests) >= 2, what="a retried list")
    await informer.stop()
    with pytest.raises(RuntimeError, match="stopped before it synced"):
        async with asyncio.timeout(5):
            await waiter


async def test_removed_handlers_get_no_more_calls(fake: FakeServer, client: Client) -> None:
    fake.put(CMS, cm("a"))
    kept, removed = Seen(), Seen()
    async with Informer(client.resource("v1", "configmaps"), "ns") as informer:
        informer.add_handlers(on_add=kept.add)
        registration = informer.add_handlers(on_add=removed.add)
        await informer.wait_synced()
        informer.remove_handlers(registration)
        informer.remove_handlers(registration)  # idempotent
        await eventually(lambda: fake.watches, what="the informer watches")
        fake.put(CMS, cm("b"))
        await eventually(lambda: len(kept.calls) == 2, what="the kept handler sees b")
        assert removed.calls == [("add", "a", "1")]


def _metadata_only(obj: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": obj["metadata"]}


async def test_shared_informers_are_one_per_key(fake: FakeServer, client: Client) -> None:
    fake.put(CMS, cm("a"))
    shared = SharedInformers(backoff_initial=0.01)
    try:
        cms = client.resource("v1", "configmaps")
        first = shared.informer(cms, "ns")
        assert shared.informer(client.resource("v1", "configmaps"), "ns") is first, "same client and key"
        assert shared.users(first) == 2
        assert shared.informer(cms, "ns", transform=_metadata_only) is shared.informer(
            cms, "ns", transform=_metadata_only
        ), "the same transform function"
        different = [
            shared.informer(cms, "other"),
            shared.informer(cms, "ns", label_selector="app=x"),
            shared.informer(cms, "ns", field_selector="metadata.name=a"),
            shared.informer(cms, "ns", transform=lambda o: o),
        ]
        assert len({id(i) for i in [first, *different]}) == 5
        assert len(shared) == 6
        transport = httpx.MockTransport(fake.handler)
        async with Client(Config(server="https://k8s.test"), transport=transport) as other:
            mine = shared.informer(other.resource("v1", "configmaps"), "ns")
            assert mine is not first, "never shared across clients"
            await shared.release(mine)
        await first.wait_synced()
        assert first.keys() == ["ns/a"]
        assert first.lists == 1
    finally:
        await shared.aclose()  # stops all, whoever holds them (the leaked-task check sees the rest)
    assert len(shared) == 0


async def test_a_late_consumer_of_a_shared_informer_sees_every_cached_object(
    fake: FakeServer, client: Client
) -> None:
    fake.put(CMS, cm("a"))
    fake.put(CMS, cm("b"))
    shared = SharedInformers()
    try:
        early, late = Seen(), Seen()
        informer = shared.informer(client.resource("v1", "configmaps"), "ns")
        informer.add_handlers(on_add=early.add, on_update=early.update, on_delete=early.delete)
        await informer.wait_synced()
        again = shared.informer(client.resource("v1", "configmaps"), "ns")
        assert again is informer
        again.add_handlers(on_add=late.add, on_update=late.update, on_delete=late.delete)
        assert sorted(late.calls) == [("add", "a", "1"), ("add", "b", "1")], "the cache replayed as adds"
        await eventually(lambda: fake.watches, what="the informer watches")
        fake.put(CMS, cm("a", "2"))
        await eventually(lambda: len(late.calls) == 3 and len(early.calls) == 3, what="both see the update")
        assert late.calls[-1] == early.calls[-1] == ("update", "a", "1->2")
    finally:
        await shared.aclose()


async def test_the_last_release_stops_a_shared_informer(fake: FakeServer, client: Client) -> None:
    fake.put(CMS, cm("a"))
    shared = SharedInformers()
    cms = client.resource("v1", "configmaps")
    one = shared.informer(cms, "ns")
    two = shared.informer(cms, "ns")
    await one.wait_synced()
    await shared.release(one)
    assert shared.users(two) == 1 and len(shared) == 1, "still held by the second consumer"
    await eventually(lambda: fake.watches, what="still watching")
    await shared.release(two)
    assert len(shared) == 0 and shared.users(two) == 0
    await shared.release(two)  # releasing a stopped informer is a no-op
    fresh = shared.informer(cms, "ns")
    try:
        assert fresh is not one, "a stopped informer is never handed out again"
        await fresh.wait_synced()
        assert len(fake.list_requests()) == 2, "the new informer lists afresh"
    finally:
        await shared.release(fresh)
