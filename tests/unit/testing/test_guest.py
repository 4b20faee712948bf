"""The test guest's host-side pieces that need no download: seed images and the initramfs format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib
import pytest

from kubevisor.testing import guest


def read_iso(path: Path) -> tuple[str, dict[str, str]]:
    """Volume id and Rock Ridge file name -> content."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    volume_id = iso.pvd.volume_identifier.decode().strip()
    files: dict[str, str] = {}
    for root, _dirs, names in iso.walk(rr_path="/"):
        for name in names:
            out = io.BytesIO()
            rr_path = f"{root.rstrip('/')}/{name}"
            iso.get_file_from_iso_fp(out, rr_path=rr_path)
            files[rr_path] = out.getvalue().decode()
    iso.close()
    return volume_id, files


def test_nocloud_seed(tmp_path: Path) -> None:
    path = guest.nocloud_seed(tmp_path / "seed.iso", hostname="vm-a", user_data="#!/bin/sh\necho hi\n")
    volume_id, files = read_iso(path)
    assert volume_id == "cidata"
    assert files == {
        "/meta-data": "instance-id: kubevisor-test\nlocal-hostname: vm-a\n",
        "/user-data": "#!/bin/sh\necho hi\n",
    }


def test_configdrive_seed(tmp_path: Path) -> None:
    path = guest.configdrive_seed(tmp_path / "seed.iso", hostname="vm-b", user_data="#!/bin/sh\n", uuid="u-1")
    volume_id, files = read_iso(path)
    assert volume_id == "config-2"
    assert json.loads(files["/openstack/latest/meta_data.json"]) == {
        "uuid": "u-1",
        "hostname": "vm-b",
        "name": "vm-b",
    }
    assert files["/openstack/latest/user_data"] == "#!/bin/sh\n"


def test_cpio_entries_are_newc_and_four_byte_aligned() -> None:
    entry = guest._cpio_entry("init", 0o100755, b"#!/bin/sh\n", ino=7)
    assert entry.startswith(b"070701")
    assert len(entry) % 4 == 0
    fields = [int(entry[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    ino, mode, _uid, _gid, _nlink, mtime, size = fields[:7]
    assert (ino, mode, mtime, size, fields[11]) == (7, 0o100755, 0, 10, len("init") + 1)
    assert b"init\0" in entry and entry.rstrip(b"\0").endswith(b"#!/bin/sh\n")


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBEVISOR_CACHE", str(tmp_path / "kv"))
    assert guest.cache_root() == tmp_path / "kv"
    monkeypatch.delenv("KUBEVISOR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert guest.cache_root() == tmp_path / "xdg" / "kubevisor"
