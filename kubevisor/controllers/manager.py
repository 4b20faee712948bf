"""Running a set of controllers, and only while this process holds the controller-manager Lease.

Controllers act on the cluster, so two replicas acting at once would fight (two schedulers binding one
VMI to two nodes). :class:`ControllerManager` therefore starts its controllers only while it leads (a
:class:`~kubevisor.client.leaderelection.LeaderElector` on ``kube-system/kubevisor-controller-manager``),
stops them all when leadership is lost, and starts them again, with fresh caches, when it leads again.
On a clean stop it releases the Lease so a standby takes over at once.

The controllers of one manager share their informers (:attr:`ControllerManager.informers`, a
:class:`~kubevisor.client.informers.SharedInformers`): each kind is listed and watched once for all of
them, not once per controller. When leadership is lost every controller releases its informers, so they
all stop, and the next term lists afresh.

:func:`start_builtin_controllers` is what the platform (``kubevisor up``) calls: it builds a client from the
admin kubeconfig and runs the built-in controllers (garbage collector, namespace) under leader election.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Sequence

from kubevisor.api.registry import Registry
from kubevisor.client.informers import SharedInformers
from kubevisor.client.leaderelection import LeaderElector
from kubevisor.client.requesting import Client
from kubevisor.controllers.dataimportcron import DataImportCronController
from kubevisor.controllers.datasource import DataSourceController
from kubevisor.controllers.datavolume import DataVolumeController
from kubevisor.controllers.export import ExportController
from kubevisor.controllers.garbagecollector import GarbageCollector
from kubevisor.controllers.namespace import NamespaceController
from kubevisor.controllers.provisioning import LocalProvisioner
from kubevisor.controllers.reconciling import Controller
from kubevisor.controllers.sharedprovisioning import SharedProvisioner
from kubevisor.controllers.snapshot import RestoreController, SnapshotController
from kubevisor.controllers.vm import VirtualMachineController
from kubevisor.controllers.vmi import VirtualMachineInstanceController
from kubevisor.controllers.volumebinding import VolumeBindingController
from kubevisor.controllers.volumesnapshot import VolumeSnapshotController

log = logging.getLogger(__name__)

LEASE_NAME = "kubevisor-controller-manager"
LEASE_NAMESPACE = "kube-system"


def default_identity() -> str:
    """``<hostname>_<random>``: unique per process, readable in ``kubectl get lease``."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:10]}"


class ControllerManager:
    """Runs ``controllers`` while leading (or always, with ``leader_election=False``).

    Controllers without a :attr:`~kubevisor.controllers.reconciling.Controller.shared_informers` factory
    of their own are given this manager's :attr:`informers`.
    """

    def __init__(
        self,
        client: Client,
        controllers: Sequence[Controller],
        *,
        leader_election: bool = True,
        identity: str | None = None,
        lease_name: str = LEASE_NAME,
        lease_namespace: str = LEASE_NAMESPACE,
        lease_duration: int = 15,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.controllers = list(controllers)
        self.informers = SharedInformers()
        """The informers this manager's controllers share."""
        for controller in self.controllers:
            if controller.shared_informers is None:
                controller.shared_informers = self.informers
        self.identity = identity or default_identity()
        self.owns_client = owns_client
        """Close the client on :meth:`stop` (when the manager created it)."""
        self.elector: LeaderElector | None = None
        if leader_election:
            self.elector = LeaderElector(
                client.resource("coordination.k8s.io/v1", "leases"),
                lease_name,
                lease_namespace,
                self.identity,
                lease_duration=lease_duration,
                renew_deadline=renew_deadline,
                retry_period=retry_period,
            )
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    def __repr__(self) -> str:
        return f"ControllerManager({self.identity}, {[c.name for c in self.controllers]})"

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector is not None else self._started.is_set()

    @property
    def controllers_running(self) -> bool:
        """True while this manager's controllers are started (after the Lease was acquired)."""
        return self._started.is_set()

    async def start(self) -> None:
        """Start campaigning and running in the background; returns at once."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="controller-manager")

    async def wait_started(self) -> None:
        """Wait until this manager leads and all its controllers have synced and started."""
        await self._started.wait()

    async def run(self) -> None:
        """Campaign and run the controllers until cancelled; errors are logged and retried."""
        delay = 1.0
        while True:
            try:
                if self.elector is not None:
                    await self.elector.run(self._lead)
                else:
                    await self._lead()
                return
            except Exception:
                log.exception("%r: controllers failed; restarting in %.0fs", self, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _lead(self) -> None:
        started: list[Controller] = []
        try:
            for controller in self.controllers:
                await controller.start()
                started.append(controller)
            self._started.set()
            log.info("%r: controllers running", self)
            await asyncio.Event().wait()  # until cancelled (stop, or leadership lost)
        finally:
            self._started.clear()
            for controller in reversed(started):
                await controller.stop()

    async def stop(self) -> None:
        """Stop the controllers, release the Lease and (if owned) close the client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.informers.aclose()  # normally empty: the stopped controllers released theirs
        if self.owns_client:
            await self.client.aclose()


def builtin_controllers(
    client: Client, registry: Registry, *, insecure_registries: tuple[str, ...] = ()
) -> list[Controller]:
    """The controllers every kubevisor control plane runs. ``insecure_registries`` (``HOST[:PORT]``, the
    node agent's ``--insecure-registry``): registries the DataImportCron controller polls over plain HTTP."""
    controllers: list[Controller] = [NamespaceController(client, registry)]
    if registry.get("", "v1", "persistentvolumeclaims") is not None:
        controllers.append(VolumeBindingController(client))
    storage_kinds = (("storage.k8s.io", "v1"), ("cdi.kubevirt.io", "v1beta1"), ("kubevirt.io", "v1"))
    if all(registry.in_group_version(group, version) for group, version in storage_kinds):
        controllers += [LocalProvisioner(client), DataVolumeController(client)]
        controllers += [
            DataSourceController(client),
            DataImportCronController(client, insecure_registries=insecure_registries),
        ]
        controllers.append(SharedProvisioner(client))
    if registry.get("kubevirt.io", "v1", "virtualmachineinstances") is not None:
        controllers += [VirtualMachineController(client), VirtualMachineInstanceController(client)]
    if registry.get("snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots") is not None:
        controllers += [SnapshotController(client), RestoreController(client)]
    if registry.get("snapshot.storage.k8s.io", "v1", "volumesnapshots") is not None:
        controllers.append(VolumeSnapshotController(client))
    if registry.get("export.kubevirt.io", "v1", "virtualmachineexports") is not None:
        controllers.append(ExportController(client))
    # Last: started after the others, it reuses their (shared) informers for the kinds they watch whole.
    controllers.append(GarbageCollector(client, registry))
    return controllers


async def start_builtin_controllers(
    kubeconfig: str | os.PathLike[str],
    registry: Registry,
    *,
    leader_election: bool = True,
    insecure_registries: tuple[str, ...] = (),
) -> ControllerManager:
    """Start the built-in controllers against ``kubeconfig``'s server; ``await manager.stop()`` ends them."""
    client = Client.from_kubeconfig(kubeconfig, registry=registry)
    controllers = builtin_controllers(client, registry, insecure_registries=insecure_registries)
    manager = ControllerManager(client, controllers, leader_election=leader_election, owns_client=True)
    await manager.start()
    return manager
