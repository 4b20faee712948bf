"""Memory cgroups for QEMU processes: each guest's QEMU in its own cgroup, limited to its guest memory plus
QEMU's overhead, so one guest cannot take the node's memory (KubeVirt gets this from the pod's cgroup).

Layouts: cgroup v2 (``/sys/fs/cgroup`` with ``memory`` in ``cgroup.controllers``), cgroup v1 (the
``memory`` controller mounted at ``/sys/fs/cgroup/memory``), and the hybrid layout whose v2 mount is
``/sys/fs/cgroup/unified`` (used only when the memory controller is bound there). A VM's cgroup is
``<the agent's own memory cgroup>/kubevisor/<namespace>_<name>``: nested under the agent's cgroup, as a
delegated service does, so the guests stay inside whatever budget the agent itself was given (at the root
of the hierarchy for a node agent run as a system service).

How QEMU gets in before it allocates its guest memory: :func:`kubevisor.virt.process.spawn` writes
QEMU's pid into the cgroup right after spawning it, while it is still in its dynamic loader; QEMU starts
paused (``-S``) and touches guest memory only after ``cont``. A failed write kills QEMU and fails the
start.

Invariants: a cgroup's path is recorded by the caller (the agent writes it in the run directory), so it is
found again after an agent restart even if that agent runs in another cgroup; :func:`remove` removes the
VM's cgroup and, when it was the last, the ``kubevisor`` directory above it, so nothing is left once every
guest is gone. When cgroups cannot be written (read-only ``/sys/fs/cgroup``, no memory controller),
:func:`detect` logs it once and returns ``None``: guests then run without a memory limit.

The overhead (:func:`overhead_bytes`), a smaller cousin of KubeVirt's ``GetMemoryOverhead``: 64 MiB fixed
(QEMU's own heap, libraries, I/O buffers; KubeVirt counts ~215 MiB because its virt-launcher, virtqemud
and virtlogd live in the same cgroup), 8 MiB per vCPU (thread stacks, per-vCPU state), 16 MiB with a
video device (VGA's video RAM), guest memory / 512 (page tables), and under TCG the translation cache,
which the command line bounds (:data:`kubevisor.virt.qemucmd.TCG_TB_SIZE_MIB`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "Hierarchy",
    "detect",
    "limit_of",
    "members",
    "overhead_bytes",
    "pid_cgroup",
    "procs_file",
    "remove",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
FIXED_OVERHEAD = 64 * MiB
PER_VCPU_OVERHEAD = 8 * MiB
VIDEO_OVERHEAD = 16 * MiB
PAGE_TABLE_DIVISOR = 512
SYS_FS_CGROUP = Path("/sys/fs/cgroup")
DIRECTORY = "kubevisor"
_warned = False


def overhead_bytes(*, vcpus: int, graphics: bool, guest_bytes: int, tcg_cache_bytes: int = 0) -> int:
    """What QEMU needs beyond guest memory (see the module docstring for the terms)."""
    return (
        FIXED_OVERHEAD
        + PER_VCPU_OVERHEAD * max(1, vcpus)
        + (VIDEO_OVERHEAD if graphics else 0)
        + guest_bytes // PAGE_TABLE_DIVISOR
        + tcg_cache_bytes
    )


@dataclass(frozen=True)
class Hierarchy:
    """Where VM cgroups are made: ``root`` (the ``kubevisor`` directory) in a v1 or v2 memory hierarchy."""

    version: Literal[1, 2]
    root: Path

    def create(self, name: str, limit: int) -> Path:
        """The cgroup ``root/name`` (made, or reused when left over) with memory limit ``limit`` bytes and no
        swap; returns its directory. Raises OSError when it cannot be made or limited."""
        path = self.root / name
        if self.version == 2:
            self._enable_memory(self.root)
        path.mkdir(parents=True, exist_ok=True)
        try:
            if self.version == 2:
                (path / "memory.max").write_text(str(limit))
                with contextlib.suppress(OSError):  # no swap accounting configured
                    (path / "memory.swap.max").write_text("0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(limit))
        except OSError:
            remove(path)
            raise
        return path

    @staticmethod
    def _enable_memory(root: Path) -> None:
        """Enable the memory controller for the children of ``root`` and of each ancestor up to the mount."""
        root.mkdir(parents=True, exist_ok=True)
        chain = [root]
        while (chain[-1].parent / "cgroup.subtree_control").exists():
            chain.append(chain[-1].parent)
        for directory in reversed(chain):
            control = directory / "cgroup.subtree_control"
            if "memory" not in control.read_text().split():
                control.write_text("+memory")


def procs_file(path: Path) -> Path:
    """The file a process writes its pid to, to enter the cgroup ``path``."""
    return path / "cgroup.procs"


def members(path: Path) -> list[int]:
    """The pids in the cgroup ``path`` (empty when it does not exist)."""
    try:
        return [int(line) for line in procs_file(path).read_text().split()]
    except FileNotFoundError:
        return []


def limit_of(path: Path) -> int | None:
    """The cgroup's memory limit in bytes (None: unlimited, or no such cgroup)."""
    for name in ("memory.max", "memory.limit_in_bytes"):
        try:
            text = (path / name).read_text().strip()
        except FileNotFoundError:
            continue
        return None if text == "max" else int(text)
    return None


