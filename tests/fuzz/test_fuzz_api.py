"""Hypothesis-generated requests against the real server: it must never fail on its side.

Bodies start as valid objects of six kinds (ConfigMap, Secret, Namespace, Lease, RoleBinding and the test
kind Widget) and are then mutated: wrong types, unknown fields, huge strings, deep nesting, invalid
names, random JSON values, lone surrogates, huge numbers, invalid UTF-8, truncation, YAML oddities
(tags, dates, alias bombs), wrong content types, and garbage in every query parameter. Another test
generates bodies from the OpenAPI v3 schemas the server publishes.

Whatever the request, the server must answer within the client's timeout, never with a 5xx (except
kube-apiserver's own 504 for a resourceVersion from the future), every error must be a ``Status`` whose
``code`` is the HTTP status and which has a ``reason``, and whatever it accepts it must be able to read
back and list (also as a Table).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from kubevisor.testing.cluster import PlatformThread, platform_thread
from kubevisor.testing.kinds import registry_with_test_kinds

EXAMPLES = int(os.environ.get("KUBEVISOR_FUZZ_EXAMPLES", "200"))
"""Examples per test; more for a longer hunt."""

pytestmark = pytest.mark.timeout(300 * max(1, EXAMPLES // 200))

NS = "fuzz"
"""Namespace of every namespaced object; never deleted (only ``fuzz-seed`` is: see :func:`seed_name`)."""
SEED = "seed"
"""Name of the object every PUT, PATCH and DELETE of a kind aims at (recreated when deleted)."""
REQUEST_TIMEOUT = 20.0
"""An answer (a watch's headers) slower than this is a hang and fails the test."""
WATCH_READ_SECONDS = 0.1
"""How long a successful watch is read before the client hangs up."""

_unique = itertools.count()

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

JsonValue = Any
Obj = dict[str, Any]


# --- the platform and the checks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformThread]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with platform_thread(data, registry=registry_with_test_kinds(), controllers=False) as p:
        yield p


@pytest.fixture(scope="module")
def http(plat: PlatformThread) -> Iterator[httpx.Client]:
    pki = plat.platform.pki
    assert pki is not None
    with httpx.Client(base_url=plat.url, verify=pki.client_ssl_context(), timeout=REQUEST_TIMEOUT) as c:
        r = c.post("/api/v1/namespaces", json={"metadata": {"name": NS}})
        assert r.status_code == 201, r.text
        yield c


def check_status(status: int, body: bytes, what: str) -> None:
    """A non-2xx answer must be a Kubernetes Status for that code."""
    try:
        doc = json.loads(body)
    except ValueError:
        pytest.fail(f"{what}: {status} answer is not JSON: {body[:300]!r}")
    assert isinstance(doc, dict), f"{what}: {status} answer is not a JSON object: {body[:300]!r}"
    assert doc.get("kind") == "Status" and doc.get("apiVersion") == "v1", f"{what}: not a Status: {doc}"
    assert doc.get("status") == "Failure", f"{what}: {doc}"
    assert doc.get("code") == status, f"{what}: code {doc.get('code')} but HTTP {status}: {doc}"
    assert isinstance(doc.get("reason"), str) and doc["reason"], f"{what}: no reason: {doc}"
    assert isinstance(doc.get("message"), str), f"{what}: no message: {doc}"


def server_failure_allowed(status: int, body: bytes) -> bool:
    """kube-apiserver answers 504 for a resourceVersion newer than the store's: the only 5xx allowed."""
    if status != 504:
        return False
    doc = json.loads(body)
    return bool(doc.get("reason") == "Timeout" and str(doc.get("message")).startswith("Too large resource"))


def check(r: httpx.Response, what: str) -> Any:
    """Check one answer; return its JSON document when it is a 2xx."""
    what = f"{what} -> {r.status_code}"
    if currently_in_test_context():
        event(f"{r.request.method} {r.status_code}")  # shown by --hypothesis-show-statistics
    assert r.status_code < 500 or server_failure_allowed(r.status_code, r.content), (
        f"{what}: server error: {r.content[:500]!r}"
    )
    if not 200 <= r.status_code < 300:
        check_status(r.status_code, r.content, what)
        return None
    try:
        return json.loads(r.content)
    except ValueError:
        pytest.fail(f"{what}: 2xx answer is not JSON: {r.content[:300]!r}")


def check_watch(http: httpx.Client, url: str, headers: dict[str, str], what: str) -> None:
    """A watch must start at once; its lines are JSON events, an ERROR's object a Status."""
    with http.stream("GET", url, headers=headers) as r:  # the head of the answer within REQUEST_TIMEOUT
        if not 200 <= r.status_code < 300:
            r.read()
            check(r, what)
            return
        # Then read for a moment only: httpcore takes the read timeout from the request when the body
        # is first read, so a quiet watch costs WATCH_READ_SECONDS, not its timeoutSeconds.
        r.request.extensions["timeout"] = {**r.request.extensions["timeout"], "read": WATCH_READ_SECONDS}
        buffer = b""
        deadline = time.monotonic() + WATCH_READ_SECONDS
        try:
            for chunk in r.iter_raw():
                buffer += chunk
                if time.monotonic() > deadline:
                    break
        except httpx.ReadTimeout:
            pass
    for line in buffer.split(b"\n")[:-1]:  # the last piece may be cut by the hang-up
        if not line.strip():
            continue
        event = json.loads(line)
        assert event["type"] in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"), f"{what}: {event}"
        if event["type"] == "ERROR":
            check_status(event["object"]["code"], json.dumps(event["object"]).encode(), what)
        else:
            assert isinstance(event["object"], dict) and "metadata" in event["object"], f"{what}: {event}"


# --- the kinds ----------------------------------------------------------------------------------------

dns_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?\Z")
label_keys = st.from_regex(
    r"\A([a-z0-9]{1,8}(\.[a-z0-9]{1,8})?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?\Z"
)
label_values = st.from_regex(r"\A([A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?)?\Z")
small_text = st.text(max_size=20)
config_keys = st.from_regex(r"\A[A-Za-z0-9_.-]{1,20}\Z").filter(lambda k: k not in (".", ".."))
b64 = st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode())
rfc3339 = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
micro_time = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def metadata(name: st.SearchStrategy[str]) -> st.SearchStrategy[Obj]:
    return st.fixed_dictionaries(
        {"name": name},
        optional={
            "labels": st.dictionaries(label_keys, label_values, max_size=3),
            "annotations": st.dictionaries(label_keys, small_text, max_size=3),
            "finalizers": st.lists(st.sampled_from(["example.com/a", "example.com/b"]), max_size=1),
        },
    )


