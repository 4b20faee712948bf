"""API errors as Kubernetes ``Status`` objects.

Every failure the server answers is an :class:`ApiError`; the app turns it into a ``Status`` body with
``reason``, ``code`` and ``details.causes`` (field paths), so kubectl prints
``Error from server (<Reason>): <message>`` exactly as with kube-apiserver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubevisor.api.registry import Kind
from kubevisor.api.validation import FieldError


class ApiError(Exception):
    """An error answered as a Status. ``code`` is the HTTP status."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(kind: Kind | None, name: str | None, causes: Sequence[FieldError] = ()) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details["name"] = str(name)  # a name from a request body may be any JSON value
    if kind is not None:
        if kind.group:
            details["group"] = kind.group
        details["kind"] = kind.plural
    if causes:
        details["causes"] = [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]
    return details


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{kind.resource_group} "{name}" not found', details=_details(kind, name)
    )


def already_exists(kind: Kind, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{kind.resource_group} "{name}" already exists', details=_details(kind, name)
    )


def conflict(kind: Kind, name: str, why: str | None = None) -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind.resource_group} "{name}": {why}',
        details=_details(kind, name),
    )


def invalid(kind: Kind, name: str | None, errors: Sequence[FieldError]) -> ApiError:
    parts = "; ".join(_error_text(e) for e in errors)
    label = f'{kind.kind} "{name}"' if name else kind.kind
    return ApiError(
        422,
        "Invalid",
        f"{label} is invalid: [{parts}]" if len(errors) > 1 else f"{label} is invalid: {parts}",
        details=_details(kind, name, errors),
    )


def _error_text(error: FieldError) -> str:
    """Kubernetes' ``field: Reason text: detail``, without the detail when it only repeats the reason."""
    reason = _reason_text(error.reason)
    if not error.message or error.message == reason:
        return f"{error.field}: {reason}"
    return f"{error.field}: {reason}: {error.message}"


def _reason_text(reason: str) -> str:
    return {
        "FieldValueInvalid": "Invalid value",
        "FieldValueRequired": "Required value",
        "FieldValueForbidden": "Forbidden",
        "FieldValueNotSupported": "Unsupported value",
        "FieldValueDuplicate": "Duplicate value",
        "FieldValueTypeInvalid": "Invalid value",
        "FieldValueTooLong": "Too long",
    }.get(reason, reason)


def bad_request(message: str, causes: Sequence[FieldError] = ()) -> ApiError:
    details = _details(None, None, causes) if causes else None
    return ApiError(400, "BadRequest", message, details=details)


def forbidden(message: str, kind: Kind | None = None, name: str | None = None) -> ApiError:
    return ApiError(403, "Forbidden", message, details=_details(kind, name) or None)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def path_not_found(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource (path {path})")
