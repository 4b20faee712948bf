"""kubectl 1.28-1.33 against the real platform: what users type, on ConfigMaps, Secrets, Namespaces, Widgets.

Every test runs once per kubectl version found next to the ``kubectl`` on PATH, in its own namespace. The
server's state is checked over HTTP (``api``), not only through kubectl's output, so a kubectl that
prints success while the server did something else still fails.

Known limitation (documented): kubectl 1.28 validates ``apply``/``create``/``edit`` with OpenAPI v2 in
protobuf, which kubevisor does not serve, so 1.28 needs ``--validate=false`` there, and ``kubectl explain``
does not work with 1.28. 1.29+ use OpenAPI v3 and work with default validation.
"""

from __future__ import annotations

import base64
import concurrent.futures
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubevisor.api.registry import default_registry
from kubevisor.testing.cluster import PlatformThread
from tests.compat.conftest import Kubectl, patch_content_types
from tests.libcompat import COMPAT_DIR, collection_path, documents, manifest_files

WD_GROUP = "/apis/test.kubevisor.io/v1"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


# --- helpers -------------------------------------------------------------------------------------


def cm_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/configmaps" + (f"/{name}" if name else "")


def secret_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/secrets" + (f"/{name}" if name else "")


def wd_path(ns: str, name: str = "") -> str:
    return f"{WD_GROUP}/namespaces/{ns}/widgets" + (f"/{name}" if name else "")


def configmap(name: str, data: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}, "data": data}


def widget(name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "test.kubevisor.io/v1",
        "kind": "Widget",
        "metadata": {"name": name, **meta},
        "spec": spec,
    }


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(tmp_path: Path, obj: dict[str, Any]) -> str:
    path = tmp_path / f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(obj))
    return str(path)


def get(api: httpx.Client, path: str) -> dict[str, Any]:
    r = api.get(path)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def gone(api: httpx.Client, path: str) -> bool:
    return api.get(path).status_code == 404


