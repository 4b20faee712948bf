"""Core (v1) kinds: Namespace, Node, Event, ConfigMap, Secret, ServiceAccount, PersistentVolume,
PersistentVolumeClaim.

JSON names follow Kubernetes' ``k8s.io/api/core/v1``. Patch-strategy markers are those of upstream so
that kubectl's strategic merge patches mean the same thing here.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubevisor.api.base import KubeModel, patch_merge
from kubevisor.api.meta import LabelSelector, ObjectMeta

Quantity = str | int | float


class ObjectReference(KubeModel):
    """A reference to another object."""

    kind: str | None = None
    """Kind of the referent."""
    namespace: str | None = None
    """Namespace of the referent."""
    name: str | None = None
    """Name of the referent."""
    uid: str | None = None
    """UID of the referent."""
    api_version: str | None = None
    """API version of the referent."""
    resource_version: str | None = None
    """Specific resourceVersion of the referent."""
    field_path: str | None = None
    """A piece of the object, e.g. spec.containers{name}."""


class LocalObjectReference(KubeModel):
    """A reference to an object in the same namespace."""

    name: str | None = None
    """Name of the referent."""


# --- Namespace -----------------------------------------------------------------------------------


class NamespaceSpec(KubeModel):
    """Namespace spec."""

    finalizers: list[str] | None = None
    """Must be empty before the namespace is removed; the server adds "kubernetes"."""


class NamespaceCondition(KubeModel):
    """A condition of a namespace."""

    type: str
    """Condition type."""
    status: str
    """True, False or Unknown."""
    last_transition_time: str | None = None
    """Last time the condition changed."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class NamespaceStatus(KubeModel):
    """Namespace status; owner: the apiserver (Terminating on delete) and the namespace controller."""

    phase: str | None = None
    """Active or Terminating."""
    conditions: list[NamespaceCondition] | None = Field(default=None, json_schema_extra=patch_merge("type"))
    """Observations of the namespace's state."""


class Namespace(KubeModel):
    """A scope for names; deleting it deletes everything in it."""

    api_version: str | None = "v1"
    """v1."""
    kind: str | None = "Namespace"
    """Namespace."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: NamespaceSpec | None = None
    """Finalizers."""
    status: NamespaceStatus | None = None
    """Phase."""


# --- Node ----------------------------------------------------------------------------------------


class Taint(KubeModel):
    """Repels workloads that do not tolerate it."""

    key: str
    """Taint key."""
    value: str | None = None
    """Taint value."""
    effect: str
    """NoSchedule, PreferNoSchedule or NoExecute."""
    time_added: str | None = None
    """When a NoExecute taint was added."""


class NodeSpec(KubeModel):
    """Node spec."""

    pod_cidr: str | None = Field(default=None, alias="podCIDR")
    """Pod address range of this node."""
    pod_cidrs: list[str] | None = Field(
        default=None, alias="podCIDRs", json_schema_extra={"x-kubernetes-patch-strategy": "merge"}
    )
    """Pod address ranges of this node."""
    provider_id: str | None = Field(default=None, alias="providerID")
    """Cloud provider id."""
    unschedulable: bool | None = None
    """If true, nothing new is scheduled here."""
    taints: list[Taint] | None = None
    """Taints of this node."""


class NodeCondition(KubeModel):
    """A condition of a node."""

    type: str
    """Ready, MemoryPressure, ..."""
    status: str
    """True, False or Unknown."""
    last_heartbeat_time: str | None = None
    """Last time it was probed."""
    last_transition_time: str | None = None
    """Last time it changed."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class NodeAddress(KubeModel):
    """An address of a node."""

    type: str
    """Hostname, InternalIP, ..."""
    address: str
    """The address."""


class NodeSystemInfo(KubeModel):
    """Facts about the node's software."""

    machine_id: str = Field(default="", alias="machineID")
    """Machine id."""
    system_uuid: str = Field(default="", alias="systemUUID")
    """System UUID."""
    boot_id: str = Field(default="", alias="bootID")
    """Boot id."""
    kernel_version: str = ""
    """uname -r."""
    os_image: str = Field(default="", alias="osImage")
    """OS image."""
    container_runtime_version: str = ""
    """Runtime version."""
    kubelet_version: str = ""
    """Agent version."""
    kube_proxy_version: str = ""
    """Unused."""
    operating_system: str = ""
    """linux."""
    architecture: str = ""
    """amd64, ..."""


class NodeStatus(KubeModel):
    """Node status; owner: the node agent."""

    capacity: dict[str, Quantity] | None = None
    """Total resources."""
    allocatable: dict[str, Quantity] | None = None
    """Resources available for workloads."""
    phase: str | None = None
    """Deprecated."""
    conditions: list[NodeCondition] | None = Field(default=None, json_schema_extra=patch_merge("type"))
    """Current conditions."""
    addresses: list[NodeAddress] | None = Field(default=None, json_schema_extra=patch_merge("type"))
    """Addresses."""
    node_info: NodeSystemInfo | None = None
    """Software facts."""
    daemon_endpoints: dict[str, Any] | None = None
    """Agent endpoints."""
    images: list[dict[str, Any]] | None = None
    """Cached images."""


