"""Spawning, finding and stopping host processes, and the reverter, with real (tiny) processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubevisor.virt import process


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """Pids a test spawned; any still running are killed afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        process.kill(pid)


def test_spawn_starts_a_session_leader_with_output_in_the_log(tmp_path: Path, spawned: list[int]) -> None:
    log = tmp_path / "out.log"
    pid = process.spawn(["sh", "-c", "echo out; echo err >&2; exec sleep 30"], log_path=log)
    spawned.append(pid)
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) == pid
    assert process.is_running(pid)
    assert process.exit_status(pid) is None
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    settable = sum(1 << (s - 1) for s in signal.valid_signals()) & ~(1 << (signal.SIGKILL - 1))
    assert int(status["SigIgn"], 16) & settable == 0, (
        "the child inherited ignored signals (Python ignores SIGPIPE)"
    )
    assert int(status["SigBlk"], 16) & settable == 0


async def test_exit_status_of_a_child(tmp_path: Path) -> None:
    pid = process.spawn(["sh", "-c", "echo done; exit 3"], log_path=tmp_path / "log")
    assert await process.wait_exit(pid, timeout=10)
    assert process.exit_status(pid) == 3
    assert not process.is_running(pid)
    assert (tmp_path / "log").read_text() == "done\n"


def test_spawn_names_a_missing_program(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program-kv is not installed"):
        process.spawn(["no-such-program-kv"], log_path=tmp_path / "log")


def test_find_needs_the_pidfile_and_the_marker_in_the_command_line(
    tmp_path: Path, spawned: list[int]
) -> None:
    pidfile = tmp_path / "pid"
    assert process.find(pidfile, marker="x") is None  # no pidfile
    pid = process.spawn(["sleep", "31.5"], log_path=tmp_path / "log")
    spawned.append(pid)
    pidfile.write_text(f"{pid}\n")
    assert process.find(pidfile, marker="31.5") == pid
    assert process.find(pidfile, marker="not-in-its-cmdline") is None  # a reused pid is not ours
    assert process.cmdline(pid) == ["sleep", "31.5"]
    pidfile.write_text("garbage")
    assert process.find(pidfile, marker="31.5") is None


async def test_a_stale_pidfile_finds_nothing(tmp_path: Path) -> None:
    pid = process.spawn(["true"], log_path=tmp_path / "log")
    assert await process.wait_exit(pid, timeout=10)
    (tmp_path / "pid").write_text(str(pid))
    assert process.find(tmp_path / "pid", marker="true") is None


async def test_terminate_stops_the_whole_process_group(tmp_path: Path) -> None:
    child_file = tmp_path / "child"
    pid = process.spawn(["sh", "-c", f"sleep 32 & echo $! > {child_file}; wait"], log_path=tmp_path / "log")
    child = await _read_pid(child_file)
    await process.terminate(pid, grace=10)
    assert process.exit_status(pid) == -signal.SIGTERM
    assert await process.wait_exit(child, timeout=10)  # the grandchild got the signal too


async def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    pid = process.spawn(
        ["sh", "-c", f"trap '' TERM; touch {ready}; exec sleep 33"], log_path=tmp_path / "log"
    )
    await _read_pid(ready, content=False)
    await process.terminate(pid, grace=0.2)
    assert process.exit_status(pid) == -signal.SIGKILL


def test_kill_is_immediate_and_idempotent(tmp_path: Path) -> None:
    pid = process.spawn(["sleep", "34"], log_path=tmp_path / "log")
    process.kill(pid)
    assert process.exit_status(pid) == -signal.SIGKILL
    assert not process.is_running(pid)
    process.kill(pid)


def _content(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


async def _read_pid(path: Path, *, content: bool = True) -> int:
    """Wait (with a deadline) for a file a spawned shell writes."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = _content(path)
        if text is not None and (text or not content):
            return int(text) if content else 0
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} was not written")


def test_reverter_undoes_completed_steps_newest_first_on_failure() -> None:
    undone: list[str] = []
    with pytest.raises(RuntimeError), process.Reverter() as revert:
        revert.add(lambda: undone.append("tap"))
        revert.add(lambda: undone.append("qemu"))
        raise RuntimeError("third step failed")
    assert undone == ["qemu", "tap"]


def test_reverter_keeps_everything_after_success() -> None:
    undone: list[str] = []
    with process.Reverter() as revert:
        revert.add(lambda: undone.append("tap"))
        revert.success()
    assert undone == []


def test_a_failing_undo_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    undone: list[str] = []

    def broken() -> None:
        raise OSError("device busy")

    with caplog.at_level(logging.ERROR), process.Reverter() as revert:
        revert.add(lambda: undone.append("first"))
        revert.add(broken)
    assert undone == ["first"]
    assert "device busy" in caplog.text


async def test_async_reverter_awaits_async_undos() -> None:
    undone: list[str] = []

    async def close() -> None:
        undone.append("async")

    with pytest.raises(RuntimeError):
        async with process.Reverter() as revert:
            revert.add(lambda: undone.append("sync"))
            revert.add(close)
            raise RuntimeError("boom")
    assert undone == ["async", "sync"]


def test_sync_reverter_refuses_async_undos(caplog: pytest.LogCaptureFixture) -> None:
    async def close() -> None:
        raise AssertionError("never awaited")

    with caplog.at_level(logging.ERROR), process.Reverter() as revert:
        revert.add(close)
    assert "use `async with Reverter()`" in caplog.text
