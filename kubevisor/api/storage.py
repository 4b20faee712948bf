"""storage.k8s.io/v1 kinds: StorageClass, VolumeAttachment.

JSON names follow Kubernetes' ``k8s.io/api/storage/v1``. A StorageClass names the provisioner that creates
PersistentVolumes for claims of the class, what happens to a volume whose claim is deleted
(``reclaimPolicy``) and when a claim is provisioned (``volumeBindingMode``). kubevisor's own provisioner is
:data:`LOCAL_PROVISIONER` (a raw image per volume under a node's ``DATA/volumes``).

As in Kubernetes, the fields of a class cannot change after creation (but ``allowVolumeExpansion``,
labels and annotations); the class marked with :data:`DEFAULT_CLASS_ANNOTATION` = ``"true"`` is the one
claims without ``storageClassName`` get from kubevisor's DataVolume controller.

A VolumeAttachment (cluster-scoped) records that a volume is attached to a node, as Kubernetes' attach/detach
controller records it for CSI drivers. kubevisor's node agent (attacher :data:`AGENT_ATTACHER`) writes one
before a QEMU opens a writable ReadWriteOnce claim of storage every node reaches; its name is derived from the
PersistentVolume alone, so the API server's create (which fails on an existing name) makes it exclusive in the
whole cluster (:mod:`kubevisor.agent.attachments` says who creates, takes over and deletes them). As in
Kubernetes, the spec cannot change after creation.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubevisor.api.base import KubeModel
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind, Obj, PrinterColumn
from kubevisor.api.validation import FieldError

GROUP = "storage.k8s.io"
VERSION = "v1"
LOCAL_PROVISIONER = "kubevisor.io/local"
"""kubevisor's node-local provisioner: a raw ``disk.img`` under the node's ``DATA/volumes/<pv-name>``."""
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
"""``"true"`` on the default class (Kubernetes' annotation)."""
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"
"""On a claim of a WaitForFirstConsumer class: the node its first consumer was scheduled to (Kubernetes'
annotation; see :mod:`kubevisor.controllers.provisioning` for who sets it)."""
PROVISIONED_BY_ANNOTATION = "pv.kubernetes.io/provisioned-by"
"""On a PersistentVolume: the provisioner that created it (and deletes it under reclaimPolicy Delete)."""
VOLUME_DIR_ANNOTATION = "kubevisor.io/volume-dir"
"""On a Node: the directory its agent keeps local volumes in (``DATA/volumes``); written by the agent."""
VOLUME_FREE_ANNOTATION = "kubevisor.io/volume-free-bytes"
"""On a Node: bytes free in the filesystem of :data:`VOLUME_DIR_ANNOTATION`; written by the agent."""
VOLUME_CAPACITY_ANNOTATION = "kubevisor.io/volume-capacity-bytes"
"""On a Node: bytes local volumes may take in all: the free bytes plus what their images already hold
(their sum of capacities must stay within it); written by the agent."""
RECLAIM_POLICIES = ("Delete", "Retain", "Recycle")
BINDING_MODES = ("Immediate", "WaitForFirstConsumer")
IMMUTABLE = ("provisioner", "parameters", "reclaimPolicy", "volumeBindingMode", "mountOptions")
AGENT_ATTACHER = "kubevisor.io/agent"
"""``spec.attacher`` of the VolumeAttachments kubevisor's node agent writes."""


class StorageClass(KubeModel):
    """A class of dynamically provisioned volumes."""

    api_version: str | None = f"{GROUP}/{VERSION}"
    """storage.k8s.io/v1."""
    kind: str | None = "StorageClass"
    """StorageClass."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    provisioner: str
    """The provisioner that creates volumes of this class (``kubevisor.io/local``)."""
    parameters: dict[str, str] | None = None
    """Provisioner-specific settings."""
    reclaim_policy: str | None = None
    """What happens to a volume whose claim is deleted: Delete (the default) or Retain."""
    mount_options: list[str] | None = None
    """Mount options of the volumes (unused by file-backed volumes)."""
    allow_volume_expansion: bool | None = Field(default=None)
    """Whether claims of this class may grow."""
    volume_binding_mode: str | None = None
    """Immediate (the default): provisioned when the claim is created; WaitForFirstConsumer: once a VMI
    (or an import) using the claim is scheduled to a node."""
    allowed_topologies: list[dict[str, object]] | None = None
    """Topologies volumes may be provisioned in (unused)."""


class VolumeAttachmentSource(KubeModel):
    """What is attached: a PersistentVolume (by name) or an inline volume."""

    persistent_volume_name: str | None = None
    """The PersistentVolume attached."""
    inline_volume_spec: dict[str, Any] | None = None
    """A PersistentVolume spec of an inline volume (from a migrated in-tree volume; unused by kubevisor)."""


class VolumeAttachmentSpec(KubeModel):
    """Which volume is attached to which node, by whom (immutable)."""

    attacher: str
    """Who attaches it (a CSI driver's name; kubevisor's node agent: ``kubevisor.io/agent``)."""
    source: VolumeAttachmentSource
    """The volume attached."""
    node_name: str
    """The node it is attached to."""


class VolumeError(KubeModel):
    """An error of an attach or detach operation."""

    time: str | None = None
    """When it happened."""
    message: str | None = None
    """What went wrong."""
    error_code: int | None = None
    """A numeric error code (gRPC's for CSI drivers)."""


class VolumeAttachmentStatus(KubeModel):
    """What the attacher reports (owner: the attacher)."""

    attached: bool = False
    """Whether the volume is attached (kubevisor: granted to the node, written right after the create)."""
    attachment_metadata: dict[str, str] | None = None
    """What the attacher tells about the attachment (kubevisor: nothing yet)."""
    attach_error: VolumeError | None = None
    """The last attach error."""
    detach_error: VolumeError | None = None
    """The last detach error."""


class VolumeAttachment(KubeModel):
    """The attachment of a volume to a node (cluster-scoped)."""

    api_version: str | None = f"{GROUP}/{VERSION}"
    """storage.k8s.io/v1."""
    kind: str | None = "VolumeAttachment"
    """VolumeAttachment."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VolumeAttachmentSpec
    """What is attached where."""
    status: VolumeAttachmentStatus | None = None
    """The attacher's report."""


def _default(obj: Obj) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")


def _validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    errors: list[FieldError] = []
    if obj.get("reclaimPolicy") not in RECLAIM_POLICIES:
        errors.append(
            FieldError(
                "reclaimPolicy",
                f"Unsupported value: {obj.get('reclaimPolicy')!r}: supported values: Delete, Retain, Recycle",
                "FieldValueNotSupported",
            )
        )
    if obj.get("volumeBindingMode") not in BINDING_MODES:
        errors.append(
            FieldError(
                "volumeBindingMode",
                f"Unsupported value: {obj.get('volumeBindingMode')!r}: supported values: Immediate, "
                "WaitForFirstConsumer",
                "FieldValueNotSupported",
            )
        )
    if not obj.get("provisioner"):
        errors.append(FieldError("provisioner", "Required value: name the provisioner", "FieldValueRequired"))
    if old is not None:
        for key in IMMUTABLE:
            if obj.get(key) != old.get(key):
                errors.append(FieldError(key, "field is immutable: delete and recreate the class"))
    return errors


def is_default(storage_class: Obj) -> bool:
    """Whether ``storage_class`` carries :data:`DEFAULT_CLASS_ANNOTATION` = ``"true"``."""
    annotations = (storage_class.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true"


def _allow_expansion(obj: Obj) -> str:
    return "true" if obj.get("allowVolumeExpansion") else "false"


def _validate_attachment(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    if not spec.get("attacher"):
        errors.append(FieldError("spec.attacher", "Required value: name the attacher", "FieldValueRequired"))
    if not spec.get("nodeName"):
        errors.append(FieldError("spec.nodeName", "Required value: name the node", "FieldValueRequired"))
    source = spec.get("source") or {}
    if bool(source.get("persistentVolumeName")) == bool(source.get("inlineVolumeSpec")):
        errors.append(
            FieldError(
                "spec.source",
                "Required value: exactly one of persistentVolumeName and inlineVolumeSpec must be set",
                "FieldValueRequired",
            )
        )
    if old is not None and spec != (old.get("spec") or {}):
        errors.append(FieldError("spec", "field is immutable: delete and recreate the attachment"))
    return errors


def _attached(obj: Obj) -> str:
    return "true" if (obj.get("status") or {}).get("attached") else "false"


KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "StorageClass",
        "storageclasses",
        StorageClass,
        namespaced=False,
        short_names=("sc",),
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Provisioner", json_path=".provisioner"),
            PrinterColumn("ReclaimPolicy", json_path=".reclaimPolicy"),
            PrinterColumn("VolumeBindingMode", json_path=".volumeBindingMode"),
            PrinterColumn("AllowVolumeExpansion", value=_allow_expansion),
            PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        ),
        defaulter=_default,
        validator=_validate,
    ),
    Kind(
        GROUP,
        VERSION,
        "VolumeAttachment",
        "volumeattachments",
        VolumeAttachment,
        namespaced=False,
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Attacher", json_path=".spec.attacher"),
            PrinterColumn("PV", json_path=".spec.source.persistentVolumeName"),
            PrinterColumn("Node", json_path=".spec.nodeName"),
            PrinterColumn("Attached", value=_attached),
            PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        ),
        field_selectors={"spec.nodeName": "spec.nodeName", "spec.attacher": "spec.attacher"},
        validator=_validate_attachment,
    ),
]
