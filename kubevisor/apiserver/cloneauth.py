"""Who may clone a claim of another namespace: CDI's clone authorization, at the API server.

CDI's rule: a DataVolume whose ``spec.source.pvc`` names a claim (or ``spec.source.snapshot`` a
VolumeSnapshot, or ``spec.sourceRef`` a DataSource, which names a claim or snapshot of its own namespace)
in another namespace may only be created
by someone who may ``create`` the subresource ``datavolumes/source`` (group ``cdi.kubevirt.io``) in the
source namespace; CDI's webhook asks a SubjectAccessReview and denies with "User X has insufficient
permissions in clone source namespace Y". KubeVirt's VM webhook applies the same rule to the
``dataVolumeTemplates`` of a VirtualMachine (the VM controller creates those DataVolumes with its own
identity, so the check must happen when the VM is written).

Why here: only the API server knows who sent a request. :func:`check` runs on create, update and patch
of DataVolumes and VirtualMachines, after admission, and checks only sources that are new or changed
(an update that leaves a clone as it was needs no permission again). Same-namespace clones need nothing
beyond the right to create the DataVolume itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from kubevisor.api.registry import Kind, Obj
from kubevisor.apiserver import errors
from kubevisor.apiserver.auth import Attributes, User

__all__ = ["check", "clone_sources"]

Authorize = Callable[[User, Attributes], Awaitable[tuple[bool, str]]]


def _sources(spec: Obj, namespace: str, path: str) -> Iterator[tuple[str, str]]:
    for kind in ("pvc", "snapshot"):
        ref = ((spec or {}).get("source") or {}).get(kind)
        if isinstance(ref, dict):
            source_namespace = str(ref.get("namespace") or namespace)
            if source_namespace != namespace:
                yield f"{path}.source.{kind}.namespace", source_namespace
    ref = (spec or {}).get("sourceRef")
    if isinstance(ref, dict):  # a DataSource only names a claim or snapshot of its own namespace
        source_namespace = str(ref.get("namespace") or namespace)
        if source_namespace != namespace:
            yield f"{path}.sourceRef.namespace", source_namespace


def clone_sources(kind: str, obj: Obj, namespace: str) -> dict[str, str]:
    """``{field: source namespace}`` of the clones of ``obj`` whose source is outside ``namespace``."""
    spec = obj.get("spec") or {}
    if kind == "DataVolume":
        return dict(_sources(spec, namespace, "spec"))
    if kind == "VirtualMachine":
        found: dict[str, str] = {}
        for index, template in enumerate(spec.get("dataVolumeTemplates") or []):
            found.update(
                _sources(template.get("spec") or {}, namespace, f"spec.dataVolumeTemplates[{index}].spec")
            )
        return found
    return {}


async def check(
    authorize: Authorize, user: User, kind: Kind, obj: Obj, namespace: str | None, *, old: Obj | None = None
) -> None:
    """Raise 403 unless ``user`` may clone from every other namespace ``obj`` clones from (see above)."""
    if kind.group not in ("cdi.kubevirt.io", "kubevirt.io") or kind.kind not in (
        "DataVolume",
        "VirtualMachine",
    ):
        return
    if namespace is None:
        return
    wanted = clone_sources(kind.kind, obj, namespace)
    if old is not None:
        before = clone_sources(kind.kind, old, namespace)
        wanted = {f: ns for f, ns in wanted.items() if before.get(f) != ns}
    for field, source_namespace in sorted(wanted.items()):
        attrs = Attributes(
            verb="create",
            namespace=source_namespace,
            group="cdi.kubevirt.io",
            resource="datavolumes",
            subresource="source",
        )
        allowed, _ = await authorize(user, attrs)
        if not allowed:
            raise errors.forbidden(
                f"User {user.name} has insufficient permissions in clone source namespace {source_namespace} "
                f"({field}): it needs create on datavolumes/source (group cdi.kubevirt.io) there",
                kind,
                str((obj.get("metadata") or {}).get("name") or "") or None,
            )
