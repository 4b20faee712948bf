"""EventRecorder against the real server: involvedObject, aggregation of repeats, cluster-scoped objects."""

from __future__ import annotations

from kubevisor.client import Client, EventRecorder


async def test_repeats_are_counted_on_one_event(client: Client) -> None:
    cm = await client.resource("v1", "configmaps").create({"metadata": {"name": "subject"}}, "default")
    recorder = EventRecorder(client, "test-controller", host="node-1")
    first = await recorder.warning(cm, "SyncFailed", "could not sync")
    assert first is not None
    again = await recorder.warning(cm, "SyncFailed", "could not sync")
    assert again is not None
    assert again["metadata"]["name"] == first["metadata"]["name"]
    assert again["count"] == 2
    assert again["lastTimestamp"] >= first["firstTimestamp"]
    other = await recorder.normal(cm, "Synced", "all good")
    assert other is not None and other["metadata"]["name"] != first["metadata"]["name"]

    events = await client.resource("v1", "events").list(
        "default", field_selector="involvedObject.name=subject,reason=SyncFailed"
    )
    (event,) = events.items
    assert event["count"] == 2
    assert event["type"] == "Warning"
    assert event["source"] == {"component": "test-controller", "host": "node-1"}
    assert event["involvedObject"]["uid"] == cm["metadata"]["uid"]
    assert event["involvedObject"]["kind"] == "ConfigMap"
    assert event["involvedObject"]["namespace"] == "default"


async def test_events_about_cluster_scoped_objects_go_to_default(client: Client) -> None:
    ns = await client.resource("v1", "namespaces").create({"metadata": {"name": "subject-ns"}})
    event = await EventRecorder(client, "test").normal(ns, "Created", "namespace made")
    assert event is not None
    assert event["metadata"]["namespace"] == "default"
    assert "namespace" not in event["involvedObject"]


async def test_a_failed_write_is_dropped_not_raised(client: Client) -> None:
    ghost = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "no-such-namespace"},
    }
    assert await EventRecorder(client, "test").normal(ghost, "Anything", "goes nowhere") is None
