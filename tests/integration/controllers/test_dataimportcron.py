"""DataSources, DataImportCrons and DataVolume ``sourceRef`` against the real API server.

The registry is real (Debian's docker-registry on loopback, images pushed with skopeo); there is no node
agent, so where a DataVolume would be filled the test writes what the DataVolume controller would
(``status.phase: Succeeded`` and its claim). Polls are triggered as with CDI, by setting the cron's
``storage.import.nextCronTime`` annotation to a past time: no test waits for the clock.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.api import cdi
from kubevisor.api.registry import Obj
from kubevisor.client import Client, NotFoundError
from kubevisor.client.requesting import ResourceClient
from kubevisor.controllers import cloning
from kubevisor.controllers.dataimportcron import DataImportCronController, import_name
from kubevisor.controllers.datasource import DataSourceController
from kubevisor.controllers.datavolume import DataVolumeController
from kubevisor.testing import containerdisks
from kubevisor.testing.containerdisks import Entry, LocalRegistry
from tests.integration.client.libcluster import gone, until

CDI = "cdi.kubevirt.io/v1beta1"
NS = "default"


@pytest.fixture(scope="module")
def local_registry() -> Iterator[LocalRegistry]:
    try:
        containerdisks.require(containerdisks.SKOPEO)
        with containerdisks.running_registry() as registry:
            yield registry
    except containerdisks.ToolMissing as e:
        pytest.fail(str(e), pytrace=False)


def push(tmp_path: Path, local_registry: LocalRegistry, repository: str, content: bytes) -> str:
    """A containerDisk with ``content`` as its disk, pushed as ``repository:latest``; its digest."""
    layout = tmp_path / f"layout-{len(list(tmp_path.iterdir()))}"
    disk = tmp_path / f"disk-{len(content)}-{content[:4].hex()}.img"
    disk.write_bytes(content)
    digest = containerdisks.oci_layout(layout, [[Entry("disk"), Entry("disk/disk.img", disk)]])
    containerdisks.push(layout, f"{local_registry.host}/{repository}:latest")
    return digest


def condition(obj: Obj, kind: str) -> Obj:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


async def get_or_empty(resources: ResourceClient, name: str) -> Obj:
    try:
        return await resources.get(name, NS)
    except NotFoundError:
        return {}


async def fill(client: Client, dv_name: str) -> None:
    """What the DataVolume controller and the node agent do for an import: a claim, then Succeeded."""
    dvs = client.resource(CDI, "datavolumes")
    claim = {
        "metadata": {"name": dv_name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }
    await client.resource("v1", "persistentvolumeclaims").create(claim, NS)
    dv = await dvs.get(dv_name, NS)
    await dvs.update_status(dict(dv, status={"phase": "Succeeded", "progress": "100.0%"}))


@pytest.fixture
async def controllers(client: Client) -> AsyncIterator[None]:
    async with DataSourceController(client), DataImportCronController(client):
        yield


async def test_cron_imports_each_new_digest_and_moves_its_data_source(
    client: Client, controllers: None, local_registry: LocalRegistry, tmp_path: Path
) -> None:
    repository = "kubevisor/cron-golden"
    first = push(tmp_path, local_registry, repository, b"v1" * 512)
    crons = client.resource(CDI, "dataimportcrons")
    dvs = client.resource(CDI, "datavolumes")
    sources = client.resource(CDI, "datasources")
    url = f"docker://{local_registry.host}/{repository}:latest"
    cron = {
        "metadata": {"name": "golden-cron"},
        "spec": {
            "schedule": "0 0 1 1 *",  # yearly: only the creation poll and the test's triggers poll
            "managedDataSource": "golden",
            "importsToKeep": 1,
            "template": {
                "spec": {
                    "source": {"registry": {"url": url, "pullMethod": "pod"}},
                    "storage": {"resources": {"requests": {"storage": "1Mi"}}},
                }
            },
        },
    }
    await crons.create(cron, NS)

    # at creation: polled, a DataVolume named for the digest, the DataSource created (nothing in it yet)
    name1 = import_name("golden", first)
    dv1 = await until(lambda: get_or_empty(dvs, name1), bool, 10, f"DataVolume {name1}")
    assert dv1["metadata"]["labels"][cdi.DATA_IMPORT_CRON_LABEL] == "golden-cron"
    assert dv1["metadata"]["annotations"][cdi.IMMEDIATE_BINDING_ANNOTATION] == "true"
    assert dv1["spec"]["source"]["registry"] == {
        "url": f"docker://{local_registry.host}/{repository}@{first}",
        "pullMethod": "pod",
    }
    status = (await until(lambda: crons.get("golden-cron", NS), lambda c: bool(c.get("status")), 10))[
        "status"
    ]
    assert status["currentImports"] == [{"DataVolumeName": name1, "Digest": first}]
    assert status["lastExecutionTimestamp"]
    annotations = (await crons.get("golden-cron", NS))["metadata"]["annotations"]
    assert annotations[cdi.DESIRED_DIGEST_ANNOTATION] == first
    assert annotations[cdi.NEXT_CRON_TIME_ANNOTATION].endswith("-01-01T00:00:00Z")
    ds = await until(
        lambda: get_or_empty(sources, "golden"), lambda d: condition(d, "Ready").get("reason") == "NoSource"
    )
    assert ds["metadata"]["labels"][cdi.DATA_IMPORT_CRON_LABEL] == "golden-cron"

    # the import succeeds: the DataSource points at it and is Ready, the cron is up to date
    await fill(client, name1)
    ds = await until(
        lambda: sources.get("golden", NS), lambda d: condition(d, "Ready").get("status") == "True", 10
    )
    assert ds["spec"]["source"] == {"pvc": {"namespace": NS, "name": name1}}
    assert ds["status"]["source"] == ds["spec"]["source"]
    done = await until(
        lambda: crons.get("golden-cron", NS), lambda c: condition(c, "UpToDate").get("status") == "True", 10
    )
    assert done["status"]["lastImportedPVC"] == {"namespace": NS, "name": name1}
    assert done["status"]["sourceFormat"] == "pvc"
    claim = await client.resource("v1", "persistentvolumeclaims").get(name1, NS)
    assert claim["metadata"]["labels"][cdi.DATA_IMPORT_CRON_LABEL] == "golden-cron"
    assert claim["metadata"]["annotations"][cdi.LAST_USE_TIME_ANNOTATION]

    # the tag moves; a tick (the nextCronTime annotation set to the past) imports it
    second = push(tmp_path, local_registry, repository, b"v2" * 512)
    assert second != first
    await crons.patch(
        "golden-cron",
        {"metadata": {"annotations": {cdi.NEXT_CRON_TIME_ANNOTATION: "2000-01-01T00:00:00Z"}}},
        NS,
    )
    name2 = import_name("golden", second)
    await until(lambda: get_or_empty(dvs, name2), bool, 10, f"DataVolume {name2}")
    outdated = await crons.get("golden-cron", NS)
    assert condition(outdated, "UpToDate")["reason"] in ("Outdated", "ImportProgressing")
    await fill(client, name2)
    ds = await until(
        lambda: sources.get("golden", NS),
        lambda d: (
            d["spec"]["source"] == {"pvc": {"namespace": NS, "name": name2}}
            and condition(d, "Ready").get("status") == "True"
        ),
        10,
    )
    # importsToKeep: 1 -> the older import is garbage-collected
    await gone(dvs, name1, NS)
    assert (await crons.get("golden-cron", NS))["status"]["lastImportedPVC"]["name"] == name2

    # a tick with the tag unchanged imports nothing new
    await crons.patch(
        "golden-cron",
        {"metadata": {"annotations": {cdi.NEXT_CRON_TIME_ANNOTATION: "2000-01-01T00:00:00Z"}}},
        NS,
    )
    polled = await until(
        lambda: crons.get("golden-cron", NS),
        lambda c: not c["metadata"]["annotations"][cdi.NEXT_CRON_TIME_ANNOTATION].startswith("2000"),
        10,
    )
    assert polled["status"]["currentImports"] == [{"DataVolumeName": name2, "Digest": second}]
    assert sorted(d["metadata"]["name"] for d in (await dvs.list(NS)).items) == [name2]


async def test_unreachable_registry_is_reported_and_retried(client: Client, controllers: None) -> None:
    crons = client.resource(CDI, "dataimportcrons")
    cron = {
        "metadata": {"name": "nowhere"},
        "spec": {
            "schedule": "* * * * *",
            "managedDataSource": "nowhere",
            "template": {
                "spec": {
                    "source": {"registry": {"url": "docker://127.0.0.1:9/kubevisor/x:latest"}},
                    "storage": {"resources": {"requests": {"storage": "1Mi"}}},
                }
            },
        },
    }
    await crons.create(cron, NS)
    events = client.resource("v1", "events")
    found = await until(
        lambda: events.list(NS),
        lambda e: any(x.get("reason") == "PollSourceFailed" for x in e.items),
        10,
        "a PollSourceFailed event",
    )
    message = next(x["message"] for x in found.items if x.get("reason") == "PollSourceFailed")
    assert "127.0.0.1:9" in message and "unreachable" in message
    status = (await until(lambda: crons.get("nowhere", NS), lambda c: bool(c.get("status")), 10))["status"]
    assert condition({"status": status}, "UpToDate")["reason"] == "NoDigest"


async def test_invalid_cron_is_refused(client: Client) -> None:
    crons = client.resource(CDI, "dataimportcrons")
    bad = {
        "metadata": {"name": "bad"},
        "spec": {
            "schedule": "every day",
            "managedDataSource": "x",
            "template": {"spec": {"source": {"http": {"url": "http://x/y"}}, "storage": {}}},
        },
    }
    with pytest.raises(Exception, match="registry"):
        await crons.create(bad, NS)


async def test_data_source_readiness(client: Client, controllers: None) -> None:
    sources = client.resource(CDI, "datasources")
    dvs = client.resource(CDI, "datavolumes")
    pvcs = client.resource("v1", "persistentvolumeclaims")
    await sources.create({"metadata": {"name": "img"}, "spec": {"source": {}}}, NS)
    await until(lambda: sources.get("img", NS), lambda d: condition(d, "Ready").get("reason") == "NoSource")
    await sources.patch("img", {"spec": {"source": {"pvc": {"namespace": NS, "name": "disk"}}}}, NS)
    await until(lambda: sources.get("img", NS), lambda d: condition(d, "Ready").get("reason") == "NotFound")
    pointer = {
        "metadata": {"name": "latest"},
        "spec": {"source": {"dataSource": {"namespace": NS, "name": "img"}}},
    }
    await sources.create(pointer, NS)

    dv = {
        "metadata": {"name": "disk"},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Mi"}}}},
    }
    created = await dvs.create(dv, NS)
    await dvs.update_status(dict(created, status={"phase": "ImportInProgress"}))
    await until(
        lambda: sources.get("img", NS), lambda d: condition(d, "Ready").get("reason") == "ImportInProgress"
    )
    await pvcs.create(
        {
            "metadata": {"name": "disk"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
        },
        NS,
    )
    latest = await dvs.get("disk", NS)
    await dvs.update_status(dict(latest, status={"phase": "Succeeded"}))
    for name in ("img", "latest"):
        ready = await until(
            functools.partial(sources.get, name, NS), lambda d: condition(d, "Ready").get("status") == "True"
        )
        assert ready["status"]["source"] == {"pvc": {"namespace": NS, "name": "disk"}}

    # a pointer to a pointer is one level too deep
    await sources.create(
        {
            "metadata": {"name": "deeper"},
            "spec": {"source": {"dataSource": {"namespace": NS, "name": "latest"}}},
        },
        NS,
    )
    deeper = await until(
        lambda: sources.get("deeper", NS),
        lambda d: condition(d, "Ready").get("reason") == "MaxReferenceDepthReached",
    )
    assert deeper["status"]["source"] == {}

    # the data goes: NotFound again
    await dvs.delete("disk", NS)
    await pvcs.delete("disk", NS)
    await until(
        lambda: sources.get("latest", NS), lambda d: condition(d, "Ready").get("reason") == "NotFound"
    )


async def test_data_volume_source_ref_resolves_to_a_clone(client: Client) -> None:
    dvs = client.resource(CDI, "datavolumes")
    sources = client.resource(CDI, "datasources")
    pvcs = client.resource("v1", "persistentvolumeclaims")
    async with DataSourceController(client), DataVolumeController(client):
        dv = {
            "metadata": {"name": "root"},
            "spec": {
                "sourceRef": {"kind": "DataSource", "name": "golden"},
                "storage": {"resources": {"requests": {"storage": "1Mi"}}},
            },
        }
        await dvs.create(dv, NS)
        pending = await until(
            lambda: dvs.get("root", NS),
            lambda d: condition(d, "Running").get("reason") == "CloneWithoutSource",
        )
        assert pending["status"]["phase"] == "Pending"
        assert "DataSource default/golden" in condition(pending, "Running")["message"]
        assert await get_or_empty(pvcs, "root") == {}  # no claim while the source is unknown

        await sources.create(
            {"metadata": {"name": "golden"}, "spec": {"source": {"pvc": {"namespace": NS, "name": "img"}}}},
            NS,
        )
        waiting = await until(
            lambda: dvs.get("root", NS),
            lambda d: "pvc img" in condition(d, "Running").get("message", ""),
        )
        assert condition(waiting, "Running")["reason"] == "CloneWithoutSource"

        await pvcs.create(
            {
                "metadata": {"name": "img"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
            },
            NS,
        )
        claim = await until(lambda: get_or_empty(pvcs, "root"), bool, 10, "the clone's claim")
        assert claim["metadata"]["annotations"][cloning.CLONE_REQUEST_ANNOTATION] == f"{NS}/img"

        # the DataSource moving later does not change the clone under way
        await sources.patch("golden", {"spec": {"source": {"pvc": {"namespace": NS, "name": "newer"}}}}, NS)
        await until(
            lambda: sources.get("golden", NS),
            lambda d: (d.get("status") or {}).get("source", {}).get("pvc", {}).get("name") == "newer",
        )
        again = await pvcs.get("root", NS)
        assert again["metadata"]["annotations"][cloning.CLONE_REQUEST_ANNOTATION] == f"{NS}/img"


def registry_cron(name: str, managed: str, url: str, **spec: object) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 0 1 1 *",
            "managedDataSource": managed,
            "template": {
                "spec": {
                    "source": {"registry": {"url": url}},
                    "storage": {"resources": {"requests": {"storage": "1Mi"}}},
                }
            },
            **spec,
        },
    }


async def test_retention_none_deletes_the_imports_with_the_cron_and_one_data_source_has_one_cron(
    client: Client, controllers: None, local_registry: LocalRegistry, tmp_path: Path
) -> None:
    digest = push(tmp_path, local_registry, "kubevisor/cron-retention", b"r1" * 512)
    url = f"docker://{local_registry.host}/kubevisor/cron-retention:latest"
    crons = client.resource(CDI, "dataimportcrons")
    dvs = client.resource(CDI, "datavolumes")
    sources = client.resource(CDI, "datasources")
    await crons.create(registry_cron("temporary", "scratch", url, retentionPolicy="None"), NS)
    name = import_name("scratch", digest)
    dv = await until(lambda: get_or_empty(dvs, name), bool, 10, f"DataVolume {name}")
    assert dv["metadata"]["labels"][cdi.DATA_IMPORT_CRON_CLEANUP_LABEL] == "true"
    await until(lambda: get_or_empty(sources, "scratch"), bool, 10, "DataSource scratch")

    # a second cron for the same DataSource is refused with an Event, and creates nothing
    await crons.create(registry_cron("intruder", "scratch", url), NS)
    events = client.resource("v1", "events")
    await until(
        lambda: events.list(NS),
        lambda e: any(
            x.get("reason") == "ErrDataSourceAlreadyManaged" and x["involvedObject"]["name"] == "intruder"
            for x in e.items
        ),
        10,
        "ErrDataSourceAlreadyManaged",
    )
    assert not ((await crons.get("intruder", NS)).get("status") or {}).get("currentImports")

    await crons.delete("temporary", NS)
    await gone(dvs, name, NS)
    await gone(sources, "scratch", NS)
