"""The guest agent channel end to end: the test guest runs Debian's qemu-ga on the virtio-serial port
QEMU adds for every domain, QMP announces it (``VSERPORT_CHANGE``), and :mod:`kubevisor.virt.guestagent`
reads KubeVirt's guestosinfo from it. Without qemu-ga in the guest, sync fails within its deadline."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.testing import guest
from kubevisor.virt import guestagent, qemucmd
from kubevisor.virt.domain import Disk
from tests.e2e import libvm

pytestmark = pytest.mark.e2e


async def test_guest_agent_reports_os_info(test_guest: guest.Guest, run_dir: Path) -> None:
    domain = libvm.kernel_boot_domain(run_dir, test_guest)
    async with libvm.running(domain) as vm:
        with vm.qmp.listen("VSERPORT_CHANGE") as changes:
            await vm.wait_ready()
            await vm.console.wait_for(f"{guest.GUEST_AGENT_MARKER} started", 30)
            event = await vm.qmp.wait_event(changes, "VSERPORT_CHANGE", 30)
        assert event["data"] == {"id": qemucmd.GUEST_AGENT_PORT_ID, "open": True}
        async with guestagent.GuestAgent(domain.run.qga) as agent:
            await agent.sync(timeout=30)
            info = await guestagent.guest_os_info(agent)
            assert info["guestAgentVersion"].startswith("7.")
            assert info["os"]["id"] == "kubevisor-guest"
            assert info["os"]["prettyName"] == "kubevisor test guest 1"
            assert info["os"]["kernelRelease"]  # from uname in the guest
            assert info["hostname"] == "kubevisor-guest"
            assert {"name": "guest-get-osinfo", "enabled": True} in info["supportedCommands"]
            with pytest.raises(guestagent.GuestAgentError, match="CommandNotFound"):
                await agent.execute("guest-no-such-command")
            assert await agent.execute("guest-ping") == {}  # the session is still usable


async def test_sync_fails_when_no_guest_agent_runs(test_guest: guest.Guest, run_dir: Path) -> None:
    # The disk image boots without the port being opened until init runs; stop the vCPUs so it never is.
    domain = libvm.disk_boot_domain(run_dir, Disk(name="boot", path=test_guest.disk, readonly=True))
    async with libvm.running(domain) as vm:
        await vm.qmp.stop()
        async with guestagent.GuestAgent(domain.run.qga) as agent:
            with pytest.raises(guestagent.GuestAgentError, match="no answer within 1 s"):
                await agent.sync(timeout=1)
