"""Table output: columns of the built-in kinds, the JSONPath subset, ages, and includeObject."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import core, kinds
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind, PrinterColumn, default_registry
from kubevisor.apiserver.tables import JSONPathError, compile_jsonpath, humanize_duration, jsonpath, to_table

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def _kind(plural: str, group: str = "", version: str = "v1") -> Kind:
    kind = default_registry().get(group, version, plural)
    assert kind is not None
    return kind


def _ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "default",
        "uid": f"uid-{name}",
        "creationTimestamp": _ago(minutes=5),
        **extra,
    }


def _columns(table: dict[str, Any]) -> list[str]:
    return [c["name"] for c in table["columnDefinitions"]]


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-3, "<invalid>"),
        (-2, "<invalid>"),
        (-1.9, "0s"),
        (-1, "0s"),
        (-0.5, "0s"),
        (0, "0s"),
        (0.9, "0s"),
        (45, "45s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m30s"),
        (599, "9m59s"),
        (600, "10m"),
        (659, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600 - 1, "7h59m"),
        (8 * 3600, "8h"),
        (48 * 3600 - 1, "47h"),
        (48 * 3600, "2d"),
        (49 * 3600, "2d1h"),
        (8 * 86400 - 1, "7d23h"),
        (8 * 86400, "8d"),
        (2 * 365 * 86400 - 1, "729d"),
        (2 * 365 * 86400, "2y"),
        (2 * 365 * 86400 + 86400, "2y1d"),
        (8 * 365 * 86400 - 1, "7y364d"),
        (8 * 365 * 86400, "8y"),
        (20 * 365 * 86400, "20y"),
    ],
)
def test_humanize_duration_matches_apimachinery(seconds: float, expected: str) -> None:
    assert humanize_duration(seconds) == expected


# --- JSONPath ------------------------------------------------------------------------------------

NODE: dict[str, Any] = {
    "metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux"}},
    "status": {
        "conditions": [
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-06-01T11:59:00Z"},
        ],
        "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
        "capacity": {"cpu": 4, "memory": "8Gi"},
    },
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (".metadata.name", ["n1"]),
        ("{.metadata.name}", ["n1"]),
        ("$.metadata.name", ["n1"]),
        ("metadata.name", ["n1"]),
        (".status.conditions[0].type", ["MemoryPressure"]),
        (".status.conditions[-1].type", ["Ready"]),
        (".status.conditions[*].type", ["MemoryPressure", "Ready"]),
        (".status.conditions[0:1].type", ["MemoryPressure"]),
        (".status.conditions[?(@.type=='Ready')].status", ["True"]),
        ('.status.conditions[?(@.type == "Ready")].status', ["True"]),
        (".status.conditions[?(@.type!='Ready')].type", ["MemoryPressure"]),
        (".status.conditions[?(@.lastHeartbeatTime)].type", ["Ready"]),
        (".status.addresses[?(@.type=='InternalIP')].address", ["10.0.0.5"]),
        (".status.capacity.cpu", [4]),
        (".status.capacity[?(@.x=='y')]", []),
        (".metadata.labels.kubernetes\\.io/os", ["linux"]),
        (".metadata.labels['kubernetes.io/os']", ["linux"]),
        (".status.missing.deeper", []),
        (".status.conditions[7].type", []),
        (".metadata.name[0]", []),
    ],
)
def test_jsonpath_subset(expr: str, expected: list[Any]) -> None:
    assert jsonpath(NODE, expr) == expected


def test_jsonpath_numeric_filters() -> None:
    obj = {"items": [{"n": 1}, {"n": 5}, {"n": "5"}, {"n": True}]}
    assert jsonpath(obj, ".items[?(@.n>2)].n") == [5]
    assert jsonpath(obj, ".items[?(@.n<=1)].n") == [1]
    assert jsonpath(obj, ".items[?(@.n==5)].n") == [5]
    assert jsonpath(obj, ".items[?(@.n=='5')].n") == ["5"]
    assert jsonpath(obj, ".items[?(@.n==true)].n") == [True]


@pytest.mark.parametrize("expr", [".a..b", ".a[?(@.b=c)]", ".a[foo]", ".a[", ".a.", ".a[?@.b]", ".a[::0]"])
def test_jsonpath_rejects_unsupported_expressions(expr: str) -> None:
    with pytest.raises(JSONPathError):
        compile_jsonpath(expr)


def test_every_builtin_printer_column_path_compiles() -> None:
    for kind in kinds.all_kinds():
        for column in kind.printer_columns:
            if column.json_path:
                compile_jsonpath(column.json_path)


# --- tables --------------------------------------------------------------------------------------


def test_configmap_table_counts_data_and_renders_age() -> None:
    cms = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("a"), "data": {"x": "1", "y": "2"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("b"), "binaryData": {"z": "AA=="}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("c")},
    ]
    table = to_table(_kind("configmaps"), cms, resource_version="42", now=NOW)
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42"}
    assert _columns(table) == ["Name", "Data", "Age"]
    name_col = table["columnDefinitions"][0]
    assert name_col["type"] == "string" and name_col["format"] == "name"
    assert name_col["description"] == ObjectMeta.model_fields["name"].description
    assert table["columnDefinitions"][1]["type"] == "integer"
    assert [row["cells"] for row in table["rows"]] == [["a", 2, "5m"], ["b", 1, "5m"], ["c", 0, "5m"]]


def test_node_table_ready_roles_and_wide_columns() -> None:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {**_meta("n1"), "labels": {"node-role.kubernetes.io/control-plane": ""}},
        "spec": {"unschedulable": True},
        "status": {**NODE["status"], "nodeInfo": {"kubeletVersion": "v1.30.0", "kernelVersion": "6.8.0"}},
    }
    bare = {"apiVersion": "v1", "kind": "Node", "metadata": _meta("n2")}
    table = to_table(_kind("nodes"), [node, bare], resource_version="7", now=NOW)
    assert _columns(table) == ["Name", "Status", "Roles", "Age", "Version", "Internal-IP", "Kernel-Version"]
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 0, 0, 0, 1, 1]
    assert table["rows"][0]["cells"] == [
        "n1",
        "Ready,SchedulingDisabled",
        "control-plane",
        "5m",
        "v1.30.0",
        "10.0.0.5",
        "6.8.0",
    ]
    assert table["rows"][1]["cells"] == ["n2", "Unknown", "<none>", "5m", None, None, None]


def test_node_not_ready() -> None:
    node = {"metadata": _meta("n"), "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    table = to_table(_kind("nodes"), [node], resource_version="1", now=NOW)
    assert table["rows"][0]["cells"][1] == "NotReady"


def test_event_table_involved_object_and_last_seen() -> None:
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": _meta("vm1.17a"),
        "involvedObject": {"kind": "VirtualMachine", "name": "vm1", "namespace": "default"},
        "reason": "Started",
        "message": "VM started",
        "type": "Normal",
        "lastTimestamp": _ago(seconds=30),
    }
    table = to_table(_kind("events"), [event], resource_version="9", now=NOW)
    assert _columns(table) == ["Name", "Last Seen", "Type", "Reason", "Object", "Message"]
    assert table["rows"][0]["cells"] == [
        "vm1.17a",
        "30s",
        "Normal",
        "Started",
        "virtualmachine/vm1",
        "VM started",
    ]


def test_rbac_created_at_is_a_timestamp() -> None:
    role = {"metadata": {"name": "r", "creationTimestamp": "2024-05-01T10:00:00+02:00"}, "rules": []}
    table = to_table(_kind("roles", "rbac.authorization.k8s.io"), [role], resource_version="1", now=NOW)
    assert _columns(table) == ["Name", "Created At"]
    assert table["rows"][0]["cells"] == ["r", "2024-05-01T08:00:00Z"]


def test_kind_without_columns_gets_name_and_age() -> None:
    kind = _kind("selfsubjectaccessreviews", "authorization.k8s.io")
    table = to_table(
        kind, [{"metadata": {"name": "x", "creationTimestamp": _ago(days=3)}}], resource_version="1", now=NOW
    )
    assert _columns(table) == ["Name", "Age"]
    assert table["columnDefinitions"][1]["type"] == "date"
    assert table["rows"][0]["cells"] == ["x", "3d"]


def _custom_kind(*columns: PrinterColumn) -> Kind:
    return Kind("example.com", "v1", "Widget", "widgets", core.ConfigMap, printer_columns=columns)


def test_json_path_cells_follow_column_types() -> None:
    kind = _custom_kind(
        PrinterColumn("Str", "string", ".spec.s"),
        PrinterColumn("StrFromInt", "string", ".spec.i"),
        PrinterColumn("StrFromBool", "string", ".spec.b"),
        PrinterColumn("StrFromMap", "string", ".spec.m"),
        PrinterColumn("Int", "integer", ".spec.f"),
        PrinterColumn("IntFromStr", "integer", ".spec.s"),
        PrinterColumn("Num", "number", ".spec.i"),
        PrinterColumn("Bool", "boolean", ".spec.b"),
        PrinterColumn("First", "string", ".spec.list[*].v"),
        PrinterColumn("Missing", "string", ".spec.nope"),
        PrinterColumn("BadDate", "date", ".spec.s"),
        PrinterColumn("EmptyDate", "date", ".spec.empty"),
        PrinterColumn("Future", "date", ".spec.future"),
    )
    obj = {
        "metadata": {"name": "w"},
        "spec": {
            "s": "hello",
            "i": 3,
            "b": False,
            "m": {"b": 1, "a": [1, "x"]},
            "f": 2.7,
            "list": [{"v": "one"}, {"v": "two"}],
            "empty": "",
            "future": (NOW + timedelta(hours=1)).isoformat(),
        },
    }
    row = to_table(kind, [obj], resource_version="1", now=NOW)["rows"][0]["cells"]
    assert row == [
        "w",
        "hello",
        "3",
        "false",
        '{"a":[1,"x"],"b":1}',
        2,
        None,
        3.0,
        False,
        "one",
        None,
        "<invalid>",
        "<unknown>",
        "<invalid>",
    ]


def test_value_callables_and_failures() -> None:
    kind = _custom_kind(
        PrinterColumn("Upper", value=lambda o: o["metadata"]["name"].upper()),
        PrinterColumn("Broken", value=lambda o: o["spec"]["missing"]),
        PrinterColumn("When", "date", value=lambda o: o["metadata"]["creationTimestamp"]),
    )
    obj = {"metadata": {"name": "w", "creationTimestamp": _ago(hours=5)}, "spec": {}}
    assert to_table(kind, [obj], resource_version="1", now=NOW)["rows"][0]["cells"] == ["w", "W", None, "5h"]


def test_include_object_variants_and_list_metadata() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("a"), "data": {"k": "v"}}
    kind = _kind("configmaps")
    default = to_table(kind, [cm], resource_version="5", continue_token="tok", remaining=3, now=NOW)
    assert default["metadata"] == {"resourceVersion": "5", "continue": "tok", "remainingItemCount": 3}
    assert default["rows"][0]["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": cm["metadata"],
    }
    assert (
        to_table(kind, [cm], resource_version="5", include_object="Object", now=NOW)["rows"][0]["object"]
        == cm
    )
    assert (
        "object" not in to_table(kind, [cm], resource_version="5", include_object="None", now=NOW)["rows"][0]
    )
    beta = to_table(kind, [cm], resource_version="5", version="v1beta1", now=NOW)
    assert beta["apiVersion"] == "meta.k8s.io/v1beta1"
    assert beta["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"
    with pytest.raises(ValueError, match="includeObject"):
        to_table(kind, [cm], resource_version="5", include_object="Everything")


def test_empty_list_and_default_now() -> None:
    table = to_table(_kind("configmaps"), [], resource_version="1")
    assert table["rows"] == []
    cm = {"metadata": {"name": "a", "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}
    assert to_table(_kind("configmaps"), [cm], resource_version="1")["rows"][0]["cells"][2] in (
        "0s",
        "1s",
        "2s",
    )


def test_storage_class_table_as_kubectl_prints_it() -> None:
    sc = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": _meta("local"),
        "provisioner": "kubevisor.io/local",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": True,
    }
    table = to_table(_kind("storageclasses", "storage.k8s.io"), [sc], resource_version="1", now=NOW)
    assert _columns(table) == [
        "Name",
        "Provisioner",
        "ReclaimPolicy",
        "VolumeBindingMode",
        "AllowVolumeExpansion",
        "Age",
    ]
    assert table["rows"][0]["cells"] == [
        "local",
        "kubevisor.io/local",
        "Delete",
        "WaitForFirstConsumer",
        "true",
        "5m",
    ]
