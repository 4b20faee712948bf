"""Real kubevisor platforms for tests and benchmarks: in the test's event loop, or in a thread.

- ``async with running_platform(tmp_path) as plat``: the platform in the current event loop, for async
  tests (``plat.url``, ``plat.kubeconfig``, ``plat.store`` for store-level actions such as compaction);
  ``agent=True`` adds the node agent, which boots real guests.
- ``with platform_thread(tmp_path) as plat``: the platform in its own thread and loop, for synchronous
  clients that would otherwise block the loop serving them (kubectl subprocesses, the official
  ``kubernetes`` client). ``plat.run(coro)`` runs a coroutine on the platform's loop.

Both listen on a free loopback port with TLS and write ``<data_dir>/kubeconfig`` for the admin.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kubevisor.api.registry import Registry
from kubevisor.platform import Platform

if TYPE_CHECKING:
    from kubevisor.agent.running import AgentConfig

T = TypeVar("T")


@asynccontextmanager
async def running_platform(
    data_dir: Path,
    *,
    registry: Registry | None = None,
    controllers: bool = True,
    compaction_interval: float = 0,
    agent: bool = False,
    agent_config: AgentConfig | None = None,
) -> AsyncIterator[Platform]:
    plat = Platform(
        data_dir,
        "127.0.0.1:0",
        registry=registry,
        controllers=controllers,
        compaction_interval=compaction_interval,
        agent=agent,
        agent_config=agent_config,
    )
    await plat.start()
    try:
        yield plat
    finally:
        await plat.stop()


class PlatformThread:
    """A platform running on its own event loop in a daemon thread."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, name="kubevisor-platform", daemon=True)

    @property
    def url(self) -> str:
        return self.platform.url

    @property
    def kubeconfig(self) -> Path:
        return self.platform.kubeconfig

    @property
    def data_dir(self) -> Path:
        return self.platform.data_dir

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.platform.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            await self.platform.stop()
            return
        self._started.set_result(None)
        await self._stop.wait()
        await self.platform.stop()

    def start(self) -> None:
        self._thread.start()
        self._started.result(timeout=60)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the platform's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def platform_thread(
    data_dir: Path,
    *,
    registry: Registry | None = None,
    controllers: bool = True,
    compaction_interval: float = 0,
) -> Iterator[PlatformThread]:
    plat = PlatformThread(
        Platform(
            data_dir,
            "127.0.0.1:0",
            registry=registry,
            controllers=controllers,
            compaction_interval=compaction_interval,
        )
    )
    plat.start()
    try:
        yield plat
    finally:
        plat.stop()
