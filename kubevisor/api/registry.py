"""The kind registry: everything the apiserver needs to know about a kind, declared once.

A kind is a pydantic model plus one :class:`Kind` entry in its group module's ``KINDS`` list. The
apiserver derives routing, discovery, OpenAPI, Table output, field selectors, patch behaviour and
admission from the entry; nothing else changes when a kind is added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from kubevisor.api.validation import FieldError

Obj = dict[str, Any]
Defaulter = Callable[[Obj], None]
Validator = Callable[[Obj, Obj | None], list[FieldError]]

ALL_VERBS: tuple[str, ...] = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)


@dataclass(frozen=True)
class PrinterColumn:
    """A Table column: a JSON path into the object (KubeVirt style) or a function of the object."""

    name: str
    type: str = "string"
    json_path: str = ""
    value: Callable[[Obj], Any] | None = None
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass(frozen=True)
class Kind:
    """One served kind and how the server treats it."""

    group: str
    version: str
    kind: str
    plural: str
    model: type[BaseModel]
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    """Subresource names besides ``status``, which is implied by a ``status`` field in the model."""
    printer_columns: tuple[PrinterColumn, ...] = ()
    field_selectors: Mapping[str, str] = field(default_factory=dict)
    """Extra field selector names mapped to dotted paths (metadata.name, metadata.namespace are implied)."""
    strategic_merge: bool = False
    """True for built-in kinds, which accept strategic merge patches."""
    stored: bool = True
    """False for virtual kinds (SelfSubjectAccessReview): create-only and never stored."""
    verbs: tuple[str, ...] = ALL_VERBS
    defaulter: Defaulter | None = None
    validator: Validator | None = None
    name_rule: str = "subdomain"
    """How names are checked: "subdomain" (DNS-1123), "label" (DNS-1123 label) or "path" (RBAC: no / or %)."""
    spec_fields: tuple[str, ...] | None = None
    """Top-level fields whose change bumps generation; default: everything but metadata and status."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def has_status(self) -> bool:
        return "status" in self.model.model_fields and self.stored

    @property
    def all_subresources(self) -> tuple[str, ...]:
        return (("status",) if self.has_status else ()) + self.subresources

    @property
    def resource_group(self) -> str:
        """``plural.group`` as Kubernetes names resources in messages (``leases.coordination.k8s.io``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


class Registry:
    """Kinds by group/version/plural and by apiVersion/kind."""

    def __init__(self, kinds: Iterable[Kind] = ()) -> None:
        self._by_resource: dict[tuple[str, str, str], Kind] = {}
        self._by_kind: dict[tuple[str, str], Kind] = {}
        for k in kinds:
            self.register(k)

    def register(self, kind: Kind) -> None:
        key = (kind.group, kind.version, kind.plural)
        if key in self._by_resource:
            raise ValueError(f"kind {kind.kind} already registered as {kind.plural} in {kind.api_version}")
        self._by_resource[key] = kind
        self._by_kind[(kind.api_version, kind.kind)] = kind

    def get(self, group: str, version: str, plural: str) -> Kind | None:
        return self._by_resource.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> Kind | None:
        return self._by_kind.get((api_version, kind))

    def kinds(self) -> list[Kind]:
        return list(self._by_resource.values())

    def group_versions(self) -> dict[str, list[str]]:
        """Groups in registration order (core first), each with its versions."""
        out: dict[str, list[str]] = {}
        for k in self._by_resource.values():
            versions = out.setdefault(k.group, [])
            if k.version not in versions:
                versions.append(k.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[Kind]:
        return [k for k in self._by_resource.values() if k.group == group and k.version == version]

    def copy(self) -> Registry:
        return Registry(self._by_resource.values())


def default_registry() -> Registry:
    """A registry of every kind kubevisor serves."""
    from kubevisor.api import kinds

    return Registry(kinds.all_kinds())
