"""snapshot.kubevirt.io/v1beta1 kinds: VirtualMachineSnapshot, VirtualMachineSnapshotContent,
VirtualMachineRestore.

JSON names follow KubeVirt's ``staging/src/kubevirt.io/api/snapshot/v1beta1/types.go``. A snapshot of a VM
is recorded in a VirtualMachineSnapshotContent (the VM spec and one volume snapshot per disk); a restore
puts a VM back to a snapshot. Validation is virt-api's without lookups: the source or target is a
``kubevirt.io`` VirtualMachine, and the spec does not change after creation. Status is owned by the snapshot
and restore controllers.
"""

from __future__ import annotations

from typing import Any

from kubevisor.api.base import KubeModel
from kubevisor.api.core import TypedLocalObjectReference
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind, Obj, PrinterColumn
from kubevisor.api.validation import FieldError

GROUP = "snapshot.kubevirt.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"

NODE_LABEL = "snapshot.kubevisor.io/node"
"""On a VirtualMachineSnapshotContent (and on a VirtualMachineRestore once its volumes may be copied): the
node whose agent takes, keeps and restores the data (set by the snapshot and restore controllers)."""
CONTENT_FINALIZER = "snapshot.kubevisor.io/node-agent"
"""On every VirtualMachineSnapshotContent from its creation: the node agent removes the snapshot's images
from the node, then this finalizer."""
DEADLINE_ANNOTATION = "snapshot.kubevisor.io/deadline"
"""On a content: the time (RFC 3339) by which the agent must have taken the data (spec.failureDeadline)."""
INDICATIONS_ANNOTATION = "snapshot.kubevisor.io/indications"
"""On a content, written by the agent: how the data was taken (``Online,GuestAgent``; empty: offline)."""
RESTORE_CONTENT_ANNOTATION = "snapshot.kubevisor.io/content"
"""On a restore, with :data:`NODE_LABEL`: the content whose images the agent copies back."""
VOLUMES_RESTORED_ANNOTATION = "snapshot.kubevisor.io/volumes-restored"
"""On a restore, written by the agent: when the images were copied back."""
RESTORE_ERROR_ANNOTATION = "snapshot.kubevisor.io/restore-error"
"""On a restore, written by the agent: why the images could not be copied back."""
RESTORED_BY_ANNOTATION = "snapshot.kubevisor.io/restored-by"
"""On a VM a restore created (restore as a new VM): the restore's uid."""


def restored_claim(restore_uid: str, volume: str) -> str:
    """The claim (and PersistentVolume) a restore as a new VM creates for ``volume``, as KubeVirt names it."""
    return f"restore-{restore_uid}-{volume}"


