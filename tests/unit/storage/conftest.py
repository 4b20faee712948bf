"""Fixtures for registry pull tests: a real ``docker-registry`` on loopback for the module (a missing one
fails with what to install, never skips), and small disk images made with qemu-img."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubevisor.testing import containerdisks


@pytest.fixture(scope="module")
def local_registry() -> Iterator[containerdisks.LocalRegistry]:
    """``docker-registry`` on 127.0.0.1:<free port>, shared by a module's tests (each pushes its own
    repositories)."""
    try:
        containerdisks.require(containerdisks.SKOPEO)
        with containerdisks.running_registry() as registry:
            yield registry
    except containerdisks.ToolMissing as e:
        pytest.fail(str(e), pytrace=False)


def qcow2(path: Path, size: str = "1M", *, backing: Path | None = None) -> Path:
    """A small qcow2 image (with ``backing``: an overlay on that raw file)."""
    chain = ["-b", str(backing), "-F", "raw"] if backing else []
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *chain, str(path), size], check=True)
    return path
