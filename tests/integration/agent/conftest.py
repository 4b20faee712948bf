"""Fixtures shared by the agent integration tests: ``data_dir``, a short data directory (unix socket paths
stay under 108 bytes) whose QEMUs are killed at the end, and ``client``, an admin client of the test
module's ``plat`` (each module defines ``plat``, usually with :func:`libagent.agent_platform`)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.client import Client
from kubevisor.platform import Platform
from tests.e2e import libvmi


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kv-"))
    yield path
    libvmi.kill_qemus(path)  # a VMI some test started may have a QEMU left
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def client(plat: Platform) -> AsyncIterator[Client]:
    async with Client.from_kubeconfig(plat.kubeconfig) as c:
        yield c
