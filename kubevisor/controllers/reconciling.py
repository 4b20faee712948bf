"""The reconciler framework every controller is built on (ARCHITECTURE "Reconcilers").

A :class:`Controller` owns informers and one :class:`~kubevisor.client.queueing.WorkQueue`:

- Informer handlers only enqueue keys; they never act on an event's payload. ``reconcile(key)`` re-reads
  the object (normally from an informer cache), so a missed, duplicated or reordered event cannot make a
  controller wrong: it is level-based.
- The queue hands a key to one worker at a time; ``concurrency`` workers run different keys in parallel.
- What happens after ``reconcile`` is decided by how it ended:

  ====================================  ==========================================================
  returns ``None`` / ``Result()``       done; the key's backoff is reset
  returns ``Result(requeue_after=s)``   done for now; look again in ``s`` seconds
  raises :class:`TemporaryError`        retry after ``delay`` (or with per-key backoff if None)
  raises ``ConflictError`` (409)        the object changed under us: requeue with backoff, re-read
  raises :class:`PermanentError`        logged; not retried until the key is enqueued again
  raises anything else                  logged; retried with per-key exponential backoff
  ====================================  ==========================================================

- :meth:`Controller.start` creates fresh informers and a fresh queue each time (:meth:`Controller.setup`),
  so a controller that stopped (say, on losing leader election) resynchronises fully when started again.
  Workers start only after every informer has synced, so reconcilers never see a half-filled cache.
- With :attr:`Controller.shared_informers` set (the :class:`~kubevisor.controllers.manager.ControllerManager`
  sets one factory for all its controllers), :meth:`Controller.watch` takes its informer from that
  :class:`~kubevisor.client.informers.SharedInformers` instead of creating a private one: one list+watch
  per kind for the whole process. Handlers are registered once ``setup`` has returned (so a key function
  may use any informer ``setup`` made); a shared informer that had already synced then replays its cache
  as adds. ``stop`` removes this controller's handlers and releases its references. Objects from a shared
  cache are read by every controller: copy before changing one (:mod:`kubevisor.client.informers`).
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Self

from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.informers import Handlers, Informer, SharedInformers, object_key
from kubevisor.client.queueing import WorkQueue, run_workers
from kubevisor.client.requesting import Client, ResourceClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """A successful reconcile; ``requeue_after`` asks to look at the key again later."""

    requeue_after: float | None = None


class TemporaryError(Exception):
    """The reconcile could not finish now but may later: retry after ``delay`` seconds.

    ``delay=None`` retries with the key's exponential backoff.
    """

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """Retrying cannot help (the object is invalid for this controller); log it and stop trying."""


KeysOf = Callable[[Obj], Iterable[str]]


def own_key(obj: Obj) -> list[str]:
    """The default mapping of an event to keys: the object's own ``namespace/name``."""
    return [object_key(obj)]


