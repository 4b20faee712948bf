"""Fixtures for client unit tests: every test fails if it leaves an asyncio task running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail the test if a task it started is still pending after it returned."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    pending = {t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()}
    if pending:
        # Finalizers of abandoned async generators run as short tasks; give them a moment to end.
        await asyncio.wait(pending, timeout=1.0)
    leaked = [t for t in pending if not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"tasks still running after the test: {leaked}"
