"""The QEMU command-line builder: every Domain field lands in the right argument, and impossible domains
are refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubevisor.virt import qemucmd
from kubevisor.virt.domain import Cpu, Disk, Domain, Firmware, KernelBoot, Nic, PortForward, RunPaths

RUN = RunPaths(Path("/run/kv/vm1"))


def domain(**kwargs: Any) -> Domain:
    """A domain without the guest agent channel (its devices are tested once, below) unless asked."""
    fields: dict[str, Any] = {"name": "default_vm1", "run": RUN, "memory_mib": 256, "guest_agent": False}
    fields.update(kwargs)
    return Domain(**fields)


def values(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def devices(argv: list[str]) -> list[dict[str, Any]]:
    return [json.loads(v) for v in values(argv, "-device")]


def blockdevs(argv: list[str]) -> list[dict[str, Any]]:
    return [json.loads(v) for v in values(argv, "-blockdev")]


def test_defaults_isolate_sandbox_and_start_paused_with_sockets() -> None:
    argv = qemucmd.command(Domain(name="default_vm1", run=RUN, memory_mib=256))
    assert argv[0] == "qemu-system-x86_64"
    for flag in ("-nodefaults", "-no-user-config", "-S"):
        assert flag in argv
    assert "-daemonize" not in argv
    assert values(argv, "-sandbox") == [qemucmd.SANDBOX]
    assert values(argv, "-sandbox")[0].startswith("on,")
    assert values(argv, "-accel") == [f"tcg,tb-size={qemucmd.TCG_TB_SIZE_MIB}"]  # bounded: see cgroups
    assert values(argv, "-machine") == ["q35,acpi=on"]
    assert values(argv, "-m") == ["size=256M"]
    assert values(argv, "-smp") == ["cpus=1,sockets=1,cores=1,threads=1"]
    assert values(argv, "-display") == ["none"]
    assert values(argv, "-pidfile") == ["/run/kv/vm1/qemu.pid"]
    assert values(argv, "-name") == ["guest=default_vm1,debug-threads=on"]
    assert "-cpu" not in argv  # TCG: QEMU's default model
    assert "-vnc" not in argv
    chardevs = values(argv, "-chardev")
    assert "socket,id=qmp,path=/run/kv/vm1/qmp.sock,server=on,wait=off" in chardevs
    assert (
        "socket,id=serial0,path=/run/kv/vm1/serial.sock,server=on,wait=off,"
        "logfile=/run/kv/vm1/serial.log,logappend=on"
    ) in chardevs
    assert values(argv, "-mon") == ["chardev=qmp,mode=control"]
    assert devices(argv) == [
        {"driver": "isa-serial", "chardev": "serial0", "id": "serial0"},
        {"driver": "virtio-serial-pci", "id": "virtio-serial0"},
        {
            "driver": "virtserialport",
            "bus": "virtio-serial0.0",
            "chardev": "qga0",
            "name": "org.qemu.guest_agent.0",
            "id": qemucmd.GUEST_AGENT_PORT_ID,
        },
    ]
    assert "socket,id=qga0,path=/run/kv/vm1/qga.sock,server=on,wait=off" in chardevs


def test_without_guest_agent_channel_and_with_rng() -> None:
    argv = qemucmd.command(domain(guest_agent=False, rng=True))
    assert not any("qga" in v for v in values(argv, "-chardev"))
    assert devices(argv) == [
        {"driver": "isa-serial", "chardev": "serial0", "id": "serial0"},
        {"driver": "virtio-rng-pci", "rng": "rng0", "id": "rng0-dev"},
    ]
    assert [json.loads(v) for v in values(argv, "-object")] == [
        {"qom-type": "rng-random", "id": "rng0", "filename": "/dev/urandom"}
    ]


def test_kvm_uses_the_host_cpu_unless_a_model_is_given() -> None:
    assert values(qemucmd.command(domain(accel="kvm")), "-cpu") == ["host"]
    assert values(qemucmd.command(domain(accel="kvm", cpu=Cpu(model="max"))), "-cpu") == ["max"]
    assert values(qemucmd.command(domain(cpu=Cpu(model="qemu64"))), "-cpu") == ["qemu64"]


def test_topology_machine_uuid_acpi_and_running_start() -> None:
    argv = qemucmd.command(
        domain(
            cpu=Cpu(sockets=2, cores=2, threads=2),
            machine="pc",
            acpi=False,
            uuid="5f9e3b2a-0000-4000-8000-000000000001",
            start_paused=False,
            serial_log=False,
        )
    )
    assert values(argv, "-smp") == ["cpus=8,sockets=2,cores=2,threads=2"]
    assert values(argv, "-machine") == ["pc,acpi=off"]
    assert values(argv, "-uuid") == ["5f9e3b2a-0000-4000-8000-000000000001"]
    assert "-S" not in argv
    assert all("logfile" not in c for c in values(argv, "-chardev"))


def test_direct_kernel_boot() -> None:
    boot = KernelBoot(Path("/img/vmlinuz"), Path("/img/initrd.img"), "console=ttyS0 quiet")
    argv = qemucmd.command(domain(kernel_boot=boot))
    assert values(argv, "-kernel") == ["/img/vmlinuz"]
    assert values(argv, "-initrd") == ["/img/initrd.img"]
    assert values(argv, "-append") == ["console=ttyS0 quiet"]
    bare = qemucmd.command(domain(kernel_boot=KernelBoot(Path("/img/vmlinuz"))))
    assert "-initrd" not in bare and "-append" not in bare


def test_virtio_disk_with_boot_order_serial_and_cache() -> None:
    disk = Disk("rootdisk", Path("/v/root.qcow2"), format="qcow2", boot_order=1, serial="abc", cache="none")
    argv = qemucmd.command(domain(disks=(disk,)))
    assert blockdevs(argv) == [
        {
            "driver": "file",
            "filename": "/v/root.qcow2",
            "node-name": "file-0",
            "read-only": False,
            "cache": {"direct": True, "no-flush": False},
        },
        {"driver": "qcow2", "file": "file-0", "node-name": "drive-0", "read-only": False},
    ]
    assert devices(argv)[-1] == {
        "driver": "virtio-blk-pci",
        "id": "ua-rootdisk",
        "drive": "drive-0",
        "write-cache": "on",
        "bootindex": 1,
        "serial": "abc",
    }
    assert qemucmd.drive_node(0) == "drive-0"
    assert qemucmd.device_id("rootdisk") == "ua-rootdisk"


def test_sata_disks_and_cdroms_share_ahci_controllers_of_six_ports() -> None:
    disks = [Disk(f"d{i}", Path(f"/v/{i}.img"), bus="sata") for i in range(6)]
    disks.append(Disk("cd", Path("/v/cd.iso"), bus="sata", cdrom=True))
    argv = qemucmd.command(domain(disks=tuple(disks)))
    devs = devices(argv)
    assert [d["id"] for d in devs if d["driver"] == "ahci"] == ["sata0", "sata1"]
    buses = {d["id"]: d["bus"] for d in devs if d["driver"] in ("ide-hd", "ide-cd")}
    assert buses["ua-d0"] == "sata0.0" and buses["ua-d5"] == "sata0.5" and buses["ua-cd"] == "sata1.0"
    cd = next(d for d in devs if d["id"] == "ua-cd")
    assert cd["driver"] == "ide-cd"
    assert all(b["read-only"] for b in blockdevs(argv)[-2:])  # a CD-ROM is always read-only


def test_scsi_disks_are_luns_of_one_virtio_scsi_controller() -> None:
    disks = (
        Disk("a", Path("/v/a.img"), bus="scsi", shareable=True),
        Disk("b", Path("/v/b.iso"), bus="scsi", cdrom=True, boot_order=2),
    )
    devs = devices(qemucmd.command(domain(disks=disks)))
    assert [d for d in devs if d["driver"] == "virtio-scsi-pci"] == [
        {"driver": "virtio-scsi-pci", "id": "scsi0"}
    ]
    a = next(d for d in devs if d["id"] == "ua-a")
    b = next(d for d in devs if d["id"] == "ua-b")
    assert (a["driver"], a["lun"], a["share-rw"]) == ("scsi-hd", 0, True)
    assert (b["driver"], b["lun"], b["bootindex"]) == ("scsi-cd", 1, 2)
    assert a["bus"] == b["bus"] == "scsi0.0"


def test_file_names_with_commas_need_no_escaping_in_json_but_do_in_option_lists() -> None:
    run = RunPaths(Path("/run/kv/a,b"))
    argv = qemucmd.command(domain(run=run, disks=(Disk("d", Path("/v/x,y.img")),), graphics=True))
    assert blockdevs(argv)[0]["filename"] == "/v/x,y.img"
    assert "socket,id=qmp,path=/run/kv/a,,b/qmp.sock,server=on,wait=off" in values(argv, "-chardev")
    assert values(argv, "-vnc") == ["unix:/run/kv/a,,b/vnc.sock"]
    assert {"driver": "VGA", "id": "video0"} in devices(argv)


def test_user_network_with_port_forwards_and_tap() -> None:
    nics = (
        Nic(
            "default",
            mac="52:54:00:00:00:01",
            port_forwards=(PortForward(80, 8080), PortForward(53, 5353, protocol="udp")),
        ),
        Nic("tapped", tap="tap-vm1", model="e1000", boot_order=3),
    )
    argv = qemucmd.command(domain(nics=nics))
    assert values(argv, "-netdev") == [
        "user,id=net-0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53",
        "tap,id=net-1,ifname=tap-vm1,script=no,downscript=no",
    ]
    devs = devices(argv)
    assert {
        "driver": "virtio-net-pci",
        "id": "ua-default",
        "netdev": "net-0",
        "mac": "52:54:00:00:00:01",
        "romfile": "",
    } in devs
    assert {"driver": "e1000", "id": "ua-tapped", "netdev": "net-1", "bootindex": 3} in devs


def test_uefi_and_secure_boot() -> None:
    fw = Firmware(uefi=True, code=Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), vars=Path("/run/kv/vm1/vars.fd"))
    argv = qemucmd.command(domain(firmware=fw))
    assert values(argv, "-machine") == ["q35,acpi=on,pflash0=ovmf-code,pflash1=ovmf-vars"]
    code, variables = blockdevs(argv)
    assert code == {
        "driver": "raw",
        "node-name": "ovmf-code",
        "read-only": True,
        "file": {"driver": "file", "filename": "/usr/share/OVMF/OVMF_CODE_4M.fd", "read-only": True},
    }
    assert variables["file"]["filename"] == "/run/kv/vm1/vars.fd"
    assert "-global" not in argv

    secure = Firmware(uefi=True, secure_boot=True, code=fw.code, vars=fw.vars)
    argv = qemucmd.command(domain(firmware=secure))
    assert values(argv, "-machine")[0].endswith(",smm=on")
    assert values(argv, "-global") == ["driver=cfi.pflash01,property=secure,value=on"]


def test_find_ovmf(tmp_path: Path) -> None:
    assert qemucmd.find_ovmf(dirs=(tmp_path,)) is None
    for name in ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", "OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"):
        (tmp_path / name).write_bytes(b"")
    assert qemucmd.find_ovmf(dirs=(tmp_path,)) == qemucmd.OvmfFiles(
        tmp_path / "OVMF_CODE_4M.fd", tmp_path / "OVMF_VARS_4M.fd"
    )
    found = qemucmd.find_ovmf(secure_boot=True, dirs=(tmp_path,))
    assert found is not None and found.code.name == "OVMF_CODE_4M.secboot.fd"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"memory_mib": 0}, "memory_mib must be positive"),
        ({"cpu": Cpu(cores=0)}, "at least 1"),
        (
            {"disks": (Disk("cd", Path("/x.iso"), cdrom=True),)},
            r"disks\[0\] \(cd\): a CD-ROM cannot be on the virtio bus",
        ),
        ({"disks": (Disk("a", Path("/a")), Disk("a", Path("/b")))}, r"disks: duplicate names \['a'\]"),
        ({"nics": (Nic("n"), Nic("n"))}, r"nics: duplicate names \['n'\]"),
        (
            {"disks": (Disk("a", Path("/a"), boot_order=1),), "nics": (Nic("n", boot_order=1),)},
            r"boot orders \[1\]",
        ),
        ({"disks": (Disk("a", Path("/a"), boot_order=0),)}, "boot_order must be 1 or more"),
        (
            {"nics": (Nic("n", tap="tap0", port_forwards=(PortForward(80, 8080),)),)},
            "need user-mode networking",
        ),
        ({"firmware": Firmware(uefi=True)}, "needs firmware.code and firmware.vars"),
        ({"firmware": Firmware(secure_boot=True)}, "secure_boot needs firmware.uefi"),
        ({"run": RunPaths(Path("/" + "d" * 100))}, "longer than 107 bytes"),
    ],
)
def test_impossible_domains_are_refused_with_the_field_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(qemucmd.DomainError, match=message):
        qemucmd.command(domain(**fields))
