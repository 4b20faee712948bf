"""The virtctl-like VMI commands: ``pause``, ``unpause``, ``console``, ``vnc``, ``guestosinfo`` and
``port-forward``, over KubeVirt's ``subresources.kubevirt.io`` API (the apiserver proxies them to the
VMI's node agent).

- ``console NAME``: the serial console in a raw terminal; ``Ctrl+]`` ends it (as in virtctl). Without a
  terminal (a pipe), stdin is sent as it is and the command ends at its end of file.
- ``vnc NAME``: a VNC server on ``127.0.0.1:PORT`` (``--port``, default a free one, printed) whose every
  client is connected to the VMI's screen; ``vnc NAME --screenshot FILE.png`` saves the screen instead.
- ``port-forward vmi/NAME LOCAL:REMOTE...``: listens on ``127.0.0.1:LOCAL``; each connection opens a
  portforward stream to the VMI's port REMOTE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from kubevisor.client import Config

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("pause", "unpause", "console", "vnc", "guestosinfo", "port-forward")
ESCAPE = 0x1D
"""Ctrl+]: ends ``console``."""
BUFFER = 64 * 1024


def _common(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-n", "--namespace", default="default")
    cmd.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb in ("pause", "unpause"):
        cmd = sub.add_parser(verb, help=f"{verb} a VirtualMachineInstance (QEMU stop/cont on its node)")
        cmd.add_argument("kind", choices=["vmi", "vm"], help="vmi, or vm for the VM's VMI (as virtctl)")
        cmd.add_argument("name")
        _common(cmd)
    cmd = sub.add_parser("console", help="connect to a VMI's serial console (Ctrl+] to leave)")
    cmd.add_argument("name", help="VirtualMachineInstance name")
    _common(cmd)
    cmd = sub.add_parser("vnc", help="serve a VMI's screen to a local VNC client, or save a screenshot")
    cmd.add_argument("name", help="VirtualMachineInstance name")
    cmd.add_argument("--port", type=int, default=0, help="local port (default: a free one)")
    cmd.add_argument("--address", default="127.0.0.1", help="local address to listen on")
    cmd.add_argument("--screenshot", type=Path, default=None, metavar="FILE.png", help="save the screen")
    _common(cmd)
    cmd = sub.add_parser("guestosinfo", help="the guest agent's OS information of a VMI")
    cmd.add_argument("name", help="VirtualMachineInstance name")
    _common(cmd)
    cmd = sub.add_parser("port-forward", help="forward local ports to a VMI's ports")
    cmd.add_argument("target", help="vmi/NAME or vm/NAME (the VM's VMI)")
    cmd.add_argument("ports", nargs="+", metavar="LOCAL:REMOTE", help="e.g. 8080:80 (LOCAL 0: a free port)")
    cmd.add_argument("--address", default="127.0.0.1", help="local address to listen on")
    _common(cmd)


def _vmi_path(namespace: str, name: str, sub: str) -> str:
    return f"/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances/{name}/{sub}"


def run(args: argparse.Namespace, kubeconfig: str) -> int:
    """Run one of :data:`COMMANDS`; the exit code."""
    from kubevisor.client import ClientError, KubeconfigError

    try:
        return asyncio.run(_run(args, kubeconfig))
    except (ClientError, KubeconfigError, OSError, ValueError) as exc:
        print(f"kubevisor {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace, kubeconfig: str) -> int:
    from kubevisor.client import kubeconfig as kc

    config = kc.load(kubeconfig)
    if args.command in ("pause", "unpause"):
        return await _action(config, args)
    if args.command == "guestosinfo":
        return await _guestosinfo(config, args)
    if args.command == "console":
        return await _console(config, args.namespace, args.name)
    if args.command == "vnc":
        if args.screenshot is not None:
            return await _screenshot(config, args.namespace, args.name, args.screenshot)
        return await _vnc_proxy(config, args)
    if args.command == "port-forward":
        return await _port_forward(config, args)
    return 2


async def _action(config: Config, args: argparse.Namespace) -> int:
    from kubevisor.client import ApiError, Client

    async with Client(config) as client:
        try:
            await client.request("PUT", _vmi_path(args.namespace, args.name, args.command))
        except ApiError as exc:
            print(
                f"Error {args.command[:-1]}ing VirtualMachineInstance {args.namespace}/{args.name}: {exc}",
                file=sys.stderr,
            )
            return 1
    print(f"VMI {args.name} was scheduled to {args.command}")
    return 0


async def _guestosinfo(config: Config, args: argparse.Namespace) -> int:
    from kubevisor.client import Client

    async with Client(config) as client:
        info = await client.request("GET", _vmi_path(args.namespace, args.name, "guestosinfo"))
    print(json.dumps(info, indent=2))
    return 0


async def _open(config: Config, namespace: str, name: str, sub: str) -> ClientConnection:
    from kubevisor.client import streaming

    return await streaming.open_stream(config, _vmi_path(namespace, name, sub))


async def _splice_socket(
    ws: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy a local TCP connection and a stream both ways until either ends."""

    async def up() -> None:
        while data := await reader.read(BUFFER):
            await ws.send(data)

    async def down() -> None:
        async for message in ws:
            writer.write(message if isinstance(message, bytes) else message.encode())
            await writer.drain()

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# --- console ------------------------------------------------------------------------------------------


