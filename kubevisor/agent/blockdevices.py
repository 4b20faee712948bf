"""Loop devices for ``volumeMode: Block`` claims: QEMU gets the claim's raw image as a block device
(``/dev/loopN``, QEMU's ``host_device`` driver), as KubeVirt hands QEMU a block volume's device node.

Why loop devices: a local volume is an image file on the node's disk; a Block claim promises the guest a
raw block device with nothing in between, and a loop device over the raw image is exactly that on a node
without spare disks or LVM. Lifecycle, without the agent having to remember anything:

- :func:`attach` when a VMI using the claim starts: ``losetup --find --show IMAGE``. Loop devices of the
  same image that an earlier agent left behind (it stopped between attaching and starting QEMU) are
  detached first.
- :func:`release` once QEMU has the device open: ``losetup -d``, which on a device in use only marks it
  *autoclear*: the kernel detaches it when its last user, QEMU, closes it (the VM stops, crashes or is
  killed). So an agent restart or adoption of a running QEMU needs nothing (the device lives as long as
  that QEMU; an adopted QEMU's devices are released again, :func:`release_in`, in case an agent stopped
  before it released them), and a restarted VM attaches a new one.
- a start that fails detaches at once (the reverter).
- :func:`devices_of` and :func:`refresh`: growing a Block volume grows its image, then each loop device
  over it (``losetup -c``), then QEMU's node (:mod:`kubevisor.agent.expanding`).

Needs root and the ``loop`` driver (``/dev/loop-control``). Where loop devices cannot be used
(:func:`available` is False: an unprivileged agent, a kernel without loop), a Block claim's raw image is
given to QEMU as a file: the guest sees the same raw disk, only without a host block device between.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from kubevisor.virt.process import Reverter
from kubevisor.virt.qmp import QmpError, Session

__all__ = [
    "BlockDeviceError",
    "attach",
    "available",
    "devices_of",
    "for_volume",
    "is_loop",
    "refresh",
    "release",
    "release_in",
    "release_opened",
]

log = logging.getLogger(__name__)

LOSETUP = "losetup"
LOOP_CONTROL = Path("/dev/loop-control")
SYS_BLOCK = Path("/sys/block")


class BlockDeviceError(Exception):
    """A loop device could not be set up or changed; the message says why."""


@functools.cache
def available() -> bool:
    """Whether this agent can attach loop devices (root, ``losetup``, the loop driver)."""
    return os.geteuid() == 0 and shutil.which(LOSETUP) is not None and LOOP_CONTROL.exists()


async def _losetup(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        LOSETUP, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BlockDeviceError(f"losetup {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode().strip()


def _backed_by(image: Path) -> list[Path]:
    target = os.path.realpath(image)
    found: list[Path] = []
    for entry in sorted(SYS_BLOCK.glob("loop*")):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue  # not attached
        if backing == target:
            found.append(Path("/dev") / entry.name)
    return found


async def devices_of(image: Path) -> list[Path]:
    """The loop devices over ``image`` now."""
    return await asyncio.to_thread(_backed_by, image)


async def attach(image: Path) -> Path:
    """A new loop device over ``image`` (a raw image file); detach leftovers of earlier starts first."""
    for stale in await devices_of(image):
        log.info("detaching loop device %s over %s left by an earlier start", stale, image)
        await release(stale)
    device = await _losetup("--find", "--show", str(image))
    if not device.startswith("/dev/loop"):
        raise BlockDeviceError(f"losetup --find --show {image}: unexpected answer {device!r}")
    return Path(device)


async def release(device: Path, image: Path | None = None) -> None:
    """Detach ``device`` now, or (in use) as soon as its last user closes it; with ``image``, only while
    the device is still over that image (it may be gone and its number reused)."""
    if image is not None and device not in await devices_of(image):
        return
    try:
        await _losetup("--detach", str(device))
    except BlockDeviceError as e:
        log.warning("%s", e)


async def for_volume(image: Path, *, block: bool, revert: Reverter) -> Path:
    """What QEMU opens for a claim's ``image``: a new loop device for a Block volume (detached again if
    the start fails), else (or without loop devices) the image itself."""
    if not block or not available():
        return image
    device = await attach(image)
    revert.add(lambda: release(device, image))
    return device


def is_loop(path: Path) -> bool:
    """Whether QEMU is given ``path`` as a loop device of this module."""
    return str(path).startswith("/dev/loop")


async def release_opened(paths: Iterable[Path]) -> None:
    """After QEMU has opened them: let the loop devices among ``paths`` go with QEMU (:func:`release`)."""
    for path in paths:
        if is_loop(path):
            await release(path)


async def release_in(qmp: Session) -> None:
    """Let the loop devices an adopted QEMU has open go with it (an earlier agent may have stopped between
    starting that QEMU and :func:`release_opened`); harmless when they already would."""
    try:
        blocks = await qmp.execute("query-block") or []
    except QmpError:
        return
    files = {str((b.get("inserted") or {}).get("file") or "") for b in blocks}
    await release_opened(Path(f) for f in sorted(files) if f)


async def refresh(device: Path) -> None:
    """Make ``device`` take its image's new size (after the image grew)."""
    await _losetup("--set-capacity", str(device))
