"""Storage of API objects. Only the apiserver imports this package."""

from kubevisor.store.protocol import (
    CompactedError,
    CompareFailedError,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    RangeResult,
    Store,
    StoreError,
    WatchEvent,
    WatchOverflowError,
    prefix_end,
)

__all__ = [
    "CompactedError",
    "CompareFailedError",
    "FutureRevisionError",
    "KeyExistsError",
    "KeyNotFoundError",
    "KeyValue",
    "RangeResult",
    "Store",
    "StoreError",
    "WatchEvent",
    "WatchOverflowError",
    "prefix_end",
]
