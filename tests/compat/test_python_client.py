"""The official ``kubernetes`` Python client against the real platform: CRUD, errors, watches, dynamic client.

The client is synchronous, so the platform runs in its own thread (``platform_thread``). One platform
serves the whole module; every test works in a namespace of its own. Each client gets a fresh
``Configuration`` loaded from the platform's admin kubeconfig, never the process-wide default.
"""

from __future__ import annotations

import gc
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.dynamic
import kubernetes.utils
import kubernetes.watch
import pytest
from kubernetes.client.exceptions import ApiException

from kubevisor.testing.cluster import PlatformThread, platform_thread
from kubevisor.testing.kinds import registry_with_test_kinds

pytestmark = pytest.mark.timeout(120)

WATCH_SECONDS = 20
"""``timeoutSeconds`` of every watch here: the server ends the stream by then, so no test can hang on it."""

_names = itertools.count()

# The client's type hints make every model field Optional; these tests read models as plain data.
client: Any = kubernetes.client
config: Any = kubernetes.config
dynamic: Any = kubernetes.dynamic
utils: Any = kubernetes.utils
watch: Any = kubernetes.watch


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformThread]:
    data = tmp_path_factory.mktemp("python-client") / "data"
    with platform_thread(data, registry=registry_with_test_kinds(), controllers=False) as p:
        yield p


def new_api_client(plat: PlatformThread) -> Any:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(plat.kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture(scope="module")
def api_client(plat: PlatformThread) -> Iterator[Any]:
    with new_api_client(plat) as api_client:
        yield api_client
        # An ApiException caught by pytest.raises sits in a reference cycle (traceback -> test frame ->
        # ExceptionInfo) with the client's response, which holds its pooled connection; collect those
        # cycles so that closing the client really closes every connection before the platform stops
        # (a TLS connection still open makes the server's shutdown wait out its grace period).
        gc.collect()


@pytest.fixture
def core(api_client: Any) -> Any:
    return client.CoreV1Api(api_client)


@pytest.fixture
def ns(core: Any) -> str:
    """A fresh namespace for one test."""
    name = f"pyc-{next(_names)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def status_of(exc: ApiException) -> dict[str, Any]:
    """The ``Status`` body of an API error, checked to be one."""
    assert exc.body is not None
    body: dict[str, Any] = json.loads(exc.body)
    assert body["kind"] == "Status" and body["code"] == exc.status, body
    return body


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> Any:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=dict(data))


# --- CRUD --------------------------------------------------------------------------------------------


