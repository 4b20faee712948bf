"""The node agent's Node: registration with what the node offers, and the heartbeat Lease.

As a kubelet does: on start the agent creates its Node (or updates the one a previous run left), writes
its status (capacity, allocatable, addresses, node info, a ``Ready`` condition), then renews a Lease named
after the node in ``kube-node-lease`` every ``lease_interval`` seconds, which is the cheap heartbeat a node
lifecycle controller watches (a full Node status write every 10 s would cost far more).

Labels: ``kubernetes.io/hostname``, ``kubernetes.io/os``, ``kubernetes.io/arch``,
``kubevirt.io/schedulable=true`` (KubeVirt's scheduling label) and ``kubevisor.io/hypervisor`` = ``kvm`` or
``tcg``: what the probe found (:mod:`kubevisor.virt.probe`), so a VM can select KVM nodes.

Capacity: memory from ``/proc/meminfo`` (MemTotal), CPUs from the CPU count; allocatable memory is
capacity minus ``memory_reserve_mib`` (kept for the host and the agent, as a kubelet's system-reserved).

Owner of the Node's status and of its ``kube-node-lease`` Lease: this module. Stopping the heartbeat does
not mark the node NotReady (a kubelet does not either): a node whose Lease expires is the node lifecycle
controller's to judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubevisor import __version__
from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.requesting import Client
from kubevisor.virt.domain import Accel

__all__ = [
    "HYPERVISOR_LABEL",
    "LEASE_NAMESPACE",
    "SCHEDULABLE_LABEL",
    "NodeRegistration",
    "host_capacity",
    "node_labels",
]

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
HYPERVISOR_LABEL = "kubevisor.io/hypervisor"
SCHEDULABLE_LABEL = "kubevirt.io/schedulable"
LEASE_DURATION = 40
"""Seconds a node's Lease stays valid without renewal (kubelet's default)."""
MAX_PODS = "110"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def host_capacity(
    memory_reserve_mib: int, meminfo: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """(capacity, allocatable) of this host as Node quantities."""
    text = _read("/proc/meminfo") if meminfo is None else meminfo
    total_kib = 0
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            total_kib = int(line.split()[1])
            break
    cpus = str(os.cpu_count() or 1)
    allocatable_kib = max(0, total_kib - memory_reserve_mib * 1024)
    capacity = {"cpu": cpus, "memory": f"{total_kib}Ki", "pods": MAX_PODS}
    allocatable = {"cpu": cpus, "memory": f"{allocatable_kib}Ki", "pods": MAX_PODS}
    return capacity, allocatable


def node_labels(name: str, accel: Accel) -> dict[str, str]:
    """The labels the agent keeps on its Node."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        SCHEDULABLE_LABEL: "true",
        HYPERVISOR_LABEL: accel,
    }


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "Linux"


def _node_info() -> dict[str, str]:
    return {
        "machineID": _read("/etc/machine-id").strip(),
        "systemUUID": "",
        "bootID": _read("/proc/sys/kernel/random/boot_id").strip(),
        "kernelVersion": platform.release(),
        "osImage": _os_image(),
        "containerRuntimeVersion": "",
        "kubeletVersion": f"kubevisor-{__version__}",
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": node_labels("", "tcg")["kubernetes.io/arch"],
    }


