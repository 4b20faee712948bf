"""A VMI volume's PersistentVolumeClaim -> the disk image file on this node that holds its data.

Why its own module: a claim is the one volume kind whose file is neither in the run directory nor named
by the VMI. It is found through two API objects (the claim in the VMI's namespace, then the
PersistentVolume it is bound to), and the node decides whether the file that volume names may be attached.

Rules (the minimal, forward-compatible part of Kubernetes' and KubeVirt's semantics; storage classes and
provisioners come later and will produce volumes of the same shape):

- The claim must exist and be ``Bound`` (``status.phase``), and its volume (``spec.volumeName``) must exist
  and point back at it (``spec.claimRef``). Until then the VMI waits: :class:`ClaimNotReady`, retried.
- Only file-backed volumes: ``spec.hostPath.path`` or ``spec.local.path``, under
  one of the node's volume directories (``DATA/volumes``, where the local storage class keeps its
  images, and ``--volume-dir``), resolved (symlinks, ``..``) before the check. Anything else is
  :class:`ClaimError`, which fails the VMI with a message saying what to do.
- The path is the disk image itself, or a directory holding ``disk.img``, as KubeVirt's filesystem-mode
  claims do; a missing ``disk.img`` is created sparse, of the volume's capacity (KubeVirt does the same).
  A ``hostPath`` of type ``DirectoryOrCreate`` (the shared class's ``path`` kind) is created when missing.
- ``spec.nfs`` volumes are not on the node at all: the image is ``disk.img`` in ``spec.nfs.path`` on the
  server (created there when missing, :mod:`kubevisor.agent.nfsvolumes`), and QEMU opens it with its own
  NFS client (:attr:`ClaimedImage.nfs_server`).
- ``volumeMode``: the claim's and the volume's must be the same. A ``Block`` volume is a raw image
  like a Filesystem one (never qcow2); the difference is how QEMU gets it: as a block device, a loop
  device over the image (:mod:`kubevisor.agent.blockdevices`), where KubeVirt hands QEMU the node's
  block device.
- A claim a DataVolume imports into (annotation ``cdi.kubevirt.io/storage.import.source``) waits until
  the import has succeeded (``cdi.kubevirt.io/storage.pod.phase`` = ``Succeeded``): :class:`ClaimNotReady`.
- A claim an upload fills (annotation ``cdi.kubevirt.io/storage.upload.target``) waits likewise until
  its upload has succeeded, as CDI holds a VM back until the upload DataVolume has Succeeded; only the
  upload receiver itself resolves it before (``field`` :data:`UPLOAD_FIELD`).
- The image is raw unless the PersistentVolume carries the annotation :data:`FORMAT_ANNOTATION`, which
  kubevisor's provisioners set (a PersistentVolume is cluster-scoped: only an administrator writes it).
  It is never format-probed: a guest writes into a raw image, and could write a qcow2 header pointing at
  a host file.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kubevisor.agent import nfsvolumes
from kubevisor.api import cdi, upload
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.virt import qemuimg
from kubevisor.virt.process import Reverter

__all__ = [
    "DISK_IMG",
    "FORMAT_ANNOTATION",
    "UPLOAD_FIELD",
    "ClaimError",
    "ClaimNotReady",
    "ClaimedImage",
    "ObjectReader",
    "resolve",
]

ObjectReader = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""Reads ``(resource, name)``: an object of the VMI's namespace (``persistentvolumeclaims``,
``configmaps``, ``serviceaccounts``) or a cluster-scoped one (``persistentvolumes``); None if it does not
exist."""

UPLOAD_FIELD = "upload"
"""The ``field`` the upload receiver (:mod:`kubevisor.agent.uploading`) resolves a claim with: the one
user an upload target that has not been filled yet is resolved for."""
FORMAT_ANNOTATION = "kubevisor.io/disk-format"
"""On a PersistentVolume: the format of its image, ``raw`` (the default) or ``qcow2``."""
DISK_IMG = "disk.img"
"""The image in a directory-backed volume (KubeVirt's filesystem-mode layout)."""
VOLUME_MODES = ("Filesystem", "Block")
READ_ONLY_MODES = ("ReadOnlyMany",)
SHARED_MODES = ("ReadWriteMany", "ReadOnlyMany")
"""Access modes under which several VMIs of one node may use a claim."""


class ClaimNotReady(Exception):
    """The claim or its volume is not there yet; the VMI waits (an Event with ``reason``, a retry)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """CamelCase Event reason (``FailedPvcNotFound``, ``PvcNotBound``, ``PvNotFound``)."""


class ClaimError(Exception):
    """The claim's volume cannot be attached on this node; the message says what to do."""