class Node(KubeModel):
    """A machine that runs workloads."""

    api_version: str | None = "v1"
    """v1."""
    kind: str | None = "Node"
    """Node."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: NodeSpec | None = None
    """Node spec."""
    status: NodeStatus | None = None
    """Node status."""


# --- Event ---------------------------------------------------------------------------------------


class EventSource(KubeModel):
    """Who reported an event."""

    component: str | None = None
    """Component name."""
    host: str | None = None
    """Node name."""


class EventSeries(KubeModel):
    """A series of repeated events."""

    count: int | None = None
    """Occurrences."""
    last_observed_time: str | None = None
    """Last occurrence."""


class Event(KubeModel):
    """Something that happened to an object."""

    api_version: str | None = "v1"
    """v1."""
    kind: str | None = "Event"
    """Event."""
    metadata: ObjectMeta
    """Standard object metadata."""
    involved_object: ObjectReference
    """The object this event is about."""
    reason: str | None = None
    """Short machine-readable reason, e.g. Started."""
    message: str | None = None
    """Human-readable description."""
    source: EventSource | None = None
    """Reporter."""
    first_timestamp: str | None = None
    """First occurrence."""
    last_timestamp: str | None = None
    """Last occurrence."""
    count: int | None = None
    """Occurrences."""
    type: str | None = None
    """Normal or Warning."""
    event_time: str | None = None
    """Time with microseconds."""
    series: EventSeries | None = None
    """Series data."""
    action: str | None = None
    """What was done."""
    related: ObjectReference | None = None
    """A second object."""
    reporting_component: str | None = None
    """Reporting controller."""
    reporting_instance: str | None = None
    """Reporting instance."""


# --- ConfigMap, Secret, ServiceAccount ----------------------------------------------------------


class ConfigMap(KubeModel):
    """Non-confidential key/value data."""

    api_version: str | None = "v1"
    """v1."""
    kind: str | None = "ConfigMap"
    """ConfigMap."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    data: dict[str, str] | None = None
    """UTF-8 values."""
    binary_data: dict[str, str] | None = None
    """Base64-encoded binary values."""
    immutable: bool | None = None
    """If true, data cannot be changed."""


class Secret(KubeModel):
    """Confidential key/value data."""

    api_version: str | None = "v1"
    """v1."""
    kind: str | None = "Secret"
    """Secret."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    data: dict[str, str] | None = None
    """Base64-encoded values."""
    string_data: dict[str, str] | None = None
    """Write-only plain values, merged into data by the server."""
    type: str | None = None
    """Opaque, kubernetes.io/service-account-token, ..."""
    immutable: bool | None = None
    """If true, data cannot be changed."""


class ServiceAccount(KubeModel):
    """An identity for workloads; tokens are issued through its token subresource."""

    api_version: str | None = "v1"
    """v1."""
    kind: str | None = "ServiceAccount"
    """ServiceAccount."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    secrets: list[ObjectReference] | None = Field(default=None, json_schema_extra=patch_merge("name"))
    """Secrets of this account."""
    image_pull_secrets: list[LocalObjectReference] | None = None
    """Pull secrets."""
    automount_service_account_token: bool | None = None
    """Whether workloads get a token mounted."""


# --- Types embedded in other kinds (KubeVirt VMIs, CDI DataVolumes) -------------------------------


class Toleration(KubeModel):
    """Lets a workload be scheduled onto a node whose taint it matches."""

    key: str | None = None
    """Taint key the toleration applies to; empty matches every key (with operator Exists)."""
    operator: str | None = None
    """Exists or Equal (the default)."""
    value: str | None = None
    """Taint value to match with operator Equal."""
    effect: str | None = None
    """NoSchedule, PreferNoSchedule or NoExecute; empty matches every effect."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated before eviction; unset means forever."""


class PodDNSConfigOption(KubeModel):
    """A resolver option."""

    name: str | None = None
    """Option name, e.g. ndots."""
    value: str | None = None
    """Option value."""


class PodDNSConfig(KubeModel):
    """DNS settings merged into those DNSPolicy produces."""

    nameservers: list[str] | None = None
    """DNS server IP addresses (at most 3)."""
    searches: list[str] | None = None
    """DNS search domains (at most 6)."""
    options: list[PodDNSConfigOption] | None = None
    """Resolver options."""


class TypedLocalObjectReference(KubeModel):
    """A reference to an object of any kind in the same namespace."""

    api_group: str | None = None
    """API group of the referent; empty for the core group."""
    kind: str
    """Kind of the referent."""
    name: str
    """Name of the referent."""


class TypedObjectReference(KubeModel):
    """A reference to an object of any kind, possibly in another namespace."""

    api_group: str | None = None
    """API group of the referent; empty for the core group."""
    kind: str
    """Kind of the referent."""
    name: str
    """Name of the referent."""
    namespace: str | None = None
    """Namespace of the referent; defaults to the referrer's."""


