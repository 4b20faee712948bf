"""cdi.kubevirt.io/v1beta1 kinds: DataVolume, DataSource, DataImportCron, StorageProfile.

JSON names follow CDI's ``staging/src/kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1/
types.go``. A DataVolume is a persistent volume claim plus where its data comes from (an HTTP URL, a
registry image, another claim, an upload, a blank image); VirtualMachines embed DataVolume specs in
``spec.dataVolumeTemplates``, so :class:`DataVolumeSpec` is shared with :mod:`kubevisor.api.kubevirt`.

Validation mirrors what CDI's webhook rejects without looking anything up: a DataVolume names exactly one
of ``source`` / ``sourceRef``, a source names exactly one kind of source, and exactly one of ``pvc`` /
``storage`` is given (``pvc`` with a size). Status fields are owned by the DataVolume controller.
A DataImportCron needs a registry source (CDI polls only registries), a valid five-field cron schedule
(or ``""``: never poll), ``garbageCollect`` Outdated or Never, and a ``managedDataSource``; a DataSource
may not point at itself.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from kubevisor.api.base import KubeModel
from kubevisor.api.core import (
    PersistentVolumeClaimSpec,
    TypedLocalObjectReference,
    TypedObjectReference,
    VolumeResourceRequirements,
)
from kubevisor.api.meta import LabelSelector, ObjectMeta
from kubevisor.api.registry import Kind, Obj, PrinterColumn
from kubevisor.api.validation import FieldError, dns1123_label

GROUP = "cdi.kubevirt.io"
VERSION = "v1beta1"

# Annotations on a DataVolume's claim: the hand-off between the DataVolume controller (which writes the
# ``storage.import.*`` ones) and the node agent that imports (which writes ``storage.pod.*`` and progress),
# named as CDI names them on its importer's claim.
IMPORT_SOURCE_ANNOTATION = "cdi.kubevirt.io/storage.import.source"
"""``http``, ``s3``, ``blank`` or ``registry``: the claim is filled by an import; it is not usable before
:data:`POD_PHASE_ANNOTATION` says ``Succeeded``."""
IMPORT_ENDPOINT_ANNOTATION = "cdi.kubevirt.io/storage.import.endpoint"
"""The URL (http, s3) or image reference (registry)."""
IMPORT_SECRET_ANNOTATION = "cdi.kubevirt.io/storage.import.secretName"
"""Secret with ``accessKeyId`` and ``secretKey`` (http basic auth, S3 keys, registry login)."""
IMPORT_CERT_ANNOTATION = "cdi.kubevirt.io/storage.import.certConfigMap"
"""ConfigMap whose ``ca.pem`` (or only key) holds CA certificates to trust."""
IMPORT_CHECKSUM_ANNOTATION = "kubevisor.io/import-checksum"
"""``<algorithm>:<hex>`` the source's bytes must match (``spec.source.http.checksum``)."""
POD_PHASE_ANNOTATION = "cdi.kubevirt.io/storage.pod.phase"
"""The import's state: ``Running``, ``Succeeded`` or ``Failed``; written by the node agent."""
POD_RESTARTS_ANNOTATION = "cdi.kubevirt.io/storage.pod.restarts"
"""Times the import was retried after a transient error; written by the node agent."""
RUNNING_REASON_ANNOTATION = "cdi.kubevirt.io/storage.condition.running.reason"
"""Why the import is not running (``Error``, or the error's class); written by the node agent."""
RUNNING_MESSAGE_ANNOTATION = "cdi.kubevirt.io/storage.condition.running.message"
"""The last error of the import, if any; written by the node agent."""
PROGRESS_ANNOTATION = "kubevisor.io/import-progress"
"""The import's progress as ``status.progress`` shows it (``"45.67%"``); written by the node agent."""
IMPORT_NODE_LABEL = "kubevisor.io/import-node"
"""On a claim to import into: the node holding its volume, whose agent imports (it selects on it)."""

