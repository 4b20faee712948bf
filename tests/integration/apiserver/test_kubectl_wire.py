"""What kubectl puts on the wire: protobuf bodies (kubectl >= 1.32), Table watches, OpenAPI v3 schemas.

The protobuf bodies below are byte for byte what kubectl 1.33.1 sent (captured with ``-v=9``) for
``kubectl create configmap pbcm --from-literal=a=1 --from-literal=b=2``,
``kubectl auth can-i list configmaps -n foo`` and ``kubectl create token SA --duration=1h --audience=aud1``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

PROTOBUF = "application/vnd.kubernetes.protobuf"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

KUBECTL_CREATE_CONFIGMAP = bytes.fromhex(
    "6b3873000a0f0a0276311209436f6e6669674d617012260a140a047062636d12001a0022002a0032003800420012060a"
    "016112013112060a01621201321a002200"
)
KUBECTL_AUTH_CAN_I = bytes.fromhex(
    "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a65637441636365"
    "7373526576696577123f0a100a0012001a0022002a0032003800420012210a1f0a03666f6f12046c6973741a0022002a"
    "0a636f6e6669676d61707332003a001a08080012001a0020001a002200"
)
KUBECTL_CREATE_TOKEN = bytes.fromhex(
    "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e526571756573741223"
    "0a100a0012001a0022002a0032003800420012090a046175643120901c1a040a0012001a002200"
)


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = field(1, api_version.encode()) + field(2, kind.encode())
    return b"k8s\x00" + field(1, type_meta) + field(2, raw)


async def test_protobuf_create_configmap_as_kubectl_sends_it(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/v1/namespaces/default/configmaps?fieldManager=kubectl-create&fieldValidation=Strict",
        content=KUBECTL_CREATE_CONFIGMAP,
        headers={"content-type": PROTOBUF, "accept": f"{PROTOBUF},application/json"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == "application/json"  # JSON is acceptable, and all we answer
    created = r.json()
    assert created["metadata"]["name"] == "pbcm" and created["data"] == {"a": "1", "b": "2"}
    assert "generation" not in created["metadata"]  # zero scalars from Go's encoder are not values


async def test_protobuf_self_subject_access_review_and_token_request(http: httpx.AsyncClient) -> None:
    headers = {"content-type": PROTOBUF}
    r = await http.post(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", content=KUBECTL_AUTH_CAN_I, headers=headers
    )
    assert r.status_code == 201, r.text
    review = r.json()
    assert review["spec"]["resourceAttributes"] == {
        "namespace": "foo",
        "verb": "list",
        "resource": "configmaps",
    }
    assert review["status"]["allowed"] is True

    r = await http.post("/api/v1/namespaces/default/serviceaccounts", json={"metadata": {"name": "pbsa"}})
    assert r.status_code == 201, r.text
    r = await http.post(
        "/api/v1/namespaces/default/serviceaccounts/pbsa/token", content=KUBECTL_CREATE_TOKEN, headers=headers
    )
    assert r.status_code == 201, r.text
    token = r.json()
    assert token["spec"]["audiences"] == ["aud1"] and token["spec"]["expirationSeconds"] == 3600
    assert token["status"]["token"].count(".") == 2


async def test_protobuf_kinds_fields_and_errors(http: httpx.AsyncClient) -> None:
    meta = field(1, field(1, b"pb-role"))  # ObjectMeta{name}
    rule = field(1, b"get") + field(2, b"") + field(3, b"configmaps")  # verbs, apiGroups [""], resources
    body = envelope("rbac.authorization.k8s.io/v1", "Role", meta + field(2, rule))
    r = await http.post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        content=body,
        headers={"content-type": PROTOBUF},
    )
    assert r.status_code == 201, r.text
    assert r.json()["rules"] == [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]}]

    # a kind the protobuf decoder does not know (kubectl never sends widgets as protobuf): 415
    body = envelope("test.kubevisor.io/v1", "Widget", field(1, field(1, b"w")))
    r = await http.post(
        "/apis/test.kubevisor.io/v1/namespaces/default/widgets",
        content=body,
        headers={"content-type": PROTOBUF},
    )
    assert r.status_code == 415 and r.json()["reason"] == "UnsupportedMediaType"

    # garbage: 400, never 500
    for junk in (b"k8s\x00\x0a\xff", b"not protobuf at all", b"k8s\x00\x0b"):
        r = await http.post(
            "/api/v1/namespaces/default/configmaps", content=junk, headers={"content-type": PROTOBUF}
        )
        assert r.status_code == 400, (junk, r.text)
        assert r.json()["reason"] == "BadRequest"


async def test_watch_with_table_accept_streams_tables(http: httpx.AsyncClient) -> None:
    """``kubectl get -w`` asks for Tables; the first carries the columns, later ones reuse them."""
    base = "/apis/test.kubevisor.io/v1/namespaces/default/widgets"
    r = await http.post(base, json={"metadata": {"name": "tw"}, "spec": {"size": 1, "color": "red"}})
    assert r.status_code == 201, r.text
    rv = r.json()["metadata"]["resourceVersion"]
    got: list[dict[str, Any]] = []

    async def watch() -> None:
        url = f"{base}?watch=true&resourceVersion=0"
        async with http.stream("GET", url, headers={"accept": TABLE}, timeout=30) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.strip():
                    got.append(json.loads(line))
                    if len(got) == 1:
                        patched = await http.patch(
                            f"{base}/tw",
                            json={"spec": {"size": 2}},
                            headers={"content-type": "application/merge-patch+json"},
                        )
                        assert patched.status_code == 200, patched.text
                    if len(got) == 2:
                        return

    await asyncio.wait_for(watch(), 10)
    first, second = got
    assert first["type"] == "ADDED" and second["type"] == "MODIFIED"
    for event in got:
        assert event["object"]["kind"] == "Table" and event["object"]["apiVersion"] == "meta.k8s.io/v1"
    names = [c["name"] for c in first["object"]["columnDefinitions"]]
    assert names == ["Name", "Size", "Phase", "Ready", "Age", "Color"]
    assert second["object"]["columnDefinitions"] == []
    assert first["object"]["rows"][0]["cells"][:2] == ["tw", 1]
    assert first["object"]["rows"][0]["object"]["metadata"]["resourceVersion"] == rv
    assert second["object"]["rows"][0]["cells"][:2] == ["tw", 2]


async def test_watch_with_metadata_accept_streams_partial_objects(http: httpx.AsyncClient) -> None:
    cm = "/api/v1/namespaces/default/configmaps"
    r = await http.post(cm, json={"metadata": {"name": "meta-watch"}, "data": {"secret": "x"}})
    assert r.status_code == 201, r.text
    accept = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"
    async with http.stream("GET", f"{cm}?watch=true", headers={"accept": accept}, timeout=30) as resp:
        line = await asyncio.wait_for(anext(aiter(resp.aiter_lines())), 10)
    event = json.loads(line)
    assert event["object"]["kind"] == "PartialObjectMetadata"
    assert event["object"]["metadata"]["name"] == "meta-watch" and "data" not in event["object"]


async def test_openapi_v3_has_no_boolean_additional_properties(http: httpx.AsyncClient) -> None:
    """kubectl 1.29/1.30 ``explain --recursive`` templates fail on ``additionalProperties: true``."""

    def booleans(node: Any, path: str) -> list[str]:
        if isinstance(node, dict):
            found = [path] if isinstance(node.get("additionalProperties"), bool) else []
            return found + [p for k, v in node.items() for p in booleans(v, f"{path}/{k}")]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in booleans(v, f"{path}[{i}]")]
        return []

    index = (await http.get("/openapi/v3")).json()["paths"]
    assert "apis/test.kubevisor.io/v1" in index
    for entry in index.values():
        doc = (await http.get(entry["serverRelativeURL"])).json()
        assert booleans(doc, entry["serverRelativeURL"]) == []
