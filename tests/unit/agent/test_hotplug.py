"""The node agent's hotplug decisions: which spec volumes are hotplugged, what to attach and detach
compared with QEMU's disks, and the guest device names reported as volumeStatus targets."""

from __future__ import annotations

from typing import Any

from kubevisor.agent import hotplug


def spec(*volumes: dict[str, Any], disks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "domain": {
            "devices": {"disks": disks if disks is not None else [{"name": v["name"]} for v in volumes]}
        },
        "volumes": list(volumes),
    }


ROOT = {"name": "root", "containerDisk": {"image": "x"}}
DATA = {"name": "data", "persistentVolumeClaim": {"claimName": "pvc1", "hotpluggable": True}}
DV = {"name": "dv", "dataVolume": {"name": "dv1", "hotpluggable": True}}


def test_wanted_are_the_hotpluggable_volumes_with_a_disk() -> None:
    s = spec(
        ROOT,
        DATA,
        DV,
        disks=[
            {"name": "root", "disk": {"bus": "virtio"}},
            {"name": "data", "disk": {"bus": "scsi"}, "serial": "D1"},
            {"name": "dv", "disk": {"bus": "virtio", "readonly": True}},
        ],
    )
    found = hotplug.wanted(s)
    assert list(found) == ["data", "dv"]
    assert found["data"] == hotplug.Wanted(
        name="data", claim="pvc1", field="spec.volumes[1].persistentVolumeClaim", serial="D1"
    )
    assert found["dv"].bus == "virtio" and found["dv"].readonly and found["dv"].claim == "dv1"
    assert "data" not in hotplug.wanted(spec(ROOT, DATA, disks=[{"name": "root"}]))  # no disk: nothing


def test_plan_attaches_the_missing_and_detaches_disks_gone_from_the_spec() -> None:
    present = {"ua-root": "drive-0", "ua-old": "hpd-1", "ua-dv": "hpd-2"}
    todo = hotplug.plan(spec(ROOT, DATA, DV), present)
    assert [w.name for w in todo.attach] == ["data"]
    assert todo.detach == (("ua-old", "hpd-1"),)


def test_plan_never_detaches_what_is_not_a_vmi_disk_device() -> None:
    present = {"ua-root": "drive-0", "pflash0": "ovmf-code"}
    assert hotplug.plan(spec(ROOT), present) == hotplug.Plan(attach=(), detach=())


def test_plan_is_empty_once_qemu_matches() -> None:
    present = {"ua-root": "drive-0", "ua-data": "hpd-1", "ua-dv": "hpd-2"}
    assert hotplug.plan(spec(ROOT, DATA, DV), present) == hotplug.Plan(attach=(), detach=())


def test_target_names_follow_linux_order_per_bus() -> None:
    disks: list[dict[str, Any]] = [
        {"name": "root", "disk": {"bus": "virtio"}},
        {"name": "cd", "cdrom": {"bus": "sata"}},
        {"name": "a", "disk": {"bus": "scsi"}},
        {"name": "b", "disk": {"bus": "sata"}},
        {"name": "c"},
    ]
    assert hotplug.target_names(spec(disks=disks)) == {"root": "vda", "a": "sda", "b": "sdb", "c": "vdb"}
