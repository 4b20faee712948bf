"""VolumeSnapshots (snapshot.storage.k8s.io/v1) against the real API server, controllers and node agent (no
guest boots): a snapshot of a claim becomes ready with its restoreSize, holds the claim's bytes of that
moment, is restored by DataVolumes (``source.snapshot``, and ``sourceRef`` to a DataSource naming it), and
its deletion frees the data (``Delete``) or keeps it (``Retain``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.api.registry import Obj
from kubevisor.apiserver.pki import issue_client_cert
from kubevisor.client import Client, Config, errors
from kubevisor.platform import Platform
from tests.integration.agent.libagent import agent_platform
from tests.integration.agent.test_clone import (
    CDI,
    MiB,
    condition,
    data_volume,
    dv_phase,
    filled_source,
    grant,
    head,
    image_of,
    sha256,
)
from tests.integration.client.libcluster import until

NODE = "snap-node"
VS = "snapshot.storage.k8s.io/v1"


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    async with agent_platform(data_dir, NODE) as p:
        yield p


def volume_snapshot(name: str, claim: str, snapshot_class: str | None = None) -> Obj:
    spec: Obj = {"source": {"persistentVolumeClaimName": claim}}
    if snapshot_class:
        spec["volumeSnapshotClassName"] = snapshot_class
    return {"apiVersion": VS, "kind": "VolumeSnapshot", "metadata": {"name": name}, "spec": spec}


async def ready(client: Client, name: str, namespace: str = "default") -> Obj:
    snapshots = client.resource(VS, "volumesnapshots")
    return await until(
        lambda: snapshots.get(name, namespace),
        lambda s: (s.get("status") or {}).get("readyToUse") is True,
        30,
        f"VolumeSnapshot {name} ready",
    )


async def gone(resource: object, name: str, namespace: str | None = None) -> None:
    async def missing() -> bool:
        try:
            await resource.get(name, namespace)  # type: ignore[attr-defined]
        except errors.NotFoundError:
            return True
        return False

    await until(missing, lambda m: m, 30, f"{name} deleted")


def restore_of(name: str) -> Obj:
    return {"snapshot": {"namespace": "default", "name": name}}


async def test_snapshot_restore_and_delete_frees_the_data(client: Client, data_dir: Path) -> None:
    source = await filled_source(client, "golden")
    taken = sha256(source)
    snapshots = client.resource(VS, "volumesnapshots")
    contents = client.resource(VS, "volumesnapshotcontents")
    classes = await client.resource(VS, "volumesnapshotclasses").list()
    assert [(c["metadata"]["name"], c["driver"], c["deletionPolicy"]) for c in classes] == [
        ("local", "kubevisor.io/local", "Delete")
    ]
    await snapshots.create(volume_snapshot("snap", "golden"), "default")
    snap = await ready(client, "snap")
    status = snap["status"]
    assert status["restoreSize"] == "16Mi"
    assert status["creationTime"]
    assert "error" not in status
    assert "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection" in snap["metadata"]["finalizers"]
    content = await contents.get(status["boundVolumeSnapshotContentName"])
    assert content["metadata"]["name"] == f"snapcontent-{snap['metadata']['uid']}"
    assert content["spec"]["driver"] == "kubevisor.io/local"
    assert content["spec"]["deletionPolicy"] == "Delete"
    assert content["spec"]["volumeSnapshotClassName"] == "local"
    assert content["spec"]["volumeSnapshotRef"]["uid"] == snap["metadata"]["uid"]
    assert content["status"]["readyToUse"] is True
    assert content["status"]["restoreSize"] == 16 * MiB
    assert isinstance(content["status"]["creationTime"], int)
    assert content["metadata"]["annotations"]["snapshot.storage.kubevisor.io/indications"] == ""  # offline
    data = data_dir / "volumesnapshots" / content["metadata"]["name"] / "disk.img"
    assert sha256(data) == taken

    with source.open("r+b") as f:  # written after the snapshot: not in it
        f.seek(MiB)
        f.write(b"changed after the snapshot")

    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(data_volume("restored", restore_of("snap"), "32Mi"), "default")
    done = await dv_phase(client, "restored", "Succeeded")
    assert condition(done, "Running")["message"] == "Clone Complete"
    target = await image_of(client, "restored")
    assert target.stat().st_size == 32 * MiB
    assert head(target, 16 * MiB) == data.read_bytes()
    events = await client.resource("v1", "events").list("default")
    assert "CloneSucceeded" in {e["reason"] for e in events if e["involvedObject"]["name"] == "restored"}

    await dvs.create(data_volume("unsized", restore_of("snap"), None), "default")
    await dv_phase(client, "unsized", "Succeeded")
    assert sha256(await image_of(client, "unsized")) == taken
    pvc = await client.resource("v1", "persistentvolumeclaims").get("unsized", "default")
    assert pvc["spec"]["resources"]["requests"]["storage"] == str(16 * MiB)

    await dvs.create(data_volume("small", restore_of("snap"), "8Mi"), "default")
    failed = await dv_phase(client, "small", "Failed")
    assert condition(failed, "Running")["reason"] == "CloneValidationFailed"
    assert "restoreSize" in condition(failed, "Running")["message"]

    await snapshots.delete("snap", "default")
    await gone(snapshots, "snap", "default")
    await gone(contents, content["metadata"]["name"])
    assert not data.parent.exists()  # the space is free again
    assert sha256(await image_of(client, "unsized")) == taken  # restored claims are independent


async def test_retain_keeps_the_data_and_errors_name_the_claim(client: Client, data_dir: Path) -> None:
    snapshots = client.resource(VS, "volumesnapshots")
    contents = client.resource(VS, "volumesnapshotcontents")
    await snapshots.create(volume_snapshot("early", "later"), "default")
    waiting = await until(
        lambda: snapshots.get("early", "default"),
        lambda s: bool(((s.get("status") or {}).get("error") or {}).get("message")),
        15,
        "snapshot of a missing claim",
    )
    assert waiting["status"]["readyToUse"] is False
    assert "PersistentVolumeClaim default/later does not exist" in waiting["status"]["error"]["message"]
    await filled_source(client, "later")
    await ready(client, "early")

    await client.resource(VS, "volumesnapshotclasses").create(
        {"metadata": {"name": "keep"}, "driver": "kubevisor.io/local", "deletionPolicy": "Retain"}
    )
    await snapshots.create(volume_snapshot("kept", "later", "keep"), "default")
    kept = await ready(client, "kept")
    name = kept["status"]["boundVolumeSnapshotContentName"]
    await snapshots.delete("kept", "default")
    await gone(snapshots, "kept", "default")
    content = await contents.get(name)
    assert content["spec"]["deletionPolicy"] == "Retain"
    assert (data_dir / "volumesnapshots" / name / "disk.img").exists()
    # the retained content, pre-provisioned to a new snapshot (its volumeSnapshotRef pointed at it)
    await contents.patch(name, {"spec": {"volumeSnapshotRef": {"name": "again", "uid": None}}})
    again = {"metadata": {"name": "again"}, "spec": {"source": {"volumeSnapshotContentName": name}}}
    await snapshots.create(again, "default")
    bound = await ready(client, "again")
    assert bound["status"]["boundVolumeSnapshotContentName"] == name
    assert bound["status"]["restoreSize"] == "16Mi"
    await snapshots.delete("again", "default")
    await gone(snapshots, "again", "default")
    await contents.delete(name)  # deleting the retained content frees the data
    await gone(contents, name)
    assert not (data_dir / "volumesnapshots" / name).exists()

    await snapshots.create(volume_snapshot("wrong", "later", "no-such-class"), "default")
    wrong = await until(
        lambda: snapshots.get("wrong", "default"),
        lambda s: bool(((s.get("status") or {}).get("error") or {}).get("message")),
        15,
        "snapshot with a missing class",
    )
    assert "VolumeSnapshotClass no-such-class does not exist" in wrong["status"]["error"]["message"]


async def test_data_source_naming_a_snapshot_and_a_data_volume_through_it(client: Client) -> None:
    source = await filled_source(client, "image")
    data_sources = client.resource(CDI, "datasources")
    await data_sources.create(
        {
            "metadata": {"name": "golden"},
            "spec": {"source": {"snapshot": {"namespace": "default", "name": "image-snap"}}},
        },
        "default",
    )
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(
        {
            "apiVersion": CDI,
            "kind": "DataVolume",
            "metadata": {"name": "from-ref"},
            "spec": {
                "sourceRef": {"kind": "DataSource", "name": "golden"},
                "storage": {"resources": {"requests": {"storage": "16Mi"}}},
            },
        },
        "default",
    )
    waiting = await until(
        lambda: dvs.get("from-ref", "default"),
        lambda d: (
            (d.get("status") or {}).get("phase") == "Pending"
            and condition(d, "Running").get("reason") == "CloneWithoutSource"
        ),
        15,
        "DataVolume waiting for the snapshot",
    )
    assert "image-snap" in condition(waiting, "Running")["message"]
    await client.resource(VS, "volumesnapshots").create(volume_snapshot("image-snap", "image"), "default")
    await ready(client, "image-snap")
    ds = await until(
        lambda: data_sources.get("golden", "default"),
        lambda d: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (d.get("status") or {}).get("conditions") or []
        ),
        15,
        "DataSource Ready",
    )
    assert ds["status"]["source"] == {"snapshot": {"namespace": "default", "name": "image-snap"}}
    await dv_phase(client, "from-ref", "Succeeded")
    assert sha256(await image_of(client, "from-ref")) == sha256(source)


async def test_cross_namespace_restore_needs_datavolumes_source(client: Client, plat: Platform) -> None:
    assert plat.pki is not None
    source = await filled_source(client, "shared")
    await client.resource(VS, "volumesnapshots").create(volume_snapshot("shared-snap", "shared"), "default")
    await ready(client, "shared-snap")
    await client.resource("v1", "namespaces").create({"metadata": {"name": "team"}})
    rules = [{"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes"], "verbs": ["create", "get"]}]
    await grant(client, "team", "carol", "dv-maker", rules)
    cert, key = issue_client_cert(plat.pki, "carol", ["developers"])
    config = Config(server=plat.url, ca_data=plat.pki.ca_pem(), client_cert_data=cert, client_key_data=key)
    async with Client(config) as carol:
        dvs = carol.resource(CDI, "datavolumes")
        body = data_volume("mine", restore_of("shared-snap"), namespace="team")
        with pytest.raises(errors.ForbiddenError, match=r"spec\.source\.snapshot\.namespace"):
            await dvs.create(body, "team")
        source_rule = {
            "apiGroups": ["cdi.kubevirt.io"],
            "resources": ["datavolumes/source"],
            "verbs": ["create"],
        }
        await grant(client, "default", "carol", "clone-source", [source_rule])
        await dvs.create(body, "team")
    await dv_phase(client, "mine", "Succeeded", "team")
    assert sha256(await image_of(client, "mine", "team")) == sha256(source)


async def test_an_nfs_claim_is_refused_with_a_clear_error(client: Client) -> None:
    nfs = {"server": "127.0.0.1", "path": "/exports/never-contacted"}
    await client.resource("v1", "persistentvolumes").create(
        {
            "metadata": {"name": "pv-remote"},
            "spec": {
                "capacity": {"storage": "16Mi"},
                "accessModes": ["ReadWriteMany"],
                "nfs": nfs,
                "storageClassName": "",
            },
        }
    )
    pvcs = client.resource("v1", "persistentvolumeclaims")
    claim = {
        "metadata": {"name": "remote"},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": "pv-remote",
            "resources": {"requests": {"storage": "16Mi"}},
        },
    }
    await pvcs.create(claim, "default")
    await until(
        lambda: pvcs.get("remote", "default"),
        lambda c: c.get("status", {}).get("phase") == "Bound",
        10,
        "bound",
    )
    snapshots = client.resource(VS, "volumesnapshots")
    await snapshots.create(volume_snapshot("remote-snap", "remote"), "default")
    refused = await until(
        lambda: snapshots.get("remote-snap", "default"),
        lambda s: "NFS" in str(((s.get("status") or {}).get("error") or {}).get("message")),
        15,
        "NFS snapshot refused",
    )
    assert refused["status"]["readyToUse"] is False
    assert "only local volumes" in refused["status"]["error"]["message"]
    assert len(await client.resource(VS, "volumesnapshotcontents").list()) == 0
