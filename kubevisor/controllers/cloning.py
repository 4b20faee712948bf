"""DataVolume clones (``spec.source.pvc``): what the DataVolume controller decides before a node copies.

CDI's host-assisted clone, as kubevisor splits deciding from doing. The DataVolume controller
(:mod:`kubevisor.controllers.datavolume`) calls :func:`check_source` before it creates the target claim
and :func:`gate` once the claim is bound; the node agent that holds both volumes copies the image
(:mod:`kubevisor.agent.importing`, :mod:`kubevisor.storage.cloning`). Everything here is pure: it looks at
objects the controller read from its caches.

The hand-off, on the target claim (CDI's names where CDI has them):

- ``k8s.io/CloneRequest: <namespace>/<name>``: the source claim (:data:`CLONE_REQUEST_ANNOTATION`);
- ``cdi.kubevirt.io/storage.import.source: pvc``: the claim is filled by the node agent and no VMI may
  attach it before ``cdi.kubevirt.io/storage.pod.phase`` is ``Succeeded`` (the claim reader's rule for
  every import);
- the ``kubevisor.io/import-node`` label, set by the controller only once :func:`gate` allows the copy.

Rules (CDI's, for ``pvc`` sources):

1. The source claim must exist; until it does the DataVolume is ``Pending`` with reason
   ``CloneWithoutSource`` ("The source pvc X doesn't exist") and waits for it, as CDI does.
2. The target's requested size must be at least the source's (CDI's ``ValidateRequestedCloneSize``):
   otherwise ``Failed``, reason ``CloneValidationFailed``. A ``storage`` spec without a size takes the
   source's size (CDI's clone size detection).
3. The source must be bound and, if a DataVolume fills it, filled (``Succeeded``), and no VMI that has not
   finished may use it (CDI: no pod may mount it; event ``CloneSourceInUse``): until then
   ``CloneScheduled``. The copy itself checks that the source did not change while it was read.
4. Both volumes must be on one node: a clone's claim of a ``WaitForFirstConsumer`` class is placed on the
   source's node; a target bound elsewhere fails the DataVolume (``CloneAcrossNodes``): copying between
   nodes is not supported yet.
5. A clone from another namespace needs the creator's permission to ``create`` ``datavolumes/source`` in
   the source namespace (CDI's rule), checked by the API server when the DataVolume (or a VM with it in
   ``dataVolumeTemplates``) is written: :mod:`kubevisor.apiserver.cloneauth`.

The source is named by :func:`source_of` from ``spec.source.pvc``; a DataVolume whose ``sourceRef`` names
a DataSource is cloned the same way once the DataSource is resolved to a claim (pass that claim to the
same functions).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubevisor.api import cdi, volumesnapshot
from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj

__all__ = [
    "CLONE_REQUEST_ANNOTATION",
    "SOURCE_KIND",
    "Gate",
    "SourceCheck",
    "check_snapshot",
    "check_source",
    "claim_annotations",
    "claims_of",
    "gate",
    "snapshot_claim_annotations",
    "snapshot_gate",
    "snapshot_source_of",
    "source_of",
    "users_of",
]

CLONE_REQUEST_ANNOTATION = "k8s.io/CloneRequest"
"""On a clone's target claim: ``<namespace>/<name>`` of the source claim (CDI's ``AnnCloneRequest``)."""
SOURCE_KIND = "pvc"
"""The value of ``cdi.kubevirt.io/storage.import.source`` on a clone's target claim."""
FINISHED = ("Succeeded", "Failed")


def source_of(dv: Obj) -> tuple[str, str] | None:
    """``(namespace, name)`` of the claim ``spec.source.pvc`` names (namespace defaults to the DV's)."""
    pvc = ((dv.get("spec") or {}).get("source") or {}).get("pvc")
    if not isinstance(pvc, dict) or not pvc.get("name"):
        return None
    return str(pvc.get("namespace") or dv["metadata"]["namespace"]), str(pvc["name"])


def claim_annotations(namespace: str, name: str) -> dict[str, str]:
    """The annotations a clone's target claim carries (see the module docstring)."""
    return {cdi.IMPORT_SOURCE_ANNOTATION: SOURCE_KIND, CLONE_REQUEST_ANNOTATION: f"{namespace}/{name}"}


def _size(claim_spec: Obj) -> int | None:
    value = ((claim_spec.get("resources") or {}).get("requests") or {}).get("storage")
    size = parse_quantity(value) if value is not None else None
    return int(size) if size else None


def source_size(source: Obj) -> int | None:
    """The source claim's size: its capacity once bound, else its request."""
    capacity = ((source.get("status") or {}).get("capacity") or {}).get("storage")
    size = parse_quantity(capacity) if capacity is not None else None
    return int(size) if size else _size(source.get("spec") or {})