@dataclass(frozen=True)
class Resource:
    """One fuzzed kind: where its collection is and what a valid object looks like."""

    plural: str
    api_version: str
    kind: str
    collection: str
    fields: Callable[[], dict[str, st.SearchStrategy[Any]]]
    required: tuple[str, ...] = ()

    def valid(self, name: st.SearchStrategy[str]) -> st.SearchStrategy[Obj]:
        fields = self.fields()
        return st.fixed_dictionaries(
            {
                "apiVersion": st.just(self.api_version),
                "kind": st.just(self.kind),
                "metadata": metadata(name),
                **{k: fields[k] for k in self.required},
            },
            optional={k: v for k, v in fields.items() if k not in self.required},
        )

    def item(self, name: str) -> str:
        return f"{self.collection}/{quote(name, safe='')}"


def _configmap() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "data": st.dictionaries(config_keys, small_text, max_size=3),
        "binaryData": st.dictionaries(config_keys, b64, max_size=2),
        "immutable": st.just(False),
    }


def _secret() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "data": st.dictionaries(config_keys, b64, max_size=3),
        "stringData": st.dictionaries(config_keys, small_text, max_size=2),
        "type": st.sampled_from(["Opaque", "example.com/thing"]),
    }


def _namespace() -> dict[str, st.SearchStrategy[Any]]:
    return {"spec": st.fixed_dictionaries({}, optional={"finalizers": st.just(["kubernetes"])})}


def _lease() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "holderIdentity": small_text,
                "leaseDurationSeconds": st.integers(0, 3600),
                "acquireTime": micro_time,
                "renewTime": micro_time,
                "leaseTransitions": st.integers(0, 100),
            },
        )
    }


def _rolebinding() -> dict[str, st.SearchStrategy[Any]]:
    subject = st.fixed_dictionaries(
        {"kind": st.sampled_from(["User", "Group", "ServiceAccount"]), "name": dns_label},
        optional={"namespace": st.just(NS), "apiGroup": st.just("rbac.authorization.k8s.io")},
    )
    return {
        "roleRef": st.just({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}),
        "subjects": st.lists(subject, max_size=2),
    }


def _widget() -> dict[str, st.SearchStrategy[Any]]:
    condition = st.fixed_dictionaries(
        {"type": st.sampled_from(["Ready", "Other"]), "status": st.sampled_from(["True", "False"])},
        optional={"reason": small_text, "message": small_text, "lastTransitionTime": rfc3339},
    )
    return {
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "size": st.integers(-(2**63), 2**63 - 1),
                "color": small_text,
                "parts": st.lists(small_text, max_size=3),
            },
        ),
        "status": st.fixed_dictionaries(
            {}, optional={"phase": small_text, "conditions": st.lists(condition, max_size=2)}
        ),
    }


RESOURCES = (
    Resource("configmaps", "v1", "ConfigMap", f"/api/v1/namespaces/{NS}/configmaps", _configmap),
    Resource("secrets", "v1", "Secret", f"/api/v1/namespaces/{NS}/secrets", _secret),
    Resource("namespaces", "v1", "Namespace", "/api/v1/namespaces", _namespace),
    Resource(
        "leases",
        "coordination.k8s.io/v1",
        "Lease",
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases",
        _lease,
    ),
    Resource(
        "rolebindings",
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings",
        _rolebinding,
        required=("roleRef",),
    ),
    Resource(
        "widgets",
        "test.kubevisor.io/v1",
        "Widget",
        f"/apis/test.kubevisor.io/v1/namespaces/{NS}/widgets",
        _widget,
    ),
)


def seed_name(resource: Resource) -> str:
    return f"{NS}-{SEED}" if resource.plural == "namespaces" else SEED


def ensure_seed(http: httpx.Client, resource: Resource) -> None:
    name = seed_name(resource)
    if http.get(resource.item(name)).status_code == 404:
        body: Obj = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": {"name": name}}
        if resource.plural == "rolebindings":
            body["roleRef"] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}
        r = http.post(resource.collection, json=body)
        assert r.status_code == 201, r.text


# --- mutations ----------------------------------------------------------------------------------------

huge_ints = st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, -(10**40)])
lone_surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udbff"])
clean_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
# Numbers beyond 64 bits, NaN and infinities (json.dumps writes NaN / Infinity), lone surrogates: one in five.
weird_scalars = huge_ints | st.floats(allow_nan=True, allow_infinity=True) | lone_surrogates
scalars = st.one_of(clean_scalars, clean_scalars, clean_scalars, clean_scalars, weird_scalars)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
invalid_names = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", ".", "..", "UPPER", "-x", "x-", "a/b", "a%2Fb", "a b", "a" * 254, "\x00", "ns:x"]),
)


def nested(depth: int, leaf: JsonValue = 1) -> JsonValue:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


