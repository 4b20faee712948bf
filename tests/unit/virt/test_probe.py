"""The KVM probe's decisions that need no guest: no usable /dev/kvm means TCG at once; answers are cached
per host boot and QEMU binary."""

from __future__ import annotations

from pathlib import Path

from kubevisor.virt import probe

NO_GUEST = probe.ProbeGuest(Path("/nonexistent/vmlinuz"), None, "console=ttyS0", "READY")


def test_kvm_device_usable_needs_a_kvm_device(tmp_path: Path) -> None:
    assert not probe.kvm_device_usable(tmp_path / "missing")
    regular = tmp_path / "kvm"
    regular.write_bytes(b"")
    assert not probe.kvm_device_usable(regular)  # opens, but is not KVM


async def test_detect_without_kvm_is_tcg_without_booting(tmp_path: Path) -> None:
    cache = tmp_path / "accel.json"
    assert await probe.detect(NO_GUEST, cache_file=cache, kvm_device=tmp_path / "missing") == "tcg"
    assert not cache.exists()


def test_cache_file_is_keyed_by_host(tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "accel.json"
    probe._write_cache(cache, "host-a", "kvm")
    assert probe._read_cache(cache, "host-a") == "kvm"
    assert probe._read_cache(cache, "host-b") is None  # another boot or QEMU: probe again
    cache.write_text("not json")
    assert probe._read_cache(cache, "host-a") is None
    assert probe._read_cache(None, "host-a") is None
