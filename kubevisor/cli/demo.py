"""``kubevisor up --demo FILE``: once the platform is up, apply the objects of a manifest (as
``kubectl create -f``, leaving existing ones alone) and say how to reach the demo VM.

``make up`` uses it with ``examples/demo-vm.yaml``, after building the test guest and mapping it into the
node's image mirror; the manifest may hold several YAML documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubevisor.client import Client, errors

__all__ = ["apply", "instructions", "load"]


def load(path: Path) -> list[dict[str, Any]]:
    """The objects in ``path`` (YAML, several documents allowed); raises ValueError naming what is wrong."""
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--demo {path}: {exc}") from exc
    objects = [d for d in documents if d is not None]
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
            raise ValueError(f"--demo {path}: document {i + 1} is not an object with apiVersion and kind")
    return objects


async def apply(kubeconfig: Path, objects: list[dict[str, Any]]) -> list[str]:
    """Create each object (those that exist are left as they are); returns ``kind/name`` of each."""
    applied = []
    async with Client.from_kubeconfig(kubeconfig) as client:
        for obj in objects:
            resources = client.resource_for_kind(obj["apiVersion"], obj["kind"])
            meta = obj.get("metadata") or {}
            try:
                await resources.create(obj, meta.get("namespace"))
            except errors.AlreadyExistsError:
                pass
            applied.append(f"{obj['kind'].lower()}/{meta.get('name')}")
    return applied


def instructions(kubeconfig: Path, objects: list[dict[str, Any]]) -> str:
    """What to type next: the console of each VM of the demo, and kubectl."""
    lines = [f"  export KUBECONFIG={kubeconfig}"]
    for obj in objects:
        if obj["kind"] not in ("VirtualMachine", "VirtualMachineInstance"):
            continue
        meta = obj.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace") or "default"
        ns = "" if namespace == "default" else f" -n {namespace}"
        lines += [
            f"  kubectl get vm,vmi{ns}                  # {name} goes Scheduled, then Running",
            f"  kubevisor console {name}{ns}             # its serial console (Ctrl+] to leave)",
            f"  kubectl delete vm {name}{ns}            # stop and remove it",
        ]
    return "\n".join(lines)
