"""``client``: an admin client of the test module's ``plat``; ``volumes``: a directory for PersistentVolumes
made by hand (:func:`libnodeagent.make_volume`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.client import Client
from kubevisor.platform import Platform


@pytest.fixture
async def client(plat: Platform) -> AsyncIterator[Client]:
    async with Client.from_kubeconfig(plat.kubeconfig) as c:
        yield c


@pytest.fixture
def volumes(tmp_path: Path) -> Path:
    path = tmp_path / "volumes"
    path.mkdir()
    return path
