"""A client of the QEMU guest agent (``qemu-ga``) over the VM's guest-agent channel.

Why it exists: KubeVirt reports ``AgentConnected``, ``guestosinfo``, the guest's interfaces and freezes
file systems for snapshots through qemu-ga. QEMU exposes the guest's ``org.qemu.guest_agent.0``
virtio-serial port as a unix socket in the run directory (:attr:`kubevisor.virt.domain.RunPaths.qga`);
this module speaks qemu-ga's protocol on it. ``qemu.qmp`` cannot: qemu-ga sends no greeting and has no
capabilities negotiation.

The protocol (qemu-ga's reference, "guest-sync-delimited"): one JSON command per line in, one JSON
response per line out; no ids on responses, so a response that arrives after its command timed out
would be taken for the next command's. Hence every session, and every command after a timeout, starts
with ``guest-sync-delimited`` and a random id: the agent answers with a ``0xFF`` byte then
``{"return": id}``, and everything before it is stale and dropped. A ``0xFF`` sent to the agent resets its
parser, should a partial command be stuck in it.

Whether a guest agent runs at all is not something the socket says (QEMU accepts the connection either
way; bytes wait until the guest opens the port). The node agent learns it from QMP's ``VSERPORT_CHANGE``
event and from :meth:`GuestAgent.sync` answering within its deadline.

Errors: :class:`GuestAgentError` (not connected, no answer in time, the command refused, the connection
dropped); the cause is kept as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CHANNEL_NAME",
    "GuestAgent",
    "GuestAgentError",
    "guest_os_info",
]

CHANNEL_NAME = "org.qemu.guest_agent.0"
"""The virtio-serial port name qemu-ga looks for in the guest."""
DELIMITER = b"\xff"
DEFAULT_TIMEOUT = 5.0
MAX_LINE = 4 * 1024 * 1024


class GuestAgentError(Exception):
    """A guest agent operation failed; the message names the socket and the command."""


class GuestAgent:
    """One connection to one guest's qemu-ga: ``await connect()``, :meth:`execute`, ``await close()``.

    Commands are serialized (the protocol has one command in flight); after any failure the next command
    resynchronizes first.
    """

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        """QEMU's unix socket for the guest agent channel."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._synced = False

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        """Open the socket (QEMU's side is a listening server); does not wait for the guest."""
        if self.connected:
            return
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.socket), limit=MAX_LINE)
        except OSError as e:
            raise GuestAgentError(f"guest agent {self.socket}: cannot connect: {e}") from e
        self._synced = False

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        self._synced = False
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    async def __aenter__(self) -> GuestAgent:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def sync(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Resynchronize: whatever the agent sent before is dropped. Raises when no agent answers."""
        async with self._lock:
            await self._sync(timeout)

    async def _sync(self, timeout: float) -> None:
        await self.connect()
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        token = secrets.randbelow(2**31)
        command = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        try:
            writer.write(DELIMITER + json.dumps(command).encode() + b"\n")
            await writer.drain()
            async with asyncio.timeout(timeout):
                while True:
                    await reader.readuntil(DELIMITER)
                    line = await reader.readline()
                    with contextlib.suppress(ValueError):
                        if json.loads(line).get("return") == token:
                            break
        except TimeoutError as e:
            self._synced = False
            raise GuestAgentError(
                f"guest agent {self.socket}: no answer within {timeout:g} s (is qemu-ga running in the "
                "guest?)"
            ) from e
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            await self.close()
            raise GuestAgentError(f"guest agent {self.socket}: connection lost: {e!r}") from e
        self._synced = True

    async def execute(
        self, command: str, arguments: Mapping[str, object] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """Run ``command`` and return its ``return`` value; :class:`GuestAgentError` on any failure."""
        async with self._lock:
            if not self._synced:
                await self._sync(timeout)
            reader, writer = self._reader, self._writer
            assert reader is not None and writer is not None
            message: dict[str, object] = {"execute": command}
            if arguments:
                message["arguments"] = dict(arguments)
            try:
                writer.write(json.dumps(message).encode() + b"\n")
                await writer.drain()
                async with asyncio.timeout(timeout):
                    line = await reader.readline()
            except TimeoutError as e:
                self._synced = False  # a late answer must not be taken for the next command's
                raise GuestAgentError(
                    f"guest agent {self.socket}: {command}: no answer within {timeout:g} s"
                ) from e
            except (OSError, ConnectionError, asyncio.LimitOverrunError, ValueError) as e:
                await self.close()
                raise GuestAgentError(f"guest agent {self.socket}: {command}: connection lost: {e!r}") from e
            if not line:
                await self.close()
                raise GuestAgentError(f"guest agent {self.socket}: {command}: connection closed")
            try:
                response = json.loads(line.lstrip(DELIMITER))
            except ValueError as e:
                self._synced = False
                raise GuestAgentError(f"guest agent {self.socket}: {command}: not JSON: {line!r}") from e
            if not isinstance(response, dict):
                self._synced = False
                raise GuestAgentError(f"guest agent {self.socket}: {command}: unexpected {response!r}")
            if "error" in response:
                error = response["error"] or {}
                raise GuestAgentError(
                    f"guest agent {self.socket}: {command} refused: {error.get('class', 'Error')}: "
                    f"{error.get('desc', '')}"
                )
            return response.get("return")

    async def try_execute(self, command: str, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """:meth:`execute`, but None when the guest agent refuses or does not know the command."""
        try:
            return await self.execute(command, timeout=timeout)
        except GuestAgentError:
            if not self.connected:
                raise
            return None


async def guest_os_info(agent: GuestAgent, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """KubeVirt's ``VirtualMachineInstanceGuestAgentInfo`` (what ``guestosinfo`` answers) from qemu-ga.

    Commands the guest's agent does not support are left out of the answer rather than failing it.
    """
    info = await agent.execute("guest-info", timeout=timeout) or {}
    supported = [
        {"name": c.get("name"), "enabled": bool(c.get("enabled"))}
        for c in info.get("supported_commands") or []
        if isinstance(c, dict)
    ]
    result: dict[str, Any] = {"guestAgentVersion": info.get("version", ""), "supportedCommands": supported}
    osinfo = await agent.try_execute("guest-get-osinfo", timeout=timeout)
    if isinstance(osinfo, dict):
        result["os"] = {
            "name": osinfo.get("name", ""),
            "kernelRelease": osinfo.get("kernel-release", ""),
            "version": osinfo.get("version", ""),
            "prettyName": osinfo.get("pretty-name", ""),
            "versionId": osinfo.get("version-id", ""),
            "kernelVersion": osinfo.get("kernel-version", ""),
            "machine": osinfo.get("machine", ""),
            "id": osinfo.get("id", ""),
        }
    host = await agent.try_execute("guest-get-host-name", timeout=timeout)
    if isinstance(host, dict):
        result["hostname"] = host.get("host-name", "")
    zone = await agent.try_execute("guest-get-timezone", timeout=timeout)
    if isinstance(zone, dict):
        result["timezone"] = f"{zone.get('zone', '')}, {zone.get('offset', 0)}"
    users = await agent.try_execute("guest-get-users", timeout=timeout)
    if isinstance(users, list):
        result["userList"] = [
            {
                "userName": u.get("user", ""),
                "domain": u.get("domain", ""),
                "loginTime": u.get("login-time", 0),
            }
            for u in users
            if isinstance(u, dict)
        ]
    fs = await agent.try_execute("guest-get-fsinfo", timeout=timeout)
    if isinstance(fs, list):
        result["fsInfo"] = {
            "disks": [
                {
                    "diskName": f.get("name", ""),
                    "mountPoint": f.get("mountpoint", ""),
                    "fileSystemType": f.get("type", ""),
                    "totalBytes": f.get("total-bytes", 0),
                    "usedBytes": f.get("used-bytes", 0),
                }
                for f in fs
                if isinstance(f, dict)
            ]
        }
    return result
