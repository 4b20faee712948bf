"""KVM or TCG: use KVM only when a probe guest actually boots under it.

Why booting: ``/dev/kvm`` existing, and even ``KVM_CREATE_VM`` succeeding, is no proof that guests run.
On a nested hypervisor (such as the project's PVM-based machines) a stock kernel hangs under
``-enable-kvm``. So the probe boots a small guest under KVM and waits for a marker line on its serial
console, with a deadline; a guest that hangs, crashes or is too slow means TCG (KubeVirt's
``useEmulation``).

The answer is cached in memory and, if asked, in a JSON file keyed by the host's boot id, kernel release
and QEMU binary, so an agent restart does not boot the probe again but a host reboot or a QEMU upgrade
does.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubevisor.virt import process, qemucmd
from kubevisor.virt.domain import Accel, Domain, KernelBoot, RunPaths

__all__ = ["ProbeGuest", "boots", "detect", "kvm_device_usable"]

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
_memo: dict[str, Accel] = {}


@dataclass(frozen=True)
class ProbeGuest:
    """A guest that prints ``marker`` on its serial console once it has booted."""

    kernel: Path
    """Kernel for direct kernel boot."""
    initrd: Path | None
    """Initial ramdisk."""
    cmdline: str
    """Kernel command line (must send the console to ttyS0)."""
    marker: str
    """The line (or part of one) that proves the guest booted."""


def kvm_device_usable(device: Path = Path("/dev/kvm")) -> bool:
    """Whether ``device`` opens read-write and speaks the stable KVM API (necessary, not sufficient)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


async def boots(
    guest: ProbeGuest, accel: Accel, *, timeout: float, binary: str = qemucmd.QEMU_BINARY
) -> bool:
    """Boot ``guest`` under ``accel``; whether its marker appeared on the serial console in time."""
    run_dir = Path(tempfile.mkdtemp(prefix="kv-probe-"))
    try:
        domain = Domain(
            name="kubevisor-probe",
            run=RunPaths(run_dir),
            memory_mib=256,
            accel=accel,
            kernel_boot=KernelBoot(guest.kernel, guest.initrd, guest.cmdline),
            start_paused=False,
        )
        pid = process.spawn(qemucmd.command(domain, binary=binary), log_path=domain.run.qemu_log)
        try:
            deadline = time.monotonic() + timeout
            marker = guest.marker.encode()
            while time.monotonic() < deadline:
                if marker in _read(domain.run.serial_log):
                    return True
                if not process.is_running(pid):
                    return False
                await asyncio.sleep(0.05)
            return False
        finally:
            process.kill(pid)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def detect(
    guest: ProbeGuest,
    *,
    cache_file: Path | None = None,
    timeout: float = 10.0,
    kvm_device: Path = Path("/dev/kvm"),
    binary: str = qemucmd.QEMU_BINARY,
) -> Accel:
    """``kvm`` if ``guest`` boots under KVM within ``timeout`` seconds, else ``tcg``. Cached (see module)."""
    if not kvm_device_usable(kvm_device):
        return "tcg"
    key = _host_key(binary, kvm_device)
    if key in _memo:
        return _memo[key]
    cached = _read_cache(cache_file, key)
    if cached is None:
        cached = "kvm" if await boots(guest, "kvm", timeout=timeout, binary=binary) else "tcg"
        _write_cache(cache_file, key, cached)
    _memo[key] = cached
    return cached


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _host_key(binary: str, kvm_device: Path) -> str:
    resolved = shutil.which(binary)
    qemu = os.stat(resolved) if resolved else None
    boot_id = _read(Path("/proc/sys/kernel/random/boot_id")).decode().strip()
    return json.dumps(
        {
            "boot_id": boot_id,
            "kernel": os.uname().release,
            "kvm_device": str(kvm_device),
            "qemu": [resolved, qemu.st_size if qemu else 0, qemu.st_mtime_ns if qemu else 0],
        },
        sort_keys=True,
    )


def _read_cache(cache_file: Path | None, key: str) -> Accel | None:
    if cache_file is None:
        return None
    try:
        data = json.loads(cache_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    accel = data.get("accel") if isinstance(data, dict) and data.get("key") == key else None
    return accel if accel in ("kvm", "tcg") else None


def _write_cache(cache_file: Path | None, key: str, accel: Accel) -> None:
    if cache_file is None:
        return
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "accel": accel}) + "\n")
    tmp.replace(cache_file)