# DataImportCron bookkeeping, named as CDI names it (``pkg/common`` and the DataImportCron controller).
DATA_IMPORT_CRON_LABEL = "cdi.kubevirt.io/dataImportCron"
"""On the DataVolumes, claims and DataSource a DataImportCron manages: the cron's name."""
DATA_IMPORT_CRON_CLEANUP_LABEL = "cdi.kubevirt.io/dataImportCron.cleanup"
"""``true`` on what is deleted with its DataImportCron (``retentionPolicy: None``)."""
NEXT_CRON_TIME_ANNOTATION = "cdi.kubevirt.io/storage.import.nextCronTime"
"""On a DataImportCron: when its source is polled next (RFC 3339); set it to now to poll at once."""
LAST_CRON_TIME_ANNOTATION = "cdi.kubevirt.io/storage.import.lastCronTime"
"""On a DataImportCron: when its source was last polled (RFC 3339)."""
DESIRED_DIGEST_ANNOTATION = "cdi.kubevirt.io/storage.import.sourceDesiredDigest"
"""On a DataImportCron: the digest its source had at the last poll (what should be imported)."""
LAST_USE_TIME_ANNOTATION = "cdi.kubevirt.io/storage.import.lastUseTime"
"""On a DataImportCron's DataVolumes and claims: when it last created or used them (garbage collection
keeps the most recently used)."""
IMMEDIATE_BINDING_ANNOTATION = "cdi.kubevirt.io/storage.bind.immediate.requested"
"""On a DataVolume: bind its claim at once even on a WaitForFirstConsumer class."""
MAX_DATA_SOURCE_DEPTH = 1
"""A DataSource may point at another DataSource that points at a claim or snapshot, no further (CDI)."""

# --- DataVolume ----------------------------------------------------------------------------------


class DataVolumeSourceHTTP(KubeModel):
    """Import from an http(s) URL."""

    url: str
    """URL of the image (raw, qcow2, optionally compressed with gz or xz)."""
    secret_ref: str | None = None
    """Secret with accessKeyId (user name) and secretKey (password) for basic auth."""
    cert_config_map: str | None = None
    """ConfigMap with a CA bundle to verify the server."""
    extra_headers: list[str] | None = None
    """Extra HTTP headers sent with the request."""
    secret_extra_headers: list[str] | None = None
    """Secrets each holding an extra HTTP header with sensitive content."""
    checksum: str | None = None
    """Expected checksum of the file as served, ``algorithm:hex`` (md5, sha1, sha256 or sha512); the
    import fails when the downloaded bytes do not match."""


class DataVolumeSourceS3(KubeModel):
    """Import from an S3 object."""

    url: str
    """URL of the S3 object."""
    secret_ref: str | None = None
    """Secret with the access key id and secret key."""
    cert_config_map: str | None = None
    """ConfigMap with a CA bundle to verify the endpoint."""


class DataVolumeSourceGCS(KubeModel):
    """Import from a Google Cloud Storage object."""

    url: str
    """URL of the GCS object."""
    secret_ref: str | None = None
    """Secret with the service account key."""


class PlatformOptions(KubeModel):
    """Which platform of a multi-architecture image to import."""

    architecture: str | None = None
    """Image architecture, e.g. amd64."""


class DataVolumeSourceRegistry(KubeModel):
    """Import the disk image inside a container image."""

    url: str | None = None
    """Image URL with its scheme: docker://... or oci-archive://..."""
    image_stream: str | None = None
    """OpenShift image stream to import instead of a URL."""
    pull_method: str | None = None
    """pod (default: the importer pulls) or node (the node's container runtime pulls)."""
    secret_ref: str | None = None
    """Secret with registry credentials."""
    cert_config_map: str | None = None
    """ConfigMap with the registry's CA bundle."""
    platform: PlatformOptions | None = None
    """Platform to select in a multi-architecture image."""


class DataVolumeSourcePVC(KubeModel):
    """Clone an existing persistent volume claim."""

    namespace: str
    """Namespace of the source claim."""
    name: str
    """Name of the source claim."""


class DataVolumeSourceSnapshot(KubeModel):
    """Restore from a VolumeSnapshot."""

    namespace: str
    """Namespace of the source snapshot."""
    name: str
    """Name of the source snapshot."""


class DataVolumeSourceUpload(KubeModel):
    """Wait for an upload through the upload proxy (``virtctl image-upload``)."""


