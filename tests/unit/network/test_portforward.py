"""Port forwarding over loopback (127.0.0.1 only): bytes both ways, half-close, refused targets, and
closing the forwarder drops open connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kubevisor.network.portforward import Forwarder


async def _echo_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read until the client half-closes, then answer everything it sent, reversed, and close."""
    data = await reader.read()
    writer.write(data[::-1])
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.fixture
async def target() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo_after_eof, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_forwards_both_ways_and_passes_half_close_on(target: int) -> None:
    async with Forwarder("127.0.0.1", target) as fwd:
        assert fwd.port not in (0, target)
        payload = bytes(range(256)) * 1024  # larger than one buffer
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
        writer.write(payload)
        writer.write_eof()  # the target answers only after EOF
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
    assert answer == payload[::-1]


async def test_a_refused_target_closes_the_client_connection() -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    async with Forwarder("127.0.0.1", port) as fwd:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await writer.wait_closed()


async def test_close_stops_listening_and_drops_open_connections() -> None:
    held = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.set()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    async with server:
        fwd = Forwarder("127.0.0.1", server.sockets[0].getsockname()[1])
        await fwd.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
        await asyncio.wait_for(held.wait(), 10)
        await asyncio.wait_for(fwd.close(), 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await writer.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", fwd.port)
