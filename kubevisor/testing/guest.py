"""libguest: the small bootable guest that end-to-end tests and benchmarks run under QEMU.

Why it exists: tests need a real guest that boots in seconds under TCG, speaks on its serial console,
applies a cloud-init seed, takes a DHCP address, answers HTTP and powers off on ACPI, and that builds on a
machine whose only network is the package registries. So it is made from two Debian packages fetched with
``apt-get download`` (the cloud kernel and busybox-static) and nothing else, and cached under
``$KUBEVISOR_CACHE/guest/<hash of every input>`` (default ``~/.cache/kubevisor``): only the first build on
a machine pays for the download and unpacking.

Artifacts (see :class:`Guest`): the kernel, an initramfs, and a bootable disk image (an isohybrid ISO made
with ISOLINUX and xorriso; SeaBIOS boots it as a disk or a CD-ROM: tests boot it from virtio and SCSI
disks and a SATA CD-ROM, on q35 and pc). The same image boots under UEFI (OVMF): it also carries an EFI
system partition (El Torito and GPT, ``xorriso -isohybrid-gpt-basdat``) whose ``EFI/BOOT/BOOTX64.EFI`` is
a standalone GRUB (``grub-mkstandalone``, packages grub-efi-amd64-bin and mtools) that finds the disk
holding ``/boot/vmlinuz`` and boots it with the same initramfs and command line. The root file system is
the initramfs itself; the guest writes nothing to its disk.

The guest's contract, which tests rely on (lines on the serial console, ``ttyS0``):

- the virtio modules load in dependency order (the cloud kernel has virtio as modules and no AHCI driver:
  the guest sees virtio-blk, virtio-scsi and IDE disks, not SATA ones, although SeaBIOS boots from all);
- a disk labelled ``cidata`` (NoCloud: ``meta-data``, ``user-data``) or ``config-2`` (ConfigDrive:
  ``openstack/latest/meta_data.json``, ``openstack/latest/user_data``) sets the hostname, and a user-data
  script starting with ``#!`` runs between ``KUBEVISOR-USERDATA-BEGIN`` and ``KUBEVISOR-USERDATA-END rc=N``
  (``#cloud-config`` user data is not interpreted);
- ``KUBEVISOR-GUEST-READY hostname=<h>`` then says the guest is up (seed applied, HTTP served on port 80);
- with a NIC, ``eth0`` asks for DHCP in the background (retrying until a server answers, then renewing)
  and prints ``KUBEVISOR-GUEST-IP eth0=<address>`` on each lease;
- ACPI powerdown (QMP ``system_powerdown``) prints ``KUBEVISOR-GUEST-POWEROFF`` and powers off at once;
- with a virtio-serial port named ``org.qemu.guest_agent.0``, Debian's ``qemu-ga`` runs on it (its
  binary and the shared libraries it needs are copied into the initramfs from their packages), and
  ``/etc/os-release`` describes the guest (``ID=kubevisor-guest``); ``KUBEVISOR-GUEST-AGENT started``
  says so on the console;
- then a root shell runs on the console (prompt ``<hostname>#``).

Seeds are written by :mod:`kubevisor.virt.cloudinit` (the node agent writes the same images); this module
re-exports :func:`nocloud_seed` and :func:`configdrive_seed`.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubevisor.virt.cloudinit import configdrive_seed, nocloud_seed

__all__ = [
    "GUEST_AGENT_MARKER",
    "IP_MARKER",
    "KERNEL_CMDLINE",
    "POWEROFF_MARKER",
    "READY_MARKER",
    "USERDATA_BEGIN",
    "USERDATA_END",
    "Guest",
    "GuestBuildError",
    "build",
    "cache_root",
    "configdrive_seed",
    "disk_image",
    "kernel_and_initrd",
    "nocloud_seed",
]

READY_MARKER = "KUBEVISOR-GUEST-READY"
"""Printed once the guest is up: ``KUBEVISOR-GUEST-READY hostname=<hostname>``."""
IP_MARKER = "KUBEVISOR-GUEST-IP"
"""Printed when DHCP binds: ``KUBEVISOR-GUEST-IP eth0=<address>``."""
USERDATA_BEGIN = "KUBEVISOR-USERDATA-BEGIN"
"""Printed before the user-data script's output."""
USERDATA_END = "KUBEVISOR-USERDATA-END"
"""Printed after the user-data script's output: ``KUBEVISOR-USERDATA-END rc=<exit status>``."""
POWEROFF_MARKER = "KUBEVISOR-GUEST-POWEROFF"
"""Printed when the guest handles an ACPI power button press, just before it powers off."""

