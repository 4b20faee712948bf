"""Request bodies in Kubernetes protobuf (``application/vnd.kubernetes.protobuf``), decoded to JSON objects.

client-go's typed clients encode their write bodies in protobuf from kubectl 1.32 on, with no fallback to
JSON when a server answers 415: ``kubectl create namespace|configmap|secret|serviceaccount|role|...``,
``kubectl create token``, ``kubectl auth can-i`` and ``kubectl auth whoami`` POST protobuf (and ask for
``Accept: application/vnd.kubernetes.protobuf,application/json``, so answering JSON is fine). Everything
else kubectl sends (apply, create -f, patch, replace, edit) is JSON.

The body is ``k8s\\x00`` followed by a ``runtime.Unknown`` (typeMeta=1 {apiVersion=1, kind=2}, raw=2,
contentEncoding=3, contentType=4); ``raw`` is the kind's message. Only the kinds those commands send are
known here, with field numbers transcribed from k8s.io/api and k8s.io/apimachinery ``generated.proto``.
Go's protobuf encoder writes every non-pointer field, zero or not, where JSON omits empty ones; so zero
scalars are dropped unless the Go field is a pointer (``keep_zero``), which is what omitempty gives.
Unknown field numbers are skipped, like unknown JSON fields with ``fieldValidation=Ignore``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubevisor.apiserver import errors

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """A malformed protobuf body."""


@dataclass(frozen=True, slots=True)
class F:
    """One message field: JSON name and type.

    ``type`` is ``string``, ``bytes`` (base64 in JSON), ``int``, ``bool``, ``time`` (meta/v1 Time),
    ``map`` (map<string,string>), ``bmap`` (map<string,bytes>) or the name of a message in :data:`MESSAGES`.
    """

    name: str
    type: str
    repeated: bool = False
    keep_zero: bool = False


def _s(name: str) -> F:
    return F(name, "string")


def _strings(name: str) -> F:
    return F(name, "string", repeated=True)


MESSAGES: dict[str, dict[int, F]] = {
    # k8s.io/apimachinery/pkg/apis/meta/v1
    "ObjectMeta": {
        1: _s("name"),
        2: _s("generateName"),
        3: _s("namespace"),
        4: _s("selfLink"),
        5: _s("uid"),
        6: _s("resourceVersion"),
        7: F("generation", "int"),
        8: F("creationTimestamp", "time"),
        9: F("deletionTimestamp", "time"),
        10: F("deletionGracePeriodSeconds", "int", keep_zero=True),
        11: F("labels", "map"),
        12: F("annotations", "map"),
        13: F("ownerReferences", "OwnerReference", repeated=True),
        14: _strings("finalizers"),
        # 17 managedFields: the server owns them and drops what clients send.
    },
    "OwnerReference": {
        1: _s("kind"),
        3: _s("name"),
        4: _s("uid"),
        5: _s("apiVersion"),
        6: F("controller", "bool", keep_zero=True),
        7: F("blockOwnerDeletion", "bool", keep_zero=True),
    },
    "LabelSelector": {
        1: F("matchLabels", "map"),
        2: F("matchExpressions", "LabelSelectorRequirement", repeated=True),
    },
    "LabelSelectorRequirement": {1: _s("key"), 2: _s("operator"), 3: _strings("values")},
    # k8s.io/api/core/v1
    "ConfigMap": {
        1: F("metadata", "ObjectMeta"),
        2: F("data", "map"),
        3: F("binaryData", "bmap"),
        4: F("immutable", "bool", keep_zero=True),
    },
    "Secret": {
        1: F("metadata", "ObjectMeta"),
        2: F("data", "bmap"),
        3: _s("type"),
        4: F("stringData", "map"),
        5: F("immutable", "bool", keep_zero=True),
    },
    "Namespace": {
        1: F("metadata", "ObjectMeta"),
        2: F("spec", "NamespaceSpec"),
        3: F("status", "NamespaceStatus"),
    },
    "NamespaceSpec": {1: _strings("finalizers")},
    "NamespaceStatus": {1: _s("phase")},
    "ServiceAccount": {
        1: F("metadata", "ObjectMeta"),
        2: F("secrets", "ObjectReference", repeated=True),
        3: F("imagePullSecrets", "LocalObjectReference", repeated=True),
        4: F("automountServiceAccountToken", "bool", keep_zero=True),
    },
    "ObjectReference": {
        1: _s("kind"),
        2: _s("namespace"),
        3: _s("name"),
        4: _s("uid"),
        5: _s("apiVersion"),
        6: _s("resourceVersion"),
        7: _s("fieldPath"),
    },
    "LocalObjectReference": {1: _s("name")},
    # k8s.io/api/rbac/v1
    "PolicyRule": {
        1: _strings("verbs"),
        2: _strings("apiGroups"),
        3: _strings("resources"),
        4: _strings("resourceNames"),
        5: _strings("nonResourceURLs"),
    },
    "Role": {1: F("metadata", "ObjectMeta"), 2: F("rules", "PolicyRule", repeated=True)},
    "ClusterRole": {
        1: F("metadata", "ObjectMeta"),
        2: F("rules", "PolicyRule", repeated=True),
        3: F("aggregationRule", "AggregationRule"),
    },
    "AggregationRule": {1: F("clusterRoleSelectors", "LabelSelector", repeated=True)},
    "Subject": {1: _s("kind"), 2: _s("apiGroup"), 3: _s("name"), 4: _s("namespace")},
    "RoleRef": {1: _s("apiGroup"), 2: _s("kind"), 3: _s("name")},
    "RoleBinding": {
        1: F("metadata", "ObjectMeta"),
        2: F("subjects", "Subject", repeated=True),
        3: F("roleRef", "RoleRef"),
    },
    "ClusterRoleBinding": {
        1: F("metadata", "ObjectMeta"),
        2: F("subjects", "Subject", repeated=True),
        3: F("roleRef", "RoleRef"),
    },
    # k8s.io/api/authentication/v1 (status is the server's to fill, so it is not read)
    "TokenRequest": {1: F("metadata", "ObjectMeta"), 2: F("spec", "TokenRequestSpec")},
    "TokenRequestSpec": {
        1: _strings("audiences"),
        3: F("boundObjectRef", "BoundObjectReference"),
        4: F("expirationSeconds", "int", keep_zero=True),
    },
    "BoundObjectReference": {1: _s("kind"), 2: _s("apiVersion"), 3: _s("name"), 4: _s("uid")},
    "SelfSubjectReview": {1: F("metadata", "ObjectMeta")},
    # k8s.io/api/authorization/v1
    "SelfSubjectAccessReview": {
        1: F("metadata", "ObjectMeta"),
        2: F("spec", "SelfSubjectAccessReviewSpec"),
    },
    "SelfSubjectAccessReviewSpec": {
        1: F("resourceAttributes", "ResourceAttributes"),
        2: F("nonResourceAttributes", "NonResourceAttributes"),
    },
    "ResourceAttributes": {
        1: _s("namespace"),
        2: _s("verb"),
        3: _s("group"),
        4: _s("version"),
        5: _s("resource"),
        6: _s("subresource"),
        7: _s("name"),
        8: F("fieldSelector", "SelectorAttributes"),
        9: F("labelSelector", "SelectorAttributes"),
    },
    "SelectorAttributes": {1: _s("rawSelector"), 2: F("requirements", "LabelSelectorRequirement", True)},
    "NonResourceAttributes": {1: _s("path"), 2: _s("verb")},
}

KINDS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Secret"): "Secret",
    ("v1", "Namespace"): "Namespace",
    ("v1", "ServiceAccount"): "ServiceAccount",
    ("rbac.authorization.k8s.io/v1", "Role"): "Role",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "ClusterRole",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "RoleBinding",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "ClusterRoleBinding",
    ("authentication.k8s.io/v1", "TokenRequest"): "TokenRequest",
    ("authentication.k8s.io/v1", "SelfSubjectReview"): "SelfSubjectReview",
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): "SelfSubjectAccessReview",
}
"""(apiVersion, kind) of the envelope -> message: what kubectl's typed clients send."""

