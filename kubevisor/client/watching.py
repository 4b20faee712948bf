"""Reading a watch stream: newline-delimited JSON events over one chunked HTTP response.

The server answers ``?watch=true`` with HTTP 200 and then one JSON object per line (reference §1.8)::

    {"type": "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR", "object": {...}}

Chunk boundaries are unrelated to line boundaries, so :class:`LineSplitter` reassembles lines from bytes
before decoding them. Errors are delivered in-band: an ``ERROR`` event carries a ``Status`` and is raised as
the matching :class:`~kubevisor.client.errors.ApiError` (``410 Expired`` -> :class:`GoneError`, which tells
the caller to re-list) rather than handed over as an event. A stream that ends cleanly (the server's
``timeoutSeconds`` elapsed) simply stops iterating; the caller re-watches from the last resourceVersion it
saw, including a BOOKMARK's.

Invariant: a :class:`Watch` owns its HTTP response and closes it when the stream ends, when an error is
raised, or when the ``async with`` block around it exits, whichever comes first. Use it as
``async with resource.watch(...) as events: async for event in events: ...`` so that leaving the loop
early also returns the connection.
"""

from __future__ import annotations

import contextlib
import types
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Self, cast

import httpx
import orjson

from kubevisor.client import errors
from kubevisor.client.sending import send_completely

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]
EVENT_TYPES: frozenset[str] = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change of one object, as the server reported it."""

    type: EventType
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        """The object's ``metadata.resourceVersion`` (for a BOOKMARK, the only field it has)."""
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")


def parse_event(line: bytes | str) -> WatchEvent:
    """Decode one line of a watch stream; raise :class:`ProtocolError` if it is not a watch event."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise errors.ProtocolError(f"watch stream line is not JSON: {_preview(line)}") from exc
    if not isinstance(data, dict):
        raise errors.ProtocolError(f"watch stream line is not an object: {_preview(line)}")
    kind = data.get("type")
    obj = data.get("object")
    if kind not in EVENT_TYPES or not isinstance(obj, dict):
        raise errors.ProtocolError(f"watch stream line is not a watch event: {_preview(line)}")
    return WatchEvent(cast(EventType, kind), obj)


def _preview(line: bytes | str) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return repr(text[:200])


class LineSplitter:
    """Turns arbitrary byte chunks into complete lines (without the newline)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines ended by this chunk; the unfinished tail is kept for the next call."""
        if not chunk:
            return []
        data = self._buffer + chunk
        if b"\n" not in chunk:
            self._buffer = data
            return []
        *lines, self._buffer = data.split(b"\n")
        return lines

    def flush(self) -> bytes:
        """What is left after the last newline (a final line without one)."""
        rest, self._buffer = self._buffer, b""
        return rest


class Watch:
    """An open (or about to be opened) watch request; an async iterator of :class:`WatchEvent`.

    The request is sent on the first iteration, so creating a Watch costs nothing.
    """

    def __init__(self, http: httpx.AsyncClient, request: httpx.Request) -> None:
        self._http = http
        self._request = request
        self._response: httpx.Response | None = None
        self._chunks: Any = None
        self._splitter = LineSplitter()
        self._lines: deque[bytes] = deque()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._closed:
            raise StopAsyncIteration
        if self._response is None:
            await self._open()
        while True:
            while self._lines:
                line = self._lines.popleft()
                if line.strip():
                    return await self._deliver(line)
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                rest = self._splitter.flush()
                await self.aclose()
                if rest.strip():
                    return await self._deliver(rest)
                raise
            except httpx.TransportError as exc:
                await self.aclose()
                raise errors.TransportError(f"watch stream {self._request.url} broke: {exc!r}") from exc
            self._lines.extend(self._splitter.feed(chunk))

    async def _deliver(self, line: bytes) -> WatchEvent:
        try:
            event = parse_event(line)
        except errors.ProtocolError:
            await self.aclose()
            raise
        if event.type == "ERROR":
            await self.aclose()
            raise errors.from_status(event.object)
        return event

    async def _open(self) -> None:
        try:
            response = await send_completely(self._http, self._request, stream=True)
        except httpx.TransportError as exc:
            self._closed = True
            raise errors.TransportError(f"watch {self._request.url}: {exc!r}") from exc
        self._response = response
        if response.status_code != 200:
            try:
                content = await response.aread()
            except httpx.TransportError as exc:
                await self.aclose()
                raise errors.TransportError(f"watch {self._request.url}: {exc!r}") from exc
            await self.aclose()
            raise errors.from_response(response.status_code, content, dict(response.headers))
        self._chunks = response.aiter_bytes()

    async def aclose(self) -> None:
        """Close the stream and return its connection; safe to call more than once."""
        self._closed = True
        chunks, self._chunks = self._chunks, None
        response, self._response = self._response, None
        if chunks is not None:
            with contextlib.suppress(Exception):
                await chunks.aclose()
        if response is not None:
            await response.aclose()
