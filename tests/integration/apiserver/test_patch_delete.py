"""PATCH types, deletion with finalizers and propagation, Table output and discovery negotiation."""

from __future__ import annotations

from typing import Any

import httpx

CM = "/api/v1/namespaces/default/configmaps"
WD = "/apis/test.kubevisor.io/v1/namespaces/default/widgets"
MERGE = {"content-type": "application/merge-patch+json"}
JSONP = {"content-type": "application/json-patch+json"}
SMP = {"content-type": "application/strategic-merge-patch+json"}


async def test_patch_types(http: httpx.AsyncClient) -> None:
    await http.post(CM, json={"metadata": {"name": "p", "finalizers": ["a/x"]}, "data": {"a": "1", "b": "2"}})
    r = await http.patch(f"{CM}/p", json={"data": {"a": None, "c": "3"}}, headers=MERGE)
    assert r.status_code == 200 and r.json()["data"] == {"b": "2", "c": "3"}
    r = await http.patch(f"{CM}/p", json=[{"op": "replace", "path": "/data/b", "value": "9"}], headers=JSONP)
    assert r.json()["data"]["b"] == "9"
    r = await http.patch(f"{CM}/p", json=[{"op": "test", "path": "/data/b", "value": "0"}], headers=JSONP)
    assert r.status_code == 422
    r = await http.patch(f"{CM}/p", json={"metadata": {"finalizers": ["b/y"]}}, headers=SMP)
    assert sorted(r.json()["metadata"]["finalizers"]) == ["a/x", "b/y"]  # finalizers merge as a set
    r = await http.patch(f"{CM}/p", json={"$setElementOrder/metadata": 1}, headers=SMP)
    assert r.status_code in (400, 422)
    r = await http.patch(
        f"{CM}/p", json={"metadata": {"resourceVersion": "1"}, "data": {"z": "z"}}, headers=MERGE
    )
    assert r.status_code == 409
    await http.patch(f"{CM}/p", json={"metadata": {"finalizers": None}}, headers=MERGE)

    await http.post(WD, json={"metadata": {"name": "w"}, "spec": {"size": 1, "parts": ["a"]}})
    r = await http.patch(f"{WD}/w", json={"spec": {"size": 2}}, headers=SMP)
    assert r.status_code == 415 and r.json()["reason"] == "UnsupportedMediaType"
    r = await http.patch(f"{WD}/w", json={"spec": {"parts": ["b"]}}, headers=MERGE)
    assert r.json()["spec"] == {"size": 1, "parts": ["b"]} and r.json()["metadata"]["generation"] == 2
    r = await http.patch(
        f"{WD}/w", content=b"spec: {size: 3}", headers={"content-type": "application/apply-patch+yaml"}
    )
    assert r.status_code == 415
    r = await http.patch(f"{WD}/w?fieldValidation=Strict", json={"spec": {"bogus": 1}}, headers=MERGE)
    assert r.status_code == 400
    r = await http.patch(f"{WD}/nope", json={"spec": {}}, headers=MERGE)
    assert r.status_code == 404


