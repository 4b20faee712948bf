"""Request building and response decoding of Client/ResourceClient, against ``httpx.MockTransport``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from kubevisor.api.core import ConfigMap
from kubevisor.api.kinds import KINDS
from kubevisor.client import Client, Config, NotFoundError, TransportError
from kubevisor.client.errors import ProtocolError


class Recorder:
    """A transport handler that records requests and answers from a queue of responses."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.requests: list[httpx.Request] = []
        self.responses = list(responses)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.responses:
            return self.responses.pop(0)
        return httpx.Response(200, json={"kind": "Thing", "metadata": {"name": "x"}})

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self, index: int = -1) -> Any:
        return orjson.loads(self.requests[index].content)


def _client(handler: Callable[[httpx.Request], httpx.Response], **config: Any) -> Client:
    return Client(Config(server="https://k8s.test", **config), transport=httpx.MockTransport(handler))


async def test_crud_paths_methods_and_bodies() -> None:
    rec = Recorder()
    async with _client(rec, namespace="home") as client:
        cms = client.resource("v1", "configmaps")
        await cms.get("a")
        assert (rec.last.method, rec.last.url.path) == ("GET", "/api/v1/namespaces/home/configmaps/a")
        await cms.get("a", "other")
        assert rec.last.url.path == "/api/v1/namespaces/other/configmaps/a"

        await cms.create(
            {"metadata": {"name": "b", "namespace": "theirs"}}, dry_run=True, field_validation="Strict"
        )
        assert (rec.last.method, rec.last.url.path) == ("POST", "/api/v1/namespaces/theirs/configmaps")
        assert dict(rec.last.url.params) == {"dryRun": "All", "fieldValidation": "Strict"}
        assert rec.last.headers["content-type"] == "application/json"
        assert rec.body() == {"metadata": {"name": "b", "namespace": "theirs"}}

        await cms.update({"metadata": {"name": "b", "namespace": "theirs", "resourceVersion": "7"}})
        assert (rec.last.method, rec.last.url.path) == ("PUT", "/api/v1/namespaces/theirs/configmaps/b")
        await cms.update_status({"metadata": {"name": "b"}})
        assert rec.last.url.path == "/api/v1/namespaces/home/configmaps/b/status"

        await cms.delete(
            "b",
            propagation_policy="Foreground",
            grace_period_seconds=0,
            preconditions={"uid": "u1", "resourceVersion": "9"},
        )
        assert (rec.last.method, rec.last.url.path) == ("DELETE", "/api/v1/namespaces/home/configmaps/b")
        assert rec.body() == {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Foreground",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": "u1", "resourceVersion": "9"},
        }

        namespaces = client.resource("v1", "namespaces")
        assert not namespaces.namespaced
        await namespaces.update(
            {"metadata": {"name": "gone"}, "spec": {"finalizers": []}}, subresource="finalize"
        )
        assert rec.last.url.path == "/api/v1/namespaces/gone/finalize"


@pytest.mark.parametrize(
    ("patch_type", "patch", "content_type"),
    [
        ("merge", {"data": {"a": None}}, "application/merge-patch+json"),
        ("json", [{"op": "add", "path": "/data/a", "value": "1"}], "application/json-patch+json"),
        ("strategic", {"data": {"a": "1"}}, "application/strategic-merge-patch+json"),
    ],
)
async def test_patch_types_set_the_content_type(patch_type: Any, patch: Any, content_type: str) -> None:
    rec = Recorder()
    async with _client(rec) as client:
        await client.resource("v1", "configmaps").patch("a", patch, "ns", patch_type=patch_type)
    assert (rec.last.method, rec.last.url.path) == ("PATCH", "/api/v1/namespaces/ns/configmaps/a")
    assert rec.last.headers["content-type"] == content_type
    assert rec.body() == patch


async def test_patch_of_a_subresource_and_unknown_patch_types() -> None:
    rec = Recorder()
    async with _client(rec) as client:
        widgets = client.resource("test.kubevisor.io/v1", "widgets", namespaced=True)
        await widgets.patch("w", {"status": {"phase": "Ready"}}, "ns", subresource="status")
        assert rec.last.url.path == "/apis/test.kubevisor.io/v1/namespaces/ns/widgets/w/status"
        with pytest.raises(ValueError, match="unknown patch_type"):
            await widgets.patch("w", {}, "ns", patch_type="yaml")  # type: ignore[arg-type]


