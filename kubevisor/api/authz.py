"""authorization.k8s.io/v1 SelfSubjectAccessReview and authentication.k8s.io/v1 TokenRequest.

These are virtual kinds: a POST answers with the same object and a filled status; nothing is stored.
"""

from __future__ import annotations

from pydantic import Field

from kubevisor.api.base import KubeModel
from kubevisor.api.meta import ObjectMeta


class ResourceAttributes(KubeModel):
    """The request being asked about."""

    namespace: str | None = None
    """Namespace; empty for cluster-scoped or all namespaces."""
    verb: str | None = None
    """get, list, watch, create, update, patch, delete, ..."""
    group: str | None = None
    """API group."""
    version: str | None = None
    """API version."""
    resource: str | None = None
    """Resource (plural)."""
    subresource: str | None = None
    """Subresource."""
    name: str | None = None
    """Object name."""


class NonResourceAttributes(KubeModel):
    """A non-resource request being asked about."""

    path: str | None = None
    """URL path."""
    verb: str | None = None
    """HTTP verb in lower case."""


class SelfSubjectAccessReviewSpec(KubeModel):
    """Exactly one of resourceAttributes and nonResourceAttributes."""

    resource_attributes: ResourceAttributes | None = None
    """A resource request."""
    non_resource_attributes: NonResourceAttributes | None = None
    """A non-resource request."""


class SubjectAccessReviewStatus(KubeModel):
    """The answer."""

    allowed: bool = False
    """Whether the request is allowed."""
    denied: bool | None = None
    """Whether it is explicitly denied (never, with RBAC)."""
    reason: str | None = None
    """Why."""
    evaluation_error: str | None = None
    """Problems evaluating rules."""


class SelfSubjectAccessReview(KubeModel):
    """Can I do this? (kubectl auth can-i)."""

    api_version: str | None = "authorization.k8s.io/v1"
    """authorization.k8s.io/v1."""
    kind: str | None = "SelfSubjectAccessReview"
    """SelfSubjectAccessReview."""
    metadata: ObjectMeta | None = None
    """Ignored."""
    spec: SelfSubjectAccessReviewSpec
    """The question."""
    status: SubjectAccessReviewStatus | None = None
    """The answer, filled by the server."""


class BoundObjectReference(KubeModel):
    """An object a token is bound to."""

    kind: str | None = None
    """Kind."""
    api_version: str | None = None
    """API version."""
    name: str | None = None
    """Name."""
    uid: str | None = None
    """UID."""


class TokenRequestSpec(KubeModel):
    """What token to issue."""

    audiences: list[str] | None = None
    """Intended audiences."""
    expiration_seconds: int | None = None
    """Requested lifetime (default 3600)."""
    bound_object_ref: BoundObjectReference | None = None
    """Object the token is bound to."""


class TokenRequestStatus(KubeModel):
    """The issued token."""

    token: str | None = None
    """Bearer token (clients send it empty; the server fills it)."""
    expiration_timestamp: str | None = None
    """When it expires (clients send null; the server fills it)."""


class TokenRequest(KubeModel):
    """Issues a bearer token for a ServiceAccount (kubectl create token)."""

    api_version: str | None = "authentication.k8s.io/v1"
    """authentication.k8s.io/v1."""
    kind: str | None = "TokenRequest"
    """TokenRequest."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: TokenRequestSpec = Field(default_factory=TokenRequestSpec)
    """Request."""
    status: TokenRequestStatus | None = None
    """Issued token."""


class UserInfo(KubeModel):
    """An authenticated user."""

    username: str | None = None
    """User name."""
    uid: str | None = None
    """UID."""
    groups: list[str] | None = None
    """Groups."""
    extra: dict[str, list[str]] | None = None
    """Extra attributes."""


class SelfSubjectReviewStatus(KubeModel):
    """Who the caller is."""

    user_info: UserInfo | None = None
    """The caller."""


class SelfSubjectReview(KubeModel):
    """Who am I? (kubectl auth whoami)."""

    api_version: str | None = "authentication.k8s.io/v1"
    """authentication.k8s.io/v1."""
    kind: str | None = "SelfSubjectReview"
    """SelfSubjectReview."""
    metadata: ObjectMeta | None = None
    """Ignored."""
    status: SelfSubjectReviewStatus | None = None
    """The answer."""
