"""Lists (pagination, selectors, snapshots) and watches (resourceVersion semantics, bookmarks, 410)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from kubevisor.platform import Platform

CM = "/api/v1/namespaces/default/configmaps"


async def make(http: httpx.AsyncClient, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    r = await http.post(CM, json={"metadata": {"name": name, "labels": labels or {}}, "data": {"n": name}})
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def events(http: httpx.AsyncClient, url: str) -> AsyncIterator[dict[str, Any]]:
    async with http.stream("GET", url, timeout=30) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.strip():
                yield json.loads(line)


async def collect(http: httpx.AsyncClient, url: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def run() -> None:
        async for ev in events(http, url):
            got.append(ev)
            if len(got) == count:
                return

    await asyncio.wait_for(run(), timeout)
    return got


async def test_pagination_is_a_consistent_snapshot(http: httpx.AsyncClient) -> None:
    for i in range(7):
        await make(http, f"p{i}")
    first = (await http.get(f"{CM}?limit=3")).json()
    assert [i["metadata"]["name"] for i in first["items"]] == ["p0", "p1", "p2"]
    assert first["metadata"]["remainingItemCount"] == 4
    token = first["metadata"]["continue"]
    await make(http, "p3a")  # written after the first page: not in this list
    await http.delete(f"{CM}/p5")  # deleted after the first page: still in this list
    names: list[str] = []
    while token:
        page = (await http.get(f"{CM}?limit=3&continue={token}")).json()
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == ["p3", "p4", "p5", "p6"]


async def test_expired_continue_token_is_410(plat: Platform, http: httpx.AsyncClient) -> None:
    for i in range(4):
        await make(http, f"e{i}")
    token = (await http.get(f"{CM}?limit=2")).json()["metadata"]["continue"]
    await make(http, "later")
    assert plat.store is not None
    await plat.store.compact(await plat.store.current_revision())
    r = await http.get(f"{CM}?limit=2&continue={token}")
    assert r.status_code == 410 and r.json()["reason"] == "Expired"


async def test_label_and_field_selectors(http: httpx.AsyncClient) -> None:
    await make(http, "a", {"app": "web", "tier": "front"})
    await make(http, "b", {"app": "db"})
    await make(http, "c", {"app": "web"})

    async def names(query: str) -> list[str]:
        r = await http.get(f"{CM}?{query}")
        assert r.status_code == 200, r.text
        return [i["metadata"]["name"] for i in r.json()["items"]]

    assert await names("labelSelector=app%3Dweb") == ["a", "c"]
    assert await names("labelSelector=app%3D%3Dweb") == ["a", "c"]
    assert await names("labelSelector=app!%3Dweb") == ["b"]
    assert await names("labelSelector=app+in+(db,web),tier") == ["a"]
    assert await names("labelSelector=app+notin+(web)") == ["b"]
    assert await names("labelSelector=!tier") == ["b", "c"]
    assert await names("fieldSelector=metadata.name%3Db") == ["b"]
    assert await names("fieldSelector=metadata.name!%3Db,metadata.namespace%3Ddefault") == ["a", "c"]
    assert await names("labelSelector=app%3Dweb&limit=1") == ["a"]
    r = await http.get(f"{CM}?labelSelector=app+in+web")
    assert r.status_code == 400
    r = await http.get(f"{CM}?fieldSelector=spec.nothing%3D1")
    assert r.status_code == 400 and "field label not supported" in r.json()["message"]
    every = (await http.get("/api/v1/configmaps?labelSelector=app")).json()
    assert {i["metadata"]["name"] for i in every["items"]} == {"a", "b", "c"}


async def test_event_involved_object_selectors(http: httpx.AsyncClient) -> None:
    for name, kind in (("e1", "ConfigMap"), ("e2", "Widget")):
        r = await http.post(
            "/api/v1/namespaces/default/events",
            json={
                "metadata": {"name": name},
                "involvedObject": {"kind": kind, "name": "x", "namespace": "default"},
                "reason": "Tested",
                "message": "hello",
                "type": "Normal",
            },
        )
        assert r.status_code == 201, r.text
    r = await http.get(
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.kind%3DWidget,involvedObject.name%3Dx"
    )
    assert [i["metadata"]["name"] for i in r.json()["items"]] == ["e2"]


async def test_watch_resource_version_semantics(http: httpx.AsyncClient) -> None:
    await make(http, "w1")
    rv = (await http.get(CM)).json()["metadata"]["resourceVersion"]

    # unset: synthetic ADDED for current objects, then changes
    async def changes() -> None:
        await asyncio.sleep(0.2)
        await make(http, "w2")
        await http.patch(
            f"{CM}/w2", json={"data": {"x": "y"}}, headers={"content-type": "application/merge-patch+json"}
        )
        await http.delete(f"{CM}/w2")

    task = asyncio.create_task(changes())
    got = await collect(http, f"{CM}?watch=true", 4)
    await task
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "w1"),
        ("ADDED", "w2"),
        ("MODIFIED", "w2"),
        ("DELETED", "w2"),
    ]
    revs = [int(e["object"]["metadata"]["resourceVersion"]) for e in got[1:]]
    assert revs == sorted(revs) and len(set(revs)) == 3

    # N: exactly the changes after N, replayed from history
    replay = await collect(http, f"{CM}?watch=1&resourceVersion={rv}", 3)
    assert [e["type"] for e in replay] == ["ADDED", "MODIFIED", "DELETED"]
    # "0": state then changes
    zero = await collect(http, f"{CM}?watch=1&resourceVersion=0", 1)
    assert zero[0]["type"] == "ADDED" and zero[0]["object"]["metadata"]["name"] == "w1"


async def test_watch_compacted_is_in_band_410(plat: Platform, http: httpx.AsyncClient) -> None:
    old = (await make(http, "c1"))["metadata"]["resourceVersion"]
    await make(http, "c2")
    assert plat.store is not None
    await plat.store.compact(await plat.store.current_revision())
    got = await collect(http, f"{CM}?watch=1&resourceVersion={old}", 1)
    assert got[0]["type"] == "ERROR"
    assert got[0]["object"]["code"] == 410 and got[0]["object"]["reason"] == "Expired"


async def test_watch_selector_exit_is_deleted(http: httpx.AsyncClient) -> None:
    await make(http, "s1", {"app": "web"})
    rv = (await http.get(CM)).json()["metadata"]["resourceVersion"]

    async def relabel() -> None:
        await asyncio.sleep(0.1)
        await http.patch(
            f"{CM}/s1",
            json={"metadata": {"labels": {"app": "db"}}},
            headers={"content-type": "application/merge-patch+json"},
        )
        await http.patch(
            f"{CM}/s1",
            json={"metadata": {"labels": {"app": "web"}}},
            headers={"content-type": "application/merge-patch+json"},
        )

    task = asyncio.create_task(relabel())
    got = await collect(http, f"{CM}?watch=1&resourceVersion={rv}&labelSelector=app%3Dweb", 2)
    await task
    assert [e["type"] for e in got] == ["DELETED", "ADDED"]


async def test_watch_timeout_and_send_initial_events(http: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10):
        got = [e async for e in events(http, f"{CM}?watch=1&timeoutSeconds=1&resourceVersion=1")]
    assert got == []
    r = await http.get(f"{CM}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan")
    assert r.status_code == 422 and r.json()["reason"] == "Invalid"


async def test_watch_bookmarks(http: httpx.AsyncClient, monkeypatch: Any) -> None:
    from kubevisor.apiserver import watching

    monkeypatch.setattr(watching, "BOOKMARK_INTERVAL", 0.2)
    rv = (await make(http, "b1"))["metadata"]["resourceVersion"]
    got = await collect(http, f"{CM}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}", 1)
    assert got[0]["type"] == "BOOKMARK" and got[0]["object"]["metadata"]["resourceVersion"] == rv
