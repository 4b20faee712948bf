"""libceph: a real single-node Ceph cluster with an S3 endpoint (radosgw) on loopback, for tests.

Why it exists: S3 is a source of DataVolume imports (and a backup target), and the honest test of an S3
client is a real S3 server. The only one in this machine's package registries is Ceph's radosgw (Debian
``ceph-mon ceph-osd ceph-mgr radosgw``; ``moto`` is an in-memory emulator). This module builds a whole
cluster by hand, as the Ceph manual's "manual deployment" does, all of it under one temporary
directory:

1. ``ceph.conf`` (cephx everywhere: radosgw cannot connect with ``auth none``; pool size 1; small
   placement-group counts so that radosgw's pools fit one OSD), keyrings for ``mon.`` and
   ``client.admin`` (``ceph-authtool``), a monitor map (``monmaptool``);
2. a monitor (``ceph-mon --mkfs``, then in the foreground on a free loopback port, msgr2);
3. a manager (``ceph-mgr``; its key from ``ceph auth get-or-create``);
4. one bluestore OSD backed by a sparse file (``ceph osd new`` with a generated cephx secret, then
   ``ceph-osd --mkfs``): the block file lies *outside* the OSD's data directory, and is 16 GiB (sparse:
   only what is written takes space; a 4 GiB one filled up under load on this machine);
5. radosgw (``beast`` frontend on a free loopback port; with ``tls``, a certificate and key valid for
   127.0.0.1, also HTTPS on another) and one S3 user (``radosgw-admin user create``).

Every daemon runs in the foreground (``-f``) as a child of the test process, in a process group of its
own, and is killed by :meth:`CephCluster.stop`; :func:`running_ceph` then removes the directory. Nothing
is read from or written to ``/etc/ceph`` or ``/var/lib/ceph``. Starting takes about 20 s on a two-core
machine, so tests share one cluster per session (:func:`running_ceph` in a session-scoped fixture).

A missing package is a test failure (:class:`CephMissing`, an ``AssertionError``) that says what to
install, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["BINARIES", "CephCluster", "CephMissing", "S3User", "require", "running_ceph"]

BINARIES = {
    "ceph-mon": "ceph-mon",
    "monmaptool": "ceph-base",
    "ceph-osd": "ceph-osd",
    "ceph-mgr": "ceph-mgr",
    "radosgw": "radosgw",
    "ceph": "ceph-common",
    "ceph-authtool": "ceph-common",
    "radosgw-admin": "ceph-common",
}
"""The programs a cluster needs, and the Debian package of each."""

BLOCK_SIZE = 16 << 30
"""The OSD's block file (sparse)."""
COMMAND_TIMEOUT = 120.0


class CephMissing(AssertionError):
    """A Ceph program is not installed; the message says what to install."""