KERNEL_CMDLINE = "console=ttyS0,115200 quiet"
"""The kernel command line the disk image boots with; use it for direct kernel boot too."""

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
GUEST_AGENT_PACKAGES = (
    "qemu-guest-agent",
    "libc6",
    "libglib2.0-0",
    "libnuma1",
    "libudev1",
    "liburing2",
    "libpcre2-8-0",
)
"""qemu-ga and the packages of the shared libraries it links (``ldd /usr/sbin/qemu-ga`` on Debian 12)."""
GUEST_AGENT_LIBRARIES = (
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libglib-2.0.so.0",
    "libgmodule-2.0.so.0",
    "libnuma.so.1",
    "libudev.so.1",
    "liburing.so.2",
    "libpcre2-8.so.0",
)
OS_RELEASE = """NAME="kubevisor test guest"
ID=kubevisor-guest
VERSION_ID=1
VERSION="1 (busybox)"
PRETTY_NAME="kubevisor test guest 1"
"""
GUEST_AGENT_MARKER = "KUBEVISOR-GUEST-AGENT"
"""Printed when qemu-ga starts in the guest: ``KUBEVISOR-GUEST-AGENT started``."""
ARCH = "amd64"

# Modules wanted in the guest; their dependencies are added from each module's modinfo, in load order.
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "virtio_console",
    "sd_mod",
    "sr_mod",
    "ata_piix",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "button",
    "evdev",
)
# Module parameters: scan SCSI buses synchronously, so a seed disk exists when insmod returns.
MODULE_PARAMETERS = {"scsi_mod": "scan=sync"}

ISOLINUX_DIR = Path("/usr/lib/ISOLINUX")
SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")
GRUB_EFI_MODULES = Path("/usr/lib/grub/x86_64-efi")
GRUB_MODULES = "part_gpt part_msdos iso9660 fat search search_fs_file linux normal serial configfile boot"
EFI_IMAGE_KIB = 2048
"""Size of the FAT image holding the EFI boot loader (GRUB is about 1 MiB)."""
BUILD_FORMAT = 1
"""Bump when the build changes in a way the hashed inputs below do not capture."""

