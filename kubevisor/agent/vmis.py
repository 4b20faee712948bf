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

Owner of, in the VMI's status (from Scheduled on): ``phase``, the ``Ready`` and ``LiveMigratable``
conditions, ``interfaces``, ``machine``, and the Running/Succeeded/Failed ``phaseTransitionTimestamps``.

Not yet: pause/unpause (the subresource does not exist; ``startStrategy: Paused`` starts the VM running),
the pod network (interfaces use QEMU's user-mode network, see :mod:`kubevisor.agent.converting`), memory
cgroups per QEMU, guest agent, live migration.
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

from kubevisor.agent import converting, preparing
from kubevisor.api.kubevirt import VirtualMachineInstanceSpec
from kubevisor.api.registry import Obj
from kubevisor.client import errors, timestamps
from kubevisor.client.events import EventRecorder
from kubevisor.client.informers import Informer, split_key
from kubevisor.client.requesting import Client, ResourceClient
from kubevisor.controllers.reconciling import Controller, Result, TemporaryError
from kubevisor.network import bindings
from kubevisor.virt import process, qemucmd
from kubevisor.virt.domain import Accel, Domain, RunPaths
from kubevisor.virt.qmp import EventListener, QmpError, Session

__all__ = ["DEFAULT_GRACE_PERIOD", "FINALIZER", "Guest", "VmiController"]

log = logging.getLogger(__name__)

GROUP_VERSION = "kubevirt.io/v1"
FINALIZER = "kubevisor.io/node-agent"
"""Put on a VMI before the agent starts it; removed once its guest is down and its run directory gone."""
DEFAULT_GRACE_PERIOD = 30
"""Seconds between the ACPI power button and SIGKILL when the VMI does not say (KubeVirt's VMI default)."""
FINISHED = ("Succeeded", "Failed")
RECORD = "vmi.json"
"""In the run directory: which VMI (uid) the QEMU there belongs to."""
QMP_CONNECT_TIMEOUT = 30.0
ADOPT_CONNECT_TIMEOUT = 5.0
HANGUP_TIMEOUT = 2.0
KILL_WAIT = 10.0
LOG_TAIL = 2000
IMAGE_RETRY = 10.0
"""Seconds between attempts to find a containerDisk image that is not on the node."""


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
        concurrency: int | None = None,
    ) -> None:
        super().__init__(client, concurrency=concurrency)
        self.node = node
        self.vms_dir = Path(data_dir) / "vms"
        self.accel: Accel = accel
        self.storage = storage or preparing.NodeStorage(node)
        self.vmis: ResourceClient = client.resource(GROUP_VERSION, "virtualmachineinstances")
        self.secrets: ResourceClient = client.resource("v1", "secrets")
        self.recorder = EventRecorder(client, "kubevisor-agent", host=node)
        self.guests: dict[str, Guest] = {}
        """What runs, by VMI key (adopted or started by this agent)."""
        self._informer: Informer | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def setup(self) -> None:
        self._informer = self.watch(self.vmis, field_selector=f"status.nodeName={self.node}")

    async def start(self) -> None:
        """Adopt what runs, then start informers and workers; then look at every run directory."""
        self.guests = {}
        keys = await self._adopt_all()
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
    def _record_uid(run_dir: Path) -> str | None:
        try:
            data = json.loads((run_dir / RECORD).read_text())
        except (OSError, ValueError):
            return None
        uid = data.get("uid") if isinstance(data, dict) else None
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

    def _remove_run_dir(self, key: str) -> None:
        namespace, name = split_key(key)
        directory = self.run_dir(namespace or "", name)
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
            return None
        if phase == "Running":
            if guest is None or not guest.alive():
                await self._finished(vmi, guest)
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
        self._remove_run_dir(key)

    async def _run(self, key: str, vmi: Obj, guest: Guest | None) -> None:
        namespace, name = split_key(key)
        started = time.monotonic()
        starting = guest is None
        try:
            spec = converting.parse_spec(vmi.get("spec") or {})
            if guest is None:
                vmi = await self._ensure_finalizer(vmi)
                guest, domain = await self._start(vmi, spec, namespace or "", name)
            else:
                domain = None
                await self._resume_if_launching(guest)
        except preparing.ImageNotFound as e:
            await self.recorder.warning(vmi, "ErrImagePull", str(e))
            raise TemporaryError(str(e), delay=IMAGE_RETRY) from e
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
            await self._resume_if_launching(guest)
            return guest, None
        shutil.rmtree(directory, ignore_errors=True)  # leftovers of an earlier VMI of this name
        async with process.Reverter() as revert:
            directory.mkdir(parents=True)
            revert.add(lambda: shutil.rmtree(directory, ignore_errors=True))
            (directory / RECORD).write_text(
                json.dumps({"namespace": namespace, "name": name, "uid": uid}) + "\n"
            )
            prepared = await preparing.prepare(
                spec,
                namespace=namespace,
                name=name,
                uid=uid,
                run_dir=directory,
                storage=self.storage,
                read_secret=lambda secret: self._read_secret(namespace, secret),
                revert=revert,
            )
            domain = converting.domain(
                spec,
                namespace=namespace,
                name=name,
                uid=uid,
                run=run,
                volumes=prepared.volumes,
                accel=self.accel,
                firmware=prepared.firmware,
            )
            argv = qemucmd.command(domain)
            try:
                pid = process.spawn(argv, log_path=run.qemu_log)
            except FileNotFoundError as e:
                raise StartError(str(e)) from e
            revert.add(lambda: process.kill(pid))
            guest = Guest(key=key, uid=uid, pid=pid, run=run)
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
        self._track(guest)
        return guest, domain

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
            status["interfaces"] = [
                {"name": nic.name, "mac": nic.mac, "infoSource": "domain"} for nic in domain.nics
            ]
            status["machine"] = {"type": domain.machine}
        elif "interfaces" not in status:  # adopted: the MACs as the conversion chose them
            status["interfaces"] = [
                {
                    "name": i.get("name"),
                    "mac": i.get("macAddress") or _default_mac(vmi),
                    "infoSource": "domain",
                }
                for i in ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []
            ]
        await self._write_status(vmi, status)

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
        if powered_off:
            await self._write_finished(vmi, "Succeeded", "GuestShutdown", "the guest powered off")
            await self.recorder.normal(vmi, "Stopped", f"The guest powered off; {description}")
        else:
            await self._write_finished(vmi, "Failed", "GuestCrashed", description)
            await self.recorder.warning(vmi, "Crashed", f"VirtualMachineInstance crashed: {description}")

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
        self._remove_run_dir(key)
        await self._remove_finalizer(vmi)
        return None


def _default_mac(vmi: Obj) -> str:
    return bindings.mac_address(str(vmi["metadata"].get("uid") or ""))
