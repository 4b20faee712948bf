"""Preparing a VMI's run directory: one image file per volume, before QEMU starts.

The run directory is ``DATA/vms/<namespace>/<name>/`` (ARCHITECTURE "Storage on disk"). What goes in it:

- ``containerDisk``: a qcow2 overlay (``disk-<volume>.qcow2``) on the image's disk, found in this order:
  the node's image mirror (``AgentConfig.image_mirror``, image reference -> local file, e.g.
  ``kubevisor up --image-mirror quay.io/kubevirt/cirros-container-disk-demo=/srv/guest.img``); the absolute
  path of a file under one of the node's image directories (``DATA/images`` and ``--image-dir``); else a
  pull from the image's registry into the node's image cache (:mod:`kubevisor.storage.registry`), honouring
  ``imagePullPolicy`` and logging in with ``imagePullSecret`` (a ``kubernetes.io/dockerconfigjson`` Secret
  of the VMI's namespace). What may work later (unknown image, no access, registry unreachable, corrupt
  download) is :class:`ImageNotFound`, which the agent reports in an ``ErrImagePull`` Event and retries, as
  a kubelet does; an image that is no containerDisk (no disk under ``/disk``, unsafe layers) fails the VMI.
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
- ``persistentVolumeClaim`` / ``dataVolume`` (the claim of the DataVolume's name): the image file of the
  PersistentVolume the claim is bound to, attached in place (:mod:`kubevisor.agent.claims` says which
  volumes a node attaches). A missing or unbound claim makes the VMI wait (:class:`VolumeNotReady`); a
  ReadWriteOnce claim another running VMI of this node attaches waits too, and so does one of storage
  every node reaches (NFS, a shared directory) whose VolumeAttachment another VMI holds: before QEMU opens
  such a claim the agent creates the claim's VolumeAttachment, which the API server lets one node have
  (:func:`needs_attachment`, :mod:`kubevisor.agent.attachments`). ReadWriteMany claims are attached
  ``share-rw``; NFS claims through QEMU's NFS driver.
- ``ephemeral``: a qcow2 overlay (``ephemeral-<volume>.qcow2``) on a claim's image, which stays untouched;
  what the guest writes is discarded with the run directory. On an NFS claim the overlay is local and its
  backing file is ``nfs://server/path`` (QEMU reads the base over NFS).
- ``configMap``, ``secret``, ``serviceAccount``, ``downwardAPI``: as KubeVirt presents them to a guest, a
  read-only ISO 9660 disk (``config-<volume>.iso``, Rock Ridge and Joliet names), one file per key, labelled
  ``volumeLabel`` or ``cfgdata``. A missing ConfigMap, Secret or ServiceAccount makes the VMI wait
  (unless ``optional: true``: then the disk is empty). serviceAccount holds ``namespace`` and ``token`` (a
  token from the ServiceAccount's token subresource); downwardAPI holds the ``fieldRef`` files of the VMI's
  metadata (name, namespace, uid, labels, annotations), in the kubelet's format.
- ``firmware.kernelBoot.container``: the kernel and initrd at ``kernelPath``/``initrdPath`` inside the
  image, which must resolve to a directory: the node's image mirror maps the image to one, or the image is
  the absolute path of a directory under one of the node's image directories.
- UEFI: this VM's own copy of the OVMF variable store (``OVMF_VARS.fd``).

Every file created is registered with the caller's :class:`~kubevisor.virt.process.Reverter`, so a failed
start leaves no half-prepared directory behind. Other volume kinds (sysprep, downwardMetrics, ...) are
refused with :class:`PrepareError`.
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
from typing import Any

from kubevisor.agent import blockdevices, claims, nfsvolumes
from kubevisor.agent.converting import PreparedVolume, hostname, wants_uefi
from kubevisor.api.kubevirt import (
    CloudInitConfigDriveSource,
    CloudInitNoCloudSource,
    VirtualMachineInstanceSpec,
    Volume,
)
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.storage import registry
from kubevisor.virt import cloudinit, qemucmd, qemuimg
from kubevisor.virt.domain import Firmware, KernelBoot
from kubevisor.virt.process import Reverter

__all__ = [
    "CONFIG_LABEL",
    "ImageNotFound",
    "NodeStorage",
    "PrepareError",
    "Prepared",
    "SecretReader",
    "Sources",
    "VolumeNotReady",
    "needs_attachment",
    "prepare",
    "refused_message",
    "resolve_image",
    "within",
]

SecretReader = Callable[[str], Awaitable[Mapping[str, str] | None]]
"""Reads the Secret ``name`` of the VMI's namespace: its decoded data, or None if it does not exist."""
TokenRequester = Callable[[str], Awaitable[str | None]]
"""Asks for a token of the ServiceAccount ``name`` of the VMI's namespace; None if it does not exist."""
ClaimUsers = Callable[[str], list[str]]
"""The other VMIs running on this node (``namespace/name``) that attach the claim ``name`` writable."""
CONFIG_LABEL = "cfgdata"
MAX_LABEL = 32
"""Volume label of a configMap/secret/serviceAccount/downwardAPI disk without ``volumeLabel`` (KubeVirt's)."""

