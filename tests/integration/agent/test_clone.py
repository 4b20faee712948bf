"""DataVolume clones (``spec.source.pvc``) against the real API server, controllers and node agent (no guest
boots; a VM booting from a clone: tests/e2e/test_datavolume_clone.py): phases, the copy, growing to the
requested size, a missing source, a source larger than the target, a source in use, sizes taken from the
source, and the cross-namespace permission (``create`` on ``datavolumes/source``)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.api.registry import Obj
from kubevisor.apiserver.pki import issue_client_cert
from kubevisor.client import Client, Config, errors
from kubevisor.platform import Platform
from tests.e2e import libvmi
from tests.integration.agent.libagent import agent_platform
from tests.integration.client.libcluster import until

NODE = "clone-node"
CDI = "cdi.kubevirt.io/v1beta1"
MiB = 1024 * 1024


@pytest.fixture
async def plat(data_dir: Path) -> AsyncIterator[Platform]:
    async with agent_platform(data_dir, NODE) as p:
        yield p


def data_volume(name: str, source: Obj, size: str | None = "16Mi", namespace: str = "default") -> Obj:
    storage: Obj = {"resources": {"requests": {"storage": size}}} if size else {}
    return {
        "apiVersion": CDI,
        "kind": "DataVolume",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": source, "storage": storage},
    }


def clone_of(name: str, namespace: str = "default") -> Obj:
    return {"pvc": {"namespace": namespace, "name": name}}


async def dv_phase(client: Client, name: str, phase: str, namespace: str = "default") -> Obj:
    dvs = client.resource(CDI, "datavolumes")
    return await until(
        lambda: dvs.get(name, namespace),
        lambda d: d.get("status", {}).get("phase") == phase,
        30,
        f"DataVolume {name} {phase}",
    )


def condition(obj: Obj, kind: str) -> Obj:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


async def image_of(client: Client, claim: str, namespace: str = "default") -> Path:
    pvc = await client.resource("v1", "persistentvolumeclaims").get(claim, namespace)
    pv = await client.resource("v1", "persistentvolumes").get(pvc["spec"]["volumeName"])
    return Path(pv["spec"]["hostPath"]["path"]) / "disk.img"


async def filled_source(client: Client, name: str, size: str = "16Mi", namespace: str = "default") -> Path:
    """A blank DataVolume, then data written into its image (1 MiB pattern at 4 MiB, a marker at 1 MiB)."""
    await client.resource(CDI, "datavolumes").create(
        data_volume(name, {"blank": {}}, size, namespace), namespace
    )
    await dv_phase(client, name, "Succeeded", namespace)
    image = await image_of(client, name, namespace)
    with image.open("r+b") as f:
        f.seek(MiB)
        f.write(f"source {name}".encode())
        f.seek(4 * MiB)
        f.write(bytes(i % 251 for i in range(MiB)))
    return image


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def head(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


async def test_clone_copies_grows_and_is_independent(client: Client) -> None:
    source = await filled_source(client, "golden")
    before = sha256(source)
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(data_volume("copy", clone_of("golden"), "32Mi"), "default")
    done = await dv_phase(client, "copy", "Succeeded")
    assert done["status"]["progress"] == "100.0%"
    assert condition(done, "Ready")["status"] == "True"
    assert condition(done, "Running")["message"] == "Clone Complete"
    target = await image_of(client, "copy")
    assert target.stat().st_size == 32 * MiB  # grown to the requested size
    assert head(target, 16 * MiB) == head(source, 16 * MiB)
    assert target.stat().st_blocks * 512 < 8 * MiB  # sparse (or shared blocks)
    pvc = await client.resource("v1", "persistentvolumeclaims").get("copy", "default")
    assert pvc["metadata"]["annotations"]["k8s.io/CloneRequest"] == "default/golden"
    with target.open("r+b") as f:
        f.seek(MiB)
        f.write(b"changed in the clone")
    assert sha256(source) == before  # the clone is independent
    events = await client.resource("v1", "events").list("default")
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "copy"}
    assert "CloneSucceeded" in reasons


async def test_missing_source_waits_then_clones(client: Client) -> None:
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(data_volume("early", clone_of("late")), "default")
    waiting = await until(
        lambda: dvs.get("early", "default"),
        lambda d: any(
            c.get("reason") == "CloneWithoutSource" for c in (d.get("status") or {}).get("conditions") or []
        ),
        15,
        "clone waiting for its source",
    )
    assert waiting["status"]["phase"] == "Pending"
    bound = condition(waiting, "Bound")
    assert bound["status"] == "Unknown"
    assert bound["message"] == "The source pvc late doesn't exist"
    with pytest.raises(errors.NotFoundError):
        await client.resource("v1", "persistentvolumeclaims").get("early", "default")
    source = await filled_source(client, "late")
    await dv_phase(client, "early", "Succeeded")
    assert head(await image_of(client, "early"), 16 * MiB) == head(source, 16 * MiB)


async def test_source_larger_than_target_fails(client: Client) -> None:
    await filled_source(client, "large", "32Mi")
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(data_volume("small", clone_of("large"), "16Mi"), "default")
    failed = await dv_phase(client, "small", "Failed")
    running = condition(failed, "Running")
    assert running["reason"] == "CloneValidationFailed"
    assert "target resources requests storage size is smaller than the source" in running["message"]


async def test_size_is_taken_from_the_source(client: Client) -> None:
    source = await filled_source(client, "sized", "24Mi")
    await client.resource(CDI, "datavolumes").create(
        data_volume("unsized", clone_of("sized"), None), "default"
    )
    await dv_phase(client, "unsized", "Succeeded")
    pvc = await client.resource("v1", "persistentvolumeclaims").get("unsized", "default")
    assert pvc["spec"]["resources"]["requests"]["storage"] == str(24 * MiB)
    assert sha256(await image_of(client, "unsized")) == sha256(source)


async def test_clone_waits_while_the_source_is_in_use(client: Client) -> None:
    source = await filled_source(client, "busy")
    vmis = client.resource(libvmi.KV, "virtualmachineinstances")
    user: Obj = {  # never scheduled (no node matches), but not finished: it uses the claim
        "apiVersion": libvmi.KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "user"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "no-such-node"},
            "domain": {
                "devices": {"disks": [{"name": "data", "disk": {"bus": "virtio"}}]},
                "memory": {"guest": "64Mi"},
            },
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "busy"}}],
        },
    }
    await vmis.create(user, "default")
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(data_volume("patient", clone_of("busy")), "default")
    waiting = await until(
        lambda: dvs.get("patient", "default"),
        lambda d: any(
            c.get("reason") == "CloneSourceInUse" for c in (d.get("status") or {}).get("conditions") or []
        ),
        15,
        "clone waiting for the source's VMI",
    )
    assert waiting["status"]["phase"] == "CloneScheduled"
    assert "default/user" in condition(waiting, "Running")["message"]
    pvc = await client.resource("v1", "persistentvolumeclaims").get("patient", "default")
    assert "kubevisor.io/import-node" not in (pvc["metadata"].get("labels") or {})  # not handed to the node
    await vmis.delete("user", "default")
    await dv_phase(client, "patient", "Succeeded")
    assert sha256(await image_of(client, "patient")) == sha256(source)


RBAC = "rbac.authorization.k8s.io/v1"


async def grant(client: Client, namespace: str, user: str, name: str, rules: list[Obj]) -> None:
    await client.resource(RBAC, "roles").create({"metadata": {"name": name}, "rules": rules}, namespace)
    await client.resource(RBAC, "rolebindings").create(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
        },
        namespace,
    )


async def test_cross_namespace_clone_needs_datavolumes_source(client: Client, plat: Platform) -> None:
    assert plat.pki is not None
    source = await filled_source(client, "shared")
    await client.resource("v1", "namespaces").create({"metadata": {"name": "team"}})
    await grant(
        client,
        "team",
        "carol",
        "dv-maker",
        [
            {"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes"], "verbs": ["create", "get"]},
            {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"], "verbs": ["create"]},
        ],
    )
    cert, key = issue_client_cert(plat.pki, "carol", ["developers"])
    config = Config(server=plat.url, ca_data=plat.pki.ca_pem(), client_cert_data=cert, client_key_data=key)
    golden = {"metadata": {"name": "golden"}, "spec": {"source": {"pvc": clone_of("shared")["pvc"]}}}
    await client.resource(CDI, "datasources").create(golden, "default")
    by_ref = data_volume("by-ref", {}, namespace="team")
    by_ref["spec"] = {"sourceRef": {"kind": "DataSource", "namespace": "default", "name": "golden"}} | {
        "storage": by_ref["spec"]["storage"]
    }
    async with Client(config) as carol:
        dvs = carol.resource(CDI, "datavolumes")
        with pytest.raises(errors.ForbiddenError, match="insufficient permissions in clone source namespace"):
            await dvs.create(data_volume("mine", clone_of("shared"), namespace="team"), "team")
        with pytest.raises(errors.ForbiddenError, match=r"spec\.sourceRef\.namespace"):  # no way around it
            await dvs.create(by_ref, "team")
        vm = libvmi.vm_manifest("cloner")
        vm["metadata"]["namespace"] = "team"
        vm["spec"]["dataVolumeTemplates"] = [data_volume("cloner-root", clone_of("shared"))]
        del vm["spec"]["dataVolumeTemplates"][0]["metadata"]["namespace"]
        vm["spec"]["template"]["spec"]["volumes"][0] = {
            "name": "rootdisk",
            "dataVolume": {"name": "cloner-root"},
        }
        with pytest.raises(errors.ForbiddenError, match=r"dataVolumeTemplates\[0\]"):
            await carol.resource(libvmi.KV, "virtualmachines").create(vm, "team")
        await grant(
            client,
            "default",
            "carol",
            "clone-source",
            [{"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes/source"], "verbs": ["create"]}],
        )
        await dvs.create(data_volume("mine", clone_of("shared"), namespace="team"), "team")
        await dvs.create(by_ref, "team")  # a DataSource of the namespace it may clone from
    await dv_phase(client, "mine", "Succeeded", "team")
    assert sha256(await image_of(client, "mine", "team")) == sha256(source)
    await dv_phase(client, "by-ref", "Succeeded", "team")
    assert sha256(await image_of(client, "by-ref", "team")) == sha256(source)


async def hand_made_claim(client: Client, data_dir: Path, name: str, image: Path, **pv: Obj) -> None:
    """A PersistentVolume ``pv-<name>`` (hostPath under the node's volume directory, holding ``image``) and
    the claim ``name`` bound to it; ``pv`` adds fields to the volume's spec or ``metadata``."""
    directory = data_dir / "volumes" / f"pv-{name}"
    directory.mkdir(parents=True)
    shutil.copyfile(image, directory / "disk.img")
    metadata = {"name": f"pv-{name}", **(pv.pop("metadata", {}))}
    spec = {
        "capacity": {"storage": "16Mi"},
        "accessModes": ["ReadWriteOnce"],
        "hostPath": {"path": str(directory)},
        "storageClassName": "",
        **pv,
    }
    await client.resource("v1", "persistentvolumes").create({"metadata": metadata, "spec": spec})
    claim = {
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": f"pv-{name}",
            "resources": {"requests": {"storage": "16Mi"}},
        },
    }
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await pvcs.create(claim, "default")
    await until(
        lambda: pvcs.get(name, "default"), lambda c: c.get("status", {}).get("phase") == "Bound", 10, name
    )