async def _console(config: Config, namespace: str, name: str) -> int:
    ws = await _open(config, namespace, name, "console")
    stdin = sys.stdin.fileno()
    tty = os.isatty(stdin)
    print(f"Successfully connected to {name} console. The escape sequence is ^]", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(stdin, BUFFER)
        except OSError:
            data = b""
        keys.put_nowait(data)
        if not data:
            loop.remove_reader(stdin)

    async def up() -> None:
        while True:
            data = await keys.get()
            if not data:
                return
            if tty and ESCAPE in data:
                data = data[: data.index(ESCAPE)]
                if data:
                    await ws.send(data)
                return
            await ws.send(data)

    async def down() -> None:
        out = sys.stdout.buffer
        async for message in ws:
            out.write(message if isinstance(message, bytes) else message.encode())
            out.flush()

    saved = None
    if tty:
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(stdin)
        ttymod.setraw(stdin)
    loop.add_reader(stdin, readable)
    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(stdin)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
    print("", file=sys.stderr)
    return 0


# --- vnc ----------------------------------------------------------------------------------------------


async def _screenshot(config: Config, namespace: str, name: str, path: Path) -> int:
    from kubevisor.cli import rfb

    ws = await _open(config, namespace, name, "vnc")
    try:

        async def recv() -> bytes:
            message = await ws.recv()
            return message if isinstance(message, bytes) else message.encode()

        async def send(data: bytes) -> None:
            await ws.send(data)

        frame = await asyncio.wait_for(rfb.screenshot(recv, send), 30)
    finally:
        await ws.close()
    await asyncio.to_thread(path.write_bytes, frame.png())
    print(f"{path}: {frame.width}x{frame.height} screenshot of {namespace}/{name}")
    return 0


async def _vnc_proxy(config: Config, args: argparse.Namespace) -> int:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ws = await _open(config, args.namespace, args.name, "vnc")
        except Exception as exc:
            print(f"kubevisor vnc: {exc}", file=sys.stderr, flush=True)
            writer.close()
            return
        await _splice_socket(ws, reader, writer)

    server = await asyncio.start_server(handle, args.address, args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"VNC server for {args.namespace}/{args.name} listening on {args.address}:{port}", flush=True)
    async with server:
        await server.serve_forever()
    return 0


# --- port-forward -------------------------------------------------------------------------------------


def parse_target(target: str) -> str:
    """The VMI name of ``vmi/NAME`` or ``vm/NAME`` (a VM's VMI has its name)."""
    kind, sep, name = target.partition("/")
    if not sep or kind not in ("vmi", "vm", "virtualmachineinstance", "virtualmachine") or not name:
        raise ValueError(f"{target!r}: expected vmi/NAME or vm/NAME")
    return name


def parse_ports(spec: str) -> tuple[int, int]:
    """``LOCAL:REMOTE`` (or ``PORT`` for both) as (local, remote)."""
    local, sep, remote = spec.partition(":")
    if not sep:
        remote = local
    if not (local.isdigit() and remote.isdigit()) or int(local) > 65535 or not 0 < int(remote) <= 65535:
        raise ValueError(f"{spec!r}: expected LOCAL:REMOTE ports, e.g. 8080:80")
    return int(local), int(remote)


async def _port_forward(config: Config, args: argparse.Namespace) -> int:
    name = parse_target(args.target)
    servers = []
    for spec in args.ports:
        local, remote = parse_ports(spec)

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: int = remote
        ) -> None:
            try:
                ws = await _open(config, args.namespace, name, f"portforward/{remote}")
            except Exception as exc:
                print(f"kubevisor port-forward: {exc}", file=sys.stderr, flush=True)
                writer.close()
                return
            await _splice_socket(ws, reader, writer)

        server = await asyncio.start_server(handle, args.address, local)
        port = server.sockets[0].getsockname()[1]
        print(f"Forwarding from {args.address}:{port} -> {remote}", flush=True)
        servers.append(server)
    try:
        await asyncio.gather(*(s.serve_forever() for s in servers))
    finally:
        for s in servers:
            s.close()
    return 0
