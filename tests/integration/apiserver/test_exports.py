"""VirtualMachineExport through the real API server, the real export controller and a real node agent
server (no guest): the generated token Secret, links and TTL; a claim in use by a VMI (Pending, inUse);
the export token (none: 401, wrong or another namespace's: 403); raw and gzip downloads of a raw and of a
qcow2 claim, compared with the image (``qemu-img convert -O raw`` for qcow2) and with the digest the
server reports; and ``kubevisor vmexport download`` run as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.exporting import ExportSender
from kubevisor.agent.serving import AgentServer
from kubevisor.api.registry import Obj
from kubevisor.client import Client, NotFoundError
from kubevisor.controllers.export import ExportController
from kubevisor.controllers.volumebinding import VolumeBindingController
from kubevisor.platform import Platform
from kubevisor.testing.cluster import running_platform
from tests.integration.apiserver.libnodeagent import (
    NODE,
    bound_claim,
    eventually,
    make_volume,
    register_node,
    serving_agent,
)
from tests.integration.conftest import client_for

EXPORT = "export.kubevirt.io/v1"
TOKEN_HEADER = "x-kubevirt-export-token"
MiB = 1 << 20


@pytest.fixture
async def plat(tmp_path: Path) -> AsyncIterator[Platform]:
    async with running_platform(tmp_path / "data", controllers=False) as p:
        yield p


@pytest.fixture
async def agent(plat: Platform, client: Client, volumes: Path, tmp_path: Path) -> AsyncIterator[AgentServer]:
    exports = ExportSender(client, node=NODE, data_dir=tmp_path / "node", volume_dirs=(volumes,))
    async with serving_agent(plat, exports=exports) as server:
        await register_node(client, server.port)
        async with VolumeBindingController(client), ExportController(client):
            yield server


async def make_claim(
    client: Client, volumes: Path, name: str, *, namespace: str = "default", qcow2: bool = False
) -> Path:
    """A bound claim ``name`` on a volume of the agent's node; its (not yet written) disk.img."""
    directory = volumes / f"{namespace}-{name}"
    annotations = {"kubevisor.io/disk-format": "qcow2"} if qcow2 else None
    await make_volume(
        client, f"pv-{namespace}-{name}", directory, name, namespace=namespace, annotations=annotations
    )
    await bound_claim(client, name, namespace=namespace)
    return directory / "disk.img"


def convert(source: Path, source_format: str, target: Path, target_format: str) -> None:
    argv = ["qemu-img", "convert", "-f", source_format, "-O", target_format, str(source), str(target)]
    subprocess.run(argv, check=True)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def write_image(path: Path, size: int = 16 * MiB) -> bytes:
    """A raw image: 3 MiB of random data at 1 MiB, the rest a hole; its content."""
    data = os.urandom(3 * MiB)
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(MiB)
        f.write(data)
    return path.read_bytes()


async def create_export(
    client: Client, name: str, source: Obj, namespace: str = "default", **spec: Any
) -> None:
    await client.resource(EXPORT, "virtualmachineexports").create(
        {
            "apiVersion": EXPORT,
            "kind": "VirtualMachineExport",
            "metadata": {"name": name},
            "spec": {"source": source, **spec},
        },
        namespace,
    )


