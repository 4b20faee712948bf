"""Admission: decoding a request body, unknown and duplicate fields, defaulting, validation.

A body is checked against the kind's pydantic model, but what is stored is the JSON the user sent (with
unknown fields pruned and defaults applied), never a model dump: the server does not rewrite fields it
does not own. ``fieldValidation`` decides what unknown or duplicate fields do: Strict refuses them (400),
Warn answers with ``Warning`` headers, Ignore drops them silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ValidationError

from kubevisor.api.registry import Kind, Obj
from kubevisor.api.validation import (
    FieldError,
    dns1123_label,
    dns1123_subdomain,
    label_value,
    path_segment,
    qualified_name,
)
from kubevisor.apiserver import errors, protobuf

MAX_BODY = 3 * 1024 * 1024
"""Largest request body accepted, as kube-apiserver's 3 MiB limit."""

FIELD_VALIDATIONS = ("Strict", "Warn", "Ignore")

MAX_DEPTH = 100
"""Deepest nesting of objects and arrays accepted in a body or a patched object: validating, copying and
comparing objects recurse in Python, which must stay far from the interpreter's recursion limit (and
from orjson's 255 levels). No Kubernetes object comes close."""


def _shape_problem(value: Any, max_values: int) -> str | None:
    """Why ``value`` is unusable: nested deeper than :data:`MAX_DEPTH`, more than ``max_values`` values
    (YAML aliases expand a small body into a huge one), or a NaN or infinite number. None if usable."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > max_values:
            return f"it expands to more than {max_values} values"
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            if isinstance(item, float) and not math.isfinite(item):
                return f"{item} is not a JSON number"
            continue
        if depth >= MAX_DEPTH:
            return f"it is nested deeper than {MAX_DEPTH} levels"
        stack.extend((child, depth + 1) for child in children)
    return None


def json_problem(value: Any, max_values: int) -> str | None:
    """Why ``value`` cannot be stored as JSON (see :func:`_shape_problem`; also numbers beyond 64 bits,
    lone surrogates, non-JSON types), or None."""
    problem = _shape_problem(value, max_values)
    if problem is None:
        try:
            orjson.dumps(value)
        except TypeError as exc:  # orjson.JSONEncodeError
            problem = f"it is not JSON data: {exc}"
    return problem


try:  # libyaml's parser: a few MiB of YAML take seconds, not tens of seconds, of the event loop
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


class _YAMLLoader(_SafeLoader):
    """YAML read as Kubernetes reads it (sigs.k8s.io/yaml): timestamps stay strings."""


_YAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_as_json(value: Any, max_values: int) -> Any:
    """A YAML document as the JSON it stands for; non-string keys become strings, as in Kubernetes."""
    problem = _shape_problem(value, max_values)
    if problem is None:
        try:
            return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
        except TypeError as exc:  # orjson.JSONEncodeError: binary, sets, lone surrogates, huge numbers
            problem = f"it is not JSON data: {exc}"
    raise errors.bad_request(f"the request body cannot be used: {problem}")


class _Dict(dict[str, Any]):
    """A JSON object that remembers keys it saw twice."""

    duplicates: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = _Dict()
    dups: list[str] = []
    for key, value in pairs:
        if key in out:
            dups.append(key)
        out[key] = value
    if dups:
        out.duplicates = dups
    return out


def _find_duplicates(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for dup in getattr(value, "duplicates", ()):
            yield f"{path}.{dup}" if path else dup
        for key, sub in value.items():
            yield from _find_duplicates(sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from _find_duplicates(sub, f"{path}[{i}]")


def decode_body(body: bytes, content_type: str, *, track_duplicates: bool) -> tuple[Any, list[str]]:
    """Parse a JSON or YAML body; returns the value and the paths of duplicate fields."""
    if len(body) > MAX_BODY:
        raise errors.ApiError(
            413, "RequestEntityTooLarge", f"request entity too large: limit is {MAX_BODY} bytes"
        )
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media in ("application/yaml", "application/apply-patch+yaml", "text/yaml"):
        try:
            value = yaml.load(body, Loader=_YAMLLoader)  # a SafeLoader
        except yaml.YAMLError as exc:
            raise errors.bad_request(f"the request body is not valid YAML: {exc}") from exc
        except RecursionError as exc:
            raise errors.bad_request("the request body is not valid YAML: nested too deeply") from exc
        return _yaml_as_json(value, len(body) + 16), []
    if media == protobuf.MEDIA_TYPE:
        return protobuf.decode(body), []
    if media not in ("", "application/json", "*/*") and not media.endswith("+json"):
        raise errors.unsupported_media_type(
            f'the body of the request was in an unknown format ("{media}") - accepted media types include: '
            "application/json, application/yaml"
        )
    # orjson refuses what the store could not encode (invalid UTF-8, lone surrogates, NaN) and caps nesting.
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc
    problem = _shape_problem(value, len(body) + 16)
    if problem is not None:
        raise errors.bad_request(f"the request body cannot be used: {problem}")
    if not track_duplicates:
        return value, []
    # Both parsers keep the last of duplicate keys; the standard one also says which keys were repeated.
    return value, list(_find_duplicates(json.loads(body, object_pairs_hook=_pairs), ""))


def check_types(model: type[BaseModel], value: Any, what: str) -> None:
    """400 if ``value`` is not an object of ``model`` or has a field of the wrong type; unknown and
    missing fields are let through (options bodies: DeleteOptions, TokenRequest)."""
    try:
        model.model_validate(value, strict=True)
    except ValidationError as exc:
        for err in exc.errors():
            if err["type"] not in ("extra_forbidden", "missing"):
                where = _loc_path(tuple(err["loc"])) or "body"
                raise errors.bad_request(
                    f"the request body is not a valid {what}: {where}: {err['msg']}"
                ) from None


def _loc_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _prune(obj: Any, loc: tuple[int | str, ...]) -> None:
    target = obj
    for part in loc[:-1]:
        try:
            target = target[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(target, dict):
        target.pop(loc[-1], None)


def check_fields(
    kind: Kind, obj: Obj, *, field_validation: str, duplicates: list[str], warnings: list[str]
) -> list[FieldError]:
    """Handle unknown/duplicate fields per ``field_validation``; return type errors (for 422) of the rest."""
    unknown: list[str] = []
    type_errors: list[FieldError] = []
    try:
        kind.model.model_validate(obj, strict=True)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                unknown.append(_loc_path(loc))
                if field_validation != "Strict":
                    _prune(obj, loc)
            else:
                path = _loc_path(loc)
                reason = "FieldValueRequired" if err["type"] == "missing" else "FieldValueInvalid"
                message = "Required value" if err["type"] == "missing" else err["msg"]
                if err["type"] != "missing" and "input" in err:
                    message = f"{_short(err['input'])}: {err['msg']}"
                type_errors.append(FieldError(path, message, reason))
    problems = [f'unknown field "{p}"' for p in unknown] + [f'duplicate field "{p}"' for p in duplicates]
    if problems and field_validation == "Strict":
        name = (obj.get("metadata") or {}).get("name") or ""
        name = name if isinstance(name, str) else ""
        raise errors.bad_request(
            f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
            f"strict decoding error: {', '.join(problems)}" + (f" ({kind.kind} {name!r})" if name else ""),
            [FieldError(p.split('"')[1], p, "FieldValueInvalid") for p in problems],
        )
    if field_validation == "Warn":
        warnings.extend(problems)
    return type_errors


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def validate_metadata(kind: Kind, obj: Obj) -> list[FieldError]:
    """Name, labels and annotations rules every kind shares."""
    meta = obj.get("metadata") or {}
    errs: list[FieldError] = []
    name = meta.get("name")
    if name:
        rule = {"label": dns1123_label, "path": path_segment}.get(kind.name_rule, dns1123_subdomain)
        errs += rule(name, "metadata.name")
    for key, value in (meta.get("labels") or {}).items():
        errs += qualified_name(key, f"metadata.labels[{key}]")
        errs += label_value(str(value), f"metadata.labels[{key}]")
    for key in meta.get("annotations") or {}:
        errs += qualified_name(key, f"metadata.annotations[{key}]")
    total = sum(len(k) + len(str(v)) for k, v in (meta.get("annotations") or {}).items())
    if total > 256 * 1024:
        errs.append(FieldError("metadata.annotations", "must have at most 262144 bytes", "FieldValueTooLong"))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        if isinstance(ref, dict) and not ref.get("uid"):
            errs.append(
                FieldError(f"metadata.ownerReferences[{i}].uid", "uid must not be empty", "FieldValueInvalid")
            )
    return errs


def admit(
    kind: Kind,
    obj: Obj,
    old: Obj | None,
    *,
    field_validation: str,
    duplicates: list[str],
    warnings: list[str],
) -> Obj:
    """Default and validate ``obj`` (``old`` is the stored object on update); raise 400/422 on errors."""
    type_errors = check_fields(
        kind, obj, field_validation=field_validation, duplicates=duplicates, warnings=warnings
    )
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str):
        name = None  # not quoted back: it may be any JSON value, megabytes of it
    if type_errors:
        raise errors.invalid(kind, name, type_errors)
    # "spec": null is no spec, as when Kubernetes decodes into its types (the defaulters rely on it).
    for key in [k for k, v in obj.items() if v is None]:
        del obj[key]
    if kind.defaulter is not None:
        kind.defaulter(obj)
    errs = validate_metadata(kind, obj)
    if kind.validator is not None:
        errs += kind.validator(obj, old)
    if errs:
        raise errors.invalid(kind, name, errs)
    return obj