def _containers(value: JsonValue) -> Iterator[tuple[Any, ...]]:
    """Paths of every object and array inside ``value`` (the root first); iterative, as values nest deep."""
    stack: list[tuple[JsonValue, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            yield path
            stack.extend((v, (*path, k)) for k, v in item.items())
        elif isinstance(item, list):
            yield path
            stack.extend((v, (*path, i)) for i, v in enumerate(item))


def _get(value: JsonValue, path: tuple[Any, ...]) -> JsonValue:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutate(draw: st.DrawFn, obj: Obj) -> Obj:
    """``obj`` with up to four random changes anywhere inside it."""
    for _ in range(draw(st.integers(0, 4))):
        paths = list(_containers(obj))
        container = _get(obj, draw(st.sampled_from(paths)))
        if isinstance(container, dict):
            key = draw(
                st.sampled_from([*container, "unknownField", "metadata", "spec", "status"]) | small_text
            )
        elif container:
            key = draw(st.integers(0, len(container) - 1))
        else:
            container.append(None)
            key = 0
        how = draw(
            st.sampled_from(
                ["value", "delete", "huge string", "deep", "name", "huge int", "surrogate", "wide"]
            )
        )
        if how == "delete" and isinstance(container, dict):
            container.pop(key, None)
        elif how == "huge string":
            container[key] = "x" * draw(st.sampled_from([300, 70_000, 1_100_000]))
        elif how == "deep":
            container[key] = nested(draw(st.sampled_from([20, 99, 101, 150, 300, 1100, 5000])))
        elif how == "name":
            obj.setdefault("metadata", {})
            if isinstance(obj["metadata"], dict):
                obj["metadata"][draw(st.sampled_from(["name", "generateName", "namespace"]))] = draw(
                    invalid_names | json_values
                )
        elif how == "huge int":
            container[key] = draw(huge_ints)
        elif how == "surrogate":
            container[key] = draw(lone_surrogates)
        elif how == "wide":  # thousands of keys: unknown fields become thousands of warnings
            container[key] = {f"unknown{i}": i for i in range(draw(st.sampled_from([50, 3000, 100_000])))}
        else:
            container[key] = draw(json_values)
    return obj


def _dump_json(value: JsonValue, ensure_ascii: bool) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError):
        return b"[" * 3000 + b"]" * 3000


def _dump_yaml(value: JsonValue) -> bytes:
    try:
        return yaml.safe_dump(value).encode("utf-8", "surrogatepass")
    except (RecursionError, yaml.YAMLError, ValueError):
        return b"a: [" * 300


YAML_SPECIALS = [
    b"metadata: {name: yy}\ndata: {2020-01-01: x}\n",
    b"metadata: {name: yy, creationTimestamp: 2020-01-01}\n",
    b"metadata: {name: yy}\nbinaryData: {a: !!binary aGVsbG8=}\n",
    b"metadata: {name: yy}\ndata: !!set {a, b}\n",
    b"metadata: {name: yy, labels: {1: x, true: y, null: z, 1.5: w}}\n",
    b"metadata: {name: yy}\ndata: {x: .nan, y: .inf}\n",
    b"!!python/object/apply:os.system ['true']\n",
    b"metadata: &m {name: yy}\nspec: *m\n",
    b"metadata: {name: yy}\n? [a, b]\n: c\n",
    b"- just\n- a list\n",
    b'metadata: {name: yy}\ndata: {a: "\\ud800"}\n',
    b"a: [" * 500,
    b"[" * 2000 + b"]" * 2000,
]


def alias_bomb(levels: int) -> bytes:
    out = b'metadata: {name: bomb}\ndata:\n  a0: &a0 ["x","x","x","x","x","x","x","x","x"]\n'
    for i in range(1, levels):
        refs = b",".join([b"*a%d" % (i - 1)] * 9)
        out += b"  a%d: &a%d [%s]\n" % (i, i, refs)
    return out


@st.composite
def encoded(draw: st.DrawFn, value: JsonValue, json_type: str = "application/json") -> tuple[bytes, str]:
    """``value`` as a request body, sometimes broken, with a content type (sometimes wrong)."""
    how = draw(st.sampled_from(["json"] * 6 + ["yaml", "yaml special", "bytes", "broken", "deep"]))
    content_type = json_type
    if how == "json":
        body = _dump_json(value, draw(st.booleans()))
    elif how == "yaml":
        body, content_type = _dump_yaml(value), "application/yaml"
    elif how == "yaml special":
        content_type = "application/yaml"
        body = draw(st.sampled_from([*YAML_SPECIALS, alias_bomb(draw(st.integers(3, 10)))]))
    elif how == "bytes":
        body = draw(st.binary(max_size=200) | st.just(b"k8s\x00") | st.binary().map(lambda b: b"k8s\x00" + b))
    elif how == "deep":
        depth = draw(st.sampled_from([100, 101, 300, 1000, 1023, 1024, 1025, 20_000]))
        body = b'{"metadata":{"name":"deep"},"data":' + _dump_json(nested(depth), True) + b"}"
    else:
        body = _dump_json(value, False)
        cut = draw(st.integers(0, len(body)))
        body = (
            body[:cut]
            + draw(st.sampled_from([b"", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]))
            + (body[cut:] if draw(st.booleans()) else b"")
        )
    if draw(st.integers(0, 9)) == 0:
        content_type = draw(
            st.sampled_from(
                [
                    "",
                    "text/plain",
                    "application/json; charset=utf-8",
                    "application/yaml",
                    "application/x-www-form-urlencoded",
                    "application/vnd.kubernetes.protobuf",
                    "application/merge-patch+json",
                    "application/json-patch+json",
                    "application/strategic-merge-patch+json",
                    "application/apply-patch+yaml",
                    "multipart/form-data; boundary=x",
                    "garbage/;;;=",
                ]
            )
            | small_text.map(str.strip).filter(lambda s: s.isprintable() and s.isascii())
        )
    return body, content_type


# --- query parameters ---------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.sampled_from(
        ["", "-1", "0", "1", "2", "abc", "nan", "inf", "-inf", "1e999", "1.5", " 7 ", "1_0", "0x10"]
    ),
    st.sampled_from(["99999999999999999999999999", "9223372036854775807", "9223372036854775808", "-5"]),
    st.integers().map(str),
)
BOOLEANS = st.sampled_from(["true", "false", "1", "0", "True", "yes", ""])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CONTINUE_TOKENS = st.one_of(
    small_text,
    st.binary(max_size=30).map(_b64),
    json_values.map(lambda v: _b64(json.dumps(v).encode("utf-8", "surrogatepass"))),
    st.fixed_dictionaries(
        {},
        optional={
            "v": st.just("meta.k8s.io/v1") | json_values,
            "rv": st.integers(-5, 10**6) | huge_ints | json_values,
            "start": st.sampled_from(
                [f"/registry/core/configmaps/{NS}/", "/registry/", "/", "\x00", "\uffff"]
            )
            | json_values,
        },
    ).map(lambda d: _b64(json.dumps(d).encode("utf-8", "surrogatepass"))),
)
LABEL_SELECTORS = st.lists(
    st.builds(
        lambda k, op, v: f"{k}{op}{v}",
        label_keys | small_text,
        st.sampled_from(["", "=", "==", "!=", " in ", " notin ", ">", "<", " ", "!"]),
        label_values | small_text | st.lists(label_values, max_size=3).map(lambda vs: f"({','.join(vs)})"),
    ),
    max_size=3,
).map(",".join) | st.sampled_from(["a in (", "a in (b,c),!d", "!", ",", "a=(b)", "a notin ()", "x>1e999"])
FIELD_SELECTORS = st.lists(
    st.builds(
        lambda k, op, v: f"{k}{op}{v}",
        st.sampled_from(["metadata.name", "metadata.namespace", "type", "spec.unschedulable", "status.x"])
        | small_text,
        st.sampled_from(["=", "==", "!=", "", "=="]),
        small_text,
    ),
    max_size=3,
).map(",".join)
PARAMS: dict[str, st.SearchStrategy[str]] = {
    "limit": NUMBERS,
    "continue": CONTINUE_TOKENS,
    "labelSelector": LABEL_SELECTORS,
    "fieldSelector": FIELD_SELECTORS,
    "resourceVersion": NUMBERS,
    "resourceVersionMatch": st.sampled_from(["Exact", "NotOlderThan", "", "exact"]),
    "timeoutSeconds": NUMBERS,
    "allowWatchBookmarks": BOOLEANS,
    "sendInitialEvents": BOOLEANS,
    "fieldValidation": st.sampled_from(["Strict", "Warn", "Ignore", "strict", ""]),
    "fieldManager": small_text,
    "dryRun": st.sampled_from(["All", "all", "", "None"]),
    "propagationPolicy": st.sampled_from(["Orphan", "Background", "Foreground", "bogus", ""]),
    "gracePeriodSeconds": NUMBERS,
    "orphanDependents": BOOLEANS,
    "includeObject": st.sampled_from(["None", "Metadata", "Object", "x"]),
    "pretty": BOOLEANS,
    "force": BOOLEANS,
}
RAW_ESCAPES = st.sampled_from(["%ff", "%c3%28", "%ed%a0%80", "%00", "%", "%zz", "a%20b", "%0d%0a"])


