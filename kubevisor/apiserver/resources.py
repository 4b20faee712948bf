"""Generic storage of API objects over a :class:`~kubevisor.store.Store`: Kubernetes object semantics.

This is where metadata is owned: uid, creationTimestamp, generation (bumped only when a spec field changes),
resourceVersion (= the store revision of the object's last write, never stored inside the value),
generateName, finalizers and deletionTimestamp, the ``status`` subresource split, and namespace lifecycle.
Writes are compare-and-swap on the key's mod revision, so two writers never overwrite each other: a stale
resourceVersion is a 409 Conflict, and a patch re-reads and re-applies on a lost race.

Keys are ``/registry/<group or "core">/<plural>/<namespace>/<name>`` (cluster-scoped kinds omit the
namespace), as kube-apiserver lays out etcd.
"""

from __future__ import annotations

import base64
import copy
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from kubevisor.api.registry import Kind, Obj, Registry
from kubevisor.api.validation import FieldError
from kubevisor.apiserver import errors
from kubevisor.apiserver.selectors import FieldSelector, LabelSelector
from kubevisor.store import (
    CompactedError,
    CompareFailedError,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    Store,
    prefix_end,
)

GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
MAX_CONFLICT_RETRIES = 8


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_prefix(kind: Kind, namespace: str | None) -> str:
    base = f"/registry/{kind.group or 'core'}/{kind.plural}/"
    if kind.namespaced and namespace:
        return f"{base}{namespace}/"
    return base


def object_key(kind: Kind, namespace: str | None, name: str) -> str:
    return f"{key_prefix(kind, namespace)}{name}"


def decode(kv: KeyValue) -> Obj:
    obj: Obj = orjson.loads(kv.value)
    obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
    return obj


def encode(obj: Obj) -> bytes:
    meta = obj["metadata"]
    rv = meta.pop("resourceVersion", None)
    try:
        return orjson.dumps(obj)
    finally:
        if rv is not None:
            meta["resourceVersion"] = rv


