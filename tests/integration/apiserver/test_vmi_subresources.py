"""VMI subresources of subresources.kubevirt.io through the real API server to a real node agent server,
whose guest is a stand-in (a unix socket for the serial console, a TCP echo server for the VMI's address,
a fake QMP): routing, websocket proxying, mutual TLS between apiserver and agent, the Status errors
(404, 409, 503), discovery, and RBAC by namespace (VM get, console, pause and stop).

The same path with a real QEMU guest is tests/e2e/test_vmi_streams.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubevisor.agent.serving import AgentServer
from kubevisor.agent.vmis import Guest
from kubevisor.api.registry import Obj
from kubevisor.apiserver.pki import issue_client_cert
from kubevisor.client import Client, Config, ForbiddenError, NotFoundError, ServerError, streaming
from kubevisor.client import errors as client_errors
from kubevisor.platform import Platform
from kubevisor.testing.cluster import running_platform
from kubevisor.virt.domain import RunPaths
from tests.integration.apiserver.libnodeagent import NODE, register_node, serving_agent
from tests.integration.conftest import client_for

KV = "kubevirt.io/v1"
SUB = "/apis/subresources.kubevirt.io/v1/namespaces"


class FakeQmp:
    """QMP's run state, stop and cont."""

    def __init__(self) -> None:
        self.state = "running"

    async def status(self) -> str:
        return self.state

    async def stop(self) -> None:
        self.state = "paused"

    async def cont(self) -> None:
        self.state = "running"


class FakeRuntime:
    """The agent's VMI controller as the server sees it."""

    def __init__(self) -> None:
        self.guests: dict[str, Guest] = {}
        self.enqueued: list[str] = []

    def run_dir(self, namespace: str, name: str) -> Path:
        return self.guests[f"{namespace}/{name}"].run.directory

    def enqueue(self, key: str) -> None:
        self.enqueued.append(key)

    def guest_address(self, key: str) -> tuple[str | None, str] | None:
        return None  # not on a pod network: port-forward goes to status.interfaces[0].ipAddress


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kv-it-"))  # unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def plat(tmp_path: Path) -> AsyncIterator[Platform]:
    async with running_platform(tmp_path / "data", controllers=False) as p:
        yield p


@pytest.fixture
async def agent(
    plat: Platform, client: Client, run_dir: Path
) -> AsyncIterator[tuple[AgentServer, FakeRuntime]]:
    runtime = FakeRuntime()
    async with serving_agent(
        plat, runtime=runtime, vmis=client.resource(KV, "virtualmachineinstances")
    ) as server:
        yield server, runtime


async def make_node(client: Client, port: int) -> None:
    await register_node(client, port, hostname=True)


def vmi_manifest(name: str) -> Obj:
    return {
        "apiVersion": KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}},
    }


async def make_vmi(client: Client, name: str, phase: str, ip: str | None = None) -> Obj:
    vmis = client.resource(KV, "virtualmachineinstances")
    vmi = await vmis.create(vmi_manifest(name), "default")
    iface: Obj = {"name": "default"}
    if ip:
        iface["ipAddress"] = ip
    vmi["status"] = {"phase": phase, "nodeName": NODE, "interfaces": [iface]}
    updated: Obj = await vmis.update_status(vmi)
    return updated


