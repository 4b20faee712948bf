"""Image upload as CDI does it, through the real API server (the upload proxy) to a real node agent server
(no guest): UploadTokenRequest and RBAC, the upload token (401/403), streaming into the claim's volume
with the import engine (raw, qcow2, xz; checked with ``qemu-img compare``), a wrong checksum failing the
DataVolume with nothing half-written, and ``kubevisor image-upload`` run as a subprocess.

The claims are bound by the real binder to PersistentVolumes made here (a directory under the agent's
volume directory, node affinity to the agent's node), and DataVolumes are driven by the real DataVolume
controller.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import lzma
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kubevisor.agent.serving import AgentServer
from kubevisor.agent.uploading import UploadReceiver, parse_content_digest
from kubevisor.api.registry import Obj
from kubevisor.apiserver.pki import issue_client_cert
from kubevisor.client import Client, Config, ForbiddenError
from kubevisor.controllers.datavolume import DataVolumeController
from kubevisor.controllers.volumebinding import VolumeBindingController
from kubevisor.platform import Platform
from kubevisor.testing.cluster import running_platform
from tests.integration.apiserver import libnodeagent
from tests.integration.apiserver.libnodeagent import (
    NODE,
    bound_claim,
    eventually,
    register_node,
    serving_agent,
)
from tests.integration.conftest import client_for

CDI = "cdi.kubevirt.io/v1beta1"
TOKENS = "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests"
UPLOAD_TARGET = "cdi.kubevirt.io/storage.upload.target"
MiB = 1 << 20


@pytest.fixture
async def plat(tmp_path: Path) -> AsyncIterator[Platform]:
    async with running_platform(tmp_path / "data", controllers=False) as p:
        yield p


@pytest.fixture
async def agent(plat: Platform, client: Client, volumes: Path) -> AsyncIterator[AgentServer]:
    uploads = UploadReceiver(client, node=NODE, volume_dirs=(volumes,), fsync=False)
    async with serving_agent(plat, uploads=uploads) as server:
        await register_node(client, server.port)
        async with VolumeBindingController(client), DataVolumeController(client):
            yield server


async def make_volume(client: Client, volumes: Path, claim: str, size: str = "64Mi") -> Path:
    """A PersistentVolume on the agent's node, pre-bound to ``default/claim``; its directory."""
    directory = volumes / claim
    await libnodeagent.make_volume(client, f"pv-{claim}", directory, claim, size=size)
    return directory


async def make_claim(client: Client, volumes: Path, name: str) -> Path:
    """An upload-target claim, bound; its volume directory."""
    directory = await make_volume(client, volumes, name)
    await bound_claim(client, name, annotations={UPLOAD_TARGET: ""})
    return directory


async def make_dv(client: Client, volumes: Path, name: str) -> Path:
    directory = await make_volume(client, volumes, name)
    dvs = client.resource(CDI, "datavolumes")
    await dvs.create(
        {
            "apiVersion": CDI,
            "kind": "DataVolume",
            "metadata": {"name": name},
            "spec": {
                "source": {"upload": {}},
                "pvc": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "manual",
                    "resources": {"requests": {"storage": "64Mi"}},
                },
            },
        },
        "default",
    )
    await dv_phase(client, name, "UploadReady")
    return directory


async def dv_phase(client: Client, name: str, phase: str) -> Obj:
    dvs = client.resource(CDI, "datavolumes")

    async def check() -> Obj | None:
        dv: Obj = await dvs.get(name, "default")
        return dv if (dv.get("status") or {}).get("phase") == phase else None

    result: Obj = await eventually(check, f"DataVolume {name} {phase}")
    return result


async def token_for(client: Client, pvc: str, namespace: str = "default") -> str:
    answer = await client.request(
        "POST",
        TOKENS.format(ns=namespace),
        body={
            "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
            "kind": "UploadTokenRequest",
            "spec": {"pvcName": pvc},
        },
    )
    return str(answer["status"]["token"])


def digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def raw_image(path: Path, size: int = 8 * MiB) -> Path:
    """A raw image with data in some places and holes in others."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(0, size, 3 * MiB):
            f.seek(i)
            f.write(os.urandom(100_000) + b"kubevisor" * 1000)
    return path


def qemu_img(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["qemu-img", *args], capture_output=True, check=False)


def image_of(kind: str, tmp: Path) -> tuple[Path, Path]:
    """(the file to upload, the raw image it holds)."""
    raw = raw_image(tmp / "source.raw")
    if kind == "raw":
        return raw, raw
    if kind == "qcow2":
        qemu_img(
            "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp / "source.qcow2")
        ).check_returncode()
        return tmp / "source.qcow2", raw
    (tmp / "source.raw.xz").write_bytes(lzma.compress(raw.read_bytes(), preset=0))
    return tmp / "source.raw.xz", raw


async def upload(
    plat: Platform, token: str | None, data: bytes, path: str = "/v1beta1/upload", **headers: str
) -> httpx.Response:
    async with client_for(plat, token) as http:
        return await http.post(path, content=data, headers=headers)


@pytest.mark.usefixtures("agent")
@pytest.mark.parametrize("kind", ["raw", "qcow2", "xz"])
async def test_upload_into_a_claim_stores_the_image(
    plat: Platform, client: Client, volumes: Path, tmp_path: Path, kind: str
) -> None:
    directory = await make_claim(client, volumes, "disk")
    source, raw = image_of(kind, tmp_path)
    data = source.read_bytes()
    r = await upload(plat, await token_for(client, "disk"), data, **{"content-digest": digest(data)})
    assert r.status_code == 200, r.text
    assert r.json()["format"] == ("qcow2" if kind == "qcow2" else "raw")
    stored = directory / "disk.img"
    assert stored.stat().st_size == 64 * MiB  # expanded to the claim
    compare = qemu_img("compare", "-f", "raw", "-F", "raw", str(raw), str(stored))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    annotations = (await client.resource("v1", "persistentvolumeclaims").get("disk", "default"))["metadata"][
        "annotations"
    ]
    assert annotations["cdi.kubevirt.io/storage.pod.phase"] == "Succeeded"
    # done once: a second upload is refused
    r = await upload(plat, await token_for(client, "disk"), b"\0" * 512)
    assert r.status_code == 409, r.text


async def test_upload_into_a_datavolume_then_a_wrong_checksum_fails_another(
    plat: Platform, client: Client, agent: AgentServer, volumes: Path, tmp_path: Path
) -> None:
    directory = await make_dv(client, volumes, "good")
    raw = raw_image(tmp_path / "image.raw")
    data = raw.read_bytes()
    r = await upload(
        plat,
        await token_for(client, "good"),
        data,
        path="/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/default/persistentvolumeclaims/good/upload",
        **{"content-digest": digest(data)},
    )
    assert r.status_code == 200, r.text
    dv = await dv_phase(client, "good", "Succeeded")
    assert dv["status"]["progress"] == "100.0%"
    assert (
        qemu_img("compare", "-f", "raw", "-F", "raw", str(raw), str(directory / "disk.img")).returncode == 0
    )

    bad = await make_dv(client, volumes, "bad")
    r = await upload(plat, await token_for(client, "bad"), data, **{"content-digest": digest(b"other")})
    assert r.status_code == 400, r.text
    assert "checksum" in r.json()["message"].lower()
    dv = await dv_phase(client, "bad", "Failed")
    running = next(c for c in dv["status"]["conditions"] if c["type"] == "Running")
    assert "checksum" in running["message"].lower()
    assert sorted(os.listdir(bad)) == []  # nothing half-written, no temporary file left


async def test_tokens_bind_one_claim(
    plat: Platform, client: Client, agent: AgentServer, volumes: Path
) -> None:
    await make_claim(client, volumes, "mine")
    await make_claim(client, volumes, "theirs")
    data = b"\0" * 4096
    r = await upload(plat, None, data)
    assert r.status_code == 401
    r = await upload(plat, "not-a-token", data)
    assert r.status_code == 401
    token = await token_for(client, "mine")
    theirs = "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/default/persistentvolumeclaims/theirs/upload"
    r = await upload(plat, token, data, path=theirs)
    assert r.status_code == 403, r.text
    # an upload token is no API credential
    async with client_for(plat, token) as http:
        assert (await http.get("/api/v1/namespaces/default/persistentvolumeclaims")).status_code == 401
    # a claim that is no upload target, and one that does not exist
    await client.resource("v1", "persistentvolumeclaims").create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "plain"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
        },
        "default",
    )
    assert (await upload(plat, await token_for(client, "plain"), data)).status_code == 400
    assert (await upload(plat, await token_for(client, "missing"), data)).status_code == 404


async def test_a_claim_not_bound_yet_is_not_ready(plat: Platform, client: Client, agent: AgentServer) -> None:
    await client.resource("v1", "persistentvolumeclaims").create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "later", "annotations": {UPLOAD_TARGET: ""}},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "resources": {"requests": {"storage": "1Mi"}},
            },
        },
        "default",
    )
    r = await upload(plat, await token_for(client, "later"), b"x" * 512)
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert "not ready" in r.json()["message"]


async def test_rbac_create_on_uploadtokenrequests_in_the_namespace(plat: Platform, client: Client) -> None:
    assert plat.pki is not None
    rbac = "rbac.authorization.k8s.io/v1"
    await client.resource(rbac, "roles").create(
        {
            "metadata": {"name": "uploader"},
            "rules": [
                {
                    "apiGroups": ["upload.cdi.kubevirt.io"],
                    "resources": ["uploadtokenrequests"],
                    "verbs": ["create"],
                }
            ],
        },
        "default",
    )
    await client.resource(rbac, "rolebindings").create(
        {
            "metadata": {"name": "alice"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "uploader"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}],
        },
        "default",
    )
    for user in ("alice", "bob"):
        cert, key = issue_client_cert(plat.pki, user, ["developers"])
        config = Config(
            server=plat.url, ca_data=plat.pki.ca_pem(), client_cert_data=cert, client_key_data=key
        )
        async with Client(config) as c:
            if user == "alice":
                assert await token_for(c, "disk")
                with pytest.raises(ForbiddenError):  # not in another namespace
                    await token_for(c, "disk", "kube-system")
            else:
                with pytest.raises(ForbiddenError, match="uploadtokenrequests"):
                    await token_for(c, "disk")


def test_content_digest_header() -> None:
    value = digest(b"abc")
    assert parse_content_digest(value) == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert parse_content_digest(None) is None
    for bad in ("md5=:AAAA:", "sha-256=abc", "sha-256=:AAAA:"):
        with pytest.raises(ValueError):
            parse_content_digest(bad)


async def test_cli_image_upload_dv(
    plat: Platform, client: Client, agent: AgentServer, volumes: Path, tmp_path: Path
) -> None:
    directory = await make_volume(client, volumes, "cli-dv")
    source, raw = image_of("qcow2", tmp_path)
    env = dict(os.environ, KUBECONFIG=str(plat.kubeconfig))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubevisor.cli.main",
        "image-upload",
        "dv",
        "cli-dv",
        "--image-path",
        str(source),
        "--size",
        "64Mi",
        "--storage-class",
        "manual",
        "--wait-secs",
        "60",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == 0, (out + err).decode()
    assert b"completed successfully" in out
    await dv_phase(client, "cli-dv", "Succeeded")
    assert (
        qemu_img("compare", "-f", "raw", "-F", "raw", str(raw), str(directory / "disk.img")).returncode == 0
    )


@pytest.mark.usefixtures("agent")
async def test_an_image_larger_than_the_claim_is_refused(
    plat: Platform, client: Client, volumes: Path, tmp_path: Path
) -> None:
    directory = await make_claim(client, volumes, "small")
    big = tmp_path / "big.qcow2"
    qemu_img("create", "-f", "qcow2", str(big), "1G").check_returncode()
    r = await upload(plat, await token_for(client, "small"), big.read_bytes())
    assert r.status_code == 413, r.text
    pvc = await client.resource("v1", "persistentvolumeclaims").get("small", "default")
    assert pvc["metadata"]["annotations"]["cdi.kubevirt.io/storage.pod.phase"] == "Failed"
    assert sorted(os.listdir(directory)) == []
