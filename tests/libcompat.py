"""The compatibility set: real KubeVirt and CDI manifests kubevisor must accept unchanged.

They live outside the repository, in ``../shared/compat/kubevirt-examples/`` (see its README): files
copied byte for byte from KubeVirt's examples, its user guide and CDI's examples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

COMPAT_DIR = Path(
    os.environ.get(
        "KUBEVISOR_COMPAT_DIR", Path(__file__).resolve().parents[1].parent / "shared/compat/kubevirt-examples"
    )
)
"""Where the manifests are; ``KUBEVISOR_COMPAT_DIR`` overrides it."""


def manifest_files() -> list[Path]:
    """Every manifest file of the set, sorted by name."""
    return sorted(COMPAT_DIR.glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one manifest file, as the JSON objects they stand for."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def collection_path(api_version: str, plural: str, namespace: str | None) -> str:
    """The URL of a collection: ``/apis/<group>/<version>[/namespaces/<ns>]/<plural>``."""
    base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def is_subset(sent: Any, stored: Any) -> bool:
    """Whether everything ``sent`` holds is in ``stored`` with the same value (defaults may add more)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            k in stored and is_subset(v, stored[k]) for k, v in sent.items()
        )
    if isinstance(sent, list):
        return (
            isinstance(stored, list)
            and len(stored) >= len(sent)
            and all(is_subset(a, b) for a, b in zip(sent, stored, strict=False))
        )
    return bool(sent == stored)
