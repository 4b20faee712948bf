"""The base of every wire type: camelCase JSON names, unknown fields refused, docstrings kept.

API types are plain data (see STYLE.md). The apiserver validates a request body by parsing it with a
model, but stores the JSON the user sent (after defaulting), so a model never rewrites a stored object.
Unknown fields are refused here (``extra="forbid"``); the apiserver turns those errors into
``fieldValidation`` Strict/Warn/Ignore behaviour.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class KubeModel(BaseModel):
    """Base of all kubevisor API types."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        strict=False,
        ser_json_timedelta="iso8601",
    )


def patch_merge(key: str, strategy: str = "merge") -> dict[str, Any]:
    """OpenAPI extensions of a list field that strategic merge patch merges by ``key``."""
    return {"x-kubernetes-patch-strategy": strategy, "x-kubernetes-patch-merge-key": key}


def patch_strategy(strategy: str) -> dict[str, Any]:
    """OpenAPI extension for a field with a patch strategy and no merge key (e.g. ``retainKeys``)."""
    return {"x-kubernetes-patch-strategy": strategy}