def remove(path: Path, *, timeout: float = 0.5) -> bool:
    """Remove the cgroup ``path`` once its processes are gone (a dying QEMU leaves it a moment later), then
    its parent if that was the last cgroup in it. Whether it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                log.warning("cannot remove cgroup %s: %s", path, e)
                return False
            time.sleep(0.02)
    if path.parent.name == DIRECTORY:
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the last VM's: leave nothing behind
    return True


def _own_path(version: int, proc_cgroup: str) -> str | None:
    """The calling process's cgroup in the memory hierarchy of ``version``, from ``/proc/self/cgroup``."""
    for line in proc_cgroup.splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        if version == 2 and hierarchy_id == "0" and controllers == "":
            return path
        if version == 1 and "memory" in controllers.split(","):
            return path
    return None


def _mount(base: Path) -> tuple[Literal[1, 2], Path] | None:
    def v2_with_memory(path: Path) -> bool:
        try:
            return "memory" in (path / "cgroup.controllers").read_text().split()
        except OSError:
            return False

    if v2_with_memory(base):
        return 2, base
    if (base / "memory" / "memory.limit_in_bytes").exists():
        return 1, base / "memory"
    if v2_with_memory(base / "unified"):
        return 2, base / "unified"
    return None


def detect(base: Path = SYS_FS_CGROUP, *, parent: Path | None = None) -> Hierarchy | None:
    """The memory hierarchy VM cgroups go in, or ``None`` (logged once) when there is none we can write.

    ``parent``: a directory inside the hierarchy to put the ``kubevisor`` directory in (tests use a
    temporary cgroup); by default the calling process's own memory cgroup."""
    found = _mount(base)
    if found is None:
        _unusable(f"no memory cgroup controller under {base}")
        return None
    version, mount = found
    if parent is None:
        own = _own_path(version, Path("/proc/self/cgroup").read_text())
        parent = mount / (own or "/").lstrip("/")
    root = parent / DIRECTORY
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _unusable(f"cannot create {root}: {e}")
        return None
    with contextlib.suppress(OSError):
        root.rmdir()  # made again with the first VM's cgroup; nothing is left while no VM runs
    return Hierarchy(version, root)


def _unusable(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("memory cgroups are not available (%s): QEMU processes run without a memory limit", why)


def pid_cgroup(pid: int, hierarchy: Hierarchy) -> Path | None:
    """The cgroup directory ``pid`` is in, in ``hierarchy``'s memory hierarchy."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    own = _own_path(hierarchy.version, text)
    if own is None:
        return None
    mount = hierarchy.root.parent
    while (mount.parent / "cgroup.procs").exists():
        mount = mount.parent
    return mount / own.lstrip("/")
