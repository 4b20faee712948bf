"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that one controller replica acts at a time.

The algorithm is client-go's ``leaderelection``:

- A candidate reads the Lease. It may take it when it does not exist (create), when it has no holder
  (released), or when the holder's record has not changed for ``leaseDurationSeconds`` as measured on the
  candidate's own monotonic clock since it first saw that record (so clock skew between machines does not
  matter, only clock rate).
- Every write is a PUT carrying the resourceVersion that was read: two candidates racing for the same
  Lease cannot both win; the loser gets 409 Conflict (or AlreadyExists on create) and tries again after
  ``retry_period``.
- The leader renews every ``retry_period``. If it cannot renew for ``renew_deadline`` seconds, or sees
  another holder, it stops leading at once. ``renew_deadline < lease_duration`` is what makes "one holder
  at a time" hold: the old leader gives up before any candidate may consider the lease expired.
- On a clean stop the leader releases the Lease (empty holder, ``leaseDurationSeconds: 1``) so a
  successor takes over without waiting a full lease duration.

Times are ``MicroTime`` (RFC 3339 with microseconds). Use ``async with elector.leading(): ...`` (the block
is cancelled and :class:`LeadershipLost` raised if leadership is lost) or ``await elector.run(body)``, which
keeps re-acquiring and re-running ``body`` until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.requesting import ResourceClient

log = logging.getLogger(__name__)


class LeadershipLost(Exception):
    """The Lease could not be renewed in time, or another candidate holds it now."""


