"""``status.volumeStatus`` entries of the volumes that are not hotplugged
(:mod:`kubevisor.agent.volumestatus`): every volume in spec order, the guest's device names, the claims'
facts, QEMU's sizes; hotplugged entries (another owner's) are kept after them."""

from __future__ import annotations

from kubevisor.agent import volumestatus
from kubevisor.api.registry import Obj

SPEC: Obj = {
    "domain": {
        "devices": {
            "disks": [
                {"name": "root", "disk": {"bus": "virtio"}},
                {"name": "data", "disk": {"bus": "virtio"}},
                {"name": "blk", "disk": {"bus": "scsi"}},
                {"name": "hot", "disk": {"bus": "scsi"}},
            ]
        }
    },
    "volumes": [
        {"name": "root", "containerDisk": {"image": "x"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "pvc-a"}},
        {"name": "blk", "dataVolume": {"name": "dv-b"}},
        {"name": "hot", "persistentVolumeClaim": {"claimName": "pvc-h", "hotpluggable": True}},
        {"name": "cfg", "cloudInitNoCloud": {"userData": "#!/bin/sh"}},
    ],
}


def claim(mode: str | None, capacity: str, request: str) -> Obj:
    spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": request}}}
    if mode:
        spec["volumeMode"] = mode
    return {"spec": spec, "status": {"phase": "Bound", "capacity": {"storage": capacity}}}


def test_every_volume_but_the_hotplugged_ones_in_spec_order() -> None:
    claims = {"pvc-a": claim(None, "1Gi", "1Gi"), "dv-b": claim("Block", "2Gi", "2Gi")}
    got = volumestatus.entries(SPEC, claims, {"root": 100, "data": 1 << 30})
    assert got == [
        {"name": "root", "target": "vda", "size": 100},
        {
            "name": "data",
            "target": "vdb",
            "persistentVolumeClaimInfo": {
                "claimName": "pvc-a",
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": "Filesystem",
                "capacity": {"storage": "1Gi"},
                "requests": {"storage": "1Gi"},
                "filesystemOverhead": "0",
            },
            "size": 1 << 30,
        },
        {
            "name": "blk",
            "target": "sda",
            "persistentVolumeClaimInfo": {
                "claimName": "dv-b",
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": "Block",
                "capacity": {"storage": "2Gi"},
                "requests": {"storage": "2Gi"},
            },
        },
        {"name": "cfg"},
    ]
    assert volumestatus.claim_names(SPEC) == {"data": "pvc-a", "blk": "dv-b"}


def test_hotplugged_entries_are_kept_after() -> None:
    hot = {"name": "hot", "target": "sdb", "phase": "Ready", "hotplugVolume": {}}
    status = {"phase": "Running", "volumeStatus": [{"name": "old"}, hot]}
    merged = volumestatus.merged(status, [{"name": "root"}])
    assert merged["volumeStatus"] == [{"name": "root"}, hot]
    assert status["volumeStatus"] == [{"name": "old"}, hot]  # not changed in place
    assert "volumeStatus" not in volumestatus.merged({"phase": "Running"}, [])