def test_configmap_crud(core: Any, ns: str) -> None:
    created = core.create_namespaced_config_map(ns, cm("one", {"app": "web", "tier": "front"}, a="1"))
    assert isinstance(created, client.V1ConfigMap)
    assert created.metadata.namespace == ns and created.metadata.uid
    assert created.metadata.creation_timestamp is not None  # parsed as a datetime by the client
    assert created.data == {"a": "1"}
    core.create_namespaced_config_map(ns, cm("two", {"app": "db"}))
    core.create_namespaced_config_map(ns, cm("three", {"app": "web"}))

    got = core.read_namespaced_config_map("one", ns)
    assert got.metadata.uid == created.metadata.uid
    assert got.metadata.resource_version == created.metadata.resource_version

    def names(**kwargs: Any) -> list[str]:
        lst = core.list_namespaced_config_map(ns, **kwargs)
        assert isinstance(lst, client.V1ConfigMapList) and int(lst.metadata.resource_version) > 0
        return sorted(i.metadata.name for i in lst.items)

    assert names() == ["one", "three", "two"]
    assert names(label_selector="app=web") == ["one", "three"]
    assert names(label_selector="app in (web,db),!tier") == ["three", "two"]
    assert names(label_selector="app!=web") == ["two"]
    assert names(label_selector="app=web,tier=front") == ["one"]
    assert names(field_selector="metadata.name=two") == ["two"]
    everywhere = core.list_config_map_for_all_namespaces(label_selector="app=web")
    assert sorted((i.metadata.namespace, i.metadata.name) for i in everywhere.items) == [
        (ns, "one"),
        (ns, "three"),
    ]
    first = core.list_namespaced_config_map(ns, limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    rest = core.list_namespaced_config_map(ns, limit=2, _continue=first.metadata._continue)
    assert [i.metadata.name for i in first.items + rest.items] == ["one", "three", "two"]

    got.data["b"] = "2"
    replaced = core.replace_namespaced_config_map("one", ns, got)
    assert replaced.data == {"a": "1", "b": "2"}
    assert int(replaced.metadata.resource_version) > int(got.metadata.resource_version)

    # Replacing with the resourceVersion read before the last write is a conflict.
    got.data["c"] = "3"
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("one", ns, got)
    assert conflict.value.status == 409 and status_of(conflict.value)["reason"] == "Conflict"

    # A dict body is sent as a strategic merge patch; a list as a JSON patch; merge patch on request.
    patched = core.patch_namespaced_config_map("one", ns, {"data": {"c": "3", "a": None}})
    assert patched.data == {"b": "2", "c": "3"}
    patched = core.patch_namespaced_config_map(
        "one", ns, [{"op": "add", "path": "/metadata/labels/extra", "value": "yes"}]
    )
    assert patched.metadata.labels == {"app": "web", "tier": "front", "extra": "yes"}
    patched = core.patch_namespaced_config_map(
        "one", ns, {"data": {"b": None}}, _content_type="application/merge-patch+json"
    )
    assert patched.data == {"c": "3"}
    with pytest.raises(ApiException) as failed_test:
        core.patch_namespaced_config_map("one", ns, [{"op": "test", "path": "/data/c", "value": "nope"}])
    assert failed_test.value.status == 422 and status_of(failed_test.value)["reason"] == "Invalid"

    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map(ns, cm("one"))
    assert exists.value.status == 409 and status_of(exists.value)["reason"] == "AlreadyExists"

    # The client declares a delete's answer as "object" (the object or a Status): a plain dict.
    deleted = core.delete_namespaced_config_map("one", ns)
    assert deleted["kind"] == "Status" and deleted["status"] == "Success"
    assert deleted["details"]["name"] == "one" and deleted["details"]["kind"] == "configmaps"
    calls: list[Callable[[], Any]] = [
        lambda: core.read_namespaced_config_map("one", ns),
        lambda: core.delete_namespaced_config_map("one", ns),
        lambda: core.patch_namespaced_config_map("one", ns, {"data": {"x": "y"}}),
        lambda: core.replace_namespaced_config_map("one", ns, cm("one")),
    ]
    for call in calls:
        with pytest.raises(ApiException) as missing:
            call()
        assert missing.value.status == 404
        body = status_of(missing.value)
        assert body["reason"] == "NotFound" and body["details"]["name"] == "one"

    core.delete_collection_namespaced_config_map(ns, label_selector="app=db")
    assert names() == ["three"]


def test_configmap_errors_are_statuses(core: Any, ns: str) -> None:
    with pytest.raises(ApiException) as invalid:
        core.create_namespaced_config_map(ns, cm("Not_A_Name"))
    body = status_of(invalid.value)
    assert invalid.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"

    with pytest.raises(ApiException) as no_ns:
        core.create_namespaced_config_map(f"{ns}-missing", cm("x"))
    assert no_ns.value.status == 404 and status_of(no_ns.value)["details"]["kind"] == "namespaces"

    with pytest.raises(ApiException) as bad_selector:
        core.list_namespaced_config_map(ns, label_selector="a in (")
    assert bad_selector.value.status == 400 and status_of(bad_selector.value)["reason"] == "BadRequest"


def test_namespace_crud(core: Any) -> None:
    name = f"pyc-ns-{next(_names)}"
    created = core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"team": "compat"}))
    )
    assert created.status.phase == "Active" and created.spec.finalizers == ["kubernetes"]
    assert core.read_namespace(name).metadata.uid == created.metadata.uid
    listed = core.list_namespace(label_selector="team=compat")
    assert [n.metadata.name for n in listed.items] == [name]
    assert name not in [n.metadata.name for n in core.list_namespace(label_selector="team!=compat").items]

    with pytest.raises(ApiException) as exists:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    assert exists.value.status == 409 and status_of(exists.value)["reason"] == "AlreadyExists"

    patched = core.patch_namespace(name, {"metadata": {"labels": {"env": "test"}}})
    assert patched.metadata.labels == {"team": "compat", "env": "test"}
    patched.metadata.labels = {"team": "compat"}
    replaced = core.replace_namespace(name, patched)
    assert replaced.metadata.labels == {"team": "compat"}

    stale = core.read_namespace(name)
    stale.metadata.resource_version = created.metadata.resource_version
    with pytest.raises(ApiException) as conflict:
        core.replace_namespace(name, stale)
    assert conflict.value.status == 409 and status_of(conflict.value)["reason"] == "Conflict"

    with pytest.raises(ApiException) as protected:
        core.delete_namespace("default")
    assert protected.value.status == 403 and status_of(protected.value)["reason"] == "Forbidden"

    # The "kubernetes" finalizer keeps a deleted namespace Terminating until it is finalized (the
    # namespace controller's job; this platform runs none), after which it is gone.
    core.delete_namespace(name)
    terminating = core.read_namespace(name)
    assert terminating.status.phase == "Terminating"
    assert terminating.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as forbidden:
        core.create_namespaced_config_map(name, cm("late"))
    assert forbidden.value.status == 403
    terminating.spec.finalizers = []
    core.replace_namespace_finalize(name, terminating)
    with pytest.raises(ApiException) as gone:
        core.read_namespace(name)
    assert gone.value.status == 404 and status_of(gone.value)["reason"] == "NotFound"


