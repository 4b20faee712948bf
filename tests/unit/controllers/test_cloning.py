"""The clone rules of :mod:`kubevisor.controllers.cloning` (pure: objects in, decisions out)."""

from __future__ import annotations

from kubevisor.api.registry import Obj
from kubevisor.controllers import cloning


def dv(source: Obj, size: str | None = "1Gi") -> Obj:
    storage: Obj = {"resources": {"requests": {"storage": size}}} if size else {}
    return {"metadata": {"name": "t", "namespace": "ns"}, "spec": {"source": source, "storage": storage}}


def claim(size: str = "1Gi", phase: str = "Bound", **annotations: str) -> Obj:
    return {
        "metadata": {"name": "src", "namespace": "ns", "annotations": annotations},
        "spec": {"resources": {"requests": {"storage": size}}},
        "status": {"phase": phase, "capacity": {"storage": size}} if phase == "Bound" else {"phase": phase},
    }


def vmi(name: str, claim_name: str, phase: str = "Running", namespace: str = "ns") -> Obj:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"volumes": [{"name": "d", "dataVolume": {"name": claim_name}}]},
        "status": {"phase": phase},
    }


def test_source_of_defaults_the_namespace() -> None:
    assert cloning.source_of(dv({"pvc": {"name": "src"}})) == ("ns", "src")
    assert cloning.source_of(dv({"pvc": {"namespace": "o", "name": "src"}})) == ("o", "src")
    assert cloning.source_of(dv({"blank": {}})) is None


def test_check_source() -> None:
    missing = cloning.check_source(dv({"pvc": {"name": "src"}}), None, "ns", "src")
    assert (missing.phase, missing.reason, missing.message) == (
        "Pending",
        "CloneWithoutSource",
        "The source pvc src doesn't exist",
    )
    small = cloning.check_source(dv({"pvc": {"name": "src"}}, "1Gi"), claim("2Gi"), "ns", "src")
    assert small.phase == "Failed" and small.reason == "CloneValidationFailed"
    assert "target resources requests storage size is smaller than the source" in small.message
    assert cloning.check_source(dv({"pvc": {"name": "src"}}, "2Gi"), claim("1Gi"), "ns", "src").phase == ""
    sized = cloning.check_source(dv({"pvc": {"name": "src"}}, None), claim("1Gi"), "ns", "src")
    assert sized.phase == "" and sized.size == str(1024**3)


def test_gate() -> None:
    def decide(
        source: Obj | None, vmis: list[Obj], src_node: str | None = "n1", dst: str | None = "n1"
    ) -> Obj:
        g = cloning.gate(source, "ns", "src", source_node=src_node, target_node=dst, vmis=vmis)
        return {"ready": g.ready, "phase": g.phase, "reason": g.reason}

    assert decide(claim(), []) == {"ready": True, "phase": "CloneScheduled", "reason": ""}
    assert decide(None, [])["reason"] == "CloneWithoutSource"
    assert decide(claim(phase="Pending"), [])["reason"] == "CloneSourceNotBound"
    importing = claim(**{"cdi.kubevirt.io/storage.import.source": "http"})
    assert decide(importing, [])["reason"] == "CloneSourceNotPopulated"
    done = claim(
        **{"cdi.kubevirt.io/storage.import.source": "http", "cdi.kubevirt.io/storage.pod.phase": "Succeeded"}
    )
    assert decide(done, [])["ready"] is True
    assert decide(claim(), [vmi("vm", "src")])["reason"] == "CloneSourceInUse"
    assert (
        decide(claim(), [vmi("vm", "src", phase="Succeeded")])["ready"] is True
    )  # finished VMIs do not count
    assert decide(claim(), [vmi("vm", "src", namespace="other")])["ready"] is True
    assert decide(claim(), [], "n1", "n2") == {
        "ready": False,
        "phase": "Failed",
        "reason": "CloneAcrossNodes",
    }
    assert decide(claim(), [], None, "n2")["ready"] is True  # a volume without node affinity
    assert decide(claim(), [], "n1", None) == {"ready": False, "phase": "CloneScheduled", "reason": ""}
