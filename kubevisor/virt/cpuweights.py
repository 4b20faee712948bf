"""Running guests get CPU below the node's own services: the control plane stays responsive under load.

Why: on a node whose guests keep every core busy (TCG guests booting, a busy workload), the API server,
controllers and agent would otherwise compete with each guest as equals, and every start, status write and
watch event waits in the run queue behind them (KubeVirt gets the same separation from kubelet's
``system-reserved`` and ``kubepods`` cgroups). So once a guest is running (after QMP ``cont``; QEMU's own
start-up keeps the agent's priority, so starting a VM is not slowed by the guests already running) its
QEMU moves to a CPU cgroup with a small weight. Weights only matter under contention: an idle node gives
a guest every cycle it asks for.

Layouts: cgroup v1 with the ``cpu`` controller (``/sys/fs/cgroup/cpu``): one cgroup
``<the agent's cpu cgroup>/kubevisor-guests`` with ``cpu.shares`` :data:`GUEST_SHARES` (a task beside it
weighs 1024), which every running QEMU joins (``cgroup.procs`` moves all its threads). cgroup v2: the
VM's own cgroup (:mod:`kubevisor.virt.cgroups`) gets ``cpu.weight`` :data:`GUEST_WEIGHT` (default 100) when
the ``cpu`` controller is enabled there. Nowhere writable: nothing changes (logged once).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GUEST_SHARES", "GUEST_WEIGHT", "GuestCpu", "detect", "lower_weight"]

log = logging.getLogger(__name__)

SYS_FS_CGROUP = Path("/sys/fs/cgroup")
DIRECTORY = "kubevisor-guests"
GUEST_SHARES = 128
"""cgroup v1 ``cpu.shares`` of all running guests together (a process of the node's services: 1024)."""
GUEST_WEIGHT = 10
"""cgroup v2 ``cpu.weight`` of each running guest (default 100)."""


@dataclass(frozen=True)
class GuestCpu:
    """The cgroup v1 CPU group running guests join."""

    path: Path

    def demote(self, pid: int) -> bool:
        """Move process ``pid`` (every thread) into the group; False when it is gone or cannot move."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as e:
            log.debug("pid %d: not moved to %s: %s", pid, self.path, e)
            return False
        return True

    def members(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []


def _own_cpu_path(proc_cgroup: str) -> str | None:
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return None


def detect(base: Path = SYS_FS_CGROUP, *, parent: Path | None = None) -> GuestCpu | None:
    """The v1 guest CPU group (made, with its shares), or None on cgroup v2 or when it cannot be made.

    ``parent``: the directory to make it in (tests use a temporary cgroup); by default the calling
    process's own cpu cgroup."""
    mount = base / "cpu"
    if not (mount / "cpu.shares").exists():
        return None
    if parent is None:
        own = _own_cpu_path(Path("/proc/self/cgroup").read_text()) or "/"
        parent = mount / own.lstrip("/")
    path = parent / DIRECTORY
    try:
        path.mkdir(exist_ok=True)
        (path / "cpu.shares").write_text(str(GUEST_SHARES))
    except OSError as e:
        log.warning("running guests keep the node's CPU priority: cannot set up %s: %s", path, e)
        return None
    return GuestCpu(path)


def lower_weight(vm_cgroup: Path) -> bool:
    """cgroup v2: give the VM's cgroup :data:`GUEST_WEIGHT`; False when its cpu controller is not on."""
    with contextlib.suppress(OSError):
        (vm_cgroup / "cpu.weight").write_text(str(GUEST_WEIGHT))
        return True
    return False
