"""storage.k8s.io/v1 kinds: StorageClass.

JSON names follow Kubernetes' ``k8s.io/api/storage/v1``. A StorageClass names the provisioner that creates
PersistentVolumes for claims of the class, what happens to a volume whose claim is deleted
(``reclaimPolicy``) and when a claim is provisioned (``volumeBindingMode``). kubevisor's own provisioner is
:data:`LOCAL_PROVISIONER` (a raw image per volume under a node's ``DATA/volumes``).

As in Kubernetes, the fields of a class cannot change after creation (but ``allowVolumeExpansion``,
labels and annotations); the class marked with :data:`DEFAULT_CLASS_ANNOTATION` = ``"true"`` is the one
claims without ``storageClassName`` get from kubevisor's DataVolume controller.
"""

from __future__ import annotations

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
]
