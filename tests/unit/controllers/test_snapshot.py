"""What a snapshot includes, and Go durations (spec.failureDeadline)."""

from __future__ import annotations

import pytest

from kubevisor.controllers.snapshot import claim_volumes, parse_duration


def test_only_claim_backed_volumes_are_included() -> None:
    vm = {
        "spec": {
            "template": {
                "spec": {
                    "volumes": [
                        {"name": "root", "containerDisk": {"image": "x"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "data-claim"}},
                        {"name": "dv", "dataVolume": {"name": "dv-1"}},
                        {"name": "scratch", "emptyDisk": {"capacity": "1Gi"}},
                        {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config"}},
                    ]
                }
            }
        }
    }
    assert claim_volumes(vm) == ({"data": "data-claim", "dv": "dv-1"}, ["root", "scratch", "cloudinit"])


def test_durations() -> None:
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("0s") == 0
    with pytest.raises(ValueError, match="duration"):
        parse_duration("5 minutes")
