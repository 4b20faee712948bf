"""Running guests rank below the node's services for CPU: on cgroup v1 the guest group is made with its
shares under a temporary cpu cgroup, and a process moved there is in it with every thread."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubevisor.virt import cpuweights

CPU_MOUNT = cpuweights.SYS_FS_CGROUP / "cpu"


@pytest.fixture
def parent() -> Iterator[Path]:
    if not (CPU_MOUNT / "cpu.shares").exists():
        pytest.skip("no cgroup v1 cpu controller on this machine (cgroup v2 uses cpu.weight, tested below)")
    path = CPU_MOUNT / f"kv-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        for group in (path / cpuweights.DIRECTORY, path):
            for pid in (group / "cgroup.procs").read_text().split() if group.exists() else []:
                (CPU_MOUNT / "cgroup.procs").write_text(pid)  # back to the root before removal
            if group.exists():
                group.rmdir()


def test_guest_group_is_made_with_low_shares_and_takes_whole_processes(parent: Path) -> None:
    group = cpuweights.detect(parent=parent)
    assert group is not None
    assert group.path == parent / cpuweights.DIRECTORY
    assert int((group.path / "cpu.shares").read_text()) == cpuweights.GUEST_SHARES
    assert cpuweights.detect(parent=parent) == group  # idempotent
    # a process with a second thread, as QEMU has: every thread moves
    script = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    proc = subprocess.Popen(["python3", "-c", script])
    try:
        deadline = time.monotonic() + 10
        while len(list(Path(f"/proc/{proc.pid}/task").iterdir())) < 2:  # the second thread is up
            assert time.monotonic() < deadline, "the test process never started its second thread"
            time.sleep(0.01)
        assert group.demote(proc.pid)
        assert group.members() == [proc.pid]
        tasks = (group.path / "tasks").read_text().split()
        assert len(tasks) >= 2 and str(proc.pid) in tasks
    finally:
        proc.kill()
        proc.wait()
    assert not group.demote(proc.pid)  # gone: refused, no exception


def test_no_cpu_controller_means_no_group(tmp_path: Path) -> None:
    assert cpuweights.detect(base=tmp_path) is None


def test_cgroup_v2_weight_is_written_when_the_controller_is_on(tmp_path: Path) -> None:
    (tmp_path / "cpu.weight").write_text("100")  # a cgroup directory with the cpu controller on
    assert cpuweights.lower_weight(tmp_path)
    assert (tmp_path / "cpu.weight").read_text() == str(cpuweights.GUEST_WEIGHT)
    assert not cpuweights.lower_weight(tmp_path / "missing")
