"""What the client raises, and what each error means for a caller that wants to retry.

The server answers every failure with a Kubernetes ``Status`` body (reference §1.12). The client turns
that body into one exception class per ``reason`` so callers branch on types, not on numbers::

    ClientError                      anything this package raises about talking to a server
    ├── TransportError               no answer at all (refused, reset, TLS, timeout): retry with backoff
    ├── ProtocolError                an answer that breaks the API's wire format (bad JSON in a watch)
    └── ApiError                     the server answered a failure Status
        ├── BadRequestError      400 the request is malformed: do not retry unchanged
        ├── UnauthorizedError    401 credentials missing or wrong: do not retry
        ├── ForbiddenError       403 not allowed (also: namespace is terminating): do not retry unchanged
        ├── NotFoundError        404 the object (or the resource type) does not exist
        ├── MethodNotAllowedError 405
        ├── ConflictError        409 Conflict: stale resourceVersion; re-read, re-apply, retry
        ├── AlreadyExistsError   409 AlreadyExists: create of a name that exists
        ├── GoneError            410 Expired/Gone: resourceVersion or continue token compacted; re-list
        ├── UnsupportedMediaTypeError 415 (e.g. strategic merge patch on a custom kind)
        ├── InvalidError         422 validation failed; ``causes`` names each field
        ├── TooManyRequestsError 429 retry after ``retry_after_seconds``
        └── ServerError          5xx (InternalError, ServiceUnavailable, Timeout): retry with backoff

Every :class:`ApiError` carries ``status`` (the HTTP status code, as in the official Python client's
``ApiException.status``), ``reason``, ``message``, ``details`` and the raw ``body``. The class attribute
``retryable`` says whether the same request may succeed later without being changed (a conflict is
*not* retryable as is: the caller must re-read first). Wrapped transport errors keep their cause in
``__cause__``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class ClientError(Exception):
    """Base of every error this package raises about a request."""

    retryable: ClassVar[bool] = False


class TransportError(ClientError):
    """The request got no HTTP answer: connection refused or reset, TLS failure, timeout."""

    retryable: ClassVar[bool] = True


class ProtocolError(ClientError):
    """The server's answer is not what the API promises (a watch line that is not a JSON event, ...)."""

    retryable: ClassVar[bool] = True


class ApiError(ClientError):
    """The server answered with a failure ``Status``."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(f"{reason} ({status}): {message}" if reason else f"HTTP {status}: {message}")
        self.status = status
        """HTTP status code (the Status object's ``code``)."""
        self.reason = reason
        """Machine-readable ``reason`` of the Status (``NotFound``); empty if the body was not a Status."""
        self.message = message
        """Human-readable message from the server."""
        self.details: dict[str, Any] = details or {}
        """``details`` of the Status: name, group, kind, uid, causes, retryAfterSeconds."""
        self.body: dict[str, Any] = body or {}
        """The whole Status body as the server sent it (empty if it was not JSON)."""
        self.retry_after_seconds = retry_after_seconds
        """Seconds the server asked to wait (``details.retryAfterSeconds`` or ``Retry-After``), if any."""

    @property
    def code(self) -> int:
        """Alias of :attr:`status`, as the Status object names it."""
        return self.status

    @property
    def causes(self) -> list[dict[str, Any]]:
        """``details.causes``: dicts with ``reason``, ``message`` and ``field``."""
        causes = self.details.get("causes")
        return list(causes) if isinstance(causes, list) else []


class BadRequestError(ApiError):
    """400: the request itself is wrong (bad selector, unknown field under Strict validation, ...)."""


class UnauthorizedError(ApiError):
    """401: no or invalid credentials."""


class ForbiddenError(ApiError):
    """403: the user may not do this, or the namespace is being deleted."""


class NotFoundError(ApiError):
    """404: the object, or the resource type, does not exist."""


class MethodNotAllowedError(ApiError):
    """405: the resource does not support this verb."""


class ConflictError(ApiError):
    """409 Conflict: the resourceVersion sent is stale. Re-read the object, re-apply the change, retry."""


class AlreadyExistsError(ApiError):
    """409 AlreadyExists: an object with this name exists."""


class GoneError(ApiError):
    """410: the resourceVersion or continue token is older than the server's history. Re-list."""


class UnsupportedMediaTypeError(ApiError):
    """415: the server does not accept this content type (e.g. strategic merge patch for a custom kind)."""


class InvalidError(ApiError):
    """422: validation failed. :attr:`causes` names each invalid field."""


class TooManyRequestsError(ApiError):
    """429: throttled; retry after :attr:`retry_after_seconds`."""

    retryable: ClassVar[bool] = True


class ServerError(ApiError):
    """5xx: the server failed (InternalError, ServiceUnavailable, Timeout). Retry with backoff."""

    retryable: ClassVar[bool] = True


_BY_REASON: dict[str, type[ApiError]] = {
    "BadRequest": BadRequestError,
    "Unauthorized": UnauthorizedError,
    "Forbidden": ForbiddenError,
    "NotFound": NotFoundError,
    "MethodNotAllowed": MethodNotAllowedError,
    "Conflict": ConflictError,
    "AlreadyExists": AlreadyExistsError,
    "Gone": GoneError,
    "Expired": GoneError,
    "UnsupportedMediaType": UnsupportedMediaTypeError,
    "Invalid": InvalidError,
    "TooManyRequests": TooManyRequestsError,
    "InternalError": ServerError,
    "ServiceUnavailable": ServerError,
    "Timeout": ServerError,
}

_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    410: GoneError,
    415: UnsupportedMediaTypeError,
    422: InvalidError,
    429: TooManyRequestsError,
}


def error_class(status: int, reason: str) -> type[ApiError]:
    """The exception class for a Status: by ``reason`` when known, else by HTTP status code."""
    cls = _BY_REASON.get(reason)
    if cls is not None:
        return cls
    cls = _BY_CODE.get(status)
    if cls is not None:
        return cls
    return ServerError if status >= 500 else ApiError


def from_status(status_obj: dict[str, Any], http_status: int | None = None) -> ApiError:
    """The :class:`ApiError` a ``Status`` object stands for (also used for watch ERROR events)."""
    code = status_obj.get("code")
    status = code if isinstance(code, int) and code else (http_status or 500)
    reason = str(status_obj.get("reason") or "")
    message = str(status_obj.get("message") or "")
    details = status_obj.get("details")
    details = details if isinstance(details, dict) else {}
    retry_after = details.get("retryAfterSeconds")
    cls = error_class(status, reason)
    return cls(
        status,
        reason,
        message,
        details=details,
        body=status_obj,
        retry_after_seconds=float(retry_after) if isinstance(retry_after, int | float) else None,
    )


def from_response(status: int, content: bytes, headers: dict[str, str] | None = None) -> ApiError:
    """The :class:`ApiError` for a failed HTTP response; tolerates bodies that are not a Status."""
    body: Any = None
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        err = from_status(body, status)
    else:
        text = content.decode("utf-8", "replace").strip()
        err = error_class(status, "")(status, "", text or f"the server responded with HTTP {status}")
    retry_after = (headers or {}).get("retry-after")
    if err.retry_after_seconds is None and retry_after:
        try:
            err.retry_after_seconds = float(retry_after)
        except ValueError:
            pass
    return err
