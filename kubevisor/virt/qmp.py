"""A QMP session with one QEMU, on ``qemu.qmp`` (QEMU's own asyncio QMP library).

Why a wrapper: the driver needs a few things the library leaves to its caller, always done the same way:
connecting while QEMU is still starting (retry until the socket answers, with a deadline, giving up early
if the process died), the handful of commands the lifecycle uses, waiting for an event with a deadline,
and shutting down without tripping on the end of the connection (after ``quit`` QEMU hangs up, and the
library reports that as ``EOFError``).

Errors: :class:`QmpError` for anything the caller should act on (not reachable, command refused, the
connection dropped); the library's exception is kept as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    QMPClient,
    QMPError,
    Runstate,
)

__all__ = ["EventListener", "QmpError", "Session"]

RETRY_INTERVAL = 0.05
FAST_RETRY_INTERVAL = 0.005
FAST_RETRY_PERIOD = 1.0
"""For its first second a connect retries every 5 ms: a starting QEMU opens its socket ~50 ms after exec and
waits paused (``-S``) until the driver connects, so every ms of polling delay is a ms of start latency."""


class QmpError(Exception):
    """A QMP operation failed; the message names the socket and the operation."""


class Session:
    """One QMP connection to one QEMU. Use ``async with Session(path) as qmp`` or connect()/close()."""

    def __init__(self, socket: Path, *, name: str = "kubevisor") -> None:
        self.socket = socket
        """The QMP unix socket."""
        self._client = QMPClient(name)

    async def connect(self, timeout: float = 10.0, *, alive: Callable[[], bool] | None = None) -> None:
        """Connect, retrying until the socket answers or ``timeout`` seconds pass; stop early when
        ``alive()`` says the QEMU process is gone."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            error: Exception | None = None
            if _exists(self.socket):  # the library logs every failed attempt as an error: avoid the noise
                logger = self._client.logger  # and a socket bound but not yet listening is refused: quiet
                level = logger.level
                logger.setLevel(logging.CRITICAL)
                try:
                    await self._client.connect(str(self.socket))
                    return
                except ConnectError as e:
                    error = e
                finally:
                    logger.setLevel(level)
            if alive is not None and not alive():
                raise QmpError(f"QMP {self.socket}: QEMU exited before it answered") from error
            if time.monotonic() >= deadline:
                raise QmpError(
                    f"QMP {self.socket}: not reachable after {timeout:g} s: {error or 'no socket'}"
                ) from error
            fast = time.monotonic() - started < FAST_RETRY_PERIOD
            await asyncio.sleep(FAST_RETRY_INTERVAL if fast else RETRY_INTERVAL)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run a QMP command and return its ``return`` value."""
        try:
            return await self._client.execute(command, arguments)
        except ExecuteError as e:
            raise QmpError(f"QMP {self.socket}: {command} refused: {e.error_class}: {e}") from e
        except (QMPError, EOFError, OSError) as e:
            raise QmpError(f"QMP {self.socket}: {command} failed: {e!r}") from e

    async def status(self) -> str:
        """The VM run state from ``query-status``: ``running``, ``paused``, ``prelaunch``, ``shutdown``..."""
        reply = cast(dict[str, Any], await self.execute("query-status"))
        return str(reply["status"])

    async def cont(self) -> None:
        """Start or resume the vCPUs."""
        await self.execute("cont")

    async def stop(self) -> None:
        """Pause the vCPUs."""
        await self.execute("stop")

    async def system_powerdown(self) -> None:
        """Press the ACPI power button; the guest decides whether and when it powers off."""
        await self.execute("system_powerdown")

    async def system_reset(self) -> None:
        """Hard reset of the guest."""
        await self.execute("system_reset")

    async def quit(self) -> None:
        """Make QEMU exit now, then close the session (QEMU hanging up is the expected outcome)."""
        with contextlib.suppress(ExecInterruptedError, EOFError, ConnectionError):
            await self._client.execute("quit")
        await self.close()

    @contextlib.contextmanager
    def listen(self, *names: str) -> Iterator[EventListener]:
        """Collect the named events (all events if none) while the block runs: open it before the action
        whose event you wait for, then :meth:`wait_event`."""
        listener = EventListener(names or None)
        with self._client.listen(listener):
            yield listener

    async def wait_event(self, listener: EventListener, name: str, timeout: float) -> dict[str, Any]:
        """The next event called ``name`` that ``listener`` collected, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(listener.get(), max(remaining, 0))
            except TimeoutError as e:
                raise QmpError(f"QMP {self.socket}: no {name} event within {timeout:g} s") from e
            if event["event"] == name:
                return dict(event)

    @property
    def connected(self) -> bool:
        """Whether the session is up (QEMU has not hung up, and :meth:`close` was not called)."""
        return self._client.runstate == Runstate.RUNNING

    async def wait_hangup(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for QEMU to hang up (it is exiting); whether it did. Once it has,
        every event QEMU sent before exiting has reached the listeners."""
        try:
            async with asyncio.timeout(timeout):
                while self._client.runstate in (Runstate.RUNNING, Runstate.CONNECTING):
                    await self._client.runstate_changed()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Disconnect. QEMU having hung up first (it quit, or was killed) is not an error here."""
        with contextlib.suppress(EOFError, ConnectionError):
            await self._client.disconnect()

    async def __aenter__(self) -> Session:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _exists(path: Path) -> bool:
    return path.exists()