class DataVolumeBlankImage(KubeModel):
    """Create an empty raw disk image."""


class DataVolumeSourceImageIO(KubeModel):
    """Import a disk from oVirt's imageio."""

    url: str
    """URL of the oVirt engine."""
    disk_id: str
    """ID of the disk to import."""
    secret_ref: str | None = None
    """Secret with the engine credentials."""
    cert_config_map: str | None = None
    """ConfigMap with the engine's CA certificate."""
    insecure_skip_verify: bool | None = None
    """Skip verifying the engine's certificate."""


class DataVolumeSourceVDDK(KubeModel):
    """Import a disk of a VMware VM with VDDK."""

    url: str | None = None
    """URL of the vCenter or ESXi host."""
    uuid: str | None = None
    """UUID of the VM."""
    backing_file: str | None = None
    """Path of the virtual disk on the host."""
    thumbprint: str | None = None
    """Certificate thumbprint of the host."""
    secret_ref: str | None = None
    """Secret with the host credentials."""
    init_image_url: str | None = Field(default=None, alias="initImageURL")
    """Image with the VDDK library."""
    extra_args: str | None = None
    """ConfigMap with extra VDDK arguments."""


class DataVolumeSource(KubeModel):
    """Where a DataVolume's data comes from: exactly one field is set."""

    http: DataVolumeSourceHTTP | None = None
    """An http(s) URL."""
    s3: DataVolumeSourceS3 | None = None
    """An S3 object."""
    gcs: DataVolumeSourceGCS | None = None
    """A Google Cloud Storage object."""
    registry: DataVolumeSourceRegistry | None = None
    """A container image holding a disk image."""
    pvc: DataVolumeSourcePVC | None = None
    """Another persistent volume claim (a clone)."""
    upload: DataVolumeSourceUpload | None = None
    """An upload through the upload proxy."""
    blank: DataVolumeBlankImage | None = None
    """An empty image."""
    imageio: DataVolumeSourceImageIO | None = None
    """An oVirt disk."""
    vddk: DataVolumeSourceVDDK | None = None
    """A VMware disk."""
    snapshot: DataVolumeSourceSnapshot | None = None
    """A VolumeSnapshot."""


class DataVolumeSourceRef(KubeModel):
    """An indirect source: a DataSource that names the actual source."""

    kind: str
    """DataSource."""
    namespace: str | None = None
    """Namespace of the DataSource; defaults to the DataVolume's."""
    name: str
    """Name of the DataSource."""


class StorageSpec(KubeModel):
    """Storage requested with CDI's defaults: fields left out come from the StorageProfile."""

    access_modes: list[str] | None = None
    """Access modes; default from the storage profile."""
    selector: LabelSelector | None = None
    """Label query over volumes to bind to."""
    resources: VolumeResourceRequirements | None = None
    """Requested size; may be left out to use the source's size."""
    volume_name: str | None = None
    """Persistent volume to bind to."""
    storage_class_name: str | None = None
    """Storage class; default: the cluster default."""
    volume_mode: str | None = None
    """Filesystem or Block; default from the storage profile."""
    data_source: TypedLocalObjectReference | None = None
    """Object the claim is populated from."""
    data_source_ref: TypedObjectReference | None = None
    """Like dataSource, possibly in another namespace."""


class DataVolumeCheckpoint(KubeModel):
    """One stage of a multi-stage (warm) import."""

    previous: str
    """Snapshot of the previous checkpoint."""
    current: str
    """Snapshot of this checkpoint."""


class DataVolumeSpec(KubeModel):
    """What a DataVolume provides: storage, and the data to put in it."""

    source: DataVolumeSource | None = None
    """Where the data comes from; mutually exclusive with sourceRef."""
    source_ref: DataVolumeSourceRef | None = None
    """A DataSource naming where the data comes from; mutually exclusive with source."""
    pvc: PersistentVolumeClaimSpec | None = None
    """The claim to create, as is; mutually exclusive with storage."""
    storage: StorageSpec | None = None
    """The claim to create, completed with CDI's defaults; mutually exclusive with pvc."""
    priority_class_name: str | None = None
    """Priority class of the importer, cloner or upload pod."""
    content_type: str | None = None
    """kubevirt (a disk image, the default) or archive (a tar extracted onto a filesystem)."""
    checkpoints: list[DataVolumeCheckpoint] | None = None
    """Stages of a multi-stage import."""
    final_checkpoint: bool | None = None
    """Whether the current checkpoint is the last one."""
    preallocation: bool | None = None
    """Allocate the whole volume in advance."""


