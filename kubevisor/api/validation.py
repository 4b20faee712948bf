"""Field errors and the name rules every kind shares (DNS-1123 labels and subdomains).

Validators return a list of :class:`FieldError`; the apiserver turns a non-empty list into a 422 Invalid
Status whose ``details.causes`` carry each error's field path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: its path, what is wrong, and a Kubernetes cause reason."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


def dns1123_label(value: str, field: str) -> list[FieldError]:
    """Errors if ``value`` is not a DNS-1123 label (namespaces, most KubeVirt names)."""
    if len(value) > 63:
        return [FieldError(field, f"{value!r}: must be no more than 63 characters")]
    if not DNS1123_LABEL.match(value):
        return [
            FieldError(
                field,
                f"{value!r}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character",
            )
        ]
    return []


def dns1123_subdomain(value: str, field: str) -> list[FieldError]:
    """Errors if ``value`` is not a DNS-1123 subdomain (the default rule for object names)."""
    if len(value) > 253:
        return [FieldError(field, f"{value!r}: must be no more than 253 characters")]
    if not DNS1123_SUBDOMAIN.match(value):
        return [
            FieldError(
                field,
                f"{value!r}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        ]
    return []


def path_segment(value: str, field: str) -> list[FieldError]:
    """Errors if ``value`` cannot be a URL path segment (the rule for RBAC object names)."""
    if value in (".", "..") or "/" in value or "%" in value:
        return [FieldError(field, f"{value!r}: may not be '.' or '..' and may not contain '/' or '%'")]
    return []


def qualified_name(key: str, field: str) -> list[FieldError]:
    """Errors if ``key`` is not a valid label or annotation key (``[prefix/]name``)."""
    prefix, _, name = key.rpartition("/")
    errors: list[FieldError] = []
    if prefix:
        errors += dns1123_subdomain(prefix, field)
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        errors.append(
            FieldError(
                field,
                f"{key!r}: name part must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character (at most 63 characters)",
            )
        )
    return errors


def label_value(value: str, field: str) -> list[FieldError]:
    """Errors if ``value`` is not a valid label value."""
    if len(value) > 63 or not LABEL_VALUE.match(value):
        return [
            FieldError(
                field,
                f"{value!r}: a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character (at most 63)",
            )
        ]
    return []
