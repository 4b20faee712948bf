"""The client against the real API server: CRUD, errors, patch types, subresources, pagination."""

from __future__ import annotations

import pytest

from kubevisor.api.core import ConfigMap
from kubevisor.api.meta import ObjectMeta
from kubevisor.client import (
    AlreadyExistsError,
    Client,
    ConflictError,
    InvalidError,
    NotFoundError,
    UnsupportedMediaTypeError,
)


def cm(name: str, **data: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


async def test_configmap_crud_round_trip(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    created = await cms.create(cm("a", k="v"), "default")
    assert created["metadata"]["uid"]
    assert created["metadata"]["namespace"] == "default"
    rv = created["metadata"]["resourceVersion"]

    fetched = await cms.get("a", "default")
    assert fetched == created

    fetched["data"]["k"] = "w"
    updated = await cms.update(fetched)
    assert updated["data"] == {"k": "w"}
    assert int(updated["metadata"]["resourceVersion"]) > int(rv)

    stale = {**created, "data": {"k": "stale"}}
    with pytest.raises(ConflictError) as conflict:
        await cms.update(stale)
    assert conflict.value.status == 409
    assert conflict.value.details.get("name") == "a"

    with pytest.raises(AlreadyExistsError):
        await cms.create(cm("a"), "default")

    deleted = await cms.delete("a", "default")
    assert deleted.get("status") == "Success" or deleted.get("metadata", {}).get("name") == "a"
    with pytest.raises(NotFoundError) as missing:
        await cms.get("a", "default")
    assert missing.value.reason == "NotFound"
    assert 'configmaps "a" not found' in missing.value.message


async def test_models_in_and_out(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(ConfigMap(metadata=ObjectMeta(name="typed"), data={"a": "1"}), "default")
    model = await cms.get_model("typed", ConfigMap, "default")
    assert model.data == {"a": "1"}
    assert model.metadata is not None and model.metadata.uid


async def test_dry_run_does_not_persist(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    result = await cms.create(cm("dry"), "default", dry_run=True)
    assert result["metadata"]["name"] == "dry"
    with pytest.raises(NotFoundError):
        await cms.get("dry", "default")


async def test_invalid_objects_name_their_fields(client: Client) -> None:
    with pytest.raises(InvalidError) as caught:
        await client.resource("v1", "configmaps").create(cm("Not_A_Valid_Name"), "default")
    assert caught.value.status == 422
    assert any(cause.get("field") == "metadata.name" for cause in caught.value.causes)


async def test_delete_preconditions(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    created = await cms.create(cm("pre"), "default")
    with pytest.raises(ConflictError, match="Precondition failed"):
        await cms.delete("pre", "default", preconditions={"uid": "not-the-uid"})
    await cms.delete("pre", "default", preconditions={"uid": created["metadata"]["uid"]})


async def test_patch_types(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("p", a="1", b="2"), "default")

    merged = await cms.patch("p", {"data": {"a": None, "c": "3"}}, "default")
    assert merged["data"] == {"b": "2", "c": "3"}

    jsoned = await cms.patch(
        "p",
        [{"op": "remove", "path": "/data/b"}, {"op": "add", "path": "/data/d", "value": "4"}],
        "default",
        patch_type="json",
    )
    assert jsoned["data"] == {"c": "3", "d": "4"}

    strategic = await cms.patch("p", {"metadata": {"labels": {"x": "y"}}}, "default", patch_type="strategic")
    assert strategic["metadata"]["labels"] == {"x": "y"}


async def test_custom_kinds_refuse_strategic_merge_and_have_a_status_subresource(client: Client) -> None:
    widgets = client.resource("test.kubevisor.io/v1", "widgets")
    assert widgets.kind is not None and widgets.kind.kind == "Widget"
    created = await widgets.create(
        {
            "apiVersion": "test.kubevisor.io/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 1},
        },
        "default",
    )
    with pytest.raises(UnsupportedMediaTypeError):
        await widgets.patch("w", {"spec": {"size": 2}}, "default", patch_type="strategic")

    with_status = await widgets.update_status({**created, "status": {"phase": "Ready"}, "spec": {"size": 99}})
    assert with_status["status"] == {"phase": "Ready"}
    assert with_status["spec"] == {"size": 1}, "a status write leaves the spec alone"

    patched = await widgets.patch("w", {"status": {"phase": "Done"}}, "default", subresource="status")
    assert patched["status"]["phase"] == "Done"

    with pytest.raises(ConflictError):
        await widgets.update_status(with_status)  # its resourceVersion is stale now


async def test_list_pagination_and_selectors(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    for i in range(23):
        body = cm(f"item-{i:02}")
        body["metadata"] = {"name": f"item-{i:02}", "labels": {"parity": "even" if i % 2 == 0 else "odd"}}
        await cms.create(body, "default")

    first = await cms.list("default", limit=10)
    assert len(first) == 10
    assert first.continue_
    assert first.resource_version

    everything = await cms.list_all("default", page_size=7)
    names = [o["metadata"]["name"] for o in everything if o["metadata"]["name"].startswith("item-")]
    assert names == [f"item-{i:02}" for i in range(23)]
    assert everything.continue_ is None

    odd = await cms.list_all("default", label_selector="parity=odd", page_size=4)
    assert len(odd) == 11
    one = await cms.list("default", field_selector="metadata.name=item-05")
    assert [o["metadata"]["name"] for o in one] == ["item-05"]

    across = await cms.list(label_selector="parity")
    assert len(across) == 23, "no namespace lists every namespace"


async def test_cluster_scoped_kinds(client: Client) -> None:
    namespaces = client.resource("v1", "namespaces")
    assert not namespaces.namespaced
    created = await namespaces.create({"metadata": {"name": "team-a"}})
    assert "namespace" not in created["metadata"]
    assert created["spec"]["finalizers"] == ["kubernetes"]
    listed = await namespaces.list()
    assert "team-a" in {o["metadata"]["name"] for o in listed}