def raw_image(path: Path) -> Path:
    with path.open("wb") as f:
        f.truncate(16 * MiB)
        f.seek(3 * MiB)
        f.write(b"qcow2-source" * 5000)
    return path


async def test_a_qcow2_source_is_converted_to_raw(client: Client, data_dir: Path, tmp_path: Path) -> None:
    raw = raw_image(tmp_path / "src.raw")
    qcow2 = tmp_path / "src.qcow2"
    await asyncio.to_thread(
        subprocess.run, ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    annotations = {"annotations": {"kubevisor.io/disk-format": "qcow2"}}
    await hand_made_claim(client, data_dir, "q-src", qcow2, metadata=annotations)
    await client.resource(CDI, "datavolumes").create(data_volume("q-copy", clone_of("q-src")), "default")
    await dv_phase(client, "q-copy", "Succeeded")
    assert sha256(await image_of(client, "q-copy")) == sha256(raw)  # raw, the same disk


async def test_a_source_on_another_node_fails_the_clone(
    client: Client, data_dir: Path, tmp_path: Path
) -> None:
    affinity = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["other-node"]}
    ]}]}}  # fmt: skip
    await hand_made_claim(client, data_dir, "far", raw_image(tmp_path / "far.raw"), nodeAffinity=affinity)
    await client.resource(CDI, "datavolumes").create(data_volume("near", clone_of("far")), "default")
    failed = await dv_phase(client, "near", "Failed")
    running = condition(failed, "Running")
    assert running["reason"] == "CloneAcrossNodes"
    assert "node other-node" in running["message"] and f"node {NODE}" in running["message"]
