"""Fixtures shared by integration tests: a real platform in the test's event loop, and an admin client."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kubevisor.platform import Platform
from kubevisor.testing.cluster import running_platform
from kubevisor.testing.kinds import registry_with_test_kinds


@pytest.fixture
async def plat(tmp_path: Path) -> AsyncIterator[Platform]:
    async with running_platform(tmp_path / "data", registry=registry_with_test_kinds()) as p:
        yield p


def client_for(plat: Platform, token: str | None = None) -> httpx.AsyncClient:
    """A client that trusts the cluster CA and presents no certificate (anonymous, or a bearer token)."""
    assert plat.pki is not None
    headers = {"authorization": f"Bearer {token}"} if token else None
    ctx = ssl.create_default_context(cafile=str(plat.pki.ca_cert))
    return httpx.AsyncClient(base_url=plat.url, verify=ctx, headers=headers, timeout=30)


@pytest.fixture
async def http(plat: Platform) -> AsyncIterator[httpx.AsyncClient]:
    assert plat.pki is not None
    async with httpx.AsyncClient(base_url=plat.url, verify=plat.pki.client_ssl_context(), timeout=30) as c:
        yield c