INIT = r"""#!/bin/sh
# kubevisor test guest: PID 1, from the initramfs. See kubevisor/testing/guest.py for the contract.
export PATH=/bin
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run /seed /var/log /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
while read -r module params; do
  insmod "/lib/modules/$module.ko" $params || echo "kubevisor-guest: insmod $module failed"
done < /etc/modules
ip link set lo up
hostname kubevisor-guest

# The seed is the disk whose ISO 9660 volume id (32 bytes at offset 32808) is cidata or config-2.
seed=""
for dev in /sys/class/block/*; do
  label=$(dd if="/dev/${dev##*/}" bs=8 skip=4101 count=4 2>/dev/null | tr -d ' \0')
  case "$label" in
    cidata|CIDATA|config-2|CONFIG-2) seed="/dev/${dev##*/}"; break ;;
  esac
done
userdata=""
if [ -n "$seed" ] && mount -o ro "$seed" /seed; then
  name=""
  if [ -f /seed/meta-data ]; then
    # YAML (local-hostname: h) or JSON on one line, as KubeVirt writes it ({"local-hostname":"h",...})
    name=$(tr ',{}' '\n\n\n' < /seed/meta-data | tr -d "\"'\r" \
      | sed -n 's/^[[:space:]]*local-hostname[[:space:]]*:[[:space:]]*\([^[:space:]]*\).*/\1/p' | head -n 1)
    userdata=/seed/user-data
  elif [ -f /seed/openstack/latest/meta_data.json ]; then
    name=$(tr ',{}' '\n\n\n' < /seed/openstack/latest/meta_data.json | tr -d '"\r' \
      | sed -n 's/^[[:space:]]*hostname[[:space:]]*:[[:space:]]*\([^[:space:]]*\).*/\1/p' | head -n 1)
    userdata=/seed/openstack/latest/user_data
  fi
  [ -n "$name" ] && hostname "$name"
fi
echo "$(hostname)" > /etc/hostname

if [ -n "$userdata" ] && [ -f "$userdata" ] && [ "$(head -c 2 "$userdata")" = "#!" ]; then
  cp "$userdata" /run/user-data && chmod 0755 /run/user-data
  echo "KUBEVISOR-USERDATA-BEGIN"
  /run/user-data 2>&1
  echo "KUBEVISOR-USERDATA-END rc=$?"
fi

acpid -c /etc/acpi -l /var/log/acpid.log

# The guest agent, on the virtio-serial port QEMU names org.qemu.guest_agent.0 (when there is one).
for port in /sys/class/virtio-ports/*; do
  if [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
    mkdir -p /run/qemu-ga
    LD_LIBRARY_PATH=/lib/x86_64-linux-gnu /usr/sbin/qemu-ga -d -m virtio-serial -p "/dev/${port##*/}" \
      -t /run/qemu-ga -f /run/qemu-ga.pid -l /var/log/qemu-ga.log \
      && echo "KUBEVISOR-GUEST-AGENT started"
  fi
done

mkdir -p /www
echo "kubevisor-guest hostname=$(hostname)" > /www/index.html
httpd -p 80 -h /www

if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  udhcpc -f -i eth0 -s /etc/udhcpc.script -t 10 -T 1 -A 1 -x "hostname:$(hostname)" >/dev/null 2>&1 &
fi

echo "KUBEVISOR-GUEST-READY hostname=$(hostname)"
export PS1='\h# ' HOME=/root
while true; do
  setsid cttyhack sh -l
  sleep 1
done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc hook: configure the address, default route and resolver, and say so on the console.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    printf '\nKUBEVISOR-GUEST-IP %s=%s\n' "$interface" "$ip" > /dev/console
    ;;
esac
exit 0
"""

POWER_BUTTON_ACTION = r"""#!/bin/sh
# busybox acpid runs this (its default action for the power button, PWRF/00000080).
printf '\nKUBEVISOR-GUEST-POWEROFF\n' > /dev/console
sync
poweroff -f
"""

ISOLINUX_CFG = f"""SERIAL 0 115200
DEFAULT kubevisor
PROMPT 0
TIMEOUT 0
LABEL kubevisor
  KERNEL /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND {KERNEL_CMDLINE}
"""

GRUB_CFG = f"""set timeout=0
serial --unit=0 --speed=115200
terminal_output serial
search --no-floppy --set=root --file /boot/vmlinuz
linux /boot/vmlinuz {KERNEL_CMDLINE}
initrd /boot/initrd.img
boot
"""


class GuestBuildError(RuntimeError):
    """The test guest could not be built; the message says which step failed and what to do."""


@dataclass(frozen=True)
class Guest:
    """A built test guest. The files are shared by every test: attach ``disk`` read-only or behind an
    overlay, never writable."""

    directory: Path
    """The cache directory holding every artifact and ``manifest.json``."""
    kernel: Path
    """The cloud kernel (bzImage), for direct kernel boot."""
    initrd: Path
    """The initramfs (gzip-compressed newc cpio) holding busybox, the init and the modules."""
    disk: Path
    """A bootable isohybrid disk image with the same kernel, initramfs and :data:`KERNEL_CMDLINE`."""
    packages: Mapping[str, str]
    """Debian package name -> version the guest was built from."""


