"""The single-node platform in one process: store, API server, controllers and the node agent.

``kubevisor up`` runs a :class:`Platform` in the foreground. Tests start the same thing in-process
(``kubevisor.testing.cluster``), so what they exercise is what users run. On first start the data
directory gets the cluster PKI and an admin kubeconfig; later starts reuse them.

The node agent (``agent=True``; ``kubevisor up`` turns it on, tests that boot no guest leave it off)
starts after the controllers and stops first. Stopping the platform never stops a guest: QEMUs outlive
it, and the agent of the next start adopts them.

On the first start the platform creates the default StorageClass ``local`` (provisioner
``kubevisor.io/local``, WaitForFirstConsumer, reclaimPolicy Delete, expandable); a marker file in the data
directory records that it did, so a class the administrator deleted or changed is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from kubevisor.api.registry import Registry, default_registry
from kubevisor.apiserver import backends
from kubevisor.apiserver.app import ApiServer
from kubevisor.apiserver.pki import (
    PKI,
    ensure_agent_client,
    ensure_agent_serving,
    ensure_pki,
    write_kubeconfig,
)
from kubevisor.apiserver.serving import Listener, Server

if TYPE_CHECKING:
    from kubevisor.agent.running import Agent, AgentConfig

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:6443")
    return host.strip("[]") or "127.0.0.1", int(port)


class Platform:
    """Everything ``kubevisor up`` runs, with a start/stop lifecycle."""

    def __init__(
        self,
        data_dir: Path,
        listen: str = "127.0.0.1:6443",
        *,
        registry: Registry | None = None,
        controllers: bool = True,
        compaction_interval: float = 300.0,
        agent: bool = False,
        agent_config: AgentConfig | None = None,
        insecure_registries: tuple[str, ...] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host, self.requested_port = parse_listen(listen)
        self.registry = registry or default_registry()
        self.run_controllers = controllers
        self.compaction_interval = compaction_interval
        self.store: backends.Store | None = None
        self.app: ApiServer | None = None
        self.pki: PKI | None = None
        self._server: Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._controllers: list[object] = []
        self.run_agent = agent
        self.agent_config = agent_config
        """The node agent's settings; default: this data directory, the host's name, no image mirror."""
        self.agent: Agent | None = None
        self.insecure_registries: tuple[str, ...] = tuple(
            insecure_registries
            if insecure_registries is not None
            else (agent_config.insecure_registries if agent_config is not None else ())
        )
        """Registries (``HOST[:PORT]``) spoken to over plain HTTP by the controllers (DataImportCron polls)
        as by the agent (pulls); default: the agent config's ``insecure_registries``."""
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self.pki = ensure_pki(self.data_dir / "pki", hosts=[self.host])
        self.store = await backends.open_embedded(self.data_dir / "db.sqlite")
        tokens = self.pki.token_issuer()
        agent_cert, agent_key = ensure_agent_client(self.pki)
        self.app = ApiServer(
            self.store,
            self.registry,
            tokens=tokens,
            compaction_interval=self.compaction_interval,
            agent_tls=self.pki.client_ssl_context(agent_cert, agent_key),
        )
        await self.app.start()
        listener = Listener.bind(self.host, self.requested_port)
        self.port = listener.port
        write_kubeconfig(
            self.kubeconfig,
            server=self.url,
            ca_pem=self.pki.ca_cert.read_bytes(),
            user="admin",
            client_cert_pem=self.pki.admin_cert.read_bytes(),
            client_key_pem=self.pki.admin_key.read_bytes(),
        )
        self._server = Server(self.app, listener, self.pki.server_ssl_context())
        self._serve_task = asyncio.create_task(self._server.serve(), name="apiserver")
        await self._server.wait_started()
        await self._default_storage_class()
        await self._default_snapshot_class()
        if self.run_controllers:
            await self._start_controllers()
        if self.run_agent:
            await self._start_agent()
        log.info("kubevisor API server listening on %s", self.url)

    async def _default_storage_class(self) -> None:
        marker = self.data_dir / "default-storageclass-created"
        if marker.exists() or self.registry.get("storage.k8s.io", "v1", "storageclasses") is None:
            return
        from kubevisor.api import storage
        from kubevisor.client import errors
        from kubevisor.client.requesting import Client

        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "local", "annotations": {storage.DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": storage.LOCAL_PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
            "allowVolumeExpansion": True,
        }
        async with Client.from_kubeconfig(self.kubeconfig, registry=self.registry) as client:
            with contextlib.suppress(errors.AlreadyExistsError):
                await client.resource("storage.k8s.io/v1", "storageclasses").create(body)
        marker.write_text("the default StorageClass 'local' was created; delete this file to recreate it\n")

    async def _default_snapshot_class(self) -> None:
        """The default VolumeSnapshotClass ``local`` (driver kubevisor.io/local), made once."""
        marker = self.data_dir / "default-volumesnapshotclass-created"
        if (
            marker.exists()
            or self.registry.get("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses") is None
        ):
            return
        from kubevisor.api import volumesnapshot
        from kubevisor.client import errors
        from kubevisor.client.requesting import Client

        body = {
            "apiVersion": volumesnapshot.API_VERSION,
            "kind": "VolumeSnapshotClass",
            "metadata": {
                "name": volumesnapshot.DEFAULT_CLASS,
                "annotations": {volumesnapshot.DEFAULT_CLASS_ANNOTATION: "true"},
            },
            "driver": volumesnapshot.LOCAL_DRIVER,
            "deletionPolicy": "Delete",
        }
        async with Client.from_kubeconfig(self.kubeconfig, registry=self.registry) as client:
            with contextlib.suppress(errors.AlreadyExistsError):
                await client.resource(volumesnapshot.API_VERSION, "volumesnapshotclasses").create(body)
        marker.write_text(
            "the default VolumeSnapshotClass 'local' was created; delete this file to recreate it\n"
        )

    async def _start_controllers(self) -> None:
        try:
            from kubevisor.controllers.manager import start_builtin_controllers
        except ImportError:  # controllers not available in this build
            return
        self._controllers.append(
            await start_builtin_controllers(
                self.kubeconfig, self.registry, insecure_registries=self.insecure_registries
            )
        )

    async def _start_agent(self) -> None:
        from kubevisor.agent.running import AgentConfig, start_agent

        config = self.agent_config or AgentConfig(data_dir=self.data_dir)
        if config.serving_cert is None and self.pki is not None:  # this cluster's CA signs its certificate
            host = config.listen.rpartition(":")[0].strip("[]")
            hosts = [h for h in (host, config.address) if h and h not in ("0.0.0.0", "::")]
            cert, key = ensure_agent_serving(self.pki, config.node_name, hosts)
            config = dataclasses.replace(
                config, serving_cert=cert, serving_key=key, client_ca=self.pki.ca_cert
            )
        self.agent = await start_agent(self.kubeconfig, self.registry, config)

    async def stop(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            try:
                await agent.stop()  # guests keep running
            except Exception:
                log.exception("stopping the node agent failed")
        for ctl in reversed(self._controllers):
            stop = getattr(ctl, "stop", None)
            if stop is not None:
                with contextlib.suppress(Exception):
                    await stop()
        self._controllers.clear()
        if self._server is not None:
            self._server.shutdown()
        if self._serve_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_task
        if self.app is not None:
            await self.app.stop()
        if self.store is not None:
            await self.store.close()

    async def __aenter__(self) -> Platform:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
