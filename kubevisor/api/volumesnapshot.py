"""snapshot.storage.k8s.io/v1 kinds: VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotClass.

JSON names follow the external-snapshotter's ``client/apis/volumesnapshot/v1/types.go`` (the CRDs every
Kubernetes distribution installs). A VolumeSnapshot (namespaced, a user's request, like a claim) is bound
to one VolumeSnapshotContent (cluster-scoped, the data on the storage, like a PersistentVolume), taken by
the driver a VolumeSnapshotClass names. Validation is the CRDs' ``x-kubernetes-validations`` rules: exactly
one source, sources immutable, a content's reference to its snapshot complete, deletion policies Delete or
Retain. Status is owned by the volume snapshot controller
(:mod:`kubevisor.controllers.volumesnapshot`) and, for a content, by the node agent that takes the data
(:mod:`kubevisor.agent.volumesnapshots`).
"""

from __future__ import annotations

from typing import Any

from kubevisor.api.base import KubeModel
from kubevisor.api.core import ObjectReference
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind, Obj, PrinterColumn
from kubevisor.api.validation import FieldError

GROUP = "snapshot.storage.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

LOCAL_DRIVER = "kubevisor.io/local"
"""The driver of the local volumes (the ``local`` StorageClass's provisioner): the node agent copies."""
DEFAULT_CLASS = "local"
"""The VolumeSnapshotClass ``kubevisor up`` creates for :data:`LOCAL_DRIVER` (default, Delete)."""
DEFAULT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"
"""On a VolumeSnapshotClass: ``"true"`` makes it the class of snapshots that name none."""
DELETION_POLICIES = ("Delete", "Retain")

BOUND_FINALIZER = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"
"""On a VolumeSnapshot bound to a content (the external-snapshotter's name): the controller deletes a
``Delete`` content, waits for it to be gone, then removes this."""
NODE_LABEL = "snapshot.storage.kubevisor.io/node"
"""On a VolumeSnapshotContent of :data:`LOCAL_DRIVER`: the node whose agent takes and keeps the data."""
CONTENT_FINALIZER = "snapshot.storage.kubevisor.io/node-agent"
"""On every content the controller creates: the node agent frees the data, then removes this."""
SOURCE_CLAIM_ANNOTATION = "snapshot.storage.kubevisor.io/source-claim"
"""On a content: ``<namespace>/<name>`` of the claim its data is taken from."""
FORMAT_ANNOTATION = "snapshot.storage.kubevisor.io/format"
"""On a content, written by the agent with its status: the image format of the data (raw or qcow2)."""
INDICATIONS_ANNOTATION = "snapshot.storage.kubevisor.io/indications"
"""On a content, written by the agent: how the data was taken (``Online,GuestAgent``, ``Online,NoGuestAgent``
from a running VMI's QEMU; empty: offline, a file copy)."""

RESTORE_SOURCE_KIND = "snapshot"
"""``cdi.kubevirt.io/storage.import.source`` of a claim a DataVolume restores from a VolumeSnapshot."""
RESTORE_SNAPSHOT_ANNOTATION = "snapshot.storage.kubevisor.io/restore-snapshot"
"""On such a claim: ``<namespace>/<name>`` of the VolumeSnapshot restored."""
RESTORE_CONTENT_ANNOTATION = "snapshot.storage.kubevisor.io/restore-content"
"""On such a claim: the VolumeSnapshotContent whose data fills it (fixed when the claim is created)."""


def content_name(snapshot_uid: str) -> str:
    """The content of a dynamically taken snapshot, named as the external-snapshotter names it."""
    return f"snapcontent-{snapshot_uid}"


class VolumeSnapshotSource(KubeModel):
    """Where a snapshot's data comes from: exactly one of the two."""

    persistent_volume_claim_name: str | None = None
    """A claim in the snapshot's namespace: the snapshot is taken from it (dynamic provisioning)."""
    volume_snapshot_content_name: str | None = None
    """An existing VolumeSnapshotContent to bind to (pre-provisioned)."""


class VolumeSnapshotSpec(KubeModel):
    """What to snapshot."""

    source: VolumeSnapshotSource
    """The claim, or the pre-provisioned content. Immutable."""
    volume_snapshot_class_name: str | None = None
    """The VolumeSnapshotClass (default: the one annotated as the default for the claim's driver)."""


class VolumeSnapshotError(KubeModel):
    """The last error taking a snapshot."""

    time: str | None = None
    """When it happened."""
    message: str | None = None
    """What happened, and what to do."""


