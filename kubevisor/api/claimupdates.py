"""What an update may change in a PersistentVolumeClaim's requested size (Kubernetes'
``ValidatePersistentVolumeClaimUpdate``, the storage part).

Why here: the rule needs only the old and the new object, so it is the kind's validator (the apiserver
answers 422 Invalid). Whether the claim's StorageClass allows expansion needs another object; the
apiserver checks that in :mod:`kubevisor.apiserver.claimresize`, as Kubernetes' admission plugin
``PersistentVolumeClaimResize`` does.

- A ``Bound`` claim's ``spec.resources.requests.storage`` may grow, never shrink ("field can not be less
  than previous value", Kubernetes' message without ``RecoverVolumeExpansionFailure``).
- A claim that is not bound keeps its size ("spec is immutable after creation except resources.requests
  and volumeAttributesClassName for bound claims"), so a volume is never provisioned for a size the
  claim no longer asks for.
"""

from __future__ import annotations

from decimal import Decimal

from kubevisor.api.kubevirt_admission import parse_quantity
from kubevisor.api.registry import Obj
from kubevisor.api.validation import FieldError

__all__ = ["IMMUTABLE_MESSAGE", "SHRINK_MESSAGE", "requested_storage", "validate_claim_update"]

SHRINK_MESSAGE = "field can not be less than previous value"
IMMUTABLE_MESSAGE = (
    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound "
    "claims"
)


def requested_storage(pvc: Obj) -> Decimal | None:
    """``spec.resources.requests.storage`` in bytes (None when missing or not a quantity)."""
    spec = pvc.get("spec") or {}
    return parse_quantity(((spec.get("resources") or {}).get("requests") or {}).get("storage"))


def validate_claim_update(obj: Obj, old: Obj | None) -> list[FieldError]:
    """Errors of an update from ``old`` to ``obj`` (none on create)."""
    if old is None:
        return []
    new_size, old_size = requested_storage(obj), requested_storage(old)
    if new_size is None or old_size is None or new_size == old_size:
        return []
    field = "spec.resources.requests.storage"
    if (old.get("status") or {}).get("phase") != "Bound":
        return [FieldError("spec", IMMUTABLE_MESSAGE, "FieldValueForbidden")]
    if new_size < old_size:
        return [FieldError(field, SHRINK_MESSAGE, "FieldValueForbidden")]
    return []
