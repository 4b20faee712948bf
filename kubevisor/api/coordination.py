"""coordination.k8s.io/v1 Lease: node heartbeats and leader election."""

from __future__ import annotations

from kubevisor.api.base import KubeModel
from kubevisor.api.meta import ObjectMeta


class LeaseSpec(KubeModel):
    """Who holds the lease and until when."""

    holder_identity: str | None = None
    """Current holder."""
    lease_duration_seconds: int | None = None
    """Seconds a holder keeps the lease without renewing it."""
    acquire_time: str | None = None
    """When the current holder acquired it (RFC 3339 with microseconds)."""
    renew_time: str | None = None
    """When the current holder last renewed it."""
    lease_transitions: int | None = None
    """How many times the holder changed."""
    strategy: str | None = None
    """Coordinated leader election strategy."""
    preferred_holder: str | None = None
    """Holder that should take over."""


class Lease(KubeModel):
    """A lease."""

    api_version: str | None = "coordination.k8s.io/v1"
    """coordination.k8s.io/v1."""
    kind: str | None = "Lease"
    """Lease."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: LeaseSpec | None = None
    """Lease spec."""
