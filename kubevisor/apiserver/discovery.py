"""Discovery documents: legacy (/api, /apis, one APIResourceList per group-version) and aggregated.

Aggregated discovery (apidiscovery.k8s.io v2 and v2beta1) is chosen from the client's Accept list in its
order: kubectl 1.28/1.29 accept only v2beta1, and answering v2 to them breaks resource resolution. Both
bodies are identical except ``apiVersion``. Documents depend only on the registry, so they are built once.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import orjson

from kubevisor.api.registry import Kind, Registry

SUBRESOURCE_VERBS: dict[str, list[str]] = {
    "status": ["get", "patch", "update"],
    "finalize": ["update"],
    "token": ["create"],
}

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"


def _verbs(kind: Kind) -> list[str]:
    return sorted(kind.verbs)


class Discovery:
    """Discovery bodies for one registry."""

    def __init__(self, registry: Registry, server_version: dict[str, str]) -> None:
        self.registry = registry
        self.server_version = server_version

    def subresource_verbs(self, kind: Kind, sub: str) -> list[str]:
        return SUBRESOURCE_VERBS.get(sub, ["get"])

    def resource_list(self, group: str, version: str) -> bytes | None:
        return self._resource_lists.get((group, version))

    @cached_property
    def _resource_lists(self) -> dict[tuple[str, str], bytes]:
        out: dict[tuple[str, str], bytes] = {}
        for group, versions in self.registry.group_versions().items():
            for version in versions:
                resources: list[dict[str, Any]] = []
                for kind in self.registry.in_group_version(group, version):
                    entry: dict[str, Any] = {
                        "name": kind.plural,
                        "singularName": kind.singular_name,
                        "namespaced": kind.namespaced,
                        "kind": kind.kind,
                        "verbs": _verbs(kind),
                    }
                    if kind.short_names:
                        entry["shortNames"] = list(kind.short_names)
                    if kind.categories:
                        entry["categories"] = list(kind.categories)
                    resources.append(entry)
                    for sub in kind.all_subresources:
                        resources.append(
                            {
                                "name": f"{kind.plural}/{sub}",
                                "singularName": "",
                                "namespaced": kind.namespaced,
                                "kind": "TokenRequest" if sub == "token" else kind.kind,
                                "verbs": self.subresource_verbs(kind, sub),
                            }
                        )
                gv = f"{group}/{version}" if group else version
                out[(group, version)] = orjson.dumps(
                    {
                        "kind": "APIResourceList",
                        "apiVersion": "v1",
                        "groupVersion": gv,
                        "resources": resources,
                    }
                )
        return out

    @cached_property
    def legacy_api(self) -> bytes:
        return orjson.dumps(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
            }
        )

    def _group(self, group: str, versions: list[str]) -> dict[str, Any]:
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    @cached_property
    def legacy_apis(self) -> bytes:
        groups = [self._group(g, vs) for g, vs in self.registry.group_versions().items() if g]
        if any(g == "kubevirt.io" for g in self.registry.group_versions()):
            # virt-api's aggregated group: subresources of VMs and VMIs only (kubevisor.apiserver.vmistreams)
            groups.append(self._group("subresources.kubevirt.io", ["v1", "v1alpha3"]))
        return orjson.dumps({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    def legacy_group(self, group: str) -> bytes | None:
        versions = self.registry.group_versions().get(group)
        if not group or not versions:
            return None
        return orjson.dumps({"kind": "APIGroup", "apiVersion": "v1", **self._group(group, versions)})

    def _aggregated_resource(self, kind: Kind) -> dict[str, Any]:
        rk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
        entry: dict[str, Any] = {
            "resource": kind.plural,
            "responseKind": rk,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "singularResource": kind.singular_name,
            "verbs": _verbs(kind),
        }
        if kind.short_names:
            entry["shortNames"] = list(kind.short_names)
        if kind.categories:
            entry["categories"] = list(kind.categories)
        subs = []
        for sub in kind.all_subresources:
            sub_kind = (
                {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}
                if sub == "token"
                else rk
            )
            subs.append(
                {"subresource": sub, "responseKind": sub_kind, "verbs": self.subresource_verbs(kind, sub)}
            )
        if subs:
            entry["subresources"] = subs
        return entry

    def _aggregated(self, core: bool, version: str) -> bytes:
        items = []
        for group, versions in self.registry.group_versions().items():
            if bool(group) == core:
                continue
            items.append(
                {
                    "metadata": {"name": group, "creationTimestamp": None},
                    "versions": [
                        {
                            "version": v,
                            "freshness": "Current",
                            "resources": [
                                self._aggregated_resource(k) for k in self.registry.in_group_version(group, v)
                            ],
                        }
                        for v in versions
                    ],
                }
            )
        return orjson.dumps(
            {
                "kind": "APIGroupDiscoveryList",
                "apiVersion": f"apidiscovery.k8s.io/{version}",
                "metadata": {},
                "items": items,
            }
        )

    def aggregated(self, core: bool, version: str) -> bytes:
        key = (core, version)
        cache = self.__dict__.setdefault("_agg_cache", {})
        if key not in cache:
            cache[key] = self._aggregated(core, version)
        result: bytes = cache[key]
        return result

    @cached_property
    def version(self) -> bytes:
        return orjson.dumps(self.server_version)


def negotiate_aggregated(accept: str) -> str | None:
    """The apidiscovery version the client prefers ("v2" or "v2beta1"), or None for legacy."""
    for part in accept.split(","):
        params = {}
        for p in part.split(";")[1:]:
            k, _, v = p.strip().partition("=")
            params[k] = v
        if params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList":
            if params.get("v") in ("v2", "v2beta1"):
                return params["v"]
            continue
        media = part.split(";")[0].strip()
        if media in ("application/json", "*/*", "application/*", ""):
            return None
    return None