def pvc_source(name: str) -> Obj:
    return {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": name}


async def phase_of(client: Client, name: str, want: str, namespace: str = "default") -> Obj:
    exports = client.resource(EXPORT, "virtualmachineexports")

    async def check() -> Obj | None:
        export = await exports.get(name, namespace)
        return export if (export.get("status") or {}).get("phase") == want else None

    result: Obj = await eventually(check, f"export {name} {want}")
    return result


async def token_of(client: Client, export: Obj) -> str:
    secret = await client.resource("v1", "secrets").get(export["status"]["tokenSecretRef"], "default")
    return base64.b64decode(secret["data"]["token"]).decode()


def url_of(export: Obj, fmt: str, volume: int = 0) -> str:
    formats = export["status"]["links"]["external"]["volumes"][volume]["formats"]
    return str(next(f["url"] for f in formats if f["format"] == fmt))


async def test_claim_export_token_links_and_downloads(
    plat: Platform, client: Client, agent: AgentServer, volumes: Path
) -> None:
    image = await make_claim(client, volumes, "data")
    content = write_image(image)
    await create_export(client, "exp", pvc_source("data"))
    export = await phase_of(client, "exp", "Ready")
    status = export["status"]
    assert status["tokenSecretRef"] == "export-token-exp"
    secret = await client.resource("v1", "secrets").get("export-token-exp", "default")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == export["metadata"]["uid"]
    assert status["ttlExpirationTime"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "True", "PVCReady": "True"}
    assert plat.pki is not None
    assert status["links"]["external"]["cert"] == plat.pki.ca_cert.read_text()
    raw_url = url_of(export, "raw")
    assert raw_url == f"{plat.url}/api/export.kubevirt.io/v1/namespaces/default/exp/volumes/data/disk.img"
    assert url_of(export, "gzip") == raw_url + ".gz"
    token = await token_of(client, export)

    async with client_for(plat) as http:  # no API credential at all: the export token is the only one
        assert (await http.get(raw_url)).status_code == 401
        assert (await http.get(raw_url, headers={TOKEN_HEADER: "wrong"})).status_code == 403
        missing = raw_url.replace("/exp/", "/nope/")
        assert (await http.get(missing, headers={TOKEN_HEADER: token})).status_code == 403
        response = await http.get(raw_url, headers={TOKEN_HEADER: token})
        assert response.status_code == 200, response.text
        assert response.content == content
        assert response.headers["content-length"] == str(len(content))
        assert response.headers["x-kubevisor-disk-sha256"] == hashlib.sha256(content).hexdigest()
        by_query = await http.get(raw_url, params={TOKEN_HEADER: token})
        assert by_query.status_code == 200 and by_query.content == content
        gz = await http.get(url_of(export, "gzip"), headers={TOKEN_HEADER: token})
        assert gz.status_code == 200 and gz.headers["content-type"] == "application/gzip"
        assert gzip.decompress(gz.content) == content
        assert len(gz.content) < len(content) // 4
        no_volume = raw_url.replace("/volumes/data/", "/volumes/other/")
        assert (await http.get(no_volume, headers={TOKEN_HEADER: token})).status_code == 404


async def test_qcow2_claim_is_served_raw(
    plat: Platform, client: Client, agent: AgentServer, volumes: Path, tmp_path: Path
) -> None:
    image = await make_claim(client, volumes, "q", qcow2=True)
    source = tmp_path / "source.raw"
    write_image(source)
    expected = tmp_path / "expected.raw"
    convert(source, "raw", image, "qcow2")
    convert(image, "qcow2", expected, "raw")
    await create_export(client, "qexp", pvc_source("q"))
    export = await phase_of(client, "qexp", "Ready")
    token = await token_of(client, export)
    async with client_for(plat) as http:
        response = await http.get(url_of(export, "raw"), headers={TOKEN_HEADER: token})
        assert response.status_code == 200, response.text
    assert response.content == expected.read_bytes()
    assert not list((tmp_path / "node" / "exports").iterdir())  # the temporary conversion is gone


async def test_claim_in_use_is_pending_and_other_namespace_token_refused(
    plat: Platform, client: Client, agent: AgentServer, volumes: Path
) -> None:
    await make_claim(client, volumes, "busy")
    vmis = client.resource("kubevirt.io/v1", "virtualmachineinstances")
    await vmis.create(
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "user"},
            "spec": {
                "domain": {
                    "devices": {"disks": [{"name": "d", "disk": {"bus": "virtio"}}]},
                    "memory": {"guest": "64Mi"},
                },
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "busy"}}],
            },
        },
        "default",
    )
    await create_export(client, "busy", pvc_source("busy"))
    export = await phase_of(client, "busy", "Pending")
    ready = next(c for c in export["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "inUse" and "user" in ready["message"]
    token = await token_of(client, export)
    url = f"{plat.url}/api/export.kubevirt.io/v1/namespaces/default/busy/volumes/busy/disk.img"
    async with client_for(plat) as http:
        pending = await http.get(url, headers={TOKEN_HEADER: token})
        assert pending.status_code == 503 and pending.headers["retry-after"]
        assert "in use" in pending.json()["message"]

        # the same export name in another namespace: this token does not open it
        await client.resource("v1", "namespaces").create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}
        )
        await make_claim(client, volumes, "busy", namespace="other")
        await create_export(client, "busy", pvc_source("busy"), namespace="other")
        await phase_of(client, "busy", "Ready", namespace="other")
        other = url.replace("/namespaces/default/", "/namespaces/other/")
        assert (await http.get(other, headers={TOKEN_HEADER: token})).status_code == 403

        vmi = await vmis.get("user", "default")  # a finished VMI no longer holds the claim
        vmi["status"] = {"phase": "Succeeded"}
        await vmis.update_status(vmi)
        export = await phase_of(client, "busy", "Ready")
        assert (await http.get(url, headers={TOKEN_HEADER: token})).status_code == 200