def test_create_from_yaml(api_client: Any, core: Any, ns: str, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: from-yaml\n"
        "  labels: {origin: yaml}\n"
        "data:\n"
        "  key: value\n"
        "---\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: from-yaml-2\n"
        "data:\n"
        '  number: "42"\n'
    )
    created = utils.create_from_yaml(api_client, str(manifest), namespace=ns)
    assert [[o.metadata.name for o in group] for group in created] == [["from-yaml"], ["from-yaml-2"]]
    got = core.read_namespaced_config_map("from-yaml", ns)
    assert got.data == {"key": "value"} and got.metadata.labels == {"origin": "yaml"}
    assert core.read_namespaced_config_map("from-yaml-2", ns).data == {"number": "42"}

    with pytest.raises(utils.FailToCreateError) as again:
        utils.create_from_yaml(api_client, str(manifest), namespace=ns)
    assert [e.status for e in again.value.api_exceptions] == [409, 409]


# --- watches -----------------------------------------------------------------------------------------


def test_watch_sees_added_modified_deleted(plat: PlatformThread, core: Any, ns: str) -> None:
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    done = threading.Event()

    def writer() -> None:
        with new_api_client(plat) as other:
            v1 = client.CoreV1Api(other)
            v1.create_namespaced_config_map(ns, cm("watched", a="1"))
            v1.patch_namespaced_config_map("watched", ns, {"data": {"a": "2"}})
            v1.delete_namespaced_config_map("watched", ns)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[tuple[str, str, dict[str, str] | None]] = []
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=WATCH_SECONDS
    ):
        obj = event["object"]
        assert isinstance(obj, client.V1ConfigMap)
        seen.append((event["type"], obj.metadata.name, obj.data))
        if event["type"] == "DELETED":
            w.stop()
    thread.join(timeout=30)
    assert done.is_set()
    assert seen == [
        ("ADDED", "watched", {"a": "1"}),
        ("MODIFIED", "watched", {"a": "2"}),
        ("DELETED", "watched", {"a": "2"}),
    ]


def test_watch_with_label_selector(core: Any, ns: str) -> None:
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, cm("ignored", {"app": "db"}))
    core.create_namespaced_config_map(ns, cm("picked", {"app": "web"}))
    core.patch_namespaced_config_map("picked", ns, {"metadata": {"labels": {"app": "db"}}})
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map,
        ns,
        resource_version=rv,
        label_selector="app=web",
        timeout_seconds=WATCH_SECONDS,
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            w.stop()
    # The object stops matching the selector: to this watch it is deleted.
    assert seen == [("ADDED", "picked"), ("DELETED", "picked")]


