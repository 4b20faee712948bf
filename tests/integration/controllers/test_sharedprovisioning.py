"""The shared provisioner against the real API server: a claim of a ``kubevisor.io/shared`` class gets a
PersistentVolume without node affinity (``spec.nfs`` or ``spec.hostPath``), bound by the binder; a wrong
class is refused with an Event naming the parameter; a released volume under Delete is handed to a node;
the class's StorageProfile offers ReadWriteMany."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kubevisor.api import storage
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.controllers.provisioning import LocalProvisioner
from kubevisor.controllers.sharedprovisioning import RECLAIM_NODE_ANNOTATION, SharedProvisioner
from kubevisor.controllers.volumebinding import VolumeBindingController
from tests.integration.client.libcluster import until


@pytest.fixture
async def controllers(client: Client) -> AsyncIterator[None]:
    await client.resource("v1", "nodes").create(
        {
            "metadata": {
                "name": "node-b",
                "annotations": {storage.VOLUME_DIR_ANNOTATION: "/var/lib/kubevisor/volumes"},
            }
        }
    )
    async with VolumeBindingController(client), SharedProvisioner(client), LocalProvisioner(client):
        yield


def shared_class(name: str, reclaim: str = "Delete", **parameters: str) -> Obj:
    return {
        "metadata": {"name": name},
        "provisioner": "kubevisor.io/shared",
        "reclaimPolicy": reclaim,
        "volumeBindingMode": "Immediate",
        "parameters": parameters,
    }


def claim(name: str, sc: str, modes: tuple[str, ...] = ("ReadWriteMany",)) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {
            "storageClassName": sc,
            "accessModes": list(modes),
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


async def bound(client: Client, name: str) -> Obj:
    pvcs = client.resource("v1", "persistentvolumeclaims")
    found: Obj = await until(
        lambda: pvcs.get(name, "default"),
        lambda c: (c.get("status") or {}).get("phase") == "Bound",
        10,
        f"claim {name} Bound",
    )
    return found


async def test_nfs_class_gives_an_nfs_volume_on_no_node(client: Client, controllers: None) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(
        shared_class("nfs", server="127.0.0.1", share="/srv/export")
    )
    created = await client.resource("v1", "persistentvolumeclaims").create(claim("data", "nfs"), "default")
    pvc = await bound(client, "data")
    uid = created["metadata"]["uid"]
    assert pvc["spec"]["volumeName"] == f"pvc-{uid}"
    assert pvc["metadata"]["annotations"][storage.SELECTED_NODE_ANNOTATION] == "node-b"  # where imports run
    pv = await client.resource("v1", "persistentvolumes").get(f"pvc-{uid}")
    assert pv["spec"]["nfs"] == {"server": "127.0.0.1", "path": f"/srv/export/pvc-{uid}"}
    assert "nodeAffinity" not in pv["spec"] and "hostPath" not in pv["spec"]
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert pv["metadata"]["annotations"][storage.PROVISIONED_BY_ANNOTATION] == "kubevisor.io/shared"

    profiles = client.resource("cdi.kubevirt.io/v1beta1", "storageprofiles")
    profile = await until(
        lambda: profiles.get("nfs"), lambda p: bool((p.get("status") or {}).get("claimPropertySets")), 10
    )
    assert profile["status"]["claimPropertySets"][0]["accessModes"] == ["ReadWriteMany"]

    # the claim goes: the volume is Released and handed to a node's agent to delete its data
    await client.resource("v1", "persistentvolumeclaims").delete("data", "default")
    pvs = client.resource("v1", "persistentvolumes")
    released = await until(
        lambda: pvs.get(f"pvc-{uid}"),
        lambda v: RECLAIM_NODE_ANNOTATION in (v["metadata"].get("annotations") or {}),
        10,
        "reclaim node chosen",
    )
    assert released["status"]["phase"] == "Released"
    assert released["metadata"]["annotations"][RECLAIM_NODE_ANNOTATION] == "node-b"


async def test_path_class_gives_a_host_path_volume(client: Client, controllers: None) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(
        shared_class("cfs", reclaim="Retain", path="/srv/cluster-fs/")
    )
    created = await client.resource("v1", "persistentvolumeclaims").create(
        claim("once", "cfs", ("ReadWriteOnce",)), "default"
    )
    pvc = await bound(client, "once")
    pv = await client.resource("v1", "persistentvolumes").get(pvc["spec"]["volumeName"])
    uid = created["metadata"]["uid"]
    assert pv["spec"]["hostPath"] == {"path": f"/srv/cluster-fs/pvc-{uid}", "type": "DirectoryOrCreate"}
    assert "nodeAffinity" not in pv["spec"]
    assert pv["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


async def test_a_wrong_class_is_refused_with_an_event(client: Client, controllers: None) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(
        shared_class("broken", server="127.0.0.1", share="export")
    )
    await client.resource("v1", "persistentvolumeclaims").create(claim("nope", "broken"), "default")
    events = client.resource("v1", "events")
    found = await until(
        lambda: events.list("default"),
        lambda listed: any(e.get("reason") == "ProvisioningFailed" for e in listed.items),
        10,
        "ProvisioningFailed event",
    )
    message = next(e["message"] for e in found.items if e.get("reason") == "ProvisioningFailed")
    assert "parameters.share 'export' must be an absolute directory path" in message
    assert (await client.resource("v1", "persistentvolumes").list()).items == []
