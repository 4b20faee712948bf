"""Memory cgroups for QEMU, in a temporary cgroup under this test's own: the limit is set, a spawned
process is in its cgroup from its start, the limit is enforced, and removal leaves nothing."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubevisor.virt import cgroups, process

MiB = 1024 * 1024


@pytest.fixture
def hierarchy() -> Iterator[cgroups.Hierarchy]:
    found = cgroups.detect()
    if found is None:
        pytest.skip("no writable memory cgroup hierarchy on this machine")
    parent = found.root.parent / f"kv-test-{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a temporary cgroup: {e}")
    try:
        test_hierarchy = cgroups.detect(parent=parent)
        assert test_hierarchy is not None
        yield test_hierarchy
    finally:
        for leftover in sorted(parent.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            if leftover != parent:
                for pid in cgroups.members(leftover):
                    process.kill(pid)
                cgroups.remove(leftover)
        parent.rmdir()


def test_overhead_formula() -> None:
    small = cgroups.overhead_bytes(vcpus=1, graphics=False, guest_bytes=90 * MiB)
    assert small == 64 * MiB + 8 * MiB + 90 * MiB // 512
    big = cgroups.overhead_bytes(vcpus=4, graphics=True, guest_bytes=4096 * MiB, tcg_cache_bytes=64 * MiB)
    assert big == 64 * MiB + 4 * 8 * MiB + 16 * MiB + 8 * MiB + 64 * MiB


def test_detect_without_a_memory_controller(tmp_path: Path) -> None:
    assert cgroups.detect(tmp_path) is None


async def test_spawned_process_is_in_its_limited_cgroup_and_removal_leaves_nothing(
    hierarchy: cgroups.Hierarchy, tmp_path: Path
) -> None:
    path = hierarchy.create("default_vm1", 200 * MiB)
    assert path == hierarchy.root / "default_vm1"
    assert cgroups.limit_of(path) == 200 * MiB
    pid = process.spawn(["sleep", "30"], log_path=tmp_path / "log", cgroup=path)
    try:
        assert cgroups.members(path) == [pid]  # moved in before spawn returned
        assert process.cmdline(pid) == ["sleep", "30"]
        assert cgroups.pid_cgroup(pid, hierarchy) == path
    finally:
        process.kill(pid)
    assert cgroups.members(path) == []
    assert cgroups.remove(path)
    assert not path.exists()
    assert not hierarchy.root.exists()  # the last VM's cgroup took the kubevisor directory with it
    assert cgroups.remove(path)  # idempotent


async def test_the_limit_is_enforced(hierarchy: cgroups.Hierarchy, tmp_path: Path) -> None:
    path = hierarchy.create("default_hungry", 48 * MiB)
    code = "b = bytearray(256 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('survived')"
    pid = process.spawn([sys.executable, "-c", code], log_path=tmp_path / "log", cgroup=path)
    assert await process.wait_exit(pid, 30)
    assert process.exit_status(pid) == -9  # the OOM killer
    assert "survived" not in (tmp_path / "log").read_text()
    assert cgroups.remove(path)


def test_a_cgroup_that_cannot_be_entered_stops_the_start(tmp_path: Path) -> None:
    argv = ["sleep", "31.25"]  # a command line no other process here has
    with pytest.raises(OSError):
        process.spawn(argv, log_path=tmp_path / "log", cgroup=tmp_path / "no-such-cgroup")
    left = [d for d in Path("/proc").iterdir() if d.name.isdigit() and process.cmdline(int(d.name)) == argv]
    assert [d for d in left if process.is_running(int(d.name))] == []  # killed, not left running


def test_a_leftover_cgroup_is_reused(hierarchy: cgroups.Hierarchy) -> None:
    first = hierarchy.create("default_again", 100 * MiB)
    second = hierarchy.create("default_again", 150 * MiB)
    assert first == second and cgroups.limit_of(second) == 150 * MiB
    assert os.path.isdir(second)
    assert cgroups.remove(second)
