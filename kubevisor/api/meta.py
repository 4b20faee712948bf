"""meta.k8s.io/v1 types shared by every kind: ObjectMeta, ListMeta, Status, DeleteOptions, Table.

Field names and meanings are Kubernetes' (apimachinery ``pkg/apis/meta/v1/types.go``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubevisor.api.base import KubeModel, patch_merge


class OwnerReference(KubeModel):
    """Points at an object that owns this one; the garbage collector deletes dependents of a deleted owner."""

    api_version: str
    """API version of the referent."""
    kind: str
    """Kind of the referent."""
    name: str
    """Name of the referent (same namespace as the dependent, or cluster-scoped)."""
    uid: str
    """UID of the referent."""
    controller: bool | None = None
    """If true, this reference points to the managing controller."""
    block_owner_deletion: bool | None = None
    """If true, foreground deletion of the owner waits until this dependent is removed."""


class ManagedFieldsEntry(KubeModel):
    """Server-side apply bookkeeping. kubevisor accepts but does not populate it."""

    manager: str | None = None
    """Who manages these fields."""
    operation: str | None = None
    """Apply or Update."""
    api_version: str | None = None
    """The version of the fields' schema."""
    time: str | None = None
    """When the entry was written."""
    fields_type: str | None = None
    """Format of fieldsV1 (always FieldsV1)."""
    fields_v1: dict[str, Any] | None = Field(default=None, alias="fieldsV1")
    """The set of fields."""
    subresource: str | None = None
    """Subresource the entry was written through."""


class ObjectMeta(KubeModel):
    """Metadata every persisted object carries."""

    name: str | None = None
    """Unique within a namespace; DNS-1123 subdomain. Set by the server from generateName when empty."""
    generate_name: str | None = None
    """Prefix for a server-generated name, used when name is empty."""
    namespace: str | None = None
    """Namespace of a namespaced object."""
    uid: str | None = None
    """Unique in time and space; set by the server on create."""
    resource_version: str | None = None
    """Opaque version for optimistic concurrency: the store revision of the last write."""
    generation: int | None = None
    """Sequence number of spec changes; set by the server."""
    creation_timestamp: str | None = None
    """RFC 3339 time of creation; set by the server."""
    deletion_timestamp: str | None = None
    """RFC 3339 time after which the object is deleted; set by the server on a graceful delete."""
    deletion_grace_period_seconds: int | None = None
    """Seconds allowed for graceful termination; set by the server on delete."""
    labels: dict[str, str] | None = None
    """Key/value pairs used to select objects."""
    annotations: dict[str, str] | None = None
    """Unstructured key/value data for tools."""
    owner_references: list[OwnerReference] | None = Field(default=None, json_schema_extra=patch_merge("uid"))
    """Objects this one depends on; when all owners are gone it is garbage-collected."""
    finalizers: list[str] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-patch-strategy": "merge"}
    )
    """Must be empty before the object is removed from the store."""
    managed_fields: list[ManagedFieldsEntry] | None = None
    """Server-side apply bookkeeping; left empty by kubevisor."""
    self_link: str | None = None
    """Deprecated; never set."""


class ListMeta(KubeModel):
    """Metadata of a list."""

    resource_version: str | None = None
    """Store revision the list was read at."""
    continue_: str | None = Field(default=None, alias="continue")
    """Token for the next page; empty on the last page."""
    remaining_item_count: int | None = None
    """Number of items after this page, when known."""
    self_link: str | None = None
    """Deprecated; never set."""


class StatusCause(KubeModel):
    """One reason an operation failed, with the field it concerns."""

    reason: str | None = None
    """Machine-readable reason, e.g. FieldValueInvalid."""
    message: str | None = None
    """Human-readable description."""
    field: str | None = None
    """Path of the field, e.g. spec.template.spec.domain.devices.disks[0].name."""


class StatusDetails(KubeModel):
    """Extra data of a Status."""

    name: str | None = None
    """Name of the object concerned."""
    group: str | None = None
    """API group of the object concerned."""
    kind: str | None = None
    """Kind (or resource) of the object concerned."""
    uid: str | None = None
    """UID of the object concerned."""
    causes: list[StatusCause] | None = None
    """Field-level causes."""
    retry_after_seconds: int | None = None
    """Seconds to wait before retrying."""


class Preconditions(KubeModel):
    """Must hold for a delete to go ahead."""

    uid: str | None = None
    """Expected UID."""
    resource_version: str | None = None
    """Expected resourceVersion."""


class DeleteOptions(KubeModel):
    """Options of a DELETE request body."""

    kind: str | None = None
    """DeleteOptions."""
    api_version: str | None = None
    """meta.k8s.io/v1 or v1."""
    grace_period_seconds: int | None = None
    """Seconds before the object is deleted; 0 means now."""
    preconditions: Preconditions | None = None
    """Conditions that must hold."""
    orphan_dependents: bool | None = None
    """Deprecated; use propagationPolicy Orphan."""
    propagation_policy: str | None = None
    """Orphan, Background or Foreground."""
    dry_run: list[str] | None = None
    """["All"] to run everything but the write."""


class LabelSelectorRequirement(KubeModel):
    """One expression of a label selector: a key, an operator and values."""

    key: str
    """The label key the selector applies to."""
    operator: str
    """In, NotIn, Exists or DoesNotExist."""
    values: list[str] | None = None
    """Values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(KubeModel):
    """A label query over objects; an empty selector matches everything."""

    match_labels: dict[str, str] | None = None
    """Labels that must all be present with these values."""
    match_expressions: list[LabelSelectorRequirement] | None = None
    """Expressions that must all hold."""
