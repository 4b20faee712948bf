"""PATCH formats: RFC 6902 JSON patch, RFC 7386 merge patch, Kubernetes strategic merge patch, dispatch.

Strategic merge patch expectations come from the Kubernetes design document
(contributors/devel/sig-api-machinery/strategic-merge-patch.md), the "preserve order" proposal, and the
apimachinery test cases for the same inputs; each test names its source.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubevisor.api.meta import ObjectMeta
from kubevisor.apiserver.patching import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    UnsupportedPatchError,
    apply_patch,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)

# --------------------------------------------------------------------------------------------------------
# Test models: a Pod-like kind carrying the same markers as the real API types.


def merge_by(key: str, strategy: str = "merge") -> dict[str, Any]:
    return {"x-kubernetes-patch-strategy": strategy, "x-kubernetes-patch-merge-key": key}


MERGE: dict[str, Any] = {"x-kubernetes-patch-strategy": "merge"}
RETAIN_KEYS: dict[str, Any] = {"x-kubernetes-patch-strategy": "retainKeys"}


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ContainerPort(Camel):
    container_port: int
    protocol: str | None = None
    name: str | None = None


class EnvVar(Camel):
    name: str
    value: str | None = None


class Container(Camel):
    name: str
    image: str | None = None
    args: list[str] | None = None
    ports: list[ContainerPort] | None = Field(default=None, json_schema_extra=merge_by("containerPort"))
    env: list[EnvVar] | None = Field(default=None, json_schema_extra=merge_by("name"))


class Volume(Camel):
    name: str
    host_path: dict[str, Any] | None = None
    empty_dir: dict[str, Any] | None = None
    config_map: dict[str, Any] | None = None


class RollingUpdate(Camel):
    max_surge: int | str | None = None
    max_unavailable: int | str | None = None


class Strategy(Camel):
    type: str | None = None
    rolling_update: RollingUpdate | None = None


class Union_(Camel):
    foo: str | None = None
    other: str | None = None
    another: str | None = None
    bar: str | None = None


class PodSpec(Camel):
    containers: list[Container] | None = Field(default=None, json_schema_extra=merge_by("name"))
    init_containers: list[Container] | None = Field(default=None, json_schema_extra=merge_by("name"))
    volumes: list[Volume] | None = Field(default=None, json_schema_extra=merge_by("name", "merge,retainKeys"))
    strategy: Strategy | None = Field(default=None, json_schema_extra=RETAIN_KEYS)
    union: Union_ | None = Field(default=None, json_schema_extra=RETAIN_KEYS)
    tolerations: list[dict[str, Any]] | None = None
    node_selector: dict[str, str] | None = None
    sidecars: dict[str, Container] | None = None
    config: Any = None


class Pod(Camel):
    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta | None = None
    spec: PodSpec | None = None
    status: dict[str, Any] | None = None


def smp(doc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    return strategic_merge_patch(doc, patch, Pod)


def spec(**fields: Any) -> dict[str, Any]:
    return {"spec": fields}


# --------------------------------------------------------------------------------------------------------
# Strategic merge patch: the design document's examples


def test_smp_adds_a_container_to_a_list_merged_by_name() -> None:
    doc = spec(containers=[{"name": "nginx", "image": "nginx-1.0"}])
    patch = spec(containers=[{"name": "log-tailer", "image": "log-tailer-1.0"}])
    assert smp(doc, patch) == spec(
        containers=[
            {"name": "nginx", "image": "nginx-1.0"},
            {"name": "log-tailer", "image": "log-tailer-1.0"},
        ]
    )


def test_smp_merges_a_matching_element_field_by_field() -> None:
    doc = spec(containers=[{"name": "nginx", "image": "nginx-1.0", "args": ["-g", "daemon off;"]}])
    patch = spec(containers=[{"name": "nginx", "image": "nginx-1.1"}])
    assert smp(doc, patch) == spec(
        containers=[{"name": "nginx", "image": "nginx-1.1", "args": ["-g", "daemon off;"]}]
    )


def test_smp_replace_directive_in_a_map_replaces_the_whole_map() -> None:
    doc = spec(
        containers=[{"name": "log-tailer", "image": "log-tailer-1.0"}],
        nodeSelector={"disk": "ssd"},
    )
    patch = spec(**{"$patch": "replace", "containers": [{"name": "nginx", "image": "nginx-1.0"}]})
    assert smp(doc, patch) == spec(containers=[{"name": "nginx", "image": "nginx-1.0"}])


def test_smp_replace_directive_in_a_list_replaces_the_list() -> None:
    doc = spec(
        containers=[{"name": "log-tailer", "image": "log-tailer-1.0"}, {"name": "nginx", "image": "old"}]
    )
    patch = spec(containers=[{"name": "nginx", "image": "nginx-1.0"}, {"$patch": "replace"}])
    assert smp(doc, patch) == spec(containers=[{"name": "nginx", "image": "nginx-1.0"}])


def test_smp_replace_directive_alone_empties_the_list() -> None:
    # apimachinery: "delete all items from merging list"
    doc = spec(containers=[{"name": "a"}, {"name": "b"}])
    assert smp(doc, spec(containers=[{"$patch": "replace"}])) == spec(containers=[])


def test_smp_replace_directive_ignores_other_directives_in_the_list() -> None:
    doc = spec(containers=[{"name": "a"}, {"name": "b"}])
    patch = spec(containers=[{"name": "c"}, {"name": "a", "$patch": "delete"}, {"$patch": "replace"}])
    assert smp(doc, patch) == spec(containers=[{"name": "c"}])


def test_smp_delete_directive_removes_the_matching_element() -> None:
    doc = spec(containers=[{"name": "nginx", "image": "nginx-0.9"}, {"name": "log-tailer", "image": "lt"}])
    patch = spec(
        containers=[{"name": "nginx", "image": "nginx-1.0"}, {"$patch": "delete", "name": "log-tailer"}]
    )
    assert smp(doc, patch) == spec(containers=[{"name": "nginx", "image": "nginx-1.0"}])


def test_smp_delete_directive_removes_every_element_with_the_merge_key() -> None:
    doc = spec(containers=[{"name": "a", "image": "1"}, {"name": "b"}, {"name": "a", "image": "2"}])
    assert smp(doc, spec(containers=[{"name": "a", "$patch": "delete"}])) == spec(containers=[{"name": "b"}])


def test_smp_delete_directive_for_a_missing_element_is_a_no_op() -> None:
    doc = spec(containers=[{"name": "a"}])
    assert smp(doc, spec(containers=[{"name": "zzz", "$patch": "delete"}])) == doc


def test_smp_delete_directive_in_a_map_deletes_the_map() -> None:
    doc = spec(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}})
    deleted = smp(doc, spec(strategy={"rollingUpdate": {"$patch": "delete"}}))
    assert deleted == spec(strategy={"type": "RollingUpdate"})
    assert smp(doc, spec(strategy={"rollingUpdate": None})) == deleted


def test_smp_delete_directive_at_the_top_level_empties_the_object() -> None:
    assert smp(spec(nodeSelector={"a": "b"}), {"$patch": "delete"}) == {}


def test_smp_merge_directive_is_the_default() -> None:
    doc = spec(nodeSelector={"a": "1"}, containers=[{"name": "x", "image": "i"}])
    patch = spec(**{"$patch": "merge", "nodeSelector": {"b": "2"}})
    assert smp(doc, patch) == spec(
        nodeSelector={"a": "1", "b": "2"}, containers=[{"name": "x", "image": "i"}]
    )
    listed = smp(doc, spec(containers=[{"name": "x", "args": ["a"], "$patch": "merge"}]))
    assert listed == spec(nodeSelector={"a": "1"}, containers=[{"name": "x", "image": "i", "args": ["a"]}])


def test_smp_delete_from_primitive_list() -> None:
    doc = {"metadata": {"finalizers": ["a", "b", "c"]}}
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "c"]}}
    assert smp(doc, patch) == {"metadata": {"finalizers": ["a"]}}


def test_smp_delete_from_primitive_list_removes_duplicates_too() -> None:
    # apimachinery: "delete all duplicate items in lists of scalars"
    doc = {"metadata": {"finalizers": ["1", "2", "3", "3", "4"]}}
    patch = {
        "metadata": {"$setElementOrder/finalizers": ["1", "2"], "$deleteFromPrimitiveList/finalizers": ["3"]}
    }
    assert smp(doc, patch) == {"metadata": {"finalizers": ["1", "2", "4"]}}


def test_smp_delete_from_primitive_list_with_additions() -> None:
    # apimachinery: "add and delete items in lists of scalars"
    doc = {"metadata": {"finalizers": ["1", "2", "3", "4"]}}
    patch = {
        "metadata": {
            "$setElementOrder/finalizers": ["1", "2", "4"],
            "$deleteFromPrimitiveList/finalizers": ["3"],
            "finalizers": ["4"],
        }
    }
    assert smp(doc, patch) == {"metadata": {"finalizers": ["1", "2", "4"]}}


def test_smp_delete_from_a_missing_primitive_list_is_a_no_op() -> None:
    assert smp({"metadata": {}}, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}) == {
        "metadata": {}
    }


def test_smp_set_element_order_of_a_primitive_list() -> None:
    doc = {"metadata": {"finalizers": ["a", "b", "c"]}}
    patch = {"metadata": {"$setElementOrder/finalizers": ["b", "c", "a"]}}
    assert smp(doc, patch) == {"metadata": {"finalizers": ["b", "c", "a"]}}


def test_smp_set_element_order_of_a_list_of_maps() -> None:
    doc = spec(
        containers=[{"name": "a", "image": "A"}, {"name": "b", "image": "B"}, {"name": "c", "image": "C"}]
    )
    patch = spec(**{"$setElementOrder/containers": [{"name": "b"}, {"name": "c"}, {"name": "a"}]})
    assert smp(doc, patch) == spec(
        containers=[{"name": "b", "image": "B"}, {"name": "c", "image": "C"}, {"name": "a", "image": "A"}]
    )


def test_smp_retain_keys_clears_the_other_members_of_a_union() -> None:
    doc = spec(union={"foo": "a", "other": "b"})
    patch = spec(union={"$retainKeys": ["another", "bar"], "another": "d", "bar": "c"})
    assert smp(doc, patch) == spec(union={"another": "d", "bar": "c"})


def test_smp_retain_keys_switches_a_deployment_strategy() -> None:
    doc = spec(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}})
    patch = spec(strategy={"$retainKeys": ["type"], "type": "Recreate"})
    assert smp(doc, patch) == spec(strategy={"type": "Recreate"})


def test_smp_retain_keys_in_a_merging_list_element() -> None:
    # volumes are "merge,retainKeys": a volume source is switched by naming the new one
    doc = spec(
        volumes=[{"name": "data", "hostPath": {"path": "/srv"}}, {"name": "cfg", "configMap": {"name": "c"}}]
    )
    patch = spec(volumes=[{"name": "data", "$retainKeys": ["emptyDir", "name"], "emptyDir": {}}])
    assert smp(doc, patch) == spec(
        volumes=[{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}]
    )


def test_smp_retain_keys_allows_nulls_for_unlisted_keys() -> None:
    # apimachinery: "retainKeys map deletes nested merging list"
    doc = spec(union={"foo": "a", "other": "b"})
    patch = spec(union={"$retainKeys": ["foo", "bar"], "bar": "c", "other": None})
    assert smp(doc, patch) == spec(union={"foo": "a", "bar": "c"})


def test_smp_map_without_retain_keys_directive_merges_normally() -> None:
    # apimachinery: "retainKeys map can add a field when no retainKeys directive present"
    assert smp(spec(union={"foo": "a"}), spec(union={"bar": "b"})) == spec(union={"foo": "a", "bar": "b"})


# --------------------------------------------------------------------------------------------------------
# Strategic merge patch: lists, maps, nulls


def test_smp_primitive_list_with_merge_strategy_is_a_set() -> None:
    # apimachinery: "unique scalars when merging lists"
    doc = {"metadata": {"finalizers": ["1", "2"]}}
    assert smp(doc, {"metadata": {"finalizers": ["2", "3"]}}) == {"metadata": {"finalizers": ["1", "2", "3"]}}


def test_smp_primitive_set_keeps_live_order_and_appends_new_values() -> None:
    doc = {"metadata": {"finalizers": ["a/x"]}}
    assert smp(doc, {"metadata": {"finalizers": ["b/y"]}}) == {"metadata": {"finalizers": ["a/x", "b/y"]}}


def test_smp_primitive_set_deduplicates_the_live_list() -> None:
    doc = {"metadata": {"finalizers": ["a", "a", "b"]}}
    assert smp(doc, {"metadata": {"finalizers": ["c", "c"]}}) == {"metadata": {"finalizers": ["a", "b", "c"]}}


def test_smp_preserves_the_patch_order_in_a_merging_list() -> None:
    # apimachinery: "preserve the order from the patch in a merging list" (and "... 2")
    doc = spec(containers=[{"name": "1"}, {"name": "2", "image": "b"}, {"name": "3"}])
    patch = spec(
        containers=[{"name": "3", "image": "c"}, {"name": "1", "image": "a"}, {"name": "2", "args": ["x"]}]
    )
    assert smp(doc, patch) == spec(
        containers=[
            {"name": "3", "image": "c"},
            {"name": "1", "image": "a"},
            {"name": "2", "image": "b", "args": ["x"]},
        ]
    )
    partial = spec(containers=[{"name": "3", "image": "c"}, {"name": "1", "image": "a"}])
    assert smp(doc, partial) == spec(
        containers=[{"name": "2", "image": "b"}, {"name": "3", "image": "c"}, {"name": "1", "image": "a"}]
    )


def test_smp_preserves_the_patch_order_in_a_merging_primitive_list() -> None:
    # apimachinery: "preserve the order from the patch in a merging int list"
    doc = {"metadata": {"finalizers": ["1", "2", "3"]}}
    assert smp(doc, {"metadata": {"finalizers": ["3", "1", "2"]}})["metadata"]["finalizers"] == [
        "3",
        "1",
        "2",
    ]
    assert smp(doc, {"metadata": {"finalizers": ["3", "1"]}})["metadata"]["finalizers"] == ["2", "3", "1"]


def test_smp_interleaves_server_only_items_by_their_live_position() -> None:
    # "preserve order" proposal: patch A', B', D on live B, C, A gives C, A', B', D
    doc = spec(containers=[{"name": "B"}, {"name": "C"}, {"name": "A"}])
    patch = spec(containers=[{"name": "A", "image": "a"}, {"name": "B", "image": "b"}, {"name": "D"}])
    assert [c["name"] for c in smp(doc, patch)["spec"]["containers"]] == ["C", "A", "B", "D"]


def test_smp_set_element_order_orders_new_and_existing_items() -> None:
    # apimachinery: "merge lists of maps" (three-way result)
    doc = spec(containers=[{"name": "1", "image": "a"}, {"name": "2", "image": "b"}])
    patch = spec(
        **{
            "$setElementOrder/containers": [{"name": "4"}, {"name": "1"}, {"name": "2"}, {"name": "3"}],
            "containers": [{"name": "4", "image": "4"}, {"name": "3", "image": "3"}],
        }
    )
    assert smp(doc, patch) == spec(
        containers=[
            {"name": "4", "image": "4"},
            {"name": "1", "image": "a"},
            {"name": "2", "image": "b"},
            {"name": "3", "image": "3"},
        ]
    )


def test_smp_set_element_order_keeps_server_only_items_in_place() -> None:
    # apimachinery: "retainKeys map adds item to nested merging list" (server-only x stays last)
    doc = spec(containers=[{"name": "a"}, {"name": "b"}, {"name": "x"}])
    patch = spec(
        **{
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            "containers": [{"name": "c"}],
        }
    )
    assert [c["name"] for c in smp(doc, patch)["spec"]["containers"]] == ["a", "b", "c", "x"]


def test_smp_set_element_order_interleaves_server_only_items_by_live_position() -> None:
    # A server-added item keeps its place relative to its live neighbours (apimachinery's interleaving;
    # the "preserve order" proposal would move C, D and E all first: C, D, E, A, B).
    doc = spec(containers=[{"name": n} for n in ["C", "B", "D", "A", "E"]])
    patch = spec(
        **{
            "$setElementOrder/containers": [{"name": "A"}, {"name": "B"}],
            "containers": [{"name": "A", "image": "a"}],
        }
    )
    assert [c["name"] for c in smp(doc, patch)["spec"]["containers"]] == ["C", "D", "A", "B", "E"]
    sidecar_first = spec(containers=[{"name": "injected"}, {"name": "a"}, {"name": "b"}])
    reorder = spec(**{"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]})
    assert [c["name"] for c in smp(sidecar_first, reorder)["spec"]["containers"]] == ["injected", "b", "a"]


def test_smp_set_element_order_with_deletion() -> None:
    # apimachinery: "retainKeys map deletes an item in nested merging list"
    doc = spec(containers=[{"name": "a"}, {"name": "b"}, {"name": "x"}])
    patch = spec(
        **{"$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "b", "$patch": "delete"}]}
    )
    assert smp(doc, patch) == spec(containers=[{"name": "a"}, {"name": "x"}])


def test_smp_set_element_order_ignores_items_missing_from_the_list() -> None:
    # "preserve order" proposal and apimachinery: "$setElementOrder contains item that is not present ..."
    doc = spec(containers=[{"name": "1"}, {"name": "3"}])
    patch = spec(
        **{
            "$setElementOrder/containers": [{"name": "3"}, {"name": "2"}, {"name": "1"}],
            "containers": [{"name": "3", "image": "3"}, {"name": "1", "image": "1"}],
        }
    )
    assert smp(doc, patch) == spec(containers=[{"name": "3", "image": "3"}, {"name": "1", "image": "1"}])
    ints = {"metadata": {"finalizers": ["1", "3"]}}
    reordered = smp(ints, {"metadata": {"$setElementOrder/finalizers": ["3", "2", "1"]}})
    assert reordered == {"metadata": {"finalizers": ["3", "1"]}}


def test_smp_set_element_order_reorders_without_changes() -> None:
    # apimachinery: "delete and reorder in one list, reorder in another"
    doc = spec(
        containers=[{"name": "a", "image": "a"}, {"name": "b", "image": "b"}],
        initContainers=[{"name": "c", "image": "c"}, {"name": "d", "image": "d"}],
    )
    patch = spec(
        **{
            "$setElementOrder/containers": [{"name": "b"}],
            "$setElementOrder/initContainers": [{"name": "d"}, {"name": "c"}],
            "containers": [{"$patch": "delete", "name": "a"}],
        }
    )
    assert smp(doc, patch) == spec(
        containers=[{"name": "b", "image": "b"}],
        initContainers=[{"name": "d", "image": "d"}, {"name": "c", "image": "c"}],
    )


def test_smp_set_element_order_on_a_new_list() -> None:
    patch = spec(
        **{"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "b"}]}
    )
    assert smp({}, patch) == spec(containers=[{"name": "b"}])


def test_smp_merges_nested_lists_by_their_own_keys() -> None:
    doc = spec(
        containers=[
            {
                "name": "app",
                "args": ["--old"],
                "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            }
        ]
    )
    patch = spec(
        containers=[
            {
                "name": "app",
                "args": ["--new"],
                "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 8080}],
                "env": [{"name": "B", "value": None}, {"name": "C", "value": "3"}],
            }
        ]
    )
    assert smp(doc, patch) == spec(
        containers=[
            {
                "name": "app",
                "args": ["--new"],
                "ports": [
                    {"containerPort": 80, "protocol": "TCP", "name": "http"},
                    {"containerPort": 443},
                    {"containerPort": 8080},
                ],
                "env": [{"name": "A", "value": "1"}, {"name": "B"}, {"name": "C", "value": "3"}],
            }
        ]
    )


def test_smp_merge_key_values_compare_as_json() -> None:
    doc = spec(containers=[{"name": "app", "ports": [{"containerPort": 80}, {"containerPort": 1}]}])
    patch = spec(
        containers=[
            {"name": "app", "ports": [{"containerPort": 80.0, "name": "http"}, {"containerPort": True}]}
        ]
    )
    ports = smp(doc, patch)["spec"]["containers"][0]["ports"]
    assert ports == [{"containerPort": 80, "name": "http"}, {"containerPort": 1}, {"containerPort": True}]


def test_smp_lists_without_a_strategy_are_replaced() -> None:
    doc = spec(tolerations=[{"key": "a"}, {"key": "b"}], containers=[{"name": "c", "args": ["1", "2"]}])
    patch = spec(tolerations=[{"key": "z"}], containers=[{"name": "c", "args": ["3"]}])
    assert smp(doc, patch) == spec(tolerations=[{"key": "z"}], containers=[{"name": "c", "args": ["3"]}])


def test_smp_descends_into_dict_of_models() -> None:
    doc = spec(sidecars={"proxy": {"name": "proxy", "env": [{"name": "A", "value": "1"}]}})
    patch = spec(sidecars={"proxy": {"env": [{"name": "B", "value": "2"}]}, "new": {"name": "new"}})
    assert smp(doc, patch) == spec(
        sidecars={
            "proxy": {"name": "proxy", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            "new": {"name": "new"},
        }
    )


def test_smp_uses_the_real_object_meta_markers() -> None:
    doc = {"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}, {"uid": "2", "name": "b"}]}}
    patch = {"metadata": {"ownerReferences": [{"uid": "2", "controller": True}, {"uid": "3", "name": "c"}]}}
    assert smp(doc, patch) == {
        "metadata": {
            "ownerReferences": [
                {"uid": "1", "name": "a"},
                {"uid": "2", "name": "b", "controller": True},
                {"uid": "3", "name": "c"},
            ]
        }
    }


def test_smp_untyped_and_unknown_content_merges_as_plain_json() -> None:
    doc = {
        "status": {"conditions": [{"type": "Ready"}], "phase": "Running", "nested": {"a": 1}},
        "spec": {"config": {"list": [1, 2], "map": {"x": 1}}},
        "unknown": {"list": [1], "keep": True},
    }
    patch = {
        "status": {"conditions": [{"type": "Other"}], "nested": {"b": 2}},
        "spec": {"config": {"list": [3], "map": {"x": None, "y": 2}}},
        "unknown": {"list": [2], "added": {"k": "v"}},
    }
    assert smp(doc, patch) == {
        "status": {"conditions": [{"type": "Other"}], "phase": "Running", "nested": {"a": 1, "b": 2}},
        "spec": {"config": {"list": [3], "map": {"y": 2}}},
        "unknown": {"list": [2], "keep": True, "added": {"k": "v"}},
    }


def test_smp_null_deletes_and_unmatched_nulls_are_dropped() -> None:
    doc = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"nodeSelector": {"x": "y"}}}
    patch = {"metadata": {"labels": {"a": None, "zzz": None}}, "spec": None, "status": None}
    assert smp(doc, patch) == {"metadata": {"labels": {"b": "2"}}}


def test_smp_new_values_are_stored_without_directives_or_nulls() -> None:
    patch = spec(
        containers=[
            {
                "name": "new",
                "image": None,
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "A", "value": "2"},
                    {"name": "B", "$patch": "delete"},
                ],
                "ports": [{"$patch": "replace"}, {"containerPort": 1}],
            }
        ],
        strategy={"$retainKeys": ["type"], "type": "Recreate"},
        nodeSelector={"$patch": "replace", "a": "b", "c": None},
        union={"$patch": "delete"},
    )
    assert smp({}, patch) == spec(
        containers=[{"name": "new", "env": [{"name": "A", "value": "2"}], "ports": [{"containerPort": 1}]}],
        strategy={"type": "Recreate"},
        nodeSelector={"a": "b"},
    )


def test_smp_replacement_lists_keep_values_but_apply_element_directives() -> None:
    patch = spec(
        tolerations=[{"key": "a", "$patch": "delete"}, {"key": "b", "$patch": "merge"}, None, {"key": "c"}]
    )
    assert smp(spec(tolerations=[{"key": "old"}]), patch) == spec(
        tolerations=[{"key": "b"}, None, {"key": "c"}]
    )


def test_smp_type_mismatch_takes_the_patch_value() -> None:
    doc = spec(nodeSelector={"a": "b"}, containers=[{"name": "x"}], config=[1])
    patch = spec(nodeSelector="oops", containers={"name": "x"}, config={"a": {"b": None, "c": 1}})
    assert smp(doc, patch) == spec(nodeSelector="oops", containers={"name": "x"}, config={"a": {"c": 1}})


def test_smp_keys_starting_with_a_dollar_that_are_not_directives_are_data() -> None:
    doc = spec(config={"$ref": "#/a", "$schema": "x"})
    patch = spec(config={"$ref": "#/b", "$id": "y"})
    assert smp(doc, patch) == spec(config={"$ref": "#/b", "$schema": "x", "$id": "y"})


def test_smp_empty_patch_and_empty_lists() -> None:
    doc = spec(containers=[], nodeSelector={"a": "b"})
    assert smp(doc, {}) == doc
    # apimachinery: "merge empty merging lists"
    assert smp(doc, spec(containers=[])) == doc


# --------------------------------------------------------------------------------------------------------
# Strategic merge patch: malformed directives


@pytest.mark.parametrize(
    ("doc", "patch", "message"),
    [
        pytest.param(
            {}, spec(nodeSelector={"$patch": "bogus"}), "unknown $patch directive 'bogus'", id="map-patch"
        ),
        pytest.param(
            spec(containers=[{"name": "a"}]),
            spec(containers=[{"name": "a", "$patch": "explode"}]),
            "unknown $patch directive 'explode'",
            id="list-patch",
        ),
        pytest.param(
            {}, spec(tolerations=[{"$patch": 1}]), "unknown $patch directive 1", id="replacement-list-patch"
        ),
        pytest.param(
            spec(containers=[{"name": "a", "image": "x"}]),
            spec(containers=[{"image": "b"}]),
            "does not contain declared merge key 'name'",
            id="missing-merge-key",
        ),
        pytest.param(
            spec(containers=[{"name": "a"}]),
            spec(containers=[{"$patch": "delete", "image": "a"}]),
            "does not contain declared merge key 'name'",
            id="delete-without-merge-key",
        ),
        pytest.param(
            spec(containers=[{"image": "a"}]),
            spec(containers=[{"name": "a"}]),
            "has no 'name'",
            id="live-element-without-merge-key",
        ),
        pytest.param({}, spec(containers=["a"]), "must be objects", id="merging-list-of-scalars"),
        pytest.param(
            {"metadata": {"finalizers": ["a"]}},
            {"metadata": {"finalizers": [{"$patch": "replace"}]}},
            "merged as a set of primitive values",
            id="primitive-set-with-object",
        ),
        pytest.param(
            {}, spec(union={"$retainKeys": "foo"}), "must be a list of field names", id="retain-not-list"
        ),
        pytest.param(
            spec(union={"foo": "a"}),
            spec(union={"$retainKeys": ["foo"], "bar": "b"}),
            "field 'bar' is in the patch but not in its $retainKeys list",
            id="retain-missing-key",
        ),
        pytest.param(
            # apimachinery: "should check if order in $setElementOrder and patch list match"
            spec(containers=[{"name": "1"}, {"name": "3"}, {"name": "2"}]),
            spec(
                **{
                    "$setElementOrder/containers": [{"name": "1"}, {"name": "2"}, {"name": "3"}],
                    "containers": [{"name": "3", "image": "3"}, {"name": "1", "image": "1"}],
                }
            ),
            "doesn't match the $setElementOrder list",
            id="order-mismatch",
        ),
        pytest.param(
            {"metadata": {"finalizers": ["1", "3", "2"]}},
            {"metadata": {"$setElementOrder/finalizers": ["1", "2", "3"], "finalizers": ["3", "1"]}},
            "doesn't match the $setElementOrder list",
            id="primitive-order-mismatch",
        ),
        pytest.param(
            {},
            spec(**{"$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "b"}]}),
            "doesn't match",
            id="patch-item-not-in-order",
        ),
        pytest.param(
            spec(tolerations=[{"key": "a"}]),
            spec(**{"$setElementOrder/tolerations": [{"key": "a"}]}),
            "not a list merged by strategic merge patch",
            id="order-on-replaced-list",
        ),
        pytest.param({}, {"$setElementOrder/metadata": 1}, "not a list merged", id="order-on-a-map"),
        pytest.param(
            {}, spec(**{"$setElementOrder/containers": {"name": "a"}}), "must be a list", id="order-not-list"
        ),
        pytest.param(
            {}, spec(**{"$setElementOrder/containers": ["a"]}), "merge key 'name'", id="order-element-not-map"
        ),
        pytest.param(
            {"metadata": {}},
            {"metadata": {"$setElementOrder/finalizers": [{"a": 1}]}},
            "must be a primitive value",
            id="primitive-order-element-map",
        ),
        pytest.param(
            spec(nodeSelector={"a": "b"}),
            spec(**{"$deleteFromPrimitiveList/nodeSelector": ["a"]}),
            "not a list",
            id="delete-from-map",
        ),
        pytest.param(
            {"metadata": {"finalizers": ["a"]}},
            {"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}},
            "must be a list of primitive values",
            id="delete-list-not-list",
        ),
        pytest.param({}, {"$setElementOrder/": []}, "does not name a field", id="directive-without-field"),
    ],
)
def test_smp_rejects_malformed_directives(doc: dict[str, Any], patch: dict[str, Any], message: str) -> None:
    with pytest.raises(PatchError) as info:
        smp(doc, patch)
    assert message in str(info.value)


def test_smp_rejects_non_object_arguments() -> None:
    with pytest.raises(PatchError, match="must be a JSON object"):
        strategic_merge_patch({}, [], Pod)  # type: ignore[arg-type]
    with pytest.raises(PatchError, match="must be a JSON object"):
        strategic_merge_patch([], {}, Pod)  # type: ignore[arg-type]


def test_smp_error_messages_name_the_path() -> None:
    patch = spec(containers=[{"name": "app", "env": [{"value": "x"}]}])
    with pytest.raises(PatchError, match=r"spec\.containers\[name='app'\]\.env\[0\]"):
        smp(spec(containers=[{"name": "app"}]), patch)


# --------------------------------------------------------------------------------------------------------
# Properties

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5)
json_keys = st.text(alphabet="abcxyz", min_size=1, max_size=3)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(json_keys, children, max_size=3),
    max_leaves=15,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=4)
# Lists holding only scalars: RFC 7386 stores them verbatim, strategic merge patch too.
flat_values = st.recursive(
    json_scalars | st.lists(json_scalars, max_size=3),
    lambda children: st.dictionaries(json_keys, children, max_size=3),
    max_leaves=15,
)
flat_objects = st.dictionaries(json_keys, flat_values, max_size=4)


class Untyped(BaseModel):
    anything: Any = None


@given(json_values)
def test_merge_patch_with_an_empty_object_changes_nothing(doc: Any) -> None:
    expected = doc if isinstance(doc, dict) else {}
    assert merge_patch(doc, {}) == expected


@given(json_values, json_values)
def test_merge_patch_is_idempotent_and_pure(doc: Any, patch: Any) -> None:
    doc_before, patch_before = copy.deepcopy(doc), copy.deepcopy(patch)
    once = merge_patch(doc, patch)
    assert merge_patch(once, patch) == once
    assert doc == doc_before and patch == patch_before


@given(json_objects, flat_objects)
def test_smp_on_untyped_content_is_a_json_merge_patch(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    assert strategic_merge_patch(doc, patch, Untyped) == merge_patch(doc, patch)


@given(json_objects)
def test_smp_with_an_empty_patch_changes_nothing(doc: dict[str, Any]) -> None:
    assert strategic_merge_patch(doc, {}, Pod) == doc


directive_keys = st.sampled_from(
    ["$patch", "$retainKeys", "$setElementOrder/containers", "$deleteFromPrimitiveList/finalizers", "name"]
)
directive_values = st.sampled_from(["replace", "merge", "delete", "bogus"]) | st.lists(
    st.sampled_from(["a", "b", "name"]), max_size=2
)
field_names = st.sampled_from(["spec", "metadata", "containers", "finalizers", "env", "union", "x"])
patch_maps = st.recursive(
    st.dictionaries(directive_keys, directive_values, max_size=2),
    lambda children: st.dictionaries(field_names, children | st.lists(children, max_size=2), max_size=3),
    max_leaves=10,
)
live_maps = st.recursive(
    st.dictionaries(st.sampled_from(["name", "x"]), st.sampled_from(["a", "b", "name"]), max_size=2),
    lambda children: st.dictionaries(field_names, children | st.lists(children, max_size=2), max_size=3),
    max_leaves=10,
)


@given(live_maps, patch_maps)
def test_smp_results_never_hold_directives(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    try:
        result = strategic_merge_patch(doc, patch, Pod)
    except PatchError:
        return
    text = json.dumps(result)
    for directive in ('"$patch"', '"$retainKeys"', '"$setElementOrder/', '"$deleteFromPrimitiveList/'):
        assert directive not in text


@given(json_objects, flat_objects)
def test_smp_does_not_alias_or_mutate_its_inputs(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    doc_before, patch_before = copy.deepcopy(doc), copy.deepcopy(patch)
    result = strategic_merge_patch(doc, patch, Untyped)
    assert doc == doc_before and patch == patch_before
    _scribble(result)
    assert doc == doc_before and patch == patch_before


def _scribble(value: Any) -> None:
    """Mutate every container inside ``value``."""
    if isinstance(value, dict):
        for child in list(value.values()):
            _scribble(child)
        value["__scribbled__"] = 1
    elif isinstance(value, list):
        for child in value:
            _scribble(child)
        value.append("__scribbled__")


# --------------------------------------------------------------------------------------------------------
# RFC 7386 merge patch


def test_merge_patch_rfc_7386_example() -> None:
    doc = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert merge_patch(doc, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "phoneNumber": "+01-123-456-7890",
    }


@pytest.mark.parametrize(
    ("doc", "patch", "expected"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc_7386_appendix_a(doc: Any, patch: Any, expected: Any) -> None:
    assert merge_patch(doc, patch) == expected


def test_merge_patch_result_does_not_alias_the_patch() -> None:
    patch = {"a": {"b": [1]}}
    result = merge_patch({}, patch)
    result["a"]["b"].append(2)
    assert patch == {"a": {"b": [1]}}


# --------------------------------------------------------------------------------------------------------
# RFC 6902 JSON patch


def test_json_patch_applies_every_operation() -> None:
    doc = {"a": {"b": 1}, "list": [1, 2, 3]}
    patch = [
        {"op": "add", "path": "/a/c", "value": 2},
        {"op": "remove", "path": "/list/0"},
        {"op": "replace", "path": "/a/b", "value": 10},
        {"op": "move", "from": "/a/c", "path": "/moved"},
        {"op": "copy", "from": "/a", "path": "/copied"},
        {"op": "test", "path": "/list", "value": [2, 3]},
        {"op": "add", "path": "/list/-", "value": 4},
    ]
    assert json_patch(doc, patch) == {"a": {"b": 10}, "list": [2, 3, 4], "moved": 2, "copied": {"b": 10}}
    assert doc == {"a": {"b": 1}, "list": [1, 2, 3]}


def test_json_patch_results_do_not_alias_the_patch() -> None:
    patch = [{"op": "add", "path": "/x", "value": {"y": [1]}}]
    result = json_patch({}, patch)
    result["x"]["y"].append(2)
    assert patch[0]["value"] == {"y": [1]}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"op": "add"}, "must be a JSON array"),
        (["add"], "operation 0 must be a JSON object"),
        ([{"op": "frobnicate", "path": "/a"}], "unknown or missing \"op\" 'frobnicate'"),
        ([{"path": "/a"}], 'unknown or missing "op" None'),
        ([{"op": "add", "value": 1}], 'needs a string "path"'),
        ([{"op": "add", "path": "/a"}], 'needs a "value"'),
        ([{"op": "move", "path": "/a"}], 'needs a string "from"'),
        ([{"op": "add", "path": "a", "value": 1}], "cannot be applied"),
        ([{"op": "remove", "path": "/missing"}], "cannot be applied"),
        ([{"op": "replace", "path": "/missing/deeper", "value": 1}], "cannot be applied"),
        ([{"op": "add", "path": "/list/9", "value": 1}], "cannot be applied"),
        ([{"op": "add", "path": "/list/x", "value": 1}], "cannot be applied"),
        ([{"op": "test", "path": "/a", "value": 2}], "test operation failed"),
        ([{"op": "test", "path": "/nope", "value": 2}], "JSON patch"),
    ],
)
def test_json_patch_errors(patch: Any, message: str) -> None:
    with pytest.raises(PatchError) as info:
        json_patch({"a": 1, "list": [1]}, patch)
    assert message in str(info.value)


@given(st.dictionaries(json_keys, json_values, min_size=1), st.data())
def test_json_patch_test_operation_checks_the_value(doc: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(doc)))
    assert json_patch(doc, [{"op": "test", "path": f"/{key}", "value": doc[key]}]) == doc
    other = data.draw(
        json_values.filter(lambda v: json.dumps(v, sort_keys=True) != json.dumps(doc[key], sort_keys=True))
    )
    if other == doc[key]:  # equal in Python though not in JSON (1 == 1.0, 1 == True)
        return
    with pytest.raises(PatchError, match="test operation failed"):
        json_patch(doc, [{"op": "test", "path": f"/{key}", "value": other}])


@given(json_values)
def test_json_patch_with_no_operations_returns_an_equal_copy(doc: Any) -> None:
    result = json_patch(doc, [])
    assert result == doc
    if isinstance(doc, (dict, list)):
        assert result is not doc


# --------------------------------------------------------------------------------------------------------
# apply_patch: media types and bodies

LIVE: dict[str, Any] = {
    "metadata": {"name": "p", "finalizers": ["a"], "labels": {"x": "1"}},
    "spec": {"containers": [{"name": "c", "image": "old"}]},
}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_apply_patch_dispatches_on_the_media_type() -> None:
    merged = apply_patch(MERGE_PATCH, LIVE, body({"metadata": {"finalizers": ["b"]}}), Pod, True)
    assert merged["metadata"]["finalizers"] == ["b"]
    strategic = apply_patch(STRATEGIC_MERGE_PATCH, LIVE, body({"metadata": {"finalizers": ["b"]}}), Pod, True)
    assert strategic["metadata"]["finalizers"] == ["a", "b"]
    ops = [{"op": "replace", "path": "/spec/containers/0/image", "value": "new"}]
    patched = apply_patch(JSON_PATCH, LIVE, body(ops), Pod, False)
    assert patched["spec"]["containers"] == [{"name": "c", "image": "new"}]


def test_apply_patch_reads_media_type_parameters_and_case() -> None:
    result = apply_patch("Application/Merge-Patch+JSON; charset=utf-8", LIVE, body({"x": 1}), Pod, False)
    assert result["x"] == 1


@pytest.mark.parametrize("patch_type", [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH])
def test_apply_patch_results_do_not_alias_the_live_object(patch_type: str) -> None:
    live = copy.deepcopy(LIVE)
    patch: Any = [] if patch_type == JSON_PATCH else {}
    result = apply_patch(patch_type, live, body(patch), Pod, True)
    assert result == live
    _scribble(result)
    assert live == LIVE


@pytest.mark.parametrize(
    "content_type",
    ["application/apply-patch+yaml", "application/json", "text/plain", "", "application/merge-patch+json-x"],
)
def test_apply_patch_rejects_unknown_media_types(content_type: str) -> None:
    with pytest.raises(UnsupportedPatchError) as info:
        apply_patch(content_type, LIVE, b"{}", Pod, True)
    assert str(info.value) == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
    )
    assert info.value.accepted == (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)


def test_apply_patch_refuses_strategic_merge_when_the_kind_does_not_allow_it() -> None:
    with pytest.raises(UnsupportedPatchError) as info:
        apply_patch(STRATEGIC_MERGE_PATCH, LIVE, b"{}", Pod, False)
    assert str(info.value) == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json"
    )
    assert isinstance(info.value, PatchError)


@pytest.mark.parametrize(
    ("content_type", "raw", "message"),
    [
        (MERGE_PATCH, b"{not json", "invalid JSON"),
        (MERGE_PATCH, b"", "invalid JSON"),
        (MERGE_PATCH, b'{"a": NaN}', "NaN is not a JSON value"),
        (JSON_PATCH, b"\xff\xfe\x00", "invalid JSON"),
        (JSON_PATCH, b"[1]", "must be a JSON object"),
        (STRATEGIC_MERGE_PATCH, b"[]", "must be a JSON object"),
        (MERGE_PATCH, b"[]", "the patched object must be a JSON object, got an array"),
        (JSON_PATCH, body([{"op": "replace", "path": "", "value": 3}]), "got a number"),
        (JSON_PATCH, body([{"op": "test", "path": "/metadata/name", "value": "q"}]), "test operation failed"),
        (MERGE_PATCH, b"[" * 100_000 + b"]" * 100_000, "too deeply"),
    ],
)
def test_apply_patch_rejects_bad_bodies(content_type: str, raw: bytes, message: str) -> None:
    with pytest.raises(PatchError) as info:
        apply_patch(content_type, LIVE, raw, Pod, True)
    assert not isinstance(info.value, UnsupportedPatchError)
    assert message in str(info.value)
