"""The protobuf request-body decoder: wire types, Go's zero values, maps, times, and refusals."""

from __future__ import annotations

import pytest

from kubevisor.apiserver import errors
from kubevisor.apiserver.protobuf import decode


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def num(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def msg(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(data)) + data


def entry(number: int, key: str, value: bytes | str) -> bytes:
    return msg(number, msg(1, key) + msg(2, value))


def envelope(api_version: str, kind: str, raw: bytes, encoding: str = "") -> bytes:
    body = msg(1, msg(1, api_version) + msg(2, kind)) + msg(2, raw)
    if encoding:
        body += msg(3, encoding)
    return b"k8s\x00" + body


def test_object_meta_zero_values_maps_and_times() -> None:
    meta = (
        msg(1, "cm")
        + msg(2, "")  # generateName: Go writes empty strings; JSON omits them
        + num(7, 0)  # generation 0: omitted
        + msg(8, num(1, 1_700_000_000))  # creationTimestamp
        + msg(9, b"")  # zero deletionTimestamp: omitted
        + num(10, 0)  # deletionGracePeriodSeconds is a pointer in Go: 0 is a value
        + entry(11, "app", "web")
        + entry(11, "tier", "")
        + msg(14, "a/b")
        + msg(14, "")
        + msg(17, msg(1, "kubectl"))  # managedFields: the server's, ignored
        + msg(99, "unknown field numbers are skipped")
    )
    raw = msg(1, meta) + entry(3, "bin", b"\x00\xff") + num(4, 0)
    obj = decode(envelope("v1", "ConfigMap", raw))
    assert obj == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cm",
            "creationTimestamp": "2023-11-14T22:13:20Z",
            "deletionGracePeriodSeconds": 0,
            "labels": {"app": "web", "tier": ""},
            "finalizers": ["a/b", ""],
        },
        "binaryData": {"bin": "AP8="},
        "immutable": False,
    }


def test_secret_bytes_and_service_account_pointer_bool() -> None:
    secret = decode(envelope("v1", "Secret", msg(1, msg(1, "s")) + entry(2, "k", b"v") + msg(3, "Opaque")))
    assert secret["data"] == {"k": "dg=="} and secret["type"] == "Opaque"
    sa = decode(envelope("v1", "ServiceAccount", msg(1, msg(1, "sa")) + num(4, 0)))
    assert sa["automountServiceAccountToken"] is False


def test_negative_and_large_integers() -> None:
    spec = num(4, 600) + msg(1, "aud")
    token = decode(envelope("authentication.k8s.io/v1", "TokenRequest", msg(2, spec)))
    assert token["spec"] == {"expirationSeconds": 600, "audiences": ["aud"]}
    meta = msg(1, msg(1, "x") + num(10, -5))
    assert decode(envelope("v1", "ConfigMap", meta))["metadata"]["deletionGracePeriodSeconds"] == -5


def test_unknown_kind_and_content_encoding_are_415() -> None:
    with pytest.raises(errors.ApiError) as exc:
        decode(envelope("apps/v1", "Deployment", b""))
    assert exc.value.code == 415 and "apps/v1, Kind=Deployment" in exc.value.message
    with pytest.raises(errors.ApiError) as exc:
        decode(envelope("v1", "ConfigMap", b"", encoding="gzip"))
    assert exc.value.code == 415


@pytest.mark.parametrize(
    "body",
    [
        b"{}",  # no k8s prefix
        b"k8s\x00\x0a",  # truncated length
        b"k8s\x00\x0a\x05ab",  # length beyond the end
        b"k8s\x00\x0b",  # group wire type
        b"k8s\x00\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # endless varint
        envelope("v1", "ConfigMap", msg(1, msg(1, b"\xff\xfe"))),  # invalid UTF-8 in a string
        envelope("v1", "ConfigMap", num(1, 5)),  # a number where a message belongs
    ],
)
def test_malformed_bodies_are_400(body: bytes) -> None:
    with pytest.raises(errors.ApiError) as exc:
        decode(body)
    assert exc.value.code == 400 and exc.value.reason == "BadRequest"
