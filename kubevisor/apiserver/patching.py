"""PATCH bodies: RFC 6902 JSON patch, RFC 7386 merge patch and Kubernetes strategic merge patch.

Why this module exists: ``kubectl patch``, ``kubectl apply`` (client-side), ``kubectl edit`` and the client
libraries send PATCH requests in one of three JSON formats, chosen by the request's ``Content-Type``. The
apiserver reads the stored object as plain JSON, hands it here with the body, and validates whatever comes
back by parsing it with the kind's model. Everything in this module works on plain JSON values
(``dict``/``list``/``str``/``int``/``float``/``bool``/``None``) and is free of I/O, so it is tested alone.

Invariants:

* No function mutates its arguments, and a result never shares a mutable container with the document or
  the patch it was computed from (it may be mutated freely by the caller).
* Every failure caused by the request body raises :class:`PatchError` (a ``ValueError``); an unusable
  ``Content-Type`` raises its subclass :class:`UnsupportedPatchError`. Nothing else escapes for bad input.
* A strategic merge patch result never contains a patch directive key (``$patch``, ``$retainKeys``,
  ``$setElementOrder/…``, ``$deleteFromPrimitiveList/…``): directives are applied or rejected, never stored.
  Other keys starting with ``$`` (``$ref``, ``$schema``) are ordinary data.

Strategic merge patch
---------------------
The semantics follow the Kubernetes description
(https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md)
and the ordering rules of apimachinery's implementation. The patch metadata comes from the kind's pydantic
model: a field's ``json_schema_extra`` may carry ``x-kubernetes-patch-strategy`` (a comma-separated list
of ``merge``, ``replace``, ``retainKeys``) and ``x-kubernetes-patch-merge-key``. Fields are looked up by
their JSON name (the pydantic alias). Nested models are followed through ``Model``, ``Model | None``,
``list[Model]`` and ``dict[str, Model]``; anything else (``dict[str, Any]``, ``Any``, unknown keys) is
merged as a plain JSON map whose lists are replaced.

* Maps merge recursively; ``null`` deletes a key.
* A list whose field has strategy ``merge`` and a merge key is merged element by element, elements being
  matched by the merge key; a ``merge`` list without a merge key is a set of primitives (deduplicated).
  Any other list is replaced by the patch's list.
* Order of a merged list: items named in the patch come in the patch's order, items only on the server
  keep their relative order, and the two runs are interleaved by position in the live list, as in
  apimachinery. An item the live list does not have goes after the server-only items (the design's
  "else append to the end"; apimachinery puts it before them), so ``finalizers: [b]`` on ``[a]`` gives
  ``[a, b]``. ``$setElementOrder/<field>`` gives the order explicitly; there apimachinery's interleaving
  is kept whole, so a new item stays next to its neighbours in the directive's list.
* ``$patch: replace`` in a map replaces the map; ``$patch: delete`` in a map removes the map (like
  ``null``; apimachinery leaves ``{}``); ``$patch: merge`` is the default and is accepted explicitly.
* In a merging list, an element ``{"$patch": "replace"}`` makes the other elements replace the list, and
  ``{"<mergeKey>": v, "$patch": "delete"}`` removes every element whose merge key is ``v``.
* ``$deleteFromPrimitiveList/<field>`` removes every occurrence of its values from the list once the patch
  list is merged; ``$retainKeys`` (sent for fields with
  strategy ``retainKeys``) drops the keys of the live map it does not list, and every non-null key of the
  patch map must be listed. Like apimachinery, it is honoured wherever it appears.
* A patch value with no counterpart in the live object, and every map inside a list that replaces the
  live one, is applied to "nothing": its directives are processed and its ``null`` members dropped, so
  it is stored clean (``null`` elements of a list are values and are kept).
* Malformed directives raise :class:`PatchError`: an unknown ``$patch`` value, an element of a merging
  list without its merge key, a ``$setElementOrder`` list that contradicts the patch list's order or
  names a field that is not a merging list, directive values of the wrong type.
"""

from __future__ import annotations

import collections.abc
import copy
import json
import types
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Final, Union, get_args, get_origin

import jsonpatch
import jsonpointer
from pydantic import BaseModel

JSON_PATCH: Final = "application/json-patch+json"
MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"
APPLY_PATCH: Final = "application/apply-patch+yaml"
"""Server-side apply; recognised but not supported by kubevisor."""

