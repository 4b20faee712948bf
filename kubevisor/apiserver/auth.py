"""Authentication (client certificates, bearer tokens) and RBAC authorization.

Who: a verified client certificate gives user = CN and groups = O (the admin credential is in
``system:masters``, which bypasses authorization as in Kubernetes); a bearer token is a ServiceAccount
token the server issued through ``serviceaccounts/<name>/token`` and is valid only while that
ServiceAccount (same uid) exists. Nothing is anonymous except /livez, /readyz and /version.

What: RBAC rules only grant. The rules are read from the store into an in-memory snapshot that a watch on
the rbac.authorization.k8s.io keys marks stale, so a check costs no I/O on the hot path and a new
binding takes effect on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from kubevisor.store import Store, StoreError, prefix_end

log = logging.getLogger(__name__)

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
RBAC_PREFIX = "/registry/rbac.authorization.k8s.io/"


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated caller."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_master(self) -> bool:
        return MASTERS in self.groups


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a request does, as RBAC sees it."""

    verb: str
    namespace: str = ""
    group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = True


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def service_account_groups(namespace: str) -> tuple[str, ...]:
    return ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED)


def _matches(values: Iterable[str] | None, wanted: str) -> bool:
    vals = list(values or ())
    return "*" in vals or wanted in vals


def _resource_matches(rule_resources: Sequence[str] | None, resource: str, sub: str) -> bool:
    combined = f"{resource}/{sub}" if sub else resource
    for r in rule_resources or ():
        if r == "*" or r == combined:
            return True
        if sub and r == f"*/{sub}":
            return True
    return False


def _path_matches(urls: Sequence[str] | None, path: str) -> bool:
    for url in urls or ():
        if url == "*" or url == path:
            return True
        if url.endswith("*") and path.startswith(url[:-1]):
            return True
    return False


def rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    if not _matches(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.resource_request:
        return _path_matches(rule.get("nonResourceURLs"), attrs.path)
    if not _matches(rule.get("apiGroups"), attrs.group):
        return False
    if not _resource_matches(rule.get("resources"), attrs.resource, attrs.subresource):
        return False
    names = rule.get("resourceNames")
    return not names or attrs.name in names


def _subject_matches(subject: dict[str, Any], user: User, binding_namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user.name)
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_namespace
        return user.name == service_account_user(ns, str(subject.get("name")))
    return False


class RBAC:
    """Role-based access control over an in-memory snapshot of the RBAC objects."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._stale = True
        self._lock = asyncio.Lock()
        self._roles: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._cluster_roles: dict[str, list[dict[str, Any]]] = {}
        self._bindings: list[tuple[str, dict[str, Any]]] = []
        self._cluster_bindings: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._reload()
        self._task = asyncio.create_task(self._watch(), name="rbac-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            try:
                rev = await self.store.current_revision()
                self._stale = True
                async for _ in self.store.watch(RBAC_PREFIX, prefix_end(RBAC_PREFIX), rev + 1):
                    self._stale = True
            except StoreError as exc:
                log.info("rbac watch restarting: %s", exc)
                self._stale = True
            await asyncio.sleep(0.1)

    async def _reload(self) -> None:
        roles: dict[tuple[str, str], list[dict[str, Any]]] = {}
        cluster_roles: dict[str, list[dict[str, Any]]] = {}
        bindings: list[tuple[str, dict[str, Any]]] = []
        cluster_bindings: list[dict[str, Any]] = []
        self._stale = False
        res = await self.store.range(RBAC_PREFIX, prefix_end(RBAC_PREFIX))
        for kv in res.kvs:
            obj = orjson.loads(kv.value)
            kind = obj.get("kind")
            meta = obj.get("metadata") or {}
            if kind == "Role":
                roles[(meta.get("namespace", ""), meta["name"])] = obj.get("rules") or []
            elif kind == "ClusterRole":
                cluster_roles[meta["name"]] = obj.get("rules") or []
            elif kind == "RoleBinding":
                bindings.append((meta.get("namespace", ""), obj))
            elif kind == "ClusterRoleBinding":
                cluster_bindings.append(obj)
        self._roles, self._cluster_roles = roles, cluster_roles
        self._bindings, self._cluster_bindings = bindings, cluster_bindings

    def _role_rules(self, ref: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
        if ref.get("kind") == "ClusterRole":
            return self._cluster_roles.get(str(ref.get("name")), [])
        return self._roles.get((namespace, str(ref.get("name"))), [])

    async def authorize(self, user: User, attrs: Attributes) -> tuple[bool, str]:
        if user.is_master:
            return True, ""
        if self._stale:
            async with self._lock:
                if self._stale:
                    await self._reload()
        for crb in self._cluster_bindings:
            if any(_subject_matches(s, user, "") for s in crb.get("subjects") or ()):
                for rule in self._role_rules(crb.get("roleRef") or {}, ""):
                    if rule_allows(rule, attrs):
                        name = crb["metadata"]["name"]
                        return True, f'RBAC: allowed by ClusterRoleBinding "{name}"'
        if attrs.namespace and attrs.resource_request:
            for ns, rb in self._bindings:
                if ns != attrs.namespace:
                    continue
                if any(_subject_matches(s, user, ns) for s in rb.get("subjects") or ()):
                    for rule in self._role_rules(rb.get("roleRef") or {}, ns):
                        if rule_allows(rule, attrs):
                            name = rb["metadata"]["name"]
                            return True, f'RBAC: allowed by RoleBinding "{name}/{ns}"'
        return False, ""


def forbidden_message(user: User, attrs: Attributes) -> str:
    if not attrs.resource_request:
        return f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"'
    res = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    group = f'in API group "{attrs.group}"'
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    target = (
        f'{res}{"." + attrs.group if attrs.group else ""} "{attrs.name}"'
        if attrs.name
        else (f"{res}{'.' + attrs.group if attrs.group else ''}")
    )
    return f'{target} is forbidden: User "{user.name}" cannot {attrs.verb} resource "{res}" {group} {scope}'


def bootstrap_policy() -> list[dict[str, Any]]:
    """Default ClusterRoles and ClusterRoleBindings (Kubernetes' user-facing roles, trimmed)."""

    def role(name: str, rules: list[dict[str, Any]], labels: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}
        if labels:
            meta["labels"].update(labels)
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta,
            "rules": rules,
        }

    def binding(name: str, role_name: str, group: str) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        }

    read = ["get", "list", "watch"]
    write = ["create", "delete", "deletecollection", "patch", "update"]
    return [
        role(
            "cluster-admin",
            [
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ],
        ),
        role("admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": read + write}]),
        role("edit", [{"apiGroups": ["*"], "resources": ["*"], "verbs": read + write}]),
        role("view", [{"apiGroups": ["*"], "resources": ["*"], "verbs": read}]),
        role(
            "system:discovery",
            [
                {
                    "nonResourceURLs": [
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/openapi",
                        "/openapi/*",
                        "/version",
                        "/version/",
                        "/healthz",
                        "/livez",
                        "/readyz",
                    ],
                    "verbs": ["get"],
                }
            ],
        ),
        role(
            "system:basic-user",
            [
                {
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    "verbs": ["create"],
                },
                {
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["selfsubjectreviews"],
                    "verbs": ["create"],
                },
            ],
        ),
        binding("cluster-admin", "cluster-admin", MASTERS),
        binding("system:discovery", "system:discovery", AUTHENTICATED),
        binding("system:basic-user", "system:basic-user", AUTHENTICATED),
    ]