def test_list_then_watch_misses_and_repeats_nothing(plat: PlatformThread, core: Any, ns: str) -> None:
    writes: list[tuple[str, str, int]] = []  # (event type, name, resourceVersion) of every write
    started = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with new_api_client(plat) as other:
                v1 = client.CoreV1Api(other)
                for i in range(60):
                    name = f"w{i % 12}"
                    if i < 12:
                        obj = v1.create_namespaced_config_map(ns, cm(name, n=str(i)))
                        writes.append(("ADDED", name, int(obj.metadata.resource_version)))
                    elif i % 5 == 0:
                        assert v1.delete_namespaced_config_map(name, ns)["status"] == "Success"
                        # The DELETED event carries the deletion's revision; read it from the watch.
                        writes.append(("DELETED", name, 0))
                        obj = v1.create_namespaced_config_map(ns, cm(name, n=str(i)))
                        writes.append(("ADDED", name, int(obj.metadata.resource_version)))
                    else:
                        obj = v1.patch_namespaced_config_map(name, ns, {"data": {"n": str(i)}})
                        writes.append(("MODIFIED", name, int(obj.metadata.resource_version)))
                    if i == 15:
                        started.set()
                obj = v1.create_namespaced_config_map(ns, cm("last"))
                writes.append(("ADDED", "last", int(obj.metadata.resource_version)))
        except BaseException as exc:
            errors.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(timeout=30)
    listed = core.list_namespaced_config_map(ns)
    list_rv = int(listed.metadata.resource_version)
    state = {o.metadata.name: o.data for o in listed.items}

    events: list[tuple[str, str, int]] = []
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map,
        ns,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=WATCH_SECONDS,
    ):
        obj = event["object"]
        events.append((event["type"], obj.metadata.name, int(obj.metadata.resource_version)))
        if event["type"] == "DELETED":
            state.pop(obj.metadata.name, None)
        else:
            state[obj.metadata.name] = obj.data
        if obj.metadata.name == "last":
            w.stop()
    thread.join(timeout=30)
    assert not errors, errors
    assert events and events[-1][1] == "last", "the watch ended before the last write"

    revisions = [rv for _, _, rv in events]
    assert revisions == sorted(set(revisions)), "events out of order or repeated"
    assert revisions[0] > list_rv
    # The events are exactly the writes after the list, in order: a suffix of the writes, with the same
    # resourceVersions, and every write before it was in the list.
    k = len(writes) - len(events)
    assert k >= 0 and [(t, n) for t, n, _ in writes[k:]] == [(t, n) for t, n, _ in events], events
    for (kind, _, rv), (_, _, event_rv) in zip(writes[k:], events, strict=True):
        assert kind == "DELETED" or rv == event_rv
    assert all(rv <= list_rv for kind, _, rv in writes[:k] if kind != "DELETED")
    if k and writes[k - 1][0] == "DELETED":  # a delete just before the events happened before the list
        assert writes[k - 1][1] not in {o.metadata.name for o in listed.items}
    final = core.list_namespaced_config_map(ns)
    assert state == {o.metadata.name: o.data for o in final.items}