class DataVolumeCondition(KubeModel):
    """A condition of a DataVolume: Ready, Bound or Running."""

    type: str
    """Ready, Bound or Running."""
    status: str
    """True, False or Unknown."""
    last_transition_time: str | None = None
    """When the status last changed."""
    last_heartbeat_time: str | None = None
    """When the condition was last checked."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class DataVolumeStatus(KubeModel):
    """Observed state of a DataVolume; owner: the DataVolume controller."""

    claim_name: str | None = None
    """Name of the persistent volume claim holding the data."""
    phase: str | None = None
    """Pending, PVCBound, ImportScheduled, ImportInProgress, CloneInProgress, UploadReady, Succeeded, ..."""
    progress: str | None = None
    """Transfer progress, e.g. "45.0%", or N/A."""
    restart_count: int | None = None
    """How often the populating pod restarted."""
    conditions: list[DataVolumeCondition] | None = None
    """Ready, Bound and Running conditions."""


class DataVolume(KubeModel):
    """A persistent volume claim populated with data: an import, a clone, an upload or a blank image."""

    api_version: str | None = f"{GROUP}/{VERSION}"
    """cdi.kubevirt.io/v1beta1."""
    kind: str | None = "DataVolume"
    """DataVolume."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: DataVolumeSpec
    """The storage and the source of its data."""
    status: DataVolumeStatus | None = None
    """Observed state."""


# --- DataSource ----------------------------------------------------------------------------------


class DataSourceRefSourceDataSource(KubeModel):
    """Another DataSource this one points at."""

    namespace: str
    """Namespace of the DataSource."""
    name: str
    """Name of the DataSource."""


class DataSourceSource(KubeModel):
    """What a DataSource points at: exactly one field is set."""

    pvc: DataVolumeSourcePVC | None = None
    """A persistent volume claim."""
    snapshot: DataVolumeSourceSnapshot | None = None
    """A VolumeSnapshot."""
    data_source: DataSourceRefSourceDataSource | None = None
    """Another DataSource."""


class DataSourceSpec(KubeModel):
    """What a DataSource points at."""

    source: DataSourceSource
    """The claim, snapshot or DataSource holding the data."""


class ConditionState(KubeModel):
    """A condition of a DataSource or DataImportCron."""

    type: str
    """Condition type, e.g. Ready, UpToDate, Progressing."""
    status: str
    """True, False or Unknown."""
    last_transition_time: str | None = None
    """When the status last changed."""
    last_heartbeat_time: str | None = None
    """When the condition was last checked."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class DataSourceStatus(KubeModel):
    """Observed state of a DataSource; owner: the DataSource controller."""

    source: DataSourceSource | None = None
    """The resolved source, after following DataSource references."""
    conditions: list[ConditionState] | None = None
    """Ready condition."""


class DataSource(KubeModel):
    """A named, stable pointer at a golden image (a claim or snapshot), used by DataVolume sourceRefs."""

    api_version: str | None = f"{GROUP}/{VERSION}"
    """cdi.kubevirt.io/v1beta1."""
    kind: str | None = "DataSource"
    """DataSource."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: DataSourceSpec
    """What the DataSource points at."""
    status: DataSourceStatus | None = None
    """Observed state."""


# --- DataImportCron ------------------------------------------------------------------------------


class DataVolumeTemplate(KubeModel):
    """A DataVolume to create: metadata and spec."""

    api_version: str | None = None
    """cdi.kubevirt.io/v1beta1."""
    kind: str | None = None
    """DataVolume."""
    metadata: ObjectMeta | None = None
    """Metadata of the DataVolumes created."""
    spec: DataVolumeSpec
    """Spec of the DataVolumes created."""
    status: dict[str, Any] | None = None
    """Ignored."""


