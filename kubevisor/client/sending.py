"""Sending one HTTP request so that cancelling the caller never leaks a connection.

httpcore 1.0 leaks the TCP socket when a task is cancelled during the TLS handshake: its cleanup in
``start_tls`` catches ``Exception`` only, not ``CancelledError``. Controllers and informers are cancelled
on every stop, often while they connect, so every request of this package goes through
:func:`send_completely`: the exchange runs in its own shielded task, and a cancellation of the caller
first lets it finish (bounded by ``grace``) and closes its response, then goes on. The cost is one task
per request.
"""

from __future__ import annotations

import asyncio

import httpx


async def send_completely(
    http: httpx.AsyncClient, request: httpx.Request, *, stream: bool = False, grace: float = 2.0
) -> httpx.Response:
    """``http.send``, but a cancellation waits (up to ``grace`` seconds) for the exchange to finish."""
    task = asyncio.ensure_future(http.send(request, stream=stream))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            task.add_done_callback(_retrieve)
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            await task.result().aclose()
        raise


def _retrieve(task: asyncio.Future[httpx.Response]) -> None:
    if not task.cancelled():
        task.exception()
