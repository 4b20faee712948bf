"""Validation of the snapshot.storage.k8s.io/v1 kinds (kubevisor.api.volumesnapshot): the CRDs' rules."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.api import volumesnapshot
from kubevisor.api.registry import default_registry


def fields(plural: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    kind = default_registry().get(volumesnapshot.GROUP, volumesnapshot.VERSION, plural)
    assert kind is not None and kind.validator is not None
    kind.model.model_validate(obj)  # the wire type accepts it
    return [e.field for e in kind.validator(obj, old)]


def snapshot(**source: str) -> dict[str, Any]:
    return {"metadata": {"name": "s"}, "spec": {"source": source}}


def content(source: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "volumeSnapshotRef": {"name": "s", "namespace": "default"},
        "driver": "kubevisor.io/local",
        "deletionPolicy": "Delete",
        "source": source if source is not None else {"volumeHandle": "pv-1"},
        **spec,
    }
    return {"metadata": {"name": "c"}, "spec": body}


def test_the_kinds_are_registered_with_their_scopes_and_columns() -> None:
    registry = default_registry()
    found = {
        p: registry.get("snapshot.storage.k8s.io", "v1", p)
        for p in ("volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses")
    }
    assert {p: k.namespaced for p, k in found.items() if k is not None} == {
        "volumesnapshots": True,
        "volumesnapshotcontents": False,
        "volumesnapshotclasses": False,
    }
    vs = found["volumesnapshots"]
    assert vs is not None and vs.short_names == ("vs",)
    assert [c.name for c in vs.printer_columns] == [
        "ReadyToUse",
        "SourcePVC",
        "SourceSnapshotContent",
        "RestoreSize",
        "SnapshotClass",
        "SnapshotContent",
        "CreationTime",
        "Age",
    ]


@pytest.mark.parametrize(
    "source", [{"persistentVolumeClaimName": "data"}, {"volumeSnapshotContentName": "snapcontent-1"}]
)
def test_a_snapshot_with_one_source_is_valid(source: dict[str, str]) -> None:
    assert fields("volumesnapshots", snapshot(**source)) == []


@pytest.mark.parametrize(
    "source", [{}, {"persistentVolumeClaimName": "data", "volumeSnapshotContentName": "c"}]
)
def test_a_snapshot_needs_exactly_one_source(source: dict[str, str]) -> None:
    assert fields("volumesnapshots", snapshot(**source)) == ["spec.source"]


def test_a_snapshot_source_is_immutable_and_its_class_not_empty() -> None:
    old = snapshot(persistentVolumeClaimName="data")
    assert fields("volumesnapshots", snapshot(persistentVolumeClaimName="other"), old) == [
        "spec.source.persistentVolumeClaimName"
    ]
    empty_class = snapshot(persistentVolumeClaimName="data")
    empty_class["spec"]["volumeSnapshotClassName"] = ""
    assert fields("volumesnapshots", empty_class) == ["spec.volumeSnapshotClassName"]


def test_content_rules() -> None:
    assert fields("volumesnapshotcontents", content()) == []
    assert fields("volumesnapshotcontents", content({"snapshotHandle": "h"})) == []
    assert fields("volumesnapshotcontents", content({"volumeHandle": "a", "snapshotHandle": "b"})) == [
        "spec.source"
    ]
    assert fields("volumesnapshotcontents", content(deletionPolicy="Keep")) == ["spec.deletionPolicy"]
    no_namespace = content()
    del no_namespace["spec"]["volumeSnapshotRef"]["namespace"]
    assert fields("volumesnapshotcontents", no_namespace) == ["spec.volumeSnapshotRef"]
    assert fields("volumesnapshotcontents", content({"volumeHandle": "pv-2"}), content()) == [
        "spec.source.volumeHandle"
    ]


def test_class_rules() -> None:
    good = {"metadata": {"name": "k"}, "driver": "kubevisor.io/local", "deletionPolicy": "Retain"}
    assert fields("volumesnapshotclasses", good) == []
    assert fields("volumesnapshotclasses", dict(good, deletionPolicy="Never")) == ["deletionPolicy"]
    assert fields("volumesnapshotclasses", dict(good, driver="other"), good) == ["driver"]
