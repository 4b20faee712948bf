"""The two time formats of the Kubernetes API, written and read exactly as Go's apimachinery does.

``Time`` (creationTimestamp, Event first/lastTimestamp) is RFC 3339 in UTC with whole seconds:
``2024-05-01T10:00:00Z``. ``MicroTime`` (Lease acquireTime/renewTime, Event eventTime) has six fractional
digits: ``2024-05-01T10:00:00.123456Z``. Writing anything else makes Go clients reject the object.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """``metav1.Time``: whole seconds, UTC, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime) -> str:
    """``metav1.MicroTime``: microseconds, UTC, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    """Parse either format (or any RFC 3339 time with an offset) into an aware datetime."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