LIST_PARAMS = (
    "limit",
    "continue",
    "labelSelector",
    "fieldSelector",
    "resourceVersion",
    "resourceVersionMatch",
)
WATCH_PARAMS = (
    "timeoutSeconds",
    "allowWatchBookmarks",
    "sendInitialEvents",
    "resourceVersion",
    "labelSelector",
)
WRITE_PARAMS = ("fieldValidation", "dryRun", "fieldManager", "pretty")
DELETE_PARAMS = ("propagationPolicy", "gracePeriodSeconds", "orphanDependents", "dryRun", "labelSelector")


@st.composite
def queries(draw: st.DrawFn, relevant: tuple[str, ...] = WRITE_PARAMS, watch: bool = False) -> str:
    """A query string of parameters (mostly ``relevant`` ones) with values bad in their own way, some as
    raw percent-escapes."""
    some_name = st.sampled_from(relevant) | st.sampled_from(relevant) | st.sampled_from(sorted(PARAMS))
    names = draw(st.lists(some_name | small_text, max_size=4))
    pairs: list[str] = []
    if watch:
        pairs.append(f"watch={draw(st.sampled_from(['true', '1', 'True', 'garbage']))}")
        if "timeoutSeconds" not in names:
            pairs.append("timeoutSeconds=1")
    for name in names:
        if draw(st.integers(0, 5)) == 0:
            value = draw(RAW_ESCAPES)
        else:
            value = quote(draw(PARAMS.get(name, small_text)), safe="")
        pairs.append(f"{quote(name, safe='')}={value}")
    return "&".join(pairs)


ACCEPTS = st.sampled_from(
    [
        "application/json",
        "*/*",
        "application/json;as=Table;v=v1;g=meta.k8s.io",
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
        "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
        "application/json;as=Table;v=v9;g=meta.k8s.io",
        "application/yaml",
        "application/vnd.kubernetes.protobuf",
        "text/html",
        ";;;,,,=",
        "application/json;as",
    ]
)


# --- checking what was accepted -------------------------------------------------------------------------