UNSUPPORTED_VOLUMES = (
    "sysprep",
    "downwardMetrics",
    "memoryDump",
    "containerPath",
)


class PrepareError(Exception):
    """A volume cannot be prepared; the message names the volume, the field and what to do."""


class ImageNotFound(PrepareError):
    """A containerDisk's image is neither in the node's image mirror nor a local file (may appear later)."""


class VolumeNotReady(PrepareError):
    """What a volume needs is not there yet (a claim, a ConfigMap, a Secret): wait, say why, retry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """CamelCase Event reason."""


async def _nothing(*_: str) -> None:
    return None


async def _attach_anywhere(image: claims.ClaimedImage, volume: str) -> str | None:
    return None


async def _detach_nothing(volume: str) -> None:
    return None


ClaimAttacher = Callable[[claims.ClaimedImage, str], Awaitable[str | None]]
"""Makes this node's VMI the holder of the VolumeAttachment of claim image ``image`` for volume ``volume``:
None when it is (created, or already its own), else why not (``is attached by VMI ... on node ...``)."""


@dataclass(frozen=True)
class Sources:
    """What preparing may read from the cluster besides Secrets (by default: nothing exists)."""

    read: claims.ObjectReader = _nothing
    """Reads an object of the VMI's namespace (or a PersistentVolume)."""
    request_token: TokenRequester = _nothing
    """Tokens for serviceAccount volumes."""
    claim_users: ClaimUsers = lambda claim: []
    """Who else on this node attaches a claim."""
    attach_claim: ClaimAttacher = _attach_anywhere
    """Takes the VolumeAttachment of a claim every node reaches (by default: nobody else holds one)."""
    detach_claim: Callable[[str], Awaitable[None]] = _detach_nothing
    """Releases the VolumeAttachment taken for a volume (name), if any."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """The VMI's metadata, for downwardAPI volumes."""


@dataclass(frozen=True)
class Prepared:
    """What the run directory now holds for the Domain."""

    volumes: dict[str, PreparedVolume]
    """Volume name -> its image."""
    firmware: Firmware
    """BIOS, or UEFI with this VM's variable store."""
    kernel_boot: KernelBoot | None = None
    """The kernel (and initrd) of ``firmware.kernelBoot``, when it is set."""


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
    image_cache: registry.ImageCache | None = None
    """Where containerDisks pulled from registries are kept (``DATA/images/cache``); None: no pulls."""
    host_disk_dirs: tuple[Path, ...] = ()
    """Directories hostDisk volumes may use; none: hostDisk is refused."""
    volume_dirs: tuple[Path, ...] = ()
    """Directories the images of PersistentVolumes (hostPath, local) may be in (``DATA/volumes``...)."""


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
    sources: Sources | None = None,
) -> Prepared:
    """Create the images of every volume of the VMI in ``run_dir`` (which must exist)."""
    sources = sources or Sources()
    volumes: dict[str, PreparedVolume] = {}
    for index, volume in enumerate(spec.volumes or []):
        where = f"spec.volumes[{index}]"
        if volume.container_disk is None and volume.host_disk is None and volume.empty_disk is None:
            found = await _cluster_volume(
                volume,
                where,
                namespace=namespace,
                run_dir=run_dir,
                storage=storage,
                sources=sources,
                revert=revert,
            )
            if found is not None:
                volumes[volume.name] = found
                continue
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
    return Prepared(
        volumes=volumes, firmware=_firmware(spec, run_dir, revert), kernel_boot=_kernel_boot(spec, storage)
    )


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
        base = await _container_disk(volume, where, storage, read_secret)
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
        "use containerDisk, hostDisk, emptyDisk, persistentVolumeClaim, dataVolume, ephemeral, configMap, "
        "secret, serviceAccount, downwardAPI, cloudInitNoCloud or cloudInitConfigDrive"
    )


