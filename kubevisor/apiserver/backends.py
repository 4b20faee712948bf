"""Which store the API server runs on. Only the apiserver package touches ``kubevisor.store``.

The embedded SQLite store serves a single node; an etcd backend (multi-node) will be chosen here too.
"""

from __future__ import annotations

from pathlib import Path

from kubevisor.store import Store
from kubevisor.store.sqlite import SQLiteStore

__all__ = ["Store", "open_embedded"]


async def open_embedded(path: Path) -> Store:
    """The embedded store at ``path`` (SQLite, WAL mode)."""
    return await SQLiteStore.open(path)
