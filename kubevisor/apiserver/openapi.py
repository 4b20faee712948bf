"""OpenAPI v3 documents generated from the kind registry and the pydantic models.

kubectl 1.29+ reads ``/openapi/v3`` and one document per group-version for three things it cannot do
without: server-side field validation (it only sends ``fieldValidation=Strict`` when the document has a
PATCH operation for the GVK with a ``fieldValidation`` query parameter, and otherwise falls back to
client-side validation that needs the protobuf ``/openapi/v2``), strategic merge patches of built-in
kinds computed from the schema (``x-kubernetes-patch-strategy``/``-merge-key`` reached through ``$ref``s,
and the PATCH operation must list ``application/strategic-merge-patch+json``), and ``kubectl explain``. See
``kubernetes-api-for-kubectl.md`` section 1.3.

Schemas come from ``model_json_schema``-style generation with a :class:`GenerateJsonSchema` subclass that
turns pydantic's JSON Schema into what Kubernetes publishes: ``X | None`` is just ``X`` (no ``anyOf`` with
``null``), ``str | int`` (quantities) is ``x-kubernetes-int-or-string``, ``title`` is dropped, and a ``$ref``
with sibling keys (a field's description, patch markers) is wrapped in ``allOf`` because OpenAPI 3.0 ignores
siblings of ``$ref``. Schemas are named like upstream (``io.k8s.api.core.v1.ConfigMap``,
``io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta``, ``io.kubevirt.v1.VirtualMachine``): a kind's model is
named after its group-version, a helper type after the group-version of the first kind in its module that
uses it, and ``kubevisor.api.meta`` after apimachinery's meta/v1.

Documents are generated on first use, cached, and addressed in the index by a content hash (sha512, upper
case hex, as kube-apiserver does) so kubectl's on-disk cache stays valid until a document changes.
"""

from __future__ import annotations

import enum
import hashlib
import threading
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import CoreModeRef, DefsRef, GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from kubevisor.api import meta
from kubevisor.api.registry import Kind, Registry

__all__ = [
    "DEFAULT_SERVER_VERSION",
    "GROUP_NAMESPACES",
    "META_NAMESPACE",
    "MODULE_NAMESPACES",
    "OpenAPIV3",
    "group_version_namespace",
    "group_version_path",
]

DEFAULT_SERVER_VERSION = "v1.30.0+kubevisor"
REF_PREFIX = "#/components/schemas/"
REF_TEMPLATE = REF_PREFIX + "{model}"

META_NAMESPACE = "io.k8s.apimachinery.pkg.apis.meta.v1"
PATCH_SCHEMA = f"{META_NAMESPACE}.Patch"
STATUS_SCHEMA = f"{META_NAMESPACE}.Status"

MODULE_NAMESPACES: dict[str, str] = {"kubevisor.api.meta": META_NAMESPACE}
"""Python modules whose types have a fixed schema namespace regardless of the kinds using them."""
GROUP_NAMESPACES: dict[str, str] = {"": "io.k8s.api.core"}
"""API groups whose schema namespace does not follow :func:`group_version_namespace`'s rules."""

GVK_EXTENSION = "x-kubernetes-group-version-kind"
ACTION_EXTENSION = "x-kubernetes-action"

PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def group_version_namespace(group: str, version: str) -> str:
    """Schema-name prefix of a group-version: ``io.k8s.api.core.v1``, ``io.k8s.api.rbac.v1``,
    ``io.kubevirt.v1``, ``io.kubevirt.cdi.v1beta1`` (non-Kubernetes groups are reversed, Java style)."""
    if group in GROUP_NAMESPACES:
        base = GROUP_NAMESPACES[group]
    elif group.endswith(".k8s.io"):
        base = f"io.k8s.api.{group.split('.', maxsplit=1)[0]}"
    else:
        base = ".".join(reversed(group.split(".")))
    return f"{base}.{version}"


