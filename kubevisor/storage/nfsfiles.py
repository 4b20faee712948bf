"""Files on an NFS server, reached through libnfs: no kernel NFS client, no mount.

Why: kubevisor's NFS volumes are opened by QEMU's own NFS block driver (libnfs, in ``qemu-block-extra``),
and ``qemu-img`` reads and writes images at ``nfs://`` URLs the same way, so nodes need no NFS mount (the
machines this runs on have no kernel NFS client at all). What those two cannot do is directory work and
renames: create a volume's directory, move a finished image into place, delete a released volume. This
module does exactly that, through the same libnfs (``libnfs.so.13``, loaded with :mod:`ctypes`), NFSv3.

Paths are absolute paths on the server (as in a PersistentVolume's ``spec.nfs.path``). Each call mounts
the *parent directory* of the path it works on (an NFSv3 server such as nfs-ganesha serves any directory
inside an export), runs one operation and unmounts; the calls block, so async code runs them in a thread
(:func:`asyncio.to_thread`). Errors are :class:`NfsError` with the errno libnfs reported.

Writing a file without a reader ever seeing half of it: write it under a temporary name in the same
directory, then :func:`link_new` it to its final name (fails with ``EEXIST`` instead of replacing what is
there, so two writers cannot clobber each other) or :func:`rename` it (replaces), then remove the temporary
name. Both are single NFS operations, atomic on the server.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "LIBRARY",
    "FileStat",
    "NfsError",
    "NfsUnavailable",
    "link_new",
    "mkdir",
    "remove_tree",
    "rename",
    "stat_path",
    "unlink",
    "url",
    "validate_server",
]

LIBRARY = "libnfs.so.13"
"""The libnfs QEMU's nfs block driver links (Debian ``libnfs13``, pulled in by ``qemu-block-extra``)."""
_STAT_WORDS = 32
"""``struct nfs_stat_64`` is 17 uint64 words; room to spare."""
_INO, _MODE, _SIZE, _MTIME, _CTIME, _MTIME_NSEC, _CTIME_NSEC = 1, 2, 7, 11, 12, 14, 15
"""Word indexes of ``nfs_ino``, ``nfs_mode``, ``nfs_size``, ``nfs_mtime``, ``nfs_ctime`` and their
``_nsec`` parts in ``struct nfs_stat_64``."""


class NfsError(OSError):
    """An NFS operation failed; ``errno`` is libnfs's (negated) return code."""


class NfsUnavailable(NfsError):
    """libnfs is not installed on this node."""


@dataclass(frozen=True)
class FileStat:
    """What :func:`stat_path` says about a path."""

    size: int
    """Size in bytes."""
    is_dir: bool
    """A directory."""
    is_file: bool
    """A regular file."""
    identity: tuple[int, ...] = ()
    """(inode, size, mtime, mtime ns, ctime, ctime ns): changes when the file is written or replaced."""


def validate_server(server: str) -> str | None:
    """Why ``server`` is not a host name or IP address (None if it is one)."""
    if not server or len(server) > 253:
        return "must be a host name or an IP address"
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")
    if not set(server) <= allowed or server.startswith("-"):
        return f"{server!r} is not a host name or an IP address"
    return None


def url(server: str, path: str) -> str:
    """The ``nfs://`` URL ``qemu-img`` opens ``path`` on ``server`` with."""
    return f"nfs://{server}{quote(path)}"