def cache_root() -> Path:
    """Where kubevisor caches build artifacts: ``$KUBEVISOR_CACHE``, else ``$XDG_CACHE_HOME/kubevisor``,
    else ``~/.cache/kubevisor``."""
    explicit = os.environ.get("KUBEVISOR_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kubevisor"


def kernel_and_initrd() -> tuple[Path, Path]:
    """The guest's kernel and initramfs for direct kernel boot (append :data:`KERNEL_CMDLINE`)."""
    guest = build()
    return guest.kernel, guest.initrd


def disk_image() -> Path:
    """The guest's bootable disk image (isohybrid: boots from a disk or a CD-ROM under SeaBIOS)."""
    return build().disk


@functools.cache
def build() -> Guest:
    """Build the guest, or return the cached build for the same inputs. Safe across processes."""
    packages = _resolve_packages()
    boot_files = _boot_files()
    key = _inputs_key(packages, boot_files)
    root = cache_root() / "guest"
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if not (final / "manifest.json").exists():
            _build_into(final, packages, boot_files, root)
    return _load(final)


# --- inputs -------------------------------------------------------------------------------------------


def _run(argv: list[str], *, what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise GuestBuildError(f"test guest: {what}: {argv[0]} is not installed; run `make install`") from e
    if done.returncode != 0:
        raise GuestBuildError(
            f"test guest: {what} failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr.strip()}"
        )
    return done.stdout


def _resolve_packages() -> dict[str, str]:
    """Package name -> version: the kernel the cloud metapackage points at, and busybox-static."""
    out = _run(
        ["apt-cache", "show", "--no-all-versions", KERNEL_PACKAGE, BUSYBOX_PACKAGE, *GUEST_AGENT_PACKAGES],
        what="resolving Debian packages (run `apt-get update` if the package lists are missing)",
    )
    stanzas: dict[str, dict[str, str]] = {}
    for block in out.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(" ")
        )
        if "Package" in fields:
            stanzas[fields["Package"]] = fields
    try:
        depends = stanzas[KERNEL_PACKAGE]["Depends"]
        busybox_version = stanzas[BUSYBOX_PACKAGE]["Version"]
    except KeyError as e:
        raise GuestBuildError(f"test guest: apt-cache show did not describe {e}; run `apt-get update`") from e
    match = re.search(r"(linux-image-[^\s,]+-cloud-amd64) \(= ([^)]+)\)", depends)
    if not match:
        raise GuestBuildError(f"test guest: cannot find the kernel package in {KERNEL_PACKAGE}'s Depends")
    packages = {match.group(1): match.group(2), BUSYBOX_PACKAGE: busybox_version}
    for name in GUEST_AGENT_PACKAGES:
        if name not in stanzas:
            raise GuestBuildError(f"test guest: apt-cache show did not describe {name}; run `apt-get update`")
        packages[name] = stanzas[name]["Version"]
    return packages


def _boot_files() -> dict[str, Path]:
    files = {
        "isohdpfx.bin": ISOLINUX_DIR / "isohdpfx.bin",
        "isolinux.bin": ISOLINUX_DIR / "isolinux.bin",
        "ldlinux.c32": SYSLINUX_MODULES / "ldlinux.c32",
        "grub-kernel.img": GRUB_EFI_MODULES / "kernel.img",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    missing += [tool for tool in ("grub-mkstandalone", "mformat", "mcopy") if shutil.which(tool) is None]
    if missing:
        raise GuestBuildError(
            f"test guest: {', '.join(missing)} missing; install isolinux, syslinux-common, "
            "grub-efi-amd64-bin and mtools (`make install`)"
        )
    return files


def _inputs_key(packages: Mapping[str, str], boot_files: Mapping[str, Path]) -> str:
    digest = hashlib.sha256()
    inputs = {
        "format": BUILD_FORMAT,
        "packages": dict(sorted(packages.items())),
        "modules": MODULES,
        "parameters": MODULE_PARAMETERS,
        "init": INIT,
        "udhcpc": UDHCPC_SCRIPT,
        "power": POWER_BUTTON_ACTION,
        "isolinux.cfg": ISOLINUX_CFG,
        "grub.cfg": [GRUB_CFG, GRUB_MODULES, EFI_IMAGE_KIB],
        "os-release": OS_RELEASE,
        "guest-agent-libraries": GUEST_AGENT_LIBRARIES,
        "boot": {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in sorted(boot_files.items())},
    }
    digest.update(json.dumps(inputs, sort_keys=True).encode())
    return digest.hexdigest()[:20]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(directory: Path) -> Guest:
    manifest = json.loads((directory / "manifest.json").read_text())
    return Guest(
        directory=directory,
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        disk=directory / "disk.iso",
        packages=manifest["packages"],
    )


# --- build --------------------------------------------------------------------------------------------


def _build_into(final: Path, packages: Mapping[str, str], boot_files: Mapping[str, Path], root: Path) -> None:
    debs = _download(packages, cache_root() / "debs")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=root) as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        extracted = work / "x"
        for deb in debs:
            _run(["dpkg", "-x", str(deb), str(extracted)], what=f"unpacking {deb.name}")
        kernels = sorted((extracted / "boot").glob("vmlinuz-*"))
        module_trees = sorted((extracted / "lib" / "modules").glob("*"))
        if len(kernels) != 1 or len(module_trees) != 1:
            raise GuestBuildError(f"test guest: expected one kernel and one module tree in {debs}")
        shutil.copyfile(kernels[0], out / "vmlinuz")
        modules = _module_load_order(module_trees[0], MODULES)
        busybox = (extracted / "bin" / "busybox").read_bytes()
        (out / "initrd.img").write_bytes(_initramfs(busybox, modules, _guest_agent_files(extracted)))
        _disk(out, boot_files, work / "iso")
        manifest = {"packages": dict(packages), "modules": [m for m, _ in modules], "cmdline": KERNEL_CMDLINE}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        out.rename(final)


def _download(packages: Mapping[str, str], debs_dir: Path) -> list[Path]:
    """``apt-get download`` each package version once into ``debs_dir``; reuse what is there."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, version in sorted(packages.items()):
        path = debs_dir / f"{name}_{version.replace(':', '%3a')}_{ARCH}.deb"
        if not path.exists():
            _run(["apt-get", "download", "-q", f"{name}={version}"], cwd=debs_dir, what=f"downloading {name}")
        if not path.exists():
            raise GuestBuildError(f"test guest: apt-get download {name}={version} did not write {path}")
        paths.append(path)
    return paths


def _modinfo(path: Path) -> dict[str, str]:
    """The ``.modinfo`` section of a kernel module (ELF64 little-endian): ``key=value`` strings."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise GuestBuildError(f"test guest: {path} is not a little-endian ELF64 kernel module")
    shoff, shentsize, shnum, shstrndx = (
        struct.unpack_from("<Q", data, 0x28)[0],
        *struct.unpack_from("<HHH", data, 0x3A),
    )

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name_off, offset, size = section(i)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off : end] == b".modinfo":
            entries = data[offset : offset + size].split(b"\0")
            pairs = (e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)
            return {k: v for k, v in pairs}
    return {}


