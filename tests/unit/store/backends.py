"""The store backends the behaviour tests run against, and how to open a fresh one."""

from __future__ import annotations

from pathlib import Path

from kubevisor.store.protocol import Store
from kubevisor.store.sqlite import SQLiteStore

BACKENDS = ["sqlite"]
"""An etcd backend adds its name here and a branch in open_backend."""


async def open_backend(backend: str, directory: Path) -> Store:
    """A fresh, empty store of the given backend whose files (if any) live in ``directory``."""
    if backend == "sqlite":
        return await SQLiteStore.open(directory / "db.sqlite")
    raise AssertionError(f"unknown backend {backend}")