def check_readable(http: httpx.Client, resource: Resource, answer: Any, what: str) -> None:
    """An object the server accepted (and stored) can be read back, and its kind still lists."""
    if not isinstance(answer, dict) or answer.get("kind") != resource.kind:
        return
    name = answer.get("metadata", {}).get("name")
    if isinstance(name, str) and name:
        got = http.get(resource.item(name))
        assert got.status_code in (200, 404), f"{what}: reading it back: {got.status_code} {got.text[:300]}"
        check(got, f"{what}: reading it back")
    for accept in ("application/json", "application/json;as=Table;v=v1;g=meta.k8s.io"):
        listed = http.get(resource.collection, headers={"accept": accept})
        assert listed.status_code == 200, f"{what}: listing: {listed.status_code} {listed.text[:300]}"


def request(
    http: httpx.Client,
    method: str,
    url: str,
    body: bytes | None,
    content_type: str | None,
    *,
    accept: str | None = None,
) -> httpx.Response:
    headers = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if accept is not None:
        headers["accept"] = accept
    return http.request(method, url, content=body, headers=headers)


def _url(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


# --- the tests ----------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), resource=st.sampled_from(RESOURCES))
def test_create(http: httpx.Client, data: st.DataObject, resource: Resource) -> None:
    obj = data.draw(resource.valid(dns_label).flatmap(mutate))
    body, content_type = data.draw(encoded(obj))
    query = data.draw(queries())
    url = _url(resource.collection, query)
    r = request(http, "POST", url, body, content_type, accept=data.draw(st.none() | ACCEPTS))
    answer = check(r, f"POST {url} {content_type} {body[:200]!r}")
    check_readable(http, resource, answer, f"POST {url}")


@FUZZ
@given(data=st.data(), resource=st.sampled_from(RESOURCES))
def test_update(http: httpx.Client, data: st.DataObject, resource: Resource) -> None:
    ensure_seed(http, resource)
    name = seed_name(resource)
    obj = data.draw(resource.valid(st.just(name)).flatmap(mutate))
    body, content_type = data.draw(encoded(obj))
    sub = data.draw(st.sampled_from(["", "", "", "/status", "/finalize", "/garbage"]))
    url = _url(resource.item(name) + sub, data.draw(queries()))
    r = request(http, "PUT", url, body, content_type, accept=data.draw(st.none() | ACCEPTS))
    answer = check(r, f"PUT {url} {content_type} {body[:200]!r}")
    check_readable(http, resource, answer, f"PUT {url}")


def _json_patch_ops(obj: Obj) -> st.SearchStrategy[list[Any]]:
    """JSON patches: random operations, documents doubled by copies, too many operations."""
    pointers = st.sampled_from(
        [
            *["", "/", "/metadata", "/metadata/name", "/metadata/labels/x", "/data", "/data/k", "/spec"],
            *["/spec/size", "/spec/parts/-", "/spec/parts/0", "/spec/parts/99999999999999999999", "/status"],
            *["/~2", "/a~1b", "/metadata/resourceVersion", "/metadata/uid", "/roleRef/name", "/subjects/0"],
        ]
    )
    op = st.fixed_dictionaries(
        {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "bogus"])},
        optional={"path": pointers | json_values, "from": pointers | json_values, "value": json_values},
    )
    # Each copy of the whole document doubles it: 40 of them would take all memory and time.
    doubling = st.integers(1, 40).map(
        lambda n: [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(n)]
    )
    many = st.integers(9_990, 10_010).map(
        lambda n: [{"op": "test", "path": "/kind", "value": obj["kind"]}] * n
    )
    return st.lists(op | json_values, max_size=4) | doubling | many


def _strategic() -> st.SearchStrategy[Any]:
    """Strategic merge patches full of directives, right and wrong."""
    directive = st.fixed_dictionaries(
        {},
        optional={
            "$patch": st.sampled_from(["replace", "merge", "delete", "bogus"]) | json_values,
            "$retainKeys": st.lists(small_text, max_size=2) | json_values,
            "$setElementOrder/finalizers": st.lists(small_text, max_size=2) | json_values,
            "$deleteFromPrimitiveList/finalizers": st.lists(small_text, max_size=2) | json_values,
            "$setElementOrder/ownerReferences": st.lists(json_values, max_size=2),
        },
    )
    return st.builds(
        lambda d, m, extra: {**extra, "metadata": {**m, **d}},
        directive,
        st.fixed_dictionaries(
            {},
            optional={
                "ownerReferences": st.lists(
                    st.fixed_dictionaries({}, optional={"uid": json_values, "$patch": json_values})
                    | json_values,
                    max_size=2,
                ),
                "finalizers": st.lists(small_text, max_size=2) | json_values,
                "labels": json_values,
            },
        ),
        st.dictionaries(st.sampled_from(["data", "spec", "status", "subjects", "$patch"]), json_values),
    )


@FUZZ
@given(data=st.data(), resource=st.sampled_from(RESOURCES))
def test_patch(http: httpx.Client, data: st.DataObject, resource: Resource) -> None:
    ensure_seed(http, resource)
    name = seed_name(resource)
    obj = data.draw(resource.valid(st.just(name)))
    patch_type = data.draw(
        st.sampled_from(
            [
                *["application/merge-patch+json", "application/json-patch+json"] * 2,
                *["application/strategic-merge-patch+json"] * 2,
                "application/apply-patch+yaml",  # server-side apply: not served (415)
            ]
        )
    )
    if patch_type == "application/json-patch+json":
        patch: Any = data.draw(_json_patch_ops(obj))
    elif patch_type == "application/strategic-merge-patch+json":
        patch = data.draw(_strategic() | mutate(obj))
    else:
        obj.pop("metadata")
        patch = data.draw(mutate(obj))
    body, content_type = data.draw(encoded(patch, patch_type))
    sub = data.draw(st.sampled_from(["", "", "", "/status", "/finalize"]))
    url = _url(resource.item(name) + sub, data.draw(queries()))
    r = request(http, "PATCH", url, body, content_type, accept=data.draw(st.none() | ACCEPTS))
    answer = check(r, f"PATCH {url} {content_type} {body[:200]!r}")
    check_readable(http, resource, answer, f"PATCH {url}")