def _module_load_order(tree: Path, wanted: Iterable[str]) -> list[tuple[str, Path]]:
    """The wanted modules and their dependencies, each after what it depends on."""
    by_name = {p.name.removesuffix(".ko").replace("-", "_"): p for p in tree.rglob("*.ko")}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name not in by_name:
            raise GuestBuildError(f"test guest: kernel module {name} (needed by {chain}) is not in {tree}")
        info = _modinfo(by_name[name])
        for dep in filter(None, info.get("depends", "").split(",")):
            visit(dep.replace("-", "_"), (*chain, name))
        seen.add(name)
        order.append((name, by_name[name]))

    for name in wanted:
        visit(name, ())
    return order


def _cpio_entry(
    name: str, mode: int, data: bytes = b"", *, ino: int, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    """One newc cpio entry (the format the kernel unpacks an initramfs from), with fixed times and owners."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    entry = header + encoded
    entry += b"\0" * (-len(entry) % 4)
    entry += data + b"\0" * (-len(data) % 4)
    return entry


def _guest_agent_files(extracted: Path) -> dict[str, bytes]:
    """Initramfs path -> content: ``usr/sbin/qemu-ga`` and its libraries (symlinks followed) from the
    unpacked packages."""
    files = {"usr/sbin/qemu-ga": (extracted / "usr" / "sbin" / "qemu-ga").read_bytes()}
    for library in GUEST_AGENT_LIBRARIES:
        found = [
            p
            for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
            if (p := extracted / d / library).exists()
        ]
        if not found:
            raise GuestBuildError(f"test guest: {library} (for qemu-ga) is in none of {GUEST_AGENT_PACKAGES}")
        files[f"lib/x86_64-linux-gnu/{library}"] = found[0].resolve().read_bytes()
    return files


def _initramfs(busybox: bytes, modules: list[tuple[str, Path]], extra: Mapping[str, bytes]) -> bytes:
    directory, regular, symlink, chardev = 0o040755, 0o100755, 0o120777, 0o020600
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (d, directory, b"", (0, 0))
        for d in ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules", "proc", "sys")
    ]
    entries += [(d, directory, b"", (0, 0)) for d in ("lib64", "lib/x86_64-linux-gnu", "usr", "usr/sbin")]
    entries += [(path, regular, data, (0, 0)) for path, data in sorted(extra.items())]
    entries += [
        ("lib64/ld-linux-x86-64.so.2", symlink, b"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", (0, 0)),
        ("etc/os-release", 0o100644, OS_RELEASE.encode(), (0, 0)),
    ]
    entries += [
        ("dev/console", chardev, b"", (5, 1)),
        ("dev/null", 0o020666, b"", (1, 3)),
        ("bin/busybox", regular, busybox, (0, 0)),
        ("bin/sh", symlink, b"busybox", (0, 0)),
        ("init", regular, INIT.encode(), (0, 0)),
        ("etc/udhcpc.script", regular, UDHCPC_SCRIPT.encode(), (0, 0)),
        ("etc/acpi/PWRF/00000080", regular, POWER_BUTTON_ACTION.encode(), (0, 0)),
    ]
    load_list = "".join(f"{name} {MODULE_PARAMETERS.get(name, '')}".rstrip() + "\n" for name, _ in modules)
    entries.append(("etc/modules", 0o100644, load_list.encode(), (0, 0)))
    entries += [(f"lib/modules/{name}.ko", 0o100644, path.read_bytes(), (0, 0)) for name, path in modules]
    archive = b"".join(
        _cpio_entry(name, mode, data, ino=i + 1, rdev=rdev)
        for i, (name, mode, data, rdev) in enumerate(entries)
    )
    archive += _cpio_entry("TRAILER!!!", 0, ino=0)
    return gzip.compress(archive, compresslevel=6, mtime=0)


def _disk(out: Path, boot_files: Mapping[str, Path], tree: Path) -> None:
    (tree / "isolinux").mkdir(parents=True)
    (tree / "boot").mkdir()
    shutil.copyfile(boot_files["isolinux.bin"], tree / "isolinux" / "isolinux.bin")
    shutil.copyfile(boot_files["ldlinux.c32"], tree / "isolinux" / "ldlinux.c32")
    (tree / "isolinux" / "isolinux.cfg").write_text(ISOLINUX_CFG)
    shutil.copyfile(out / "vmlinuz", tree / "boot" / "vmlinuz")
    shutil.copyfile(out / "initrd.img", tree / "boot" / "initrd.img")
    _efi_image(tree / "boot" / "efiboot.img", tree.parent)
    _run(
        [
            "xorriso", "-as", "mkisofs", "-quiet", "-o", str(out / "disk.iso"), "-V", "KUBEVISOR_GUEST", "-r",
            "-isohybrid-mbr", str(boot_files["isohdpfx.bin"]),
            "-c", "isolinux/boot.cat", "-b", "isolinux/isolinux.bin",
            "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
            "-eltorito-alt-boot", "-e", "boot/efiboot.img", "-no-emul-boot", "-isohybrid-gpt-basdat",
            str(tree),
        ],
        what="making the bootable disk image",
    )  # fmt: skip


def _efi_image(dest: Path, work: Path) -> None:
    """A FAT image holding ``EFI/BOOT/BOOTX64.EFI``: GRUB with :data:`GRUB_CFG` built in."""
    (work / "grub.cfg").write_text(GRUB_CFG)
    loader = work / "BOOTX64.EFI"
    _run(
        [
            "grub-mkstandalone", "-O", "x86_64-efi", "-d", str(GRUB_EFI_MODULES), "-o", str(loader),
            f"--modules={GRUB_MODULES}", f"--install-modules={GRUB_MODULES}",
            "--locales=", "--fonts=", "--themes=",
            f"boot/grub/grub.cfg={work / 'grub.cfg'}",
        ],
        what="making the EFI boot loader",
    )  # fmt: skip
    with dest.open("wb") as f:
        f.truncate(EFI_IMAGE_KIB * 1024)
    image = ["-i", str(dest)]
    _run(["mformat", *image, "::"], what="formatting the EFI system partition")
    _run(["mmd", *image, "::/EFI", "::/EFI/BOOT"], what="making the EFI system partition's directories")
    _run(["mcopy", *image, str(loader), "::/EFI/BOOT/BOOTX64.EFI"], what="copying the EFI boot loader")
