"""Preparing a VMI's run directory: one image file per volume, before QEMU starts.

The run directory is ``DATA/vms/<namespace>/<name>/`` (ARCHITECTURE "Storage on disk"). What goes in it:

- ``containerDisk``: a qcow2 overlay (``disk-<volume>.qcow2``) on the image's file. Registry pulls are not
  implemented yet: the image must be in this node's image mirror (``AgentConfig.image_mirror``, image
  reference -> local file, e.g. ``kubevisor up --image-mirror registry.local/guest:latest=/srv/guest.img``)
  or be the absolute path of a file under one of the node's image directories (``DATA/images`` and
  ``--image-dir``). Anything else is :class:`ImageNotFound`, which the agent reports in an Event and
  retries, as a kubelet does with an image it cannot pull.
- ``hostDisk``: the file itself, raw (``Disk``: it must exist; ``DiskOrCreate``: created sparse with
  ``capacity`` when missing). Never format-probed: a guest could write a qcow2 header into a raw disk.
  Only under the node's host-disk directories (``--host-disk-dir``; none by default, as KubeVirt's
  ``HostDisk`` feature gate is off by default): a VM must not be able to attach ``/etc/shadow``.

Paths a user names (local images, host disks) are resolved (symlinks, ``..``) before they are checked
against the allowed directories.
- ``emptyDisk``: a new qcow2 (``empty-<volume>.qcow2``) of ``capacity``.
- ``cloudInitNoCloud`` / ``cloudInitConfigDrive``: a seed image (``seed-<volume>.iso``) written by
  :mod:`kubevisor.virt.cloudinit`, user and network data from the spec or from a Secret
  (``secretRef``, ``networkDataSecretRef``: keys ``userdata``/``userData``, ``networkdata``/``networkData``).
  meta-data is what KubeVirt writes: ``{"instance-id": "<name>.<namespace>", "local-hostname": ...}``.
- UEFI: this VM's own copy of the OVMF variable store (``OVMF_VARS.fd``).

Every file created is registered with the caller's :class:`~kubevisor.virt.process.Reverter`, so a failed
start leaves no half-prepared directory behind. Other volume kinds (PVC, DataVolume, ephemeral, configMap,
secret, ...) are refused with :class:`PrepareError` until the storage issue brings them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubevisor.agent.converting import PreparedVolume, hostname, wants_uefi
from kubevisor.api.kubevirt import (
    CloudInitConfigDriveSource,
    CloudInitNoCloudSource,
    VirtualMachineInstanceSpec,
    Volume,
)
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.virt import cloudinit, qemucmd, qemuimg
from kubevisor.virt.domain import Firmware
from kubevisor.virt.process import Reverter

__all__ = [
    "ImageNotFound",
    "NodeStorage",
    "PrepareError",
    "Prepared",
    "SecretReader",
    "prepare",
    "resolve_image",
    "within",
]

SecretReader = Callable[[str], Awaitable[Mapping[str, str] | None]]
"""Reads the Secret ``name`` of the VMI's namespace: its decoded data, or None if it does not exist."""

UNSUPPORTED_VOLUMES = (
    "ephemeral",
    "persistentVolumeClaim",
    "dataVolume",
    "sysprep",
    "configMap",
    "secret",
    "downwardAPI",
    "serviceAccount",
    "downwardMetrics",
    "memoryDump",
    "containerPath",
)


class PrepareError(Exception):
    """A volume cannot be prepared; the message names the volume, the field and what to do."""


class ImageNotFound(PrepareError):
    """A containerDisk's image is neither in the node's image mirror nor a local file (may appear later)."""


@dataclass(frozen=True)
class Prepared:
    """What the run directory now holds for the Domain."""

    volumes: dict[str, PreparedVolume]
    """Volume name -> its image."""
    firmware: Firmware
    """BIOS, or UEFI with this VM's variable store."""


def _size(value: object, field: str) -> int:
    amount = parse_quantity(value)
    if amount is None or amount <= 0:
        raise PrepareError(f"{field}: {value!r} is not a positive size, e.g. 1Gi")
    return int(amount)


@dataclass(frozen=True)
class NodeStorage:
    """What a node lets its VMIs use."""

    node: str
    """The node's name (for messages)."""
    image_mirror: Mapping[str, Path] = field(default_factory=dict)
    """containerDisk image reference -> local image file (trusted: the node's administrator set it)."""
    image_dirs: tuple[Path, ...] = ()
    """Directories whose files a containerDisk may name by absolute path."""
    host_disk_dirs: tuple[Path, ...] = ()
    """Directories hostDisk volumes may use; none: hostDisk is refused."""