PULL_POLICIES: dict[str, registry.PullPolicy] = {
    "Always": "Always",
    "IfNotPresent": "IfNotPresent",
    "Never": "Never",
}


async def _container_disk(
    volume: Volume, where: str, storage: NodeStorage, read_secret: SecretReader
) -> Path:
    """The local file of a containerDisk: mirror, local file, or pulled into the node's image cache."""
    disk = volume.container_disk
    assert disk is not None
    image, field = disk.image, f"{where}.containerDisk"
    base = resolve_image(image, storage)
    if base is not None:
        return base
    if storage.image_cache is None or Path(image.removeprefix("file://")).is_absolute():
        raise ImageNotFound(
            f"{field}.image: image {image!r} (volume {volume.name!r}) is not in node {storage.node}'s image "
            "mirror and is not a file in its image directories; map it with `kubevisor up --image-mirror "
            "IMAGE=FILE`, or put the image file under an --image-dir"
        )
    try:
        reference = registry.Reference.parse(image)
    except registry.InvalidReference as e:
        raise PrepareError(f"{field}.image: volume {volume.name!r}: {e}") from e
    credentials = None
    if disk.image_pull_secret:
        secret = disk.image_pull_secret
        data = await read_secret(secret)
        if data is None:
            raise ImageNotFound(
                f"{field}.imagePullSecret: Secret {secret!r} (volume {volume.name!r}) does not exist in the "
                "VMI's namespace; create it"
            )
        try:
            credentials = registry.credentials_from_docker_config(data, reference.registry)
        except ValueError as e:
            raise PrepareError(
                f"{field}.imagePullSecret: Secret {secret!r} {e}; it must be a "
                "kubernetes.io/dockerconfigjson Secret (kubectl create secret docker-registry)"
            ) from e
    policy = PULL_POLICIES.get(disk.image_pull_policy or "Always")
    if policy is None:
        raise PrepareError(
            f"{field}.imagePullPolicy: {disk.image_pull_policy!r} is not Always, IfNotPresent or Never"
        )
    try:
        pulled = await storage.image_cache.pull(image, credentials=credentials, policy=policy, path=disk.path)
    except registry.RegistryUnreachable as e:
        raise ImageNotFound(
            f"{field}.image: volume {volume.name!r}: {e}; or serve the image from a local file with "
            "`kubevisor up --image-mirror IMAGE=FILE`"
        ) from e
    except registry.ImageUnavailable as e:
        raise ImageNotFound(f"{field}.image: volume {volume.name!r}: {e}") from e
    except registry.RegistryError as e:
        raise PrepareError(f"{field}.image: volume {volume.name!r}: {e}") from e
    return pulled.path


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


# --- volumes from the cluster: claims, ConfigMaps, Secrets, ServiceAccounts, the VMI's metadata ---------