_TYPE_META = {1: _s("apiVersion"), 2: _s("kind")}
_TIME = {1: F("seconds", "int"), 2: F("nanos", "int")}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: ints for varints and fixed widths, bytes otherwise."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ProtobufError("truncated field")
        out.append((number, value))
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a length-delimited string")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ProtobufError(f"invalid UTF-8: {exc}") from exc


def _raw(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a length-delimited field")
    return value


def _time(data: bytes) -> str | None:
    parts = _message(data, _TIME)
    seconds = int(parts.get("seconds") or 0)
    if not seconds:
        return None  # Go's zero time: null in JSON
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _map_entry(data: bytes, binary: bool) -> tuple[str, str]:
    key, value = "", ""
    for number, raw in _fields(data):
        if number == 1:
            key = _text(raw)
        elif number == 2:
            value = base64.b64encode(_raw(raw)).decode() if binary else _text(raw)
    return key, value


def _scalar(field: F, raw: int | bytes) -> Any:
    if field.type == "string":
        return _text(raw)
    if field.type == "bytes":
        return base64.b64encode(_raw(raw)).decode()
    if field.type in ("int", "bool"):
        if isinstance(raw, bytes):  # a packed repeated field is handled by the caller
            raise ProtobufError(f"{field.name}: expected a number")
        return bool(raw) if field.type == "bool" else _signed(raw)
    if field.type == "time":
        return _time(_raw(raw))
    return _message(_raw(raw), MESSAGES[field.type])


def _message(data: bytes, spec: dict[int, F]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, raw in _fields(data):
        field = spec.get(number)
        if field is None:
            continue
        if field.type in ("map", "bmap"):
            key, value = _map_entry(_raw(raw), field.type == "bmap")
            obj.setdefault(field.name, {})[key] = value
        elif field.repeated:
            if field.type in ("int", "bool") and isinstance(raw, bytes):  # packed
                items, pos = [], 0
                while pos < len(raw):
                    item, pos = _varint(raw, pos)
                    items.append(bool(item) if field.type == "bool" else _signed(item))
                obj.setdefault(field.name, []).extend(items)
            else:
                obj.setdefault(field.name, []).append(_scalar(field, raw))
        else:
            value = _scalar(field, raw)
            if value in (None, "", 0, False) and not (field.keep_zero and value is not None):
                obj.pop(field.name, None)
                continue
            obj[field.name] = value
    return obj


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object a protobuf request body stands for; 415 for kinds not known here, 400 if malformed."""
    if not body.startswith(MAGIC):
        raise errors.bad_request("the request body is not a Kubernetes protobuf message (no k8s prefix)")
    try:
        envelope = dict(_fields(body[len(MAGIC) :]))
        meta = _message(_raw(envelope.get(1, b"")), _TYPE_META)
        encoding = _text(envelope.get(3, b""))
        if encoding:
            raise errors.unsupported_media_type(
                f"the body of the request uses an unsupported content encoding {encoding!r}"
            )
        api_version, kind = str(meta.get("apiVersion") or ""), str(meta.get("kind") or "")
        message = KINDS.get((api_version, kind))
        if message is None:
            raise errors.unsupported_media_type(
                f'the body of the request was in an unknown format ("{MEDIA_TYPE}" for {api_version}, '
                f"Kind={kind}) - accepted media types include: application/json, application/yaml"
            )
        obj = _message(_raw(envelope.get(2, b"")), MESSAGES[message])
    except ProtobufError as exc:
        raise errors.bad_request(f"the request body is not valid protobuf: {exc}") from exc
    return {"apiVersion": api_version, "kind": kind, **obj}
