"""What client and controller integration tests share: a real platform, an admin client, waiting with
deadlines, and a check that the code under test left no task running.

The conftests of ``tests/integration/client`` and ``tests/integration/controllers`` import the fixtures
from here. The platform runs without its built-in controllers, so a test starts exactly the controllers
it exercises.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kubevisor.client import Client, NotFoundError
from kubevisor.client.requesting import ResourceClient
from kubevisor.platform import Platform
from kubevisor.testing.cluster import running_platform
from kubevisor.testing.kinds import registry_with_test_kinds

T = TypeVar("T")

OUR_CODE = ("/kubevisor/client/", "/kubevisor/controllers/", "/tests/")


def _ours(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and any(part in code.co_filename for part in OUR_CODE)


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail if a task of the client, the controllers or the test is still running after the test.

    (The API server's own tasks are its tests' business.)
    """
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    pending = {
        t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done() and _ours(t)
    }
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    leaked = [t for t in pending if not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"tasks still running after the test: {leaked}"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Platform]:
    """A real platform (API server on TLS loopback, SQLite store), without built-in controllers."""
    async with running_platform(
        tmp_path / "data", registry=registry_with_test_kinds(), controllers=False
    ) as plat:
        yield plat


@pytest.fixture
async def client(cluster: Platform) -> AsyncIterator[Client]:
    """An admin client from the platform's kubeconfig, knowing the test kinds."""
    async with Client.from_kubeconfig(cluster.kubeconfig, registry=cluster.registry) as c:
        yield c


async def compact(cluster: Platform) -> int:
    """Compact the store's history up to now; returns the compaction revision."""
    assert cluster.store is not None
    revision = await cluster.store.current_revision()
    await cluster.store.compact(revision)
    return revision


async def eventually(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until truthy; fail after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not true after {timeout}s: {what or condition}") from None


async def until(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float = 10.0, what: str = ""
) -> T:
    """Call ``probe`` until ``accept`` likes its result; return that result or fail after ``timeout``."""
    last: T | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await probe()
                if accept(last):
                    return last
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not true after {timeout}s: {what} (last: {last!r})") from None


async def gone(
    resources: ResourceClient, name: str, namespace: str | None = None, timeout: float = 10.0
) -> None:
    """Wait until the object ``name`` no longer exists."""

    async def exists() -> bool:
        try:
            await resources.get(name, namespace)
        except NotFoundError:
            return False
        return True

    await until(exists, lambda present: not present, timeout, f"{resources.plural}/{name} to be deleted")