class VolumeSnapshotStatus(KubeModel):
    """Observed state of a snapshot; owner: the volume snapshot controller."""

    bound_volume_snapshot_content_name: str | None = None
    """The VolumeSnapshotContent holding the data."""
    creation_time: str | None = None
    """When the data was taken (RFC 3339)."""
    ready_to_use: bool | None = None
    """Whether the snapshot can be restored from."""
    restore_size: str | int | None = None
    """The minimum size of a volume restored from it (a quantity)."""
    error: VolumeSnapshotError | None = None
    """The last error."""
    volume_group_snapshot_name: str | None = None
    """The VolumeGroupSnapshot this snapshot is part of (unused here)."""


class VolumeSnapshot(KubeModel):
    """A user's request for a point-in-time copy of a claim."""

    api_version: str | None = API_VERSION
    """snapshot.storage.k8s.io/v1."""
    kind: str | None = "VolumeSnapshot"
    """VolumeSnapshot."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VolumeSnapshotSpec
    """What to snapshot."""
    status: VolumeSnapshotStatus | None = None
    """Observed state."""


class VolumeSnapshotContentSource(KubeModel):
    """Where a content's data is: exactly one of the two."""

    volume_handle: str | None = None
    """The volume to take the data from (dynamic: here the PersistentVolume's name)."""
    snapshot_handle: str | None = None
    """An existing snapshot on the storage (pre-provisioned)."""


class VolumeSnapshotContentSpec(KubeModel):
    """The data, and the snapshot it is bound to."""

    volume_snapshot_ref: ObjectReference
    """The VolumeSnapshot bound to this content (name and namespace required)."""
    deletion_policy: str
    """Delete (the data goes when the snapshot is deleted) or Retain."""
    driver: str
    """The driver that took, and keeps, the data."""
    volume_snapshot_class_name: str | None = None
    """The class the data was taken with."""
    source: VolumeSnapshotContentSource
    """The volume, or the existing snapshot. Immutable."""
    source_volume_mode: str | None = None
    """Filesystem or Block: the mode of the volume the data was taken from. Immutable."""


class VolumeSnapshotContentStatus(KubeModel):
    """Observed state of a content; owner: the driver (here: the node agent)."""

    snapshot_handle: str | None = None
    """The snapshot's identifier on the storage."""
    creation_time: int | None = None
    """When the data was taken, in nanoseconds since the epoch."""
    ready_to_use: bool | None = None
    """Whether the data is complete."""
    restore_size: int | None = None
    """The minimum size of a volume restored from it, in bytes."""
    error: VolumeSnapshotError | None = None
    """The last error."""
    volume_group_snapshot_handle: str | None = None
    """The group snapshot's identifier (unused here)."""


class VolumeSnapshotContent(KubeModel):
    """The data of a snapshot on the storage (cluster-scoped, as a PersistentVolume)."""

    api_version: str | None = API_VERSION
    """snapshot.storage.k8s.io/v1."""
    kind: str | None = "VolumeSnapshotContent"
    """VolumeSnapshotContent."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VolumeSnapshotContentSpec
    """The data and its snapshot."""
    status: VolumeSnapshotContentStatus | None = None
    """Observed state."""


class VolumeSnapshotClass(KubeModel):
    """How snapshots are taken: by which driver, with which parameters, kept or not."""

    api_version: str | None = API_VERSION
    """snapshot.storage.k8s.io/v1."""
    kind: str | None = "VolumeSnapshotClass"
    """VolumeSnapshotClass."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    driver: str
    """The driver taking the snapshots (kubevisor.io/local for the local volumes)."""
    parameters: dict[str, str] | None = None
    """Driver-specific parameters (none for kubevisor.io/local)."""
    deletion_policy: str
    """Delete or Retain: what happens to a content when its snapshot is deleted."""


# --- validation ----------------------------------------------------------------------------------


def _one_of(source: Any, path: str, names: tuple[str, str]) -> list[FieldError]:
    if not isinstance(source, dict):
        return []
    given = [n for n in names if source.get(n)]
    if len(given) != 1:
        return [
            FieldError(
                path,
                f"exactly one of {names[0]} and {names[1]} must be set"
                + (f" (both are: {', '.join(given)})" if given else ""),
            )
        ]
    return []


def _unchanged(new: Any, old: Any, path: str, names: tuple[str, ...]) -> list[FieldError]:
    new, old = new if isinstance(new, dict) else {}, old if isinstance(old, dict) else {}
    return [
        FieldError(f"{path}.{n}", f"{n} is immutable: create a new object instead")
        for n in names
        if new.get(n) != old.get(n)
    ]