PATCH_DIRECTIVE: Final = "$patch"
RETAIN_KEYS_DIRECTIVE: Final = "$retainKeys"
SET_ELEMENT_ORDER_PREFIX: Final = "$setElementOrder/"
DELETE_FROM_PRIMITIVE_LIST_PREFIX: Final = "$deleteFromPrimitiveList/"

_JSON_PATCH_OPS: Final = frozenset({"add", "remove", "replace", "move", "copy", "test"})
MAX_JSON_PATCH_OPERATIONS: Final = 10_000
"""Most operations in one JSON patch, as kube-apiserver."""
MAX_JSON_PATCH_COPY: Final = 3 * 1024 * 1024
"""Most bytes of JSON the ``copy`` operations of one patch may duplicate, as kube-apiserver's
``AccumulatedCopySizeLimit``: each copy of the whole document doubles it, so a few dozen would otherwise
take all memory and time."""
_PATCH_VALUES: Final = ("replace", "merge", "delete")


class PatchError(ValueError):
    """The patch body is malformed or cannot be applied to the object (HTTP 400/422 material)."""


class UnsupportedPatchError(PatchError):
    """The request's media type is not a patch format accepted for this kind (HTTP 415 material)."""

    def __init__(self, message: str, accepted: tuple[str, ...]) -> None:
        super().__init__(message)
        self.accepted = accepted
        """The media types that would have been accepted."""


# --------------------------------------------------------------------------------------------------------
# RFC 6902 and RFC 7386


def json_patch(doc: Any, patch: Any) -> Any:
    """Apply an RFC 6902 JSON patch (a list of operations) to ``doc`` and return the new document."""
    if not isinstance(patch, list):
        raise PatchError(f"a JSON patch must be a JSON array of operations, got {_json_type(patch)}")
    for i, op in enumerate(patch):
        if not isinstance(op, dict):
            raise PatchError(f"JSON patch operation {i} must be a JSON object, got {_json_type(op)}")
        name = op.get("op")
        if name not in _JSON_PATCH_OPS:
            raise PatchError(
                f'JSON patch operation {i} has unknown or missing "op" {name!r}; '
                f"expected one of {', '.join(sorted(_JSON_PATCH_OPS))}"
            )
        if not isinstance(op.get("path"), str):
            raise PatchError(f'JSON patch operation {i} ({name}) needs a string "path"')
        if name in ("move", "copy") and not isinstance(op.get("from"), str):
            raise PatchError(f'JSON patch operation {i} ({name}) needs a string "from"')
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f'JSON patch operation {i} ({name}) needs a "value"')
    if len(patch) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchError(
            f"the allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {len(patch)}"
        )
    try:
        # One operation at a time, to count what the copies duplicate; jsonpatch copies every operation
        # value it inserts, and the document is copied once here.
        result = copy.deepcopy(doc)
        copied = 0
        for op in patch:
            if op["op"] == "copy":
                copied += len(json.dumps(jsonpointer.resolve_pointer(result, op["from"])))
                if copied > MAX_JSON_PATCH_COPY:
                    raise PatchError(
                        "JSON patch cannot be applied: its copy operations copy more than "
                        f"{MAX_JSON_PATCH_COPY} bytes"
                    )
            result = jsonpatch.JsonPatch([op]).apply(result, in_place=True)
        return result
    except PatchError:
        raise
    except jsonpatch.JsonPatchTestFailed as e:
        raise PatchError(f"JSON patch test operation failed: {e}") from e
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
        raise PatchError(f"JSON patch cannot be applied: {e}") from e
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise PatchError(f"JSON patch cannot be applied: {e!r}") from e