def group_version_path(group: str, version: str) -> str:
    """The index key and URL part of a group-version: ``api/v1`` or ``apis/<group>/<version>``."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF_PREFIX + name}


# --- schema names --------------------------------------------------------------------------------


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _types_in(annotation: Any) -> Iterator[type]:
    """Models and enums mentioned in a field annotation (through lists, dicts, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel | enum.Enum):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _types_in(arg)


def _reachable(model: type[BaseModel]) -> list[type]:
    """``model`` and every model or enum its fields reach, breadth first."""
    seen: dict[type, None] = {model: None}
    queue: list[type] = [model]
    while queue:
        cls = queue.pop(0)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            continue
        for info in cls.model_fields.values():
            for found in _types_in(info.annotation):
                if found not in seen:
                    seen[found] = None
                    queue.append(found)
    return list(seen)


@dataclass
class _Naming:
    """Schema name of every Python type, decided once per registry so that all documents agree."""

    names: dict[str, str] = field(default_factory=dict)
    """``module.qualname`` -> schema name."""
    module_home: dict[str, str] = field(default_factory=dict)
    """Module -> namespace of the first kind defined in it."""

    @classmethod
    def for_registry(cls, registry: Registry) -> _Naming:
        naming = cls()
        kinds = registry.kinds()
        for kind in kinds:
            ns = group_version_namespace(kind.group, kind.version)
            naming.module_home.setdefault(kind.model.__module__, ns)
            naming.names.setdefault(_qualified(kind.model), f"{ns}.{kind.model.__name__}")
        deferred: list[type] = []
        for kind in kinds:
            ns = group_version_namespace(kind.group, kind.version)
            for found in _reachable(kind.model):
                key = _qualified(found)
                if key in naming.names:
                    continue
                if found.__module__ in MODULE_NAMESPACES:
                    naming.names[key] = f"{MODULE_NAMESPACES[found.__module__]}.{found.__name__}"
                elif found.__module__ == kind.model.__module__:
                    naming.names[key] = f"{ns}.{found.__name__}"
                else:
                    deferred.append(found)
        for found in deferred:
            naming.names.setdefault(
                _qualified(found), f"{naming.namespace(found.__module__)}.{found.__name__}"
            )
        return naming

    def namespace(self, module: str) -> str:
        if module in MODULE_NAMESPACES:
            return MODULE_NAMESPACES[module]
        if module in self.module_home:
            return self.module_home[module]
        return "io.kubevisor." + module.removeprefix("kubevisor.").removeprefix("api.")

    def name(self, qualified: str) -> str:
        if qualified in self.names:
            return self.names[qualified]
        module, _, short = qualified.rpartition(".")
        return f"{self.namespace(module)}.{short}"


# --- schema generation ---------------------------------------------------------------------------


class _SchemaGenerator(GenerateJsonSchema):
    """pydantic JSON Schema shaped like Kubernetes' OpenAPI v3 schemas (see the module docstring)."""

    def __init__(self, naming: _Naming) -> None:
        super().__init__(by_alias=True, ref_template=REF_TEMPLATE)
        self._naming = naming

    def get_defs_ref(self, core_mode_ref: CoreModeRef) -> DefsRef:
        defs_ref = super().get_defs_ref(core_mode_ref)
        qualified = core_mode_ref[0].rsplit(":", 1)[0]
        if "[" not in qualified:  # parametrised generics keep pydantic's names
            preferred = DefsRef(self._naming.name(qualified))
            choices = self._prioritized_defsref_choices.get(defs_ref)
            if choices is not None and preferred not in choices:
                # pydantic picks the first choice no other type claims, so names stay unique.
                choices.insert(0, preferred)
        return defs_ref

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        # Kubernetes schemas have no null type: an optional field is simply not required.
        return self.generate_inner(schema["schema"])

    def union_schema(self, schema: core_schema.UnionSchema) -> JsonSchemaValue:
        return _simplify_union(super().union_schema(schema))

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


_NULL = {"type": "null"}
_SCALARS = {"string", "integer", "number"}


