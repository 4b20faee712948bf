"""QMP session edge cases that need no QEMU: connecting to a socket nobody serves, with a deadline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kubevisor.virt.qmp import QmpError, Session


async def test_connect_gives_up_at_the_deadline(tmp_path: Path) -> None:
    session = Session(tmp_path / "qmp.sock")
    started = time.monotonic()
    with pytest.raises(QmpError, match=r"qmp.sock: not reachable after 0.3 s"):
        await session.connect(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5


async def test_connect_stops_early_when_qemu_is_gone(tmp_path: Path) -> None:
    session = Session(tmp_path / "qmp.sock")
    started = time.monotonic()
    with pytest.raises(QmpError, match="QEMU exited before it answered"):
        await session.connect(timeout=30, alive=lambda: False)
    assert time.monotonic() - started < 5
