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
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal

from kubevisor.agent import exporting, networking, serving, uploading
from kubevisor.agent.expanding import VolumeExpander
from kubevisor.agent.importing import Importer
from kubevisor.agent.node import NodeRegistration
from kubevisor.agent.preparing import NodeStorage
from kubevisor.agent.sharedvolumes import SharedVolumes
from kubevisor.agent.snapshots import SnapshotAgent
from kubevisor.agent.vmis import VmiController
from kubevisor.agent.volumes import LocalVolumes
from kubevisor.agent.volumesnapshots import VolumeSnapshotAgent
from kubevisor.api.registry import Registry
from kubevisor.client.requesting import Client
from kubevisor.storage import registry
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
    """containerDisk image reference -> local image file, used before any registry pull."""
    image_dirs: tuple[Path, ...] = ()
    """Directories (besides ``DATA/images``) whose files a containerDisk may name by absolute path."""
    insecure_registries: tuple[str, ...] = ()
    """Registries (``HOST`` or ``HOST:PORT``) pulled from over plain HTTP; loopback ones always are."""
    host_disk_dirs: tuple[Path, ...] = ()
    """Directories hostDisk volumes may use; none: hostDisk volumes are refused."""
    volume_dirs: tuple[Path, ...] = ()
    """Directories (besides ``DATA/volumes``) the images of PersistentVolumes may be in."""
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
    pod_network: bool = False
    """Put VM interfaces with the bridge or masquerade binding on the node's pod network (bridge ``kv0``,
    an address from ``pod_cidr``, DHCP, nftables NAT; :mod:`kubevisor.agent.networking`). Off: QEMU's
    user-mode network per VM (outbound only, no VMI IP). ``kubevisor up`` turns it on as root when
    ``ip`` and ``nft`` are installed."""
    pod_cidr: IPv4Network = networking.DEFAULT_POD_CIDR
    """This node's pod addresses; the first host address is the bridge's (the guests' gateway)."""
    network_namespace: str | None = None
    """The network namespace the node's pod network lives in (``ip netns`` name); ``None``: the agent's
    own. QEMU runs inside it, so that it opens its tap there."""
    listen: str = "127.0.0.1:0"
    """HOST:PORT of the agent's server for the apiserver (console, VNC, port-forward, pause); port 0
    picks a free one. The Node's status publishes the address and the port actually bound."""
    address: str | None = None
    """The address published as the Node's InternalIP (default: the listen host, or the host name's
    address when listening on every address)."""
    serving_cert: Path | None = None
    """The server's certificate (signed by the cluster CA); with ``serving_key`` and ``client_ca``.
    None: the agent runs no server, and the node's VMIs have no console, VNC, port-forward or pause."""
    serving_key: Path | None = None
    client_ca: Path | None = None
    """The CA that signed the apiserver's client certificate (the cluster CA)."""
    allowed_clients: tuple[str, ...] = (serving.APISERVER_CLIENT_NAME,)
    """Common names of the client certificates the server accepts (the apiserver's)."""


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
        self.snapshots: SnapshotAgent | None = None
        """Takes and restores the data of VM snapshots on this node."""
        self.volume_snapshots: VolumeSnapshotAgent | None = None
        """Takes and frees the data of VolumeSnapshots of this node's volumes."""
        self.server: serving.AgentServer | None = None
        self.pod_network: networking.PodNetwork | None = None
        """The node's pod network, when ``config.pod_network`` is on."""
        self.volumes: LocalVolumes | None = None
        """The node's local volumes (the images of the local storage class)."""
        self.importer: Importer | None = None
        """The node's DataVolume imports."""
        self.shared_volumes: SharedVolumes | None = None
        """Deletes the data of released shared-class volumes handed to this node."""
        self.expander: VolumeExpander | None = None
        """Grows the node's local volumes when their claims ask for more."""

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
        if cfg.pod_network:
            self.pod_network = await networking.PodNetwork.start(
                cfg.data_dir, cfg.pod_cidr, netns=cfg.network_namespace
            )
        self.vmis = VmiController(
            self.client,
            node=cfg.node_name,
            data_dir=cfg.data_dir,
            accel=self.accel,
            storage=NodeStorage(
                node=cfg.node_name,
                image_mirror=cfg.image_mirror,
                image_dirs=(cfg.data_dir / "images", *cfg.image_dirs),
                image_cache=registry.ImageCache(
                    cfg.data_dir / "images" / "cache", insecure_registries=cfg.insecure_registries
                ),
                host_disk_dirs=cfg.host_disk_dirs,
                volume_dirs=(cfg.data_dir / "volumes", *cfg.volume_dirs),
            ),
            pod_network=self.pod_network,
        )
        endpoint = None
        if cfg.serving_cert is not None and cfg.serving_key is not None and cfg.client_ca is not None:
            host, port = _parse_listen(cfg.listen)
            self.server = serving.AgentServer(
                self.vmis,
                self.client.resource("kubevirt.io/v1", "virtualmachineinstances"),
                host=host,
                port=port,
                context=serving.server_ssl_context(cfg.serving_cert, cfg.serving_key, cfg.client_ca),
                allowed_clients=cfg.allowed_clients,
                guest_os_info=self.vmis.guest_os_info,
                netns=cfg.network_namespace,
                uploads=uploading.UploadReceiver(
                    self.client, node=cfg.node_name, volume_dirs=(cfg.data_dir / "volumes", *cfg.volume_dirs)
                ),
                exports=exporting.ExportSender(
                    self.client,
                    node=cfg.node_name,
                    data_dir=cfg.data_dir,
                    volume_dirs=(cfg.data_dir / "volumes", *cfg.volume_dirs),
                ),
            )
            await self.server.start()
            endpoint = (cfg.address or _published_address(host), self.server.port)
        self.node = NodeRegistration(
            self.client,
            cfg.node_name,
            accel=self.accel,
            memory_reserve_mib=cfg.memory_reserve_mib,
            lease_interval=cfg.lease_interval,
            endpoint=endpoint,
        )
        await self.node.start()
        self.volumes = LocalVolumes(self.client, node=cfg.node_name, volume_dir=cfg.data_dir / "volumes")
        await self.volumes.start()
        self.importer = Importer(
            self.client,
            node=cfg.node_name,
            volumes=self.volumes,
            image_cache=self.vmis.storage.image_cache,
            volume_dirs=tuple(cfg.volume_dirs),
        )
        await self.importer.start()
        self.shared_volumes = SharedVolumes(
            self.client, node=cfg.node_name, volume_dirs=(cfg.data_dir / "volumes", *cfg.volume_dirs)
        )
        await self.shared_volumes.start()
        await self.vmis.start()
        vmis = self.vmis
        self.expander = VolumeExpander(
            self.client,
            node=cfg.node_name,
            volume_dir=cfg.data_dir / "volumes",
            sessions=lambda: [
                (g.key, g.qmp) for g in vmis.guests.values() if g.qmp is not None and g.alive()
            ],
            enqueue_vmi=vmis.enqueue,
        )
        await self.expander.start()
        self.snapshots = SnapshotAgent(
            self.client,
            node=cfg.node_name,
            data_dir=cfg.data_dir,
            vmis=self.vmis,
            volume_dirs=(cfg.data_dir / "volumes", *cfg.volume_dirs),
        )
        await self.snapshots.start()
        self.volume_snapshots = VolumeSnapshotAgent(
            self.client,
            node=cfg.node_name,
            data_dir=cfg.data_dir,
            vmis=self.vmis,
            snapshots=self.snapshots,
            volume_dirs=(cfg.data_dir / "volumes", *cfg.volume_dirs),
        )
        self.importer.restore_snapshot = self.volume_snapshots.restore
        await self.volume_snapshots.start()
        log.info("node agent %s running (%s)", cfg.node_name, self.accel)

    async def stop(self) -> None:
        """Stop watching and heartbeating; running guests keep running."""
        if self.server is not None:
            await self.server.stop()
        if self.volume_snapshots is not None:
            await self.volume_snapshots.stop()
        if self.snapshots is not None:
            await self.snapshots.stop()
        if self.vmis is not None:
            await self.vmis.stop()
        if self.expander is not None:
            await self.expander.stop()
        if self.importer is not None:
            await self.importer.stop()
        if self.shared_volumes is not None:
            await self.shared_volumes.stop()
        if self.volumes is not None:
            await self.volumes.stop()
        if self.node is not None:
            await self.node.stop()
        if self.pod_network is not None:
            await self.pod_network.close()  # the bridge, nftables and the guests' taps stay
        if self.owns_client:
            await self.client.aclose()


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"agent listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:10250")
    return host.strip("[]") or "127.0.0.1", int(port)


def _published_address(host: str) -> str:
    if host not in ("0.0.0.0", "::"):
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


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