def require() -> None:
    """Raise :class:`CephMissing` unless every program in :data:`BINARIES` is installed."""
    missing = sorted({package for binary, package in BINARIES.items() if shutil.which(binary) is None})
    if missing:
        raise CephMissing(
            "Ceph is not installed: the S3 tests run a real radosgw. Install the Debian packages "
            f"ceph-mon ceph-osd ceph-mgr radosgw (missing: {', '.join(missing)}), e.g. with `make install`."
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class S3User:
    """An S3 identity of the cluster's radosgw."""

    uid: str
    access_key: str
    secret_key: str = field(repr=False)


CONFIG = """[global]
fsid = {fsid}
mon initial members = a
mon host = [v2:127.0.0.1:{mon_port}]
public addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {root}/run
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
mon cluster log file = {root}/log/cluster.log
crash dir = {root}/crash
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
mon allow pool delete = true

[mon]
mon data = {root}/mon/$cluster-$id
keyring = {root}/mon/$cluster-$id/keyring

[mgr]
mgr data = {root}/mgr/$cluster-$id
keyring = {root}/mgr/$cluster-$id/keyring

[osd]
osd data = {root}/osd/$cluster-$id
keyring = {root}/osd/$cluster-$id/keyring
osd objectstore = bluestore
bluestore block path = {root}/blocks/$cluster-$id.block
bluestore block create = true
bluestore block size = {block_size}
bluestore fsck on mount = false
osd memory target = 1073741824

[client.admin]
keyring = {root}/keys/client.admin.keyring

[client.rgw.a]
keyring = {root}/keys/client.rgw.a.keyring
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}{rgw_tls}
rgw enable usage log = false
"""


class CephCluster:
    """One monitor, one manager, one OSD and one radosgw under ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, *, tls: tuple[Path, Path] | None = None) -> None:
        self.directory = Path(directory)
        self.tls = tls
        """PEM certificate and key files for radosgw's HTTPS endpoint (none without)."""
        self.conf = self.directory / "ceph.conf"
        self.fsid = str(uuid.uuid4())
        self.mon_port = 0
        self.rgw_port = 0
        self.rgw_tls_port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        """The daemons, by Ceph name (``mon.a``, ``mgr.x``, ``osd.0``, ``client.rgw.a``), in start order."""
        self.user: S3User | None = None
        """The S3 user created at start."""
        self.seconds = 0.0
        """How long :meth:`start` took."""

    @property
    def endpoint(self) -> str:
        """radosgw's S3 endpoint, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.rgw_port}"

    @property
    def tls_endpoint(self) -> str:
        """radosgw's HTTPS endpoint, ``https://127.0.0.1:<port>`` (only with ``tls``)."""
        if not self.tls:
            raise ValueError("this cluster's radosgw has no HTTPS endpoint: start it with tls")
        return f"https://127.0.0.1:{self.rgw_tls_port}"

    # --- running programs ----------------------------------------------------------------------

    def _run(self, argv: list[str], *, input: bytes | None = None, what: str = "") -> str:
        try:
            done = subprocess.run(
                argv, input=input, capture_output=True, check=False, timeout=COMMAND_TIMEOUT
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"ceph: {what or argv[0]} did not finish in {COMMAND_TIMEOUT:g} s") from e
        if done.returncode != 0:
            raise RuntimeError(
                f"ceph: {what or ' '.join(argv[:3])} failed (exit {done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()[-2000:]}"
            )
        return done.stdout.decode(errors="replace")

    def ceph(self, *args: str, input: bytes | None = None) -> str:
        """``ceph`` as ``client.admin`` (e.g. ``cluster.ceph("status")``)."""
        argv = ["ceph", "-c", str(self.conf), "-n", "client.admin", "--connect-timeout", "60", *args]
        return self._run(argv, input=input, what=f"ceph {' '.join(args)}")

    def radosgw_admin(self, *args: str) -> Any:
        """``radosgw-admin`` as ``client.admin``; its JSON output parsed."""
        argv = ["radosgw-admin", "-c", str(self.conf), "-n", "client.admin", *args]
        text = self._run(argv, what=f"radosgw-admin {' '.join(args)}")
        return json.loads(text) if text.strip() else None

    def _daemon(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.directory / "log" / f"{name}.stderr", "ab")  # noqa: SIM115 (the child keeps it)
        with log:
            process = subprocess.Popen(
                [*argv, "-f", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C to the tests does not reach it before stop() does
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        """The end of a daemon's logs (its stderr and its log file)."""
        texts = []
        for path in (self.directory / "log" / f"{name}.stderr", self.directory / "log" / f"{name}.log"):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace")[-1500:])
        return "\n".join(t for t in texts if t.strip())

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"ceph: {name} exited with status {process.returncode}: {self.log(name)}")

    def _wait(self, what: str, ready: Any, deadline: float) -> None:
        while True:
            self._check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"ceph: {what} not ready in time")
            time.sleep(0.2)

    # --- start and stop ------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        """Create and start the cluster; return once radosgw answers S3 as :attr:`user`."""
        require()
        started = time.monotonic()
        deadline = started + timeout
        try:
            self._start(deadline)
        except BaseException:
            self.stop()
            raise
        self.seconds = time.monotonic() - started

    def _start(self, deadline: float) -> None:
        root = self.directory
        for sub in ("run", "log", "crash", "keys", "blocks", "mon", "mgr", "osd"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.mon_port = _free_port()
        self.rgw_port = _free_port()
        rgw_tls = ""
        if self.tls:
            self.rgw_tls_port = _free_port()
            rgw_tls = (
                f" ssl_endpoint=127.0.0.1:{self.rgw_tls_port} ssl_certificate={self.tls[0]}"
                f" ssl_private_key={self.tls[1]}"
            )
        self.conf.write_text(
            CONFIG.format(
                fsid=self.fsid,
                root=root,
                mon_port=self.mon_port,
                rgw_port=self.rgw_port,
                rgw_tls=rgw_tls,
                block_size=BLOCK_SIZE,
            )
        )
        keys = root / "keys"
        mon_keyring = keys / "mon.keyring"
        admin_keyring = keys / "client.admin.keyring"
        self._run(
            ["ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.",
             "--cap", "mon", "allow *"],
        )  # fmt: skip
        self._run(
            ["ceph-authtool", "--create-keyring", str(admin_keyring), "--gen-key", "-n", "client.admin",
             "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
             "--cap", "mds", "allow *"],
        )  # fmt: skip
        self._run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(admin_keyring)])
        monmap = root / "monmap"
        self._run(
            ["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
             str(monmap)],
        )  # fmt: skip

        # the monitor
        self._run(
            ["ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
             "--keyring", str(mon_keyring)],
            what="ceph-mon --mkfs",
        )  # fmt: skip
        self._daemon("mon.a", ["ceph-mon", "-i", "a"])
        self.ceph("config", "set", "mon", "auth_allow_insecure_global_id_reclaim", "false")

        # the manager
        mgr_dir = root / "mgr" / "ceph-x"
        mgr_dir.mkdir()
        key = self.ceph(
            "auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *", "mds", "allow *"
        )
        (mgr_dir / "keyring").write_text(key)
        self._daemon("mgr.x", ["ceph-mgr", "-i", "x"])

        # the OSD: a cephx secret of our own, registered with the monitor by `osd new`
        osd_uuid = str(uuid.uuid4())
        secret = self._run(["ceph-authtool", "--gen-print-key"]).strip()
        osd_id = self.ceph(
            "osd", "new", osd_uuid, "-i", "-", input=json.dumps({"cephx_secret": secret}).encode()
        )
        osd_id = osd_id.strip()
        osd_dir = root / "osd" / f"ceph-{osd_id}"
        osd_dir.mkdir()
        self._run(
            ["ceph-authtool", "--create-keyring", str(osd_dir / "keyring"), "--name", f"osd.{osd_id}",
             "--add-key", secret],
        )  # fmt: skip
        self._run(
            ["ceph-osd", "-c", str(self.conf), "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid],
            what="ceph-osd --mkfs",
        )  # fmt: skip
        self._daemon(f"osd.{osd_id}", ["ceph-osd", "-i", osd_id])
        self._wait("the OSD", lambda: self._osd_up(osd_id), deadline)

        # radosgw and its user
        key = self.ceph(
            "auth", "get-or-create", "client.rgw.a", "mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"
        )
        (keys / "client.rgw.a.keyring").write_text(key)
        self._daemon("client.rgw.a", ["radosgw", "-n", "client.rgw.a"])
        self._wait("radosgw", self._rgw_answers, deadline)
        self.user = self.create_user("kubevisor-test")

    def _osd_up(self, osd_id: str) -> bool:
        dump = json.loads(self.ceph("osd", "dump", "--format", "json"))
        return any(str(o.get("osd")) == osd_id and o.get("up") == 1 for o in dump.get("osds") or [])

    def _rgw_answers(self) -> bool:
        try:
            return httpx.get(self.endpoint, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def create_user(self, uid: str) -> S3User:
        """A new S3 user with a key pair of its own."""
        access = "KV" + secrets.token_hex(9).upper()
        secret = secrets.token_urlsafe(30)
        self.radosgw_admin(
            "user", "create", f"--uid={uid}", f"--display-name={uid}", f"--access-key={access}",
            f"--secret={secret}",
        )  # fmt: skip
        return S3User(uid, access, secret)

    def stop(self) -> None:
        """Kill every daemon (SIGKILL: the cluster is thrown away, and radosgw alone takes ~6 s to honour
        SIGTERM) and wait for each; the directory stays."""
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait()
        self.processes.clear()

    def __enter__(self) -> CephCluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def running_ceph(timeout: float = 180.0, *, tls: tuple[Path, Path] | None = None) -> Iterator[CephCluster]:
    """A :class:`CephCluster` in a new temporary directory, stopped and removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="kv-ceph-"))
    try:
        cluster = CephCluster(directory, tls=tls)
        cluster.start(timeout)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
