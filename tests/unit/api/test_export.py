"""VirtualMachineExport's validation, durations and download paths (kubevisor.api.export), and the
apiserver's parsing of those paths (kubevisor.apiserver.exports)."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.api import export
from kubevisor.api.registry import default_registry
from kubevisor.apiserver.exports import ExportTarget, parse_path


def obj(source: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    src = source or {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "data"}
    return {"metadata": {"name": "e"}, "spec": {"source": src, **spec}}


def fields(o: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    kind = default_registry().get(export.GROUP, export.VERSION, export.PLURAL)
    assert kind is not None and kind.validator is not None
    return [e.field for e in kind.validator(o, old)]


@pytest.mark.parametrize(
    ("group", "kind"),
    [
        ("", "PersistentVolumeClaim"),
        ("snapshot.kubevirt.io", "VirtualMachineSnapshot"),
        ("kubevirt.io", "VirtualMachine"),
    ],
)
def test_each_source_kind_with_its_group_is_valid(group: str, kind: str) -> None:
    assert fields(obj({"apiGroup": group, "kind": kind, "name": "x"}, ttlDuration="1h30m")) == []


def test_a_pvc_source_may_omit_the_core_group() -> None:
    assert fields(obj({"kind": "PersistentVolumeClaim", "name": "x"})) == []


@pytest.mark.parametrize(
    ("source", "spec", "field"),
    [
        ({"apiGroup": "", "kind": "ConfigMap", "name": "x"}, {}, "spec.source.kind"),
        ({"apiGroup": "", "kind": "VirtualMachine", "name": "x"}, {}, "spec.source.apiGroup"),
        ({"apiGroup": "", "kind": "PersistentVolumeClaim", "name": ""}, {}, "spec.source.name"),
        (None, {"ttlDuration": "two hours"}, "spec.ttlDuration"),
        (None, {"ttlDuration": "0s"}, "spec.ttlDuration"),
    ],
)
def test_invalid_specs_name_the_field(
    source: dict[str, Any] | None, spec: dict[str, Any], field: str
) -> None:
    assert fields(obj(source, **spec)) == [field]


def test_spec_is_immutable() -> None:
    old = obj()
    new = obj({"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "other"})
    assert fields(new, old) == ["spec"]
    assert fields(old, old) == []


def test_durations() -> None:
    assert export.parse_duration(export.DEFAULT_TTL) == 7200
    assert export.parse_duration("1h30m") == 5400
    assert export.parse_duration("90s") == 90
    with pytest.raises(ValueError, match="2h"):
        export.parse_duration("2 hours")


def test_download_paths_round_trip() -> None:
    for fmt in (export.FORMAT_RAW, export.FORMAT_GZIP):
        path = export.download_path("ns", "e", "vol", fmt)
        assert parse_path(path) == ExportTarget("ns", "e", "vol", fmt)
    assert export.download_path("ns", "e", "vol", "gzip").endswith("/volumes/vol/disk.img.gz")
    old = "/api/export.kubevirt.io/v1beta1/namespaces/ns/e/volumes/vol/disk.img"
    assert parse_path(old) == ExportTarget("ns", "e", "vol", "raw")


@pytest.mark.parametrize(
    "path",
    [
        "/api/export.kubevirt.io/v1/namespaces/ns/e/volumes/vol/disk.tar.gz",
        "/api/export.kubevirt.io/v2/namespaces/ns/e/volumes/vol/disk.img",
        "/api/export.kubevirt.io/v1/namespaces//e/volumes/vol/disk.img",
        "/api/export.kubevirt.io/v1/namespaces/ns/e/volumes/vol/disk.img/more",
        "/api/v1/namespaces/ns/e/volumes/vol/disk.img",
        "/apis/export.kubevirt.io/v1/namespaces/ns/virtualmachineexports/e",
    ],
)
def test_other_paths_are_not_downloads(path: str) -> None:
    assert parse_path(path) is None
