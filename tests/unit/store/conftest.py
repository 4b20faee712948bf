"""The ``store`` fixture: one fresh store per backend, so the behaviour tests run against each of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.store.protocol import Store
from tests.unit.store.backends import BACKENDS, open_backend


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: str = request.param
    opened = await open_backend(backend, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()
