"""pool.kubevirt.io/v1beta1 kind: VirtualMachinePool, a set of VirtualMachines made from one template.

JSON names follow KubeVirt's ``staging/src/kubevirt.io/api/pool/v1beta1/types.go``. Validation is virt-api's
pool admission: the VM template must be a valid VirtualMachine spec and the selector must select the
template's labels. Status is owned by the pool controller.
"""

from __future__ import annotations

from typing import Any

from kubevisor.api import kubevirt_admission
from kubevisor.api.base import KubeModel
from kubevisor.api.kubevirt import VirtualMachineSpec
from kubevisor.api.meta import LabelSelector, ObjectMeta
from kubevisor.api.registry import Kind, Obj, PrinterColumn
from kubevisor.api.validation import FieldError

GROUP = "pool.kubevirt.io"
VERSION = "v1beta1"


class VirtualMachineTemplateSpec(KubeModel):
    """A VirtualMachine to create: metadata and spec."""

    metadata: ObjectMeta | None = None
    """Labels and annotations of the VMs created."""
    spec: VirtualMachineSpec
    """Spec of the VMs created."""


class VirtualMachinePoolNameGeneration(KubeModel):
    """Per-VM names of referenced ConfigMaps and Secrets."""

    append_index_to_config_map_refs: bool | None = None
    """Append the VM's index to ConfigMap volume names."""
    append_index_to_secret_refs: bool | None = None
    """Append the VM's index to Secret volume names."""


class VirtualMachinePoolSpec(KubeModel):
    """Keep a number of VMs made from one template."""

    replicas: int | None = None
    """Number of VMs; default 1."""
    selector: LabelSelector
    """Label query over the VMs the pool owns; must match the template's labels."""
    virtual_machine_template: VirtualMachineTemplateSpec
    """The VMs to create."""
    paused: bool | None = None
    """Stop reconciling."""
    name_generation: VirtualMachinePoolNameGeneration | None = None
    """Per-VM names of referenced objects."""
    max_unavailable: int | str | None = None
    """VMs that may be unavailable during an update (a number or a percentage)."""
    scale_in_strategy: dict[str, Any] | None = None
    """Which VMs go first when scaling in, and what happens to them."""
    update_strategy: dict[str, Any] | None = None
    """How VMs are updated when the template changes."""
    autohealing: dict[str, Any] | None = None
    """Replace VMs that keep failing."""


class VirtualMachinePoolCondition(KubeModel):
    """A condition of a pool."""

    type: str
    """Condition type, e.g. ReplicaFailure."""
    status: str
    """True, False or Unknown."""
    last_probe_time: str | None = None
    """When the condition was last checked."""
    last_transition_time: str | None = None
    """When the status last changed."""
    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """Human-readable message."""


class VirtualMachinePoolStatus(KubeModel):
    """Observed state of a pool; owner: the pool controller."""

    replicas: int | None = None
    """VMs owned."""
    ready_replicas: int | None = None
    """VMs ready."""
    conditions: list[VirtualMachinePoolCondition] | None = None
    """Conditions."""
    label_selector: str | None = None
    """The selector in string form (for the scale subresource)."""


class VirtualMachinePool(KubeModel):
    """A set of VirtualMachines made from one template, scaled as one."""

    api_version: str | None = f"{GROUP}/{VERSION}"
    """pool.kubevirt.io/v1beta1."""
    kind: str | None = "VirtualMachinePool"
    """VirtualMachinePool."""
    metadata: ObjectMeta | None = None
    """Standard object metadata."""
    spec: VirtualMachinePoolSpec
    """How many VMs, and which."""
    status: VirtualMachinePoolStatus | None = None
    """Observed state."""


def _pool_validate(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    template = spec.get("virtualMachineTemplate") or {}
    errors = kubevirt_admission.validate_vm_spec(
        template.get("spec") or {}, "spec.virtualMachineTemplate.spec"
    )
    errors += kubevirt_admission.selector_errors(
        spec.get("selector"), (template.get("metadata") or {}).get("labels"), "spec.selector"
    )
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        errors.append(FieldError("spec.replicas", "spec.replicas must be greater than or equal to 0"))
    return errors


KINDS: list[Kind] = [
    Kind(
        GROUP,
        VERSION,
        "VirtualMachinePool",
        "virtualmachinepools",
        VirtualMachinePool,
        short_names=("vmpool", "vmpools"),
        categories=("all",),
        printer_columns=(
            PrinterColumn(
                "Desired", "integer", ".spec.replicas", description="Number of desired VirtualMachines"
            ),
            PrinterColumn(
                "Current",
                "integer",
                ".status.replicas",
                description="Number of managed and not final or deleted VirtualMachines",
            ),
            PrinterColumn(
                "Ready",
                "integer",
                ".status.readyReplicas",
                description="Number of managed VirtualMachines which are ready to receive traffic",
            ),
            PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        ),
        validator=_pool_validate,
    ),
]
