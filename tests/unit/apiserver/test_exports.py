"""The apiserver's checks of an export before a download (kubevisor.apiserver.exports)."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.apiserver import errors
from kubevisor.apiserver.exports import ExportTarget, _check_ready

TARGET = ExportTarget("ns", "e", "data", "raw")


def export(**status: Any) -> dict[str, Any]:
    links = {"external": {"volumes": [{"name": "data", "formats": []}]}}
    return {
        "status": {"phase": "Ready", "links": links, "ttlExpirationTime": "2999-01-01T00:00:00Z", **status}
    }


def code_of(obj: dict[str, Any], target: ExportTarget = TARGET) -> int:
    try:
        _check_ready(obj, target)
    except errors.ApiError as e:
        return e.code
    return 200


def test_a_ready_export_of_that_volume_is_served() -> None:
    assert code_of(export()) == 200


def test_an_expired_export_is_gone_even_before_its_deletion() -> None:
    assert code_of(export(ttlExpirationTime="2020-01-01T00:00:00Z")) == 410


def test_a_pending_export_answers_retry_later_with_the_reason() -> None:
    reason = {"type": "Ready", "status": "False", "reason": "inUse", "message": "claim data is in use by vm1"}
    with pytest.raises(errors.ApiError) as info:
        _check_ready(export(phase="Pending", conditions=[reason]), TARGET)
    assert info.value.code == 503
    assert "in use by vm1" in str(info.value)


def test_a_volume_not_in_the_links_is_not_found() -> None:
    assert code_of(export(), ExportTarget("ns", "e", "other", "raw")) == 404
