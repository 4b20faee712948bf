"""An NFSv3 server on loopback for tests: nfs-ganesha (userspace, VFS backend) plus rpcbind.

Why these: the machines kubevisor is tested on have no kernel NFS server or client. nfs-ganesha serves a
plain directory over NFSv3 from userspace, and QEMU's NFS block driver (libnfs) and ``qemu-img`` read and
write images on it at ``nfs://127.0.0.1/<dir>/...``; libnfs finds the server's ports through rpcbind.

:func:`serve` starts rpcbind (unless one already answers on 127.0.0.1:111) and ganesha with a
configuration written into a temporary directory: one export of ``export_dir`` (``Path`` and ``Pseudo``
both that directory), NFSv3 over TCP only, ``no_root_squash`` (the agent and QEMU run as root), bound to
127.0.0.1, no NLM, no rquota, grace-less, its pidfile, log and recovery directory in the temporary
directory. The server answers on the standard ports (NFS 2049, rpcbind 111), which are machine-wide, so
concurrent test sessions take turns: a lock file serialises them. Stopping sends SIGTERM and waits.

:func:`serve_temporary` does the same for a fresh temporary directory it removes afterwards (what test
fixtures want).

What is missing (``ganesha.nfsd``, its VFS backend, ``rpcbind``) raises :class:`NfsServerUnavailable` with
the packages to install; test fixtures turn it into a failure, never a skip.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubevisor.storage import nfsfiles

__all__ = ["ADDRESS", "PACKAGES", "NfsServer", "NfsServerUnavailable", "serve", "serve_temporary"]

ADDRESS = "127.0.0.1"
PACKAGES = "nfs-ganesha nfs-ganesha-vfs rpcbind qemu-block-extra"
FSAL_DIRS = (Path("/usr/lib/x86_64-linux-gnu/ganesha"), Path("/usr/lib/ganesha"), Path("/usr/lib64/ganesha"))
LOCK_FILE = Path(tempfile.gettempdir()) / "kubevisor-nfs-server.lock"
START_DEADLINE = 60.0
"""Seconds ganesha gets to serve its export (it normally takes about one)."""


class NfsServerUnavailable(RuntimeError):
    """nfs-ganesha or rpcbind is not installed, or the server did not come up."""


@dataclass(frozen=True)
class NfsServer:
    """A running server."""

    address: str
    """Where it listens (``127.0.0.1``)."""
    export: Path
    """The exported directory; NFS paths are its absolute paths."""
    log: Path
    """ganesha's log file."""

    def url(self, name: str) -> str:
        """The ``nfs://`` URL of ``name`` in the export."""
        return nfsfiles.url(self.address, str(self.export / name))


def _config(work: Path, export: Path, fsal_dir: Path) -> str:
    return f"""
NFS_CORE_PARAM {{
    Protocols = 3;
    Bind_addr = {ADDRESS};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Plugins_Dir = "{fsal_dir}";
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{work / "recovery"}";
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = "{export}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = WARN; }}
"""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((ADDRESS, port), timeout=2):
            return True
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serve(export: Path) -> Iterator[NfsServer]:
    """Serve ``export`` (an existing directory) over NFSv3 on 127.0.0.1 until the block ends."""
    ganesha, rpcbind = (
        shutil.which("ganesha.nfsd"),
        shutil.which("rpcbind") or ("/usr/sbin/rpcbind" if os.path.exists("/usr/sbin/rpcbind") else None),
    )
    fsal_dir = next((d for d in FSAL_DIRS if (d / "libfsalvfs.so").exists()), None)
    if ganesha is None or rpcbind is None or fsal_dir is None:
        missing = [
            n
            for n, p in (("ganesha.nfsd", ganesha), ("rpcbind", rpcbind), ("libfsalvfs.so", fsal_dir))
            if not p
        ]
        raise NfsServerUnavailable(
            f"{', '.join(missing)} not found: install the Debian packages {PACKAGES} (`make install`)"
        )
    export = export.resolve()
    with ExitStack() as stack:
        lock = stack.enter_context(open(LOCK_FILE, "a"))
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session's server: wait for it to finish
        stack.callback(fcntl.flock, lock, fcntl.LOCK_UN)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kv-nfs-")))
        (work / "recovery").mkdir()
        if not _listening(111):
            rpc = subprocess.Popen(
                [rpcbind, "-f", "-w"],
                stdout=subprocess.DEVNULL,
                stderr=stack.enter_context(open(work / "rpcbind.log", "wb")),
            )
            stack.callback(_stop, rpc)
            deadline = time.monotonic() + START_DEADLINE
            while not _listening(111):
                if rpc.poll() is not None or time.monotonic() > deadline:
                    raise NfsServerUnavailable(f"rpcbind did not start: {(work / 'rpcbind.log').read_text()}")
                time.sleep(0.05)
        conf, log = work / "ganesha.conf", work / "ganesha.log"
        conf.write_text(_config(work, export, fsal_dir))
        server = subprocess.Popen(
            [ganesha, "-F", "-f", str(conf), "-L", str(log), "-p", str(work / "ganesha.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, server)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:  # mounting the export proves ganesha serves it and rpcbind knows it
                nfsfiles.stat_path(ADDRESS, str(export / ".probe"))
                break
            except nfsfiles.NfsError as e:
                if server.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise NfsServerUnavailable(f"nfs-ganesha did not serve {export}: {e}\n{text}") from e
                time.sleep(0.1)
        yield NfsServer(address=ADDRESS, export=export, log=log)


@contextmanager
def serve_temporary() -> Iterator[NfsServer]:
    """Serve a new empty temporary directory (``kv-export-*``) like :func:`serve`; the directory and all
    that was written into it are removed when the block ends."""
    export = Path(tempfile.mkdtemp(prefix="kv-export-"))
    try:
        with serve(export) as server:
            yield server
    finally:
        shutil.rmtree(export, ignore_errors=True)
