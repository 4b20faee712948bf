"""The shared provisioner's volume shapes, from a storage class's parameters."""

from __future__ import annotations

import pytest

from kubevisor.api.registry import Obj
from kubevisor.controllers.sharedprovisioning import ClassError, volume_source


def sc(**parameters: str) -> Obj:
    return {"metadata": {"name": "shared"}, "provisioner": "kubevisor.io/shared", "parameters": parameters}


def test_nfs_and_path_classes() -> None:
    assert volume_source(sc(server="nfs.example", share="/export/vms/"), "pvc-1") == {
        "nfs": {"server": "nfs.example", "path": "/export/vms/pvc-1"}
    }
    assert volume_source(sc(path="/srv/cluster"), "pvc-1") == {
        "hostPath": {"path": "/srv/cluster/pvc-1", "type": "DirectoryOrCreate"}
    }


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({}, "set parameters.path"),
        ({"server": "nfs.example"}, "set parameters.path"),
        ({"server": "nfs.example", "share": "export"}, r"parameters.share 'export' must be an absolute"),
        ({"server": "nfs.example", "share": "/"}, r"parameters.share '/' must be an absolute"),
        ({"server": "a b", "share": "/export"}, r"parameters.server 'a b' is not a host name"),
        ({"server": "-o", "share": "/export"}, r"parameters.server '-o' is not a host name"),
        ({"path": "/srv/../etc"}, r"parameters.path '/srv/../etc' must be an absolute"),
        ({"path": "/srv", "server": "x", "share": "/e"}, "exclude each other"),
        ({"paht": "/srv"}, "parameters paht are not known"),
    ],
)
def test_wrong_parameters_are_named(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(ClassError, match=message):
        volume_source(sc(**parameters), "pvc-1")