class NodeRegistration:
    """Registers the Node and keeps its Lease renewed (``start`` / ``stop``)."""

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        accel: Accel,
        memory_reserve_mib: int = 512,
        lease_interval: float = 10.0,
        endpoint: tuple[str, int] | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.endpoint = endpoint
        """(InternalIP, port) of the agent's server, published in ``status.addresses`` and
        ``status.daemonEndpoints.kubeletEndpoint.Port`` for the apiserver; None: the node serves none."""
        self.accel = accel
        self.memory_reserve_mib = memory_reserve_mib
        self.lease_interval = lease_interval
        self.nodes = client.resource("v1", "nodes")
        self.leases = client.resource("coordination.k8s.io/v1", "leases")
        self._task: asyncio.Task[None] | None = None
        self._node_uid = ""

    async def register(self) -> Obj:
        """Create or update the Node (labels), then write its status; returns the Node."""
        labels = node_labels(self.name, self.accel)
        try:
            node = await self.nodes.get(self.name)
        except errors.NotFoundError:
            try:
                node = await self.nodes.create(
                    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": labels}}
                )
            except errors.AlreadyExistsError:
                node = await self.nodes.get(self.name)
        if any((node["metadata"].get("labels") or {}).get(k) != v for k, v in labels.items()):
            node = await self.nodes.patch(self.name, {"metadata": {"labels": labels}})
        self._node_uid = str(node["metadata"].get("uid") or "")
        node = await self._write_status(node)
        return node

    async def _write_status(self, node: Obj) -> Obj:
        capacity, allocatable = host_capacity(self.memory_reserve_mib)
        now = timestamps.format_time(timestamps.now())
        old = node.get("status") or {}
        previous = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), None)
        ready: dict[str, Any] = {
            "type": "Ready",
            "status": "True",
            "reason": "AgentReady",
            "message": f"kubevisor agent is posting ready status (hypervisor {self.accel})",
            "lastHeartbeatTime": now,
            "lastTransitionTime": (
                previous.get("lastTransitionTime") if previous and previous.get("status") == "True" else now
            ),
        }
        conditions = [c for c in old.get("conditions") or [] if c.get("type") != "Ready"] + [ready]
        status = dict(
            old,
            capacity=capacity,
            allocatable=allocatable,
            conditions=conditions,
            addresses=[{"type": "Hostname", "address": self.name}],
            nodeInfo=_node_info(),
        )
        if self.endpoint is not None:
            status["addresses"] = [{"type": "InternalIP", "address": self.endpoint[0]}, *status["addresses"]]
            status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self.endpoint[1]}}
        else:
            status.pop("daemonEndpoints", None)
        for attempt in range(5):
            try:
                result: Obj = await self.nodes.update_status(dict(node, status=status))
                return result
            except errors.ConflictError:
                if attempt == 4:
                    raise
                node = await self.nodes.get(self.name)
        raise AssertionError("unreachable")

    async def renew_lease(self) -> None:
        """Create the node's Lease, or renew it (one write)."""
        now = timestamps.format_micro_time(timestamps.now())
        try:
            lease = await self.leases.get(self.name, LEASE_NAMESPACE)
        except errors.NotFoundError:
            owner = (
                [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._node_uid}]
                if self._node_uid
                else []
            )
            body: Obj = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE, "ownerReferences": owner},
                "spec": {
                    "holderIdentity": self.name,
                    "leaseDurationSeconds": LEASE_DURATION,
                    "renewTime": now,
                },
            }
            with contextlib.suppress(errors.AlreadyExistsError):
                await self.leases.create(body, LEASE_NAMESPACE)
            return
        spec: Mapping[str, Any] = lease.get("spec") or {}
        await self.leases.update(
            dict(
                lease,
                spec=dict(spec, holderIdentity=self.name, leaseDurationSeconds=LEASE_DURATION, renewTime=now),
            )
        )

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.renew_lease()
            except errors.ClientError as e:
                log.warning("node %s: renewing its Lease failed: %s (retrying)", self.name, e)
            await asyncio.sleep(self.lease_interval)

    async def start(self) -> None:
        """Register the Node and its Lease now, then renew the Lease in the background."""
        await self.register()
        await self.renew_lease()
        self._task = asyncio.create_task(self._heartbeat_after_first(), name=f"node-lease-{self.name}")

    async def _heartbeat_after_first(self) -> None:
        await asyncio.sleep(self.lease_interval)
        await self._heartbeat()

    async def stop(self) -> None:
        """Stop renewing the Lease (the Node and the Lease stay)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
