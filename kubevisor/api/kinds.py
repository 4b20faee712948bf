"""Registry entries of the built-in kinds (core, coordination, rbac, authorization, authentication).

Later API groups (kubevirt.io, cdi.kubevirt.io, ...) add their own ``KINDS`` lists and are collected in
:func:`all_kinds`.
"""

from __future__ import annotations

import base64
import binascii

from kubevisor.api import (
    authz,
    cdi,
    claimupdates,
    coordination,
    core,
    export,
    instancetype,
    kubevirt,
    pool,
    rbac,
    snapshot,
    storage,
    upload,
    volumesnapshot,
)
from kubevisor.api.registry import Kind, Obj, PrinterColumn
from kubevisor.api.validation import FieldError

AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


def _count_data(obj: Obj) -> int:
    return len(obj.get("data") or {}) + len(obj.get("binaryData") or {})


def _namespace_default(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("finalizers") is None:
        spec["finalizers"] = ["kubernetes"]
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Active")


def _secret_default(obj: Obj) -> None:
    string_data = obj.pop("stringData", None)
    if string_data:
        data = obj.setdefault("data", {}) or {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    obj.setdefault("type", "Opaque")


def _secret_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    errors = []
    for key, value in (obj.get("data") or {}).items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            errors.append(FieldError(f"data[{key}]", "must be base64-encoded"))
    if old is not None and old.get("type") != obj.get("type"):
        errors.append(FieldError("type", "field is immutable"))
    return errors + _immutable_data(obj, old)


def _immutable_data(obj: Obj, old: Obj | None) -> list[FieldError]:
    if old is None or not old.get("immutable"):
        return []
    errors = []
    for key in ("data", "binaryData"):
        if (obj.get(key) or {}) != (old.get(key) or {}):
            errors.append(
                FieldError(key, "field is immutable when `immutable` is set", "FieldValueForbidden")
            )
    if not obj.get("immutable"):
        errors.append(
            FieldError("immutable", "field is immutable when `immutable` is set", "FieldValueForbidden")
        )
    return errors


def _configmap_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    return _immutable_data(obj, old)


def _binding_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    if old is not None and old.get("roleRef") != obj.get("roleRef"):
        return [FieldError("roleRef", "cannot change roleRef", "FieldValueInvalid")]
    return []


def _node_ready(obj: Obj) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = "Ready" if cond.get("status") == "True" else "NotReady"
            break
    else:
        ready = "Unknown"
    if (obj.get("spec") or {}).get("unschedulable"):
        ready += ",SchedulingDisabled"
    return ready


def _node_roles(obj: Obj) -> str:
    prefix = "node-role.kubernetes.io/"
    labels = (obj.get("metadata") or {}).get("labels") or {}
    roles = sorted(k[len(prefix) :] for k in labels if k.startswith(prefix))
    return ",".join(roles) or "<none>"


def _event_object(obj: Obj) -> str:
    ref = obj.get("involvedObject") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


_ACCESS_MODES = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}


def _access_modes(modes: object) -> str:
    """kubectl's short form of access modes: ``RWO,RWX``."""
    return ",".join(_ACCESS_MODES.get(str(m), str(m)) for m in modes or []) if isinstance(modes, list) else ""


def _claim(obj: Obj) -> str:
    ref = (obj.get("spec") or {}).get("claimRef") or {}
    return f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref.get("name") else ""


def _claim_default(obj: Obj) -> None:
    """Kubernetes' defaults for a claim (and a volume): Filesystem mode, phase Pending."""
    spec = obj.get("spec") or {}
    spec.setdefault("volumeMode", "Filesystem")
    obj["spec"] = spec
    status = obj.get("status") or {}
    status.setdefault("phase", "Pending")
    obj["status"] = status


def _volume_default(obj: Obj) -> None:
    """Kubernetes' defaults for a volume: those of a claim, and Retain (a volume created by hand)."""
    _claim_default(obj)
    obj["spec"].setdefault("persistentVolumeReclaimPolicy", "Retain")


def _storage(sizes: object) -> str:
    return str((sizes or {}).get("storage", "")) if isinstance(sizes, dict) else ""


CORE = "rbac.authorization.k8s.io"

KINDS: list[Kind] = [
    Kind(
        "",
        "v1",
        "Namespace",
        "namespaces",
        core.Namespace,
        namespaced=False,
        short_names=("ns",),
        subresources=("finalize",),
        strategic_merge=True,
        printer_columns=(PrinterColumn("Status", json_path=".status.phase"), AGE),
        defaulter=_namespace_default,
        name_rule="label",
        spec_fields=("spec",),
    ),
    Kind(
        "",
        "v1",
        "Node",
        "nodes",
        core.Node,
        namespaced=False,
        short_names=("no",),
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Status", value=_node_ready),
            PrinterColumn("Roles", value=_node_roles),
            AGE,
            PrinterColumn("Version", json_path=".status.nodeInfo.kubeletVersion"),
            PrinterColumn(
                "Internal-IP", json_path=".status.addresses[?(@.type=='InternalIP')].address", priority=1
            ),
            PrinterColumn("Kernel-Version", json_path=".status.nodeInfo.kernelVersion", priority=1),
        ),
        field_selectors={"spec.unschedulable": "spec.unschedulable"},
    ),
    Kind(
        "",
        "v1",
        "Event",
        "events",
        core.Event,
        short_names=("ev",),
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Last Seen", "date", ".lastTimestamp"),
            PrinterColumn("Type", json_path=".type"),
            PrinterColumn("Reason", json_path=".reason"),
            PrinterColumn("Object", value=_event_object),
            PrinterColumn("Message", json_path=".message"),
        ),
        field_selectors={
            "involvedObject.kind": "involvedObject.kind",
            "involvedObject.namespace": "involvedObject.namespace",
            "involvedObject.name": "involvedObject.name",
            "involvedObject.uid": "involvedObject.uid",
            "involvedObject.apiVersion": "involvedObject.apiVersion",
            "involvedObject.resourceVersion": "involvedObject.resourceVersion",
            "involvedObject.fieldPath": "involvedObject.fieldPath",
            "reason": "reason",
            "type": "type",
            "source": "source.component",
            "reportingComponent": "reportingComponent",
        },
    ),
    Kind(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        core.ConfigMap,
        short_names=("cm",),
        strategic_merge=True,
        printer_columns=(PrinterColumn("Data", "integer", value=_count_data), AGE),
        validator=_configmap_validate,
    ),
    Kind(
        "",
        "v1",
        "Secret",
        "secrets",
        core.Secret,
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Type", json_path=".type"),
            PrinterColumn("Data", "integer", value=_count_data),
            AGE,
        ),
        field_selectors={"type": "type"},
        defaulter=_secret_default,
        validator=_secret_validate,
    ),
    Kind(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        core.ServiceAccount,
        short_names=("sa",),
        strategic_merge=True,
        subresources=("token",),
        printer_columns=(
            PrinterColumn("Secrets", "integer", value=lambda o: len(o.get("secrets") or [])),
            AGE,
        ),
    ),
    Kind(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        core.PersistentVolume,
        namespaced=False,
        short_names=("pv",),
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Capacity", value=lambda o: _storage((o.get("spec") or {}).get("capacity"))),
            PrinterColumn(
                "Access Modes", value=lambda o: _access_modes((o.get("spec") or {}).get("accessModes"))
            ),
            PrinterColumn("Reclaim Policy", json_path=".spec.persistentVolumeReclaimPolicy"),
            PrinterColumn("Status", json_path=".status.phase"),
            PrinterColumn("Claim", value=_claim),
            PrinterColumn("StorageClass", json_path=".spec.storageClassName"),
            PrinterColumn("VolumeAttributesClass", json_path=".spec.volumeAttributesClassName"),
            PrinterColumn("Reason", json_path=".status.reason"),
            AGE,
            PrinterColumn("VolumeMode", json_path=".spec.volumeMode", priority=1),
        ),
        defaulter=_volume_default,
    ),
    Kind(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        core.PersistentVolumeClaim,
        short_names=("pvc",),
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Status", json_path=".status.phase"),
            PrinterColumn("Volume", json_path=".spec.volumeName"),
            PrinterColumn("Capacity", value=lambda o: _storage((o.get("status") or {}).get("capacity"))),
            PrinterColumn(
                "Access Modes", value=lambda o: _access_modes((o.get("status") or {}).get("accessModes"))
            ),
            PrinterColumn("StorageClass", json_path=".spec.storageClassName"),
            PrinterColumn("VolumeAttributesClass", json_path=".spec.volumeAttributesClassName"),
            AGE,
            PrinterColumn("VolumeMode", json_path=".spec.volumeMode", priority=1),
        ),
        defaulter=_claim_default,
        validator=claimupdates.validate_claim_update,
    ),
    Kind(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        coordination.Lease,
        strategic_merge=True,
        printer_columns=(PrinterColumn("Holder", json_path=".spec.holderIdentity"), AGE),
    ),
    Kind(
        CORE,
        "v1",
        "Role",
        "roles",
        rbac.Role,
        name_rule="path",
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Created At", "date", ".metadata.creationTimestamp", format="date-time"),
        ),
    ),
    Kind(
        CORE,
        "v1",
        "ClusterRole",
        "clusterroles",
        rbac.ClusterRole,
        name_rule="path",
        namespaced=False,
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Created At", "date", ".metadata.creationTimestamp", format="date-time"),
        ),
    ),
    Kind(
        CORE,
        "v1",
        "RoleBinding",
        "rolebindings",
        rbac.RoleBinding,
        name_rule="path",
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Role", value=lambda o: f"{o['roleRef']['kind']}/{o['roleRef']['name']}"),
            AGE,
        ),
        validator=_binding_validate,
    ),
    Kind(
        CORE,
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        rbac.ClusterRoleBinding,
        name_rule="path",
        namespaced=False,
        strategic_merge=True,
        printer_columns=(
            PrinterColumn("Role", value=lambda o: f"{o['roleRef']['kind']}/{o['roleRef']['name']}"),
            AGE,
        ),
        validator=_binding_validate,
    ),
    Kind(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        authz.SelfSubjectAccessReview,
        namespaced=False,
        stored=False,
        verbs=("create",),
    ),
    Kind(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        authz.SelfSubjectReview,
        namespaced=False,
        stored=False,
        verbs=("create",),
    ),
]


def all_kinds() -> list[Kind]:
    """Every kind kubevisor serves, core group first, then KubeVirt's and CDI's groups."""
    return [
        *KINDS,
        *storage.KINDS,
        *kubevirt.KINDS,
        *instancetype.KINDS,
        *pool.KINDS,
        *snapshot.KINDS,
        *volumesnapshot.KINDS,
        *export.KINDS,
        *cdi.KINDS,
        *upload.KINDS,
    ]
