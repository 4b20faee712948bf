"""rbac.authorization.k8s.io/v1: Role, ClusterRole, RoleBinding, ClusterRoleBinding.

Semantics are Kubernetes': rules only grant, never deny; a RoleBinding may point at a ClusterRole to grant
its rules within the binding's namespace.
"""

from __future__ import annotations

from pydantic import Field

from kubevisor.api.base import KubeModel
from kubevisor.api.meta import ObjectMeta


class PolicyRule(KubeModel):
    """Verbs allowed on resources or non-resource URLs."""

    verbs: list[str]
    """get, list, watch, create, update, patch, delete, deletecollection, or *."""
    api_groups: list[str] | None = None
    """API groups ("" is core); * for all."""
    resources: list[str] | None = None
    """Resources, "resource/subresource", or *."""
    resource_names: list[str] | None = None
    """Restricts the rule to these object names."""
    non_resource_ur_ls: list[str] | None = Field(default=None, alias="nonResourceURLs")
    """Non-resource paths such as /healthz; only in ClusterRoles."""


class AggregationRule(KubeModel):
    """Selects ClusterRoles whose rules are aggregated into this one."""

    cluster_role_selectors: list[dict[str, object]] | None = None
    """Label selectors."""


class Role(KubeModel):
    """Rules within one namespace."""

    api_version: str | None = "rbac.authorization.k8s.io/v1"
    """rbac.authorization.k8s.io/v1."""
    kind: str | None = "Role"
    """Role."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    rules: list[PolicyRule] | None = None
    """The rules."""


class ClusterRole(KubeModel):
    """Rules cluster-wide, or per namespace through a RoleBinding."""

    api_version: str | None = "rbac.authorization.k8s.io/v1"
    """rbac.authorization.k8s.io/v1."""
    kind: str | None = "ClusterRole"
    """ClusterRole."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    rules: list[PolicyRule] | None = None
    """The rules."""
    aggregation_rule: AggregationRule | None = None
    """Aggregation (accepted, not evaluated)."""


class Subject(KubeModel):
    """Who a binding grants to."""

    kind: str
    """User, Group or ServiceAccount."""
    name: str
    """Name of the subject."""
    namespace: str | None = None
    """Namespace of a ServiceAccount."""
    api_group: str | None = None
    """rbac.authorization.k8s.io for User and Group, "" for ServiceAccount."""


class RoleRef(KubeModel):
    """The role a binding grants."""

    api_group: str
    """rbac.authorization.k8s.io."""
    kind: str
    """Role or ClusterRole."""
    name: str
    """Name of the role."""


class RoleBinding(KubeModel):
    """Grants a Role or ClusterRole within one namespace."""

    api_version: str | None = "rbac.authorization.k8s.io/v1"
    """rbac.authorization.k8s.io/v1."""
    kind: str | None = "RoleBinding"
    """RoleBinding."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    subjects: list[Subject] | None = None
    """Who is granted."""
    role_ref: RoleRef
    """What is granted; immutable."""


class ClusterRoleBinding(KubeModel):
    """Grants a ClusterRole cluster-wide."""

    api_version: str | None = "rbac.authorization.k8s.io/v1"
    """rbac.authorization.k8s.io/v1."""
    kind: str | None = "ClusterRoleBinding"
    """ClusterRoleBinding."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    subjects: list[Subject] | None = None
    """Who is granted."""
    role_ref: RoleRef
    """What is granted; immutable."""
