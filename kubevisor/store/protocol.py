"""The Store protocol: a key-value store with etcd v3 semantics.

Invariants every backend keeps (the embedded SQLite one and the etcd one):

- One global revision, incremented by every successful write (create, update, delete). A key's
  ``mod_revision`` is the revision of its last write; the apiserver uses it as ``resourceVersion``.
- ``create`` fails with :class:`KeyExistsError` if the key exists; ``update`` and ``delete`` compare the key's
  current ``mod_revision`` with the expected one and fail with :class:`CompareFailedError` (carrying the
  current value) when they differ.
- Reads at ``revision=0`` see the latest state; reads at ``revision=R`` see the state right after revision R,
  or raise :class:`CompactedError` when R is below the compaction revision, or :class:`FutureRevisionError`
  when R is above the current revision.
- ``watch(start, end, revision)`` yields, in revision order, every change of a key in ``[start, end)`` with a
  revision ``>= revision``, then live changes, each with the previous value. Nothing is skipped or repeated.
  A ``revision`` below the compaction revision raises :class:`CompactedError` on the first iteration.
- An acknowledged write survives a ``kill -9`` of the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol


class StoreError(Exception):
    """Base of store errors."""


class KeyExistsError(StoreError):
    """``create`` of a key that exists."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key exists: {key}")
        self.key = key


class KeyNotFoundError(StoreError):
    """``update`` or ``delete`` of a key that does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key}")
        self.key = key


class CompareFailedError(StoreError):
    """The key's mod_revision is not the expected one; ``current`` is the value now stored."""

    def __init__(self, key: str, current: KeyValue) -> None:
        super().__init__(f"mod_revision of {key} is {current.mod_revision}")
        self.key = key
        self.current = current


class CompactedError(StoreError):
    """The requested revision has been compacted away."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        super().__init__(f"required revision {revision} has been compacted (compacted to {compact_revision})")
        self.revision = revision
        self.compact_revision = compact_revision


class FutureRevisionError(StoreError):
    """The requested revision is newer than the current one."""

    def __init__(self, revision: int, current: int) -> None:
        super().__init__(f"required revision {revision} is a future revision (current {current})")
        self.revision = revision
        self.current = current


class WatchOverflowError(StoreError):
    """A watcher fell too far behind and was cut off; the caller should re-list."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key's value at some revision."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """Result of a range read: the items (sorted by key), the revision read at, and whether more remain."""

    kvs: list[KeyValue]
    revision: int
    more: bool
    count: int
    """Number of keys in the whole range at that revision (not only the returned page)."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change of one key.

    For ``DELETE``, ``kv.value`` is empty and ``kv.mod_revision`` is the revision of the deletion.
    """

    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev: KeyValue | None


class Store(Protocol):
    """The store the apiserver owns. Keys are strings; ranges are ``[start, end)``; values are bytes."""

    async def current_revision(self) -> int:
        """The newest revision."""
        ...

    async def compact_revision(self) -> int:
        """Revisions at or below this one have been compacted (0 if never)."""
        ...

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        """The key's value at ``revision`` (0: latest), or None."""
        ...

    async def range(self, start: str, end: str, revision: int = 0, limit: int = 0) -> RangeResult:
        """Keys in ``[start, end)`` at ``revision`` (0: latest), at most ``limit`` (0: all), sorted by key."""
        ...

    async def create(self, key: str, value: bytes) -> KeyValue:
        """Create the key; raises KeyExistsError if it exists."""
        ...

    async def update(self, key: str, value: bytes, expected_mod_revision: int) -> KeyValue:
        """Replace the value if mod_revision matches; raises KeyNotFoundError or CompareFailedError."""
        ...

    async def delete(self, key: str, expected_mod_revision: int = 0) -> KeyValue:
        """Delete the key (compare unless ``expected_mod_revision`` is 0); returns the deleted value."""
        ...

    def watch(self, start: str, end: str, revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Changes in ``[start, end)`` from ``revision`` (0: from now on). Close the iterator to stop."""
        ...

    async def compact(self, revision: int) -> None:
        """Forget history at and below ``revision`` (the latest value of each key is always kept)."""
        ...

    async def close(self) -> None:
        """Release resources; live watches end."""
        ...


def prefix_end(prefix: str) -> str:
    """The end of the range that holds exactly the keys starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