async def test_ttl_deletes_the_export_and_spec_is_validated(
    client: Client, agent: AgentServer, volumes: Path
) -> None:
    await make_claim(client, volumes, "short")
    exports = client.resource(EXPORT, "virtualmachineexports")
    await create_export(client, "short", pvc_source("short"), ttlDuration="1s")

    async def gone() -> bool:
        try:
            await exports.get("short", "default")
        except NotFoundError:
            return True
        return False

    await eventually(gone, "the export deleted at the end of its ttlDuration")
    with pytest.raises(Exception, match=r"spec\.ttlDuration"):
        await create_export(client, "bad", pvc_source("short"), ttlDuration="soon")
    with pytest.raises(Exception, match=r"spec\.source\.kind"):
        await create_export(client, "bad", {"apiGroup": "", "kind": "ConfigMap", "name": "x"})
    with pytest.raises(Exception, match=r"spec\.source\.apiGroup"):
        await create_export(
            client, "bad", {"apiGroup": "kubevirt.io", "kind": "PersistentVolumeClaim", "name": "x"}
        )


async def cli(plat: Platform, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubevisor.cli.main",
        "vmexport",
        *args,
        "--kubeconfig",
        str(plat.kubeconfig),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_download_raw_and_gzip(
    plat: Platform, client: Client, agent: AgentServer, volumes: Path, tmp_path: Path
) -> None:
    image = await make_claim(client, volumes, "cli")
    content = write_image(image)
    raw = tmp_path / "out.img"
    code, out = await cli(plat, "download", "e1", "--pvc", "cli", "--format", "raw", "--output", str(raw))
    assert code == 0, out
    assert "sha256 verified" in out
    assert raw.read_bytes() == content
    with pytest.raises(NotFoundError):  # created for the download, deleted after it
        await client.resource(EXPORT, "virtualmachineexports").get("e1", "default")

    code, out = await cli(plat, "create", "e2", "--pvc", "cli")
    assert code == 0, out
    packed = tmp_path / "out.img.gz"
    code, out = await cli(plat, "download", "e2", "--output", str(packed))  # gzip by default
    assert code == 0, out
    assert gzip.decompress(packed.read_bytes()) == content
    assert leftovers(tmp_path) == []  # no .part file left
    code, out = await cli(plat, "download", "e2", "--volume", "nope", "--output", str(packed))
    assert code == 1 and "no volume nope" in out
    code, out = await cli(plat, "delete", "e2")
    assert code == 0, out
    code, out = await cli(plat, "delete", "e2")
    assert code == 1 and "does not exist" in out


async def test_snapshot_not_ready_is_pending_and_vm_without_claims_skipped(
    client: Client, agent: AgentServer
) -> None:
    snap = "snapshot.kubevirt.io/v1beta1"
    await client.resource(snap, "virtualmachinesnapshots").create(
        {
            "apiVersion": snap,
            "kind": "VirtualMachineSnapshot",
            "metadata": {"name": "s1"},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}},
        },
        "default",
    )
    await create_export(
        client,
        "from-snap",
        {"apiGroup": "snapshot.kubevirt.io", "kind": "VirtualMachineSnapshot", "name": "s1"},
    )
    pending = await phase_of(client, "from-snap", "Pending")
    assert pending["status"]["conditions"][0]["reason"] == "snapshotNotReady"

    vm_source = {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}
    await create_export(client, "from-vm", vm_source)
    missing = await phase_of(client, "from-vm", "Pending")
    assert missing["status"]["conditions"][0]["reason"] == "vmNotFound"
    await client.resource("kubevirt.io/v1", "virtualmachines").create(
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "vm1"},
            "spec": {
                "runStrategy": "Halted",
                "template": {
                    "spec": {
                        "domain": {
                            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                            "memory": {"guest": "64Mi"},
                        },
                        "volumes": [{"name": "root", "containerDisk": {"image": "example/disk"}}],
                    }
                },
            },
        },
        "default",
    )
    skipped = await phase_of(client, "from-vm", "Skipped")
    assert skipped["status"]["virtualMachineName"] == "vm1"
    assert "links" not in skipped["status"]
