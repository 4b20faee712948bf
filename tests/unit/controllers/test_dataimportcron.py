"""DataImportCron's pure parts: schedule ticks, import names, digest-pinned urls; DataSource resolution;
what the API server's validation refuses in a DataImportCron or DataSource."""

from __future__ import annotations

import datetime

import pytest

from kubevisor.api import cdi
from kubevisor.api.registry import Obj
from kubevisor.controllers import dataimportcron, datasource

UTC = datetime.UTC
DIGEST = "sha256:" + "0123456789abcdef" * 4


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("* * * * *", at("2026-01-01T00:00:30"), at("2026-01-01T00:01:00")),
        ("* * * * *", at("2026-01-01T00:01:00"), at("2026-01-01T00:02:00")),  # strictly after
        ("0 */12 * * *", at("2026-01-01T05:00:00"), at("2026-01-01T12:00:00")),
        ("30 2 * * 1", at("2026-11-21T05:00:00"), at("2026-11-23T02:30:00")),  # next Monday
        ("0 0 1 1 *", at("2026-06-01T00:00:00"), at("2027-01-01T00:00:00")),
    ],
)
def test_next_tick(schedule: str, after: datetime.datetime, expected: datetime.datetime) -> None:
    assert dataimportcron.next_tick(schedule, after) == expected


def test_next_tick_treats_naive_times_as_utc() -> None:
    naive = datetime.datetime(2026, 1, 1, 0, 0, 30)
    assert dataimportcron.next_tick("* * * * *", naive) == at("2026-01-01T00:01:00")


def test_times_round_trip_as_rfc3339() -> None:
    moment = at("2026-11-21T05:30:01")
    text = dataimportcron.rfc3339(moment)
    assert text == "2026-11-21T05:30:01Z"
    assert dataimportcron.parse_time(text) == moment
    assert dataimportcron.parse_time("2026-11-21T06:30:01+01:00") == moment
    assert dataimportcron.parse_time("") is None
    assert dataimportcron.parse_time("yesterday") is None


def test_import_name_is_the_data_source_and_twelve_digest_digits() -> None:
    assert dataimportcron.import_name("fedora", DIGEST) == "fedora-0123456789ab"
    with pytest.raises(ValueError, match="not sha256"):
        dataimportcron.import_name("fedora", "md5:abc")
    with pytest.raises(ValueError, match="not sha256"):
        dataimportcron.import_name("fedora", "sha256:abc")


def test_import_name_of_a_long_data_source_stays_a_label() -> None:
    long = "a-very-long-golden-image-data-source-name-that-goes-on-and-on-x"
    name = dataimportcron.import_name(long, DIGEST)
    assert len(name) <= 63
    assert name.endswith("-0123456789ab")
    assert name != dataimportcron.import_name(long + "y", DIGEST)  # the hash keeps them apart


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("docker://127.0.0.1:5000/kubevisor/guest:latest", "docker://127.0.0.1:5000/kubevisor/guest@"),
        ("docker://127.0.0.1:5000/kubevisor/guest", "docker://127.0.0.1:5000/kubevisor/guest@"),
        ("docker://quay.io/containerdisks/fedora:41", "docker://quay.io/containerdisks/fedora@"),
        ("docker://quay.io/x/y@sha256:" + "f" * 64, "docker://quay.io/x/y@"),
        ("quay.io/x/y:1", "docker://quay.io/x/y@"),
    ],
)
def test_digested_url_pins_the_polled_digest(url: str, expected: str) -> None:
    assert dataimportcron.digested_url(url, DIGEST) == expected + DIGEST


# --- DataSource resolution ---------------------------------------------------------------------------


def ds(name: str, source: Obj, namespace: str = "default") -> Obj:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"source": source}}


def lookup_in(*objs: Obj):  # type: ignore[no-untyped-def]
    found = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}
    return lambda namespace, name: found.get((namespace, name))


def test_a_pvc_source_resolves_with_its_namespace_filled_in() -> None:
    golden = ds("golden", {"pvc": {"name": "img"}})
    found = datasource.resolve(golden, lookup_in(golden))
    assert found.reason is None
    assert found.source == {"pvc": {"namespace": "default", "name": "img"}}
    assert found.mirrored == {"pvc": {"name": "img"}}  # status.source mirrors spec.source as written


def test_no_source() -> None:
    found = datasource.resolve(ds("empty", {}), lookup_in())
    assert (found.reason, found.source) == (datasource.NO_SOURCE, {})


def test_a_pointer_resolves_one_level() -> None:
    golden = ds("golden", {"pvc": {"namespace": "default", "name": "img"}})
    pointer = ds("latest", {"dataSource": {"namespace": "default", "name": "golden"}})
    found = datasource.resolve(pointer, lookup_in(golden, pointer))
    assert found.reason is None
    assert found.source == {"pvc": {"namespace": "default", "name": "img"}}
    assert found.mirrored == golden["spec"]["source"]


