"""Watch stream parsing: lines split across chunks, in-band errors, broken streams.

The HTTP transport is the client's one I/O seam; these tests replace it with ``httpx.MockTransport``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest

from kubevisor.client import Client, Config, GoneError, ProtocolError, TransportError, WatchEvent
from kubevisor.client.errors import ForbiddenError, ServerError
from kubevisor.client.watching import LineSplitter, parse_event


def _event(kind: str, name: str, rv: str) -> bytes:
    obj = {"kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


GONE = (
    orjson.dumps(
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "Expired",
                "code": 410,
                "message": "too old resource version: 5 (9)",
            },
        }
    )
    + b"\n"
)


def test_line_splitter_reassembles_lines_from_any_chunking() -> None:
    stream = b"".join(_event("ADDED", f"cm{i}", str(i)) for i in range(50)) + b'{"partial": tr'
    rng = random.Random(3)
    for _ in range(20):
        splitter = LineSplitter()
        lines: list[bytes] = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 40)
            lines.extend(splitter.feed(stream[pos : pos + step]))
            pos += step
        assert len(lines) == 50
        assert [parse_event(line).object["metadata"]["name"] for line in lines] == [
            f"cm{i}" for i in range(50)
        ]
        assert splitter.flush() == b'{"partial": tr'
        assert splitter.flush() == b""


def test_parse_event_reads_type_object_and_resource_version() -> None:
    event = parse_event(_event("BOOKMARK", "x", "42"))
    assert event == WatchEvent(
        "BOOKMARK",
        {"kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ns", "resourceVersion": "42"}},
    )
    assert event.resource_version == "42"
    assert WatchEvent("ADDED", {}).resource_version == ""


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1, 2]", b'{"type": "EXPLODED", "object": {}}', b'{"type": "ADDED", "object": 3}', b"{}"],
)
def test_parse_event_rejects_what_is_not_a_watch_event(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="watch stream line"):
        parse_event(line)


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client(Config(server="https://k8s.test"), transport=httpx.MockTransport(handler))


def _chunked(data: bytes, size: int, error: Exception | None = None) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]
        if error is not None:
            raise error

    return chunks()


async def test_watch_sends_the_query_and_yields_events_across_chunk_boundaries() -> None:
    seen: list[httpx.Request] = []
    body = _event("ADDED", "a", "11") + b"\n" + _event("MODIFIED", "a", "12") + _event("BOOKMARK", "", "15")
    body += _event("DELETED", "a", "16").rstrip(b"\n")  # the last line may lack its newline

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=_chunked(body, 7))

    async with _client(handler) as client:
        cms = client.resource("v1", "configmaps")
        async with cms.watch(
            "ns", resource_version="10", label_selector="app=x", timeout_seconds=30
        ) as events:
            got = [(e.type, e.resource_version) async for e in events]
    assert got == [("ADDED", "11"), ("MODIFIED", "12"), ("BOOKMARK", "15"), ("DELETED", "16")]
    (request,) = seen
    assert request.url.path == "/api/v1/namespaces/ns/configmaps"
    assert dict(request.url.params) == {
        "watch": "true",
        "resourceVersion": "10",
        "labelSelector": "app=x",
        "timeoutSeconds": "30",
        "allowWatchBookmarks": "true",
    }
    assert request.extensions["timeout"]["read"] is None, "a watch must never time out while idle"


async def test_an_error_event_with_410_raises_gone_after_earlier_events() -> None:
    body = _event("ADDED", "a", "11") + GONE

    async with _client(lambda request: httpx.Response(200, content=_chunked(body, 5))) as client:
        events: list[WatchEvent] = []
        with pytest.raises(GoneError) as caught:
            async with client.resource("v1", "configmaps").watch(resource_version="5") as stream:
                async for event in stream:
                    events.append(event)
    assert [e.type for e in events] == ["ADDED"]
    assert caught.value.status == 410
    assert caught.value.reason == "Expired"
    assert "too old resource version" in caught.value.message


async def test_other_error_events_raise_their_status_class() -> None:
    status = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "boom"}
    body = orjson.dumps({"type": "ERROR", "object": status}) + b"\n"
    async with _client(lambda request: httpx.Response(200, content=body)) as client:
        with pytest.raises(ServerError, match="boom"):
            async with client.resource("v1", "configmaps").watch() as stream:
                async for _ in stream:
                    pass


async def test_a_refused_watch_raises_the_status_error() -> None:
    status = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "no watching for you"}
    async with _client(lambda request: httpx.Response(403, json=status)) as client:
        with pytest.raises(ForbiddenError, match="no watching"):
            async with client.resource("v1", "configmaps").watch() as stream:
                await anext(stream)


async def test_a_stream_that_breaks_raises_transport_error() -> None:
    body = _event("ADDED", "a", "11")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_chunked(body, 100, httpx.ReadError("connection reset")))

    async with _client(handler) as client:
        stream = client.resource("v1", "configmaps").watch()
        assert (await anext(stream)).type == "ADDED"
        with pytest.raises(TransportError, match="broke") as caught:
            await anext(stream)
        assert isinstance(caught.value.__cause__, httpx.ReadError)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)


async def test_garbage_in_the_stream_raises_protocol_error() -> None:
    body = _event("ADDED", "a", "11") + b"<html>proxy error</html>\n"
    client = _client(lambda request: httpx.Response(200, content=body))
    async with client, client.resource("v1", "configmaps").watch() as stream:
        await anext(stream)
        with pytest.raises(ProtocolError):
            await anext(stream)


async def test_leaving_the_block_early_closes_the_stream() -> None:
    closed: list[bool] = []

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            i = 0
            while True:
                i += 1
                yield _event("ADDED", f"cm{i}", str(i))

        async def aclose(self) -> None:
            closed.append(True)

    async with _client(lambda request: httpx.Response(200, stream=Endless())) as client:
        async with client.resource("v1", "configmaps").watch() as stream:
            async for event in stream:
                if event.resource_version == "3":
                    break
        assert closed == [True]


async def test_cluster_scoped_and_group_paths() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200, content=b"")

    async with _client(handler) as client:
        for watch in (
            client.resource("v1", "namespaces").watch("ignored-for-cluster-scoped"),
            client.resource("coordination.k8s.io/v1", "leases").watch("kube-system"),
            client.resource("coordination.k8s.io/v1", "leases").watch(),
        ):
            async with watch as stream:
                assert [e async for e in stream] == []
    assert paths == [
        "/api/v1/namespaces",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
        "/apis/coordination.k8s.io/v1/leases",
    ]
