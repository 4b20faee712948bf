"""Authentication and RBAC: a ServiceAccount token bound to a Role in namespace A cannot touch namespace B."""

from __future__ import annotations

from typing import Any

import httpx

from kubevisor.platform import Platform
from tests.integration.conftest import client_for


async def setup_reader(http: httpx.AsyncClient) -> str:
    for ns in ("team-a", "team-b"):
        assert (await http.post("/api/v1/namespaces", json={"metadata": {"name": ns}})).status_code == 201
        await http.post(
            f"/api/v1/namespaces/{ns}/configmaps", json={"metadata": {"name": "cfg"}, "data": {"x": ns}}
        )
    await http.post("/api/v1/namespaces/team-a/serviceaccounts", json={"metadata": {"name": "reader"}})
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a"
    r = await http.post(
        f"{rbac}/roles",
        json={
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
        },
    )
    assert r.status_code == 201, r.text
    r = await http.post(
        f"{rbac}/rolebindings",
        json={
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "team-a"}],
        },
    )
    assert r.status_code == 201, r.text
    r = await http.post(
        "/api/v1/namespaces/team-a/serviceaccounts/reader/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    assert r.status_code == 201, r.text
    token: str = r.json()["status"]["token"]
    return token


async def test_role_in_namespace_a_grants_nothing_in_b(plat: Platform, http: httpx.AsyncClient) -> None:
    token = await setup_reader(http)
    async with client_for(plat, token) as sa:
        assert (await sa.get("/api/v1/namespaces/team-a/configmaps")).status_code == 200
        assert (await sa.get("/api/v1/namespaces/team-a/configmaps/cfg")).json()["data"] == {"x": "team-a"}
        for url in (
            "/api/v1/namespaces/team-b/configmaps",
            "/api/v1/namespaces/team-b/configmaps/cfg",
            "/api/v1/namespaces/team-b/configmaps?watch=true",
            "/api/v1/configmaps",
            "/api/v1/namespaces/team-a/secrets",
        ):
            r = await sa.get(url)
            assert r.status_code == 403, url
            assert r.json()["reason"] == "Forbidden"
        r = await sa.post("/api/v1/namespaces/team-a/configmaps", json={"metadata": {"name": "new"}})
        assert r.status_code == 403
        assert (await sa.get("/api")).status_code == 200  # discovery is open to authenticated users

        async def can(attrs: dict[str, Any]) -> bool:
            r = await sa.post(
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                json={
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attrs},
                },
            )
            assert r.status_code == 201, r.text
            allowed: bool = r.json()["status"]["allowed"]
            return allowed

        assert await can({"namespace": "team-a", "verb": "list", "resource": "configmaps"})
        assert not await can({"namespace": "team-b", "verb": "list", "resource": "configmaps"})
        assert not await can({"namespace": "team-a", "verb": "delete", "resource": "configmaps"})
        who = await sa.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        assert who.json()["status"]["userInfo"]["username"] == "system:serviceaccount:team-a:reader"

    # the token dies with its ServiceAccount
    await http.delete("/api/v1/namespaces/team-a/serviceaccounts/reader")
    async with client_for(plat, token) as sa:
        assert (await sa.get("/api/v1/namespaces/team-a/configmaps")).status_code == 401
