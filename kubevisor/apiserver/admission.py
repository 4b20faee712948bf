"""Admission: decoding a request body, unknown and duplicate fields, defaulting, validation.

A body is checked against the kind's pydantic model, but what is stored is the JSON the user sent (with
unknown fields pruned and defaults applied), never a model dump: the server does not rewrite fields it
does not own. ``fieldValidation`` decides what unknown or duplicate fields do: Strict refuses them (400),
Warn answers with ``Warning`` headers, Ignore drops them silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import ValidationError

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


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode_body(body: bytes, content_type: str, *, track_duplicates: bool) -> tuple[Any, list[str]]:
    """Parse a JSON or YAML body; returns the value and the paths of duplicate fields."""
    if len(body) > MAX_BODY:
        raise errors.ApiError(
            413, "RequestEntityTooLarge", f"request entity too large: limit is {MAX_BODY} bytes"
        )
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media in ("application/yaml", "application/apply-patch+yaml", "text/yaml"):
        try:
            return yaml.safe_load(body), []
        except yaml.YAMLError as exc:
            raise errors.bad_request(f"the request body is not valid YAML: {exc}") from exc
    if media == protobuf.MEDIA_TYPE:
        return protobuf.decode(body), []
    if media not in ("", "application/json", "*/*") and not media.endswith("+json"):
        raise errors.unsupported_media_type(
            f'the body of the request was in an unknown format ("{media}") - accepted media types include: '
            "application/json, application/yaml"
        )
    try:
        if not track_duplicates:
            import orjson

            return orjson.loads(body), []
        value = json.loads(body, object_pairs_hook=_pairs)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc
    dups = list(_find_duplicates(value, ""))
    return (_plain(value) if dups else value), dups


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
    if type_errors:
        raise errors.invalid(kind, name, type_errors)
    if kind.defaulter is not None:
        kind.defaulter(obj)
    errs = validate_metadata(kind, obj)
    if kind.validator is not None:
        errs += kind.validator(obj, old)
    if errs:
        raise errors.invalid(kind, name, errs)
    return obj