def _simplify_union(result: JsonSchemaValue) -> JsonSchemaValue:
    """Replace ``anyOf`` by what kubectl understands: the one non-null member, int-or-string, or anything."""
    members = result.get("anyOf")
    if not isinstance(members, list):
        return result
    rest = {k: v for k, v in result.items() if k != "anyOf"}
    members = [m for m in members if m != _NULL]
    if len(members) == 1:
        return {**members[0], **rest}
    types = {m.get("type") for m in members if isinstance(m, dict) and set(m) == {"type"}}
    if len(types) == len(members) and types <= _SCALARS:
        if "string" in types:
            return {**rest, "x-kubernetes-int-or-string": True}
        return {**rest, "type": "number"}
    return rest  # no type: any value (the server validates with the model)


_SCHEMA_MAPS = ("properties", "patternProperties")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_SINGLE = ("items", "additionalProperties", "not")


def _clean(schema: Any) -> Any:
    """Drop titles and null defaults, turn ``const`` into ``enum``, wrap ``$ref``s that have siblings."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if (key == "title" and isinstance(value, str)) or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            # False (extra="forbid") is enforced by the server (fieldValidation), as upstream; True is the
            # default, and kubectl 1.29/1.30 explain templates fail on a boolean here (upstream: absent).
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _clean(v) for k, v in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_clean(v) for v in value]
        elif key in _SCHEMA_SINGLE and isinstance(value, dict):
            out[key] = _clean(value)
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "anyOf" in out:
        out = _simplify_union(out)
    if "$ref" in out and len(out) > 1:
        ref = out.pop("$ref")
        out = {"allOf": [{"$ref": ref}], **out}
    return out


# --- paths ---------------------------------------------------------------------------------------


def _param(
    name: str, where: str, description: str, type_: str = "string", required: bool = False
) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": where, "description": description, "schema": {"type": type_}}
    if required:
        param["required"] = True
    return param


P_NAME = _param("name", "path", "name of the object", required=True)
P_NAMESPACE = _param(
    "namespace", "path", "object name and auth scope, such as for teams and projects", required=True
)
P_PRETTY = _param("pretty", "query", "If 'true', then the output is pretty printed.")
P_DRY_RUN = _param(
    "dryRun",
    "query",
    "When present, indicates that modifications should not be persisted. The only valid value is All: "
    "all dry run stages are processed.",
)
P_FIELD_MANAGER = _param(
    "fieldManager", "query", "A name associated with the actor or entity that is making these changes."
)
P_FIELD_VALIDATION = _param(
    "fieldValidation",
    "query",
    "How the server handles unknown or duplicate fields in the request: Ignore drops them silently, Warn "
    "(default) accepts the request with a warning per field, Strict fails the request with BadRequest.",
)
P_FORCE = _param(
    "force",
    "query",
    "Force apply requests: re-acquire conflicting fields owned by other managers. Only for apply patches.",
    "boolean",
)
P_LIST = [
    _param("allowWatchBookmarks", "query", "Request watch events of type BOOKMARK.", "boolean"),
    _param("continue", "query", "The continue token of the previous page of a paginated list."),
    _param("fieldSelector", "query", "Restrict the returned objects by their fields."),
    _param("labelSelector", "query", "Restrict the returned objects by their labels."),
    _param(
        "limit",
        "query",
        "Maximum number of objects to return; the rest is reachable with continue.",
        "integer",
    ),
    _param(
        "resourceVersion", "query", "Return objects at or after this resource version; where a watch starts."
    ),
    _param("resourceVersionMatch", "query", "How resourceVersion applies to a list: Exact or NotOlderThan."),
    _param(
        "sendInitialEvents",
        "query",
        "Start a watch with synthetic ADDED events for existing objects.",
        "boolean",
    ),
    _param("timeoutSeconds", "query", "Timeout of the list or watch call.", "integer"),
    _param("watch", "query", "Watch for changes and return them as a stream of events.", "boolean"),
]
P_DELETE = [
    P_DRY_RUN,
    _param("gracePeriodSeconds", "query", "Seconds before the object is deleted; 0 means now.", "integer"),
    _param("orphanDependents", "query", "Deprecated: use propagationPolicy.", "boolean"),
    _param(
        "propagationPolicy", "query", "Garbage collection of dependents: Orphan, Background or Foreground."
    ),
]
P_WRITE = [P_DRY_RUN, P_FIELD_MANAGER, P_FIELD_VALIDATION]

_STATUS_TEXT = {"200": "OK", "201": "Created", "202": "Accepted"}


def _responses(schema: str, *codes: str) -> dict[str, Any]:
    content = {media: {"schema": _ref(schema)} for media in ("application/json", "application/yaml")}
    out: dict[str, Any] = {code: {"description": _STATUS_TEXT[code], "content": content} for code in codes}
    out["401"] = {"description": "Unauthorized"}
    return out


def _body(schema: str, media_types: tuple[str, ...] = ("*/*",)) -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": _ref(schema)} for media in media_types}}


def _operation_prefix(group: str, version: str) -> str:
    """``CoreV1``, ``RbacAuthorizationV1``, ``KubevirtIoV1``: the group-version part of operation ids."""
    if not group:
        words = ["core"]
    elif group.endswith(".k8s.io"):
        words = group.removesuffix(".k8s.io").split(".")
    else:
        words = group.replace("-", ".").split(".")
    return "".join(w[:1].upper() + w[1:] for w in words) + version[:1].upper() + version[1:]


def _tag(group: str, version: str) -> str:
    short = group.removesuffix(".k8s.io").replace(".", "_") if group else "core"
    return f"{short}_{version}"


@dataclass(frozen=True)
class _KindSchemas:
    kind: Kind
    item: str
    list_schema: str | None


def _kind_paths(ks: _KindSchemas, patch_types: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    kind = ks.kind
    base = "/" + group_version_path(kind.group, kind.version)
    collection = (
        f"{base}/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced else f"{base}/{kind.plural}"
    )
    item = f"{collection}/{{name}}"
    gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
    prefix = _operation_prefix(kind.group, kind.version)
    scope = "Namespaced" if kind.namespaced else ""
    scope_params = [P_NAMESPACE] if kind.namespaced else []
    tags = [_tag(kind.group, kind.version)]

    def op(
        verb: str,
        action: str,
        what: str,
        params: list[dict[str, Any]],
        responses: dict[str, Any],
        **extra: Any,
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "operationId": f"{verb}{prefix}{scope}{kind.kind}{what}",
            "description": f"{verb} {'the status of ' if what == 'Status' else ''}the specified {kind.kind}",
            "tags": tags,
            "parameters": [*params, P_PRETTY],
            **extra,
            "responses": responses,
            ACTION_EXTENSION: action,
            GVK_EXTENSION: gvk,
        }
        return operation

    verbs = set(kind.verbs)
    paths: dict[str, dict[str, Any]] = {}
    coll: dict[str, Any] = {}
    if kind.stored and "list" in verbs and ks.list_schema:
        coll["get"] = op("list", "list", "", [*scope_params, *P_LIST], _responses(ks.list_schema, "200"))
    if "create" in verbs or not kind.stored:
        coll["post"] = op(
            "create",
            "post",
            "",
            [*scope_params, *P_WRITE],
            _responses(ks.item, "200", "201", "202"),
            requestBody=_body(ks.item),
        )
    if kind.stored and "deletecollection" in verbs:
        coll["delete"] = op(
            "deletecollection",
            "deletecollection",
            "",
            [*scope_params, *P_LIST, *P_DELETE],
            _responses(STATUS_SCHEMA, "200"),
            requestBody=_body(f"{META_NAMESPACE}.DeleteOptions"),
        )
    if coll:
        paths[collection] = coll
    if not kind.stored:
        return paths

    item_params = [P_NAME, *scope_params]
    patch_body = _body(PATCH_SCHEMA, patch_types)

    def item_ops(what: str) -> dict[str, Any]:
        ops: dict[str, Any] = {}
        if "get" in verbs:
            ops["get"] = op("read", "get", what, item_params, _responses(ks.item, "200"))
        if "update" in verbs:
            ops["put"] = op(
                "replace",
                "put",
                what,
                [*item_params, *P_WRITE],
                _responses(ks.item, "200", "201"),
                requestBody=_body(ks.item),
            )
        if "patch" in verbs:
            ops["patch"] = op(
                "patch",
                "patch",
                what,
                [*item_params, *P_WRITE, P_FORCE],
                _responses(ks.item, "200", "201"),
                requestBody=patch_body,
            )
        return ops

    item_item = item_ops("")
    if "delete" in verbs:
        item_item["delete"] = op(
            "delete",
            "delete",
            "",
            [*item_params, *P_DELETE],
            _responses(STATUS_SCHEMA, "200", "202"),
            requestBody=_body(f"{META_NAMESPACE}.DeleteOptions"),
        )
    if item_item:
        paths[item] = item_item
    if kind.has_status:
        status_ops = item_ops("Status")
        if status_ops:
            paths[f"{item}/status"] = status_ops
    if kind.namespaced and "list" in verbs and ks.list_schema:
        all_ns = op("list", "list", "ForAllNamespaces", P_LIST, _responses(ks.list_schema, "200"))
        all_ns["operationId"] = f"list{prefix}{kind.kind}ForAllNamespaces"
        paths[f"{base}/{kind.plural}"] = {"get": all_ns}
    return paths


# --- fixed meta.k8s.io schemas -------------------------------------------------------------------


def _prop(type_: str, description: str) -> dict[str, Any]:
    return {"type": type_, "description": description}


API_VERSION_DESCRIPTION = "APIVersion defines the versioned schema of this representation of an object."
KIND_DESCRIPTION = "Kind is a string value representing the REST resource this object represents."


def _patch_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request "
        "body: a JSON patch, a JSON merge patch, a strategic merge patch or an apply configuration.",
    }


def _status_schema(list_meta: str, details: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Status is a return value for calls that don't return other objects.",
        "properties": {
            "apiVersion": _prop("string", API_VERSION_DESCRIPTION),
            "kind": _prop("string", KIND_DESCRIPTION),
            "metadata": {"allOf": [_ref(list_meta)], "description": "Standard list metadata."},
            "status": _prop("string", "Status of the operation: Success or Failure."),
            "message": _prop("string", "A human-readable description of the status of this operation."),
            "reason": _prop(
                "string", "A machine-readable description of why this operation is in the Failure status."
            ),
            "details": {"allOf": [_ref(details)], "description": "Extended data associated with the reason."},
            "code": {"type": "integer", "format": "int32", "description": "Suggested HTTP return code."},
        },
        GVK_EXTENSION: [{"group": "", "version": "v1", "kind": "Status"}],
    }


def _list_schema(kind: Kind, item: str, list_meta: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"{kind.list_kind} is a list of {kind.kind} objects.",
        "required": ["items"],
        "properties": {
            "apiVersion": _prop("string", API_VERSION_DESCRIPTION),
            "kind": _prop("string", KIND_DESCRIPTION),
            "metadata": {"allOf": [_ref(list_meta)], "description": "Standard list metadata."},
            "items": {"type": "array", "items": _ref(item), "description": f"List of {kind.plural}."},
        },
        GVK_EXTENSION: [{"group": kind.group, "version": kind.version, "kind": kind.list_kind}],
    }


# --- documents -----------------------------------------------------------------------------------


_META_MODELS: tuple[type[BaseModel], ...] = (meta.ListMeta, meta.DeleteOptions, meta.StatusDetails)


class OpenAPIV3:
    """The ``/openapi/v3`` index and per-group-version documents of a registry, generated lazily and cached.

    Kinds registered after construction are picked up: a document is regenerated when the kinds of the
    registry change.
    """

    def __init__(self, registry: Registry, version: str = DEFAULT_SERVER_VERSION) -> None:
        self.registry = registry
        self.version = version
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] = ()
        self._naming: _Naming | None = None
        self._docs: dict[str, tuple[bytes, str]] = {}

    def group_versions(self) -> dict[str, tuple[str, str]]:
        """Index paths (``api/v1``, ``apis/<g>/<v>``) of every served group-version, in registry order."""
        return {
            group_version_path(group, version): (group, version)
            for group, versions in self.registry.group_versions().items()
            for version in versions
        }

    def index(self) -> dict[str, Any]:
        """The ``/openapi/v3`` discovery document: each group-version's URL with its content hash."""
        paths: dict[str, Any] = {}
        for gv_path in self.group_versions():
            doc = self.document(gv_path)
            if doc is not None:
                paths[gv_path] = {"serverRelativeURL": f"/openapi/v3/{gv_path}?hash={doc[1]}"}
        return {"paths": paths}

    def document(self, gv_path: str) -> tuple[bytes, str] | None:
        """The JSON document of a group-version (``api/v1``, ``apis/rbac.authorization.k8s.io/v1``) and its
        hash; None for a group-version the registry does not serve."""
        gv_path = gv_path.strip("/")
        group_version = self.group_versions().get(gv_path)
        if group_version is None:
            return None
        with self._lock:
            naming = self._current_naming()
            cached = self._docs.get(gv_path)
            if cached is None:
                body = orjson.dumps(self._build(naming, *group_version))
                cached = (body, hashlib.sha512(body).hexdigest().upper())
                self._docs[gv_path] = cached
            return cached

    def _current_naming(self) -> _Naming:
        signature = tuple(id(k) for k in self.registry.kinds())
        if self._naming is None or signature != self._signature:
            self._naming = _Naming.for_registry(self.registry)
            self._signature = signature
            self._docs.clear()
        return self._naming

    def _build(self, naming: _Naming, group: str, version: str) -> dict[str, Any]:
        kinds = self.registry.in_group_version(group, version)
        models: list[type[BaseModel]] = list(dict.fromkeys([*(k.model for k in kinds), *_META_MODELS]))
        for model in models:
            if not model.__pydantic_complete__:
                model.model_rebuild()
        generator = _SchemaGenerator(naming)
        refs, definitions = generator.generate_definitions(
            [(model, "validation", model.__pydantic_core_schema__) for model in models]
        )

        def name_of(model: type[BaseModel]) -> str:
            ref: str = refs[(model, "validation")]["$ref"]
            return ref.removeprefix(REF_PREFIX)

        schemas: dict[str, Any] = {str(name): _clean(schema) for name, schema in definitions.items()}
        list_meta = name_of(meta.ListMeta)
        schemas[PATCH_SCHEMA] = _patch_schema()
        schemas[STATUS_SCHEMA] = _status_schema(list_meta, name_of(meta.StatusDetails))

        paths: dict[str, Any] = {}
        for kind in kinds:
            item = name_of(kind.model)
            gvks = schemas[item].setdefault(GVK_EXTENSION, [])
            gvks.append({"group": kind.group, "version": kind.version, "kind": kind.kind})
            list_name: str | None = None
            if kind.stored and "list" in kind.verbs:
                list_name = f"{item.rpartition('.')[0]}.{kind.list_kind}"
                if list_name in schemas:
                    raise ValueError(f"schema name {list_name} of {kind.list_kind} is already taken")
                schemas[list_name] = _list_schema(kind, item, list_meta)
            patch_types = (*PATCH_TYPES, STRATEGIC_MERGE_PATCH) if kind.strategic_merge else PATCH_TYPES
            for path, ops in _kind_paths(_KindSchemas(kind, item, list_name), patch_types).items():
                paths.setdefault(path, {}).update(ops)

        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": self.version},
            "paths": paths,
            "components": {"schemas": dict(sorted(schemas.items()))},
        }