def create(api: httpx.Client, collection: str, obj: dict[str, Any]) -> dict[str, Any]:
    r = api.post(collection, json=obj)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def set_status(api: httpx.Client, path: str, status: dict[str, Any]) -> None:
    r = api.patch(f"{path}/status", json={"status": status}, headers={"content-type": MERGE})
    assert r.status_code == 200, r.text


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    """A refused command: exit code 1 and a one-line error, not a crash or a Go stack trace."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip(), "an error message on stderr"
    for crash in ("panic:", "goroutine ", "SIGSEGV", "invalid memory address"):
        assert crash not in result.stderr


# --- apply -----------------------------------------------------------------------------------------


def test_apply_configmap_create_then_update_sends_strategic_merge_patch(
    kubectl: Kubectl, api: httpx.Client, namespace: str, tmp_path: Path
) -> None:
    manifest = configmap("settings", {"a": "1", "b": "1"}, labels={"app": "demo"})
    path = write(tmp_path, manifest)
    r = kubectl.run("apply", "-n", namespace, "-f", path, *kubectl.validate_flags)
    assert r.stdout.strip() == "configmap/settings created"
    live = get(api, cm_path(namespace, "settings"))
    assert live["data"] == {"a": "1", "b": "1"} and live["metadata"]["labels"] == {"app": "demo"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in live["metadata"]["annotations"]

    manifest["data"] = {"b": "2", "c": "3"}  # a removed, b changed, c added
    manifest["metadata"]["labels"] = {"app": "demo", "tier": "web"}
    write(tmp_path, manifest)
    r = kubectl.run("apply", "-n", namespace, "-f", path, "-v=7", *kubectl.validate_flags)
    assert r.stdout.strip() == "configmap/settings configured"
    assert patch_content_types(r.stderr) == [SMP]
    updated = get(api, cm_path(namespace, "settings"))
    assert updated["data"] == {"b": "2", "c": "3"}
    assert updated["metadata"]["labels"] == {"app": "demo", "tier": "web"}
    assert updated["metadata"]["uid"] == live["metadata"]["uid"]

    r = kubectl.run("apply", "-n", namespace, "-f", path, *kubectl.validate_flags)
    assert r.stdout.strip() == "configmap/settings unchanged"
    assert (
        get(api, cm_path(namespace, "settings"))["metadata"]["resourceVersion"]
        == (updated["metadata"]["resourceVersion"])
    )


def test_apply_widget_create_then_update_sends_json_merge_patch(
    kubectl: Kubectl, api: httpx.Client, namespace: str, tmp_path: Path
) -> None:
    manifest = widget("gear", {"size": 3, "color": "red", "parts": ["a", "b"]})
    path = write(tmp_path, manifest)
    r = kubectl.run("apply", "-n", namespace, "-f", path, *kubectl.validate_flags)
    assert r.stdout.strip() == "widget.test.kubevisor.io/gear created"
    live = get(api, wd_path(namespace, "gear"))
    assert live["spec"] == {"size": 3, "color": "red", "parts": ["a", "b"]}
    assert live["metadata"]["generation"] == 1

    manifest["spec"] = {"size": 4, "parts": ["c"]}  # color removed, list replaced
    write(tmp_path, manifest)
    r = kubectl.run("apply", "-n", namespace, "-f", path, "-v=7", *kubectl.validate_flags)
    assert r.stdout.strip() == "widget.test.kubevisor.io/gear configured"
    assert patch_content_types(r.stderr) == [MERGE]
    updated = get(api, wd_path(namespace, "gear"))
    assert updated["spec"] == {"size": 4, "parts": ["c"]}
    assert updated["metadata"]["generation"] == 2


def test_apply_secret_create_then_update(
    kubectl: Kubectl, api: httpx.Client, namespace: str, tmp_path: Path
) -> None:
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "type": "Opaque",
        "data": {"user": b64("admin")},
    }
    path = write(tmp_path, manifest)
    r = kubectl.run("apply", "-n", namespace, "-f", path, *kubectl.validate_flags)
    assert r.stdout.strip() == "secret/creds created"
    assert get(api, secret_path(namespace, "creds"))["data"] == {"user": b64("admin")}

    manifest["data"] = {"user": b64("root"), "password": b64("s3cret")}
    write(tmp_path, manifest)
    r = kubectl.run("apply", "-n", namespace, "-f", path, "-v=7", *kubectl.validate_flags)
    assert r.stdout.strip() == "secret/creds configured"
    assert patch_content_types(r.stderr) == [SMP]
    live = get(api, secret_path(namespace, "creds"))
    assert live["data"] == {"user": b64("root"), "password": b64("s3cret")} and live["type"] == "Opaque"
    shown = kubectl.json("get", "secret", "creds", "-n", namespace)
    assert base64.b64decode(shown["data"]["password"]) == b"s3cret"


def test_apply_namespace_then_delete_makes_it_terminating(
    kubectl: Kubectl, api: httpx.Client, tmp_path: Path
) -> None:
    name = f"applied-ns-{kubectl.minor}"
    manifest: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    manifest["metadata"]["labels"] = {"team": "a"}
    path = write(tmp_path, manifest)
    r = kubectl.run("apply", "-f", path, *kubectl.validate_flags)
    assert r.stdout.strip() == f"namespace/{name} created"
    manifest["metadata"]["labels"] = {"team": "b", "env": "test"}
    write(tmp_path, manifest)
    r = kubectl.run("apply", "-f", path, "-v=7", *kubectl.validate_flags)
    assert r.stdout.strip() == f"namespace/{name} configured"
    assert patch_content_types(r.stderr) == [SMP]
    live = get(api, f"/api/v1/namespaces/{name}")
    assert live["metadata"]["labels"] == {"team": "b", "env": "test"}
    assert live["status"]["phase"] == "Active"

    # Content with a finalizer keeps the namespace Terminating whether or not a namespace controller runs.
    create(api, cm_path(name), configmap("held", {}, finalizers=["compat.test/hold"]))
    r = kubectl.run("delete", "namespace", name, "--wait=false")
    assert r.stdout.strip() == f'namespace "{name}" deleted'
    r = kubectl.run("get", "namespace", name, "-o", "jsonpath={.status.phase}")
    assert r.stdout == "Terminating"
    assert get(api, f"/api/v1/namespaces/{name}")["metadata"]["deletionTimestamp"]
    r = kubectl.run("get", "namespace", name)
    assert "Terminating" in r.stdout.splitlines()[1]
    refused = kubectl.run("create", "configmap", "late", "-n", name, check=False)
    assert_clean_failure(refused)
    assert "being terminated" in refused.stderr


def test_kubectl_1_28_needs_validate_false(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    """Documented: 1.28 validates with OpenAPI v2 protobuf, not served; the failure is a clean error."""
    if kubectl.minor != 28:
        pytest.skip("only kubectl 1.28 validates with OpenAPI v2")
    path = write(tmp_path, configmap("strict", {"a": "1"}))
    refused = kubectl.run("apply", "-n", namespace, "-f", path, check=False)
    assert_clean_failure(refused)
    assert "NotFound" in refused.stderr or "openapi" in refused.stderr.lower()
    r = kubectl.run("apply", "-n", namespace, "-f", path, "--validate=false")
    assert r.stdout.strip() == "configmap/strict created"


def test_apply_unknown_field_fails_with_strict_decoding_error(
    kubectl: Kubectl, api: httpx.Client, namespace: str, tmp_path: Path
) -> None:
    if kubectl.minor < 29:
        pytest.skip("kubectl 1.28 sends fieldValidation=Strict only with OpenAPI v2 validation")
    bad_cm = configmap("bad", {"a": "1"})
    bad_cm["bogusField"] = 1
    r = kubectl.run("apply", "-n", namespace, "-f", write(tmp_path, bad_cm), check=False)
    assert_clean_failure(r)
    assert 'strict decoding error: unknown field "bogusField"' in r.stderr
    assert gone(api, cm_path(namespace, "bad"))

    bad_wd = widget("bad", {"size": 1, "shape": "round"})
    r = kubectl.run("apply", "-n", namespace, "-f", write(tmp_path, bad_wd), check=False)
    assert_clean_failure(r)
    assert 'unknown field "spec.shape"' in r.stderr
    assert gone(api, wd_path(namespace, "bad"))


# --- get -------------------------------------------------------------------------------------------


def test_get_yaml_json_and_wide(kubectl: Kubectl, api: httpx.Client, namespace: str) -> None:
    made = create(api, wd_path(namespace), widget("cog", {"size": 5, "color": "green"}))
    set_status(
        api,
        wd_path(namespace, "cog"),
        {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    )
    create(api, cm_path(namespace), configmap("two-keys", {"x": "1", "y": "2"}))

    as_yaml = yaml.safe_load(kubectl.run("get", "widget", "cog", "-n", namespace, "-o", "yaml").stdout)
    assert as_yaml["kind"] == "Widget" and as_yaml["apiVersion"] == "test.kubevisor.io/v1"
    assert as_yaml["metadata"]["uid"] == made["metadata"]["uid"]
    assert as_yaml["spec"] == {"size": 5, "color": "green"} and as_yaml["status"]["phase"] == "Running"
    as_json = kubectl.json("get", "wd", "cog", "-n", namespace)
    assert as_json == as_yaml
    listed = kubectl.json("get", "configmaps", "-n", namespace)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == ["two-keys"]

    plain = kubectl.run("get", "widgets", "-n", namespace).stdout.splitlines()
    assert plain[0].split() == ["NAME", "SIZE", "PHASE", "READY", "AGE"]
    assert plain[1].split()[:4] == ["cog", "5", "Running", "True"]
    wide = kubectl.run("get", "widgets", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "SIZE", "PHASE", "READY", "AGE", "COLOR"]  # priority-1 column
    assert wide[1].split()[:4] == ["cog", "5", "Running", "True"] and wide[1].split()[-1] == "green"
    cms = kubectl.run("get", "cm", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert cms[0].split() == ["NAME", "DATA", "AGE"] and cms[1].split()[:2] == ["two-keys", "2"]
    names = kubectl.run("get", "cm,wd", "-n", namespace, "-o", "name").stdout.split()
    assert names == ["configmap/two-keys", "widget.test.kubevisor.io/cog"]


@pytest.mark.parametrize("resource", ["widgets", "configmaps"])
def test_get_watch_sees_a_change(kubectl: Kubectl, api: httpx.Client, namespace: str, resource: str) -> None:
    change: dict[str, Any]
    if resource == "widgets":
        create(api, wd_path(namespace), widget("watched", {"size": 1}))
        path, change = wd_path(namespace, "watched"), {"spec": {"size": 42}}
    else:
        create(api, cm_path(namespace), configmap("watched", {"a": "1"}))
        path, change = cm_path(namespace, "watched"), {"data": {"a": "1", "b": "2", "c": "3"}}
    watcher = kubectl.background("get", resource, "-n", namespace, "-w")
    try:
        watcher.wait_for_line(lambda line: line.startswith("NAME"))
        first = watcher.wait_for_line(lambda line: line.startswith("watched "))
        assert first.split()[1] == "1"
        r = api.patch(path, json=change, headers={"content-type": MERGE})
        assert r.status_code == 200, r.text
        changed = watcher.wait_for_line(lambda line: line.startswith("watched "))
        assert changed.split()[1] == ("42" if resource == "widgets" else "3")
        assert watcher.running()
    finally:
        watcher.kill()


# --- describe --------------------------------------------------------------------------------------


def test_describe_lists_events_of_the_object(kubectl: Kubectl, api: httpx.Client, namespace: str) -> None:
    cm = create(api, cm_path(namespace), configmap("described", {"a": "1"}))
    wd = create(api, wd_path(namespace), widget("described", {"size": 2}))
    now = "2026-01-01T00:00:00Z"

    def event(name: str, obj: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": obj["metadata"]["name"],
                "namespace": namespace,
                "uid": obj["metadata"]["uid"],
            },
            "reason": reason,
            "message": message,
            "type": "Normal",
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "compat-test"},
        }

    events = f"/api/v1/namespaces/{namespace}/events"
    create(api, events, event("cm-ev", cm, "ConfigTouched", "configmap event for describe"))
    create(api, events, event("wd-ev", wd, "WidgetPolished", "widget event for describe"))

    out = kubectl.run("describe", "configmap", "described", "-n", namespace).stdout
    assert "Name:" in out and "described" in out and f"Namespace:    {namespace}" in out
    assert "ConfigTouched" in out and "configmap event for describe" in out
    assert "WidgetPolished" not in out  # same name, other kind: the involvedObject selector filters it

    out = kubectl.run("describe", "widget", "described", "-n", namespace).stdout
    assert "Size:  2" in out
    assert "WidgetPolished" in out and "widget event for describe" in out
    assert "ConfigTouched" not in out

    create(api, secret_path(namespace), {"metadata": {"name": "described"}, "stringData": {"key": "12345"}})
    out = kubectl.run("describe", "secret", "described", "-n", namespace).stdout
    assert "Type:  Opaque" in out and "key:  5 bytes" in out and "12345" not in out
    out = kubectl.run("describe", "namespace", namespace).stdout
    assert f"Name:         {namespace}" in out and "Status:       Active" in out


# --- delete ----------------------------------------------------------------------------------------


def test_delete_without_finalizers_waits_until_gone(
    kubectl: Kubectl, api: httpx.Client, namespace: str, tmp_path: Path
) -> None:
    create(api, cm_path(namespace), configmap("doomed", {}))
    create(api, secret_path(namespace), {"metadata": {"name": "doomed"}, "stringData": {"k": "v"}})
    manifest = widget("doomed", {"size": 1})
    create(api, wd_path(namespace), manifest)

    r = kubectl.run("delete", "configmap", "doomed", "-n", namespace, "--wait")
    assert r.stdout.strip() == 'configmap "doomed" deleted'
    assert gone(api, cm_path(namespace, "doomed"))
    r = kubectl.run("delete", "secret", "doomed", "-n", namespace)
    assert r.stdout.strip() == 'secret "doomed" deleted'
    assert gone(api, secret_path(namespace, "doomed"))
    r = kubectl.run("delete", "-n", namespace, "-f", write(tmp_path, manifest), "--wait")
    assert r.stdout.strip() == 'widget.test.kubevisor.io "doomed" deleted'
    assert gone(api, wd_path(namespace, "doomed"))

    missing = kubectl.run("delete", "configmap", "doomed", "-n", namespace, check=False)
    assert_clean_failure(missing)
    assert 'configmaps "doomed" not found' in missing.stderr
    r = kubectl.run("delete", "configmap", "doomed", "-n", namespace, "--ignore-not-found")
    assert r.stdout == ""


@pytest.mark.parametrize("resource", ["configmap", "widget"])
def test_delete_with_finalizer_returns_once_the_finalizer_is_removed(
    kubectl: Kubectl, api: httpx.Client, namespace: str, resource: str
) -> None:
    if resource == "configmap":
        path = cm_path(namespace, "held")
        create(api, cm_path(namespace), configmap("held", {"a": "1"}, finalizers=["compat.test/hold"]))
    else:
        path = wd_path(namespace, "held")
        create(api, wd_path(namespace), widget("held", {"size": 1}, finalizers=["compat.test/hold"]))

    deleting = kubectl.background(
        "delete", resource, "held", "-n", namespace, "--wait", "--timeout=60s", "-v=6"
    )
    try:
        deleting.wait_until_watching()  # kubectl saw the object still there and waits for DELETED
        assert get(api, path)["metadata"]["deletionTimestamp"]
        assert deleting.running(), "kubectl delete returned while a finalizer was pending"
        unfinalize = '{"metadata":{"finalizers":null}}'
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            patching = pool.submit(
                kubectl.run, "patch", resource, "held", "-n", namespace, "--type", "merge", "-p", unfinalize
            )
            assert "patched" in patching.result(timeout=60).stdout
        code, out, err = deleting.finish()
    finally:
        deleting.kill()
    assert code == 0, err
    assert out.strip().endswith('"held" deleted')
    assert gone(api, path)


# --- patch -----------------------------------------------------------------------------------------


def test_patch_json_merge_and_strategic(kubectl: Kubectl, api: httpx.Client, namespace: str) -> None:
    create(api, cm_path(namespace), configmap("patched", {"a": "1"}))
    create(api, wd_path(namespace), widget("patched", {"size": 1, "parts": ["x"]}))
    create(api, secret_path(namespace), {"metadata": {"name": "patched"}, "data": {"k": b64("v")}})

    cm_args = ("patch", "configmap", "patched", "-n", namespace)
    kubectl.run(*cm_args, "--type", "json", "-p", '[{"op":"add","path":"/data/j","value":"json"}]')
    kubectl.run(*cm_args, "--type", "merge", "-p", '{"data":{"a":null,"m":"merge"}}')
    r = kubectl.run(*cm_args, "-p", '{"data":{"s":"strategic"}}')  # strategic is kubectl's default
    assert r.stdout.strip() == "configmap/patched patched"
    assert get(api, cm_path(namespace, "patched"))["data"] == {"j": "json", "m": "merge", "s": "strategic"}
    r = kubectl.run(*cm_args, "--type", "strategic", "-p", '{"data":{"s":"strategic"}}')
    assert r.stdout.strip() == "configmap/patched patched (no change)"

    kubectl.run(
        "patch",
        "secret",
        "patched",
        "-n",
        namespace,
        "--type",
        "strategic",
        "-p",
        f'{{"data":{{"k2":"{b64("w")}"}}}}',
    )
    assert get(api, secret_path(namespace, "patched"))["data"] == {"k": b64("v"), "k2": b64("w")}
    kubectl.run(
        "patch", "namespace", namespace, "--type", "merge", "-p", '{"metadata":{"labels":{"patched":"yes"}}}'
    )
    assert get(api, f"/api/v1/namespaces/{namespace}")["metadata"]["labels"]["patched"] == "yes"

    wd_args = ("patch", "widget", "patched", "-n", namespace)
    kubectl.run(*wd_args, "--type", "json", "-p", '[{"op":"replace","path":"/spec/size","value":7}]')
    kubectl.run(*wd_args, "--type", "merge", "-p", '{"spec":{"color":"blue","parts":["y","z"]}}')
    live = get(api, wd_path(namespace, "patched"))
    assert live["spec"] == {"size": 7, "color": "blue", "parts": ["y", "z"]}

    refused = kubectl.run(*wd_args, "--type", "strategic", "-p", '{"spec":{"size":8}}', check=False)
    assert_clean_failure(refused)
    # kubectl words it so only when the server answered 415 UnsupportedMediaType
    assert f"{SMP} is not supported by test.kubevisor.io/v1, Kind=Widget" in refused.stderr
    assert "the body of the request was in an unknown format" in refused.stderr
    assert "application/merge-patch+json" in refused.stderr
    assert get(api, wd_path(namespace, "patched"))["spec"]["size"] == 7

    bad = kubectl.run(
        *wd_args, "--type", "json", "-p", '[{"op":"remove","path":"/spec/missing"}]', check=False
    )
    assert_clean_failure(bad)
    assert "The request is invalid" in bad.stderr  # kubectl's words for a 422


# --- wait ------------------------------------------------------------------------------------------


def test_wait_for_condition_set_through_status_subresource(
    kubectl: Kubectl, api: httpx.Client, namespace: str
) -> None:
    create(api, wd_path(namespace), widget("ready", {"size": 1}))
    set_status(api, wd_path(namespace, "ready"), {"conditions": [{"type": "Ready", "status": "False"}]})
    waiter = kubectl.background(
        "wait", "--for=condition=Ready", "widget/ready", "-n", namespace, "--timeout=60s", "-v=6"
    )
    try:
        waiter.wait_until_watching()  # so the condition arrives through the watch
        status_patch = '{"status":{"phase":"Done","conditions":[{"type":"Ready","status":"True"}]}}'
        assert waiter.running(), "kubectl wait returned while the condition was False"
        r = kubectl.run(
            "patch",
            "widget",
            "ready",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            status_patch,
        )
        assert r.stdout.strip() == "widget.test.kubevisor.io/ready patched"
        code, out, err = waiter.finish()
    finally:
        waiter.kill()
    assert code == 0, err
    assert out.strip() == "widget.test.kubevisor.io/ready condition met"
    live = get(api, wd_path(namespace, "ready"))
    assert live["status"]["phase"] == "Done" and live["metadata"]["generation"] == 1

    r = kubectl.run("wait", "--for=condition=Ready", "wd/ready", "-n", namespace, "--timeout=10s")
    assert r.stdout.strip() == "widget.test.kubevisor.io/ready condition met"


def test_wait_for_delete(kubectl: Kubectl, api: httpx.Client, namespace: str) -> None:
    create(api, wd_path(namespace), widget("short-lived", {"size": 1}))
    create(api, cm_path(namespace), configmap("short-lived", {}))
    waiters = [
        kubectl.background(
            "wait", "--for=delete", f"{kind}/short-lived", "-n", namespace, "--timeout=60s", "-v=6"
        )
        for kind in ("widget", "configmap")
    ]
    try:
        for waiter in waiters:
            waiter.wait_until_watching()  # so the deletion arrives through the watch
        assert api.delete(wd_path(namespace, "short-lived")).status_code == 200
        assert api.delete(cm_path(namespace, "short-lived")).status_code == 200
        results = [waiter.finish() for waiter in waiters]
    finally:
        for waiter in waiters:
            waiter.kill()
    for code, _, err in results:
        assert code == 0, err
    r = kubectl.run("wait", "--for=delete", "configmap/short-lived", "-n", namespace, "--timeout=5s")
    assert r.returncode == 0


# --- discovery and OpenAPI --------------------------------------------------------------------------


def test_api_resources(kubectl: Kubectl) -> None:
    rows: dict[str, list[str]] = {}
    for line in kubectl.run("api-resources", "--no-headers").stdout.splitlines():
        cols = line.split()
        rows[f"{cols[0]}.{cols[-3]}"] = cols
    assert rows["widgets.test.kubevisor.io/v1"] == ["widgets", "wd", "test.kubevisor.io/v1", "true", "Widget"]
    assert rows["configmaps.v1"] == ["configmaps", "cm", "v1", "true", "ConfigMap"]
    assert rows["namespaces.v1"] == ["namespaces", "ns", "v1", "false", "Namespace"]
    assert rows["secrets.v1"] == ["secrets", "v1", "true", "Secret"]
    assert rows["serviceaccounts.v1"] == ["serviceaccounts", "sa", "v1", "true", "ServiceAccount"]
    named = kubectl.run("api-resources", "--api-group=test.kubevisor.io", "-o", "name").stdout.split()
    assert named == ["widgets.test.kubevisor.io"]
    versions = kubectl.run("api-versions").stdout.split()
    assert "test.kubevisor.io/v1" in versions and "v1" in versions


def test_explain(kubectl: Kubectl) -> None:
    labels = kubectl.run("explain", "configmap.metadata.labels", check=False)
    spec = kubectl.run("explain", "widgets.spec", check=False)
    if kubectl.minor < 29:
        # Documented: kubectl 1.28 explains from OpenAPI v2 (protobuf), which kubevisor does not serve.
        for result in (labels, spec):
            assert_clean_failure(result)
            assert "Error from server (NotFound)" in result.stderr
        return
    assert labels.returncode == 0, labels.stderr
    assert "KIND:       ConfigMap" in labels.stdout
    assert "FIELD: labels <map[string]string>" in labels.stdout
    assert spec.returncode == 0, spec.stderr
    assert "GROUP:      test.kubevisor.io" in spec.stdout and "KIND:       Widget" in spec.stdout
    assert "FIELD: spec <WidgetSpec>" in spec.stdout
    for field in ("size\t<integer>", "color\t<string>", "parts\t<[]string>"):
        assert field in spec.stdout
    assert "Size of the widget." in spec.stdout
    recursive = kubectl.run("explain", "widget", "--recursive").stdout
    assert "conditions\t<[]Condition>" in recursive


# --- auth ------------------------------------------------------------------------------------------


def test_auth_can_i_admin_and_service_account_token(
    kubectl: Kubectl, platform: PlatformThread, tmp_path: Path
) -> None:
    assert kubectl.run("auth", "can-i", "list", "configmaps").stdout.strip() == "yes"
    assert kubectl.run("auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "yes"

    team_a, team_b = f"team-a-{kubectl.minor}", f"team-b-{kubectl.minor}"
    # Imperative creates: kubectl >= 1.32 sends these bodies in protobuf.
    kubectl.run("create", "namespace", team_a)
    kubectl.run("create", "namespace", team_b)
    kubectl.run("create", "serviceaccount", "robot", "-n", team_a)
    kubectl.run("create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps", "-n", team_a)
    kubectl.run(
        "create",
        "rolebinding",
        "robot-reads",
        "--role=cm-reader",
        f"--serviceaccount={team_a}:robot",
        "-n",
        team_a,
    )
    token = kubectl.run("create", "token", "robot", "-n", team_a, "--duration=1h").stdout.strip()
    assert token.count(".") == 2

    # The token alone, without the admin's client certificate.
    config = yaml.safe_load(platform.kubeconfig.read_text())
    config["users"] = [{"name": "token-user", "user": {}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = "token-user"
    token_config = tmp_path / "token-kubeconfig"
    token_config.write_text(yaml.safe_dump(config))
    robot = kubectl.with_kubeconfig(token_config)

    r = robot.run("--token", token, "auth", "can-i", "list", "configmaps", "-n", team_a)
    assert (r.returncode, r.stdout.strip()) == (0, "yes")
    r = robot.run("--token", token, "auth", "can-i", "list", "configmaps", "-n", team_b, check=False)
    assert (r.returncode, r.stdout.strip()) == (1, "no")
    r = robot.run("--token", token, "auth", "can-i", "delete", "configmaps", "-n", team_a, check=False)
    assert (r.returncode, r.stdout.strip()) == (1, "no")
    listed = robot.run("--token", token, "get", "configmaps", "-n", team_a)
    assert listed.returncode == 0
    refused = robot.run("--token", token, "get", "configmaps", "-n", team_b, check=False)
    assert_clean_failure(refused)
    assert "Error from server (Forbidden)" in refused.stderr
    assert f"system:serviceaccount:{team_a}:robot" in refused.stderr
    whoami = robot.run("--token", token, "auth", "whoami", "-o", "json")
    assert (
        yaml.safe_load(whoami.stdout)["status"]["userInfo"]["username"]
        == f"system:serviceaccount:{team_a}:robot"
    )


# --- label, annotate, edit ---------------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["configmap", "widget", "secret"])
def test_label_and_annotate(kubectl: Kubectl, api: httpx.Client, namespace: str, resource: str) -> None:
    path = {"configmap": cm_path, "widget": wd_path, "secret": secret_path}[resource](namespace, "tagged")
    body: dict[str, Any] = {"metadata": {"name": "tagged"}}
    if resource == "widget":
        body = widget("tagged", {"size": 1})
    create(api, path.rsplit("/", 1)[0], body)
    target = (resource, "tagged", "-n", namespace)

    r = kubectl.run("label", *target, "env=prod", "tier=web")
    assert r.stdout.strip().endswith("/tagged labeled")
    assert get(api, path)["metadata"]["labels"] == {"env": "prod", "tier": "web"}
    refused = kubectl.run("label", *target, "env=dev", check=False)
    assert_clean_failure(refused)
    assert "already has a value (prod)" in refused.stderr
    kubectl.run("label", *target, "env=dev", "--overwrite")
    kubectl.run("label", *target, "tier-")
    assert get(api, path)["metadata"]["labels"] == {"env": "dev"}

    r = kubectl.run("annotate", *target, "owner=alice", "note=hello world")
    assert r.stdout.strip().endswith("/tagged annotated")
    kubectl.run("annotate", *target, "owner=bob", "--overwrite")
    kubectl.run("annotate", *target, "note-")
    assert get(api, path)["metadata"]["annotations"] == {"owner": "bob"}
    selected = kubectl.run("get", resource, "-n", namespace, "-l", "env=dev", "-o", "name").stdout.split()
    assert [s.rsplit("/", 1)[1] for s in selected] == ["tagged"]
    assert kubectl.run("get", resource, "-n", namespace, "-l", "env=prod", "-o", "name").stdout == ""


@pytest.mark.parametrize("resource", ["configmap", "widget"])
def test_edit_with_an_editor_script(
    kubectl: Kubectl, api: httpx.Client, namespace: str, resource: str, tmp_path: Path
) -> None:
    editor = tmp_path / "editor.sh"
    if resource == "configmap":
        path = cm_path(namespace, "edited")
        create(api, cm_path(namespace), configmap("edited", {"a": "1", "b": "1"}))
        editor.write_text('#!/bin/sh\nsed -i \'s/a: "1"/a: "2"/\' "$1"\n')
    else:
        path = wd_path(namespace, "edited")
        create(api, wd_path(namespace), widget("edited", {"size": 3, "color": "red"}))
        editor.write_text("#!/bin/sh\nsed -i 's/size: 3/size: 4/' \"$1\"\n")
    editor.chmod(0o755)
    env = {"KUBE_EDITOR": str(editor)}
    r = kubectl.run("edit", resource, "edited", "-n", namespace, *kubectl.validate_flags, env=env)
    assert r.stdout.strip().endswith("/edited edited")
    live = get(api, path)
    if resource == "configmap":
        assert live["data"] == {"a": "2", "b": "1"}
    else:
        assert live["spec"] == {"size": 4, "color": "red"} and live["metadata"]["generation"] == 2
    r = kubectl.run("edit", resource, "edited", "-n", namespace, *kubectl.validate_flags, env=env)
    assert "Edit cancelled, no changes made." in r.stdout + r.stderr  # the second run changes nothing


# --- KubeVirt kinds ----------------------------------------------------------------------------------


def test_apply_kubevirt_compat_set_and_get_vm_vmi_columns(
    kubectl: Kubectl, api: httpx.Client, namespace: str
) -> None:
    """``kubectl apply -f`` of the whole compatibility directory, then KubeVirt's columns in ``get``."""
    if kubectl.minor not in (29, 33):
        pytest.skip("the compatibility set is applied with the oldest and newest kubectl that validate")
    files = manifest_files()
    if not files:
        pytest.skip(f"no compatibility manifests in {COMPAT_DIR}")
    docs = [doc for path in files for doc in documents(path)]

    r = kubectl.run("apply", "-n", namespace, "-f", str(COMPAT_DIR))
    created = sorted(line for line in r.stdout.splitlines() if line.endswith(" created"))
    assert len(created) == len(docs) == 15, r.stdout
    assert "virtualmachine.kubevirt.io/vm-cirros created" in created
    assert "datavolume.cdi.kubevirt.io/my-data-volume created" in created
    specs: dict[str, Any] = {}
    for doc in docs:
        kind = default_registry().by_kind(doc["apiVersion"], doc["kind"])
        assert kind is not None
        path = collection_path(doc["apiVersion"], kind.plural, namespace) + f"/{doc['metadata']['name']}"
        live = get(api, path)
        assert "kubectl.kubernetes.io/last-applied-configuration" in live["metadata"]["annotations"]
        specs[path] = live["spec"]
    # Applying again changes nothing. VMIs report "configured": a JSON merge patch replaces a list whole, and
    # their volumes list holds a default (imagePullPolicy) the manifest's lacks; defaulting puts it back.
    again = kubectl.run("apply", "-n", namespace, "-f", str(COMPAT_DIR)).stdout.splitlines()
    assert len(again) == 15 and all(line.endswith((" unchanged", " configured")) for line in again), again
    assert all(
        line.endswith(" unchanged") for line in again if "virtualmachineinstance.kubevirt.io" not in line
    )
    assert {path: get(api, path)["spec"] for path in specs} == specs

    vms = f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines"
    vmis = f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances"
    set_status(
        api,
        f"{vms}/vm-cirros",
        {"printableStatus": "Stopped", "conditions": [{"type": "Ready", "status": "False"}]},
    )
    set_status(
        api,
        f"{vmis}/vmi-migratable",
        {
            "phase": "Running",
            "nodeName": "node-a",
            "interfaces": [{"name": "default", "ipAddress": "10.244.0.7"}],
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "LiveMigratable", "status": "True"}],
        },
    )
    out = kubectl.run("get", "vm,vmi", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "AGE", "STATUS", "READY"]
    rows = {line.split()[0]: line.split() for line in out if line and not line.startswith("NAME")}
    assert rows["virtualmachine.kubevirt.io/vm-cirros"][2:] == ["Stopped", "False"]
    vmi_header = next(line for line in out[1:] if line.startswith("NAME"))
    assert vmi_header.split() == ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
    assert rows["virtualmachineinstance.kubevirt.io/vmi-migratable"][2:] == [
        "Running",
        "10.244.0.7",
        "node-a",
        "True",
    ]
    wide = kubectl.run("get", "vmi", "vmi-migratable", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-2:] == ["LIVE-MIGRATABLE", "PAUSED"] and wide[1].split()[-1] == "True"


def test_explain_kubevirt_vm(kubectl: Kubectl) -> None:
    if kubectl.minor < 29:
        pytest.skip("kubectl 1.28 explains from OpenAPI v2 (protobuf), which kubevisor does not serve")
    r = kubectl.run("explain", "vm.spec.runStrategy")
    assert "GROUP:      kubevirt.io" in r.stdout and "KIND:       VirtualMachine" in r.stdout
    assert "FIELD: runStrategy <string>" in r.stdout
    assert "When the VM runs: Always, Halted, Manual, RerunOnFailure" in r.stdout
    disks = kubectl.run("explain", "vmi.spec.domain.devices.disks").stdout
    assert "FIELD: disks <[]Disk>" in disks and "bootOrder\t<integer>" in disks