@dataclass(frozen=True)
class ClaimedImage:
    """The image a claim resolves to."""

    claim: str
    """The claim's name."""
    volume: str
    """The PersistentVolume's name."""
    path: Path
    """The image file (resolved)."""
    format: Literal["raw", "qcow2"]
    """Its format, from :data:`FORMAT_ANNOTATION`."""
    readonly: bool
    """The volume may only be read (ReadOnlyMany)."""
    access_modes: tuple[str, ...]
    """The volume's access modes."""
    block: bool = False
    """A volumeMode Block volume: QEMU gets it as a block device (:mod:`kubevisor.agent.blockdevices`)."""
    nfs_server: str | None = None
    """Set for an NFS volume: ``path`` is the image's path on this server, which QEMU opens with its own
    NFS client (:mod:`kubevisor.agent.nfsvolumes`); nothing of it is on this node."""

    @property
    def shared(self) -> bool:
        """Several VMIs of this node may attach it at once."""
        return any(m in SHARED_MODES for m in self.access_modes)


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)  # type: ignore[assignment]
    return obj


def _within(path: str, roots: tuple[Path, ...]) -> bool:
    real = os.path.realpath(path)
    for root in roots:
        top = os.path.realpath(root)
        if os.path.commonpath([real, top]) == top:
            return True
    return False


async def resolve(
    claim: str,
    field: str,
    *,
    namespace: str,
    node: str,
    volume_dirs: tuple[Path, ...],
    read: ObjectReader,
    revert: Reverter,
) -> ClaimedImage:
    """The image of claim ``claim`` (in ``namespace``), named in the VMI at ``field``."""
    pvc = await read("persistentvolumeclaims", claim)
    if pvc is None:
        raise ClaimNotReady(
            "FailedPvcNotFound",
            f"{field}: PersistentVolumeClaim {claim!r} does not exist in namespace {namespace}; create it "
            "(the VMI starts once it is bound)",
        )
    phase = _get(pvc, "status", "phase") or "Pending"
    volume_name = _get(pvc, "spec", "volumeName")
    if phase != "Bound" or not volume_name:
        raise ClaimNotReady(
            "PvcNotBound",
            f"{field}: PersistentVolumeClaim {claim!r} is {phase}, not Bound; create a PersistentVolume "
            "that matches it (the VMI starts once the claim is bound)",
        )
    _check_filled(pvc, claim, field)
    pv = await read("persistentvolumes", str(volume_name))
    ref = (_get(pv, "spec", "claimRef") or {}) if pv is not None else {}
    if pv is None or ref.get("name") != claim or ref.get("namespace") != namespace:
        raise ClaimNotReady(
            "PvNotFound",
            f"{field}: PersistentVolumeClaim {claim!r} is bound to PersistentVolume {volume_name!r}, which "
            "does not exist or is not bound to it",
        )
    where = f"PersistentVolume {volume_name!r} (claim {claim!r}, {field})"
    block = _volume_mode(pv, pvc, where) == "Block"
    source = _get(pv, "spec", "hostPath", "path") or _get(pv, "spec", "local", "path")
    try:
        nfs = nfsvolumes.location(pv, where)
    except nfsvolumes.NfsVolumeError as e:
        raise ClaimError(str(e)) from e
    if not source and nfs is None:
        raise ClaimError(
            f"{where}: only volumes with spec.hostPath, spec.local (a disk image file, or a directory "
            "holding disk.img) or spec.nfs can be attached on this node"
        )
    if nfs is not None:
        size = parse_quantity(
            _get(pv, "spec", "capacity", "storage") or _get(pvc, "spec", "resources", "requests", "storage")
        )
        try:
            image = Path(await nfsvolumes.image(nfs, where, size=int(size) if size else None))
        except nfsvolumes.NfsVolumeError as e:
            raise ClaimError(str(e)) from e
    else:
        image = await _image(str(source), where, pv, pvc, node=node, volume_dirs=volume_dirs, revert=revert)
    annotation = _get(pv, "metadata", "annotations", FORMAT_ANNOTATION) or "raw"
    if annotation not in ("raw", "qcow2"):
        raise ClaimError(f"{where}: annotation {FORMAT_ANNOTATION}={annotation!r} is not raw or qcow2")
    if block and (annotation != "raw" or nfs is not None):
        raise ClaimError(
            f"{where}: a volumeMode Block volume is a raw image on this node's disk; remove the annotation "
            f"{FORMAT_ANNOTATION} (or use volumeMode Filesystem)"
        )
    modes = tuple(str(m) for m in _get(pv, "spec", "accessModes") or _get(pvc, "spec", "accessModes") or [])
    return ClaimedImage(
        claim=claim,
        volume=str(volume_name),
        path=image,
        format="qcow2" if annotation == "qcow2" else "raw",
        readonly=bool(modes) and all(m in READ_ONLY_MODES for m in modes),
        access_modes=modes,
        nfs_server=nfs.server if nfs is not None else None,
        block=block,
    )