@contextlib.asynccontextmanager
async def serial_console(run: RunPaths) -> AsyncIterator[None]:
    """A stand-in for QEMU's serial chardev: greets, then echoes in upper case."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"guest says hello\r\n")
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, str(run.serial))
    async with server:
        yield


async def recv_until(ws: Any, wanted: bytes, timeout: float = 10) -> bytes:
    got = b""
    async with asyncio.timeout(timeout):
        while wanted not in got:
            got += await ws.recv()
    return got


def add_guest(runtime: FakeRuntime, run_dir: Path, name: str) -> Guest:
    guest = Guest(key=f"default/{name}", uid="uid", pid=os.getpid(), run=RunPaths(run_dir))
    guest.qmp = FakeQmp()  # type: ignore[assignment]
    runtime.guests[guest.key] = guest
    return guest


async def test_console_portforward_pause_through_the_apiserver(
    plat: Platform, client: Client, agent: tuple[AgentServer, FakeRuntime], run_dir: Path
) -> None:
    server, runtime = agent
    await make_node(client, server.port)
    config = client.config

    # an echo server standing in for the guest's TCP port
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(b"echo:" + data)
            await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(echo, "127.0.0.1", 0)
    tcp_port = tcp.sockets[0].getsockname()[1]
    guest = add_guest(runtime, run_dir, "vm1")
    await make_vmi(client, "vm1", "Running", ip="127.0.0.1")
    async with tcp, serial_console(guest.run):
        ws = await streaming.open_stream(config, f"{SUB}/default/virtualmachineinstances/vm1/console")
        try:
            assert ws.subprotocol == "plain.kubevirt.io"
            assert b"guest says hello" in await recv_until(ws, b"hello")
            await ws.send(b"uname\n")
            assert b"UNAME" in await recv_until(ws, b"UNAME")
            # one console session at a time
            with pytest.raises(client_errors.ConflictError, match="already open"):
                await streaming.open_stream(config, f"{SUB}/default/virtualmachineinstances/vm1/console")
        finally:
            await ws.close()

        ws = await streaming.open_stream(
            config, f"{SUB}/default/virtualmachineinstances/vm1/portforward/{tcp_port}"
        )
        try:
            await ws.send(b"ping")
            assert await recv_until(ws, b"echo:ping") == b"echo:ping"
        finally:
            await ws.close()

        # the CLI: `kubevisor port-forward vmi/vm1 0:PORT` listens locally, each connection a stream
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubevisor.cli.main", "port-forward", "vmi/vm1", f"0:{tcp_port}",
            "--kubeconfig", str(plat.kubeconfig),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert cli.stdout is not None
            line = (await asyncio.wait_for(cli.stdout.readline(), 30)).decode()
            assert line.startswith("Forwarding from 127.0.0.1:") and line.strip().endswith(f"-> {tcp_port}")
            local = int(line.split(":")[1].split()[0])
            for text in (b"one", b"two"):
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
                writer.write(text)
                assert await asyncio.wait_for(reader.readexactly(5 + len(text)), 10) == b"echo:" + text
                writer.close()
        finally:
            cli.kill()
            await cli.wait()

        # the CLI's console without a terminal: stdin goes to the guest until its end
        console = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubevisor.cli.main", "console", "vm1",
            "--kubeconfig", str(plat.kubeconfig),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert console.stdin is not None and console.stdout is not None and console.stderr is not None
        try:
            assert b"Successfully connected to vm1 console" in await asyncio.wait_for(
                console.stderr.readline(), 30
            )
            console.stdin.write(b"whoami\n")
            out = b""
            async with asyncio.timeout(10):
                while b"WHOAMI" not in out:
                    out += await console.stdout.read(1024)
            console.stdin.close()
            assert await asyncio.wait_for(console.wait(), 10) == 0
        finally:
            if console.returncode is None:
                console.kill()
                await console.wait()

    # pause and unpause: QMP stop/cont, then the controller is asked to write the condition
    await client.request("PUT", f"{SUB}/default/virtualmachineinstances/vm1/pause")
    assert guest.qmp is not None and await guest.qmp.status() == "paused"
    assert runtime.enqueued == ["default/vm1"]
    with pytest.raises(client_errors.ConflictError, match="already paused"):
        await client.request("PUT", f"{SUB}/default/virtualmachineinstances/vm1/pause")
    await client.request("PUT", f"{SUB}/default/virtualmachineinstances/vm1/unpause")
    assert await guest.qmp.status() == "running"
    with pytest.raises(client_errors.ConflictError, match="not paused"):
        await client.request("PUT", f"{SUB}/default/virtualmachineinstances/vm1/unpause")
    with pytest.raises(client_errors.ConflictError, match="guest agent is not connected"):
        await client.request("GET", f"{SUB}/default/virtualmachineinstances/vm1/guestosinfo")


async def test_errors_name_the_vmi(
    plat: Platform, client: Client, agent: tuple[AgentServer, FakeRuntime], run_dir: Path
) -> None:
    server, runtime = agent
    await make_node(client, server.port)
    config = client.config
    vmi_path = f"{SUB}/default/virtualmachineinstances"
    with pytest.raises(NotFoundError, match='"missing" not found'):
        await streaming.open_stream(config, f"{vmi_path}/missing/console")
    with pytest.raises(NotFoundError):
        await client.request("PUT", f"{vmi_path}/missing/pause")
    await make_vmi(client, "pending", "Scheduled")
    with pytest.raises(client_errors.ConflictError, match="default/pending is not running"):
        await streaming.open_stream(config, f"{vmi_path}/pending/vnc")
    with pytest.raises(client_errors.ConflictError, match="default/pending is not running"):
        await client.request("PUT", f"{vmi_path}/pending/pause")
    # Running in the API but not on the node: the agent says so
    await make_vmi(client, "ghost", "Running")
    with pytest.raises(client_errors.ConflictError, match="default/ghost is not running on this node"):
        await streaming.open_stream(config, f"{vmi_path}/ghost/console")
    # no address for port-forward
    add_guest(runtime, run_dir, "ghost")
    with pytest.raises(client_errors.ConflictError, match="has no IP address"):
        await streaming.open_stream(config, f"{vmi_path}/ghost/portforward/22")
    # a stream without a websocket, an unknown subresource
    with pytest.raises(client_errors.BadRequestError, match="websocket"):
        await client.request("GET", f"{vmi_path}/ghost/console")
    with pytest.raises(NotFoundError):
        await client.request("GET", f"{vmi_path}/ghost/teleport")
    # the node agent is gone
    await server.stop()
    with pytest.raises(ServerError, match="node agent of node node-a is unreachable") as err:
        await streaming.open_stream(config, f"{vmi_path}/ghost/console")
    assert err.value.status == 503


async def test_the_agent_accepts_only_the_apiserver(
    plat: Platform, agent: tuple[AgentServer, FakeRuntime]
) -> None:
    server, _ = agent
    assert plat.pki is not None
    url = f"https://127.0.0.1:{server.port}/healthz"
    # the admin's certificate is the cluster CA's too, but not the apiserver's: the connection is dropped
    async with httpx.AsyncClient(verify=plat.pki.client_ssl_context(), trust_env=False) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(url)
    anonymous = ssl.create_default_context(cafile=str(plat.pki.ca_cert))
    async with httpx.AsyncClient(verify=anonymous, trust_env=False) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(url)
    cert = plat.pki.directory / "apiserver-agent-client.crt"
    key = plat.pki.directory / "apiserver-agent-client.key"
    async with httpx.AsyncClient(verify=plat.pki.client_ssl_context(cert, key), trust_env=False) as http:
        assert (await http.get(url)).text == "ok"


async def test_discovery_lists_the_subresources(plat: Platform, client: Client) -> None:
    body = await client.request("GET", "/apis/subresources.kubevirt.io/v1")
    names = {r["name"]: r["verbs"] for r in body["resources"]}
    assert names["virtualmachineinstances/console"] == ["get"]
    assert names["virtualmachineinstances/pause"] == ["update"]
    assert names["virtualmachines/start"] == ["update"]
    assert {"virtualmachineinstances/vnc", "virtualmachineinstances/portforward"} <= set(names)
    group = await client.request("GET", "/apis/subresources.kubevirt.io")
    assert group["preferredVersion"]["groupVersion"] == "subresources.kubevirt.io/v1"
    groups = await client.request("GET", "/apis")
    assert "subresources.kubevirt.io" in {g["name"] for g in groups["groups"]}


def vm_manifest(name: str, namespace: str) -> Obj:
    return {
        "apiVersion": KV,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}},
        },
    }


async def test_rbac_a_user_of_namespace_a_cannot_touch_vms_of_namespace_b(
    plat: Platform, client: Client
) -> None:
    assert plat.pki is not None
    namespaces = client.resource("v1", "namespaces")
    for ns in ("team-a", "team-b"):
        await namespaces.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        await client.resource(KV, "virtualmachines").create(vm_manifest("vm", ns), ns)
    rbac = "rbac.authorization.k8s.io/v1"
    await client.resource(rbac, "roles").create(
        {
            "metadata": {"name": "vm-user"},
            "rules": [
                {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"], "verbs": ["get", "list"]},
                {
                    "apiGroups": ["subresources.kubevirt.io"],
                    "resources": ["virtualmachineinstances/console", "virtualmachineinstances/vnc"],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": ["subresources.kubevirt.io"],
                    "resources": [
                        "virtualmachineinstances/pause",
                        "virtualmachineinstances/unpause",
                        "virtualmachines/start",
                        "virtualmachines/stop",
                    ],
                    "verbs": ["update"],
                },
            ],
        },
        "team-a",
    )
    await client.resource(rbac, "rolebindings").create(
        {
            "metadata": {"name": "alice"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vm-user"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}],
        },
        "team-a",
    )
    cert, key = issue_client_cert(plat.pki, "alice", ["developers"])
    alice = Config(server=plat.url, ca_data=plat.pki.ca_pem(), client_cert_data=cert, client_key_data=key)
    async with Client(alice) as user:
        # namespace A: allowed (answers are about the VM's state, not permissions)
        assert (await user.resource(KV, "virtualmachines").get("vm", "team-a"))["metadata"]["name"] == "vm"
        with pytest.raises(NotFoundError):  # a Halted VM has no VMI
            await streaming.open_stream(alice, f"{SUB}/team-a/virtualmachineinstances/vm/console")
        with pytest.raises(NotFoundError):
            await user.request("PUT", f"{SUB}/team-a/virtualmachineinstances/vm/pause")
        with pytest.raises(client_errors.ConflictError, match="not running"):
            await user.request("PUT", f"{SUB}/team-a/virtualmachines/vm/stop")
        # namespace B: forbidden, all of it
        with pytest.raises(ForbiddenError):
            await user.resource(KV, "virtualmachines").get("vm", "team-b")
        with pytest.raises(ForbiddenError, match="virtualmachineinstances/console"):
            await streaming.open_stream(alice, f"{SUB}/team-b/virtualmachineinstances/vm/console")
        with pytest.raises(ForbiddenError, match="virtualmachineinstances/pause"):
            await user.request("PUT", f"{SUB}/team-b/virtualmachineinstances/vm/pause")
        with pytest.raises(ForbiddenError, match="virtualmachines/stop"):
            await user.request("PUT", f"{SUB}/team-b/virtualmachines/vm/stop")
    # anonymous: 401 before anything else
    async with client_for(plat) as anonymous:
        r = await anonymous.put(f"{SUB}/team-a/virtualmachineinstances/vm/pause")
        assert r.status_code == 401