class ImportStatus(KubeModel):
    """One import a DataImportCron runs (CDI spells these two JSON names with capitals)."""

    data_volume_name: str = Field(alias="DataVolumeName")
    """Name of the DataVolume doing the import."""
    digest: str | None = Field(default=None, alias="Digest")
    """Digest of the imported image."""


class DataImportCronSpec(KubeModel):
    """Polls a source on a schedule and keeps a DataSource pointing at the latest import."""

    template: DataVolumeTemplate
    """The DataVolume each import creates."""
    schedule: str
    """Cron schedule of the polls."""
    garbage_collect: str | None = None
    """Outdated (the default: delete old imports) or Never."""
    imports_to_keep: int | None = None
    """How many imports to keep (default 3)."""
    managed_data_source: str
    """Name of the DataSource kept pointing at the latest import."""
    retention_policy: str | None = None
    """None: delete the imports and the DataSource with the cron; anything else (CDI's value is All, the
    default): keep them."""
    service_account_name: str | None = None
    """Service account the imports run as."""


class DataImportCronStatus(KubeModel):
    """Observed state of a DataImportCron; owner: the DataImportCron controller."""

    current_imports: list[ImportStatus] | None = None
    """Imports in progress."""
    last_imported_pvc: DataVolumeSourcePVC | None = Field(default=None, alias="lastImportedPVC")
    """The last imported claim."""
    last_execution_timestamp: str | None = None
    """When the source was last polled."""
    last_import_timestamp: str | None = None
    """When the last import finished."""
    source_format: str | None = None
    """pvc or snapshot: what the imports produce."""
    conditions: list[ConditionState] | None = None
    """UpToDate and Progressing conditions."""


class DataImportCron(KubeModel):
    """Imports the latest version of an image on a schedule (golden images)."""

    api_version: str | None = f"{GROUP}/{VERSION}"
    """cdi.kubevirt.io/v1beta1."""
    kind: str | None = "DataImportCron"
    """DataImportCron."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: DataImportCronSpec
    """What to import and when."""
    status: DataImportCronStatus | None = None
    """Observed state."""


# --- StorageProfile ------------------------------------------------------------------------------


class ClaimPropertySet(KubeModel):
    """Access modes and volume mode that work together on a storage class."""

    access_modes: list[str] | None = None
    """Access modes."""
    volume_mode: str | None = None
    """Filesystem or Block."""


class StorageProfileSpec(KubeModel):
    """Settings an administrator gives for a storage class."""

    clone_strategy: str | None = None
    """copy, snapshot or csi-clone."""
    claim_property_sets: list[ClaimPropertySet] | None = None
    """Preferred access and volume modes."""
    data_import_cron_source_format: str | None = None
    """pvc or snapshot."""
    snapshot_class: str | None = None
    """VolumeSnapshotClass to use."""
    min_size_overhead: str | None = None
    """Space reserved on filesystem volumes."""


class StorageProfileStatus(KubeModel):
    """What CDI uses for a storage class; owner: the StorageProfile controller."""

    storage_class: str | None = None
    """The storage class this profile describes."""
    provisioner: str | None = None
    """The storage class's provisioner."""
    clone_strategy: str | None = None
    """Clone strategy in effect."""
    claim_property_sets: list[ClaimPropertySet] | None = None
    """Access and volume modes in effect."""
    data_import_cron_source_format: str | None = None
    """pvc or snapshot."""
    snapshot_class: str | None = None
    """VolumeSnapshotClass in effect."""
    min_size_overhead: str | None = None
    """Space reserved on filesystem volumes."""


class StorageProfile(KubeModel):
    """CDI's recommended claim settings for one storage class (one per storage class, same name)."""

    api_version: str | None = f"{GROUP}/{VERSION}"
    """cdi.kubevirt.io/v1beta1."""
    kind: str | None = "StorageProfile"
    """StorageProfile."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: StorageProfileSpec | None = None
    """Administrator's settings."""
    status: StorageProfileStatus | None = None
    """Settings in effect."""


# --- validation ----------------------------------------------------------------------------------

