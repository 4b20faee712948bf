"""Which claims a VM waits for, and which volume a claim may bind to (pure rules of the VM controller and
the volume binder)."""

from __future__ import annotations

from typing import Any

from kubevisor.controllers.vm import claim_names
from kubevisor.controllers.volumebinding import fits


def vm(*volumes: dict[str, Any], templates: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "spec": {
            "dataVolumeTemplates": [{"metadata": {"name": n}} for n in templates],
            "template": {"spec": {"volumes": list(volumes)}},
        }
    }


def test_claim_names_of_a_vm() -> None:
    found = claim_names(
        vm(
            {"name": "a", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "b", "ephemeral": {"persistentVolumeClaim": {"claimName": "base"}}},
            {"name": "c", "dataVolume": {"name": "imported"}},
            {"name": "d", "dataVolume": {"name": "templated"}},
            {"name": "e", "containerDisk": {"image": "x"}},
            templates=("templated",),
        )
    )
    assert found == {"data", "base", "imported"}  # a templated DataVolume's claim is still being made


def volume(size: str, modes: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"tier": "fast"}},
        "spec": {"capacity": {"storage": size}, "accessModes": modes, **spec},
    }


def claim(size: str, modes: list[str], **spec: Any) -> dict[str, Any]:
    return {"spec": {"resources": {"requests": {"storage": size}}, "accessModes": modes, **spec}}


def test_a_volume_fits_a_claim() -> None:
    rwo = ["ReadWriteOnce"]
    assert fits(volume("2Gi", rwo), claim("1Gi", rwo))
    assert not fits(volume("512Mi", rwo), claim("1Gi", rwo))
    assert not fits(volume("2Gi", rwo), claim("1Gi", ["ReadWriteMany"]))
    assert fits(volume("2Gi", ["ReadWriteOnce", "ReadWriteMany"]), claim("1Gi", ["ReadWriteMany"]))
    assert not fits(volume("2Gi", rwo, storageClassName="fast"), claim("1Gi", rwo))
    assert fits(volume("2Gi", rwo, storageClassName="fast"), claim("1Gi", rwo, storageClassName="fast"))
    assert not fits(volume("2Gi", rwo, volumeMode="Block"), claim("1Gi", rwo))
    assert fits(volume("2Gi", rwo), claim("1Gi", rwo, selector={"matchLabels": {"tier": "fast"}}))
    assert not fits(volume("2Gi", rwo), claim("1Gi", rwo, selector={"matchLabels": {"tier": "slow"}}))
