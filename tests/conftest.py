"""Fixtures shared across test folders: ``nfs_server``, a real NFSv3 server (nfs-ganesha on loopback, see
:mod:`kubevisor.testing.nfs`) exporting a fresh temporary directory, one per test module; a missing
nfs-ganesha fails the test with what to install, never skips it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubevisor.testing import nfs


@pytest.fixture(scope="module")
def nfs_server() -> Iterator[nfs.NfsServer]:
    try:
        with nfs.serve_temporary() as server:
            yield server
    except nfs.NfsServerUnavailable as e:
        pytest.fail(str(e), pytrace=False)
