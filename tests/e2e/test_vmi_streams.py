"""A VMI's console, pause/unpause and VNC end to end: the real platform boots the test guest, and every
request goes user -> apiserver (RBAC, subresources.kubevirt.io) -> node agent server (mutual TLS) -> QEMU.

One guest serves every check: the serial console over the websocket (the guest's ready marker, then a
command typed and its output), port-forward to the guest's HTTP server on the pod network (in a network
namespace of the test), guestosinfo from the guest's qemu-ga, pause and unpause (the VMI's Paused
condition, the VM's printableStatus, QEMU's run state; the console answers again afterwards), and a VNC
screenshot taken by the CLI (``kubevisor vnc NAME --screenshot``), a PNG of the size of the guest's screen
as QEMU's own screendump reports it; and a stop while paused, which still powers the guest off
gracefully. RBAC and the error answers are covered by tests/integration/apiserver/test_vmi_subresources.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import struct
import zlib
from collections.abc import AsyncIterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from kubevisor.cli.main import main as cli
from kubevisor.client import Client, streaming
from kubevisor.platform import Platform
from kubevisor.testing import guest
from tests.e2e import libnet, libvmi
from tests.e2e.test_vm_lifecycle import new_platform

pytestmark = pytest.mark.e2e

POD_CIDR = IPv4Network("10.245.0.0/24")
SUB = f"/apis/subresources.kubevirt.io/v1/namespaces/{libvmi.NAMESPACE}/virtualmachineinstances"


@pytest.fixture
async def plat(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Platform]:
    """The platform, its node's pod network in a network namespace of the test (for port-forward)."""
    async with libnet.Namespaces() as namespaces:
        node_ns = await namespaces.add("node")
        platform = new_platform(data_dir, test_guest)
        assert platform.agent_config is not None
        platform.agent_config = dataclasses.replace(
            platform.agent_config, pod_network=True, pod_cidr=POD_CIDR, network_namespace=node_ns
        )
        await platform.start()
        try:
            yield platform
        finally:
            await platform.stop()
            libvmi.kill_qemus(data_dir)


class WsConsole:
    """The console websocket, with everything read kept (carriage returns dropped)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.text = ""

    async def wait_for(self, pattern: str, timeout: float) -> str:
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(timeout):
                while not regex.search(self.text):
                    self.text += (await self.ws.recv()).decode(errors="replace").replace("\r", "")
        except TimeoutError:
            tail = self.text[-2000:]
            raise AssertionError(f"no {pattern!r} on the console within {timeout:g} s:\n{tail}") from None
        return self.text

    async def type(self, text: str) -> None:
        await self.ws.send(text.encode())


def paused_condition(vmi: dict[str, Any]) -> dict[str, Any] | None:
    conditions = (vmi.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Paused"), None)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its chunks' CRCs and that its pixel data is complete."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert (depth, color) == (8, 2)
            size = (width, height)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert len(zlib.decompress(idat)) == size[1] * (1 + size[0] * 3)
    return size


async def test_console_pause_and_vnc(plat: Platform, client: Client, data_dir: Path) -> None:
    name = "streams"
    await client.resource(libvmi.KV, "virtualmachines").create(libvmi.vm_manifest(name), libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name)
    assert plat.agent is not None and plat.agent.vmis is not None
    qemu = plat.agent.vmis.guests[f"{libvmi.NAMESPACE}/{name}"].qmp
    assert qemu is not None

    kubeconfig = str(plat.kubeconfig)

    # the console, from the guest's boot on: its ready marker, then a command and its output
    ws = await streaming.open_stream(client.config, f"{SUB}/{name}/console")
    console = WsConsole(ws)
    try:
        assert ws.subprotocol == "plain.kubevirt.io"
        await console.wait_for(guest.READY_MARKER, 90)
        await console.type("echo console says $((6 * 7))\n")
        await console.wait_for(r"console says 42", 20)

        # port-forward to the guest's HTTP server on the pod network, once its DHCP client is done
        await console.wait_for(guest.IP_MARKER, 60)
        forward = await streaming.open_stream(client.config, f"{SUB}/{name}/portforward/80")
        try:
            await forward.send(b"GET / HTTP/1.0\r\n\r\n")
            answer = b""
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(20):
                    while b"\r\n" not in answer:
                        answer += await forward.recv(decode=False)
            assert answer.startswith(b"HTTP/1."), answer
        finally:
            await forward.close()

        # guestosinfo, from the guest's qemu-ga once the VMI says the agent is connected
        vmis = client.resource(libvmi.KV, "virtualmachineinstances")
        await libvmi.until(
            lambda: vmis.get(name, libvmi.NAMESPACE),
            lambda o: any(
                c.get("type") == "AgentConnected" and c.get("status") == "True"
                for c in (o.get("status") or {}).get("conditions") or []
            ),
            60,
            "VMI AgentConnected",
        )
        info = await client.request("GET", f"{SUB}/{name}/guestosinfo")
        assert info["guestAgentVersion"] and info["supportedCommands"], info

        # pause: QEMU stops, the VMI says Paused, the VM prints Paused
        assert await asyncio.to_thread(cli, ["pause", "vmi", name, "--kubeconfig", kubeconfig]) == 0
        assert await qemu.status() == "paused"
        vmi = await libvmi.until(
            lambda: vmis.get(name, libvmi.NAMESPACE),
            lambda o: (paused_condition(o) or {}).get("status") == "True",
            20,
            "VMI Paused condition",
        )
        assert (paused_condition(vmi) or {}).get("reason") == "PausedByUser"
        await libvmi.vm_printable(client, name, "Paused", timeout=20)
        # pausing twice is refused, with the VMI named
        assert await asyncio.to_thread(cli, ["pause", "vm", name, "--kubeconfig", kubeconfig]) == 1

        # unpause: running again, the condition gone, and the console answers
        assert await asyncio.to_thread(cli, ["unpause", "vm", name, "--kubeconfig", kubeconfig]) == 0
        assert await qemu.status() == "running"
        await libvmi.until(
            lambda: vmis.get(name, libvmi.NAMESPACE),
            lambda o: paused_condition(o) is None,
            20,
            "VMI Paused condition removed",
        )
        await libvmi.vm_printable(client, name, "Running", timeout=20)
        await console.type("echo awake again\n")
        await console.wait_for("awake again\n", 20)
    finally:
        await ws.close()

    # the serial log still has everything
    assert "console says 42" in libvmi.read_log(libvmi.run_dir(data_dir, name) / "serial.log")

    # a VNC screenshot through the CLI: a PNG of the guest's screen size (QEMU's own screendump's)
    png = data_dir / "screen.png"
    code = await asyncio.to_thread(cli, ["vnc", name, "--screenshot", str(png), "--kubeconfig", kubeconfig])
    assert code == 0
    ppm = libvmi.run_dir(data_dir, name) / "screen.ppm"
    await qemu.execute("screendump", {"filename": str(ppm)})
    magic, width, height = ppm.read_bytes().split(maxsplit=3)[:3]
    assert magic == b"P6"
    assert png_size(png.read_bytes()) == (int(width), int(height))

    # stopping a paused VM is still graceful: the agent resumes it for the ACPI power button
    assert await asyncio.to_thread(cli, ["pause", "vmi", name, "--kubeconfig", kubeconfig]) == 0
    await libvmi.vm_action(client, name, "stop")
    await libvmi.vm_printable(client, name, "Stopped", timeout=30)
    stopped = [e for e in await libvmi.events_for(client, name) if e["reason"] == "Stopped"]
    assert stopped and "The guest powered off" in stopped[-1]["message"], stopped
