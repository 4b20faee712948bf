"""OpenAPI v3: the structure kubectl needs for field validation, strategic merge patch and explain.

kubectl cannot be run here, so the tests walk the documents the way kubectl's code does:
cli-runtime's ``supportsQueryParamV3`` (a PATCH op with the GVK and a ``fieldValidation`` query parameter),
kubectl's ``gvkSupportsPatchOpenAPIV3`` / ``buildStrategicMergePatchFromOpenAPIV3`` (schema found by its
``x-kubernetes-group-version-kind`` list, fields resolved through ``allOf[0]`` and ``$ref``) and explain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import Field

from kubevisor.api.base import KubeModel, patch_merge
from kubevisor.api.core import ObjectReference, Quantity
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind, default_registry
from kubevisor.apiserver.openapi import (
    DEFAULT_SERVER_VERSION,
    OpenAPIV3,
    group_version_namespace,
    group_version_path,
)

REF = "#/components/schemas/"
META = "io.k8s.apimachinery.pkg.apis.meta.v1"
PATCH_TYPES = {"application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"}
SMP = "application/strategic-merge-patch+json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


# --- a non-Kubernetes kind, like KubeVirt's ------------------------------------------------------


class WidgetCondition(KubeModel):
    """A condition."""

    type: str
    """Condition type."""
    status: Literal["True", "False", "Unknown"]
    """Condition status."""


class WidgetSpec(KubeModel):
    """Widget spec."""

    size: Quantity | None = None
    """How big."""
    mode: Literal["fast"] = "fast"
    """The only mode."""
    count: int | float | None = None
    """A number."""
    anything: bool | str | None = None
    """Loosely typed."""
    owner: ObjectReference | None = None
    """A core reference."""


class WidgetStatus(KubeModel):
    """Widget status."""

    conditions: list[WidgetCondition] | None = Field(default=None, json_schema_extra=patch_merge("type"))
    """Conditions."""


class Widget(KubeModel):
    """A widget."""

    api_version: str | None = "widgets.kubevirt.io/v1alpha1"
    """API version."""
    kind: str | None = "Widget"
    """Widget."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: WidgetSpec | None = None
    """Spec."""
    status: WidgetStatus | None = None
    """Status."""


WIDGET = Kind("widgets.kubevirt.io", "v1alpha1", "Widget", "widgets", Widget, short_names=("wd",))


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> OpenAPIV3:
    registry = default_registry()
    registry.register(WIDGET)
    return OpenAPIV3(registry)


