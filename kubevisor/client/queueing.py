"""The work queue between event handlers and reconcilers (client-go's ``workqueue``, in asyncio).

Why: handlers run for every event and must not block, reconcilers are slow and may fail. The queue
decouples them and guarantees what level-based reconciling needs:

- **De-duplication.** A key added many times before a worker takes it is handed out once.
- **One worker per key.** A key being processed is never handed to a second worker; if it is added
  again meanwhile it is marked dirty and re-queued when the first worker calls :meth:`WorkQueue.done`.
  Every ``get`` must therefore be paired with a ``done``.
- **Delays without tasks.** :meth:`WorkQueue.add_after` uses one loop timer per key (the earliest
  request wins), so a queue owns no background task and cannot leak one.
- **Backoff per key.** :meth:`WorkQueue.add_rate_limited` waits ``base * 2**failures`` (5 ms doubling up
  to 1000 s, as client-go's ``DefaultItemBasedRateLimiter``) until :meth:`WorkQueue.forget` resets it.
- **Shutdown** drops pending keys and timers, and makes every waiting and later ``get`` raise
  :class:`QueueShutDown`; a worker in the middle of a key finishes it.

All methods but :meth:`WorkQueue.get` are synchronous and must be called from the queue's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class QueueShutDown(Exception):
    """The queue was shut down: no more keys will be handed out."""


class ExponentialBackoff:
    """Per-key exponential delays: ``base * 2**n`` for the n-th consecutive failure, capped."""

    def __init__(self, base: float = 0.005, cap: float = 1000.0) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}

    def when(self, key: str) -> float:
        """The delay before retrying ``key`` now, counting this as one more failure."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        if n >= 64:
            return self.cap
        return min(self.base * float(2**n), self.cap)

    def forget(self, key: str) -> None:
        """``key`` succeeded: its next failure starts from ``base`` again."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        """Consecutive failures counted for ``key``."""
        return self._failures.get(key, 0)


class WorkQueue:
    """A keyed, de-duplicating FIFO where a key is processed by at most one worker at a time."""

    def __init__(self, backoff: ExponentialBackoff | None = None, name: str = "") -> None:
        self.name = name
        self.backoff = backoff or ExponentialBackoff()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False

    def __len__(self) -> int:
        """Keys ready to be handed out (not counting delayed or in-process ones)."""
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def processing(self) -> frozenset[str]:
        """Keys handed out and not yet ``done``."""
        return frozenset(self._processing)

    @property
    def delayed(self) -> frozenset[str]:
        """Keys waiting for an ``add_after`` timer."""
        return frozenset(self._timers)

    def is_idle(self) -> bool:
        """Nothing queued, delayed or in process."""
        return not self._queue and not self._processing and not self._timers and not self._dirty

    def add(self, key: str) -> None:
        """Queue ``key`` unless it is already waiting; if it is being processed, queue it after ``done``."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._wake_one()

    def add_after(self, key: str, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds. Of several pending delays for one key, the earliest wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def add_rate_limited(self, key: str) -> None:
        """Add ``key`` after its backoff delay, which doubles with every call until :meth:`forget`."""
        self.add_after(key, self.backoff.when(key))

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff (call after it was processed successfully)."""
        self.backoff.forget(key)

    def num_requeues(self, key: str) -> int:
        """How many rate-limited re-adds ``key`` had since it was last forgotten."""
        return self.backoff.failures(key)

    async def get(self) -> str:
        """The next key; waits while the queue is empty. Raises :class:`QueueShutDown` after shutdown."""
        while not self._queue:
            if self._shutting_down:
                raise QueueShutDown(self.name)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Woken and cancelled at once: hand the wake-up to another getter.
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise
            finally:
                if waiter in self._getters:
                    self._getters.remove(waiter)
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        """``key`` is no longer being processed; re-queue it if it was added meanwhile."""
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._wake_one()

    def shutdown(self) -> None:
        """Stop handing out keys: drop queued and delayed keys, wake every waiting ``get``."""
        self._shutting_down = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._queue.clear()
        self._dirty.clear()
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _wake_one(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


Worker = Callable[[str], Awaitable[None]]


async def run_workers(queue: WorkQueue, worker: Worker, concurrency: int = 1) -> None:
    """Process keys with ``concurrency`` workers until the queue shuts down (or this is cancelled).

    A key whose worker returns is forgotten (backoff reset); one whose worker raises is logged and
    re-added with :meth:`WorkQueue.add_rate_limited`. Workers that want other retry rules catch their
    own errors and call ``add_after``/``forget`` themselves.
    """
    if concurrency < 1:
        raise ValueError("run_workers needs concurrency >= 1")

    async def work() -> None:
        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            try:
                await worker(key)
            except Exception:
                log.exception("queue %s: processing %r failed; retrying with backoff", queue.name, key)
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
            finally:
                queue.done(key)

    async with asyncio.TaskGroup() as tg:
        for i in range(concurrency):
            tg.create_task(work(), name=f"worker-{queue.name}-{i}")
