"""Mapping failure responses (Kubernetes ``Status`` bodies) to the ApiError tree."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kubevisor.client import errors


def _status(code: int, reason: str, message: str = "msg", **details: Any) -> bytes:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return orjson.dumps(body)


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (400, "BadRequest", errors.BadRequestError),
        (401, "Unauthorized", errors.UnauthorizedError),
        (403, "Forbidden", errors.ForbiddenError),
        (404, "NotFound", errors.NotFoundError),
        (405, "MethodNotAllowed", errors.MethodNotAllowedError),
        (409, "Conflict", errors.ConflictError),
        (409, "AlreadyExists", errors.AlreadyExistsError),
        (410, "Expired", errors.GoneError),
        (410, "Gone", errors.GoneError),
        (415, "UnsupportedMediaType", errors.UnsupportedMediaTypeError),
        (422, "Invalid", errors.InvalidError),
        (429, "TooManyRequests", errors.TooManyRequestsError),
        (500, "InternalError", errors.ServerError),
        (503, "ServiceUnavailable", errors.ServerError),
        (504, "Timeout", errors.ServerError),
        (418, "Teapot", errors.ApiError),
        (502, "", errors.ServerError),
    ],
)
def test_status_reasons_map_to_classes(code: int, reason: str, cls: type[errors.ApiError]) -> None:
    err = errors.from_response(code, _status(code, reason, "the message"))
    assert type(err) is cls
    assert err.status == code
    assert err.code == code
    assert err.reason == reason
    assert err.message == "the message"
    assert isinstance(err, errors.ClientError)


def test_already_exists_is_not_a_conflict() -> None:
    """A conflict asks for re-read and retry; an existing name does not, so they must not be confused."""
    err = errors.from_response(409, _status(409, "AlreadyExists"))
    assert not isinstance(err, errors.ConflictError)


def test_invalid_carries_causes_and_details() -> None:
    causes = [{"reason": "FieldValueInvalid", "message": "bad", "field": "metadata.name"}]
    err = errors.from_response(
        422, _status(422, "Invalid", 'ConfigMap "X" is invalid', name="X", kind="configmaps", causes=causes)
    )
    assert isinstance(err, errors.InvalidError)
    assert err.causes == causes
    assert err.details["name"] == "X"
    assert err.body["kind"] == "Status"
    assert str(err) == 'Invalid (422): ConfigMap "X" is invalid'


def test_bodies_that_are_not_a_status_are_still_mapped_by_code() -> None:
    err = errors.from_response(404, b"404 page not found")
    assert isinstance(err, errors.NotFoundError)
    assert err.reason == ""
    assert err.message == "404 page not found"
    assert err.body == {}
    err = errors.from_response(502, b"")
    assert isinstance(err, errors.ServerError)
    assert "502" in err.message
    err = errors.from_response(409, b'{"not": "a status"}')
    assert isinstance(err, errors.ConflictError)


def test_retry_after_from_details_or_header() -> None:
    err = errors.from_response(429, _status(429, "TooManyRequests", retryAfterSeconds=3))
    assert err.retry_after_seconds == 3
    err = errors.from_response(429, _status(429, "TooManyRequests"), {"retry-after": "7"})
    assert err.retry_after_seconds == 7
    err = errors.from_response(503, b"", {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert err.retry_after_seconds is None


def test_retry_semantics() -> None:
    assert errors.ServerError.retryable
    assert errors.TooManyRequestsError.retryable
    assert errors.TransportError.retryable
    assert not errors.ConflictError.retryable, "a conflict needs a re-read before retrying"
    assert not errors.InvalidError.retryable


def test_a_watch_error_status_without_http_status_uses_its_code() -> None:
    err = errors.from_status({"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})
    assert isinstance(err, errors.GoneError)
    assert err.status == 410
    err = errors.from_status({"kind": "Status", "message": "no code"})
    assert err.status == 500