def test_watch_from_compacted_resource_version_is_410(plat: PlatformThread, core: Any, ns: str) -> None:
    old_rv = core.create_namespaced_config_map(ns, cm("old", a="1")).metadata.resource_version
    for i in range(3):
        core.patch_namespaced_config_map("old", ns, {"data": {"a": str(i)}})
    store = plat.platform.store
    assert store is not None
    plat.run(store.compact(plat.run(store.current_revision())))

    # With timeoutSeconds the client does not retry: the ERROR event is raised at once.
    with pytest.raises(ApiException) as expired:
        for _ in watch.Watch().stream(
            core.list_namespaced_config_map, ns, resource_version=old_rv, timeout_seconds=WATCH_SECONDS
        ):
            pytest.fail("a watch from a compacted resourceVersion delivered an event")
    assert expired.value.status == 410
    assert str(expired.value.reason).startswith("Expired: ")

    # Without it the client retries once from the same resourceVersion, then raises the same way.
    started = time.monotonic()
    with pytest.raises(ApiException) as again:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=old_rv):
            pytest.fail("a watch from a compacted resourceVersion delivered an event")
    assert again.value.status == 410 and time.monotonic() - started < 10

    # The usual recovery works: list again and watch from the list's resourceVersion.
    fresh = core.list_namespaced_config_map(ns)
    core.patch_namespaced_config_map("old", ns, {"data": {"a": "after"}})
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map,
        ns,
        resource_version=fresh.metadata.resource_version,
        timeout_seconds=WATCH_SECONDS,
    ):
        assert (event["type"], event["object"].data) == ("MODIFIED", {"a": "after"})
        w.stop()


# --- dynamic client ------------------------------------------------------------------------------------


def test_dynamic_client_on_widgets(api_client: Any, ns: str, tmp_path: Path) -> None:
    dyn = dynamic.DynamicClient(api_client, cache_file=str(tmp_path / "discovery.json"))
    widgets = dyn.resources.get(api_version="test.kubevisor.io/v1", kind="Widget")
    assert widgets.namespaced and widgets.name == "widgets"
    assert "status" in widgets.subresources

    body = {
        "apiVersion": "test.kubevisor.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "labels": {"color": "red"}},
        "spec": {"size": 1, "color": "red"},
    }
    created = widgets.create(body=body, namespace=ns)
    assert created.metadata.name == "w1" and created.spec.size == 1
    assert created.metadata.generation == 1
    widgets.create(body={**body, "metadata": {"name": "w2", "labels": {"color": "blue"}}}, namespace=ns)

    got = widgets.get(name="w1", namespace=ns)
    assert got.metadata.uid == created.metadata.uid
    red = widgets.get(namespace=ns, label_selector="color=red")
    assert red.kind == "WidgetList" and [i.metadata.name for i in red.items] == ["w1"]

    patched = widgets.patch(
        name="w1",
        namespace=ns,
        body={"spec": {"size": 2}},
        content_type="application/merge-patch+json",
    )
    assert patched.spec.size == 2 and patched.spec.color == "red" and patched.metadata.generation == 2
    # A custom resource has no strategic merge patch, as in Kubernetes.
    with pytest.raises(ApiException) as unsupported:
        widgets.patch(name="w1", namespace=ns, body={"spec": {"size": 3}})
    assert unsupported.value.status == 415

    status = widgets.status.patch(
        name="w1",
        namespace=ns,
        body={"status": {"phase": "Ready"}},
        content_type="application/merge-patch+json",
    )
    assert status.status.phase == "Ready" and status.metadata.generation == 2

    current = widgets.get(name="w1", namespace=ns).to_dict()
    current["spec"]["parts"] = ["a", "b"]
    replaced = widgets.replace(body=current, namespace=ns)
    assert replaced.spec.parts == ["a", "b"] and replaced.status.phase == "Ready"
    with pytest.raises(ApiException) as conflict:
        widgets.replace(body=current, namespace=ns)
    assert conflict.value.status == 409

    rv = widgets.get(namespace=ns).metadata.resourceVersion
    widgets.delete(name="w2", namespace=ns)
    seen = []
    w = watch.Watch()
    for event in widgets.watch(namespace=ns, resource_version=rv, timeout=WATCH_SECONDS, watcher=w):
        seen.append((event["type"], event["object"].metadata.name))
        w.stop()
    assert seen == [("DELETED", "w2")]

    with pytest.raises(ApiException) as missing:
        widgets.get(name="w2", namespace=ns)
    assert missing.value.status == 404

    # The dynamic client also finds built-in kinds through the same discovery.
    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    configmaps.create(body={"metadata": {"name": "dyn"}, "data": {"k": "v"}}, namespace=ns)
    assert configmaps.get(name="dyn", namespace=ns).data.k == "v"
