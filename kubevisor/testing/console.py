"""libconsole: read a guest's serial console from QEMU's console socket, waiting with deadlines.

A :class:`Console` keeps everything it has read (``text``), so a test can wait for a line and later
assert on what came before it without racing the guest.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from types import TracebackType

__all__ = ["Console", "ConsoleTimeout"]


class ConsoleTimeout(AssertionError):
    """The expected output did not appear in time; the message holds the console's tail."""


class Console:
    """A connection to a serial console unix socket (QEMU's ``-chardev socket,server=on``)."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        """The console socket."""
        self.text = ""
        """Everything read so far (decoded, carriage returns dropped)."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect, retrying until the socket accepts or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.socket))
                return
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if time.monotonic() >= deadline:
                    raise ConsoleTimeout(f"console {self.socket}: not reachable after {timeout:g} s") from e
                await asyncio.sleep(0.05)

    async def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Read until the regular expression ``pattern`` matches a complete line; return the match."""
        assert self._reader is not None, "connect() first"
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        scanned = 0
        while True:
            lines = self.text[scanned:].split("\n")
            for line in lines[:-1]:
                match = regex.search(line)
                if match:
                    return match
                scanned += len(line) + 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConsoleTimeout(self._timeout_message(pattern, timeout))
            try:
                chunk = await asyncio.wait_for(self._reader.read(65536), remaining)
            except TimeoutError:
                raise ConsoleTimeout(self._timeout_message(pattern, timeout)) from None
            if not chunk:
                raise ConsoleTimeout(
                    f"console {self.socket}: closed while waiting for {pattern!r}\n{self.tail()}"
                )
            self.text += chunk.decode(errors="replace").replace("\r", "")

    async def send(self, text: str) -> None:
        """Type ``text`` on the console."""
        assert self._writer is not None, "connect() first"
        self._writer.write(text.encode())
        await self._writer.drain()

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines read, for failure messages."""
        return "\n".join(self.text.splitlines()[-lines:])

    def _timeout_message(self, pattern: str, timeout: float) -> str:
        return (
            f"console {self.socket}: no line matching {pattern!r} within {timeout:g} s; "
            f"last output:\n{self.tail()}"
        )

    async def close(self) -> None:
        """Disconnect (the guest keeps running)."""
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, BrokenPipeError):
                pass
            self._writer = self._reader = None

    async def __aenter__(self) -> Console:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