def field_value(obj: Obj, path: str) -> str | None:
    """The string form of a dotted field of ``obj`` as field selectors compare it."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
        if value is None:
            return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_getter(kind: Kind, obj: Obj) -> Callable[[str], str | None]:
    def get(field: str) -> str | None:
        if field == "metadata.name":
            name: str | None = obj["metadata"].get("name")
            return name
        if field == "metadata.namespace":
            return obj["metadata"].get("namespace") or ""
        path = kind.field_selectors.get(field)
        return field_value(obj, path) if path else None

    return get


def check_field_selector(kind: Kind, selector: FieldSelector | None) -> None:
    if selector is None:
        return
    for field in selector.fields():
        if field not in ("metadata.name", "metadata.namespace") and field not in kind.field_selectors:
            raise errors.bad_request(f"field label not supported: {field} (for {kind.resource_group})")


@dataclass(frozen=True, slots=True)
class Filter:
    """Label and field selectors of a list or watch."""

    labels: LabelSelector | None = None
    fields: FieldSelector | None = None

    @property
    def empty(self) -> bool:
        return self.labels is None and self.fields is None

    def matches(self, kind: Kind, obj: Obj) -> bool:
        if self.labels is not None and not self.labels.matches(obj["metadata"].get("labels")):
            return False
        return self.fields is None or self.fields.matches(field_getter(kind, obj))


@dataclass(slots=True)
class Page:
    items: list[Obj]
    resource_version: int
    continue_token: str | None
    remaining: int | None


def encode_continue(revision: int, start_key: str) -> str:
    raw = orjson.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start_key})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
        revision, start = data["rv"], data["start"]
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.bad_request(f"continue key is not valid: {exc}") from exc
    if type(revision) is not int or not 0 < revision < 2**63 or not isinstance(start, str):
        raise errors.bad_request("continue key is not valid: incorrect encoded start resourceVersion or key")
    return revision, start


def _spec_of(kind: Kind, obj: Obj) -> dict[str, Any]:
    fields = kind.spec_fields
    if fields is None:
        return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
    return {k: obj.get(k) for k in fields}


def _tracks_generation(kind: Kind) -> bool:
    return kind.spec_fields is not None or "spec" in kind.model.model_fields


def _pending_finalizers(kind: Kind, obj: Obj) -> bool:
    if obj["metadata"].get("finalizers"):
        return True
    return kind.kind == "Namespace" and kind.group == "" and bool((obj.get("spec") or {}).get("finalizers"))


class Objects:
    """CRUD with Kubernetes semantics for every stored kind."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self.namespaces = registry.get("", "v1", "namespaces")

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        kv = await self.store.get(object_key(kind, namespace, name))
        if kv is None:
            raise errors.not_found(kind, name)
        return decode(kv)

    async def list(
        self,
        kind: Kind,
        namespace: str | None,
        flt: Filter,
        *,
        limit: int = 0,
        continue_token: str | None = None,
        revision: int = 0,
    ) -> Page:
        check_field_selector(kind, flt.fields)
        prefix = key_prefix(kind, namespace)
        end = prefix_end(prefix)
        start = prefix
        if continue_token:
            revision, start = decode_continue(continue_token)
            if not start.startswith(prefix):
                raise errors.bad_request("continue key does not belong to this list")
        if revision == 0:
            revision = await self.store.current_revision()
        items: list[Obj] = []
        batch = min(max(limit, 500), 10_000) if limit else 0  # the loop reads on: any int64 limit works
        remaining: int | None = None
        next_token: str | None = None
        try:
            while True:
                res = await self.store.range(start, end, revision=revision, limit=batch)
                for idx, kv in enumerate(res.kvs):
                    obj = decode(kv)
                    if flt.empty or flt.matches(kind, obj):
                        items.append(obj)
                    if limit and len(items) == limit:
                        has_more = idx + 1 < len(res.kvs) or res.more
                        if has_more:
                            next_token = encode_continue(revision, kv.key + "\x00")
                            if flt.empty:
                                remaining = res.count - (idx + 1)
                        return Page(items, revision, next_token, remaining)
                if not res.more or not res.kvs:
                    return Page(items, revision, None, None)
                start = res.kvs[-1].key + "\x00"
        except CompactedError as exc:
            if continue_token:
                raise errors.gone(
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter, or use the continue token in this "
                    "response to retrieve the remainder of the results."
                ) from exc
            raise errors.gone(f"too old resource version: {revision} ({exc.compact_revision})") from exc
        except FutureRevisionError as exc:
            raise errors.ApiError(
                504, "Timeout", f"Too large resource version: {revision}, current: {exc.current}"
            ) from exc

    # --- create --------------------------------------------------------------------------------

    async def ensure_namespace_usable(self, namespace: str) -> None:
        assert self.namespaces is not None
        kv = await self.store.get(object_key(self.namespaces, None, namespace))
        if kv is None:
            raise errors.not_found(self.namespaces, namespace)
        ns = orjson.loads(kv.value)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                f"unable to create new content in namespace {namespace} because it is being terminated",
                self.namespaces,
                namespace,
            )

    def prepare_create(self, kind: Kind, namespace: str | None, obj: Obj) -> Obj:
        """Server-owned metadata of a new object (name from generateName, uid, timestamps, generation)."""
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if prefix and not isinstance(prefix, str):
                raise errors.invalid(
                    kind,
                    None,
                    [
                        FieldError(
                            "metadata.generateName", f"{prefix!r}: must be a string", "FieldValueInvalid"
                        )
                    ],
                )
            if not prefix:
                raise errors.invalid(
                    kind,
                    None,
                    [FieldError("metadata.name", "name or generateName is required", "FieldValueRequired")],
                )
            meta["name"] = prefix + "".join(secrets.choice(GENERATE_ALPHABET) for _ in range(5))
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        for server_field in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ):
            meta.pop(server_field, None)
        meta.pop("managedFields", None)
        if _tracks_generation(kind):
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        obj["apiVersion"] = kind.api_version
        obj["kind"] = kind.kind
        return obj

    async def create(self, kind: Kind, obj: Obj, *, dry_run: bool = False) -> Obj:
        meta = obj["metadata"]
        if dry_run:
            return obj
        try:
            kv = await self.store.create(object_key(kind, meta.get("namespace"), meta["name"]), encode(obj))
        except KeyExistsError as exc:
            raise errors.already_exists(kind, meta["name"]) from exc
        meta["resourceVersion"] = str(kv.mod_revision)
        return obj

    # --- update --------------------------------------------------------------------------------

    def merge_update(self, kind: Kind, current: Obj, new: Obj, subresource: str | None) -> Obj:
        """What an update of ``current`` to ``new`` stores: the status split and server-owned metadata."""
        if subresource == "status":
            result = copy.deepcopy(current)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        result = new
        if kind.has_status:
            if "status" in current:
                result["status"] = copy.deepcopy(current["status"])
            else:
                result.pop("status", None)
        meta = result.setdefault("metadata", {})
        cur_meta = current["metadata"]
        for owned in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
        ):
            if owned in cur_meta:
                meta[owned] = cur_meta[owned]
            else:
                meta.pop(owned, None)
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        result["apiVersion"] = kind.api_version
        result["kind"] = kind.kind
        if _tracks_generation(kind):
            generation = int(cur_meta.get("generation") or 1)
            if _spec_of(kind, result) != _spec_of(kind, current):
                generation += 1
            meta["generation"] = generation
        if cur_meta.get("deletionTimestamp"):
            new_fins = set(meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
            if new_fins:
                raise errors.invalid(
                    kind,
                    meta.get("name"),
                    [
                        FieldError(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {sorted(new_fins)}",
                            "FieldValueForbidden",
                        )
                    ],
                )
        return result

    async def update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        compute: Callable[[Obj], Awaitable[Obj]],
        *,
        dry_run: bool = False,
    ) -> Obj:
        """Read-compute-write with compare-and-swap; ``compute`` gets the current object (with its rv).

        If the computed object names a resourceVersion other than the one read, that is a precondition:
        409 on mismatch. Otherwise a lost race re-reads and computes again.
        """
        key = object_key(kind, namespace, name)
        for _ in range(MAX_CONFLICT_RETRIES):
            kv = await self.store.get(key)
            if kv is None:
                raise errors.not_found(kind, name)
            current = decode(kv)
            new = await compute(copy.deepcopy(current))
            new_meta = new.setdefault("metadata", {})
            wanted_rv = new_meta.get("resourceVersion")
            if wanted_rv and wanted_rv != str(kv.mod_revision):
                raise errors.conflict(kind, name)
            new_meta["resourceVersion"] = str(kv.mod_revision)
            if new == current:
                return current
            if dry_run:
                return new
            try:
                if current["metadata"].get("deletionTimestamp") and not _pending_finalizers(kind, new):
                    await self.store.delete(key, kv.mod_revision)
                    return new
                stored = await self.store.update(key, encode(new), kv.mod_revision)
            except CompareFailedError:
                if wanted_rv:
                    raise errors.conflict(kind, name) from None
                continue
            except KeyNotFoundError as exc:
                raise errors.not_found(kind, name) from exc
            new_meta["resourceVersion"] = str(stored.mod_revision)
            return new
        raise errors.conflict(kind, name, "too many concurrent writers; try again")

    # --- delete --------------------------------------------------------------------------------

    async def delete(
        self, kind: Kind, namespace: str | None, name: str, options: Obj, *, dry_run: bool
    ) -> tuple[Obj, bool]:
        """Delete per DeleteOptions; returns the object and whether it is gone (False: finalizers pending)."""
        if kind.kind == "Namespace" and kind.group == "" and name in PROTECTED_NAMESPACES:
            raise errors.forbidden(
                f'namespaces "{name}" is forbidden: this namespace may not be deleted', kind, name
            )
        key = object_key(kind, namespace, name)
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise errors.invalid(
                kind,
                name,
                [
                    FieldError(
                        "propagationPolicy",
                        f'unsupported value "{policy}": supported values: '
                        '"Orphan", "Background", "Foreground"',
                        "FieldValueNotSupported",
                    )
                ],
            )
        pre = options.get("preconditions") or {}
        for _ in range(MAX_CONFLICT_RETRIES):
            kv = await self.store.get(key)
            if kv is None:
                raise errors.not_found(kind, name)
            obj = decode(kv)
            meta = obj["metadata"]
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise errors.conflict(
                    kind,
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, "
                    f"UID in object meta: {meta.get('uid')}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise errors.conflict(
                    kind,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            finalizers = list(meta.get("finalizers") or [])
            if policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            elif policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if policy in ("Background", "Foreground") and "orphan" in finalizers and policy != "Orphan":
                finalizers.remove("orphan")
            if finalizers:
                meta["finalizers"] = finalizers
            if _pending_finalizers(kind, obj):
                changed = not meta.get("deletionTimestamp") or finalizers != (
                    orjson.loads(kv.value)["metadata"].get("finalizers") or []
                )
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now_rfc3339()
                    meta["deletionGracePeriodSeconds"] = int(options.get("gracePeriodSeconds") or 0)
                if kind.kind == "Namespace" and kind.group == "":
                    obj.setdefault("status", {})["phase"] = "Terminating"
                    changed = True
                if not changed or dry_run:
                    return obj, False
                try:
                    stored = await self.store.update(key, encode(obj), kv.mod_revision)
                except CompareFailedError:
                    continue
                meta["resourceVersion"] = str(stored.mod_revision)
                return obj, False
            if dry_run:
                return obj, True
            try:
                await self.store.delete(key, kv.mod_revision)
            except (CompareFailedError, KeyNotFoundError):
                continue
            return obj, True
        raise errors.conflict(kind, name, "too many concurrent writers; try again")
