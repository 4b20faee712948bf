"""The VirtualMachineInstance controller: scheduling, up to phase ``Scheduled``.

Owner of VMI ``status.phase`` from unset to ``Scheduled`` (with ``status.nodeName`` and the
``kubevirt.io/nodeName`` label): "here is where the responsibility of virt-controller ends and
virt-handler takes over" (KubeVirt types.go) — the node agent owns every later phase.

The scheduler picks, among Ready and schedulable Nodes whose labels match ``spec.nodeSelector`` and whose
NoSchedule/NoExecute taints the VMI tolerates, the one with the most free memory, where free means the
Node's allocatable minus what the unfinished VMIs bound to it request. When nothing fits the VMI stays
Pending with condition ``PodScheduled=False, reason Unschedulable`` (the VM shows ErrorUnschedulable) and a
``FailedScheduling`` Event says why, as kube-scheduler's "0/N nodes are available: ..." does.
A VMI whose claims are bound to volumes with a node affinity (the local storage class's) goes only to
that node ("volume node affinity conflict" otherwise), as kube-scheduler's VolumeBinding plugin does.

A VMI is scheduled in one status write (Pending → Scheduled), which keeps API writes per VMI low: create,
Scheduled, Running (the node agent's finalizer is put on by the apiserver's defaulting at creation).

The node agent removes its finalizer (``kubevisor.io/node-agent``) once a VMI's guest is down. A VMI that no
agent will ever look at gets it removed here when it is deleted, so the delete never hangs: one that was never
bound to a node (Pending, unschedulable, or Failed before scheduling), and one bound to a Node that no longer
exists. The removal carries the resourceVersion read, so it cannot race a scheduling write (409, requeue).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from decimal import Decimal
from typing import Any

from kubevisor.api.kubevirt_admission import NODE_AGENT_FINALIZER, parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import errors
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.provisioning import claims_of_vmi, node_of_volume
from kubevisor.controllers.reconciling import Controller, Result

log = logging.getLogger(__name__)

GROUP_VERSION = "kubevirt.io/v1"
FINISHED = ("Succeeded", "Failed")
DEFAULT_CPU_PER_VCPU = Decimal("0.1")
"""KubeVirt requests 100m of CPU per vCPU by default (cpu allocation ratio 10)."""
UNSCHEDULABLE_RETRY = 5.0


def vcpus(spec: Obj) -> int:
    cpu = ((spec.get("domain") or {}).get("cpu")) or {}
    return int(cpu.get("cores") or 1) * int(cpu.get("sockets") or 1) * int(cpu.get("threads") or 1)


def requests(spec: Obj) -> tuple[Decimal, Decimal]:
    """(memory bytes, CPU cores) a VMI asks of its node."""
    domain = spec.get("domain") or {}
    res = (domain.get("resources") or {}).get("requests") or {}
    memory = parse_quantity(res.get("memory")) or parse_quantity((domain.get("memory") or {}).get("guest"))
    cpu = parse_quantity(res.get("cpu"))
    if cpu is None:
        cpu = DEFAULT_CPU_PER_VCPU * vcpus(spec)
    return memory or Decimal(0), cpu


def tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        op = tol.get("operator") or "Equal"
        if not tol.get("key") and op == "Exists":
            return True
        if tol.get("key") != taint.get("key"):
            continue
        if op == "Exists" or (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def node_ready(node: Obj) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


class Scheduler:
    """Chooses a node for a VMI from the informer caches (pure: no I/O)."""

    def choose(
        self, vmi: Obj, nodes: list[Obj], vmis: list[Obj], volume_nodes: set[str] | None = None
    ) -> tuple[str | None, str]:
        """``volume_nodes``: the nodes the VMI's volumes are pinned to (each must be the chosen one)."""
        spec = vmi.get("spec") or {}
        mem, cpu = requests(spec)
        selector = spec.get("nodeSelector") or {}
        tolerations = spec.get("tolerations") or []
        used: dict[str, list[Decimal]] = {}
        for other in vmis:
            status = other.get("status") or {}
            node = status.get("nodeName")
            if (
                not node
                or status.get("phase") in FINISHED
                or other["metadata"]["uid"] == vmi["metadata"]["uid"]
            ):
                continue
            m, c = requests(other.get("spec") or {})
            acc = used.setdefault(node, [Decimal(0), Decimal(0)])
            acc[0] += m
            acc[1] += c
        reasons: Counter[str] = Counter()
        best: tuple[Decimal, str] | None = None
        for node in nodes:
            name = node["metadata"]["name"]
            labels = node["metadata"].get("labels") or {}
            if not node_ready(node):
                reasons["node(s) were not ready"] += 1
                continue
            if (node.get("spec") or {}).get("unschedulable"):
                reasons["node(s) were unschedulable"] += 1
                continue
            if any(labels.get(k) != v for k, v in selector.items()):
                reasons["node(s) didn't match Pod's node affinity/selector"] += 1
                continue
            if volume_nodes and volume_nodes != {name}:
                reasons["node(s) had volume node affinity conflict"] += 1
                continue
            taints = [
                t
                for t in (node.get("spec") or {}).get("taints") or []
                if t.get("effect") in ("NoSchedule", "NoExecute")
            ]
            untolerated = [t for t in taints if not tolerates(tolerations, t)]
            if untolerated:
                t = untolerated[0]
                reasons[f"node(s) had untolerated taint {{{t.get('key')}: {t.get('value') or ''}}}"] += 1
                continue
            alloc = (node.get("status") or {}).get("allocatable") or {}
            free_mem = (parse_quantity(alloc.get("memory")) or Decimal(0)) - used.get(name, [Decimal(0)] * 2)[
                0
            ]
            free_cpu = (parse_quantity(alloc.get("cpu")) or Decimal(0)) - used.get(name, [Decimal(0)] * 2)[1]
            if free_mem < mem:
                reasons["Insufficient memory"] += 1
                continue
            if free_cpu < cpu:
                reasons["Insufficient cpu"] += 1
                continue
            if best is None or free_mem > best[0]:
                best = (free_mem, name)
        if best is not None:
            return best[1], ""
        detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        return None, f"0/{len(nodes)} nodes are available" + (f": {detail}." if detail else ".")


