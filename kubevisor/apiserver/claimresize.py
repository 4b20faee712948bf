"""Admission of a claim's growth: Kubernetes' ``PersistentVolumeClaimResize`` plugin.

A PersistentVolumeClaim whose ``spec.resources.requests.storage`` grows must be ``Bound``, and its
StorageClass (the same before and after) must say ``allowVolumeExpansion: true``; otherwise the update is
answered 403 Forbidden with Kubernetes' messages. The rest of the rule (never shrink) is the kind's
validator (:mod:`kubevisor.api.claimupdates`), which needs no other object. Who then grows the volume:
:mod:`kubevisor.agent.expanding` on the volume's node.
"""

from __future__ import annotations

from kubevisor.api import claimupdates
from kubevisor.api.registry import Kind, Obj, Registry
from kubevisor.apiserver import errors
from kubevisor.apiserver.resources import Objects

__all__ = ["NOT_BOUND_MESSAGE", "NOT_RESIZABLE_MESSAGE", "admit"]

NOT_BOUND_MESSAGE = "Only bound persistent volume claims can be expanded"
NOT_RESIZABLE_MESSAGE = (
    "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must "
    "support resize"
)


async def admit(
    objects: Objects, registry: Registry, kind: Kind, new: Obj, old: Obj, *, subresource: str | None
) -> None:
    """Raise 403 Forbidden if the update from ``old`` to ``new`` grows a claim that may not grow."""
    if kind.group or kind.plural != "persistentvolumeclaims" or subresource:
        return
    new_size, old_size = claimupdates.requested_storage(new), claimupdates.requested_storage(old)
    if new_size is None or old_size is None or new_size <= old_size:
        return
    name = str(new["metadata"].get("name"))

    def forbidden(message: str) -> errors.ApiError:
        return errors.forbidden(f'{kind.plural} "{name}" is forbidden: {message}', kind, name)

    if (old.get("status") or {}).get("phase") != "Bound":
        raise forbidden(NOT_BOUND_MESSAGE)
    class_name = (new.get("spec") or {}).get("storageClassName")
    if not class_name or class_name != (old.get("spec") or {}).get("storageClassName"):
        raise forbidden(NOT_RESIZABLE_MESSAGE)
    classes = registry.get("storage.k8s.io", "v1", "storageclasses")
    if classes is None:
        raise forbidden(NOT_RESIZABLE_MESSAGE)
    try:
        sc = await objects.get(classes, None, str(class_name))
    except errors.ApiError:
        raise forbidden(NOT_RESIZABLE_MESSAGE) from None
    if sc.get("allowVolumeExpansion") is not True:
        raise forbidden(NOT_RESIZABLE_MESSAGE)