def merge_patch(doc: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch: maps merge, ``null`` deletes, anything else replaces."""
    return _merge_patch_into(copy.deepcopy(doc), patch)


def _merge_patch_into(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch on a ``target`` this module owns (it is modified in place)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch_into(target.get(key), value)
    return target


# --------------------------------------------------------------------------------------------------------
# Patch metadata from pydantic models


@dataclass(frozen=True, slots=True)
class _FieldMeta:
    """How strategic merge patch treats one field: its strategies, merge key and (unwrapped) type."""

    strategies: frozenset[str] = frozenset()
    merge_key: str | None = None
    annotation: Any = None
    """The field's type without ``Optional``/``Annotated``; ``None`` when untyped."""

    @property
    def merges_lists(self) -> bool:
        return "merge" in self.strategies


_UNTYPED: Final = _FieldMeta()


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None``; ``None`` for unions of several types (treated as untyped)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return None
            annotation = members[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


@cache
def _model_fields(model: type[BaseModel]) -> Mapping[str, _FieldMeta]:
    """The patch metadata of ``model``'s fields, by JSON name."""
    fields: dict[str, _FieldMeta] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        strategy = extra.get("x-kubernetes-patch-strategy")
        strategies = (
            frozenset(s.strip() for s in strategy.split(",") if s.strip())
            if isinstance(strategy, str)
            else frozenset()
        )
        merge_key = extra.get("x-kubernetes-patch-merge-key")
        fields[info.alias or name] = _FieldMeta(
            strategies=strategies,
            merge_key=merge_key if isinstance(merge_key, str) and merge_key else None,
            annotation=_unwrap(info.annotation),
        )
    return fields


def _child(annotation: Any, key: str) -> _FieldMeta:
    """Metadata of the value under ``key`` in a map of type ``annotation``."""
    if _is_model(annotation):
        return _model_fields(annotation).get(key, _UNTYPED)
    if get_origin(annotation) in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        args = get_args(annotation)
        if len(args) == 2:
            return _FieldMeta(annotation=_unwrap(args[1]))
    return _UNTYPED


def _element(annotation: Any) -> Any:
    """Element type of a list type, or ``None``."""
    if get_origin(annotation) in (list, collections.abc.Sequence, collections.abc.MutableSequence):
        args = get_args(annotation)
        if len(args) == 1:
            return _unwrap(args[0])
    return None


# --------------------------------------------------------------------------------------------------------
# Strategic merge patch

_ABSENT: Final[Any] = object()
"""Marks a key that is (or becomes) missing from its map."""


def strategic_merge_patch(
    doc: dict[str, Any], patch: dict[str, Any], model: type[BaseModel]
) -> dict[str, Any]:
    """Apply a Kubernetes strategic merge patch to ``doc``, an object of kind ``model`` as plain JSON."""
    if not isinstance(doc, dict):
        raise PatchError(f"the object to patch must be a JSON object, got {_json_type(doc)}")
    if not isinstance(patch, dict):
        raise PatchError(f"a strategic merge patch must be a JSON object, got {_json_type(patch)}")
    result = _smp_map(copy.deepcopy(doc), copy.deepcopy(patch), model, "")
    return {} if result is _ABSENT else result


def _smp_value(original: Any, patch: Any, meta: _FieldMeta, path: str) -> Any:
    """The merge of one patch value into ``original`` (possibly ``_ABSENT``); ``_ABSENT`` deletes."""
    if patch is None:
        return _ABSENT
    if isinstance(patch, dict):
        base = original if isinstance(original, dict) and "replace" not in meta.strategies else None
        return _smp_map(base, patch, meta.annotation, path)
    if isinstance(patch, list):
        if meta.merges_lists:
            return _smp_list(original if isinstance(original, list) else [], patch, meta, path)
        return _replacement_list(patch, _element(meta.annotation), path)
    return patch


def _smp_map(original: dict[str, Any] | None, patch: dict[str, Any], annotation: Any, path: str) -> Any:
    """Merge map ``patch`` into ``original`` (owned, modified in place; ``None`` for none).

    Returns the merged map, or ``_ABSENT`` when the patch says ``$patch: delete``.
    """
    directive = patch.get(PATCH_DIRECTIVE, _ABSENT)
    if directive is not _ABSENT:
        if directive == "delete":
            return _ABSENT
        if directive == "replace":
            original = None
        elif directive != "merge":
            raise PatchError(
                f"{_at(path)}unknown {PATCH_DIRECTIVE} directive {directive!r}; "
                f"expected one of {', '.join(_PATCH_VALUES)}"
            )
    result: dict[str, Any] = original if original is not None else {}

    retain = patch.get(RETAIN_KEYS_DIRECTIVE, _ABSENT)
    if retain is not _ABSENT:
        _apply_retain_keys(result, patch, retain, path)

    fields: dict[str, None] = {}  # an ordered set of the field names the patch touches
    orders: dict[str, Any] = {}
    deletions: dict[str, Any] = {}
    for key, value in patch.items():
        if key in (PATCH_DIRECTIVE, RETAIN_KEYS_DIRECTIVE):
            continue
        for prefix, target in (
            (SET_ELEMENT_ORDER_PREFIX, orders),
            (DELETE_FROM_PRIMITIVE_LIST_PREFIX, deletions),
        ):
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if not name:
                    raise PatchError(f"{_at(path)}directive {key!r} does not name a field")
                target[name] = value
                fields.setdefault(name)
                break
        else:
            fields.setdefault(key)

    for name in fields:
        meta = _child(annotation, name)
        field_path = f"{path}.{name}" if path else name
        old = result.get(name, _ABSENT)
        # The live order is needed by $setElementOrder, before merging rearranges anything.
        server_ids = _list_ids(old, meta) if name in orders else []
        new = _smp_value(old, patch[name], meta, field_path) if name in patch else old
        if name in orders:
            where = f"{_at(path)}{SET_ELEMENT_ORDER_PREFIX}{name}: "
            new = _set_element_order(
                new, patch.get(name), orders[name], server_ids=server_ids, meta=meta, where=where
            )
        if name in deletions:
            where = f"{_at(path)}{DELETE_FROM_PRIMITIVE_LIST_PREFIX}{name}: "
            new = _delete_from_primitive_list(new, deletions[name], where)
        if new is _ABSENT:
            result.pop(name, None)
        else:
            result[name] = new
    return result


def _apply_retain_keys(result: dict[str, Any], patch: dict[str, Any], retain: Any, path: str) -> None:
    """``$retainKeys``: drop the keys of ``result`` not listed; the patch's own keys must be listed."""
    if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
        raise PatchError(f"{_at(path)}{RETAIN_KEYS_DIRECTIVE} must be a list of field names")
    keep = set(retain)
    for key, value in patch.items():
        if value is None or _is_directive_key(key):
            continue
        if key not in keep:
            raise PatchError(
                f"{_at(path)}field {key!r} is in the patch but not in its "
                f"{RETAIN_KEYS_DIRECTIVE} list {retain!r}"
            )
    for key in [k for k in result if k not in keep]:
        del result[key]


def _is_directive_key(key: str) -> bool:
    return key in (PATCH_DIRECTIVE, RETAIN_KEYS_DIRECTIVE) or key.startswith(
        (SET_ELEMENT_ORDER_PREFIX, DELETE_FROM_PRIMITIVE_LIST_PREFIX)
    )


def _replacement_list(patch: list[Any], element: Any, path: str) -> list[Any]:
    """A list that replaces the live one: its map elements are applied to nothing.

    Elements carrying ``$patch`` are list directives: ``replace``/``delete`` elements are dropped (the list
    is replaced anyway), a ``merge`` element loses its marker.
    """
    meta = _FieldMeta(annotation=element)
    out: list[Any] = []
    for i, element_patch in enumerate(patch):
        item_path = f"{path}[{i}]"
        item = element_patch
        if isinstance(item, dict) and PATCH_DIRECTIVE in item:
            directive = item[PATCH_DIRECTIVE]
            if directive in ("replace", "delete"):
                continue
            if directive != "merge":
                raise _bad_list_directive(directive, item_path)
            item = {k: v for k, v in item.items() if k != PATCH_DIRECTIVE}
        if item is None:
            out.append(None)  # null is a value inside a list, not a deletion
            continue
        value = _smp_value(_ABSENT, item, meta, item_path)
        if value is not _ABSENT:
            out.append(value)
    return out


def _smp_list(original: list[Any], patch: list[Any], meta: _FieldMeta, path: str) -> list[Any]:
    """Merge a list whose field has strategy ``merge``."""
    if meta.merge_key is None:
        return _merge_primitive_list(original, patch, path)
    return _merge_keyed_list(original, patch, meta.merge_key, _element(meta.annotation), path)


def _merge_primitive_list(original: list[Any], patch: list[Any], path: str) -> list[Any]:
    """A set of primitives: union, deduplicated, in the order apimachinery gives."""
    for source, values in (("live", original), ("patch", patch)):
        for i, value in enumerate(values):
            if isinstance(value, (dict, list)):
                raise PatchError(
                    f"{_at(f'{path}[{i}]')}the {source} list is merged as a set of primitive values "
                    f"and cannot hold {_json_type(value)}"
                )
    merged: list[Any] = []
    seen: set[Hashable] = set()
    for value in (*original, *patch):
        ident = _ident(value)
        if ident not in seen:
            seen.add(ident)
            merged.append(value)
    return _normalize_order(
        merged, [_ident(v) for v in patch], [_ident(v) for v in original], _ident, new_last=True
    )


def _merge_keyed_list(original: list[Any], patch: list[Any], key: str, element: Any, path: str) -> list[Any]:
    """A list of maps merged by ``key``, with ``$patch`` list directives."""
    replace = False
    deleted: set[Hashable] = set()
    items: list[dict[str, Any]] = []
    for i, element_patch in enumerate(patch):
        item_path = f"{path}[{i}]"
        item = element_patch
        if not isinstance(item, dict):
            raise PatchError(
                f"{_at(item_path)}elements of a list merged by {key!r} must be objects, "
                f"got {_json_type(item)}"
            )
        if PATCH_DIRECTIVE in item:
            directive = item[PATCH_DIRECTIVE]
            if directive == "replace":
                replace = True
                continue
            if directive == "delete":
                if key not in item:
                    raise _no_merge_key(item, key, item_path)
                deleted.add(_ident(item[key]))
                continue
            if directive != "merge":
                raise _bad_list_directive(directive, item_path)
            item = {k: v for k, v in item.items() if k != PATCH_DIRECTIVE}
        if key not in item:
            raise _no_merge_key(item, key, item_path)
        items.append(item)

    base: list[Any] = []
    if not replace:
        for i, live in enumerate(original):
            if not isinstance(live, dict) or key not in live:
                raise PatchError(
                    f"{_at(f'{path}[{i}]')}the live list is merged by {key!r} but this element has no {key!r}"
                )
            if _ident(live[key]) not in deleted:
                base.append(live)

    def ident_of(value: Any) -> Hashable:
        return _ident(value[key])

    server_ids = [ident_of(v) for v in base]
    merged = list(base)
    positions: dict[Hashable, int] = {}
    for i, live in enumerate(merged):
        positions.setdefault(ident_of(live), i)
    for item in items:
        item_path = f"{path}[{key}={item[key]!r}]"
        ident = ident_of(item)
        at = positions.get(ident)
        if at is None:
            positions[ident] = len(merged)
            merged.append(_smp_map(None, item, element, item_path))
        else:
            merged[at] = _smp_map(merged[at], item, element, item_path)
    return _normalize_order(merged, [ident_of(v) for v in items], server_ids, ident_of, new_last=True)


def _normalize_order(
    merged: list[Any],
    patch_ids: list[Hashable],
    server_ids: list[Hashable],
    ident: Callable[[Any], Hashable],
    *,
    new_last: bool,
) -> list[Any]:
    """Order a merged list like apimachinery's ``normalizeElementOrder``.

    Items named by the patch (``patch_ids``) come in the patch's order; server-only items keep the live
    order (``server_ids``); the two runs are interleaved, a server-only item going first when the live
    list has it before the next patch item. A patch item the live list lacks goes after the server-only
    items still waiting when ``new_last``, before them otherwise (apimachinery).
    """
    patch_pos: dict[Hashable, int] = {}
    for i, pid in enumerate(patch_ids):
        patch_pos.setdefault(pid, i)
    server_pos: dict[Hashable, int] = {}
    for i, sid in enumerate(server_ids):
        server_pos.setdefault(sid, i)
    unknown = len(server_ids)

    from_patch = sorted((v for v in merged if ident(v) in patch_pos), key=lambda v: patch_pos[ident(v)])
    server_only = sorted(
        (v for v in merged if ident(v) not in patch_pos), key=lambda v: server_pos.get(ident(v), unknown)
    )
    out: list[Any] = []
    i = j = 0
    while i < len(server_only) and j < len(from_patch):
        left = server_pos.get(ident(server_only[i]))
        right = server_pos.get(ident(from_patch[j]))
        if (left is not None and right is not None and left < right) or (right is None and new_last):
            out.append(server_only[i])
            i += 1
        else:
            out.append(from_patch[j])
            j += 1
    out.extend(server_only[i:])
    out.extend(from_patch[j:])
    return out


def _list_ids(value: Any, meta: _FieldMeta) -> list[Hashable]:
    """Identities of the elements of a live list (merge-key values, or the values themselves)."""
    if not isinstance(value, list):
        return []
    key = meta.merge_key
    if key is None:
        return [_ident(v) for v in value]
    return [_ident(v[key]) for v in value if isinstance(v, dict) and key in v]


def _set_element_order(
    merged: Any, patch_list: Any, order: Any, *, server_ids: list[Hashable], meta: _FieldMeta, where: str
) -> Any:
    """``$setElementOrder/<field>``: check it agrees with the patch list, then reorder the merged list.

    ``where`` prefixes error messages.
    """
    if not meta.merges_lists:
        raise PatchError(f"{where}the field is not a list merged by strategic merge patch")
    if not isinstance(order, list):
        raise PatchError(f"{where}must be a list, got {_json_type(order)}")
    key = meta.merge_key

    def ident_of(value: Any, what: str) -> Hashable:
        if key is None:
            if isinstance(value, (dict, list)):
                raise PatchError(f"{where}{what} must be a primitive value, got {_json_type(value)}")
            return _ident(value)
        if not isinstance(value, dict) or key not in value:
            raise PatchError(f"{where}{what} must be an object holding the merge key {key!r}")
        return _ident(value[key])

    order_ids = [ident_of(v, "each element") for v in order]
    if isinstance(patch_list, list) and order_ids:
        patch_ids = [
            ident_of(v, "each patch list element")
            for v in patch_list
            if not (isinstance(v, dict) and PATCH_DIRECTIVE in v)
        ]
        remaining = iter(order_ids)
        if not all(any(pid == oid for oid in remaining) for pid in patch_ids):
            raise PatchError(
                f"{where}the order in the patch list {patch_list!r} doesn't match the "
                f"$setElementOrder list {order!r}"
            )
    if merged is _ABSENT:
        return _ABSENT
    if not isinstance(merged, list):
        raise PatchError(f"{where}the field holds {_json_type(merged)}, not a list")

    def element_id(value: Any) -> Hashable:
        return _ident(value) if key is None else _ident(value[key])

    return _normalize_order(merged, order_ids, server_ids, element_id, new_last=False)


def _delete_from_primitive_list(value: Any, deletions: Any, where: str) -> Any:
    """``$deleteFromPrimitiveList/<field>``: remove every occurrence of the listed values.

    ``where`` prefixes error messages.
    """
    if not isinstance(deletions, list) or any(isinstance(v, (dict, list)) for v in deletions):
        raise PatchError(f"{where}must be a list of primitive values")
    if value is _ABSENT:
        return _ABSENT
    if not isinstance(value, list):
        raise PatchError(f"{where}the field holds {_json_type(value)}, not a list")
    doomed = {_ident(v) for v in deletions}
    return [v for v in value if _ident(v) not in doomed]


def _ident(value: Any) -> Hashable:
    """A hashable identity for a JSON value; equal for equal JSON (``1 == 1.0``, ``true != 1``)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    return ("json", json.dumps(value, sort_keys=True, separators=(",", ":")))


def _no_merge_key(item: dict[str, Any], key: str, path: str) -> PatchError:
    return PatchError(f"{_at(path)}map {item!r} does not contain declared merge key {key!r}")


def _bad_list_directive(directive: Any, path: str) -> PatchError:
    return PatchError(
        f"{_at(path)}unknown {PATCH_DIRECTIVE} directive {directive!r} in a list element; "
        f"expected one of {', '.join(_PATCH_VALUES)}"
    )


def _at(path: str) -> str:
    return f"{path}: " if path else ""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------------
# Request entry point


def accepted_patch_types(strategic_allowed: bool) -> tuple[str, ...]:
    """The patch media types kubevisor accepts for a kind."""
    if strategic_allowed:
        return (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)
    return (JSON_PATCH, MERGE_PATCH)


def apply_patch(
    content_type: str, doc: dict[str, Any], body: bytes, model: type[BaseModel], strategic_allowed: bool
) -> dict[str, Any]:
    """Apply a PATCH request body to ``doc`` according to its ``Content-Type``; returns a new object.

    ``strategic_allowed`` is false for kinds without Go-struct patch metadata in Kubernetes (custom
    resources), which refuse strategic merge patch. Raises :class:`UnsupportedPatchError` for a media
    type that is not accepted and :class:`PatchError` for anything wrong with the body.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    accepted = accepted_patch_types(strategic_allowed)
    if media_type not in accepted:
        raise UnsupportedPatchError(
            "the body of the request was in an unknown format - accepted media types include: "
            + ", ".join(accepted),
            accepted,
        )
    patch = _parse_json(body)
    try:
        if media_type == JSON_PATCH:
            result = json_patch(doc, patch)
        elif media_type == MERGE_PATCH:
            result = merge_patch(doc, patch)
        else:
            result = strategic_merge_patch(doc, patch, model)
    except RecursionError as e:
        raise PatchError("the patch is nested too deeply") from e
    if not isinstance(result, dict):
        raise PatchError(f"the patched object must be a JSON object, got {_json_type(result)}")
    return result


def _reject_constant(name: str) -> Any:
    raise PatchError(f"invalid JSON in the patch body: {name} is not a JSON value")


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except PatchError:
        raise
    except RecursionError as e:
        raise PatchError("invalid JSON in the patch body: nested too deeply") from e
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PatchError(f"invalid JSON in the patch body: {e}") from e
