"""The KubeVirt and CDI kinds on the real API server: the compatibility manifests are accepted unchanged,
defaults are KubeVirt's, bad manifests answer 422 with KubeVirt's field paths, and tables show KubeVirt's
columns."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubevisor.api.registry import default_registry
from tests.libcompat import collection_path, documents, is_subset, manifest_files

MERGE = "application/merge-patch+json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines"
VMIS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances"
DVS = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes"

Obj = dict[str, Any]


def compat(name: str) -> Obj:
    """The (single) document of a compatibility manifest, e.g. ``vm-cirros``."""
    [path] = [p for p in manifest_files() if p.stem.endswith(f"__{name}")]
    [doc] = documents(path)
    return doc


def _collection(doc: Obj, namespace: str = "default") -> str:
    kind = default_registry().by_kind(doc["apiVersion"], doc["kind"])
    assert kind is not None, f"{doc['apiVersion']} {doc['kind']} is not served"
    ns = (doc.get("metadata") or {}).get("namespace", namespace) if kind.namespaced else None
    return collection_path(doc["apiVersion"], kind.plural, ns)


@pytest.fixture(scope="module")
def compat_files() -> list[Path]:
    files = manifest_files()
    if not files:
        pytest.skip("the compatibility manifests (../shared/compat/kubevirt-examples) are not here")
    return files


async def test_every_compat_manifest_is_accepted_unchanged(
    http: httpx.AsyncClient, compat_files: list[Path]
) -> None:
    assert len(compat_files) == 15
    sent: list[tuple[str, Obj]] = []
    for path in compat_files:
        for doc in documents(path):
            namespace = (doc.get("metadata") or {}).get("namespace")
            if namespace:
                r = await http.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
                assert r.status_code in (201, 409), r.text
            sent.append((path.name, doc))
    for name, doc in sent:
        url = _collection(doc)
        r = await http.post(url, json=doc)
        assert r.status_code == 201, f"{name}: {r.text}"
        created = r.json()
        # Everything the manifest says is stored as said; the server only adds (defaults, metadata).
        assert is_subset({k: v for k, v in doc.items() if k != "status"}, created), name
        got = (await http.get(f"{url}/{doc['metadata']['name']}")).json()
        assert got == created, name


async def test_vmi_gets_kubevirt_defaults_and_pending_phase(http: httpx.AsyncClient) -> None:
    vmi = compat("vmi-pvc")  # no interfaces, no networks, no machine, no cpu
    vmi["spec"]["domain"]["devices"]["disks"].append({"name": "scratch", "cdrom": {}})
    vmi["spec"]["volumes"].append({"name": "scratch", "emptyDisk": {"capacity": "1Gi"}})
    vmi["spec"]["volumes"].append({"name": "extra", "containerDisk": {"image": "quay.io/x/y"}})
    r = await http.post(VMIS, json=vmi)
    assert r.status_code == 201, r.text
    created = r.json()
    spec = created["spec"]
    assert spec["architecture"] == "amd64"
    assert spec["domain"]["machine"] == {"type": "q35"}
    assert spec["domain"]["cpu"] == {"sockets": 1, "cores": 1, "threads": 1, "model": "host-model"}
    assert spec["domain"]["resources"]["requests"] == {"memory": "128Mi"}
    assert spec["domain"]["devices"]["interfaces"] == [{"name": "default", "bridge": {}}]
    assert spec["networks"] == [{"name": "default", "pod": {}}]
    disks = spec["domain"]["devices"]["disks"]
    assert disks[0] == {"name": "pvcdisk", "disk": {"bus": "virtio"}}
    assert disks[1] == {"name": "scratch", "cdrom": {"bus": "sata", "readonly": True, "tray": "closed"}}
    assert disks[2] == {"name": "extra", "disk": {"bus": "sata"}}  # a disk for the volume without one
    assert spec["volumes"][2]["containerDisk"]["imagePullPolicy"] == "Always"  # no tag
    assert spec["domain"]["firmware"]["uuid"]
    status = created["status"]
    assert status["phase"] == "Pending"
    assert status["phaseTransitionTimestamps"][0]["phase"] == "Pending"
    assert status["memory"]["guestAtBoot"] == "128Mi"

    # Defaulting is idempotent: writes that do not touch the spec leave it as it is.
    r = await http.patch(
        f"{VMIS}/vmi-pvc", json={"metadata": {"labels": {"x": "y"}}}, headers={"content-type": MERGE}
    )
    assert r.status_code == 200, r.text
    assert r.json()["spec"] == spec
    put = r.json()
    r = await http.put(f"{VMIS}/vmi-pvc", json=put)
    assert r.status_code == 200, r.text
    assert r.json()["spec"] == spec and r.json()["status"]["phase"] == "Pending"


async def test_vm_gets_only_the_vm_mutator_defaults(http: httpx.AsyncClient) -> None:
    vm = compat("vm-cirros-csmall")
    r = await http.post(VMS, json=vm)
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["instancetype"] == {"kind": "VirtualMachineInstancetype", "name": "csmall"}
    template = spec["template"]["spec"]
    assert template["architecture"] == "amd64" and template["domain"]["machine"] == {"type": "q35"}
    # The rest is defaulted on the VMI, after the preference applies (disk: {} keeps no bus here).
    assert template["domain"]["devices"]["disks"][0] == {"disk": {}, "name": "containerdisk"}
    assert "interfaces" not in template["domain"]["devices"] and "status" not in r.json()

    cluster = copy.deepcopy(compat("vm-cirros"))
    cluster["metadata"]["name"] = "vm-cluster-type"
    cluster["spec"]["instancetype"] = {"name": "u1.small"}
    del cluster["spec"]["template"]["spec"]["domain"]["memory"]  # the instancetype gives memory
    r = await http.post(VMS, json=cluster)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["instancetype"]["kind"] == "virtualmachineclusterinstancetype"


def _vm() -> Obj:
    return copy.deepcopy(compat("vm-cirros"))


def _vmi() -> Obj:
    return copy.deepcopy(compat("vmi-multus-multiple-net"))


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        *parents, last = path.split(".")
        target: Any = obj
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()
T = "spec.template.spec"


@dataclass(frozen=True)
class Bad:
    """A compatibility manifest broken one way, and the cause the server must answer with."""

    what: str
    make: Callable[[], Obj]
    change: Callable[[Obj], None]
    field: str
    message: str


BAD: list[Bad] = [
    Bad(
        "disk naming no volume",
        _vm,
        _set(f"{T}.domain.devices.disks.0.name", "nosuchvolume"),
        f"{T}.domain.devices.disks[0].name",
        "must reference a volume",
    ),
    Bad(
        "unknown disk bus",
        _vm,
        _set(f"{T}.domain.devices.disks.1.disk.bus", "ide2"),
        f"{T}.domain.devices.disks[1].disk.bus",
        "unrecognized bus ide2",
    ),
    Bad(
        "duplicate disk names",
        _vmi,
        _set("spec.domain.devices.disks.1.name", "containerdisk"),
        "spec.domain.devices.disks[1].name",
        "must not have the same Name",
    ),
    Bad(
        "duplicate volume names",
        _vmi,
        _set("spec.volumes.1.name", "containerdisk"),
        "spec.volumes[1].name",
        "must not have the same Name",
    ),
    Bad(
        "interface naming no network",
        _vmi,
        _set("spec.networks", [{"name": "default", "pod": {}}]),
        "spec.domain.devices.interfaces[1].name",
        "'ptp' not found",
    ),
    Bad(
        "duplicate network names",
        _vmi,
        _set("spec.networks.1.name", "default"),
        "spec.networks[1].name",
        "already exists",
    ),
    Bad(
        "duplicate interface names",
        _vmi,
        _set("spec.domain.devices.interfaces.0.name", "ptp"),
        "spec.domain.devices.interfaces[1].name",
        "Only one interface can be connected to one specific network",
    ),
    Bad(
        "VMI without memory",
        _vmi,
        _set("spec.domain.memory", _DELETE),
        "spec.domain.memory.guest",
        "no memory requested",
    ),
    Bad(
        "VM template without memory",
        _vm,
        _set(f"{T}.domain.memory", _DELETE),
        f"{T}.domain.memory.guest",
        "no memory requested",
    ),
    Bad(
        "running and runStrategy",
        _vm,
        _set("spec.running", True),
        "spec.running",
        "Running and RunStrategy are mutually exclusive",
    ),
    Bad(
        "unknown runStrategy",
        _vm,
        _set("spec.runStrategy", "Sometimes"),
        "spec.runStrategy",
        "Invalid RunStrategy",
    ),
    Bad(
        "neither running nor runStrategy",
        _vm,
        _set("spec.runStrategy", _DELETE),
        "spec.running",
        "One of Running or RunStrategy must be specified",
    ),
    Bad(
        "masquerade off the pod network",
        _vmi,
        _set("spec.domain.devices.interfaces.1", {"name": "ptp", "masquerade": {}}),
        "spec.domain.devices.interfaces[1].name",
        "Masquerade interface only implemented with pod network",
    ),
    Bad(
        "volume with two sources",
        _vmi,
        _set("spec.volumes.0.emptyDisk", {"capacity": "1Gi"}),
        "spec.volumes[0]",
        "must have exactly one source type set",
    ),
    Bad(
        "unreferenced dataVolumeTemplate",
        lambda: copy.deepcopy(compat("vm-alpine-datavolume")),
        _set(f"{T}.volumes.0.dataVolume.name", "other-dv"),
        "spec.dataVolumeTemplates[0]",
        "must be referenced in the VMI template's 'volumes' list",
    ),
    Bad(
        "quantity that is not one",
        _vmi,
        _set("spec.domain.memory.guest", "lots"),
        "spec.domain.memory.guest",
        "quantities must match",
    ),
    Bad(
        "snapshot of something not a VM",
        lambda: copy.deepcopy(compat("vmsnapshot-snap-larry")),
        _set("spec.source.kind", "Pod"),
        "spec.source.kind",
        "invalid kind",
    ),
    Bad(
        "DataVolume with no source",
        lambda: copy.deepcopy(compat("import-kubevirt-datavolume")),
        _set("spec.source", _DELETE),
        "spec.source",
        "either Source or SourceRef",
    ),
    Bad(
        "pool selector not matching its template",
        lambda: copy.deepcopy(compat("vm-pool-cirros")),
        _set("spec.selector.matchLabels", {"kubevirt.io/vmpool": "other"}),
        "spec.selector",
        "selector does not match labels",
    ),
    Bad(
        "pool VM template disk naming no volume",
        lambda: copy.deepcopy(compat("vm-pool-cirros")),
        _set("spec.virtualMachineTemplate.spec.template.spec.domain.devices.disks.0.name", "gone"),
        "spec.virtualMachineTemplate.spec.template.spec.domain.devices.disks[0].name",
        "not found",
    ),
    Bad(
        "migration naming no VMI",
        lambda: copy.deepcopy(compat("migration-job")),
        _set("spec.vmiName", ""),
        "spec.vmiName",
        "vmiName is missing",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[b.what for b in BAD])
async def test_bad_manifests_are_422_with_kubevirt_field_paths(
    http: httpx.AsyncClient, compat_files: list[Path], case: Bad
) -> None:
    what, field, message = case.what, case.field, case.message
    doc = case.make()
    case.change(doc)
    kind = default_registry().by_kind(doc["apiVersion"], doc["kind"])
    assert kind is not None
    r = await http.post(_collection(doc), json=doc)
    assert r.status_code == 422, f"{what}: {r.status_code} {r.text}"
    body = r.json()
    assert body["reason"] == "Invalid" and body["details"]["kind"] == kind.plural
    messages = [c["message"] for c in body["details"]["causes"] if c["field"] == field]
    assert any(message in m for m in messages), f"{what}: {field} not among {body['details']['causes']}"
    assert field in body["message"]


async def test_unknown_fields_are_refused_strictly(http: httpx.AsyncClient, compat_files: list[Path]) -> None:
    vm = _vm()
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["buss"] = "virtio"
    r = await http.post(f"{VMS}?fieldValidation=Strict", json=vm)
    assert r.status_code == 400
    assert 'unknown field "spec.template.spec.domain.devices.disks[0].disk.buss"' in r.json()["message"]


async def test_tables_show_kubevirt_columns(http: httpx.AsyncClient, compat_files: list[Path]) -> None:
    assert (await http.post(VMS, json=_vm())).status_code == 201
    r = await http.patch(
        f"{VMS}/vm-cirros/status",
        json={"status": {"printableStatus": "Stopped", "conditions": [{"type": "Ready", "status": "False"}]}},
        headers={"content-type": MERGE},
    )
    assert r.status_code == 200, r.text
    table = (await http.get(VMS, headers={"accept": TABLE})).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age", "Status", "Ready"]
    assert table["rows"][0]["cells"][0] == "vm-cirros" and table["rows"][0]["cells"][2:] == [
        "Stopped",
        "False",
    ]

    assert (await http.post(VMIS, json=_vmi())).status_code == 201
    r = await http.patch(
        f"{VMIS}/vmi-multus-multiple-net/status",
        json={
            "status": {
                "phase": "Running",
                "nodeName": "node-a",
                "interfaces": [{"name": "default", "ipAddress": "10.0.2.2"}],
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "LiveMigratable", "status": "False"},
                ],
            }
        },
        headers={"content-type": MERGE},
    )
    assert r.status_code == 200, r.text
    table = (await http.get(VMIS, headers={"accept": TABLE})).json()
    columns = table["columnDefinitions"]
    assert [c["name"] for c in columns] == [
        "Name",
        "Age",
        "Phase",
        "IP",
        "NodeName",
        "Ready",
        "Live-Migratable",
        "Paused",
    ]
    assert [c["priority"] for c in columns][-2:] == [1, 1]
    cells = table["rows"][0]["cells"]
    assert cells[0] == "vmi-multus-multiple-net" and cells[2:7] == [
        "Running",
        "10.0.2.2",
        "node-a",
        "True",
        "False",
    ]
    # The node agent lists the VMIs bound to its node with a field selector.
    assert (await http.post(VMIS, json=compat("vmi-pvc"))).status_code == 201
    listed = (await http.get(VMIS, params={"fieldSelector": "status.nodeName=node-a"})).json()
    assert [i["metadata"]["name"] for i in listed["items"]] == ["vmi-multus-multiple-net"]
    listed = (await http.get(VMIS, params={"fieldSelector": "status.phase=Pending"})).json()
    assert [i["metadata"]["name"] for i in listed["items"]] == ["vmi-pvc"]


async def test_discovery_lists_the_kubevirt_resources(http: httpx.AsyncClient) -> None:
    r = await http.get("/apis/kubevirt.io/v1")
    resources = {res["name"]: res for res in r.json()["resources"]}
    assert resources["virtualmachines"]["shortNames"] == ["vm", "vms"]
    assert resources["virtualmachines"]["categories"] == ["all"]
    assert "virtualmachines/status" in resources and "virtualmachineinstances/status" in resources
    assert resources["virtualmachineinstancemigrations"]["shortNames"] == ["vmim", "vmims"]
    r = await http.get("/apis/instancetype.kubevirt.io/v1beta1")
    scoped = {res["name"]: res["namespaced"] for res in r.json()["resources"]}
    assert (
        scoped["virtualmachineclusterinstancetypes"] is False
        and scoped["virtualmachineinstancetypes"] is True
    )
    r = await http.get("/apis/cdi.kubevirt.io/v1beta1")
    assert {res["name"] for res in r.json()["resources"]} >= {"datavolumes", "datasources", "storageprofiles"}
    doc = yaml.safe_load((await http.get("/openapi/v3")).text)
    assert "apis/kubevirt.io/v1" in doc["paths"] and "apis/cdi.kubevirt.io/v1beta1" in doc["paths"]
