"""The rules of DataVolumes restoring VolumeSnapshots (kubevisor.controllers.cloning), their clone
authorization (kubevisor.apiserver.cloneauth) and restore sizes (kubevisor.controllers.volumesnapshot)."""

from __future__ import annotations

from kubevisor.api.registry import Obj
from kubevisor.apiserver import cloneauth
from kubevisor.controllers import cloning
from kubevisor.controllers.volumesnapshot import format_bytes


def dv(size: str | None = "1Gi", namespace: str | None = None) -> Obj:
    storage: Obj = {"resources": {"requests": {"storage": size}}} if size else {}
    ref = {"name": "snap", **({"namespace": namespace} if namespace else {})}
    return {
        "metadata": {"name": "t", "namespace": "ns"},
        "spec": {"source": {"snapshot": ref}, "storage": storage},
    }


def snap(ready: bool = True, size: str = "512Mi", error: str | None = None) -> Obj:
    status: Obj = {"readyToUse": ready, "restoreSize": size, "boundVolumeSnapshotContentName": "c"}
    if error:
        status["error"] = {"message": error}
    return {"metadata": {"name": "snap", "namespace": "ns"}, "status": status}


def content(node: str) -> Obj:
    return {"metadata": {"name": "c", "labels": {"snapshot.storage.kubevisor.io/node": node}}}


def test_source_of_defaults_the_namespace() -> None:
    assert cloning.snapshot_source_of(dv()) == ("ns", "snap")
    assert cloning.snapshot_source_of(dv(namespace="images")) == ("images", "snap")


def test_check_snapshot() -> None:
    assert cloning.check_snapshot(dv(), None, "ns", "snap").reason == "CloneWithoutSource"
    waiting = cloning.check_snapshot(dv(), snap(ready=False, error="claim gone"), "ns", "snap")
    assert (waiting.phase, waiting.reason) == ("Pending", "SnapshotNotReady")
    assert "claim gone" in waiting.message
    assert cloning.check_snapshot(dv(), snap(), "ns", "snap").phase == ""
    too_small = cloning.check_snapshot(dv("256Mi"), snap(), "ns", "snap")
    assert (too_small.phase, too_small.reason) == ("Failed", "CloneValidationFailed")
    assert cloning.check_snapshot(dv(None), snap(), "ns", "snap").size == str(512 * 2**20)


def test_snapshot_gate_needs_the_content_on_the_target_node() -> None:
    assert cloning.snapshot_gate(content("a"), "ns", "snap", target_node="a").ready
    assert not cloning.snapshot_gate(content("a"), "ns", "snap", target_node=None).ready
    across = cloning.snapshot_gate(content("a"), "ns", "snap", target_node="b")
    assert (across.phase, across.reason) == ("Failed", "CloneAcrossNodes")
    assert cloning.snapshot_gate(None, "ns", "snap", target_node="a").phase == "Failed"


def test_cross_namespace_snapshot_sources_need_permission() -> None:
    assert cloneauth.clone_sources("DataVolume", dv(namespace="images"), "ns") == {
        "spec.source.snapshot.namespace": "images"
    }
    assert cloneauth.clone_sources("DataVolume", dv(), "ns") == {}


def test_format_bytes() -> None:
    assert format_bytes(16 * 2**20) == "16Mi"
    assert format_bytes(3 * 2**30) == "3Gi"
    assert format_bytes(1000) == "1000"
    assert format_bytes(0) == "0"
