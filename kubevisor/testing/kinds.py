"""A kind declared only for tests: ``widgets.test.kubevisor.io/v1`` (Widget), namespaced, spec and status.

It stands for "a custom resource kubectl knows nothing about" in compatibility tests: no strategic merge
patch, printer columns from JSON paths, a status subresource, a conditions list for ``kubectl wait``.
"""

from __future__ import annotations

from kubevisor.api.base import KubeModel
from kubevisor.api.meta import ObjectMeta
from kubevisor.api.registry import Kind, PrinterColumn, Registry, default_registry


class WidgetSpec(KubeModel):
    """What the widget should be."""

    size: int | None = None
    """Size of the widget."""
    color: str | None = None
    """Colour of the widget."""
    parts: list[str] | None = None
    """Parts of the widget."""


class Condition(KubeModel):
    """A condition of a widget."""

    type: str
    """Condition type, e.g. Ready."""
    status: str
    """True, False or Unknown."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""
    last_transition_time: str | None = None
    """When it last changed."""


class WidgetStatus(KubeModel):
    """What the widget is."""

    phase: str | None = None
    """Lifecycle phase."""
    conditions: list[Condition] | None = None
    """Observed conditions."""


class Widget(KubeModel):
    """A test object."""

    api_version: str | None = "test.kubevisor.io/v1"
    """test.kubevisor.io/v1."""
    kind: str | None = "Widget"
    """Widget."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: WidgetSpec | None = None
    """Desired state."""
    status: WidgetStatus | None = None
    """Observed state."""


WIDGET = Kind(
    "test.kubevisor.io",
    "v1",
    "Widget",
    "widgets",
    Widget,
    short_names=("wd",),
    categories=("all",),
    printer_columns=(
        PrinterColumn("Size", "integer", ".spec.size"),
        PrinterColumn("Phase", json_path=".status.phase"),
        PrinterColumn("Ready", json_path=".status.conditions[?(@.type=='Ready')].status"),
        PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        PrinterColumn("Color", json_path=".spec.color", priority=1),
    ),
)


def registry_with_test_kinds() -> Registry:
    """The default registry plus the test kinds."""
    registry = default_registry()
    registry.register(WIDGET)
    return registry
