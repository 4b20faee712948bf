"""PersistentVolumeClaims and PersistentVolumes against the real API server: the binder binds a claim to
the volume that fits, volumes whose claim is gone are Released, and a VM whose claim
does not exist shows ErrorPvcNotFound until it does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.controllers.vm import VirtualMachineController
from kubevisor.controllers.volumebinding import VolumeBindingController
from tests.integration.client.libcluster import until
from tests.integration.controllers.test_vm import KV, vm, vm_status


@pytest.fixture
async def binder(client: Client) -> AsyncIterator[None]:
    async with VolumeBindingController(client):
        yield


def pv(name: str, size: str, modes: tuple[str, ...] = ("ReadWriteOnce",), **spec: Any) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": list(modes),
            "hostPath": {"path": f"/var/lib/kubevisor/volumes/{name}"},
            **spec,
        },
    }


def pvc(name: str, size: str, modes: tuple[str, ...] = ("ReadWriteOnce",), **spec: Any) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": size}}, **spec},
    }


async def phase_of(client: Client, plural: str, name: str, want: str, namespace: str | None = None) -> Obj:
    resources = client.resource("v1", plural)
    found: Obj = await until(
        lambda: resources.get(name, namespace),
        lambda o: (o.get("status") or {}).get("phase") == want,
        10,
        f"{plural}/{name} {want}",
    )
    return found


async def test_claim_binds_to_the_smallest_volume_that_fits(client: Client, binder: None) -> None:
    pvs = client.resource("v1", "persistentvolumes")
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await pvs.create(pv("small", "1Gi"))
    await pvs.create(pv("big", "10Gi"))
    await pvs.create(pv("shared", "2Gi", ("ReadWriteMany",)))
    await pvs.create(pv("classy", "2Gi", storageClassName="fast"))
    await phase_of(client, "persistentvolumes", "big", "Available")

    await pvcs.create(pvc("data", "2Gi"), "default")
    claim = await phase_of(client, "persistentvolumeclaims", "data", "Bound", "default")
    assert claim["spec"]["volumeName"] == "big"  # small is too small; shared and classy do not match
    assert claim["status"]["capacity"] == {"storage": "10Gi"}
    assert claim["status"]["accessModes"] == ["ReadWriteOnce"]
    volume = await phase_of(client, "persistentvolumes", "big", "Bound")
    assert volume["spec"]["claimRef"]["name"] == "data"
    assert volume["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]

    # a claim naming its volume gets it; a claim nothing fits stays Pending until a volume appears
    await pvcs.create(pvc("pinned", "1Gi", volumeName="classy", storageClassName="fast"), "default")
    assert (await phase_of(client, "persistentvolumeclaims", "pinned", "Bound", "default"))["spec"][
        "volumeName"
    ] == "classy"
    await pvcs.create(pvc("huge", "100Gi"), "default")
    await phase_of(client, "persistentvolumeclaims", "huge", "Pending", "default")
    await pvs.create(pv("roomy", "200Gi"))
    assert (await phase_of(client, "persistentvolumeclaims", "huge", "Bound", "default"))["spec"][
        "volumeName"
    ] == "roomy"

    # the claim goes, its volume is Released (Retain: the data stays)
    await pvcs.delete("data", "default")
    await phase_of(client, "persistentvolumes", "big", "Released")


async def test_vm_shows_error_pvc_not_found_until_the_claim_exists(client: Client, binder: None) -> None:
    async with VirtualMachineController(client):
        vms = client.resource(KV, "virtualmachines")
        volumes = [{"name": "root", "persistentVolumeClaim": {"claimName": "missing"}}]
        await vms.create(vm("needs-claim", volumes=volumes), "default")
        await vm_status(client, "needs-claim", "ErrorPvcNotFound")
        await client.resource("v1", "persistentvolumeclaims").create(pvc("missing", "1Gi"), "default")
        await vm_status(client, "needs-claim", "Starting")