def _policy(value: Any, path: str) -> list[FieldError]:
    if not value:
        return [FieldError(path, "missing deletionPolicy: Delete or Retain", "FieldValueRequired")]
    if value not in DELETION_POLICIES:
        return [
            FieldError(
                path,
                f"Unsupported value: {value!r}: supported values: Delete, Retain",
                "FieldValueNotSupported",
            )
        ]
    return []


def _snapshot_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    source = spec.get("source")
    errors = _one_of(source, "spec.source", ("persistentVolumeClaimName", "volumeSnapshotContentName"))
    if "volumeSnapshotClassName" in spec and spec["volumeSnapshotClassName"] == "":
        errors.append(
            FieldError(
                "spec.volumeSnapshotClassName",
                "volumeSnapshotClassName must not be the empty string when set",
            )
        )
    if old is not None:
        errors += _unchanged(
            source,
            (old.get("spec") or {}).get("source"),
            "spec.source",
            ("persistentVolumeClaimName", "volumeSnapshotContentName"),
        )
    return errors


def _content_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors = _one_of(spec.get("source"), "spec.source", ("volumeHandle", "snapshotHandle"))
    ref = spec.get("volumeSnapshotRef") or {}
    if not ref.get("name") or not ref.get("namespace"):
        errors.append(
            FieldError(
                "spec.volumeSnapshotRef",
                "both spec.volumeSnapshotRef.name and spec.volumeSnapshotRef.namespace must be set",
                "FieldValueRequired",
            )
        )
    if not spec.get("driver"):
        errors.append(FieldError("spec.driver", "missing driver: name the CSI driver", "FieldValueRequired"))
    errors += _policy(spec.get("deletionPolicy"), "spec.deletionPolicy")
    if old is not None:
        old_spec = old.get("spec") or {}
        errors += _unchanged(
            spec.get("source"), old_spec.get("source"), "spec.source", ("volumeHandle", "snapshotHandle")
        )
        errors += _unchanged(spec, old_spec, "spec", ("sourceVolumeMode",))
    return errors


def _class_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    errors = []
    if not obj.get("driver"):
        errors.append(FieldError("driver", "missing driver: name the CSI driver", "FieldValueRequired"))
    errors += _policy(obj.get("deletionPolicy"), "deletionPolicy")
    if old is not None:
        errors += [
            FieldError(n, f"{n} is immutable: create a new VolumeSnapshotClass instead")
            for n in ("driver", "parameters")
            if obj.get(n) != old.get(n)
        ]
    return errors


READY_TO_USE = PrinterColumn("ReadyToUse", "boolean", ".status.readyToUse")
AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")

KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "VolumeSnapshot",
        "volumesnapshots",
        VolumeSnapshot,
        short_names=("vs",),
        printer_columns=(
            READY_TO_USE,
            PrinterColumn("SourcePVC", json_path=".spec.source.persistentVolumeClaimName"),
            PrinterColumn("SourceSnapshotContent", json_path=".spec.source.volumeSnapshotContentName"),
            PrinterColumn("RestoreSize", json_path=".status.restoreSize"),
            PrinterColumn("SnapshotClass", json_path=".spec.volumeSnapshotClassName"),
            PrinterColumn("SnapshotContent", json_path=".status.boundVolumeSnapshotContentName"),
            PrinterColumn("CreationTime", "date", ".status.creationTime"),
            AGE,
        ),
        validator=_snapshot_validate,
    ),
    Kind(
        GROUP,
        VERSION,
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
        VolumeSnapshotContent,
        namespaced=False,
        short_names=("vsc", "vscs"),
        printer_columns=(
            READY_TO_USE,
            PrinterColumn("RestoreSize", "integer", ".status.restoreSize"),
            PrinterColumn("DeletionPolicy", json_path=".spec.deletionPolicy"),
            PrinterColumn("Driver", json_path=".spec.driver"),
            PrinterColumn("VolumeSnapshotClass", json_path=".spec.volumeSnapshotClassName"),
            PrinterColumn("VolumeSnapshot", json_path=".spec.volumeSnapshotRef.name"),
            PrinterColumn("VolumeSnapshotNamespace", json_path=".spec.volumeSnapshotRef.namespace"),
            AGE,
        ),
        validator=_content_validate,
    ),
    Kind(
        GROUP,
        VERSION,
        "VolumeSnapshotClass",
        "volumesnapshotclasses",
        VolumeSnapshotClass,
        namespaced=False,
        short_names=("vsclass", "vsclasses"),
        printer_columns=(
            PrinterColumn("Driver", json_path=".driver"),
            PrinterColumn("DeletionPolicy", json_path=".deletionPolicy"),
            AGE,
        ),
        validator=_class_validate,
    ),
]