async def test_list_params_and_list_all_follows_continue() -> None:
    pages = [
        {
            "kind": "ConfigMapList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "50", "continue": "t1", "remainingItemCount": 2},
            "items": [{"metadata": {"name": "a"}}],
        },
        {"metadata": {"resourceVersion": "50", "continue": "t2"}, "items": [{"metadata": {"name": "b"}}]},
        {"metadata": {"resourceVersion": "50"}, "items": [{"metadata": {"name": "c"}}]},
    ]
    rec = Recorder(*(httpx.Response(200, json=p) for p in pages))
    async with _client(rec) as client:
        cms = client.resource("v1", "configmaps")
        everything = await cms.list_all(label_selector="app=x", page_size=1)
    assert [o["metadata"]["name"] for o in everything] == ["a", "b", "c"]
    assert everything.resource_version == "50"
    assert everything.continue_ is None
    assert everything.kind == "ConfigMapList"
    assert [r.url.path for r in rec.requests] == ["/api/v1/configmaps"] * 3, "no namespace lists all"
    assert [dict(r.url.params) for r in rec.requests] == [
        {"labelSelector": "app=x", "limit": "1"},
        {"labelSelector": "app=x", "limit": "1", "continue": "t1"},
        {"labelSelector": "app=x", "limit": "1", "continue": "t2"},
    ]


async def test_one_list_page() -> None:
    page = {"metadata": {"resourceVersion": "5", "continue": "tok", "remainingItemCount": 3}, "items": []}
    rec = Recorder(httpx.Response(200, json=page))
    async with _client(rec) as client:
        result = await client.resource("v1", "configmaps").list(
            "ns", field_selector="metadata.name=a", limit=2, resource_version="0"
        )
    assert dict(rec.last.url.params) == {
        "fieldSelector": "metadata.name=a",
        "limit": "2",
        "resourceVersion": "0",
    }
    assert (result.continue_, result.remaining_item_count, len(result)) == ("tok", 3, 0)


async def test_errors_are_raised_from_the_status() -> None:
    status = {
        "kind": "Status",
        "code": 404,
        "reason": "NotFound",
        "message": 'configmaps "a" not found',
        "details": {"name": "a", "kind": "configmaps"},
    }
    async with _client(Recorder(httpx.Response(404, json=status))) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.resource("v1", "configmaps").get("a", "ns")
    assert caught.value.details == {"name": "a", "kind": "configmaps"}


async def test_transport_failures_and_garbage_are_wrapped() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with _client(refuse) as client:
        with pytest.raises(TransportError) as caught:
            await client.resource("v1", "configmaps").get("a", "ns")
        assert isinstance(caught.value.__cause__, httpx.ConnectError)
    async with _client(Recorder(httpx.Response(200, content=b"<html>"))) as client:
        with pytest.raises(ProtocolError):
            await client.resource("v1", "configmaps").get("a", "ns")


async def test_bearer_token_and_accept_headers() -> None:
    rec = Recorder()
    async with _client(rec, token="s3cret") as client:
        await client.resource("v1", "nodes").get("n1")
    assert rec.last.headers["authorization"] == "Bearer s3cret"
    assert rec.last.headers["accept"] == "application/json"
    assert rec.last.url.path == "/api/v1/nodes/n1"


async def test_registry_entries_and_models() -> None:
    lease_kind = next(k for k in KINDS if k.kind == "Lease")
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "a", "namespace": "ns"},
        "data": {"k": "v"},
    }
    rec = Recorder(httpx.Response(200, json=cm))
    async with _client(rec) as client:
        leases = client.resource(lease_kind)
        assert leases.path("ns", "l") == "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"
        assert client.resource("v1", "namespaces").kind is not None
        assert client.resource_for_kind("v1", "ConfigMap").plural == "configmaps"
        with pytest.raises(LookupError):
            client.resource_for_kind("v1", "Nope")
        model = await client.resource("v1", "configmaps").get_model("a", ConfigMap, "ns")
        assert model.data == {"k": "v"}
        assert model.metadata is not None and model.metadata.name == "a"
        await client.resource("v1", "configmaps").create(ConfigMap(data={"x": "y"}), "ns")
    assert rec.body() == {"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "y"}}


def test_names_are_quoted_and_must_not_be_empty() -> None:
    client = _client(Recorder())
    cms = client.resource("v1", "configmaps")
    assert cms.path("ns", "a/b") == "/api/v1/namespaces/ns/configmaps/a%2Fb"
    with pytest.raises(ValueError, match="must not be empty"):
        cms.path("ns", "")
