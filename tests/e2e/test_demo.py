"""``make up``'s path: ``kubevisor up --demo examples/demo-vm.yaml`` with the test guest in the image mirror
creates the demo VM, prints how to reach it, and the VM boots and greets on its serial console."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubevisor.cli import demo
from kubevisor.testing import guest
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "examples" / "demo-vm.yaml"


def test_the_demo_manifest_is_one_vm_with_a_greeting() -> None:
    (vm,) = demo.load(MANIFEST)
    assert vm["kind"] == "VirtualMachine" and vm["spec"]["runStrategy"] == "Always"
    volumes = {v["name"]: v for v in vm["spec"]["template"]["spec"]["volumes"]}
    assert volumes["rootdisk"]["containerDisk"]["image"] == "kubevisor/test-guest:latest"
    assert "Hello from the kubevisor demo VM" in volumes["cloudinitdisk"]["cloudInitNoCloud"]["userData"]


def start_up(data_dir: Path, disk: Path, log: Path) -> subprocess.Popen[bytes]:
    """``kubevisor up --demo`` as ``make up`` runs it (without the pod network: tests keep to loopback)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubevisor.cli.main",
                "up",
                "--data-dir",
                str(data_dir),
                "--listen",
                "127.0.0.1:0",
                "--no-pod-network",
                "--image-mirror",
                f"kubevisor/test-guest:latest={disk}",
                "--demo",
                str(MANIFEST),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def stop(up: subprocess.Popen[bytes]) -> None:
    up.send_signal(signal.SIGTERM)
    try:
        up.wait(30)
    except subprocess.TimeoutExpired:
        up.kill()
        up.wait()


async def test_up_with_demo_boots_the_demo_vm(data_dir: Path, test_guest: guest.Guest) -> None:
    out = data_dir / "up.log"
    up = start_up(data_dir, test_guest.disk, out)
    try:
        text = await libvmi.serial_line(data_dir, "demo", guest.READY_MARKER, 120)  # after the user data
        assert "Hello from the kubevisor demo VM demo!" in text
        assert f"{guest.USERDATA_END} rc=0" in text
        printed = out.read_text()
        assert "demo: created virtualmachine/demo" in printed
        assert "kubevisor console demo" in printed
        assert f"export KUBECONFIG={data_dir / 'kubeconfig'}" in printed
    finally:
        stop(up)