delete_options = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.just("DeleteOptions") | json_values,
        "apiVersion": st.just("meta.k8s.io/v1") | json_values,
        "gracePeriodSeconds": st.integers(-5, 100) | huge_ints | json_values,
        "preconditions": st.fixed_dictionaries(
            {}, optional={"uid": small_text | json_values, "resourceVersion": small_text | json_values}
        )
        | json_values,
        "orphanDependents": st.booleans() | json_values,
        "propagationPolicy": st.sampled_from(["Orphan", "Background", "Foreground"]) | json_values,
        "dryRun": st.just(["All"]) | json_values,
    },
)


@FUZZ
@given(data=st.data(), resource=st.sampled_from(RESOURCES))
def test_delete(http: httpx.Client, data: st.DataObject, resource: Resource) -> None:
    ensure_seed(http, resource)
    collection = data.draw(st.booleans()) and resource.plural != "namespaces"
    path = resource.collection if collection else resource.item(seed_name(resource))
    options = data.draw(delete_options)
    no_body: tuple[bytes, str | None] = (b"", None)
    body, content_type = no_body if data.draw(st.integers(0, 4)) == 0 else data.draw(encoded(options))
    url = _url(path, data.draw(queries(DELETE_PARAMS)))
    r = request(http, "DELETE", url, body, content_type)
    check(r, f"DELETE {url} {content_type} {body[:200]!r}")


@FUZZ
@given(data=st.data(), resource=st.sampled_from(RESOURCES))
def test_reads_and_watches(http: httpx.Client, data: st.DataObject, resource: Resource) -> None:
    accept = data.draw(ACCEPTS) if data.draw(st.integers(0, 3)) == 0 else None
    headers = {"accept": accept} if accept else {}
    what = data.draw(st.sampled_from(["list"] * 5 + ["watch"] * 3 + ["get"] * 2 + ["path"]))
    if what == "watch":
        url = _url(resource.collection, data.draw(queries(WATCH_PARAMS, watch=True)))
        check_watch(http, url, headers, f"GET {url} accept={accept}")
        return
    if what == "get":
        name = data.draw(st.sampled_from([seed_name(resource)] * 3 + ["missing"]) | invalid_names)
        url = _url(resource.item(name), data.draw(queries(LIST_PARAMS)))
    elif what == "path":
        segments = data.draw(st.lists(st.sampled_from(["api", "apis", "v1", NS, "namespaces"]) | small_text))
        path = "/" + "/".join(quote(s, safe="") for s in segments)
        url = _url(str(http.base_url).rstrip("/") + path, data.draw(queries(LIST_PARAMS)))  # "//x" too
    else:
        url = _url(resource.collection, data.draw(queries(LIST_PARAMS)))
    method = data.draw(st.sampled_from(["GET"] * 12 + ["HEAD", "OPTIONS", "PUT", "POST"]))
    r = http.request(method, url, headers=headers)
    if method == "HEAD":
        assert r.status_code < 500, f"HEAD {url} -> {r.status_code}"
        return
    check(r, f"{method} {url} accept={accept}")


# --- bodies from the published OpenAPI schemas ----------------------------------------------------------


