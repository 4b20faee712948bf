"""cloud-init seed images: the NoCloud (``cidata``) and ConfigDrive (``config-2``) disks a guest reads its
hostname, user data and network configuration from.

Why here: both the node agent (a VMI's ``cloudInitNoCloud`` and ``cloudInitConfigDrive`` volumes) and the
test guest's end-to-end tests write seeds, and they must be the same images. They are ISO 9660 file
systems with Rock Ridge and Joliet names, as cloud-init's own tools (``cloud-localds``, ``genisoimage
-V cidata -r -J``) write them; guests read the Rock Ridge (or Joliet) names, the plain ISO 9660 names are
short placeholders. Writing is pure Python (``pycdlib``): no host tool, no shell.

Layouts (cloud-init's datasource documentation):

- NoCloud: ``meta-data`` (YAML or JSON: ``instance-id``, ``local-hostname``), ``user-data``, and
  ``network-config`` when there is one.
- ConfigDrive (OpenStack): ``openstack/latest/meta_data.json`` (``uuid``, ``hostname``, ``name``),
  ``openstack/latest/user_data``, and ``openstack/latest/network_data.json`` when there is one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CONFIGDRIVE_LABEL", "NOCLOUD_LABEL", "configdrive_seed", "nocloud_seed", "write_iso"]

NOCLOUD_LABEL = "cidata"
"""Volume id of a NoCloud seed."""
CONFIGDRIVE_LABEL = "config-2"
"""Volume id of a ConfigDrive seed."""


def nocloud_seed(
    dest: Path,
    *,
    hostname: str,
    user_data: str,
    instance_id: str = "kubevisor-test",
    meta_data: str | None = None,
    network_config: str = "",
) -> Path:
    """Write a NoCloud seed image (ISO 9660, volume id ``cidata``) with ``meta-data`` and ``user-data``.

    ``meta-data`` is YAML naming ``instance_id`` and ``hostname`` unless ``meta_data`` gives its text;
    ``network-config`` is written when given."""
    if meta_data is None:
        meta_data = f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"
    files = {"meta-data": meta_data, "user-data": user_data}
    if network_config:
        files["network-config"] = network_config
    return write_iso(dest, NOCLOUD_LABEL, files)


def configdrive_seed(
    dest: Path, *, hostname: str, user_data: str, uuid: str = "kubevisor-test", network_data: str = ""
) -> Path:
    """Write a ConfigDrive seed image (ISO 9660, volume id ``config-2``) in the OpenStack layout."""
    meta = {"uuid": uuid, "hostname": hostname, "name": hostname}
    files = {
        "openstack/latest/meta_data.json": json.dumps(meta),
        "openstack/latest/user_data": user_data,
    }
    if network_data:
        files["openstack/latest/network_data.json"] = network_data
    return write_iso(dest, CONFIGDRIVE_LABEL, files)


def write_iso(dest: Path, volume_id: str, files: Mapping[str, str | bytes]) -> Path:
    """An ISO 9660 image at ``dest`` labelled ``volume_id`` holding ``files`` (path -> text or bytes; ``/``
    makes directories), with Rock Ridge and Joliet names. Written to a temporary name, then renamed."""
    import pycdlib  # a few ms to import: only when a seed is written

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=volume_id)
    iso_dirs = {"": ""}
    for index, (name, text) in enumerate(sorted(files.items())):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in iso_dirs:
                iso_dirs[directory] = f"{iso_dirs['/'.join(parts[: depth - 1])]}/D{len(iso_dirs):07d}"
                iso.add_directory(iso_dirs[directory], rr_name=parts[depth - 1], joliet_path="/" + directory)
        data = text.encode() if isinstance(text, str) else text
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"{iso_dirs['/'.join(parts[:-1])]}/F{index:07d}.;1",
            rr_name=parts[-1],
            joliet_path="/" + name,
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    iso.write(str(tmp))
    iso.close()
    tmp.replace(dest)
    return dest