_CHECKSUM = re.compile(
    r"^(?:md5:[0-9a-fA-F]{32}|sha1:[0-9a-fA-F]{40}|sha256:[0-9a-fA-F]{64}|sha512:[0-9a-fA-F]{128})$"
)
"""``spec.source.http.checksum`` (CDI: ``algorithm:hash``, md5, sha1, sha256 or sha512)."""
SOURCE_KINDS = ("http", "s3", "gcs", "registry", "pvc", "upload", "blank", "imageio", "vddk", "snapshot")


def validate_data_volume_spec(spec: Obj, path: str) -> list[FieldError]:
    """What CDI's webhook rejects in a DataVolume spec without looking anything up."""
    errors: list[FieldError] = []
    source, source_ref = spec.get("source"), spec.get("sourceRef")
    if source is None and source_ref is None:
        errors.append(
            FieldError(
                f"{path}.source",
                "Data volume should have either Source or SourceRef: set one of source or sourceRef",
                "FieldValueRequired",
            )
        )
    elif source is not None and source_ref is not None:
        errors.append(
            FieldError(f"{path}.source", "Data volume cannot have both Source and SourceRef: set only one")
        )
    if source is not None:
        kinds = [k for k in SOURCE_KINDS if source.get(k) is not None]
        if len(kinds) != 1:
            errors.append(
                FieldError(
                    f"{path}.source",
                    f"Data volume must have exactly one source type set, found {len(kinds)}: "
                    f"use one of {', '.join(SOURCE_KINDS)}",
                )
            )
    if source_ref is not None and source_ref.get("kind") != "DataSource":
        errors.append(
            FieldError(
                f"{path}.sourceRef.kind",
                f"Unsupported sourceRef kind {source_ref.get('kind')!r}: only DataSource is supported",
                "FieldValueNotSupported",
            )
        )
    pvc, storage = spec.get("pvc"), spec.get("storage")
    if pvc is None and storage is None:
        errors.append(
            FieldError(
                f"{path}.pvc",
                "Missing Data volume PVC: set one of pvc or storage",
                "FieldValueRequired",
            )
        )
    elif pvc is not None and storage is not None:
        errors.append(FieldError(f"{path}.pvc", "Data volume cannot have both PVC and Storage: set only one"))
    elif pvc is not None:
        requests = (pvc.get("resources") or {}).get("requests") or {}
        if "storage" not in requests:
            errors.append(
                FieldError(
                    f"{path}.pvc.resources.requests.storage",
                    "PVC size is missing: set pvc.resources.requests.storage (or use storage, "
                    "which may take the size from the source)",
                    "FieldValueRequired",
                )
            )
    checksum = ((source or {}).get("http") or {}).get("checksum")
    if checksum and not _CHECKSUM.match(str(checksum)):
        errors.append(
            FieldError(
                f"{path}.source.http.checksum",
                f"checksum {checksum!r} is not algorithm:hex with algorithm md5, sha1, sha256 or sha512 "
                '(e.g. "sha256:<64 hex digits>")',
            )
        )
    content_type = spec.get("contentType")
    if content_type not in (None, "", "kubevirt", "archive"):
        errors.append(
            FieldError(
                f"{path}.contentType",
                f"ContentType {content_type!r} is not supported: use kubevirt or archive",
                "FieldValueNotSupported",
            )
        )
    return errors


def _data_volume_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    return validate_data_volume_spec(obj.get("spec") or {}, "spec")


def _data_source_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    source = (obj.get("spec") or {}).get("source") or {}
    if sum(1 for k in ("pvc", "snapshot", "dataSource") if source.get(k) is not None) > 1:
        return [
            FieldError("spec.source", "DataSource source must have at most one of pvc, snapshot, dataSource")
        ]
    pointer = source.get("dataSource") or {}
    meta = obj.get("metadata") or {}
    if (
        pointer
        and pointer.get("name") == meta.get("name")
        and pointer.get("namespace") == meta.get("namespace")
    ):
        return [
            FieldError(
                "spec.source.dataSource",
                "DataSource cannot point to itself: name another DataSource",
                "FieldValueNotSupported",
            )
        ]
    return []


GARBAGE_COLLECT = ("Outdated", "Never")


