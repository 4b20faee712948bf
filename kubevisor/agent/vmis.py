"""The node agent's VMI controller: runs the VirtualMachineInstances bound to this node (KubeVirt's
virt-handler).

Desired state is the VMI (watched with ``fieldSelector=status.nodeName=<node>``); actual state is what runs,
found from the run directories ``DATA/vms/<namespace>/<name>/`` (QEMU's pidfile checked against
``/proc/<pid>/cmdline``) and QMP. Both are compared under the same key, level-based:

=====================================  =====================================================================
VMI                                    what the agent does
=====================================  =====================================================================
Scheduled, nothing runs                finalizer, prepare volumes, QEMU paused, QMP, ``cont``; then one
                                       status write: Running, Ready, LiveMigratable=False, interfaces,
                                       phaseTransitionTimestamps
Scheduled, QEMU runs (earlier start)   ``cont`` if still paused at launch, then that status write
Running, QEMU runs                     nothing
Running, QEMU gone                     Succeeded if the guest powered off (QMP ``SHUTDOWN`` from the guest,
                                       QEMU exit 0), else Failed; the run directory stays
being deleted, QEMU runs               ACPI power button, ``terminationGracePeriodSeconds`` (default 30),
                                       then SIGKILL, without blocking a worker (requeue at the deadline;
                                       QEMU's exit wakes the key at once)
being deleted, QEMU gone               remove the run directory, then the agent's finalizer
gone, or another VMI has the name      kill its QEMU, remove the run directory
=====================================  =====================================================================

Invariants:

- Never two QEMUs for one VMI: on start the agent adopts every QEMU it finds in the run directories
  *before* any worker runs, and before spawning it looks at the run directory again.
- QEMU outlives the agent: it runs in its own session and process group (:mod:`kubevisor.virt.process`);
  stopping the agent closes QMP sessions and stops watching, nothing more.
- The finalizer (:data:`FINALIZER`) is on the VMI before anything is done on the host, so a deleted VMI
  stays until its guest is down and its run directory gone.
- A failed start undoes itself (reverter): no QEMU, no half-made run directory.
- QEMU's exit is noticed through a pidfd (no polling), which enqueues the key.

Owner of, in the VMI's status (from Scheduled on): ``phase``, the ``Ready``, ``LiveMigratable`` and
``Paused`` conditions, ``interfaces``, ``machine``, and the Running/Succeeded/Failed
``phaseTransitionTimestamps``; the hotplugged volumes' ``volumeStatus`` entries
(:mod:`kubevisor.agent.hotplug`, run late in a Running VMI's reconcile) and the other volumes' ones
(:mod:`kubevisor.agent.volumestatus`: part of the Running write, then rewritten when a claim changes).

Network: with the node's pod network on (:mod:`kubevisor.agent.networking`), the VMI's pod interface is
attached (IP, tap, DHCP lease, masquerade entries) before QEMU starts, undone with the rest on failure,
detached when QEMU is gone for good (finished, deleted, gone), and re-registered with the in-process DHCP
server when a running guest is adopted; QEMU then runs in the node's network namespace. Without it,
interfaces use QEMU's user-mode network (:mod:`kubevisor.agent.converting`).

Pause: the agent's server (:mod:`kubevisor.agent.serving`) runs QMP ``stop``/``cont`` and enqueues the
key; a Running VMI's reconcile then makes the ``Paused`` condition (reason ``PausedByUser``) follow QEMU's
run state. A paused guest is resumed before its ACPI power button is pressed.

Memory: each QEMU runs in its own memory cgroup (``.../kubevisor/<namespace>_<name>``, see
:mod:`kubevisor.virt.cgroups`), limited to guest memory plus QEMU's overhead (or
``resources.limits.memory`` plus that overhead, as KubeVirt adds it to the pod's limit), entered before
QEMU runs; its path is recorded in the run directory (``cgroup``) so an adopted QEMU's is found again, and
it is removed when QEMU is gone for good (finished, deleted, gone). Without writable cgroups QEMU runs
unlimited (logged once).

Storage every node reaches: a ReadWriteOnce claim of it is opened only as the holder of its
VolumeAttachment (:mod:`kubevisor.agent.attachments`), taken while preparing (or hotplugging) and listed in
the run directory; the agent releases what that list names whenever it finds the VMI's QEMU gone for good
(finished, deleted, gone, a failed start), and on its own start the attachments of its node whose VMI it runs
no QEMU for.

Not yet: ``startStrategy: Paused`` (starts the VM running), guest agent, live migration.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubevisor.agent import (
    attachments,
    blockdevices,
    claims,
    converting,
    guestagents,
    hotplug,
    networking,
    preparing,
    volumestatus,
)
from kubevisor.api.kubevirt import VirtualMachineInstanceSpec
from kubevisor.api.kubevirt_admission import NODE_AGENT_FINALIZER, parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer, split_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError
from kubevisor.network import bindings
from kubevisor.network.errors import NetworkError
from kubevisor.virt import cgroups, cpuweights, guestagent, process, qemucmd
from kubevisor.virt.domain import Accel, Domain, RunPaths
from kubevisor.virt.qmp import EventListener, QmpError, Session

__all__ = ["DEFAULT_GRACE_PERIOD", "FINALIZER", "Guest", "VmiController"]

log = logging.getLogger(__name__)

GROUP_VERSION = "kubevirt.io/v1"
FINALIZER = NODE_AGENT_FINALIZER
"""On every VMI from its creation (the apiserver's VMI defaulting puts it there, so it costs no API write);
the agent adds it only to a VMI that lacks it (created before that default existed) before it starts it, and
removes it once its guest is down and its run directory gone."""
DEFAULT_GRACE_PERIOD = 30
"""Seconds between the ACPI power button and SIGKILL when the VMI does not say (KubeVirt's VMI default)."""
FINISHED = ("Succeeded", "Failed")
RECORD = "vmi.json"
CGROUP_RECORD = "cgroup"
"""In the run directory: the path of QEMU's memory cgroup."""
"""In the run directory: which VMI (uid) the QEMU there belongs to."""
QMP_CONNECT_TIMEOUT = 30.0
ADOPT_CONNECT_TIMEOUT = 5.0
HANGUP_TIMEOUT = 2.0
KILL_WAIT = 10.0
LOG_TAIL = 2000
IMAGE_RETRY = 10.0
VOLUME_RETRY = 5.0
"""Seconds between attempts to prepare a volume whose claim, ConfigMap or Secret is not there yet."""
"""Seconds between attempts to find a containerDisk image that is not on the node."""
NETWORK_RETRY = 5.0
"""Seconds between attempts to start a VMI whose pod network attachment failed."""


class StartError(Exception):
    """QEMU did not start; the message says what QEMU said."""


@dataclass
class Guest:
    """A QEMU this agent runs (or adopted) for one VMI."""

    key: str
    """``namespace/name`` of the VMI."""
    uid: str
    """The VMI's uid (from the run directory's record when adopted)."""
    pid: int
    """QEMU's pid."""
    run: RunPaths
    """Its run directory."""
    qmp: Session | None = None
    """The QMP session, None when it could not be (re)connected."""
    shutdowns: EventListener | None = None
    """Collects QEMU's ``SHUTDOWN`` events (who asked: the guest, or the host)."""
    adopted: bool = False
    """Found running when the agent started, rather than started by it."""
    powerdown_at: float | None = None
    """``time.monotonic()`` of the ACPI power button press, when the VMI is being deleted."""
    grace: float = DEFAULT_GRACE_PERIOD
    """The grace period that applies since ``powerdown_at``."""
    killed: bool = False
    """Whether the agent killed it (grace period over, or its VMI is gone)."""
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    """What to close when the agent lets go of it (the event listener)."""
    pidfd: int | None = None
    """The pidfd watched for QEMU's exit."""
    attachments: dict[str, bindings.Attachment] = field(default_factory=dict)
    """Its interfaces on the pod network, by interface name."""
    network_pending: bool = False
    """Adopted, and its pod network attachment (DHCP lease) is not restored yet."""
    channel: guestagents.AgentChannel | None = None
    """Follows the guest's qemu-ga (None without a QMP session)."""

    def alive(self) -> bool:
        return process.is_running(self.pid)


def _now() -> str:
    return timestamps.format_time(timestamps.now())


def _condition(type_: str, status: str, reason: str = "", message: str = "") -> Obj:
    cond: Obj = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": _now()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _with_conditions(status: Obj, *new: Obj) -> list[Obj]:
    """``status.conditions`` with ``new`` replacing those of the same type (a condition whose status does
    not change keeps its lastTransitionTime)."""
    old = {c.get("type"): c for c in status.get("conditions") or []}
    merged = [c for c in status.get("conditions") or [] if c.get("type") not in {n["type"] for n in new}]
    for cond in new:
        previous = old.get(cond["type"])
        if previous is not None and previous.get("status") == cond["status"]:
            merged.append(dict(cond, lastTransitionTime=previous.get("lastTransitionTime")))
        else:
            merged.append(cond)
    return merged


def _transition(status: Obj, phase: str) -> list[Obj]:
    stamps = [t for t in status.get("phaseTransitionTimestamps") or [] if t.get("phase") != phase]
    return [*stamps, {"phase": phase, "phaseTransitionTimestamp": _now()}]


def _exit_description(pid: int) -> str:
    code = process.exit_status(pid)
    if code is None:
        return f"QEMU (pid {pid}) is gone (its exit status is unknown: it was adopted from an earlier agent)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"QEMU (pid {pid}) was killed by {name}"
    return f"QEMU (pid {pid}) exited with code {code}"


def _tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace").strip()


class VmiController(Controller):
    """Runs the VMIs bound to one node. See the module docstring for the reconcile table."""

    name = "node-agent-vmi"
    concurrency = 4

    def __init__(
        self,
        client: Client,
        *,
        node: str,
        data_dir: Path,
        accel: Accel,
        storage: preparing.NodeStorage | None = None,
        pod_network: networking.PodNetwork | None = None,
        concurrency: int | None = None,
    ) -> None:
        super().__init__(client, concurrency=concurrency)
        self.node = node
        self.vms_dir = Path(data_dir) / "vms"
        self.accel: Accel = accel
        self.storage = storage or preparing.NodeStorage(node)
        self.pod_network = pod_network
        """The node's pod network; ``None``: interfaces use QEMU's user-mode network."""
        self.vmis: ResourceClient = client.resource(GROUP_VERSION, "virtualmachineinstances")
        self.secrets: ResourceClient = client.resource("v1", "secrets")
        self.recorder = EventRecorder(client, "kubevisor-agent", host=node)
        self.guests: dict[str, Guest] = {}
        """What runs, by VMI key (adopted or started by this agent)."""
        self._informer: Informer | None = None
        self.attacher = attachments.Attacher(client, node)
        """This node's VolumeAttachments."""
        self._starting: set[str] = set()
        """Uids of the VMIs whose QEMU is being started (they may hold attachments before they run)."""
        self.cgroups = cgroups.detect()
        self.guest_cpu = cpuweights.detect()
        """Where running guests go to rank below the node's services for CPU (cgroup v1)."""
        """Where QEMU's memory cgroups go; ``None`` when cgroups cannot be written here."""

    # --- lifecycle ---------------------------------------------------------------------------------

    def setup(self) -> None:
        self._informer = self.watch(self.vmis, field_selector=f"status.nodeName={self.node}")

    async def start(self) -> None:
        """Adopt what runs, then start informers and workers; then look at every run directory."""
        self.guests = {}
        keys = await self._adopt_all()
        if self.pod_network is not None:  # addresses of VMIs that left no run directory behind
            await self.pod_network.release_unknown(keys)
        await self._sweep_attachments()
        await super().start()
        for key in keys:  # run directories whose VMI may be gone: no event would bring them up
            self.queue.add(key)

    async def stop(self) -> None:
        """Stop the workers and let go of every QEMU (they keep running)."""
        await super().stop()
        for guest in list(self.guests.values()):
            await self._let_go(guest)
        self.guests.clear()

    def run_dir(self, namespace: str, name: str) -> Path:
        return self.vms_dir / namespace / name

    def guest_address(self, key: str) -> tuple[str | None, str] | None:
        """(network namespace, address) where this node reaches every port of the guest of VMI ``key`` on
        the pod network (for masquerade its private address: the VMI's IP passes only the listed ports);
        ``None`` when it is not on the pod network here. For port-forward."""
        guest = self.guests.get(key)
        if guest is None or self.pod_network is None or not guest.attachments:
            return None
        attachment = next(iter(guest.attachments.values()))
        return self.pod_network.network.netns, str(attachment.guest_ip)

    async def guest_os_info(self, key: str) -> Obj | None:
        """KubeVirt's guestosinfo of VMI ``key`` read from its qemu-ga now; None when none is connected."""
        guest = self.guests.get(key)
        channel = guest.channel if guest is not None else None
        if channel is None or not channel.connected:
            return None
        try:
            return await channel.guest_os_info()
        except guestagent.GuestAgentError as e:
            log.info("VMI %s: guestosinfo: %s", key, e)
            return None

    def enqueue(self, key: str) -> None:
        """Have ``key`` reconciled (the agent's server after a pause or unpause)."""
        self.queue.add(key)

    # --- actual state: run directories, QEMU processes --------------------------------------------

    def _run_dirs(self) -> list[tuple[str, Path]]:
        if not self.vms_dir.is_dir():
            return []
        return [
            (f"{ns.name}/{vm.name}", vm)
            for ns in sorted(self.vms_dir.iterdir())
            if ns.is_dir()
            for vm in sorted(ns.iterdir())
            if vm.is_dir()
        ]

    @staticmethod
    def _record(run_dir: Path) -> dict[str, Any]:
        try:
            data = json.loads((run_dir / RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @classmethod
    def _record_uid(cls, run_dir: Path) -> str | None:
        uid = cls._record(run_dir).get("uid")
        return uid if isinstance(uid, str) else None

    @staticmethod
    def _find_qemu(run: RunPaths) -> int | None:
        return process.find(run.pidfile, marker=str(run.qmp))

    async def _adopt_all(self) -> list[str]:
        keys = []
        for key, directory in self._run_dirs():
            keys.append(key)
            run = RunPaths(directory)
            pid = self._find_qemu(run)
            if pid is None:
                continue
            uid = self._record_uid(directory) or ""
            guest = Guest(key=key, uid=uid, pid=pid, run=run, adopted=True)
            await self._connect(guest, ADOPT_CONNECT_TIMEOUT)
            self._track(guest)
            self._lower_cpu_priority(guest)
            try:
                await self._restore_network(guest)
            except NetworkError as e:  # retried when its key is reconciled
                log.warning("VMI %s: pod network of adopted QEMU pid %d not restored: %s", key, pid, e)
            log.info("node %s: adopted QEMU pid %d of VMI %s", self.node, pid, key)
        return keys

    async def _connect(self, guest: Guest, timeout: float) -> None:
        """Open the QMP session of an adopted QEMU (best effort: without it, stops are forced)."""
        qmp = Session(guest.run.qmp, name=f"kubevisor-agent-{guest.key}")
        try:
            await qmp.connect(timeout=timeout, alive=guest.alive)
        except QmpError as e:
            log.warning("VMI %s: QMP of adopted QEMU pid %d not reachable: %s", guest.key, guest.pid, e)
            return
        guest.qmp = qmp
        guest.shutdowns = guest.stack.enter_context(qmp.listen("SHUTDOWN"))
        self._follow_guest_agent(guest)
        await blockdevices.release_in(qmp)  # its Block claims' loop devices go with it

    def _follow_guest_agent(self, guest: Guest) -> None:
        """Start following ``guest``'s qemu-ga; its changes enqueue the VMI's key."""
        assert guest.qmp is not None
        key = guest.key
        guest.channel = guestagents.AgentChannel(key, guest.qmp, guest.run.qga, lambda: self.queue.add(key))
        guest.channel.start()

    def _track(self, guest: Guest) -> None:
        """Remember ``guest`` and have its exit enqueue its key."""
        self.guests[guest.key] = guest
        try:
            fd = os.pidfd_open(guest.pid)
        except ProcessLookupError:
            self.queue.add(guest.key)
            return
        guest.pidfd = fd
        asyncio.get_running_loop().add_reader(fd, self._on_exit, guest)

    def _on_exit(self, guest: Guest) -> None:
        self._unwatch(guest)
        self.queue.add(guest.key)

    def _unwatch(self, guest: Guest) -> None:
        fd, guest.pidfd = guest.pidfd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    async def _let_go(self, guest: Guest) -> None:
        """Stop watching ``guest`` and close its QMP session; QEMU is not touched."""
        self._unwatch(guest)
        if guest.channel is not None:
            await guest.channel.stop()
            guest.channel = None
        guest.stack.close()
        if guest.qmp is not None:
            await guest.qmp.close()
        if self.guests.get(guest.key) is guest:
            del self.guests[guest.key]

    async def _kill(self, guest: Guest) -> None:
        """SIGKILL ``guest``'s process group and wait for it to be gone."""
        guest.killed = True
        process.kill(guest.pid)
        if not await process.wait_exit(guest.pid, KILL_WAIT):
            raise TemporaryError(f"QEMU pid {guest.pid} of VMI {guest.key} survived SIGKILL", delay=1.0)

    async def _restore_network(self, guest: Guest) -> None:
        """Attach an adopted guest's pod interfaces again, as its run directory's record says (the same
        address, tap and MAC; the DHCP server is this process's, so its leases must be registered)."""
        guest.network_pending = True
        record = self._record(guest.run.directory).get("interfaces") or []
        if self.pod_network is None or not record:
            guest.network_pending = False
            return
        try:
            interfaces = [networking.PodInterface.from_record(r) for r in record]
        except (KeyError, TypeError, ValueError) as e:
            log.warning(
                "VMI %s: run directory record has unreadable interfaces (%s); not restored", guest.key, e
            )
            guest.network_pending = False
            return
        hostname = self._record(guest.run.directory).get("hostname")
        guest.attachments = await self.pod_network.attach(
            guest.key, guest.uid, interfaces, hostname=hostname if isinstance(hostname, str) else None
        )
        guest.network_pending = False

    async def _sweep_attachments(self) -> None:
        """Release this node's VolumeAttachments whose VMI runs no QEMU here (before any start: an agent
        that died between a QEMU's exit and the release left them)."""
        live = {guest.uid for guest in self.guests.values() if guest.alive()}
        try:
            released = await self.attacher.sweep(live)
        except errors.ClientError as e:  # the run directories' records are released as VMIs are seen
            log.warning("node %s: VolumeAttachments not swept: %s", self.node, e)
            return
        if released:
            log.info("node %s: released VolumeAttachments of gone VMIs: %s", self.node, ", ".join(released))

    def _holds_qemu(self, uid: str) -> bool:
        """A QEMU of this node runs, or is being started, for the VMI ``uid``."""
        return uid in self._starting or any(g.uid == uid and g.alive() for g in self.guests.values())

    async def _release_attachments(self, directory: Path, uid: str | None) -> None:
        """Release the VolumeAttachments the run directory lists (its QEMU is gone for good)."""
        if not attachments.recorded(directory):
            return  # the common case: no API request
        try:
            await self.attacher.release_recorded(directory, uid or "")
        except errors.ClientError as e:
            raise TemporaryError(f"VolumeAttachments of {directory} not released yet: {e}", delay=2.0) from e

    async def _release_network(self, key: str, uid: str | None) -> None:
        """Detach the pod interface of the VMI ``key`` with ``uid`` (idempotent; no pod network: nothing)."""
        if self.pod_network is None:
            return
        try:
            await self.pod_network.detach(key, uid or "")
        except NetworkError as e:
            raise TemporaryError(f"VMI {key}: pod network not released yet: {e}", delay=2.0) from e

    def _memory_cgroup(self, vmi: Obj, domain: Domain, key: str) -> Path | None:
        """QEMU's memory cgroup, made with its limit; ``None`` when cgroups are not usable here."""
        if self.cgroups is None:
            return None
        guest = domain.memory_mib * cgroups.MiB
        tcg = qemucmd.TCG_TB_SIZE_MIB * cgroups.MiB if domain.accel == "tcg" else 0
        vcpus = domain.cpu.sockets * domain.cpu.cores * domain.cpu.threads
        overhead = cgroups.overhead_bytes(
            vcpus=vcpus, graphics=domain.graphics, guest_bytes=guest, tcg_cache_bytes=tcg
        )
        resources = ((vmi.get("spec") or {}).get("domain") or {}).get("resources") or {}
        limit = parse_quantity((resources.get("limits") or {}).get("memory"))
        try:
            return self.cgroups.create(key.replace("/", "_"), int(limit or guest) + overhead)
        except OSError as e:
            log.warning("VMI %s: no memory cgroup (%s); QEMU runs without a memory limit", key, e)
            return None

    def _remove_cgroup(self, directory: Path) -> None:
        """Remove the memory cgroup recorded in the run directory ``directory`` (QEMU is gone)."""
        try:
            path = Path((directory / CGROUP_RECORD).read_text().strip())
        except OSError:
            return
        if path.is_absolute() and path.name:
            cgroups.remove(path)

    def _remove_run_dir(self, key: str) -> None:
        namespace, name = split_key(key)
        directory = self.run_dir(namespace or "", name)
        self._remove_cgroup(directory)
        shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            directory.parent.rmdir()  # the namespace's directory, when it was the last VM

    # --- reconcile ---------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        assert self._informer is not None
        vmi = self._informer.get(key)
        guest = self.guests.get(key)
        if vmi is None:
            await self._gone(key, guest)
            return None
        uid = str(vmi["metadata"].get("uid") or "")
        if guest is not None and guest.uid != uid:
            log.warning(
                "VMI %s: QEMU pid %d belongs to an earlier VMI (uid %s); killing it",
                key,
                guest.pid,
                guest.uid,
            )
            await self._kill(guest)
            await self._let_go(guest)
            await self._release_network(key, guest.uid)
            await self._release_attachments(guest.run.directory, guest.uid)
            self._remove_run_dir(key)
            guest = None
        if vmi["metadata"].get("deletionTimestamp"):
            return await self._terminate(key, vmi, guest)
        phase = (vmi.get("status") or {}).get("phase")
        if phase in FINISHED:
            if guest is not None:  # a finished VMI runs nothing
                if guest.alive():
                    await self._kill(guest)
                await self._let_go(guest)
                await self._release_network(key, guest.uid)
                self._remove_cgroup(guest.run.directory)
            namespace, name = split_key(key)
            await self._release_attachments(self.run_dir(namespace or "", name), uid)
            return None
        if phase == "Running":
            if guest is None or not guest.alive():
                await self._finished(vmi, guest)
            else:
                if guest.network_pending:
                    await self._restore_network(guest)  # a NetworkError requeues with backoff
                await self._sync_paused(vmi, guest)
                await self._sync_guest_agent(vmi, guest)
                await self._sync_hotplug(vmi, guest)
                await self._sync_volume_status(vmi, guest)
            return None
        if phase != "Scheduled":
            return None
        if guest is not None and not guest.alive():
            await self._finished(vmi, guest)  # started, then died before it was reported Running
            return None
        await self._run(key, vmi, guest)
        return None

    async def _gone(self, key: str, guest: Guest | None) -> None:
        """The VMI no longer exists here: nothing of it may keep running or stay on disk."""
        if guest is not None:
            if guest.alive():
                log.warning("VMI %s is gone; killing its QEMU pid %d", key, guest.pid)
                await self._kill(guest)
            await self._let_go(guest)
        namespace, name = split_key(key)
        uid = guest.uid if guest is not None else self._record_uid(self.run_dir(namespace or "", name))
        await self._release_network(key, uid)
        await self._release_attachments(self.run_dir(namespace or "", name), uid)
        self._remove_run_dir(key)

    async def _run(self, key: str, vmi: Obj, guest: Guest | None) -> None:
        namespace, name = split_key(key)
        started = time.monotonic()
        starting = guest is None
        try:
            spec = converting.parse_spec(vmi.get("spec") or {})
            if guest is None:
                vmi = await self._ensure_finalizer(vmi)
                uid = str(vmi["metadata"].get("uid") or "")
                self._starting.add(uid)  # its attachments are live while it starts
                try:
                    guest, domain = await self._start(vmi, spec, namespace or "", name)
                finally:
                    self._starting.discard(uid)
            else:
                domain = None
                if guest.network_pending:  # adopted, and its network could not be restored then
                    await self._restore_network(guest)
                await self._resume_if_launching(guest)
        except preparing.ImageNotFound as e:
            await self.recorder.warning(vmi, "ErrImagePull", str(e))
            raise TemporaryError(str(e), delay=IMAGE_RETRY) from e
        except preparing.VolumeNotReady as e:  # the start was undone; the VMI waits, as a pod does
            await self.recorder.warning(vmi, e.reason, str(e))
            raise TemporaryError(str(e), delay=VOLUME_RETRY) from e
        except NetworkError as e:  # the start was undone; the host may recover (addresses freed, ...)
            await self.recorder.warning(vmi, "FailedNetwork", f"VirtualMachineInstance {key}: {e}")
            raise TemporaryError(str(e), delay=NETWORK_RETRY) from e
        except (preparing.PrepareError, converting.ConversionError, qemucmd.DomainError, StartError) as e:
            await self.recorder.warning(vmi, "FailedCreate", f"VirtualMachineInstance {key}: {e}")
            await self._write_finished(vmi, "Failed", "FailedCreate", str(e))
            return
        await self._write_running(vmi, guest, domain)
        if guest.adopted:
            how = "was already running (adopted)"
        elif starting:
            how = f"started in {time.monotonic() - started:.2f} s"
        else:
            how = "runs"
        await self.recorder.normal(
            vmi, "Started", f"VirtualMachineInstance started: QEMU pid {guest.pid} {how} ({self.accel})"
        )

    async def _ensure_finalizer(self, vmi: Obj) -> Obj:
        """A fallback that is a no-op for VMIs created by this apiserver (the finalizer is defaulted)."""
        finalizers = list(vmi["metadata"].get("finalizers") or [])
        if FINALIZER in finalizers:
            return vmi
        body = copy.deepcopy(vmi)
        body["metadata"]["finalizers"] = [*finalizers, FINALIZER]
        updated: Obj = await self.vmis.update(body)  # 409 when stale: requeued, re-read
        return updated

    async def _remove_finalizer(self, vmi: Obj) -> None:
        finalizers = list(vmi["metadata"].get("finalizers") or [])
        if FINALIZER not in finalizers:
            return
        body = copy.deepcopy(vmi)
        body["metadata"]["finalizers"] = [f for f in finalizers if f != FINALIZER]
        with contextlib.suppress(errors.NotFoundError):
            await self.vmis.update(body)

    async def _read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = await self.secrets.get(name, namespace)
        except errors.NotFoundError:
            return None
        data = {
            k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()
        }
        data.update(secret.get("stringData") or {})
        return data

    def _sources(self, vmi: Obj, namespace: str) -> preparing.Sources:
        """What preparing ``vmi``'s volumes reads from the cluster."""

        async def read(resource: str, name: str) -> Obj | None:
            namespaced = resource != "persistentvolumes"
            try:
                found: Obj = await self.client.resource("v1", resource).get(
                    name, namespace if namespaced else None
                )
            except errors.NotFoundError:
                return None
            return found

        async def request_token(account: str) -> str | None:
            path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
            try:
                answer = await self.client.request("POST", path, body=body)
            except errors.NotFoundError:
                return None
            token = (answer.get("status") or {}).get("token") if isinstance(answer, dict) else None
            return str(token) if token else None

        def claim_users(claim: str) -> list[str]:
            assert self._informer is not None
            me = f"{namespace}/{vmi['metadata']['name']}"
            return sorted(
                key
                for key, guest in self.guests.items()
                if key != me
                and key.startswith(f"{namespace}/")
                and guest.alive()
                and claim in _writable_claims(self._informer.get(key))
            )

        run_dir = self.run_dir(namespace, str(vmi["metadata"]["name"]))
        uid = str(vmi["metadata"].get("uid") or "")

        async def attach_claim(image: claims.ClaimedImage, volume: str) -> str | None:
            name = attachments.attachment_name(image.volume)
            attachments.remember(run_dir, volume, name)  # before the create: never held unrecorded
            try:
                await self.attacher.acquire(
                    image, vmi=f"{namespace}/{vmi['metadata']['name']}", uid=uid, live_here=self._holds_qemu
                )
            except attachments.Refused as e:
                attachments.forget(run_dir, volume)
                return str(e)
            return None

        async def detach_claim(volume: str) -> None:
            name = attachments.recorded(run_dir).get(volume)
            if name is not None:
                await self.attacher.release(name, uid)
                attachments.forget(run_dir, volume)

        return preparing.Sources(
            read=read,
            request_token=request_token,
            claim_users=claim_users,
            attach_claim=attach_claim,
            detach_claim=detach_claim,
            metadata=vmi["metadata"],
        )

    async def _start(
        self, vmi: Obj, spec: VirtualMachineInstanceSpec, namespace: str, name: str
    ) -> tuple[Guest, Domain | None]:
        """Prepare the run directory and start QEMU paused, connect QMP, then ``cont``; undone on failure."""
        key = f"{namespace}/{name}"
        uid = str(vmi["metadata"]["uid"])
        directory = self.run_dir(namespace, name)
        run = RunPaths(directory)
        pid = self._find_qemu(run)
        if pid is not None:  # never two: an agent that died mid-start left one (the uid check ran above)
            guest = Guest(key=key, uid=uid, pid=pid, run=run, adopted=True)
            await self._connect(guest, ADOPT_CONNECT_TIMEOUT)
            self._track(guest)
            self._lower_cpu_priority(guest)
            await self._restore_network(guest)
            await self._resume_if_launching(guest)
            return guest, None
        if directory.exists():  # leftovers of an earlier start, or of an earlier VMI of this name
            await self._release_network(key, self._record_uid(directory))
            await self._release_attachments(directory, self._record_uid(directory))
        shutil.rmtree(directory, ignore_errors=True)
        pod_interfaces = networking.pod_interfaces(spec, uid) if self.pod_network is not None else []
        hostname = converting.hostname(name, spec)
        async with process.Reverter() as revert:
            directory.mkdir(parents=True)
            revert.add(lambda: shutil.rmtree(directory, ignore_errors=True))
            record: dict[str, Any] = {"namespace": namespace, "name": name, "uid": uid}
            if pod_interfaces:  # before anything is attached: what to restore on adoption, or release
                record |= {"hostname": hostname, "interfaces": [i.record() for i in pod_interfaces]}
            (directory / RECORD).write_text(json.dumps(record) + "\n")
            prepared = await preparing.prepare(
                spec,
                namespace=namespace,
                name=name,
                uid=uid,
                run_dir=directory,
                storage=self.storage,
                read_secret=lambda secret: self._read_secret(namespace, secret),
                revert=revert,
                sources=self._sources(vmi, namespace),
            )
            attachments: dict[str, bindings.Attachment] = {}
            prefix: list[str] = []
            if self.pod_network is not None and pod_interfaces:
                pod_network = self.pod_network
                attachments = await pod_network.attach(key, uid, pod_interfaces, hostname=hostname)
                revert.add(lambda: pod_network.detach(key, uid))
                prefix = pod_network.exec_prefix()  # QEMU opens its tap in the node's namespace
            domain = converting.domain(
                spec,
                namespace=namespace,
                name=name,
                uid=uid,
                run=run,
                volumes=prepared.volumes,
                accel=self.accel,
                firmware=prepared.firmware,
                attachments=attachments,
                kernel_boot=prepared.kernel_boot,
            )
            argv = prefix + qemucmd.command(domain)
            cgroup = self._memory_cgroup(vmi, domain, key)
            if cgroup is not None:
                (directory / CGROUP_RECORD).write_text(f"{cgroup}\n")
                revert.add(lambda: self._remove_cgroup(directory))  # after the kill below (newest first)
            try:
                pid = process.spawn(argv, log_path=run.qemu_log, cgroup=cgroup)
            except FileNotFoundError as e:
                raise StartError(str(e)) from e
            revert.add(lambda: process.kill(pid))
            guest = Guest(key=key, uid=uid, pid=pid, run=run, attachments=attachments)
            qmp = Session(run.qmp, name=f"kubevisor-agent-{key}")
            try:
                await qmp.connect(timeout=QMP_CONNECT_TIMEOUT, alive=guest.alive)
            except QmpError as e:
                raise StartError(f"{e}; QEMU said: {_tail(run.qemu_log)}") from e
            revert.add(qmp.close)
            guest.qmp = qmp
            guest.shutdowns = guest.stack.enter_context(qmp.listen("SHUTDOWN"))
            revert.add(guest.stack.close)
            try:
                state = await qmp.status()
                if state != "prelaunch":
                    raise StartError(f"QEMU should wait paused at launch, but its state is {state}")
                await qmp.cont()
            except QmpError as e:
                raise StartError(f"{e}; QEMU said: {_tail(run.qemu_log)}") from e
            revert.success()
        await blockdevices.release_opened(v.path for v in prepared.volumes.values())  # go with QEMU
        self._lower_cpu_priority(guest)
        self._follow_guest_agent(guest)
        self._track(guest)
        return guest, domain

    def _lower_cpu_priority(self, guest: Guest) -> None:
        """A running guest ranks below the node's services for CPU (:mod:`kubevisor.virt.cpuweights`);
        done after ``cont``, so QEMU's start-up keeps the agent's priority."""
        if self.guest_cpu is not None:
            self.guest_cpu.demote(guest.pid)
            return
        if self.cgroups is not None and self.cgroups.version == 2:
            with contextlib.suppress(OSError):
                recorded = Path((guest.run.directory / CGROUP_RECORD).read_text().strip())
                if recorded.is_absolute():
                    cpuweights.lower_weight(recorded)

    @staticmethod
    async def _resume_if_launching(guest: Guest) -> None:
        """An earlier agent spawned this QEMU but died before ``cont``: finish the start."""
        if guest.qmp is None:
            return
        with contextlib.suppress(QmpError):
            if await guest.qmp.status() == "prelaunch":
                await guest.qmp.cont()

    # --- status writes -----------------------------------------------------------------------------

    async def _write_status(self, vmi: Obj, status: Obj) -> None:
        with contextlib.suppress(errors.NotFoundError):
            await self.vmis.update_status(dict(vmi, status=status))  # 409 when stale: requeued

    async def _write_running(self, vmi: Obj, guest: Guest, domain: Domain | None) -> None:
        old = vmi.get("status") or {}
        status = copy.deepcopy(old)
        status["phase"] = "Running"
        status["conditions"] = _with_conditions(
            status,
            _condition("Ready", "True"),
            _condition(
                "LiveMigratable",
                "False",
                "NotMigratable",
                "live migration is not supported by this node agent yet",
            ),
        )
        status["phaseTransitionTimestamps"] = _transition(status, "Running")
        spec = vmi.get("spec") or {}
        if domain is not None:
            nics = [(nic.name, nic.mac) for nic in domain.nics]
            status["interfaces"] = networking.status_interfaces(nics, guest.attachments)
            status["machine"] = {"type": domain.machine}
        elif "interfaces" not in status:  # adopted: the MACs as the conversion chose them
            nics = [
                (i.get("name"), i.get("macAddress") or _default_mac(vmi))
                for i in ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []
            ]
            status["interfaces"] = networking.status_interfaces(nics, guest.attachments)
        status = volumestatus.merged(status, await self._volume_entries(vmi, guest))  # no write of its own
        await self._write_status(vmi, status)

    async def _volume_entries(self, vmi: Obj, guest: Guest) -> list[Obj]:
        """The VMI's ``status.volumeStatus`` entries for volumes not hotplugged (:mod:`.volumestatus`)."""
        read = self._sources(vmi, str(vmi["metadata"]["namespace"])).read
        return await volumestatus.compute(
            vmi.get("spec") or {}, guest.qmp, lambda claim: read("persistentvolumeclaims", claim)
        )

    async def _sync_volume_status(self, vmi: Obj, guest: Guest) -> None:
        """A running VMI's claim volumes as their claims are now (grown, ...): written when changed."""
        if not volumestatus.claim_names(vmi.get("spec") or {}):
            return  # nothing of the entries written at Running can change
        status = vmi.get("status") or {}
        new = volumestatus.merged(status, await self._volume_entries(vmi, guest))
        if new.get("volumeStatus") != status.get("volumeStatus"):
            await self._write_status(vmi, new)

    async def _sync_paused(self, vmi: Obj, guest: Guest) -> None:
        """The ``Paused`` condition as QEMU's run state says (``paused``: paused by the user through the
        pause subresource; the agent pauses a guest for nothing else)."""
        if guest.qmp is None:
            return
        try:
            paused = await guest.qmp.status() == "paused"
        except QmpError:
            return
        status = vmi.get("status") or {}
        current = next((c for c in status.get("conditions") or [] if c.get("type") == "Paused"), None)
        if paused == (current is not None and current.get("status") == "True"):
            return
        new = copy.deepcopy(status)
        others = [c for c in new.get("conditions") or [] if c.get("type") != "Paused"]
        if paused:
            others.append(_condition("Paused", "True", "PausedByUser", "VMI was paused by user"))
        new["conditions"] = others
        await self._write_status(vmi, new)
        what = "paused" if paused else "unpaused"
        await self.recorder.normal(vmi, what.capitalize(), f"VirtualMachineInstance {what}")

    async def _sync_guest_agent(self, vmi: Obj, guest: Guest) -> None:
        """The ``AgentConnected`` condition and ``guestOSInfo`` as the guest's qemu-ga says (KubeVirt drops
        the condition, rather than setting it False, when the agent goes away)."""
        channel = guest.channel
        connected = channel is not None and channel.connected
        info = guestagents.os_info_status(channel.os_info if channel is not None and connected else None)
        status = vmi.get("status") or {}
        current = next((c for c in status.get("conditions") or [] if c.get("type") == "AgentConnected"), None)
        if connected == (current is not None) and (status.get("guestOSInfo") or {}) == info:
            return
        new = copy.deepcopy(status)
        conditions = [c for c in new.get("conditions") or [] if c.get("type") != "AgentConnected"]
        if connected:
            conditions.append(_condition("AgentConnected", "True"))
        new["conditions"] = conditions
        new["guestOSInfo"] = info
        await self._write_status(vmi, new)
        if connected != (current is not None):
            await self.recorder.normal(
                vmi,
                "AgentConnected" if connected else "AgentDisconnected",
                f"The guest agent {'connected' if connected else 'disconnected'}"
                + (f" ({info.get('prettyName')})" if connected and info.get("prettyName") else ""),
            )

    async def _sync_hotplug(self, vmi: Obj, guest: Guest) -> None:
        """Disks attached and detached while the guest runs follow the VMI's spec, and
        ``status.volumeStatus`` says so (:mod:`kubevisor.agent.hotplug`)."""
        if guest.qmp is None:
            return
        await hotplug.sync(
            vmi,
            guest.qmp,
            storage=self.storage,
            sources=self._sources(vmi, str(vmi["metadata"]["namespace"])),
            recorder=self.recorder,
            write_status=lambda status: self._write_status(vmi, status),
            held=attachments.recorded(guest.run.directory),
        )

    async def _write_finished(self, vmi: Obj, phase: str, reason: str, message: str) -> None:
        status = copy.deepcopy(vmi.get("status") or {})
        status["phase"] = phase
        status["conditions"] = _with_conditions(status, _condition("Ready", "False", reason, message))
        status["phaseTransitionTimestamps"] = _transition(status, phase)
        await self._write_status(vmi, status)

    async def _guest_powered_off(self, guest: Guest | None) -> bool:
        """Whether the guest itself shut down (QMP ``SHUTDOWN`` with ``guest: true``, QEMU exit code 0)."""
        if guest is None or guest.killed or guest.qmp is None or guest.shutdowns is None:
            return False
        await guest.qmp.wait_hangup(HANGUP_TIMEOUT)  # every event QEMU sent has arrived
        events: list[Any] = guest.shutdowns.clear()
        by_guest = any((event.get("data") or {}).get("guest") is True for event in events)
        return by_guest and process.exit_status(guest.pid) in (0, None)

    async def _finished(self, vmi: Obj, guest: Guest | None) -> None:
        """QEMU is gone while the VMI ran: Succeeded (the guest powered off) or Failed."""
        if guest is None:
            description = "QEMU is not running (it exited while no agent was watching it)"
            powered_off = False
        else:
            description = _exit_description(guest.pid)
            powered_off = await self._guest_powered_off(guest)
            await self._let_go(guest)
        self._remove_cgroup(self.run_dir(vmi["metadata"]["namespace"], vmi["metadata"]["name"]))
        if powered_off:
            await self._write_finished(vmi, "Succeeded", "GuestShutdown", "the guest powered off")
            await self.recorder.normal(vmi, "Stopped", f"The guest powered off; {description}")
        else:
            await self._write_finished(vmi, "Failed", "GuestCrashed", description)
            await self.recorder.warning(vmi, "Crashed", f"VirtualMachineInstance crashed: {description}")
        meta = vmi["metadata"]  # after the status write: a failure here must not lose how QEMU ended
        await self._release_network(f"{meta['namespace']}/{meta['name']}", str(meta.get("uid") or ""))
        run_dir = self.run_dir(meta["namespace"], meta["name"])
        await self._release_attachments(run_dir, str(meta.get("uid") or ""))

    # --- deletion ----------------------------------------------------------------------------------

    async def _terminate(self, key: str, vmi: Obj, guest: Guest | None) -> Result | None:
        """ACPI power button, grace period, SIGKILL; then remove the run directory and the finalizer."""
        if guest is not None and guest.alive():
            now = time.monotonic()
            if guest.powerdown_at is None:
                grace = (vmi.get("spec") or {}).get("terminationGracePeriodSeconds")
                guest.grace = float(DEFAULT_GRACE_PERIOD if grace is None else grace)
                guest.powerdown_at = now
                why = f"terminationGracePeriodSeconds is {guest.grace:g}"
                qmp = guest.qmp
                if guest.grace > 0 and qmp is None:
                    why = "its QMP socket could not be reached for a graceful shutdown"
                elif guest.grace > 0 and qmp is not None:
                    try:
                        if await qmp.status() == "paused":  # a paused guest cannot see the button
                            await qmp.cont()
                        await qmp.system_powerdown()
                    except QmpError as e:
                        why = f"the ACPI power button failed: {e}"
                    else:
                        await self.recorder.normal(
                            vmi,
                            "ShuttingDown",
                            f"Signaled graceful shutdown (ACPI power button, grace {guest.grace:g} s)",
                        )
                        return Result(requeue_after=guest.grace)
            elif now < guest.powerdown_at + guest.grace:
                return Result(requeue_after=guest.powerdown_at + guest.grace - now)
            else:
                why = f"the guest did not power off within terminationGracePeriodSeconds={guest.grace:g}"
            await self._kill(guest)
            await self.recorder.event(
                vmi,
                "Normal" if guest.grace == 0 else "Warning",
                "Killed",
                f"QEMU pid {guest.pid} was killed: {why}",
            )
        if guest is not None:
            if not guest.killed and guest.powerdown_at is not None:
                seconds = time.monotonic() - guest.powerdown_at
                powered_off = await self._guest_powered_off(guest)
                what = "The guest powered off" if powered_off else _exit_description(guest.pid)
                await self.recorder.normal(
                    vmi, "Stopped", f"{what} {seconds:.1f} s after the ACPI power button"
                )
            await self._let_go(guest)
        await self._release_network(key, str(vmi["metadata"].get("uid") or ""))
        namespace, name = split_key(key)
        await self._release_attachments(self.run_dir(namespace or "", name), vmi["metadata"].get("uid"))
        self._remove_run_dir(key)
        await self._remove_finalizer(vmi)
        return None


def _writable_claims(vmi: Obj | None) -> set[str]:
    """The claims a VMI attaches writable (persistentVolumeClaim, dataVolume)."""
    found: set[str] = set()
    for volume in ((vmi or {}).get("spec") or {}).get("volumes") or []:
        pvc = volume.get("persistentVolumeClaim") or {}
        if pvc.get("claimName") and not pvc.get("readOnly"):
            found.add(str(pvc["claimName"]))
        if (volume.get("dataVolume") or {}).get("name"):
            found.add(str(volume["dataVolume"]["name"]))
    return found


def _default_mac(vmi: Obj) -> str:
    return bindings.mac_address(str(vmi["metadata"].get("uid") or ""))
