"""Routing of the VMI subresources of subresources.kubevirt.io: which paths are served, with which RBAC
verb, and where the node agent serves them."""

from __future__ import annotations

import orjson
import pytest

from kubevisor.apiserver import vmistreams


def segs(path: str) -> list[str]:
    return path.split("/")


@pytest.mark.parametrize(
    ("path", "sub", "rest", "verb"),
    [
        ("namespaces/ns/virtualmachineinstances/vm/console", "console", (), "get"),
        ("namespaces/ns/virtualmachineinstances/vm/vnc", "vnc", (), "get"),
        ("namespaces/ns/virtualmachineinstances/vm/portforward/22", "portforward", ("22",), "get"),
        ("namespaces/ns/virtualmachineinstances/vm/portforward/80/tcp", "portforward", ("80", "tcp"), "get"),
        ("namespaces/ns/virtualmachineinstances/vm/pause", "pause", (), "update"),
        ("namespaces/ns/virtualmachineinstances/vm/unpause", "unpause", (), "update"),
        ("namespaces/ns/virtualmachineinstances/vm/guestosinfo", "guestosinfo", (), "get"),
    ],
)
def test_served_paths(path: str, sub: str, rest: tuple[str, ...], verb: str) -> None:
    req = vmistreams.parse(segs(path))
    assert req is not None
    assert (req.namespace, req.name, req.subresource, req.rest) == ("ns", "vm", sub, rest)
    assert vmistreams.verb(req) == verb
    assert req.agent_path == "/v1/" + path
    assert req.what == "VirtualMachineInstance ns/vm"


@pytest.mark.parametrize(
    "path",
    [
        "namespaces/ns/virtualmachineinstances/vm",
        "namespaces/ns/virtualmachines/vm/console",
        "namespaces/ns/virtualmachineinstances/vm/teleport",
        "namespaces/ns/virtualmachineinstances/vm/console/extra",
        "namespaces/ns/virtualmachineinstances/vm/portforward",
        "namespaces/ns/virtualmachineinstances/vm/portforward/0",
        "namespaces/ns/virtualmachineinstances/vm/portforward/65536",
        "namespaces/ns/virtualmachineinstances/vm/portforward/http",
        "namespaces/ns/virtualmachineinstances/vm/portforward/80/sctp",
        "namespaces/ns/virtualmachineinstances/vm/portforward/80/tcp/x",
        "virtualmachineinstances/vm/console",
    ],
)
def test_unserved_paths(path: str) -> None:
    assert vmistreams.parse(segs(path)) is None


def test_resource_list() -> None:
    body = orjson.loads(vmistreams.resource_list("v1", ("start", "stop", "restart")))
    assert body["groupVersion"] == "subresources.kubevirt.io/v1"
    names = {r["name"]: r["verbs"] for r in body["resources"]}
    assert names == {
        "virtualmachineinstances/console": ["get"],
        "virtualmachineinstances/vnc": ["get"],
        "virtualmachineinstances/portforward": ["get"],
        "virtualmachineinstances/pause": ["update"],
        "virtualmachineinstances/unpause": ["update"],
        "virtualmachineinstances/guestosinfo": ["get"],
        "virtualmachines/start": ["update"],
        "virtualmachines/stop": ["update"],
        "virtualmachines/restart": ["update"],
    }
