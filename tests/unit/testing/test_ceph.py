"""The Ceph test cluster's preflight: a missing program fails (never skips) naming what to install. (The
cluster itself runs in tests/integration/agent/test_import_sources.py.)"""

from __future__ import annotations

import shutil

import pytest

from kubevisor.testing import ceph


def test_missing_programs_fail_with_the_packages_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name in ("radosgw", "ceph") else real(name))
    with pytest.raises(ceph.CephMissing, match=r"missing: ceph-common, radosgw") as caught:
        ceph.require()
    assert isinstance(caught.value, AssertionError)  # a failure, not a skip
    assert "ceph-mon ceph-osd ceph-mgr radosgw" in str(caught.value)


def test_installed_here() -> None:
    ceph.require()  # the project's machines have the packages (`make install`)