def within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path``, resolved, lies inside one of ``roots`` (resolved)."""
    real = os.path.realpath(path)
    for root in roots:
        top = os.path.realpath(root)
        if os.path.commonpath([real, top]) == top:
            return True
    return False


def resolve_image(image: str, storage: NodeStorage) -> Path | None:
    """The local file holding ``image``: the mirror's entry for it (or for it without ``docker://``), or
    ``image`` itself when it is the absolute path of a file under one of ``storage.image_dirs``."""
    for candidate in (image, image.removeprefix("docker://")):
        if candidate in storage.image_mirror:
            found = Path(storage.image_mirror[candidate])
            return found if found.is_file() else None
    path = Path(image.removeprefix("file://"))
    if path.is_absolute() and path.is_file() and within(path, storage.image_dirs):
        return Path(os.path.realpath(path))
    return None


async def prepare(
    spec: VirtualMachineInstanceSpec,
    *,
    namespace: str,
    name: str,
    uid: str,
    run_dir: Path,
    storage: NodeStorage,
    read_secret: SecretReader,
    revert: Reverter,
) -> Prepared:
    """Create the images of every volume of the VMI in ``run_dir`` (which must exist)."""
    volumes: dict[str, PreparedVolume] = {}
    for index, volume in enumerate(spec.volumes or []):
        where = f"spec.volumes[{index}]"
        volumes[volume.name] = await _volume(
            volume,
            where,
            spec=spec,
            namespace=namespace,
            name=name,
            uid=uid,
            run_dir=run_dir,
            storage=storage,
            read_secret=read_secret,
            revert=revert,
        )
    return Prepared(volumes=volumes, firmware=_firmware(spec, run_dir, revert))


async def _volume(
    volume: Volume,
    where: str,
    *,
    spec: VirtualMachineInstanceSpec,
    namespace: str,
    name: str,
    uid: str,
    run_dir: Path,
    storage: NodeStorage,
    read_secret: SecretReader,
    revert: Reverter,
) -> PreparedVolume:
    if "/" in volume.name or volume.name.startswith("."):
        raise PrepareError(f"{where}.name: {volume.name!r} is not a DNS label")
    if volume.container_disk is not None:
        image = volume.container_disk.image
        base = resolve_image(image, storage)
        if base is None:
            raise ImageNotFound(
                f"{where}.containerDisk.image: image {image!r} (volume {volume.name!r}) is not in node "
                f"{storage.node}'s image mirror and is not a file in its image directories; pulling from a "
                "registry is not implemented yet: map it with `kubevisor up --image-mirror IMAGE=FILE`, "
                "or put the image file under an --image-dir"
            )
        path = run_dir / f"disk-{volume.name}.qcow2"
        revert.add(lambda: path.unlink(missing_ok=True))
        try:
            await qemuimg.overlay(path, base)
        except qemuimg.ImageError as e:
            raise PrepareError(f"{where}.containerDisk: volume {volume.name!r}: {e}") from e
        return PreparedVolume(path, "qcow2")
    if volume.host_disk is not None:
        return await _host_disk(volume, where, storage, revert)
    if volume.empty_disk is not None:
        size = _size(volume.empty_disk.capacity, f"{where}.emptyDisk.capacity")
        path = run_dir / f"empty-{volume.name}.qcow2"
        revert.add(lambda: path.unlink(missing_ok=True))
        try:
            await qemuimg.create(path, "qcow2", size)
        except qemuimg.ImageError as e:
            raise PrepareError(f"{where}.emptyDisk: volume {volume.name!r}: {e}") from e
        return PreparedVolume(path, "qcow2")
    if volume.cloud_init_no_cloud is not None or volume.cloud_init_config_drive is not None:
        path = run_dir / f"seed-{volume.name}.iso"
        revert.add(lambda: path.unlink(missing_ok=True))
        host = hostname(name, spec)
        if volume.cloud_init_no_cloud is not None:
            source: CloudInitNoCloudSource | CloudInitConfigDriveSource = volume.cloud_init_no_cloud
            field = f"{where}.cloudInitNoCloud"
        else:
            assert volume.cloud_init_config_drive is not None
            source, field = volume.cloud_init_config_drive, f"{where}.cloudInitConfigDrive"
        user_data, network_data = await _cloud_init_data(source, field, read_secret)
        if isinstance(source, CloudInitNoCloudSource):
            meta = json.dumps({"instance-id": f"{name}.{namespace}", "local-hostname": host})
            cloudinit.nocloud_seed(
                path, hostname=host, user_data=user_data, meta_data=meta, network_config=network_data
            )
        else:
            cloudinit.configdrive_seed(
                path, hostname=host, user_data=user_data, uuid=uid, network_data=network_data
            )
        return PreparedVolume(path, "raw", readonly=True)
    kind = next((k for k in UNSUPPORTED_VOLUMES if getattr(volume, _attr(k), None) is not None), "unknown")
    raise PrepareError(
        f"{where}.{kind}: volume {volume.name!r}: {kind} volumes are not supported on this node yet; "
        "use containerDisk, hostDisk, emptyDisk, cloudInitNoCloud or cloudInitConfigDrive"
    )


def _attr(camel: str) -> str:
    """``persistentVolumeClaim`` -> ``persistent_volume_claim`` (the model's attribute)."""
    if camel == "downwardAPI":
        return "downward_api"
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _existing(path: Path) -> bool | None:
    """True for a regular file, False when nothing is there, None for anything else."""
    if path.is_file():
        return True
    return None if path.exists() else False


async def _host_disk(volume: Volume, where: str, storage: NodeStorage, revert: Reverter) -> PreparedVolume:
    host_disk = volume.host_disk
    assert host_disk is not None
    path = Path(host_disk.path)
    if not path.is_absolute():
        raise PrepareError(f"{where}.hostDisk.path: {host_disk.path!r} must be an absolute path")
    if not storage.host_disk_dirs:
        raise PrepareError(
            f"{where}.hostDisk: hostDisk volumes are disabled on node {storage.node}; "
            "start its agent with --host-disk-dir DIR to allow disks under DIR"
        )
    if not within(path, storage.host_disk_dirs):
        allowed = ", ".join(str(d) for d in storage.host_disk_dirs)
        raise PrepareError(
            f"{where}.hostDisk.path: {path} is not under a host-disk directory of node {storage.node} "
            f"({allowed}); use a path under one of them"
        )
    if host_disk.type not in ("Disk", "DiskOrCreate"):
        raise PrepareError(f"{where}.hostDisk.type: {host_disk.type!r} is not Disk or DiskOrCreate")
    existing = _existing(path)
    if existing is None:
        raise PrepareError(f"{where}.hostDisk.path: {path} (volume {volume.name!r}) is not a regular file")
    if existing:
        return PreparedVolume(path, "raw")
    if host_disk.type == "Disk":
        raise PrepareError(
            f"{where}.hostDisk.path: {path} (volume {volume.name!r}) does not exist on this node; "
            "create it, or use type DiskOrCreate with a capacity"
        )
    if host_disk.capacity is None:
        raise PrepareError(f"{where}.hostDisk.capacity: DiskOrCreate needs a capacity to create {path}")
    size = _size(host_disk.capacity, f"{where}.hostDisk.capacity")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        await qemuimg.create(path, "raw", size)
    except qemuimg.ImageError as e:
        raise PrepareError(f"{where}.hostDisk: volume {volume.name!r}: {e}") from e
    # a disk created for this start is removed if the start fails; once the VM runs it is the user's
    revert.add(lambda: path.unlink(missing_ok=True))
    return PreparedVolume(path, "raw")


async def _cloud_init_data(
    source: CloudInitNoCloudSource | CloudInitConfigDriveSource, field: str, read_secret: SecretReader
) -> tuple[str, str]:
    """(user data, network data) from the inline fields, base64 fields or Secrets."""
    user = await _data(
        source.user_data,
        source.user_data_base64,
        source.secret_ref.name if source.secret_ref else None,
        keys=("userdata", "userData"),
        field=f"{field}.userData",
        read_secret=read_secret,
    )
    network = await _data(
        source.network_data,
        source.network_data_base64,
        source.network_data_secret_ref.name if source.network_data_secret_ref else None,
        keys=("networkdata", "networkData"),
        field=f"{field}.networkData",
        read_secret=read_secret,
    )
    return user, network


async def _data(
    text: str | None,
    b64: str | None,
    secret: str | None,
    *,
    keys: tuple[str, ...],
    field: str,
    read_secret: SecretReader,
) -> str:
    if text is not None:
        return text
    if b64 is not None:
        try:
            return base64.b64decode(b64, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as e:
            raise PrepareError(f"{field}Base64: not base64-encoded UTF-8 text: {e}") from e
    if secret:
        data = await read_secret(secret)
        if data is None:
            raise PrepareError(f"{field}: Secret {secret!r} does not exist in the VMI's namespace; create it")
        for key in keys:
            if key in data:
                return data[key]
        raise PrepareError(f"{field}: Secret {secret!r} has none of the keys {', '.join(keys)}")
    return ""


def _firmware(spec: VirtualMachineInstanceSpec, run_dir: Path, revert: Reverter) -> Firmware:
    uefi, secure_boot = wants_uefi(spec)
    if not uefi:
        return Firmware()
    ovmf = qemucmd.find_ovmf(secure_boot=secure_boot)
    if ovmf is None:
        return Firmware()  # the conversion says what is missing
    variables = run_dir / "OVMF_VARS.fd"
    revert.add(lambda: variables.unlink(missing_ok=True))
    shutil.copyfile(ovmf.vars_template, variables)
    return Firmware(uefi=True, secure_boot=secure_boot, code=ovmf.code, vars=variables)
