"""Fixtures for end-to-end tests: QEMU must be installed (a missing one fails, never skips), the test
guest is built once per session (cached across sessions), and each VM gets a short run directory (unix
socket paths are limited to 107 bytes, which pytest's ``tmp_path`` can exceed).

Platform tests define a ``plat`` fixture (their agent configuration); ``client`` is an admin client of it,
and ``data_dir`` the platform's short data directory whose QEMUs are killed at the end whatever happened
(guests outlive the platform by design)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import guest
from kubevisor.virt import qemucmd
from tests.e2e import libvmi
from tests.unit.storage import imageserving


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    """The QEMU binary; fails the test with what to do when it is missing."""
    found = shutil.which(qemucmd.QEMU_BINARY)
    if found is None:
        pytest.fail(
            f"{qemucmd.QEMU_BINARY} is not installed: end-to-end tests boot real guests. "
            "Run `make install` (it installs qemu-system-x86 and the guest build tools).",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def test_guest(qemu_binary: str) -> guest.Guest:
    """The test guest (kernel, initramfs, bootable disk image), built or taken from the cache."""
    try:
        return guest.build()
    except guest.GuestBuildError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short run directory for one VM's sockets, pidfile and logs."""
    path = Path(tempfile.mkdtemp(prefix="kv-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data directory (unix socket paths stay under 108 bytes); its QEMUs are killed at the end."""
    path = Path(tempfile.mkdtemp(prefix="kv-"))
    yield path
    libvmi.kill_qemus(path)  # a failing test may leave guests running
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def client(plat: Platform) -> AsyncIterator[Client]:
    """An admin client of the test module's ``plat``."""
    async with Client.from_kubeconfig(plat.kubeconfig) as c:
        yield c


@pytest.fixture
def guest_disk_server(test_guest: guest.Guest, tmp_path: Path) -> Iterator[imageserving.ImageServer]:
    """A loopback HTTP server whose ``/guest.img`` is the test guest's disk (DataVolume http imports)."""
    os.symlink(test_guest.disk, tmp_path / "guest.img")
    with imageserving.serving(tmp_path) as s:
        yield s
