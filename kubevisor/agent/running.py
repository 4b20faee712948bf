"""The node agent as one object: pick the accelerator, register the Node, run the node's VMIs.

:class:`Agent` is what ``kubevisor up`` runs in-process (through :mod:`kubevisor.platform`) and what a
separate ``kubevisor agent`` process would run on another node. Start order: the KVM/TCG probe (its answer
becomes a Node label), the Node and its Lease, then the VMI controller (which adopts running QEMUs before
it acts on anything). Stop order is the reverse, and stopping never stops a guest: QEMUs outlive agent
restarts and are adopted by the next agent.

KVM is used only when a probe guest boots under it (:func:`kubevisor.virt.probe.detect`); without a probe
guest configured, or when ``/dev/kvm`` is unusable, the node runs guests under TCG and says so in its
``kubevisor.io/hypervisor`` label.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kubevisor.agent.node import NodeRegistration
from kubevisor.agent.preparing import NodeStorage
from kubevisor.agent.vmis import VmiController
from kubevisor.api.registry import Registry
from kubevisor.client.requesting import Client
from kubevisor.virt import probe
from kubevisor.virt.domain import Accel

__all__ = ["Agent", "AgentConfig", "start_agent"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentConfig:
    """How one node agent runs."""

    data_dir: Path
    """The node's data directory: run directories under ``vms/``, the probe's answer in ``accel.json``."""
    node_name: str = field(default_factory=socket.gethostname)
    """The Node's name (default: the host name)."""
    image_mirror: Mapping[str, Path] = field(default_factory=dict)
    """containerDisk image reference -> local image file, until images are pulled from registries."""
    image_dirs: tuple[Path, ...] = ()
    """Directories (besides ``DATA/images``) whose files a containerDisk may name by absolute path."""
    host_disk_dirs: tuple[Path, ...] = ()
    """Directories hostDisk volumes may use; none: hostDisk volumes are refused."""
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    """``auto``: KVM if the probe guest boots under it, else TCG."""
    probe_guest: probe.ProbeGuest | None = None
    """The guest ``auto`` boots under KVM; none: TCG without probing."""
    probe_timeout: float = 10.0
    """Seconds the probe guest has to boot under KVM."""
    memory_reserve_mib: int = 512
    """Memory kept back from the Node's allocatable for the host and the agent."""
    lease_interval: float = 10.0
    """Seconds between renewals of the node's Lease."""


class Agent:
    """One node's agent: ``await start()``, ``await stop()``."""

    def __init__(self, client: Client, config: AgentConfig, *, owns_client: bool = False) -> None:
        self.client = client
        self.config = config
        self.owns_client = owns_client
        """Close the client on :meth:`stop` (when :func:`start_agent` made it)."""
        self.accel: Accel = "tcg"
        self.node: NodeRegistration | None = None
        self.vmis: VmiController | None = None

    async def detect_accel(self) -> Accel:
        """KVM or TCG for this node's guests (see the module docstring)."""
        cfg = self.config
        if cfg.accel != "auto":
            return cfg.accel
        if cfg.probe_guest is None:
            if probe.kvm_device_usable():
                log.warning(
                    "node %s: no probe guest configured; KVM is not verified, using TCG", cfg.node_name
                )
            return "tcg"
        return await probe.detect(
            cfg.probe_guest, cache_file=cfg.data_dir / "accel.json", timeout=cfg.probe_timeout
        )

    async def start(self) -> None:
        cfg = self.config
        (cfg.data_dir / "vms").mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.data_dir / "vms", 0o700)
        self.accel = await self.detect_accel()
        self.node = NodeRegistration(
            self.client,
            cfg.node_name,
            accel=self.accel,
            memory_reserve_mib=cfg.memory_reserve_mib,
            lease_interval=cfg.lease_interval,
        )
        await self.node.start()
        self.vmis = VmiController(
            self.client,
            node=cfg.node_name,
            data_dir=cfg.data_dir,
            accel=self.accel,
            storage=NodeStorage(
                node=cfg.node_name,
                image_mirror=cfg.image_mirror,
                image_dirs=(cfg.data_dir / "images", *cfg.image_dirs),
                host_disk_dirs=cfg.host_disk_dirs,
            ),
        )
        await self.vmis.start()
        log.info("node agent %s running (%s)", cfg.node_name, self.accel)

    async def stop(self) -> None:
        """Stop watching and heartbeating; running guests keep running."""
        if self.vmis is not None:
            await self.vmis.stop()
        if self.node is not None:
            await self.node.stop()
        if self.owns_client:
            await self.client.aclose()


async def start_agent(kubeconfig: str | os.PathLike[str], registry: Registry, config: AgentConfig) -> Agent:
    """Start a node agent against ``kubeconfig``'s server; ``await agent.stop()`` ends it."""
    client = Client.from_kubeconfig(kubeconfig, registry=registry)
    agent = Agent(client, config, owns_client=True)
    try:
        await agent.start()
    except BaseException:
        await agent.stop()
        raise
    return agent