_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as e:
            raise NfsUnavailable(
                errno.ENOSYS, f"{LIBRARY} is not installed on this node; install qemu-block-extra (libnfs13)"
            ) from e
        lib.nfs_init_context.restype = ctypes.c_void_p
        lib.nfs_init_context.argtypes = []
        lib.nfs_destroy_context.argtypes = [ctypes.c_void_p]
        lib.nfs_get_error.restype = ctypes.c_char_p
        lib.nfs_get_error.argtypes = [ctypes.c_void_p]
        lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.nfs_set_version.argtypes = [ctypes.c_void_p, ctypes.c_int]
        for name in ("nfs_unlink", "nfs_rmdir", "nfs_mkdir"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for name in ("nfs_rename", "nfs_link"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.nfs_lstat64.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.nfs_opendir.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.nfs_readdir.restype = ctypes.c_void_p
        lib.nfs_readdir.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.nfs_closedir.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        _lib = lib
    return _lib


class _Session:
    def __init__(self, lib: ctypes.CDLL, context: int, server: str, export: str) -> None:
        self.lib, self.context, self.server, self.export = lib, context, server, export

    def check(self, code: int, what: str) -> None:
        if code < 0:
            detail = (self.lib.nfs_get_error(self.context) or b"").decode(errors="replace")
            raise NfsError(
                -code, f"{what} on nfs://{self.server}{self.export}: {detail or os.strerror(-code)}"
            )

    def rel(self, path: str) -> bytes:
        """``path`` relative to the mounted directory, as libnfs wants it."""
        relative = posixpath.relpath(path, self.export)
        return ("/" if relative == "." else "/" + relative).encode()


@contextmanager
def _mounted(server: str, export: str) -> Iterator[_Session]:
    problem = validate_server(server)
    if problem:
        raise NfsError(errno.EINVAL, f"NFS server {problem}")
    lib = _library()
    context = lib.nfs_init_context()
    if not context:
        raise NfsError(errno.ENOMEM, "libnfs could not make a context")
    try:
        lib.nfs_set_version(context, 3)
        session = _Session(lib, context, server, export)
        session.check(lib.nfs_mount(context, server.encode(), export.encode()), "mount")
        yield session
    finally:
        lib.nfs_destroy_context(context)  # also unmounts


def _split(path: str) -> tuple[str, str]:
    path = posixpath.normpath(path)
    if not path.startswith("/") or path == "/":
        raise NfsError(errno.EINVAL, f"NFS path {path!r} must be absolute and not the root")
    return posixpath.dirname(path), path


def stat_path(server: str, path: str) -> FileStat | None:
    """What ``path`` is (not following a final symlink); None if it does not exist."""
    parent, path = _split(path)
    with _mounted(server, parent) as s:
        buf = (ctypes.c_uint64 * _STAT_WORDS)()
        code = s.lib.nfs_lstat64(s.context, s.rel(path), ctypes.byref(buf))
        if code == -errno.ENOENT:
            return None
        s.check(code, f"stat {path}")
        mode = int(buf[_MODE])
        identity = tuple(int(buf[i]) for i in (_INO, _SIZE, _MTIME, _MTIME_NSEC, _CTIME, _CTIME_NSEC))
        return FileStat(
            size=int(buf[_SIZE]), is_dir=stat.S_ISDIR(mode), is_file=stat.S_ISREG(mode), identity=identity
        )


def mkdir(server: str, path: str, *, exist_ok: bool = True) -> None:
    """Create the directory ``path`` (its parent must exist)."""
    parent, path = _split(path)
    with _mounted(server, parent) as s:
        code = s.lib.nfs_mkdir(s.context, s.rel(path))
        if code == -errno.EEXIST and exist_ok:
            return
        s.check(code, f"mkdir {path}")


def link_new(server: str, source: str, target: str) -> bool:
    """Give the file ``source`` the new name ``target`` (same directory) unless ``target`` exists; True if
    it was linked, False if ``target`` was already there (then nothing changed)."""
    parent, source = _split(source)
    if posixpath.dirname(posixpath.normpath(target)) != parent:
        raise NfsError(errno.EXDEV, f"{source} and {target} are not in the same directory")
    with _mounted(server, parent) as s:
        code = s.lib.nfs_link(s.context, s.rel(source), s.rel(target))
        if code == -errno.EEXIST:
            return False
        s.check(code, f"link {source} to {target}")
        return True


def rename(server: str, source: str, target: str) -> None:
    """Rename ``source`` to ``target`` in the same directory, replacing ``target`` (atomic)."""
    parent, source = _split(source)
    if posixpath.dirname(posixpath.normpath(target)) != parent:
        raise NfsError(errno.EXDEV, f"{source} and {target} are not in the same directory")
    with _mounted(server, parent) as s:
        s.check(s.lib.nfs_rename(s.context, s.rel(source), s.rel(target)), f"rename {source} to {target}")


def unlink(server: str, path: str, *, missing_ok: bool = True) -> None:
    """Remove the file ``path``."""
    parent, path = _split(path)
    with _mounted(server, parent) as s:
        code = s.lib.nfs_unlink(s.context, s.rel(path))
        if code == -errno.ENOENT and missing_ok:
            return
        s.check(code, f"unlink {path}")


def _names(s: _Session, directory: bytes) -> list[str]:
    handle = ctypes.c_void_p()
    s.check(s.lib.nfs_opendir(s.context, directory, ctypes.byref(handle)), f"opendir {directory.decode()}")
    names: list[str] = []
    try:
        while True:
            entry = s.lib.nfs_readdir(s.context, handle)
            if not entry:
                return names
            # struct nfsdirent starts with ``struct nfsdirent *next; char *name;``
            name = ctypes.cast(entry + ctypes.sizeof(ctypes.c_void_p), ctypes.POINTER(ctypes.c_char_p))[0]
            if name and name not in (b".", b".."):
                names.append(name.decode(errors="surrogateescape"))
    finally:
        s.lib.nfs_closedir(s.context, handle)


def remove_tree(server: str, path: str) -> None:
    """Remove the file or the directory ``path`` and the files in it (one level: volume directories hold
    only images); nothing if it does not exist."""
    parent, path = _split(path)
    with _mounted(server, parent) as s:
        buf = (ctypes.c_uint64 * _STAT_WORDS)()
        code = s.lib.nfs_lstat64(s.context, s.rel(path), ctypes.byref(buf))
        if code == -errno.ENOENT:
            return
        s.check(code, f"stat {path}")
        if not stat.S_ISDIR(int(buf[_MODE])):
            s.check(s.lib.nfs_unlink(s.context, s.rel(path)), f"unlink {path}")
            return
        for name in _names(s, s.rel(path)):
            child = posixpath.join(path, name)
            code = s.lib.nfs_unlink(s.context, s.rel(child))
            if code != -errno.ENOENT:
                s.check(code, f"unlink {child}")
        code = s.lib.nfs_rmdir(s.context, s.rel(path))
        if code != -errno.ENOENT:
            s.check(code, f"rmdir {path}")
