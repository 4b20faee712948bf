"""Clone authorization (:mod:`kubevisor.apiserver.cloneauth`) with a recording authorizer."""

from __future__ import annotations

import pytest

from kubevisor.api import cdi
from kubevisor.api.registry import Obj
from kubevisor.apiserver import cloneauth, errors
from kubevisor.apiserver.auth import Attributes, User


def dv(namespace: str | None) -> Obj:
    pvc = {"name": "golden", **({"namespace": namespace} if namespace else {})}
    return {"metadata": {"name": "copy"}, "spec": {"source": {"pvc": pvc}}}


def vm(*namespaces: str) -> Obj:
    templates = [{"spec": {"source": {"pvc": {"namespace": ns, "name": "g"}}}} for ns in namespaces]
    return {"metadata": {"name": "vm"}, "spec": {"dataVolumeTemplates": templates}}


def test_clone_sources() -> None:
    assert cloneauth.clone_sources("DataVolume", dv("images"), "team") == {
        "spec.source.pvc.namespace": "images"
    }
    assert cloneauth.clone_sources("DataVolume", dv("team"), "team") == {}
    assert cloneauth.clone_sources("DataVolume", dv(None), "team") == {}
    assert cloneauth.clone_sources("VirtualMachine", vm("team", "images"), "team") == {
        "spec.dataVolumeTemplates[1].spec.source.pvc.namespace": "images"
    }
    ref: Obj = {"spec": {"sourceRef": {"kind": "DataSource", "namespace": "images", "name": "golden"}}}
    assert cloneauth.clone_sources("DataVolume", ref, "team") == {"spec.sourceRef.namespace": "images"}
    assert cloneauth.clone_sources("DataVolume", ref, "images") == {}
    templated: Obj = {"spec": {"dataVolumeTemplates": [ref]}}
    assert cloneauth.clone_sources("VirtualMachine", templated, "team") == {
        "spec.dataVolumeTemplates[0].spec.sourceRef.namespace": "images"
    }


async def test_check_asks_for_datavolumes_source_in_the_source_namespace() -> None:
    kind = next(k for k in cdi.KINDS if k.kind == "DataVolume")
    asked: list[Attributes] = []

    async def deny(user: User, attrs: Attributes) -> tuple[bool, str]:
        asked.append(attrs)
        return False, ""

    with pytest.raises(errors.ApiError, match="insufficient permissions in clone source namespace images"):
        await cloneauth.check(deny, User("carol"), kind, dv("images"), "team")
    assert asked == [
        Attributes(
            verb="create",
            namespace="images",
            group="cdi.kubevirt.io",
            resource="datavolumes",
            subresource="source",
        )
    ]
    asked.clear()
    await cloneauth.check(deny, User("carol"), kind, dv("images"), "team", old=dv("images"))  # unchanged
    await cloneauth.check(deny, User("carol"), kind, dv("team"), "team")  # same namespace
    assert asked == []