def _doc(openapi: OpenAPIV3, gv_path: str) -> dict[str, Any]:
    found = openapi.document(gv_path)
    assert found is not None, gv_path
    parsed: dict[str, Any] = json.loads(found[0])
    return parsed


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _schemas(doc: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = doc["components"]["schemas"]
    return schemas


def _schema_for_gvk(doc: dict[str, Any], group: str, version: str, kind: str) -> dict[str, Any]:
    """kubectl's gvkMatchesArray over components.schemas; exactly one schema may claim a GVK."""
    gvk = {"group": group, "version": version, "kind": kind}
    found: list[dict[str, Any]] = [
        s for s in _schemas(doc).values() if gvk in s.get("x-kubernetes-group-version-kind", [])
    ]
    assert len(found) == 1, f"{len(found)} schemas for {gvk}"
    return found[0]


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """apimachinery's PatchMetaFromOpenAPIV3 resolve(): take allOf[0], then follow $ref."""
    if schema.get("allOf"):
        schema = schema["allOf"][0]
    ref = schema.get("$ref")
    if ref:
        assert ref.startswith(REF)
        schema = _schemas(doc)[ref.removeprefix(REF)]
    return schema


def _field(doc: dict[str, Any], schema: dict[str, Any], *path: str) -> dict[str, Any]:
    """Traverse struct fields like LookupPatchMetadataForStruct (fails when a field is not found)."""
    for name in path:
        properties = schema.get("properties") or {}
        assert name in properties, f'unable to find api field "{name}"'
        schema = _resolve(doc, properties[name])
    return schema


def _patch_ops(doc: dict[str, Any], group: str, version: str, kind: str) -> list[dict[str, Any]]:
    gvk = {"group": group, "version": version, "kind": kind}
    return [
        item["patch"]
        for item in doc["paths"].values()
        if "patch" in item and item["patch"].get("x-kubernetes-group-version-kind") == gvk
    ]


# --- index ---------------------------------------------------------------------------------------


def test_index_lists_every_group_version(openapi: OpenAPIV3) -> None:
    index = openapi.index()
    assert list(index) == ["paths"]
    assert set(index["paths"]) == {
        "api/v1",
        "apis/coordination.k8s.io/v1",
        "apis/rbac.authorization.k8s.io/v1",
        "apis/authorization.k8s.io/v1",
        "apis/authentication.k8s.io/v1",
        "apis/storage.k8s.io/v1",
        "apis/kubevirt.io/v1",
        "apis/instancetype.kubevirt.io/v1beta1",
        "apis/pool.kubevirt.io/v1beta1",
        "apis/snapshot.kubevirt.io/v1beta1",
        "apis/snapshot.storage.k8s.io/v1",
        "apis/export.kubevirt.io/v1",
        "apis/cdi.kubevirt.io/v1beta1",
        "apis/upload.cdi.kubevirt.io/v1beta1",
        "apis/widgets.kubevirt.io/v1alpha1",
    }
    for gv_path, entry in index["paths"].items():
        doc = openapi.document(gv_path)
        assert doc is not None
        assert entry == {"serverRelativeURL": f"/openapi/v3/{gv_path}?hash={doc[1]}"}
        assert len(doc[1]) == 128 and doc[1] == doc[1].upper()


def test_hashes_are_stable_and_track_content() -> None:
    first, second = OpenAPIV3(default_registry()), OpenAPIV3(default_registry())
    assert first.index() == second.index()
    assert first.document("api/v1") == second.document("api/v1")
    registry = default_registry()
    changed = OpenAPIV3(registry)
    before = changed.index()["paths"]
    registry.register(
        Kind("coordination.k8s.io", "v1", "Widget", "widgets", Widget, strategic_merge=True)
    )  # a new kind in an existing group-version is picked up
    after = changed.index()["paths"]
    assert after["apis/coordination.k8s.io/v1"] != before["apis/coordination.k8s.io/v1"]
    assert after["api/v1"] == before["api/v1"]
    assert OpenAPIV3(default_registry(), version="v1.31.0").index() != first.index()


def test_documents_are_cached_and_unknown_group_versions_are_none(openapi: OpenAPIV3) -> None:
    first = openapi.document("api/v1")
    assert first is not None
    assert openapi.document("/api/v1") is first
    assert openapi.document("api/v2") is None
    assert openapi.document("apis/nope.example.com/v1") is None
    assert openapi.document("") is None


def test_group_version_naming() -> None:
    assert group_version_path("", "v1") == "api/v1"
    assert group_version_path("kubevirt.io", "v1") == "apis/kubevirt.io/v1"
    assert group_version_namespace("", "v1") == "io.k8s.api.core.v1"
    assert group_version_namespace("rbac.authorization.k8s.io", "v1") == "io.k8s.api.rbac.v1"
    assert group_version_namespace("kubevirt.io", "v1") == "io.kubevirt.v1"
    assert group_version_namespace("cdi.kubevirt.io", "v1beta1") == "io.kubevirt.cdi.v1beta1"


# --- every document ------------------------------------------------------------------------------


GROUP_VERSIONS = [
    ("", "v1"),
    ("coordination.k8s.io", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
    ("authentication.k8s.io", "v1"),
    ("kubevirt.io", "v1"),
    ("instancetype.kubevirt.io", "v1beta1"),
    ("pool.kubevirt.io", "v1beta1"),
    ("snapshot.kubevirt.io", "v1beta1"),
    ("export.kubevirt.io", "v1"),
    ("cdi.kubevirt.io", "v1beta1"),
    ("widgets.kubevirt.io", "v1alpha1"),
]


@pytest.fixture(params=GROUP_VERSIONS, ids=[group_version_path(g, v) for g, v in GROUP_VERSIONS])
def group_version(request: pytest.FixtureRequest) -> tuple[str, str]:
    gv: tuple[str, str] = request.param
    return gv


@pytest.fixture
def doc(group_version: tuple[str, str], openapi: OpenAPIV3) -> dict[str, Any]:
    return _doc(openapi, group_version_path(*group_version))


def test_minimal_openapi_3_0_structure(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.0.0"
    assert doc["info"] == {"title": "Kubernetes", "version": DEFAULT_SERVER_VERSION}
    assert isinstance(doc["paths"], dict) and doc["paths"]
    assert isinstance(_schemas(doc), dict) and _schemas(doc)
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        assert item and set(item) <= HTTP_METHODS
        for op in item.values():
            assert op["responses"]
            for param in op.get("parameters", []):
                assert param["in"] in ("path", "query") and "schema" in param
                if param["in"] == "path":
                    assert param["required"] is True
                    assert "{" + param["name"] + "}" in path
            for placeholder in ("{name}", "{namespace}"):
                if placeholder in path:
                    assert any(p["name"] == placeholder[1:-1] and p["in"] == "path" for p in op["parameters"])
    op_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(op_ids) == len(set(op_ids))


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = [node["$ref"] for node in _walk(doc) if isinstance(node, dict) and "$ref" in node]
    assert refs
    for ref in refs:
        assert ref.startswith(REF) and ref.removeprefix(REF) in _schemas(doc), ref


def test_refs_have_no_siblings_and_schemas_have_no_nulls_titles_or_anyof(doc: dict[str, Any]) -> None:
    for name, schema in _schemas(doc).items():
        for node in _walk(schema):
            if not isinstance(node, dict):
                continue
            if "$ref" in node:
                assert set(node) == {"$ref"}, f"{name}: $ref with siblings {node}"
            assert "anyOf" not in node, f"{name}: {node}"
            assert node.get("type") != "null", name
            assert "const" not in node, name
            if "properties" in node:
                assert "title" not in node, name
            assert not ("default" in node and node["default"] is None), name
    assert '{"type":"null"}' not in json.dumps(doc, separators=(",", ":"))


def test_every_kind_schema_and_path_carries_its_gvk(
    doc: dict[str, Any], group_version: tuple[str, str], openapi: OpenAPIV3
) -> None:
    group, version = group_version
    for kind in openapi.registry.in_group_version(group, version):
        schema = _schema_for_gvk(doc, group, version, kind.kind)
        assert "metadata" in schema["properties"]
        if kind.stored:
            list_schema = _schema_for_gvk(doc, group, version, kind.list_kind)
            assert _resolve(doc, list_schema["properties"]["items"]["items"]) is schema
            assert "resourceVersion" in _field(doc, list_schema, "metadata")["properties"]
    for item in doc["paths"].values():
        for op in item.values():
            gvk = op["x-kubernetes-group-version-kind"]
            assert set(gvk) == {"group", "version", "kind"}
            assert (gvk["group"], gvk["version"]) == (group, version)
            assert op["x-kubernetes-action"] in {
                "get",
                "list",
                "post",
                "put",
                "patch",
                "delete",
                "deletecollection",
            }


# --- what kubectl does with it -------------------------------------------------------------------


def test_field_validation_is_advertised_for_every_patchable_kind(openapi: OpenAPIV3) -> None:
    for kind in openapi.registry.kinds():
        doc = _doc(openapi, group_version_path(kind.group, kind.version))
        ops = _patch_ops(doc, kind.group, kind.version, kind.kind)
        if not kind.stored:
            assert ops == []
            continue
        assert ops, kind.kind
        for op in ops:  # kubectl looks at whichever PATCH op of the GVK it meets first
            names = {(p["name"], p["in"]) for p in op["parameters"]}
            assert {("fieldValidation", "query"), ("fieldManager", "query"), ("dryRun", "query")} <= names
            content = set(op["requestBody"]["content"])
            assert content == (PATCH_TYPES | {SMP} if kind.strategic_merge else PATCH_TYPES), kind.kind
            for media in op["requestBody"]["content"].values():
                assert media["schema"] == {"$ref": f"{REF}{META}.Patch"}
        for method in ("post",):
            posts = [
                item[method]
                for item in doc["paths"].values()
                if method in item and item[method]["x-kubernetes-group-version-kind"]["kind"] == kind.kind
            ]
            assert posts and all(
                any(p["name"] == "fieldValidation" for p in op["parameters"]) for op in posts
            )
    patch = _schemas(_doc(openapi, "api/v1"))[f"{META}.Patch"]
    assert patch["type"] == "object" and patch["description"]


def test_configmap_paths(openapi: OpenAPIV3) -> None:
    paths = _doc(openapi, "api/v1")["paths"]
    collection = paths["/api/v1/namespaces/{namespace}/configmaps"]
    item = paths["/api/v1/namespaces/{namespace}/configmaps/{name}"]
    assert {"get", "post"} <= set(collection)
    assert set(item) == {"get", "put", "patch", "delete"}
    assert set(paths["/api/v1/configmaps"]) == {"get"}
    assert collection["get"]["x-kubernetes-action"] == "list"
    assert collection["post"]["x-kubernetes-action"] == "post"
    assert item["put"]["x-kubernetes-action"] == "put"
    assert "/api/v1/namespaces/{namespace}/configmaps/{name}/status" not in paths
    ok = item["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": f"{REF}io.k8s.api.core.v1.ConfigMap"}
    listed = collection["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed == {"$ref": f"{REF}io.k8s.api.core.v1.ConfigMapList"}
    assert {p["name"] for p in collection["get"]["parameters"]} >= {
        "labelSelector",
        "fieldSelector",
        "watch",
        "limit",
    }


def test_status_subresource_and_cluster_scoped_paths(openapi: OpenAPIV3) -> None:
    paths = _doc(openapi, "api/v1")["paths"]
    assert set(paths["/api/v1/nodes/{name}/status"]) == {"get", "put", "patch"}
    assert "/api/v1/namespaces/{namespace}/nodes" not in paths
    assert all(
        p["name"] != "namespace" for op in paths["/api/v1/nodes/{name}"].values() for p in op["parameters"]
    )
    widget_paths = _doc(openapi, "apis/widgets.kubevirt.io/v1alpha1")["paths"]
    status = widget_paths["/apis/widgets.kubevirt.io/v1alpha1/namespaces/{namespace}/widgets/{name}/status"]
    assert status["patch"]["operationId"] == "patchWidgetsKubevirtIoV1alpha1NamespacedWidgetStatus"


def test_virtual_kinds_only_accept_post(openapi: OpenAPIV3) -> None:
    doc = _doc(openapi, "apis/authorization.k8s.io/v1")
    assert doc["paths"] == {
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews": {
            "post": doc["paths"]["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"]["post"]
        }
    }
    review = _schema_for_gvk(doc, "authorization.k8s.io", "v1", "SelfSubjectAccessReview")
    assert "resourceAttributes" in _field(doc, review, "spec")["properties"]
    assert not any(name.endswith("SelfSubjectAccessReviewList") for name in _schemas(doc))


def test_strategic_merge_patch_metadata_resolves_through_refs(openapi: OpenAPIV3) -> None:
    doc = _doc(openapi, "api/v1")
    configmap = _schema_for_gvk(doc, "", "v1", "ConfigMap")
    assert _field(doc, configmap, "data")["type"] == "object"
    metadata = _field(doc, configmap, "metadata")
    assert metadata is _schemas(doc)[f"{META}.ObjectMeta"]
    assert _field(doc, configmap, "metadata", "annotations")["additionalProperties"] == {"type": "string"}
    assert _field(doc, configmap, "metadata", "labels")["type"] == "object"
    owners = metadata["properties"]["ownerReferences"]
    assert owners["x-kubernetes-patch-strategy"] == "merge"
    assert owners["x-kubernetes-patch-merge-key"] == "uid"
    assert _resolve(doc, owners["items"]) is _schemas(doc)[f"{META}.OwnerReference"]
    assert metadata["properties"]["finalizers"]["x-kubernetes-patch-strategy"] == "merge"
    node = _schema_for_gvk(doc, "", "v1", "Node")
    conditions = _field(doc, node, "status")["properties"]["conditions"]
    assert conditions["x-kubernetes-patch-merge-key"] == "type"
    assert "lastHeartbeatTime" in _resolve(doc, conditions["items"])["properties"]


def test_explain_configmap_metadata(openapi: OpenAPIV3) -> None:
    doc = _doc(openapi, "api/v1")
    configmap = _schema_for_gvk(doc, "", "v1", "ConfigMap")
    assert configmap["description"] == "Non-confidential key/value data."
    field = configmap["properties"]["metadata"]
    assert field["description"] == "Standard object metadata."
    metadata = _resolve(doc, field)
    assert metadata["type"] == "object"
    assert metadata["description"] == ObjectMeta.__doc__
    name = metadata["properties"]["name"]
    assert name == {"type": "string", "description": ObjectMeta.model_fields["name"].description}
    assert metadata["properties"]["generation"]["type"] == "integer"


def test_schema_names_follow_kubernetes_conventions(openapi: OpenAPIV3) -> None:
    core = _schemas(_doc(openapi, "api/v1"))
    assert {
        "io.k8s.api.core.v1.ConfigMap",
        "io.k8s.api.core.v1.ConfigMapList",
        "io.k8s.api.core.v1.NodeStatus",
        f"{META}.ObjectMeta",
        f"{META}.ListMeta",
        f"{META}.Status",
        f"{META}.DeleteOptions",
    } <= set(core)
    assert "io.k8s.api.authentication.v1.UserInfo" in _schemas(_doc(openapi, "apis/authentication.k8s.io/v1"))
    assert "io.k8s.api.authorization.v1.ResourceAttributes" in _schemas(
        _doc(openapi, "apis/authorization.k8s.io/v1")
    )
    widgets = _schemas(_doc(openapi, "apis/widgets.kubevirt.io/v1alpha1"))
    assert {
        "io.kubevirt.widgets.v1alpha1.Widget",
        "io.kubevirt.widgets.v1alpha1.WidgetList",
        "io.kubevirt.widgets.v1alpha1.WidgetSpec",
        "io.kubevirt.widgets.v1alpha1.WidgetCondition",
        "io.k8s.api.core.v1.ObjectReference",
    } <= set(widgets)


def test_loose_types_are_kubectl_friendly(openapi: OpenAPIV3) -> None:
    doc = _doc(openapi, "apis/widgets.kubevirt.io/v1alpha1")
    spec = _schemas(doc)["io.kubevirt.widgets.v1alpha1.WidgetSpec"]["properties"]
    assert spec["size"] == {"x-kubernetes-int-or-string": True, "description": "How big."}
    assert spec["mode"]["enum"] == ["fast"] and spec["mode"]["default"] == "fast"
    assert spec["count"] == {"type": "number", "description": "A number."}
    assert spec["anything"] == {"description": "Loosely typed."}
    condition = _schemas(doc)["io.kubevirt.widgets.v1alpha1.WidgetCondition"]
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["required"] == ["type", "status"]
    node_status = _schemas(_doc(openapi, "api/v1"))["io.k8s.api.core.v1.NodeStatus"]
    assert node_status["properties"]["capacity"]["additionalProperties"] == {
        "x-kubernetes-int-or-string": True
    }


def test_custom_kinds_do_not_advertise_strategic_merge_patch(openapi: OpenAPIV3) -> None:
    doc = _doc(openapi, "apis/widgets.kubevirt.io/v1alpha1")
    for op in _patch_ops(doc, "widgets.kubevirt.io", "v1alpha1", "Widget"):
        assert SMP not in op["requestBody"]["content"]


def test_shared_registry_models_do_not_leak_between_documents(openapi: OpenAPIV3) -> None:
    core = _schemas(_doc(openapi, "api/v1"))
    assert not any(name.startswith("io.k8s.api.rbac") for name in core)
    rbac = _doc(openapi, "apis/rbac.authorization.k8s.io/v1")
    assert not any("ConfigMap" in name for name in _schemas(rbac))