class Condition(KubeModel):
    """A condition of a snapshot or restore: Ready, Progressing, Failure."""

    type: str
    """Condition type."""
    status: str
    """True, False or Unknown."""
    last_probe_time: str | None = None
    """When the condition was last checked."""
    last_transition_time: str | None = None
    """When the status last changed."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class Error(KubeModel):
    """The last error of a snapshot."""

    time: str | None = None
    """When it happened."""
    message: str | None = None
    """What happened."""


# --- VirtualMachineSnapshot ----------------------------------------------------------------------


class VirtualMachineSnapshotSpec(KubeModel):
    """What to snapshot."""

    source: TypedLocalObjectReference
    """The VM: apiGroup kubevirt.io, kind VirtualMachine, and its name."""
    deletion_policy: str | None = None
    """Delete (default: the content goes with the snapshot) or Retain."""
    failure_deadline: str | None = None
    """How long the snapshot may take before it fails, e.g. 5m (0s: no deadline)."""


class SnapshotVolumesLists(KubeModel):
    """Which volumes a snapshot includes."""

    included_volumes: list[str] | None = None
    """Volumes snapshotted."""
    excluded_volumes: list[str] | None = None
    """Volumes left out (no snapshot support)."""


class VirtualMachineSnapshotStatus(KubeModel):
    """Observed state of a snapshot; owner: the snapshot controller."""

    source_uid: str | None = None
    """UID of the VM snapshotted."""
    virtual_machine_snapshot_content_name: str | None = None
    """The VirtualMachineSnapshotContent holding the snapshot."""
    creation_time: str | None = None
    """When the snapshot was taken."""
    phase: str | None = None
    """InProgress, Succeeded, Failed, Deleting or Unknown."""
    ready_to_use: bool | None = None
    """Whether the snapshot can be restored."""
    error: Error | None = None
    """The last error."""
    conditions: list[Condition] | None = None
    """Ready and Progressing conditions."""
    indications: list[str] | None = None
    """How the snapshot was taken: Online, NoGuestAgent, GuestAgent, Paused."""
    snapshot_volumes: SnapshotVolumesLists | None = None
    """Which volumes are in the snapshot."""


class VirtualMachineSnapshot(KubeModel):
    """A point-in-time copy of a VM's spec and disks."""

    api_version: str | None = API_VERSION
    """snapshot.kubevirt.io/v1beta1."""
    kind: str | None = "VirtualMachineSnapshot"
    """VirtualMachineSnapshot."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineSnapshotSpec
    """What to snapshot."""
    status: VirtualMachineSnapshotStatus | None = None
    """Observed state."""


# --- VirtualMachineSnapshotContent ---------------------------------------------------------------


class VirtualMachineSnapshotContentSpec(KubeModel):
    """What a snapshot holds."""

    source: dict[str, Any]
    """The VM as it was (virtualMachine: metadata and spec)."""
    virtual_machine_snapshot_name: str | None = None
    """The VirtualMachineSnapshot this content belongs to."""
    volume_backups: list[dict[str, Any]] | None = None
    """One backup per volume: the claim as it was and its VolumeSnapshot."""


class VirtualMachineSnapshotContentStatus(KubeModel):
    """Observed state of a snapshot content; owner: the snapshot controller."""

    creation_time: str | None = None
    """When the snapshot was taken."""
    ready_to_use: bool | None = None
    """Whether the content can be restored."""
    error: Error | None = None
    """The last error."""
    volume_snapshot_status: list[dict[str, Any]] | None = None
    """State of each VolumeSnapshot."""


class VirtualMachineSnapshotContent(KubeModel):
    """The data of a VirtualMachineSnapshot."""

    api_version: str | None = API_VERSION
    """snapshot.kubevirt.io/v1beta1."""
    kind: str | None = "VirtualMachineSnapshotContent"
    """VirtualMachineSnapshotContent."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineSnapshotContentSpec
    """What the snapshot holds."""
    status: VirtualMachineSnapshotContentStatus | None = None
    """Observed state."""


# --- VirtualMachineRestore -----------------------------------------------------------------------


class VirtualMachineRestoreSpec(KubeModel):
    """Which VM to put back to which snapshot."""

    target: TypedLocalObjectReference
    """The VM to restore (it may not exist yet): apiGroup kubevirt.io, kind VirtualMachine."""
    virtual_machine_snapshot_name: str
    """The snapshot to restore."""
    target_readiness_policy: str | None = None
    """What to do while the target VM runs: StopTarget, FailImmediate, WaitGracePeriod, WaitEventually."""
    volume_restore_policy: str | None = None
    """RandomizeNames (default) or InPlace."""
    volume_ownership_policy: str | None = None
    """VM (default: restored volumes belong to the VM) or None."""
    volume_restore_overrides: list[dict[str, Any]] | None = None
    """Per-volume names, labels and annotations of the restored claims."""
    patches: list[str] | None = None
    """JSON patches applied to the restored VM."""


class VirtualMachineRestoreStatus(KubeModel):
    """Observed state of a restore; owner: the restore controller."""

    restores: list[dict[str, Any]] | None = None
    """The claim restored for each volume."""
    restore_time: str | None = None
    """When the restore completed."""
    deleted_data_volumes: list[str] | None = None
    """DataVolumes deleted by the restore."""
    complete: bool | None = None
    """Whether the restore is complete."""
    conditions: list[Condition] | None = None
    """Ready and Progressing conditions."""