class VirtualMachineInstanceController(Controller):
    """Schedules pending VMIs onto nodes."""

    name = "virtualmachineinstance"
    concurrency = 4

    def __init__(self, client: Client, *, concurrency: int | None = None) -> None:
        super().__init__(client, concurrency=concurrency)
        self.vmis: ResourceClient = client.resource(GROUP_VERSION, "virtualmachineinstances")
        self.nodes: ResourceClient = client.resource("v1", "nodes")
        self.pvcs: ResourceClient = client.resource("v1", "persistentvolumeclaims")
        self.pvs: ResourceClient = client.resource("v1", "persistentvolumes")
        self._pvc_informer: Informer | None = None
        self._pv_informer: Informer | None = None
        self.recorder = EventRecorder(client, "virtualmachineinstance-controller")
        self.scheduler = Scheduler()
        self._vmi_informer: Informer | None = None
        self._node_informer: Informer | None = None
        self._reported: dict[str, str] = {}
        """Last FailedScheduling message per VMI key, so a retry does not repeat the Event."""
        self._assumed: dict[str, tuple[str, str]] = {}
        """VMI key -> (uid, node) bound by this controller and not yet bound in the informer's cache (as
        kube-scheduler's assume cache): workers scheduling at the same time count each other's VMIs, so a
        node is never overcommitted between a binding write and its watch event."""

    def setup(self) -> None:
        self._vmi_informer = self.watch(self.vmis)
        self._node_informer = self.watch(self.nodes, keys=self._pending_keys)
        self._pvc_informer = self.watch(self.pvcs, keys=None)  # caches only: volumes pin VMIs to nodes
        self._pv_informer = self.watch(self.pvs, keys=None)

    def _volume_nodes(self, vmi: Obj) -> set[str]:
        """The nodes the volumes of the VMI's bound claims can only be reached from."""
        assert self._pvc_informer is not None and self._pv_informer is not None
        nodes: set[str] = set()
        namespace = vmi["metadata"].get("namespace")
        for claim in claims_of_vmi(vmi):
            pvc = self._pvc_informer.get(f"{namespace}/{claim}")
            volume = ((pvc or {}).get("spec") or {}).get("volumeName")
            pv = self._pv_informer.get(str(volume)) if volume else None
            node = node_of_volume(pv) if pv is not None else None
            if node:
                nodes.add(node)
        return nodes

    def _pending_keys(self, node: Obj) -> list[str]:
        """A Node change may make room: look at every VMI still waiting for one (and, a Node being gone, at
        the deleted VMIs bound to it, whose finalizer no agent will remove)."""
        if self._vmi_informer is None:
            return []
        keys = []
        name = node["metadata"]["name"]
        for vmi in self._vmi_informer.list():
            status = vmi.get("status") or {}
            unbound = not status.get("nodeName")
            waiting = unbound and status.get("phase") in (None, "", "Pending", "Scheduling")
            orphaned = status.get("nodeName") == name and vmi["metadata"].get("deletionTimestamp")
            if waiting or orphaned:
                keys.append(f"{vmi['metadata']['namespace']}/{vmi['metadata']['name']}")
        return keys

    async def reconcile(self, key: str) -> Result | None:
        assert self._vmi_informer is not None and self._node_informer is not None
        vmi = self._vmi_informer.get(key)
        if vmi is None:
            self._reported.pop(key, None)
            self._assumed.pop(key, None)
            return None
        status = vmi.get("status") or {}
        if vmi["metadata"].get("deletionTimestamp"):
            await self._release_unbound(vmi)
            return None
        if status.get("nodeName"):
            return None
        if status.get("phase") not in (None, "", "Pending", "Scheduling"):
            return None
        vmis = self._with_assumed(self._vmi_informer.list())
        node, why = self.scheduler.choose(vmi, self._node_informer.list(), vmis, self._volume_nodes(vmi))
        new_status = copy.deepcopy(status)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [c for c in new_status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        if node is None:
            new_status["phase"] = "Pending"
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": why,
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                }
            )
            new_status["conditions"] = conditions
            if new_status != status:
                await self._update_status(vmi, new_status)
            if self._reported.get(key) != why:
                self._reported[key] = why
                await self.recorder.warning(vmi, "FailedScheduling", why)
            return Result(requeue_after=UNSCHEDULABLE_RETRY)
        self._reported.pop(key, None)
        self._assumed[key] = (vmi["metadata"]["uid"], node)  # before any await: see _assumed
        new_status["phase"] = "Scheduled"
        new_status["nodeName"] = node
        if conditions:
            new_status["conditions"] = conditions
        else:
            new_status.pop("conditions", None)
        transitions = [
            t for t in new_status.get("phaseTransitionTimestamps") or [] if t.get("phase") != "Scheduled"
        ]
        transitions.append({"phase": "Scheduled", "phaseTransitionTimestamp": now})
        new_status["phaseTransitionTimestamps"] = transitions
        # One status write; the node agent selects its VMIs by the status.nodeName field selector.
        try:
            await self._update_status(vmi, new_status)
        except BaseException:
            self._assumed.pop(key, None)  # not bound (409: requeued and chosen again)
            raise
        log.info("scheduled %s on %s", key, node)
        return None

    def _with_assumed(self, vmis: list[Obj]) -> list[Obj]:
        """``vmis`` with those this controller bound shown bound, until the cache catches up."""
        seen = []
        for vmi in vmis:
            key = f"{vmi['metadata']['namespace']}/{vmi['metadata']['name']}"
            assumed = self._assumed.get(key)
            if assumed is None or assumed[0] != vmi["metadata"]["uid"]:
                seen.append(vmi)
            elif (vmi.get("status") or {}).get("nodeName"):
                del self._assumed[key]  # the informer has the binding now
                seen.append(vmi)
            else:
                seen.append(dict(vmi, status=dict(vmi.get("status") or {}, nodeName=assumed[1])))
        return seen

    async def _release_unbound(self, vmi: Obj) -> None:
        """Remove the node agent's finalizer from a deleted VMI that no node agent will handle."""
        assert self._node_informer is not None
        finalizers = list(vmi["metadata"].get("finalizers") or [])
        if NODE_AGENT_FINALIZER not in finalizers:
            return
        node = (vmi.get("status") or {}).get("nodeName")
        if node and self._node_informer.get(node) is not None:
            return  # that node's agent stops the guest and removes the finalizer
        body = copy.deepcopy(vmi)
        body["metadata"]["finalizers"] = [f for f in finalizers if f != NODE_AGENT_FINALIZER]
        try:
            await self.vmis.update(body)  # 409 when stale (e.g. just scheduled): requeued, re-read
        except errors.NotFoundError:
            return
        why = f"its node {node} does not exist" if node else "it was never scheduled to a node"
        log.info("released deleted VMI %s/%s: %s", vmi["metadata"]["namespace"], vmi["metadata"]["name"], why)

    async def _update_status(self, vmi: Obj, status: Obj) -> None:
        body: dict[str, Any] = dict(vmi, status=status)
        try:
            await self.vmis.update_status(body)
        except errors.NotFoundError:
            return
