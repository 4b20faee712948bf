"""The node agent's side of each guest's qemu-ga: whether it is connected, and what it says.

Why a follower per guest: a guest agent comes and goes with the guest (it starts late in boot, stops at
shutdown, restarts on reboot), and the node agent must know without polling. QEMU says so on QMP:
``VSERPORT_CHANGE`` when the guest opens or closes the ``org.qemu.guest_agent.0`` port, and
``query-chardev``'s ``frontend-open`` for the state at the time the node agent connects (an adopted
QEMU's guest opened it long ago). When the port opens, the follower connects to the channel socket and
resynchronizes (:meth:`GuestAgent.sync`); only an answer makes it :attr:`AgentChannel.connected`. Every
change wakes the VMI's key, so the reconciler writes the ``AgentConnected`` condition and ``guestOSInfo``
(level-based: it reads :attr:`connected` and :attr:`os_info`, never the event).

The follower runs as one task per guest and ends with :meth:`AgentChannel.stop` (the guest's QMP session
closing ends it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubevisor.virt import guestagent, qemucmd
from kubevisor.virt.qmp import QmpError, Session

__all__ = ["AgentChannel", "os_info_status"]

log = logging.getLogger(__name__)

CHARDEV_ID = "qga0"
SYNC_TIMEOUT = 5.0
SYNC_ATTEMPTS = 6
"""qemu-ga may open its port a moment before it reads from it: that many syncs before giving up."""


class AgentChannel:
    """Follows one guest's qemu-ga (see the module docstring)."""

    def __init__(self, key: str, qmp: Session, socket: Path, wake: Callable[[], None]) -> None:
        self.key = key
        self.qmp = qmp
        self.socket = socket
        self.wake = wake
        """Called after every change of :attr:`connected` (enqueues the VMI's key)."""
        self.agent: guestagent.GuestAgent | None = None
        """The session with qemu-ga while it is connected."""
        self.os_info: dict[str, Any] | None = None
        """KubeVirt's guestosinfo as read when the agent connected."""
        self._task: asyncio.Task[None] | None = None
        self._stack = contextlib.ExitStack()

    @property
    def connected(self) -> bool:
        return self.agent is not None and self.agent.connected

    def start(self) -> None:
        listener = self._stack.enter_context(self.qmp.listen("VSERPORT_CHANGE"))
        self._task = asyncio.get_running_loop().create_task(
            self._follow(listener), name=f"guest-agent {self.key}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stack.close()
        await self._disconnect(wake=False)

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> Any:
        """Run a qemu-ga command; :class:`~kubevisor.virt.guestagent.GuestAgentError` when not connected."""
        agent = self.agent
        if agent is None:
            raise guestagent.GuestAgentError(f"VMI {self.key}: the guest agent is not connected")
        return await agent.execute(command, arguments)

    async def guest_os_info(self) -> dict[str, Any]:
        """KubeVirt's guestosinfo, read now."""
        agent = self.agent
        if agent is None:
            raise guestagent.GuestAgentError(f"VMI {self.key}: the guest agent is not connected")
        return await guestagent.guest_os_info(agent)

    async def _port_open(self) -> bool:
        try:
            chardevs = await self.qmp.execute("query-chardev")
        except QmpError:
            return False
        return any(c.get("label") == CHARDEV_ID and c.get("frontend-open") for c in chardevs or [])

    async def _follow(self, listener: Any) -> None:
        is_open = await self._port_open()
        while True:
            if is_open and not self.connected:
                await self._connect()
            elif not is_open and self.agent is not None:
                await self._disconnect(wake=True)
            event = await listener.get()
            data = event.get("data") or {}
            if data.get("id") == qemucmd.GUEST_AGENT_PORT_ID:
                is_open = bool(data.get("open"))

    async def _connect(self) -> None:
        agent = guestagent.GuestAgent(self.socket)
        try:
            for _ in range(SYNC_ATTEMPTS):
                try:
                    await agent.sync(SYNC_TIMEOUT)
                    info = await guestagent.guest_os_info(agent)
                except guestagent.GuestAgentError as e:
                    log.debug("VMI %s: guest agent not answering yet: %s", self.key, e)
                    continue
                self.agent, self.os_info = agent, info
                log.info("VMI %s: guest agent %s connected", self.key, info.get("guestAgentVersion"))
                self.wake()
                return
        except BaseException:  # cancelled (the guest is let go) while syncing
            await agent.close()
            raise
        await agent.close()
        log.warning("VMI %s: the guest opened its agent port but qemu-ga does not answer", self.key)

    async def _disconnect(self, *, wake: bool) -> None:
        agent, self.agent, self.os_info = self.agent, None, None
        if agent is not None:
            await agent.close()
            if wake:
                self.wake()


def os_info_status(info: dict[str, Any] | None) -> dict[str, Any]:
    """The VMI's ``status.guestOSInfo`` from guestosinfo (empty without a guest agent, as KubeVirt)."""
    os_ = (info or {}).get("os") or {}
    keys = ("id", "kernelRelease", "kernelVersion", "machine", "name", "prettyName", "version", "versionId")
    return {k: os_[k] for k in keys if os_.get(k)}