class VirtualMachineRestore(KubeModel):
    """A request to put a VM back to a snapshot."""

    api_version: str | None = API_VERSION
    """snapshot.kubevirt.io/v1beta1."""
    kind: str | None = "VirtualMachineRestore"
    """VirtualMachineRestore."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachineRestoreSpec
    """What to restore."""
    status: VirtualMachineRestoreStatus | None = None
    """Observed state."""


# --- validation ----------------------------------------------------------------------------------


def _vm_reference(ref: Any, path: str) -> list[FieldError]:
    if not isinstance(ref, dict):
        return []
    group = ref.get("apiGroup")
    if not group:
        return [
            FieldError(f"{path}.apiGroup", "missing apiGroup: set it to kubevirt.io", "FieldValueRequired")
        ]
    if group != "kubevirt.io":
        return [FieldError(f"{path}.apiGroup", f"invalid apiGroup {group!r}: only kubevirt.io is supported")]
    if ref.get("kind") != "VirtualMachine":
        return [
            FieldError(f"{path}.kind", f"invalid kind {ref.get('kind')!r}: only VirtualMachine is supported")
        ]
    return []


def _immutable(obj: Obj, old: Obj | None, what: str) -> list[FieldError]:
    if old is not None and old.get("spec") != obj.get("spec"):
        return [
            FieldError("spec", f"spec is immutable after the {what} is created: create a new {what} instead")
        ]
    return []


def _snapshot_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    return _immutable(obj, old, "snapshot") + _vm_reference(
        (obj.get("spec") or {}).get("source"), "spec.source"
    )


def _restore_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors = _immutable(obj, old, "restore") + _vm_reference(spec.get("target"), "spec.target")
    if not spec.get("virtualMachineSnapshotName"):
        errors.append(
            FieldError(
                "spec.virtualMachineSnapshotName",
                "missing virtualMachineSnapshotName: name the VirtualMachineSnapshot to restore",
                "FieldValueRequired",
            )
        )
    return errors


CREATION_TIME = PrinterColumn("CreationTime", "date", ".status.creationTime")
READY_TO_USE = PrinterColumn("ReadyToUse", "boolean", ".status.readyToUse")
ERROR = PrinterColumn("Error", json_path=".status.error.message")

KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineSnapshot",
        "virtualmachinesnapshots",
        VirtualMachineSnapshot,
        short_names=("vmsnapshot", "vmsnapshots"),
        categories=("all",),
        printer_columns=(
            PrinterColumn("SourceKind", json_path=".spec.source.kind"),
            PrinterColumn("SourceName", json_path=".spec.source.name"),
            PrinterColumn("Phase", json_path=".status.phase"),
            READY_TO_USE,
            CREATION_TIME,
            ERROR,
        ),
        validator=_snapshot_validate,
    ),
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineSnapshotContent",
        "virtualmachinesnapshotcontents",
        VirtualMachineSnapshotContent,
        short_names=("vmsnapshotcontent", "vmsnapshotcontents"),
        categories=("all",),
        printer_columns=(READY_TO_USE, CREATION_TIME, ERROR),
    ),
    Kind(
        GROUP,
        VERSION,
        "VirtualMachineRestore",
        "virtualmachinerestores",
        VirtualMachineRestore,
        short_names=("vmrestore", "vmrestores"),
        categories=("all",),
        printer_columns=(
            PrinterColumn("TargetKind", json_path=".spec.target.kind"),
            PrinterColumn("TargetName", json_path=".spec.target.name"),
            PrinterColumn("Complete", "boolean", ".status.complete"),
            PrinterColumn("RestoreTime", "date", ".status.restoreTime"),
        ),
        validator=_restore_validate,
    ),
]