class Controller:
    """Base of every controller: informers feed keys to a work queue drained by ``reconcile``.

    Subclasses set :attr:`name`, create their informers in :meth:`setup` with :meth:`watch`, and implement
    :meth:`reconcile`.
    """

    name = "controller"
    concurrency = 2
    stop_grace_period = 5.0
    """Seconds workers may take to finish their current key on stop before they are cancelled."""

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        self.client = client
        if concurrency is not None:
            self.concurrency = concurrency
        self.queue = WorkQueue(name=self.name)
        self.informers: list[Informer] = []
        self.shared_informers: SharedInformers | None = None
        """Where :meth:`watch` takes informers from; None: each controller run creates private ones."""
        self._acquired: list[tuple[Informer, SharedInformers | None]] = []
        self._pending: list[tuple[Informer, Handlers]] = []
        self._registered: list[tuple[Informer, Handlers]] = []
        self._setting_up = False
        self._workers: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"

    # --- to implement --------------------------------------------------------------------------

    def setup(self) -> None:
        """Create this run's informers with :meth:`watch` and reset any derived state."""
        raise NotImplementedError

    async def reconcile(self, key: str) -> Result | None:
        """Bring the world in line with the object named ``key``; see the module docstring for outcomes."""
        raise NotImplementedError

    # --- helpers for subclasses ----------------------------------------------------------------

    def watch(
        self,
        resources: ResourceClient,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        keys: KeysOf | None = own_key,
        transform: Callable[[Obj], Obj] | None = None,
        on_add: Callable[[Obj], None] | None = None,
        on_update: Callable[[Obj, Obj], None] | None = None,
        on_delete: Callable[[Obj], None] | None = None,
    ) -> Informer:
        """An informer whose every event enqueues ``keys(object)`` (pass ``keys=None`` to only use the
        explicit handlers, which must themselves do no more than enqueue and index).

        The informer is shared with other controllers when :attr:`shared_informers` is set; its objects
        are then read-only for everyone.
        """
        shared = self.shared_informers
        if shared is None:
            informer = Informer(resources, namespace, label_selector, field_selector, transform=transform)
        else:
            informer = shared.informer(resources, namespace, label_selector, field_selector, transform)
        self._acquired.append((informer, shared))
        if on_add is not None or on_update is not None or on_delete is not None:
            self._register(informer, Handlers(on_add, on_update, on_delete))
        if keys is not None:
            key_fn = keys

            def enqueue(obj: Obj) -> None:
                for key in key_fn(obj):
                    self.queue.add(key)

            self._register(informer, Handlers(enqueue, lambda old, new: enqueue(new), enqueue))
        self.informers.append(informer)
        return informer

    def _register(self, informer: Informer, handlers: Handlers) -> None:
        if self._setting_up:
            self._pending.append((informer, handlers))  # registered when setup() has returned
            return
        registered = informer.add_handlers(handlers.on_add, handlers.on_update, handlers.on_delete)
        self._registered.append((informer, registered))

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._workers is not None and not self._workers.done()

    async def start(self) -> None:
        """Start informers, wait until all have synced, then start the workers."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.queue = WorkQueue(name=self.name)
        self.informers = []
        self._setting_up = True
        try:
            self.setup()
        except BaseException:
            await self._stop_informers()
            raise
        finally:
            self._setting_up = False
        pending, self._pending = self._pending, []
        for informer, handlers in pending:
            self._register(informer, handlers)
        for informer, shared in self._acquired:
            if shared is None:
                informer.start()
        try:
            await asyncio.gather(*(informer.wait_synced() for informer in self.informers))
        except BaseException:
            await self._stop_informers()
            raise
        self._workers = asyncio.create_task(
            run_workers(self.queue, self._process, self.concurrency), name=f"workers-{self.name}"
        )
        log.info("%r: started with %d informers", self, len(self.informers))

    async def stop(self) -> None:
        """Stop handing out keys, let workers finish (bounded), then stop the informers."""
        self.queue.shutdown()
        workers, self._workers = self._workers, None
        if workers is not None:
            done, _ = await asyncio.wait({workers}, timeout=self.stop_grace_period)
            if not done:
                log.warning("%r: workers did not finish in %.0fs; cancelling", self, self.stop_grace_period)
                workers.cancel()
            await asyncio.gather(workers, return_exceptions=True)
        await self._stop_informers()

    async def _stop_informers(self) -> None:
        """Unregister this controller's handlers, then stop private informers and release shared ones."""
        self._pending = []
        registered, self._registered = self._registered, []
        for informer, handlers in registered:
            informer.remove_handlers(handlers)
        acquired, self._acquired = self._acquired, []
        for informer, shared in acquired:
            if shared is None:
                await informer.stop()
            else:
                await shared.release(informer)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.stop()

    # --- one key -------------------------------------------------------------------------------

    async def _process(self, key: str) -> None:
        """Run ``reconcile(key)`` and requeue it as its outcome says; never raises."""
        try:
            result = await self.reconcile(key)
        except TemporaryError as exc:
            log.info("%r: %s: %s (retrying)", self, key, exc)
            if exc.delay is None:
                self.queue.add_rate_limited(key)
            else:
                self.queue.add_after(key, exc.delay)
        except PermanentError as exc:
            log.error("%r: %s: %s (not retrying)", self, key, exc)
            self.queue.forget(key)
        except errors.ConflictError:
            log.debug("%r: %s changed while reconciling; requeueing", self, key)
            self.queue.add_rate_limited(key)
        except Exception:
            log.exception("%r: reconciling %s failed; retrying with backoff", self, key)
            self.queue.add_rate_limited(key)
        else:
            self.queue.forget(key)
            if result is not None and result.requeue_after is not None:
                self.queue.add_after(key, result.requeue_after)