async def _cluster_volume(
    volume: Volume,
    where: str,
    *,
    namespace: str,
    run_dir: Path,
    storage: NodeStorage,
    sources: Sources,
    revert: Reverter,
) -> PreparedVolume | None:
    """The image of a volume whose data comes from API objects; None for the other kinds."""
    if volume.persistent_volume_claim is not None:
        pvc = volume.persistent_volume_claim
        image = await _claim(
            pvc.claim_name,
            f"{where}.persistentVolumeClaim.claimName",
            namespace=namespace,
            storage=storage,
            sources=sources,
            revert=revert,
        )
        _exclusive(image, f"{where}.persistentVolumeClaim", sources)
        if not pvc.read_only:
            await _exclusive_in_cluster(
                image,
                f"{where}.persistentVolumeClaim",
                volume.name,
                sources=sources,
                storage=storage,
                revert=revert,
            )
        return PreparedVolume(
            await _claim_device(image, where, revert),
            image.format,
            readonly=image.readonly or bool(pvc.read_only),
            shareable=image.shared and not image.readonly,
            nfs_server=image.nfs_server,
        )
    if volume.data_volume is not None:
        image = await _claim(
            volume.data_volume.name,
            f"{where}.dataVolume.name",
            namespace=namespace,
            storage=storage,
            sources=sources,
            revert=revert,
        )
        _exclusive(image, f"{where}.dataVolume", sources)
        await _exclusive_in_cluster(
            image, f"{where}.dataVolume", volume.name, sources=sources, storage=storage, revert=revert
        )
        return PreparedVolume(
            await _claim_device(image, where, revert),
            image.format,
            readonly=image.readonly,
            shareable=image.shared and not image.readonly,
            nfs_server=image.nfs_server,
        )
    if volume.ephemeral is not None:
        source = volume.ephemeral.persistent_volume_claim
        if source is None:
            raise PrepareError(
                f"{where}.ephemeral.persistentVolumeClaim: the base claim is missing; name one"
            )
        field_ = f"{where}.ephemeral.persistentVolumeClaim.claimName"
        image = await _claim(
            source.claim_name, field_, namespace=namespace, storage=storage, sources=sources, revert=revert
        )
        path = run_dir / f"ephemeral-{volume.name}.qcow2"
        revert.add(lambda: path.unlink(missing_ok=True))
        try:  # the base's format is the volume's, never probed
            if image.nfs_server is not None:  # backing file nfs://server/path: QEMU reads it over NFS
                await nfsvolumes.overlay(path, image.nfs_server, str(image.path), image.format, where)
            else:
                await qemuimg.overlay(path, image.path, backing_format=image.format)
        except (qemuimg.ImageError, nfsvolumes.NfsVolumeError) as e:
            raise PrepareError(f"{where}.ephemeral: volume {volume.name!r}: {e}") from e
        return PreparedVolume(path, "qcow2")
    files: dict[str, str | bytes] | None
    if volume.config_map is not None:
        cm = volume.config_map
        files = await _config_map(cm.name or "", f"{where}.configMap.name", bool(cm.optional), sources)
        label = cm.volume_label
    elif volume.secret is not None:
        secret = volume.secret
        files = await _secret(
            secret.secret_name or "", f"{where}.secret.secretName", bool(secret.optional), sources
        )
        label = secret.volume_label
    elif volume.service_account is not None:
        account = volume.service_account.service_account_name or "default"
        files = await _service_account(
            account, f"{where}.serviceAccount.serviceAccountName", namespace, sources
        )
        label = None
    elif volume.downward_api is not None:
        files = _downward_api(
            volume.downward_api.fields or [], f"{where}.downwardAPI.fields", sources.metadata
        )
        label = volume.downward_api.volume_label
    else:
        return None
    label = label or CONFIG_LABEL
    if len(label) > MAX_LABEL or not label.isascii() or not label.isprintable():
        raise PrepareError(
            f"{where}: volumeLabel {label!r} is not an ISO 9660 volume label: use at most {MAX_LABEL} "
            "printable ASCII characters"
        )
    path = run_dir / f"config-{volume.name}.iso"
    revert.add(lambda: path.unlink(missing_ok=True))
    cloudinit.write_iso(path, label, files)
    return PreparedVolume(path, "raw", readonly=True)


async def _claim_device(image: claims.ClaimedImage, where: str, revert: Reverter) -> Path:
    """What QEMU opens for a claim: a loop device for a volumeMode Block one (:mod:`.blockdevices`)."""
    try:
        return await blockdevices.for_volume(image.path, block=image.block, revert=revert)
    except blockdevices.BlockDeviceError as e:
        raise PrepareError(f"{where}: claim {image.claim!r} (volumeMode Block): {e}") from e


