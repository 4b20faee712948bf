"""Host processes the driver starts (QEMU), finds again, and stops; and the reverter for multi-step starts.

Invariants:

- A spawned process leads its own session and process group (``setsid``), so it outlives the agent,
  signals to the agent's group do not reach it, and stopping it signals its whole group.
- A process is found again only by its pidfile *and* its ``/proc/<pid>/cmdline`` holding a marker the
  caller chose (e.g. its QMP socket path): a stale pidfile whose pid was reused is never mistaken for it.
- A process spawned into a cgroup is moved into it before :func:`spawn` returns, while it is still in its
  dynamic loader; if it cannot be moved it is killed (see :mod:`kubevisor.virt.cgroups`).
- A zombie counts as exited. This module reaps the children it spawned (keeping their exit status for
  :func:`exit_status`); an adopted process whose parent does not reap (PID 1 on these machines does not)
  stays a zombie, which is still "not running".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "Reverter",
    "cmdline",
    "exit_status",
    "find",
    "is_running",
    "kill",
    "read_pidfile",
    "spawn",
    "terminate",
    "wait_exit",
]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.02
# Signals a child starts with default handling (Python ignores SIGPIPE, a parent may ignore others;
# ignored dispositions survive exec). SIGKILL and SIGSTOP cannot be changed.
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
_exit_statuses: dict[int, int] = {}


def spawn(
    argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None, cgroup: Path | None = None
) -> int:
    """Start ``argv`` in a new session, stdin from /dev/null, stdout and stderr appended to ``log_path``,
    no signal blocked or ignored; with ``cgroup`` (a cgroup directory), moved into that cgroup at once, while
    it is still in its dynamic loader (QEMU allocates its guest memory much later; a paused QEMU touches it
    only after ``cont``). A move that fails kills the process and raises OSError: nothing runs outside its
    cgroup. (An ``sh -c 'echo $$ > procs && exec qemu'`` launcher would enter before the first instruction,
    but costs ~15 ms of start-up here, measured; a move right after spawn costs ~0.1 ms.)

    Returns the pid. The process is this process's child: :func:`is_running`, :func:`wait_exit` and
    :func:`terminate` reap it.
    """
    executable = shutil.which(argv[0])
    if executable is None:
        raise FileNotFoundError(f"{argv[0]} is not installed (or not on PATH); run `make install`")
    args = list(argv)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(
            executable,
            args,
            os.environ if env is None else env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=_DEFAULT_SIGNALS,
        )
    finally:
        os.close(out)
        os.close(devnull)
    if cgroup is not None:
        try:
            (cgroup / "cgroup.procs").write_text(str(pid))
        except OSError:
            kill(pid)
            raise
    return pid


def read_pidfile(path: Path) -> int | None:
    """The pid in ``path``, or ``None`` if the file is missing or does not hold a pid."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def cmdline(pid: int) -> list[str] | None:
    """The process's argument list, or ``None`` if there is no such process (or it is a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _reap(pid: int) -> bool:
    """Collect the exit status of our child ``pid`` if it has exited; whether nothing is left to wait for
    (it was reaped now or before, or it is not our child)."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    if reaped != pid:
        return False
    _exit_statuses[pid] = os.waitstatus_to_exitcode(status)
    return True


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (zombies have exited). Reaps it if it is our child.

    A multi-threaded process (QEMU) shows as a zombie as soon as its main thread exits, a moment before
    its parent can reap it; :func:`wait_exit` waits for that moment too."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
    return state not in ("Z", "X")


def exit_status(pid: int) -> int | None:
    """How a child spawned here ended, once reaped: its exit code, or minus the signal that killed it.
    ``None`` while it runs, or for a process that is not our child."""
    return _exit_statuses.get(pid)


def find(pidfile: Path, *, marker: str) -> int | None:
    """The running process named by ``pidfile`` whose command line contains the argument ``marker``."""
    pid = read_pidfile(pidfile)
    if pid is None or not is_running(pid):
        return None
    args = cmdline(pid)
    if args is None or not any(marker in arg for arg in args):
        return None
    return pid


async def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit (and, if it is our child, to be reaped, so that
    :func:`exit_status` knows how it ended); whether it did."""
    deadline = time.monotonic() + timeout
    while is_running(pid) or not _reap(pid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pid`` leads, or only ``pid`` if it leads none (never someone else's)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


async def terminate(pid: int, *, grace: float = 10.0) -> None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL it and wait for the exit."""
    if not is_running(pid):
        return
    _signal_group(pid, signal.SIGTERM)
    if await wait_exit(pid, grace):
        return
    _signal_group(pid, signal.SIGKILL)
    if not await wait_exit(pid, 10.0):
        raise TimeoutError(f"process {pid} survived SIGKILL for 10 s")


def kill(pid: int) -> None:
    """SIGKILL the process group now and reap it if it is our child (for reverters and cleanup)."""
    if not is_running(pid):
        return
    _signal_group(pid, signal.SIGKILL)
    try:
        _, status = os.waitpid(pid, 0)
        _exit_statuses[pid] = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass


class Reverter:
    """Undo a multi-step host change unless it completes.

    Register the undo of each step as soon as the step is done; call :meth:`success` after the last one.
    Leaving the ``with`` (or ``async with``) block without ``success()`` runs the undos newest first; an
    undo that fails is logged and the others still run. Async undos need ``async with``::

        async with Reverter() as revert:
            pid = process.spawn(argv, log_path=log)
            revert.add(lambda: process.kill(pid))
            await qmp_session.connect()
            revert.success()
    """

    def __init__(self) -> None:
        self._undos: list[Callable[[], object]] = []
        self._done = False

    def add(self, undo: Callable[[], Awaitable[None] | None]) -> None:
        """Register the undo of a step that has just succeeded."""
        self._undos.append(undo)

    def success(self) -> None:
        """Keep everything: the change completed."""
        self._done = True

    def revert(self) -> None:
        """Run the undos now, newest first (synchronous undos only)."""
        undos, self._undos = self._undos[::-1], []
        for undo in undos:
            try:
                result = undo()
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()
                    raise TypeError(f"{undo!r} is asynchronous; use `async with Reverter()`")
            except Exception:
                log.exception("reverting a failed host change: %r failed", undo)

    async def arevert(self) -> None:
        """Run the undos now, newest first, awaiting asynchronous ones."""
        undos, self._undos = self._undos[::-1], []
        for undo in undos:
            try:
                result = undo()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("reverting a failed host change: %r failed", undo)

    def __enter__(self) -> Reverter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.revert()

    async def __aenter__(self) -> Reverter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            await self.arevert()
