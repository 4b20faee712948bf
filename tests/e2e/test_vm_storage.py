"""Volumes from the cluster and boot options, end to end: the real platform (API server, controllers with
the volume binder, node agent) boots the test guest under QEMU.

Covered: a VM whose claim does not exist shows ErrorPvcNotFound (its VMI waits, with an Event) and boots
from that claim's image once a PersistentVolume and the claim exist, with a ConfigMap and a Secret
presented as disks that its user data mounts and prints; KubeVirt's ``vmi-pvc.yaml`` example unchanged;
a UEFI (OVMF) VM; a kernelBoot VMI whose kernel comes from the node's image mirror.

Every test kills the QEMUs of its data directory at the end, whatever happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubevisor.agent.running import AgentConfig
from kubevisor.api.registry import Obj
from kubevisor.client import Client
from kubevisor.platform import Platform
from kubevisor.testing import cluster, guest
from kubevisor.virt import process, qemucmd
from tests import libcompat
from tests.e2e import libvmi

pytestmark = pytest.mark.e2e

NODE = "e2e-storage"
KERNEL_IMAGE = "registry.local/kubevisor/test-guest-kernel:latest"
"""A kernelBoot container image: the node's mirror maps it to the test guest's build directory."""
USER_DATA = r"""#!/bin/sh
# mount the disks labelled cfgdata (the ConfigMap) and creds (the Secret), print what they hold
for dev in /sys/class/block/*; do
  d="/dev/${dev##*/}"
  label=$(dd if="$d" bs=8 skip=4101 count=4 2>/dev/null | tr -d ' \0')
  case "$label" in
    cfgdata|CFGDATA) mkdir -p /mnt/cm && mount -o ro "$d" /mnt/cm \
      && echo "configmap says $(cat /mnt/cm/greeting)" ;;
    creds|CREDS) mkdir -p /mnt/sec && mount -o ro "$d" /mnt/sec \
      && echo "secret says $(cat /mnt/sec/password)" ;;
  esac
done
"""


@pytest.fixture
async def plat(data_dir: Path, test_guest: guest.Guest) -> AsyncIterator[Platform]:
    config = AgentConfig(
        data_dir=data_dir,
        node_name=NODE,
        image_mirror={libvmi.IMAGE: test_guest.disk, KERNEL_IMAGE: test_guest.directory},
        accel="tcg",
    )
    async with cluster.running_platform(data_dir, agent=True, agent_config=config) as platform:
        yield platform


async def test_vm_waits_for_its_claim_then_boots_from_it_with_config_disks(
    plat: Platform, client: Client, data_dir: Path, test_guest: guest.Guest
) -> None:
    name = "pvc-vm"
    await client.resource("v1", "configmaps").create(
        {"metadata": {"name": "app"}, "data": {"greeting": "hello-from-configmap"}}, libvmi.NAMESPACE
    )
    await client.resource("v1", "secrets").create(
        {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}, libvmi.NAMESPACE
    )
    vm = libvmi.vm_manifest(
        name,
        user_data=USER_DATA,
        disks=[{"name": "app", "disk": {"bus": "virtio"}}, {"name": "creds", "disk": {"bus": "virtio"}}],
        volumes=[
            {"name": "app", "configMap": {"name": "app"}},
            {"name": "creds", "secret": {"secretName": "creds", "volumeLabel": "creds"}},
        ],
    )
    template = vm["spec"]["template"]["spec"]
    template["volumes"][0] = {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "root"}}
    await client.resource(libvmi.KV, "virtualmachines").create(vm, libvmi.NAMESPACE)

    # no claim: the VM says so, its VMI waits on the node with an Event
    await libvmi.vm_printable(client, name, "ErrorPvcNotFound", 20)

    async def waiting() -> list[Obj]:
        return [e for e in await libvmi.events_for(client, name) if e["reason"] == "FailedPvcNotFound"]

    events = await libvmi.until(waiting, bool, 20, "FailedPvcNotFound event")
    assert "PersistentVolumeClaim 'root' does not exist" in events[0]["message"]
    assert libvmi.qemu_pid(data_dir, name) is None

    # the claim and its volume appear: bound, attached, booted
    image = await libvmi.claim(client, data_dir, "root", "1Gi", image=test_guest.disk)
    await libvmi.vmi_running(client, name, 60)
    text = await libvmi.serial_line(data_dir, name, f"{guest.USERDATA_END} rc=0", 60)
    assert "configmap says hello-from-configmap" in text
    assert "secret says s3cret" in text
    assert f"{guest.READY_MARKER} hostname={name}" in await libvmi.serial_line(
        data_dir, name, guest.READY_MARKER
    )
    await libvmi.vm_printable(client, name, "Running")
    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None
    assert any(str(image) in arg for arg in process.cmdline(pid) or [])  # attached in place, not copied
    run = libvmi.run_dir(data_dir, name)
    assert (run / "config-app.iso").is_file() and (run / "config-creds.iso").is_file()


async def test_kubevirt_vmi_pvc_example_boots(
    plat: Platform, client: Client, data_dir: Path, test_guest: guest.Guest
) -> None:
    (vmi,) = libcompat.documents(libcompat.COMPAT_DIR / "kubevirt-examples__vmi-pvc.yaml")
    await libvmi.claim(client, data_dir, "disk-alpine", "1Gi", image=test_guest.disk)
    await client.resource(libvmi.KV, "virtualmachineinstances").create(vmi, libvmi.NAMESPACE)
    await libvmi.vmi_running(client, "vmi-pvc", 60)
    await libvmi.serial_line(data_dir, "vmi-pvc", guest.READY_MARKER, 60)


@pytest.mark.skipif(qemucmd.find_ovmf() is None, reason="OVMF is not installed (package ovmf)")
async def test_uefi_vm_boots(plat: Platform, client: Client, data_dir: Path) -> None:
    name = "uefi-vm"
    vm = libvmi.vm_manifest(name)
    vm["spec"]["template"]["spec"]["domain"]["firmware"] = {"bootloader": {"efi": {"secureBoot": False}}}
    await client.resource(libvmi.KV, "virtualmachines").create(vm, libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name, 60)
    await libvmi.serial_line(data_dir, name, guest.READY_MARKER, 60)
    run = libvmi.run_dir(data_dir, name)
    assert (run / "OVMF_VARS.fd").is_file()
    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None
    assert any("pflash0=ovmf-code" in arg for arg in process.cmdline(pid) or [])


async def test_kernel_boot_vmi_boots(plat: Platform, client: Client, data_dir: Path) -> None:
    name = "kernel-boot"
    vmi = {
        "apiVersion": libvmi.KV,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "domain": {
                "devices": {},
                "memory": {"guest": "256Mi"},
                "firmware": {
                    "kernelBoot": {
                        "kernelArgs": guest.KERNEL_CMDLINE,
                        "container": {
                            "image": KERNEL_IMAGE,
                            "kernelPath": "/vmlinuz",
                            "initrdPath": "/initrd.img",
                        },
                    }
                },
            },
        },
    }
    await client.resource(libvmi.KV, "virtualmachineinstances").create(vmi, libvmi.NAMESPACE)
    await libvmi.vmi_running(client, name, 60)
    await libvmi.serial_line(data_dir, name, guest.READY_MARKER, 60)
    pid = libvmi.qemu_pid(data_dir, name)
    assert pid is not None
    assert "-kernel" in (process.cmdline(pid) or [])