async def _claim(
    claim: str, field_: str, *, namespace: str, storage: NodeStorage, sources: Sources, revert: Reverter
) -> claims.ClaimedImage:
    try:
        return await claims.resolve(
            claim,
            field_,
            namespace=namespace,
            node=storage.node,
            volume_dirs=storage.volume_dirs,
            read=sources.read,
            revert=revert,
        )
    except claims.ClaimNotReady as e:
        raise VolumeNotReady(e.reason, str(e)) from e
    except claims.ClaimError as e:
        raise PrepareError(str(e)) from e


def _exclusive(image: claims.ClaimedImage, field_: str, sources: Sources) -> None:
    """A ReadWriteOnce claim is attached by one running VMI of this node at a time."""
    if image.shared or image.readonly:
        return
    users = sources.claim_users(image.claim)
    if users:
        modes, others = ", ".join(image.access_modes) or "ReadWriteOnce", ", ".join(users)
        raise VolumeNotReady(
            "FailedAttachVolume",
            f"{field_}: PersistentVolumeClaim {image.claim!r} ({modes}) is attached by VMI {others} on this "
            "node; it is attached here once that VMI stops (use a ReadWriteMany claim to share it)",
        )


def needs_attachment(image: claims.ClaimedImage, storage: NodeStorage) -> bool:
    """Whether QEMU may open the (writable) claim ``image`` only as the holder of its VolumeAttachment: a
    ReadWriteOnce claim of storage every node reaches (NFS, or a directory outside the node's own
    ``DATA/volumes``, such as a shared class's). QEMUs of two nodes would both write it, and nothing on the
    storage stops them (QEMU's image locks are per host, and its NFS driver takes none). Local volumes
    need no record (they have one node), nor do ReadWriteMany and read-only claims."""
    if image.shared or image.readonly:
        return False
    return image.nfs_server is not None or not within(image.path, storage.volume_dirs[:1])


def refused_message(image: claims.ClaimedImage, field_: str, why: str) -> str:
    """The FailedAttachVolume message of a claim whose VolumeAttachment another VMI holds."""
    modes = ", ".join(image.access_modes) or "ReadWriteOnce"
    return (
        f"{field_}: PersistentVolumeClaim {image.claim!r} ({modes}) {why}; it is attached here once that VMI "
        "stops (use a ReadWriteMany claim to share it)"
    )


async def _exclusive_in_cluster(
    image: claims.ClaimedImage,
    field_: str,
    volume: str,
    *,
    sources: Sources,
    storage: NodeStorage,
    revert: Reverter,
) -> None:
    """A ReadWriteOnce claim of storage every node reaches is opened by one VMI of the whole cluster at a
    time: the holder of its VolumeAttachment (:func:`needs_attachment`), taken here and released when the
    start fails."""
    if not needs_attachment(image, storage):
        return
    why = await sources.attach_claim(image, volume)
    if why is not None:
        raise VolumeNotReady("FailedAttachVolume", refused_message(image, field_, why))
    revert.add(lambda: sources.detach_claim(volume))


async def _config_map(name: str, field_: str, optional: bool, sources: Sources) -> dict[str, str | bytes]:
    cm = await sources.read("configmaps", name) if name else None
    if cm is None:
        if optional:
            return {}
        raise VolumeNotReady(
            "FailedMount", f"{field_}: ConfigMap {name!r} does not exist in the VMI's namespace; create it"
        )
    files: dict[str, str | bytes] = dict(cm.get("data") or {})
    for key, value in (cm.get("binaryData") or {}).items():
        files[key] = base64.b64decode(value)
    return files


async def _secret(name: str, field_: str, optional: bool, sources: Sources) -> dict[str, str | bytes]:
    secret = await sources.read("secrets", name) if name else None
    if secret is None:
        if optional:
            return {}
        raise VolumeNotReady(
            "FailedMount", f"{field_}: Secret {name!r} does not exist in the VMI's namespace; create it"
        )
    files: dict[str, str | bytes] = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    files.update(secret.get("stringData") or {})
    return files


async def _service_account(
    name: str, field_: str, namespace: str, sources: Sources
) -> dict[str, str | bytes]:
    if await sources.read("serviceaccounts", name) is None:
        raise VolumeNotReady(
            "FailedMount",
            f"{field_}: ServiceAccount {name!r} does not exist in the VMI's namespace; create it",
        )
    token = await sources.request_token(name)
    if token is None:
        raise VolumeNotReady("FailedMount", f"{field_}: no token could be issued for ServiceAccount {name!r}")
    return {"namespace": namespace, "token": token}


