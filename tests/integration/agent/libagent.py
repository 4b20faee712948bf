"""The platform with its node agent for agent integration tests (no guest boots): each test module keeps
its own ``plat`` fixture (its node name and agent options) built on :func:`agent_platform`; ``data_dir``
and ``client`` come from this folder's conftest."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from kubevisor.agent.running import AgentConfig
from kubevisor.platform import Platform
from kubevisor.testing.cluster import running_platform


@contextlib.asynccontextmanager
async def agent_platform(
    data_dir: Path, node: str, *, lease_interval: float = 1, insecure_registries: tuple[str, ...] = ()
) -> AsyncIterator[Platform]:
    """A running platform (API server, controllers) with one node agent called ``node`` under TCG, all on
    ``data_dir``."""
    config = AgentConfig(
        data_dir=data_dir,
        node_name=node,
        accel="tcg",
        lease_interval=lease_interval,
        insecure_registries=insecure_registries,
    )
    async with running_platform(data_dir, agent=True, agent_config=config) as p:
        yield p