@dataclass(frozen=True)
class SourceCheck:
    """What :func:`check_source` found. ``reason`` empty: the target claim may be created."""

    phase: str = ""
    """``Pending`` (wait) or ``Failed``; empty when fine."""
    reason: str = ""
    message: str = ""
    size: str | None = None
    """The size to request for the target when the DataVolume gave none (the source's)."""


def check_source(dv: Obj, source: Obj | None, namespace: str, name: str) -> SourceCheck:
    """Rules 1 and 2 (module docstring), before the target claim is created."""
    if source is None:
        return SourceCheck("Pending", "CloneWithoutSource", f"The source pvc {name} doesn't exist")
    spec = dv.get("spec") or {}
    wanted_spec = spec.get("pvc") or spec.get("storage") or {}
    wanted = _size(wanted_spec)
    have = source_size(source)
    if wanted is None:
        if have is None:
            return SourceCheck(
                "Pending",
                "CloneSourceSizeUnknown",
                f"the size of the source pvc {namespace}/{name} is not known yet; set "
                "spec.storage.resources.requests.storage",
            )
        return SourceCheck(size=str(have))
    if have is not None and have > wanted:
        return SourceCheck(
            "Failed",
            "CloneValidationFailed",
            "The clone doesn't meet the validation requirements: target resources requests storage size "
            f"is smaller than the source {wanted} < {have}; request at least {have} bytes",
        )
    return SourceCheck()


def claims_of(vmi: Obj) -> set[str]:
    names: set[str] = set()
    for volume in (vmi.get("spec") or {}).get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
            volume.get("dataVolume") or {}
        ).get("name")
        if claim:
            names.add(str(claim))
    return names


def users_of(vmis: Iterable[Obj], namespace: str, name: str) -> list[str]:
    """``namespace/name`` of the VMIs (not finished) that use claim ``namespace/name``."""
    return sorted(
        f"{v['metadata']['namespace']}/{v['metadata']['name']}"
        for v in vmis
        if v["metadata"].get("namespace") == namespace
        and (v.get("status") or {}).get("phase") not in FINISHED
        and name in claims_of(v)
    )


@dataclass(frozen=True)
class Gate:
    """What :func:`gate` decided for a bound target. ``ready``: label the target for ``node``."""

    ready: bool
    phase: str
    """``CloneScheduled`` while waiting, ``Failed`` when it never can."""
    reason: str = ""
    message: str = ""


def gate(
    source: Obj | None,
    namespace: str,
    name: str,
    *,
    source_node: str | None,
    target_node: str | None,
    vmis: Iterable[Obj],
) -> Gate:
    """Rules 1, 3 and 4 (module docstring) for a bound target claim whose volume is on ``target_node``.
    ``source_node`` None: the source's volume names no node (a ``hostPath`` volume without node affinity),
    which is taken to be on every node."""
    where = f"{namespace}/{name}"
    if source is None:
        return Gate(False, "CloneScheduled", "CloneWithoutSource", f"The source pvc {name} doesn't exist")
    if (source.get("status") or {}).get("phase") != "Bound":
        return Gate(
            False, "CloneScheduled", "CloneSourceNotBound", f"the source pvc {where} is not bound yet"
        )
    annotations = source["metadata"].get("annotations") or {}
    filled = annotations.get(cdi.POD_PHASE_ANNOTATION)
    if annotations.get(cdi.IMPORT_SOURCE_ANNOTATION) and filled != "Succeeded":
        return Gate(
            False,
            "CloneScheduled",
            "CloneSourceNotPopulated",
            f"the source pvc {where} is still being filled ({filled or 'not started'}); the clone starts "
            "once its DataVolume has succeeded",
        )
    users = users_of(vmis, namespace, name)
    if users:
        return Gate(
            False,
            "CloneScheduled",
            "CloneSourceInUse",
            f"VirtualMachineInstance {', '.join(users)} using PersistentVolumeClaim {name}; the clone starts "
            "once it is stopped",
        )
    if target_node is None:
        return Gate(False, "CloneScheduled")
    if source_node is not None and source_node != target_node:
        return Gate(
            False,
            "Failed",
            "CloneAcrossNodes",
            f"the source pvc {where} is on node {source_node} and the target's volume on node {target_node}; "
            "clones between nodes are not supported: use a WaitForFirstConsumer storage class (the clone is "
            "placed on the source's node)",
        )
    return Gate(True, "CloneScheduled")


