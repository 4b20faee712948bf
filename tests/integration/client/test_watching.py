"""Watch streams and informers against the real API server, including history compaction."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubevisor.client import Client, GoneError, Informer, WatchEvent
from kubevisor.platform import Platform
from tests.integration.client.libcluster import compact, eventually


def cm(name: str, value: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"v": value}}


async def test_watch_from_a_list_sees_every_later_change(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("before"), "default")
    listed = await cms.list("default")
    events: list[WatchEvent] = []
    async with asyncio.timeout(10), cms.watch("default", resource_version=listed.resource_version) as stream:
        await cms.create(cm("a"), "default")
        await cms.patch("a", {"data": {"v": "2"}}, "default")
        await cms.delete("a", "default")
        async for event in stream:
            if event.type != "BOOKMARK":
                events.append(event)
            if len(events) == 3:
                break
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
    ]
    assert events[1].object["data"] == {"v": "2"}
    versions = [int(e.resource_version) for e in events]
    assert versions == sorted(versions) and versions[0] > int(listed.resource_version)


async def test_watch_without_version_starts_with_the_current_state(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("x"), "default")
    async with asyncio.timeout(10), cms.watch("default") as stream:
        first = await anext(stream)
    assert (first.type, first.object["metadata"]["name"]) == ("ADDED", "x")


async def test_the_server_ends_a_watch_after_timeout_seconds(client: Client) -> None:
    async with (
        asyncio.timeout(10),
        client.resource("v1", "configmaps").watch("default", timeout_seconds=1) as stream,
    ):
        remaining = [event async for event in stream]
    assert all(event.type == "BOOKMARK" for event in remaining)


async def test_watching_from_compacted_history_raises_gone(client: Client, cluster: Platform) -> None:
    cms = client.resource("v1", "configmaps")
    old = (await cms.list("default")).resource_version
    await cms.create(cm("a"), "default")
    await cms.create(cm("b"), "default")
    await compact(cluster)
    with pytest.raises(GoneError) as caught:
        async with asyncio.timeout(10), cms.watch("default", resource_version=old) as stream:
            async for _ in stream:
                pass
    assert caught.value.status == 410


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def add(self, obj: dict[str, Any]) -> None:
        self.calls.append(("add", obj["metadata"]["name"], obj["data"]["v"]))

    def update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.calls.append(("update", new["metadata"]["name"], f"{old['data']['v']}->{new['data']['v']}"))

    def delete(self, obj: dict[str, Any]) -> None:
        self.calls.append(("delete", obj["metadata"]["name"], obj["data"]["v"]))

    def informer(self, client: Client, **options: Any) -> Informer:
        return Informer(
            client.resource("v1", "configmaps"),
            "default",
            on_add=self.add,
            on_update=self.update,
            on_delete=self.delete,
            backoff_initial=0.05,
            **options,
        )


async def test_informer_syncs_and_follows_changes(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a"), "default")
    seen = Recorder()
    async with seen.informer(client) as informer:
        async with asyncio.timeout(10):
            await informer.wait_synced()
        assert informer.get("default/a") is not None
        assert seen.calls == [("add", "a", "1")]

        await cms.create(cm("b"), "default")
        await cms.patch("a", {"data": {"v": "2"}}, "default")
        await cms.delete("b", "default")
        await eventually(lambda: len(seen.calls) == 4, what="add, update and delete")
        assert seen.calls[1:] == [("add", "b", "1"), ("update", "a", "1->2"), ("delete", "b", "1")]
        assert informer.keys() == ["default/a"]
        assert informer.get("default/a")["data"] == {"v": "2"}  # type: ignore[index]


async def test_informer_resumes_a_watch_the_server_ended(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    seen = Recorder()
    async with seen.informer(client, watch_timeout_seconds=1) as informer:
        async with asyncio.timeout(10):
            await informer.wait_synced()
        version = informer.last_resource_version
        await cms.create(cm("late"), "default")  # might arrive on either side of a re-watch
        await eventually(lambda: ("add", "late", "1") in seen.calls, what="the add")
        first = informer.watches
        await eventually(
            lambda: informer.watches > first, what="the server to end the watch (1-2 s) and a re-watch"
        )
        await cms.patch("late", {"data": {"v": "2"}}, "default")
        await eventually(lambda: ("update", "late", "1->2") in seen.calls, what="the update after re-watch")
        assert informer.lists == 1, "an ended stream is resumed from the last version, not re-listed"
        assert int(informer.last_resource_version) > int(version)


async def test_informer_relists_after_compaction_and_reports_the_gap(
    client: Client, cluster: Platform
) -> None:
    cms = client.resource("v1", "configmaps")
    for name in ("keep", "change", "vanish"):
        await cms.create(cm(name), "default")
    seen = Recorder()
    informer = seen.informer(client)
    async with informer:
        async with asyncio.timeout(10):
            await informer.wait_synced()
    assert informer.lists == 1
    # While it is stopped the world moves on, and the history it would resume from is compacted away.
    await cms.patch("change", {"data": {"v": "2"}}, "default")
    await cms.delete("vanish", "default")
    await cms.create(cm("appear"), "default")
    await compact(cluster)
    seen.calls.clear()
    async with informer:
        await eventually(lambda: informer.lists == 2, what="a re-list after 410 Gone")
        await eventually(lambda: len(seen.calls) == 3, what="three synthetic events")
        assert sorted(seen.calls) == [
            ("add", "appear", "1"),
            ("delete", "vanish", "1"),
            ("update", "change", "1->2"),
        ]
        assert sorted(informer.keys()) == ["default/appear", "default/change", "default/keep"]
        await cms.create(cm("after"), "default")
        await eventually(lambda: ("add", "after", "1") in seen.calls, what="watching again after the re-list")


async def test_informer_with_a_label_selector(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create({"metadata": {"name": "in", "labels": {"app": "x"}}, "data": {"v": "1"}}, "default")
    await cms.create({"metadata": {"name": "out"}, "data": {"v": "1"}}, "default")
    async with Informer(cms, "default", label_selector="app=x") as informer:
        async with asyncio.timeout(10):
            await informer.wait_synced()
        assert informer.keys() == ["default/in"]
