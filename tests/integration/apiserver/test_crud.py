"""CRUD semantics of the real API server over HTTPS: metadata, conflicts, status, generation, errors."""

from __future__ import annotations

from typing import Any

import httpx

from tests.integration.conftest import client_for

CM = "/api/v1/namespaces/default/configmaps"
WD = "/apis/test.kubevisor.io/v1/namespaces/default/widgets"


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


def widget(name: str, size: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "test.kubevisor.io/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


async def test_create_get_list_update_delete(http: httpx.AsyncClient) -> None:
    r = await http.post(CM, json=cm("one", a="1"))
    assert r.status_code == 201, r.text
    created = r.json()
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    assert "generation" not in meta  # ConfigMaps have no spec

    got = (await http.get(f"{CM}/one")).json()
    assert got == created

    lst = (await http.get(CM)).json()
    assert lst["kind"] == "ConfigMapList" and [i["metadata"]["name"] for i in lst["items"]] == ["one"]
    assert int(lst["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])

    got["data"]["b"] = "2"
    r = await http.put(f"{CM}/one", json=got)
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["data"] == {"a": "1", "b": "2"}
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert updated["metadata"]["uid"] == meta["uid"]

    r = await http.delete(f"{CM}/one")
    assert r.status_code == 200 and r.json()["status"] == "Success"
    r = await http.get(f"{CM}/one")
    assert r.status_code == 404
    body = r.json()
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["details"]["name"] == "one"


async def test_stale_resource_version_conflicts(http: httpx.AsyncClient) -> None:
    first = (await http.post(CM, json=cm("c", a="1"))).json()
    stale = dict(first, data={"a": "2"})
    assert (await http.put(f"{CM}/c", json=stale)).status_code == 200
    r = await http.put(f"{CM}/c", json=dict(first, data={"a": "3"}))
    assert r.status_code == 409 and r.json()["reason"] == "Conflict"
    assert (await http.get(f"{CM}/c")).json()["data"] == {"a": "2"}


async def test_already_exists_and_generate_name(http: httpx.AsyncClient) -> None:
    assert (await http.post(CM, json=cm("dup"))).status_code == 201
    r = await http.post(CM, json=cm("dup"))
    assert r.status_code == 409 and r.json()["reason"] == "AlreadyExists"
    r = await http.post(CM, json={"metadata": {"generateName": "gen-"}, "data": {}})
    assert r.status_code == 201
    name = r.json()["metadata"]["name"]
    assert name.startswith("gen-") and len(name) == len("gen-") + 5


async def test_generation_and_status_subresource(http: httpx.AsyncClient) -> None:
    w = widget("w", 1)
    w["status"] = {"phase": "Ignored"}
    created = (await http.post(WD, json=w)).json()
    assert created["metadata"]["generation"] == 1
    assert "status" not in created  # the main resource ignores status

    # a metadata-only change does not bump generation
    created["metadata"]["labels"] = {"a": "b"}
    r = await http.put(f"{WD}/w", json=created)
    assert r.json()["metadata"]["generation"] == 1
    # a spec change does
    obj = r.json()
    obj["spec"]["size"] = 2
    obj["status"] = {"phase": "StillIgnored"}
    obj = (await http.put(f"{WD}/w", json=obj)).json()
    assert obj["metadata"]["generation"] == 2 and "status" not in obj

    # /status ignores everything but status
    obj["status"] = {"phase": "Ready"}
    obj["spec"]["size"] = 99
    r = await http.put(f"{WD}/w/status", json=obj)
    assert r.status_code == 200, r.text
    obj = r.json()
    assert obj["status"] == {"phase": "Ready"} and obj["spec"]["size"] == 2
    assert obj["metadata"]["generation"] == 2
    r = await http.patch(
        f"{WD}/w/status",
        json={"status": {"phase": "Done"}},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert r.json()["status"]["phase"] == "Done"
    assert (await http.get(f"{WD}/w/status")).json()["status"]["phase"] == "Done"


async def test_bad_input_is_4xx_with_causes(http: httpx.AsyncClient) -> None:
    r = await http.post(CM, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["reason"] == "BadRequest"
    r = await http.post(CM, json={"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "x"}})
    assert r.status_code == 400 and "API version" in r.json()["message"]
    r = await http.post(CM, json={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})
    assert r.status_code == 400
    r = await http.post(CM, json=cm("Not_A_Name"))
    assert r.status_code == 422
    assert r.json()["details"]["causes"][0]["field"] == "metadata.name"
    r = await http.post("/api/v1/namespaces/nope/configmaps", json=cm("x"))
    assert r.status_code == 404 and 'namespaces "nope" not found' in r.json()["message"]
    r = await http.post(CM, json={"metadata": {"name": "x"}, "data": {"a": 5}})
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "data.a"
    r = await http.post(CM, content=b"[1,2]", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = await http.post(
        CM,
        content=b'{"metadata": {"name": "big"}, "data": {"a": "' + b"x" * (4 << 20) + b'"}}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    r = await http.post(WD, json={**widget("x"), "spec": {"size": "large"}})
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "spec.size"
    r = await http.get("/api/v1/namespaces/default/nothings")
    assert r.status_code == 404 and r.json()["kind"] == "Status"


async def test_field_validation_and_dry_run(http: httpx.AsyncClient) -> None:
    body = b'{"metadata": {"name": "fv"}, "data": {"a": "1"}, "bogus": 1}'
    ct = {"content-type": "application/json"}
    r = await http.post(f"{CM}?fieldValidation=Strict", content=body, headers=ct)
    assert r.status_code == 400 and 'unknown field "bogus"' in r.json()["message"]
    r = await http.post(f"{CM}?fieldValidation=Warn&dryRun=All", content=body, headers=ct)
    assert r.status_code == 201 and "unknown field" in r.headers["warning"]
    assert (await http.get(f"{CM}/fv")).status_code == 404  # dry run stored nothing
    dup = b'{"metadata": {"name": "fv"}, "data": {"a": "1", "a": "2"}}'
    r = await http.post(f"{CM}?fieldValidation=Strict", content=dup, headers=ct)
    assert r.status_code == 400 and 'duplicate field "data.a"' in r.json()["message"]
    r = await http.post(f"{CM}?fieldValidation=Ignore", content=body, headers=ct)
    assert r.status_code == 201 and "warning" not in r.headers and "bogus" not in r.json()
    r = await http.post(f"{CM}?fieldValidation=Bad", content=body, headers=ct)
    assert r.status_code == 400


async def test_secret_string_data_and_immutable(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/v1/namespaces/default/secrets",
        json={"metadata": {"name": "s"}, "stringData": {"k": "v"}, "immutable": True},
    )
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["data"] == {"k": "dg=="} and s["type"] == "Opaque" and "stringData" not in s
    s["data"]["k"] = "dw=="
    r = await http.put("/api/v1/namespaces/default/secrets/s", json=s)
    assert r.status_code == 422


async def test_unauthenticated_is_refused(plat: Any) -> None:
    async with client_for(plat) as anon:
        assert (await anon.get("/livez")).text == "ok"
        assert (await anon.get("/readyz")).text == "ok"
        assert (await anon.get("/version")).json()["major"] == "1"
        r = await anon.get(CM)
        assert r.status_code == 401 and r.json()["reason"] == "Unauthorized"
        r = await anon.get("/api", headers={"authorization": "Bearer garbage"})
        assert r.status_code == 401