# --- snapshot sources (spec.source.snapshot, or a DataSource naming a VolumeSnapshot) --------------------
#
# A restore from a VolumeSnapshot follows the same hand-off and phases (CloneScheduled -> CloneInProgress ->
# Succeeded): the target claim carries ``storage.import.source: snapshot``, the snapshot
# (:data:`~kubevisor.api.volumesnapshot.RESTORE_SNAPSHOT_ANNOTATION`) and its content
# (:data:`~kubevisor.api.volumesnapshot.RESTORE_CONTENT_ANNOTATION`, fixed when the claim is created); a
# ``WaitForFirstConsumer`` target is placed on the content's node, and the node agent there copies the
# snapshot's image into the claim (:mod:`kubevisor.agent.volumesnapshots`). The rules, CDI's for snapshot
# sources: the snapshot must exist (else ``Pending``, ``CloneWithoutSource``) and be ``readyToUse`` (else
# ``Pending``, ``SnapshotNotReady``); the target must be at least ``status.restoreSize`` (else ``Failed``,
# ``CloneValidationFailed``), a target without a size takes it; a snapshot of another namespace needs
# ``create`` on ``datavolumes/source`` there (:mod:`kubevisor.apiserver.cloneauth`).


def snapshot_source_of(dv: Obj) -> tuple[str, str] | None:
    """``(namespace, name)`` of the VolumeSnapshot ``spec.source.snapshot`` names (namespace: the DV's)."""
    snap = ((dv.get("spec") or {}).get("source") or {}).get("snapshot")
    if not isinstance(snap, dict) or not snap.get("name"):
        return None
    return str(snap.get("namespace") or dv["metadata"]["namespace"]), str(snap["name"])


def snapshot_claim_annotations(namespace: str, name: str, content: str) -> dict[str, str]:
    """The annotations of a claim restored from the VolumeSnapshot ``namespace/name`` (its ``content``)."""
    return {
        cdi.IMPORT_SOURCE_ANNOTATION: volumesnapshot.RESTORE_SOURCE_KIND,
        volumesnapshot.RESTORE_SNAPSHOT_ANNOTATION: f"{namespace}/{name}",
        volumesnapshot.RESTORE_CONTENT_ANNOTATION: content,
    }


def check_snapshot(dv: Obj, snapshot: Obj | None, namespace: str, name: str) -> SourceCheck:
    """Before the target claim is created: may it be (empty ``phase``), with which size if none is given."""
    where = f"{namespace}/{name}"
    if snapshot is None:
        return SourceCheck("Pending", "CloneWithoutSource", f"The source snapshot {name} doesn't exist")
    status = snapshot.get("status") or {}
    if not status.get("readyToUse") or not status.get("boundVolumeSnapshotContentName"):
        error = (status.get("error") or {}).get("message")
        return SourceCheck(
            "Pending",
            "SnapshotNotReady",
            f"the source snapshot {where} is not ready to use"
            + (f": {error}" if error else " yet; the restore starts once it is"),
        )
    restore = status.get("restoreSize")
    have = parse_quantity(restore) if restore is not None else None
    spec = dv.get("spec") or {}
    wanted = _size(spec.get("pvc") or spec.get("storage") or {})
    if wanted is None:
        if not have:
            return SourceCheck(
                "Pending",
                "CloneSourceSizeUnknown",
                f"the restore size of the source snapshot {where} is not known; set "
                "spec.storage.resources.requests.storage",
            )
        return SourceCheck(size=str(int(have)))
    if have and int(have) > wanted:
        return SourceCheck(
            "Failed",
            "CloneValidationFailed",
            "The clone doesn't meet the validation requirements: target resources requests storage size "
            f"is smaller than the source snapshot's restoreSize {wanted} < {int(have)}; request at least "
            f"{int(have)} bytes",
        )
    return SourceCheck()


def snapshot_gate(content: Obj | None, namespace: str, name: str, *, target_node: str | None) -> Gate:
    """For a bound target claim whose volume is on ``target_node``: may the copy start there."""
    where = f"{namespace}/{name}"
    if content is None:
        return Gate(
            False, "Failed", "CloneWithoutSource", f"the content of the source snapshot {where} was deleted"
        )
    content_node = ((content.get("metadata") or {}).get("labels") or {}).get(volumesnapshot.NODE_LABEL)
    if target_node is None:
        return Gate(False, "CloneScheduled")
    if content_node != target_node:
        return Gate(
            False,
            "Failed",
            "CloneAcrossNodes",
            f"the data of the source snapshot {where} is on node {content_node} and the target's volume on "
            f"node {target_node}; restores between nodes are not supported: use a WaitForFirstConsumer "
            "storage class (the restore is placed on the snapshot's node)",
        )
    return Gate(True, "CloneScheduled")