class Schemas:
    """Hypothesis strategies for the component schemas of the served OpenAPI v3 documents."""

    MAX_DEPTH = 6

    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components

    def strategy(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        if "$ref" in schema:
            return self.strategy(self.components[schema["$ref"].rsplit("/", 1)[1]], depth)
        if "allOf" in schema:
            return self.strategy(schema["allOf"][0], depth)
        if schema.get("x-kubernetes-int-or-string"):
            return st.integers(0, 100) | st.text(max_size=10)
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            if depth >= self.MAX_DEPTH:
                return st.just({})
            props = schema.get("properties", {})
            required = set(schema.get("required", ()))
            fixed = {k: self.strategy(v, depth + 1) for k, v in props.items() if k in required}
            optional = {k: self.strategy(v, depth + 1) for k, v in props.items() if k not in required}
            if "additionalProperties" in schema and not props:
                extra = schema["additionalProperties"]
                values = self.strategy(extra, depth + 1) if isinstance(extra, dict) else json_values
                return st.dictionaries(st.text(max_size=12), values, max_size=3)
            return st.fixed_dictionaries(fixed, optional=optional)
        if kind == "array":
            if depth >= self.MAX_DEPTH:
                return st.just([])
            return st.lists(self.strategy(schema.get("items", {}), depth + 1), max_size=3)
        if kind == "string":
            if schema.get("format") == "byte":
                return b64
            if schema.get("format") == "date-time":
                return rfc3339
            return st.text(max_size=20)
        if kind == "integer":
            return st.integers(-(2**31), 2**31 - 1)
        if kind == "number":
            return st.floats(allow_nan=False, allow_infinity=False)
        if kind == "boolean":
            return st.booleans()
        return json_values


@pytest.fixture(scope="module")
def openapi_kinds(http: httpx.Client) -> list[tuple[Resource, st.SearchStrategy[Obj]]]:
    index = check(http.get("/openapi/v3"), "GET /openapi/v3")
    found: list[tuple[Resource, st.SearchStrategy[Obj]]] = []
    for resource in RESOURCES:
        group_version = "api/v1" if "/" not in resource.api_version else f"apis/{resource.api_version}"
        doc = check(http.get(index["paths"][group_version]["serverRelativeURL"]), group_version)
        components = doc["components"]["schemas"]
        schemas = Schemas(components)
        group, _, version = resource.api_version.rpartition("/")
        for schema in components.values():
            gvks = schema.get("x-kubernetes-group-version-kind", [])
            if {"group": group, "version": version, "kind": resource.kind} in gvks:
                found.append((resource, schemas.strategy(schema)))
                break
        else:
            pytest.fail(f"no schema for {resource.kind} in {group_version}")
    return found


@FUZZ
@given(data=st.data())
def test_bodies_from_openapi_schemas(
    http: httpx.Client, openapi_kinds: list[tuple[Resource, st.SearchStrategy[Obj]]], data: st.DataObject
) -> None:
    resource, strategy = data.draw(st.sampled_from(openapi_kinds))
    obj = data.draw(strategy)
    obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
    meta = obj.setdefault("metadata", {})
    meta["name"] = f"{data.draw(dns_label)}-{next(_unique)}"  # new names: creates, not 409s
    meta.pop("namespace", None)
    strict = data.draw(st.booleans())
    url = resource.collection + ("?fieldValidation=Strict" if strict else "")
    r = http.post(url, json=obj)
    answer = check(r, f"POST {url} {json.dumps(obj)[:300]}")
    if r.status_code == 400:
        # Everything in the body is in the published schema: the decoder must know every field.
        assert "strict decoding error" not in r.text and "unknown field" not in r.text, r.text
    check_readable(http, resource, answer, f"POST {url}")


# --- regressions found by the tests above -----------------------------------------------------------------


REGRESSIONS: list[tuple[str, str, bytes | None, str | None, int]] = [
    # Nesting deeper than the interpreter's recursion limit (a RecursionError was a 500).
    (
        "POST",
        "configmaps",
        b'{"metadata":{"name":"d"},"data":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
        None,
        400,
    ),
    ("POST", "configmaps", b'{"metadata":{"name":"d"},"x":' + b"[" * 1000 + b"]" * 1000 + b"}", None, 400),
    ("POST", "configmaps", b"metadata: {name: d}\nx: " + b"[" * 3000 + b"]" * 3000, "application/yaml", 400),
    ("PATCH", "configmaps/seed", b'{"data":' + b'{"a":' * 900 + b"1" + b"}" * 901, "merge", 422),
    # Lone surrogates pass Python's JSON decoder but not the store's encoder.
    ("POST", "configmaps", b'{"metadata":{"name":"s"},"data":{"a":"\\ud800"}}', None, 400),
    ("POST", "configmaps", b'metadata: {name: s}\ndata: {a: "\\ud800"}', "application/yaml", 400),
    ("PATCH", "configmaps/seed", b'{"data":{"a":"\\udfff"}}', "merge", 422),
    # Numbers the store cannot encode.
    (
        "POST",
        "widgets",
        b'{"metadata":{"name":"n"},"spec":{"size":123456789012345678901234567890}}',
        None,
        422,
    ),
    ("PATCH", "widgets/seed", b'{"spec":{"size":123456789012345678901234567890}}', "merge", 422),
    ("PATCH", "widgets/seed", b'[{"op":"add","path":"/spec/size","value":1e400}]', "json", 422),
    # YAML values that are not JSON: binary and sets are refused; dates are strings, as in Kubernetes.
    (
        "POST",
        "configmaps",
        b"metadata: {name: y}\nbinaryData: {a: !!binary aGVsbG8=}",
        "application/yaml",
        400,
    ),
    ("POST", "configmaps", b"metadata: {name: y}\ndata: !!set {a, b}", "application/yaml", 400),
    ("POST", "configmaps", b"metadata: {name: y}\ndata: {2020-01-01: 2021-02-03}", "application/yaml", 201),
    # A generateName that is not a string (the name was built by concatenation).
    ("POST", "configmaps", b'{"metadata":{"generateName":5}}', None, 422),
    ("POST", "configmaps", b'{"metadata":{"generateName":["x"]}}', None, 422),
    # metadata: null is no metadata.
    ("POST", "configmaps", b'{"metadata":null}', None, 422),
    ("PUT", "configmaps/seed", b'{"metadata":null}', None, 200),
    # A top-level null is no field: the Namespace defaulter took "spec": null for an object.
    (
        "PUT",
        "/api/v1/namespaces/fuzz-seed",
        b'{"metadata":{"name":"fuzz-seed"},"spec":null,"status":null}',
        None,
        200,
    ),
    ("POST", "/api/v1/namespaces", b'{"metadata":{"name":"null-spec"},"spec":null}', None, 201),
    # Query parameters out of range for SQLite or the store.
    ("GET", "configmaps?limit=99999999999999999999999999", None, None, 400),
    ("GET", "configmaps?limit=9223372036854775807", None, None, 200),
    ("GET", "configmaps?resourceVersion=-5&resourceVersionMatch=Exact", None, None, 400),
    ("GET", "configmaps?limit=1&continue=eyJydiI6LTEsInN0YXJ0IjoiL3JlZ2lzdHJ5In0", None, None, 400),
    ("GET", "configmaps?limit=1&continue=eyJydiI6MWUzMDAsInN0YXJ0IjoxfQ", None, None, 400),
    # A watch with timeoutSeconds=nan never ended; Kubernetes takes whole seconds only.
    ("GET", "configmaps?watch=1&timeoutSeconds=nan", None, None, 400),
    ("GET", "configmaps?watch=1&timeoutSeconds=inf", None, None, 400),
    ("GET", "configmaps?watch=1&timeoutSeconds=1.5", None, None, 400),
    # DeleteOptions and TokenRequests of the wrong shape.
    ("DELETE", "configmaps/seed", b'{"preconditions":5}', None, 400),
    ("DELETE", "configmaps/seed", b'{"gracePeriodSeconds":"x"}', None, 400),
    ("DELETE", "configmaps", b'{"preconditions":5}', None, 400),
    ("POST", "serviceaccounts/seed/token", b'{"spec":5}', None, 400),
    ("POST", "serviceaccounts/seed/token", b'{"spec":{"expirationSeconds":"x"}}', None, 400),
    ("POST", "serviceaccounts/seed/token", b'{"spec":{"audiences":5}}', None, 400),
    ("POST", "serviceaccounts/seed/token", b'{"spec":{"expirationSeconds":99999999999999999}}', None, 422),
    # JSON patches that double the document with every copy hung the server; kube-apiserver's limits.
    (
        "PATCH",
        "configmaps/seed",
        json.dumps([{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(40)]).encode(),
        "json",
        422,
    ),
    (
        "PATCH",
        "configmaps/seed",
        json.dumps([{"op": "test", "path": "/kind", "value": "ConfigMap"}] * 10_001).encode(),
        "json",
        422,
    ),
    # A namespace finalize with a spec that is not an object.
    (
        "PUT",
        "/api/v1/namespaces/fuzz-seed/finalize",
        b'{"metadata":{"name":"fuzz-seed"},"spec":5}',
        None,
        422,
    ),
]


@pytest.mark.parametrize("case", REGRESSIONS, ids=lambda case: f"{case[0]} {case[1][:40]}")
def test_regressions(http: httpx.Client, case: tuple[str, str, bytes | None, str | None, int]) -> None:
    method, path, body, content_type, expected = case
    for resource in RESOURCES:
        ensure_seed(http, resource)
    sa = http.post(f"/api/v1/namespaces/{NS}/serviceaccounts", json={"metadata": {"name": SEED}})
    assert sa.status_code in (201, 409), sa.text
    if path.startswith("/"):
        url = path
    else:
        group = "apis/test.kubevisor.io" if path.startswith("widgets") else "api"
        url = f"/{group}/v1/namespaces/{NS}/{path}"
    content_type = {"merge": "application/merge-patch+json", "json": "application/json-patch+json"}.get(
        content_type or "", content_type or "application/json"
    )
    r = request(http, method, url, body, content_type)
    assert r.status_code == expected, f"{method} {url}: {r.status_code} {r.text[:300]}"
    check(r, f"{method} {url}")
    if expected == 201:
        http.delete(f"{url}/{r.json()['metadata']['name']}")


def test_warnings_are_bounded_and_utf8(http: httpx.Client) -> None:
    """A field name outside latin-1 made the Warning header unencodable (a 500); thousands of unknown
    fields made one that clients refuse (h11 at 16 KiB, http.client at 64 KiB)."""
    widgets = f"/apis/test.kubevisor.io/v1/namespaces/{NS}/widgets"
    r = http.post(widgets, json={"metadata": {"name": "warned-utf8"}, "ü€": 1})
    assert r.status_code == 201, r.text
    assert r.headers["warning"] == '299 - "unknown field \\"ü€\\""'  # sent as UTF-8, read as such
    spec: dict[str, Any] = {f"unknown{i}": i for i in range(3000)}
    r = http.post(widgets, json={"metadata": {"name": "warned-wide"}, "spec": {**spec, "size": 1}})
    assert r.status_code == 201, r.text
    header = r.headers["warning"]
    assert 1000 < len(header) < 8 * 1024, len(header)
    assert header.startswith('299 - "unknown field \\"spec.unknown0\\""'), header[:100]


def test_yaml_is_read_as_kubernetes_reads_it(http: httpx.Client) -> None:
    """Timestamps and dates stay the strings they were, other keys become strings (a date was a 500)."""
    head = b"metadata: {name: yaml-dates, labels: {1: x}}\n"
    r = request(
        http, "POST", f"/api/v1/namespaces/{NS}/configmaps", head + b"data: {a: 1.0}", "application/yaml"
    )
    assert r.status_code == 422, r.text  # data values must be strings: 1.0 is a number
    body = head + b"data: {2020-01-01: 2001-12-14t21:59:43.10-05:00}"
    r = request(http, "POST", f"/api/v1/namespaces/{NS}/configmaps", body, "application/yaml")
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["data"] == {"2020-01-01": "2001-12-14t21:59:43.10-05:00"}
    assert created["metadata"]["labels"] == {"1": "x"}


def test_yaml_alias_bomb_is_refused_quickly(http: httpx.Client) -> None:
    """Nine levels of nine-fold aliases expand to 387 million strings: refused, not expanded."""
    started = time.monotonic()
    r = request(http, "POST", f"/api/v1/namespaces/{NS}/configmaps", alias_bomb(9), "application/yaml")
    assert r.status_code == 400 and time.monotonic() - started < 5, (r.status_code, r.text[:300])
    check(r, "alias bomb")


def test_watch_from_negative_resource_version_ends_cleanly(http: httpx.Client) -> None:
    """The store refused the revision inside the stream, which broke the chunked response."""
    for rv in ("-5", "99999999999999999999999999"):
        url = f"/api/v1/namespaces/{NS}/configmaps?watch=1&timeoutSeconds=1&resourceVersion={rv}"
        with http.stream("GET", url) as r:
            body = r.read()  # raises on an incomplete chunked body
        assert r.status_code in (200, 400, 410), (rv, r.status_code)
        for line in body.splitlines():
            event = json.loads(line)
            assert event["type"] == "ERROR", event
            check_status(event["object"]["code"], json.dumps(event["object"]).encode(), url)
