"""QMP session edge cases that need no QEMU: connecting to a socket nobody serves, with a deadline; the
hang-up of a QEMU that exits, against a fake QMP server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from kubevisor.virt.qmp import QmpError, Session


async def test_connect_gives_up_at_the_deadline(tmp_path: Path) -> None:
    session = Session(tmp_path / "qmp.sock")
    started = time.monotonic()
    with pytest.raises(QmpError, match=r"qmp.sock: not reachable after 0.3 s"):
        await session.connect(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5


async def test_connect_stops_early_when_qemu_is_gone(tmp_path: Path) -> None:
    session = Session(tmp_path / "qmp.sock")
    started = time.monotonic()
    with pytest.raises(QmpError, match="QEMU exited before it answered"):
        await session.connect(timeout=30, alive=lambda: False)
    assert time.monotonic() - started < 5


async def test_wait_hangup_delivers_the_last_events(tmp_path: Path) -> None:
    """A QEMU reports a guest shutdown and exits: once the session saw the hang-up, the event is there."""
    release = asyncio.Event()

    async def fake_qemu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version = {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}
        writer.write(json.dumps({"QMP": {"version": version, "capabilities": []}}).encode() + b"\r\n")
        await writer.drain()
        command = json.loads(await reader.read(65536))  # the client sends one JSON object, no newline
        assert command["execute"] == "qmp_capabilities"
        writer.write(b'{"return": {}}\r\n')
        await writer.drain()
        await release.wait()
        event = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}}
        writer.write(json.dumps(dict(event, timestamp={"seconds": 0, "microseconds": 0})).encode() + b"\r\n")
        await writer.drain()
        writer.close()

    socket = tmp_path / "qmp.sock"
    server = await asyncio.start_unix_server(fake_qemu, path=str(socket))
    session = Session(socket)
    try:
        await asyncio.wait_for(session.connect(timeout=5), 10)
        assert session.connected
        with session.listen("SHUTDOWN") as events:
            assert not await session.wait_hangup(0.1)  # still connected
            release.set()
            assert await session.wait_hangup(5)
            assert not session.connected
            (event,) = events.clear()
        assert event["data"]["guest"] is True
    finally:
        await session.close()
        server.close()
        await server.wait_closed()