class LeaderElector:
    """One candidate for the Lease ``namespace/name``, identified by ``identity``."""

    def __init__(
        self,
        leases: ResourceClient,
        name: str,
        namespace: str,
        identity: str,
        *,
        lease_duration: int = 15,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        on_new_leader: Callable[[str], None] | None = None,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs 0 < retry_period < renew_deadline < lease_duration")
        if leases.plural != "leases":
            raise ValueError(f"leader election needs a Lease resource client, not {leases!r}")
        self.leases = leases
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_time = 0.0
        self._observed_duration = float(lease_duration)
        self._leader: str | None = None
        self._is_leader = False

    def __repr__(self) -> str:
        return f"LeaderElector({self.namespace}/{self.name}, identity={self.identity!r})"

    @property
    def is_leader(self) -> bool:
        """True while this candidate holds the Lease and is inside :meth:`leading`."""
        return self._is_leader

    @property
    def leader(self) -> str | None:
        """The holder this candidate last saw (None if none)."""
        return self._leader

    # --- one attempt ---------------------------------------------------------------------------

    async def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the Lease; True if this candidate holds it afterwards."""
        loop = asyncio.get_running_loop()
        now = timestamps.format_micro_time(timestamps.now())
        try:
            lease = await self.leases.get(self.name, self.namespace)
        except errors.NotFoundError:
            body: Obj = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self.lease_duration,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            try:
                created = await self.leases.create(body, self.namespace)
            except errors.AlreadyExistsError:
                return False
            self._observe(created, loop.time())
            return True

        spec: Obj = dict(lease.get("spec") or {})
        self._observe(lease, loop.time())
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and loop.time() < self._observed_time + self._observed_duration:
            return False

        if holder == self.identity:
            spec["renewTime"] = now
            spec["leaseDurationSeconds"] = self.lease_duration
        else:
            spec.update(
                holderIdentity=self.identity,
                leaseDurationSeconds=self.lease_duration,
                acquireTime=now,
                renewTime=now,
                leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1,
            )
        try:
            updated = await self.leases.update({**lease, "spec": spec})
        except errors.ConflictError:
            return False
        self._observe(updated, loop.time())
        return True

    def _observe(self, lease: Obj, at: float) -> None:
        spec = lease.get("spec") or {}
        record = (
            spec.get("holderIdentity") or "",
            spec.get("leaseDurationSeconds"),
            spec.get("acquireTime"),
            spec.get("renewTime"),
            spec.get("leaseTransitions"),
        )
        if record != self._observed_record:
            self._observed_record = record
            self._observed_time = at
            self._observed_duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        holder = record[0] or None
        if holder != self._leader:
            self._leader = holder
            if holder and self.on_new_leader is not None:
                self._call(self.on_new_leader, holder)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%r: callback %r failed", self, fn)

    # --- acquire, renew, release ---------------------------------------------------------------

    async def acquire(self) -> None:
        """Wait until this candidate holds the Lease."""
        while True:
            try:
                async with asyncio.timeout(self.renew_deadline):
                    if await self.try_acquire_or_renew():
                        return
            except (errors.ClientError, TimeoutError) as exc:
                log.warning("%r: acquiring failed: %s", self, exc or type(exc).__name__)
            await asyncio.sleep(self.retry_period * (1 + 0.2 * random.random()))

    async def release(self) -> None:
        """Give the Lease up if this candidate holds it (errors are logged: the lease expires anyway)."""
        try:
            async with asyncio.timeout(self.renew_deadline):
                lease = await self.leases.get(self.name, self.namespace)
                spec = dict(lease.get("spec") or {})
                if spec.get("holderIdentity") != self.identity:
                    return
                now = timestamps.format_micro_time(timestamps.now())
                spec.update(holderIdentity="", leaseDurationSeconds=1, acquireTime=now, renewTime=now)
                await self.leases.update({**lease, "spec": spec})
                self._leader = None
        except (errors.ClientError, TimeoutError) as exc:
            log.warning("%r: releasing failed: %s", self, exc or type(exc).__name__)

    async def _renew_until_lost(self, lose: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        last_renew = loop.time()
        while True:
            await asyncio.sleep(self.retry_period)
            ok = False
            try:
                async with asyncio.timeout(max(self.renew_deadline - (loop.time() - last_renew), 0.001)):
                    ok = await self.try_acquire_or_renew()
            except (errors.ClientError, TimeoutError) as exc:
                log.warning("%r: renewing failed: %s", self, exc or type(exc).__name__)
            if ok:
                last_renew = loop.time()
                continue
            if self._leader not in (None, self.identity):
                log.warning("%r: %s holds the lease now; stopping", self, self._leader)
                lose()
                return
            if loop.time() - last_renew >= self.renew_deadline:
                log.warning("%r: could not renew for %.1fs; stopping", self, self.renew_deadline)
                lose()
                return

    @contextlib.asynccontextmanager
    async def leading(self) -> AsyncIterator[None]:
        """Wait for the Lease, then run the block while holding it.

        If leadership is lost the block is cancelled and :class:`LeadershipLost` raised from here; when the
        block ends (normally, by an error or by cancellation) the Lease is released.
        """
        await self.acquire()
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task under asyncio
            raise RuntimeError("leading() must run inside an asyncio task")
        lost = False
        cancel_consumed = False  # whether our own task.cancel() has been matched by an uncancel()

        def lose() -> None:
            nonlocal lost
            lost = True
            task.cancel()

        def our_cancel() -> bool:
            """Account for a CancelledError; True if it was only ours (no cancel from outside)."""
            nonlocal cancel_consumed
            if not lost or cancel_consumed:
                return False
            cancel_consumed = True
            return task.uncancel() == 0

        renewer = asyncio.create_task(self._renew_until_lost(lose), name=f"lease-renew-{self.name}")
        self._is_leader = True
        log.info("%r: started leading", self)
        if self.on_started_leading is not None:
            self._call(self.on_started_leading)
        try:
            yield
        except asyncio.CancelledError:
            if our_cancel():
                raise LeadershipLost(f"{self!r} lost the lease {self.namespace}/{self.name}") from None
            raise
        finally:
            renewer.cancel()
            try:
                await asyncio.gather(renewer, return_exceptions=True)
            except asyncio.CancelledError:
                # Our cancel can land here if the block finished just as the lease was lost.
                if not our_cancel():
                    raise
            self._is_leader = False
            log.info("%r: stopped leading", self)
            if self.on_stopped_leading is not None:
                self._call(self.on_stopped_leading)
            if not lost:
                await self.release()

    async def run(self, body: Callable[[], Awaitable[None]]) -> None:
        """Lead and run ``body``; when leadership is lost, cancel it, re-acquire and run it again.

        Returns when ``body`` returns; its errors propagate (after the Lease is released).
        """
        while True:
            try:
                async with self.leading():
                    await body()
                return
            except LeadershipLost:
                log.warning("%r: leadership lost; waiting to lead again", self)