@pytest.mark.parametrize(
    ("pointer_to", "reason"),
    [
        ({"namespace": "default", "name": "latest"}, datasource.SELF_REFERENCE),
        ({"namespace": "other", "name": "golden"}, datasource.CROSS_NAMESPACE),
        ({"namespace": "default", "name": "missing"}, datasource.NOT_FOUND),
        ({"namespace": "default", "name": "middle"}, datasource.MAX_DEPTH),
    ],
)
def test_pointers_that_do_not_resolve(pointer_to: Obj, reason: str) -> None:
    golden = ds("golden", {"pvc": {"name": "img"}})
    middle = ds("middle", {"dataSource": {"namespace": "default", "name": "golden"}})
    pointer = ds("latest", {"dataSource": pointer_to})
    found = datasource.resolve(pointer, lookup_in(golden, middle, pointer))
    assert found.reason == reason
    assert found.source == {} and found.mirrored == {}


def test_a_data_volume_source_ref() -> None:
    golden = ds("golden", {"pvc": {"name": "img"}}, namespace="vms")
    dv = {
        "metadata": {"name": "root", "namespace": "vms"},
        "spec": {"sourceRef": {"kind": "DataSource", "name": "golden"}},
    }
    found = datasource.resolve_source_ref(dv, lookup_in(golden))
    assert found is not None and found.source == {"pvc": {"namespace": "vms", "name": "img"}}
    missing = datasource.resolve_source_ref(dv, lookup_in())
    assert missing is not None and missing.reason == datasource.CLONE_WITHOUT_SOURCE
    assert "DataSource vms/golden" in missing.message
    assert datasource.resolve_source_ref({"metadata": {}, "spec": {}}, lookup_in()) is None


def test_a_source_ref_reaches_only_the_data_sources_own_namespace() -> None:
    """A DataSource of another namespace leads to its own namespace's claim (the API server checked the
    creator's clone permission there); a DataSource naming a claim elsewhere is no way around that."""
    elsewhere = ds("golden", {"pvc": {"name": "img"}}, namespace="images")
    dv: Obj = {
        "metadata": {"name": "root", "namespace": "vms"},
        "spec": {"sourceRef": {"kind": "DataSource", "namespace": "images", "name": "golden"}},
    }
    found = datasource.resolve_source_ref(dv, lookup_in(elsewhere))
    assert found is not None and found.reason is None
    assert found.source == {"pvc": {"namespace": "images", "name": "img"}}
    sneaky = ds("golden", {"pvc": {"namespace": "secret", "name": "db"}}, namespace="vms")
    dv["spec"]["sourceRef"] = {"kind": "DataSource", "name": "golden"}
    found = datasource.resolve_source_ref(dv, lookup_in(sneaky))
    assert found is not None and found.reason == datasource.CROSS_NAMESPACE_CLONE
    assert "secret/db" in found.message


def test_conditions_move_their_times_only_on_change() -> None:
    first = datasource.set_condition([], "Ready", "False", "NotFound", "x")
    again = datasource.set_condition(first, "Ready", "False", "NotFound", "x")
    assert again == first
    ready = datasource.set_condition(first, "Ready", "True", "Ready", "y")
    assert ready[0]["status"] == "True" and ready[0]["reason"] == "Ready"


# --- validation ------------------------------------------------------------------------------------


def cron(**spec: object) -> Obj:
    base: Obj = {
        "schedule": "0 */12 * * *",
        "managedDataSource": "fedora",
        "template": {
            "spec": {
                "source": {"registry": {"url": "docker://quay.io/containerdisks/fedora:41"}},
                "storage": {"resources": {"requests": {"storage": "5Gi"}}},
            }
        },
    }
    base.update(spec)
    return {"metadata": {"name": "c", "namespace": "default"}, "spec": base}


def cron_errors(obj: Obj) -> list[tuple[str, str]]:
    kind = next(k for k in cdi.KINDS if k.kind == "DataImportCron")
    assert kind.validator is not None
    return [(e.field, e.message) for e in kind.validator(obj, None)]


def test_a_valid_cron() -> None:
    assert cron_errors(cron()) == []
    assert cron_errors(cron(schedule="")) == []  # never polls


def test_invalid_crons_name_the_field() -> None:
    fields = [f for f, _ in cron_errors(cron(schedule="every day"))]
    assert fields == ["spec.schedule"]
    assert [f for f, _ in cron_errors(cron(garbageCollect="Sometimes"))] == ["spec.garbageCollect"]
    assert [f for f, _ in cron_errors(cron(importsToKeep=-1))] == ["spec.importsToKeep"]
    assert cron_errors(cron(retentionPolicy="All")) == []  # CDI keeps for anything but None
    assert [f for f, _ in cron_errors(cron(managedDataSource=""))] == ["spec.managedDataSource"]
    http = cron(template={"spec": {"source": {"http": {"url": "http://x/y.img"}}, "storage": {}}})
    [(field, message)] = cron_errors(http)
    assert field == "spec.template.spec.source.registry" and "registry" in message


def test_a_data_source_cannot_point_at_itself() -> None:
    kind = next(k for k in cdi.KINDS if k.kind == "DataSource")
    assert kind.validator is not None
    itself = ds("loop", {"dataSource": {"namespace": "default", "name": "loop"}})
    assert [e.field for e in kind.validator(itself, None)] == ["spec.source.dataSource"]
    assert kind.validator(ds("ok", {"dataSource": {"namespace": "default", "name": "other"}}), None) == []