class VolumeResourceRequirements(KubeModel):
    """Storage a claim asks for."""

    limits: dict[str, Quantity] | None = None
    """Maximum amount of storage."""
    requests: dict[str, Quantity] | None = None
    """Minimum amount of storage, e.g. {"storage": "10Gi"}."""


class PersistentVolumeClaimSpec(KubeModel):
    """What a persistent volume claim asks for."""

    access_modes: list[str] | None = None
    """ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod."""
    selector: LabelSelector | None = None
    """Label query over volumes to bind to."""
    resources: VolumeResourceRequirements | None = None
    """Requested size."""
    volume_name: str | None = None
    """Name of the persistent volume to bind to."""
    storage_class_name: str | None = None
    """Storage class that provisions the volume."""
    volume_mode: str | None = None
    """Filesystem (default) or Block."""
    data_source: TypedLocalObjectReference | None = None
    """Object the volume is populated from (a snapshot, a claim, a populator)."""
    data_source_ref: TypedObjectReference | None = None
    """Like dataSource, possibly in another namespace."""
    volume_attributes_class_name: str | None = None
    """VolumeAttributesClass of the claim."""


# --- PersistentVolume, PersistentVolumeClaim ------------------------------------------------------


class HostPathVolumeSource(KubeModel):
    """A file or directory on the node (the node agent allows only its volume directories)."""

    path: str
    """Path on the node: a disk image file, or a directory holding ``disk.img``."""
    type: str | None = None
    """What must be at ``path``: "", DirectoryOrCreate, Directory, FileOrCreate, File, ..."""


class LocalVolumeSource(KubeModel):
    """A local disk or directory of one node."""

    path: str
    """Full path on the node: a disk image file, or a directory holding ``disk.img``."""
    fs_type: str | None = None
    """File system type, for block devices."""


class PersistentVolumeSpec(KubeModel):
    """A piece of storage, and the claim it is bound to."""

    capacity: dict[str, Quantity] | None = None
    """Size, e.g. {"storage": "10Gi"}."""
    access_modes: list[str] | None = None
    """ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod."""
    claim_ref: ObjectReference | None = None
    """The claim bound to this volume (set by the binder, or by the user to pre-bind)."""
    persistent_volume_reclaim_policy: str | None = None
    """Retain (default for manually created volumes), Delete or Recycle."""
    storage_class_name: str | None = None
    """Storage class the volume belongs to; empty: none."""
    volume_mode: str | None = None
    """Filesystem (default) or Block."""
    mount_options: list[str] | None = None
    """Mount options."""
    node_affinity: dict[str, Any] | None = None
    """Nodes the volume can be reached from."""
    host_path: HostPathVolumeSource | None = None
    """A path on the node."""
    local: LocalVolumeSource | None = None
    """A local disk or directory."""
    nfs: dict[str, Any] | None = None
    """An NFS export (not attached by this node agent yet)."""
    csi: dict[str, Any] | None = None
    """A CSI volume (not attached by this node agent yet)."""
    volume_attributes_class_name: str | None = None
    """VolumeAttributesClass of the volume."""


class PersistentVolumeStatus(KubeModel):
    """Where a volume is in its life."""

    phase: str | None = None
    """Pending, Available, Bound, Released or Failed."""
    message: str | None = None
    """Why the volume is in this phase."""
    reason: str | None = None
    """Brief CamelCase reason for a failure."""
    last_phase_transition_time: str | None = None
    """When the phase last changed."""


class PersistentVolume(KubeModel):
    """Storage provisioned by an administrator or a storage class (cluster-scoped)."""

    api_version: str | None = "v1"
    """v1."""
    kind: str | None = "PersistentVolume"
    """PersistentVolume."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: PersistentVolumeSpec | None = None
    """What the volume is."""
    status: PersistentVolumeStatus | None = None
    """Its phase (owned by the volume binder)."""


class PersistentVolumeClaimStatus(KubeModel):
    """What a claim got."""

    phase: str | None = None
    """Pending, Bound or Lost."""
    access_modes: list[str] | None = None
    """Access modes of the bound volume."""
    capacity: dict[str, Quantity] | None = None
    """Size of the bound volume."""
    conditions: list[dict[str, Any]] | None = None
    """Conditions (Resizing, FileSystemResizePending, ...)."""
    allocated_resources: dict[str, Quantity] | None = None
    """Storage allocated to the claim."""


class PersistentVolumeClaim(KubeModel):
    """A user's request for storage, bound to one PersistentVolume."""

    api_version: str | None = "v1"
    """v1."""
    kind: str | None = "PersistentVolumeClaim"
    """PersistentVolumeClaim."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: PersistentVolumeClaimSpec | None = None
    """What is asked for."""
    status: PersistentVolumeClaimStatus | None = None
    """Its phase and what it got (owned by the volume binder)."""