def _data_import_cron_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    """What CDI's DataImportCron webhook rejects: a template without a registry source (CDI polls only
    registries), fields a cron cannot set, an invalid schedule or garbage-collection value, no
    managedDataSource."""
    spec = obj.get("spec") or {}
    template_spec = (spec.get("template") or {}).get("spec") or {}
    registry = (template_spec.get("source") or {}).get("registry")
    if not registry:
        return [
            FieldError(
                "spec.template.spec.source.registry",
                "Missing registry source: a DataImportCron polls a registry image "
                "(source.registry.url: docker://host/repository:tag)",
                "FieldValueRequired",
            )
        ]
    errors: list[FieldError] = []
    if not registry.get("url"):
        errors.append(
            FieldError(
                "spec.template.spec.source.registry.url",
                "Missing registry url: set docker://host/repository:tag (imageStream is OpenShift-only)",
                "FieldValueRequired",
            )
        )
    unsettable = [
        k for k in ("sourceRef", "contentType", "checkpoints", "finalCheckpoint") if template_spec.get(k)
    ]
    if unsettable:
        errors.append(
            FieldError(
                "spec.template.spec",
                f"Unsettable fields in a DataImportCron template: {', '.join(unsettable)}; remove them",
            )
        )
    errors += validate_data_volume_spec(template_spec, "spec.template.spec")
    schedule = spec.get("schedule")
    if not isinstance(schedule, str):
        errors.append(FieldError("spec.schedule", 'schedule is required (cron syntax, or "" to never poll)'))
    elif schedule and not _valid_schedule(schedule):
        errors.append(
            FieldError(
                "spec.schedule",
                f'Illegal cron schedule {schedule!r}: use five fields, e.g. "0 */12 * * *"',
            )
        )
    collect = spec.get("garbageCollect")
    if collect is not None and collect not in GARBAGE_COLLECT:
        errors.append(
            FieldError(
                "spec.garbageCollect",
                f"Illegal GarbageCollect value {collect!r}: use Outdated or Never",
                "FieldValueNotSupported",
            )
        )
    keep = spec.get("importsToKeep")
    if keep is not None and (not isinstance(keep, int) or keep < 0):
        errors.append(FieldError("spec.importsToKeep", f"importsToKeep {keep!r} must be a number >= 0"))
    managed = spec.get("managedDataSource")
    if not managed:
        errors.append(
            FieldError(
                "spec.managedDataSource",
                "Illegal ManagedDataSource value: name the DataSource this cron keeps up to date",
                "FieldValueRequired",
            )
        )
    else:
        errors += dns1123_label(str(managed), "spec.managedDataSource")
    return errors


def _valid_schedule(schedule: str) -> bool:
    from croniter import croniter  # a validation helper only; kept off the import path of the API types

    return len(schedule.split()) == 5 and bool(croniter.is_valid(schedule))


AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")

KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "DataVolume",
        "datavolumes",
        DataVolume,
        short_names=("dv", "dvs"),
        categories=("all",),
        printer_columns=(
            PrinterColumn("Phase", json_path=".status.phase", description="The phase the data volume is in"),
            PrinterColumn(
                "Progress",
                json_path=".status.progress",
                description="Transfer progress in percentage if known, N/A otherwise",
            ),
            PrinterColumn(
                "Restarts",
                "integer",
                ".status.restartCount",
                description="The number of times the transfer has been restarted.",
            ),
            AGE,
        ),
        validator=_data_volume_validate,
    ),
    Kind(
        GROUP,
        VERSION,
        "DataSource",
        "datasources",
        DataSource,
        short_names=("das",),
        categories=("all",),
        validator=_data_source_validate,
    ),
    Kind(
        GROUP,
        VERSION,
        "DataImportCron",
        "dataimportcrons",
        DataImportCron,
        short_names=("dic", "dics"),
        categories=("all",),
        validator=_data_import_cron_validate,
        printer_columns=(
            PrinterColumn(
                "Format",
                json_path=".status.sourceFormat",
                description="The format in which created sources are saved",
            ),
        ),
    ),
    Kind(GROUP, VERSION, "StorageProfile", "storageprofiles", StorageProfile, namespaced=False),
]