async def test_finalizers_hold_deletion(http: httpx.AsyncClient) -> None:
    await http.post(CM, json={"metadata": {"name": "f", "finalizers": ["example.com/hold"]}})
    r = await http.delete(f"{CM}/f")
    assert r.status_code == 200
    obj = r.json()
    assert obj["metadata"]["deletionTimestamp"]
    obj = (await http.get(f"{CM}/f")).json()
    assert obj["metadata"]["deletionTimestamp"]
    r = await http.patch(
        f"{CM}/f", json={"metadata": {"finalizers": ["example.com/hold", "new/one"]}}, headers=MERGE
    )
    assert r.status_code == 422 and "no new finalizers" in r.json()["message"]
    r = await http.patch(f"{CM}/f", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert r.status_code == 200
    assert (await http.get(f"{CM}/f")).status_code == 404


async def test_delete_preconditions_and_dry_run(http: httpx.AsyncClient) -> None:
    created = (await http.post(CM, json={"metadata": {"name": "d"}})).json()
    r = await http.request("DELETE", f"{CM}/d", json={"preconditions": {"uid": "other"}})
    assert r.status_code == 409
    r = await http.request("DELETE", f"{CM}/d", json={"preconditions": {"resourceVersion": "1"}})
    assert r.status_code == 409
    r = await http.request("DELETE", f"{CM}/d?dryRun=All")
    assert r.status_code == 200
    assert (await http.get(f"{CM}/d")).status_code == 200
    r = await http.request("DELETE", f"{CM}/d", json={"preconditions": {"uid": created["metadata"]["uid"]}})
    assert r.status_code == 200
    assert (await http.delete(f"{CM}/d")).status_code == 404
    r = await http.delete("/api/v1/namespaces/default")
    assert r.status_code == 403


async def test_propagation_finalizers(http: httpx.AsyncClient) -> None:
    await http.post(WD, json={"metadata": {"name": "orph"}})
    r = await http.request("DELETE", f"{WD}/orph", json={"propagationPolicy": "Orphan"})
    fins = r.json()["metadata"]["finalizers"]
    assert fins == ["orphan"]
    await http.post(WD, json={"metadata": {"name": "fg"}})
    r = await http.request("DELETE", f"{WD}/fg?propagationPolicy=Foreground")
    assert r.json()["metadata"]["finalizers"] == ["foregroundDeletion"]
    r = await http.request("DELETE", f"{WD}/fg", json={"propagationPolicy": "Sideways"})
    assert r.status_code == 422


async def test_table_output(http: httpx.AsyncClient) -> None:
    await http.post(CM, json={"metadata": {"name": "t"}, "data": {"a": "1", "b": "2"}})
    accept = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    r = await http.get(CM, headers={"accept": accept})
    assert r.headers["content-type"].startswith("application/json;as=Table;v=v1")
    table: dict[str, Any] = r.json()
    assert table["kind"] == "Table"
    cols = [c["name"] for c in table["columnDefinitions"]]
    assert cols[:2] == ["Name", "Data"]
    row = table["rows"][0]
    assert row["cells"][:2] == ["t", 2] and row["object"]["kind"] == "PartialObjectMetadata"
    r = await http.get(f"{CM}/t", headers={"accept": "application/json;as=Table;v=v1beta1;g=meta.k8s.io"})
    assert r.json()["apiVersion"] == "meta.k8s.io/v1beta1"
    r = await http.get(CM, headers={"accept": "application/vnd.kubernetes.protobuf"})
    assert r.status_code == 406
    r = await http.get(CM, headers={"accept": "application/vnd.kubernetes.protobuf,application/json"})
    assert r.status_code == 200 and r.json()["kind"] == "ConfigMapList"


async def test_discovery_negotiation(http: httpx.AsyncClient) -> None:
    legacy = await http.get("/apis", headers={"accept": "application/json"})
    assert legacy.json()["kind"] == "APIGroupList"
    v2beta1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
    r = await http.get("/apis", headers={"accept": v2beta1})
    assert (
        r.headers["content-type"]
        == "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
    )
    assert r.json()["apiVersion"] == "apidiscovery.k8s.io/v2beta1"
    both = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList," + v2beta1
    r = await http.get("/api", headers={"accept": both})
    body = r.json()
    assert body["apiVersion"] == "apidiscovery.k8s.io/v2"
    resources = {x["resource"]: x for x in body["items"][0]["versions"][0]["resources"]}
    assert resources["configmaps"]["shortNames"] == ["cm"]
    assert resources["namespaces"]["scope"] == "Cluster"
    r = await http.get("/apis/test.kubevisor.io/v1")
    names = [x["name"] for x in r.json()["resources"]]
    assert names == ["widgets", "widgets/status"]
    r = await http.get("/api/v1")
    assert any(x["name"] == "serviceaccounts/token" for x in r.json()["resources"])
