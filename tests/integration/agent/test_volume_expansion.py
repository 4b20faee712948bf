"""Growing a claim against the real API server, controllers and node agent (no guest boots): what the
apiserver refuses (shrinking, a class without allowVolumeExpansion, an unbound claim), and the node
growing the volume's image, the volume's capacity and the claim's status. (A running guest seeing its disk
grow: tests/e2e/test_volume_expansion.py.)"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.api.registry import Obj
from kubevisor.client import Client, errors
from kubevisor.platform import Platform
from tests.integration.agent.libagent import agent_platform
from tests.integration.agent.test_storage import MiB, bound, claim, provisioned, storage_class
from tests.integration.client.libcluster import until

NODE = "expansion-node"


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    async with agent_platform(data_dir, NODE) as p:
        yield p


def expandable(name: str, *, allow: bool | None = True) -> Obj:
    sc = storage_class(name)
    if allow is not None:
        sc["allowVolumeExpansion"] = allow
    return sc


async def events_of(client: Client, name: str) -> list[Obj]:
    listed = await client.resource("v1", "events").list("default")
    return [e for e in listed.items if e["involvedObject"].get("name") == name]


def size(path: Path) -> int:
    return path.stat().st_size


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(path: Path, offset: int, count: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(count)


def qemu_img(*args: str) -> bytes:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True).stdout


async def test_validation_of_claim_growth(client: Client) -> None:
    classes = client.resource("storage.k8s.io/v1", "storageclasses")
    await classes.create(expandable("grow"))
    await classes.create(expandable("fixed", allow=None))
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await pvcs.create(claim("a", "grow"))
    await pvcs.create(claim("b", "fixed"))
    await bound(client, "a")
    await bound(client, "b")

    with pytest.raises(errors.InvalidError) as invalid:
        await pvcs.patch("a", {"spec": {"resources": {"requests": {"storage": "8Mi"}}}}, "default")
    assert (
        "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
        in invalid.value.message
    )
    with pytest.raises(errors.ForbiddenError) as forbidden:
        await pvcs.patch("b", {"spec": {"resources": {"requests": {"storage": "32Mi"}}}}, "default")
    assert forbidden.value.message == (
        'persistentvolumeclaims "b" is forbidden: only dynamically provisioned pvc can be resized and the '
        "storageclass that provisions the pvc must support resize"
    )
    # a claim not bound yet keeps its size (a WaitForFirstConsumer claim nothing consumes)
    await classes.create(dict(expandable("later"), volumeBindingMode="WaitForFirstConsumer"))
    await pvcs.create(claim("c", "later"))
    with pytest.raises(errors.InvalidError, match="spec is immutable after creation"):
        await pvcs.patch("c", {"spec": {"resources": {"requests": {"storage": "32Mi"}}}}, "default")
    # the same size, labels: fine
    await pvcs.patch("b", {"metadata": {"labels": {"x": "y"}}}, "default")


async def test_the_node_grows_the_volume(client: Client, data_dir: Path) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(expandable("grow"))
    pvcs = client.resource("v1", "persistentvolumeclaims")
    pvs = client.resource("v1", "persistentvolumes")
    name, image = await provisioned(client, data_dir, claim("data", "grow"))
    write_at(image, MiB, b"kept")  # data the growth must keep

    await pvcs.patch("data", {"spec": {"resources": {"requests": {"storage": "48Mi"}}}}, "default")
    grown = await until(
        lambda: pvcs.get("data", "default"),
        lambda c: (c.get("status") or {}).get("capacity", {}).get("storage") == "48Mi",
        10,
        "the claim's status.capacity",
    )
    assert not [c for c in grown["status"].get("conditions") or [] if c.get("type") == "Resizing"]
    assert (await pvs.get(name))["spec"]["capacity"]["storage"] == "48Mi"
    assert size(image) == 48 * MiB
    assert read_at(image, MiB, 4) == b"kept"
    reasons = [
        e["reason"]
        for e in await until(
            lambda: events_of(client, "data"),
            lambda es: any(e["reason"] == "VolumeResizeSuccessful" for e in es),
            10,
            "VolumeResizeSuccessful",
        )
    ]
    assert "Resizing" in reasons

    # more than the node has: refused with an Event, nothing changes
    await pvcs.patch("data", {"spec": {"resources": {"requests": {"storage": "1Pi"}}}}, "default")
    failed = await until(
        lambda: events_of(client, "data"),
        lambda es: any(e["reason"] == "VolumeResizeFailed" for e in es),
        10,
        "VolumeResizeFailed",
    )
    assert "does not fit on node" in next(e for e in failed if e["reason"] == "VolumeResizeFailed")["message"]
    assert (await pvs.get(name))["spec"]["capacity"]["storage"] == "48Mi"
    assert size(image) == 48 * MiB


async def test_a_qcow2_volume_grows_with_qemu_img(client: Client, data_dir: Path) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(expandable("grow"))
    pvcs = client.resource("v1", "persistentvolumeclaims")
    pvs = client.resource("v1", "persistentvolumes")
    name, image = await provisioned(client, data_dir, claim("q", "grow"))
    image.unlink()  # an administrator's qcow2 image in its place
    qemu_img("create", "-q", "-f", "qcow2", str(image), str(16 * MiB))
    await pvs.patch(name, {"metadata": {"annotations": {"kubevisor.io/disk-format": "qcow2"}}})
    await pvcs.patch("q", {"spec": {"resources": {"requests": {"storage": "64Mi"}}}}, "default")
    await until(
        lambda: pvcs.get("q", "default"),
        lambda c: (c.get("status") or {}).get("capacity", {}).get("storage") == "64Mi",
        10,
        "the claim's status.capacity",
    )
    assert b'"virtual-size": 67108864' in qemu_img("info", "--output=json", "-f", "qcow2", str(image))


async def test_block_claims_get_block_volumes_that_grow(client: Client, data_dir: Path) -> None:
    await client.resource("storage.k8s.io/v1", "storageclasses").create(expandable("grow"))
    pvcs = client.resource("v1", "persistentvolumeclaims")
    pvs = client.resource("v1", "persistentvolumes")
    body = claim("raw", "grow")
    body["spec"]["volumeMode"] = "Block"
    name, image = await provisioned(client, data_dir, body)
    assert (await pvs.get(name))["spec"]["volumeMode"] == "Block"
    assert size(image) == 16 * MiB  # a raw image, like a Filesystem volume's
    await pvcs.patch("raw", {"spec": {"resources": {"requests": {"storage": "32Mi"}}}}, "default")
    await until(
        lambda: pvcs.get("raw", "default"),
        lambda c: (c.get("status") or {}).get("capacity", {}).get("storage") == "32Mi",
        10,
        "the claim's status.capacity",
    )
    assert size(image) == 32 * MiB