def _downward_api(
    items: list[dict[str, Any]], field_: str, metadata: Mapping[str, Any]
) -> dict[str, str | bytes]:
    """The files of a downwardAPI volume: ``fieldRef`` of metadata, in the kubelet's format (labels and
    annotations as sorted ``key="value"`` lines)."""
    files: dict[str, str | bytes] = {}
    for index, item in enumerate(items):
        path = str(item.get("path") or "")
        if not path or path.startswith("/") or ".." in path.split("/"):
            raise PrepareError(f"{field_}[{index}].path: {path!r} must be a relative path without '..'")
        ref = str((item.get("fieldRef") or {}).get("fieldPath") or "")
        value = _metadata_field(ref, metadata)
        if value is None:
            raise PrepareError(
                f"{field_}[{index}].fieldRef.fieldPath: {ref!r} is not supported; use metadata.name, "
                "metadata.namespace, metadata.uid, metadata.labels, metadata.annotations or "
                "metadata.labels['KEY'] / metadata.annotations['KEY']"
            )
        files[path] = value
    return files


def _metadata_field(ref: str, metadata: Mapping[str, Any]) -> str | None:
    if ref in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(metadata.get(ref.removeprefix("metadata.")) or "")
    for kind in ("labels", "annotations"):
        values = metadata.get(kind) or {}
        if ref == f"metadata.{kind}":
            return "".join(f"{k}={json.dumps(str(v))}\n" for k, v in sorted(values.items()))
        prefix = f"metadata.{kind}['"
        if ref.startswith(prefix) and ref.endswith("']"):
            return str(values.get(ref[len(prefix) : -2], ""))
    return None


# --- direct kernel boot ---------------------------------------------------------------------------------


def resolve_image_root(image: str, storage: NodeStorage) -> Path | None:
    """The local directory holding the files of ``image`` (a kernelBoot container): the mirror's entry
    when it is a directory, or ``image`` itself when it is the absolute path of a directory under one of
    ``storage.image_dirs``."""
    for candidate in (image, image.removeprefix("docker://")):
        if candidate in storage.image_mirror:
            found = Path(storage.image_mirror[candidate])
            return Path(os.path.realpath(found)) if found.is_dir() else None
    path = Path(image.removeprefix("file://"))
    if path.is_absolute() and path.is_dir() and within(path, storage.image_dirs):
        return Path(os.path.realpath(path))
    return None


def _kernel_boot(spec: VirtualMachineInstanceSpec, storage: NodeStorage) -> KernelBoot | None:
    firmware = spec.domain.firmware
    kernel_boot = firmware.kernel_boot if firmware else None
    if kernel_boot is None:
        return None
    where = "spec.domain.firmware.kernelBoot"
    container = kernel_boot.container
    if container is None or not (container.kernel_path or container.initrd_path):
        raise PrepareError(f"{where}.container: name the image and its kernelPath (and initrdPath)")
    root = resolve_image_root(container.image, storage)
    if root is None:
        raise ImageNotFound(
            f"{where}.container.image: image {container.image!r} is not a directory in node {storage.node}'s "
            "image mirror or image directories; pulling from a registry is not implemented yet: map it with "
            "`kubevisor up --image-mirror IMAGE=DIR` (DIR holding the kernel and initrd)"
        )

    def member(path: str | None, what: str) -> Path | None:
        if not path:
            return None
        found = root / path.lstrip("/")
        if not found.is_file() or not within(found, (root,)):
            raise PrepareError(
                f"{where}.container.{what}: {path!r} is not a file in image {container.image!r} ({root})"
            )
        return Path(os.path.realpath(found))

    kernel = member(container.kernel_path, "kernelPath")
    if kernel is None:
        raise PrepareError(
            f"{where}.container.kernelPath: booting an initrd without a kernel is not possible"
        )
    return KernelBoot(
        kernel=kernel,
        initrd=member(container.initrd_path, "initrdPath"),
        cmdline=kernel_boot.kernel_args or "",
    )