def _volume_mode(pv: Mapping[str, Any], pvc: Mapping[str, Any], where: str) -> str:
    """The volume's mode; a claim and a volume whose modes differ are refused (Kubernetes never binds
    them; a volume bound by hand could still be)."""
    have = str(_get(pv, "spec", "volumeMode") or "Filesystem")
    want = str(_get(pvc, "spec", "volumeMode") or "Filesystem")
    if have not in VOLUME_MODES:
        raise ClaimError(f"{where}: spec.volumeMode {have!r} is not Filesystem or Block")
    if have != want:
        raise ClaimError(
            f"{where}: the claim asks for volumeMode {want} (spec.volumeMode) but the volume is {have}; "
            f"recreate the claim with volumeMode {have}, or give it a {want} volume"
        )
    return have


def _check_filled(pvc: Mapping[str, Any], claim: str, field: str) -> None:
    """Raise :class:`ClaimNotReady` while an import or an upload is filling the claim (not for the upload
    itself: ``field`` :data:`UPLOAD_FIELD`)."""
    annotations = _get(pvc, "metadata", "annotations") or {}
    filled = annotations.get(cdi.POD_PHASE_ANNOTATION)
    if annotations.get(cdi.IMPORT_SOURCE_ANNOTATION) and filled != "Succeeded":
        raise ClaimNotReady(
            "DataVolumeNotReady",
            f"{field}: PersistentVolumeClaim {claim!r} is being filled by a DataVolume import "
            f"({filled or 'not started'}); the VMI starts once the DataVolume has Succeeded",
        )
    if upload.UPLOAD_TARGET in annotations and filled != "Succeeded" and field != UPLOAD_FIELD:
        raise ClaimNotReady(
            "DataVolumeNotReady",
            f"{field}: PersistentVolumeClaim {claim!r} is an upload target and its upload has not "
            f"succeeded ({filled or 'nothing uploaded yet'}); upload the image (kubevisor image-upload), "
            "the VMI starts once the upload has succeeded",
        )


async def _image(
    source: str,
    where: str,
    pv: Mapping[str, Any],
    pvc: Mapping[str, Any],
    *,
    node: str,
    volume_dirs: tuple[Path, ...],
    revert: Reverter,
) -> Path:
    if not os.path.isabs(source):
        raise ClaimError(f"{where}: path {source!r} must be absolute")
    if not _within(source, volume_dirs):
        allowed = ", ".join(str(d) for d in volume_dirs) or "none"
        raise ClaimError(
            f"{where}: path {source} is not under a volume directory of node {node} ({allowed}); put the "
            "image there, or start the agent with --volume-dir DIR"
        )
    if _get(pv, "spec", "hostPath", "type") == "DirectoryOrCreate":
        _make_directory(source)
    image, exists = _locate(source, where, node, volume_dirs)
    if exists:
        return image
    size = parse_quantity(
        _get(pv, "spec", "capacity", "storage") or _get(pvc, "spec", "resources", "requests", "storage")
    )
    if size is None or size <= 0:
        raise ClaimError(f"{where}: {image} is missing and the volume has no capacity.storage to create it")
    try:
        await qemuimg.create(image, "raw", int(size))
    except qemuimg.ImageError as e:
        raise ClaimError(f"{where}: {e}") from e
    revert.add(lambda: image.unlink(missing_ok=True))  # created for a start that failed: not the user's yet
    return image


def _make_directory(source: str) -> None:
    """Create a ``DirectoryOrCreate`` hostPath volume's directory, as the kubelet does (the shared
    class's volumes: the first node to use one creates it)."""
    if not os.path.lexists(source):
        os.makedirs(source, mode=0o700, exist_ok=True)


def _locate(source: str, where: str, node: str, volume_dirs: tuple[Path, ...]) -> tuple[Path, bool]:
    """(the image, whether it exists): ``source`` itself, or ``disk.img`` in the directory ``source``."""
    path = Path(os.path.realpath(source))
    if path.is_file():
        return path, True
    if not path.is_dir():
        raise ClaimError(f"{where}: {path} does not exist on node {node}; create the image or the directory")
    image = path / DISK_IMG
    if image.is_file() and _within(str(image), volume_dirs):
        return Path(os.path.realpath(image)), True
    if image.exists() or image.is_symlink():
        raise ClaimError(f"{where}: {image} is not a regular file under a volume directory of node {node}")
    return image, False
