"""Talking to the API server: one :class:`Client` per process, one :class:`ResourceClient` per kind.

Why this module exists: controllers, the node agent and the CLI all reach the cluster through it (the
import contracts forbid them the store and the apiserver), so it must be fast, faithful and small.

- Objects stay plain ``dict``s, exactly as the server sent them: nothing is dropped or defaulted on the
  way, and no model is built on hot paths (an informer holding thousands of objects). Where a typed view
  helps, :meth:`ResourceClient.get_model` parses one with the kind's pydantic model.
- One ``httpx.AsyncClient`` per :class:`Client`: HTTP/1.1 with keep-alive and a connection pool sized for
  the process's concurrency. Every watch holds one connection for its whole life (HTTP/1.1 cannot
  multiplex), so size ``max_connections`` for informers plus concurrent requests.
- Ordinary requests time out (``timeout``); watch reads never do, because an idle watch is healthy. The
  server ends a watch after ``timeoutSeconds``, which is how an informer notices a dead connection.
- Every failure is raised as a :mod:`~kubevisor.client.errors` class chosen from the server's ``Status``.
- The transport is the single I/O seam: tests pass an ``httpx.MockTransport``; everything above it is
  pure request building and response decoding.
"""

from __future__ import annotations

import builtins
import os
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar, overload
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel

from kubevisor.api.registry import Kind, Obj, Registry
from kubevisor.client import errors, kubeconfig
from kubevisor.client.sending import send_completely
from kubevisor.client.watching import Watch

M = TypeVar("M", bound=BaseModel)

PatchType = Literal["merge", "json", "strategic", "apply"]
PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",
}
PropagationPolicy = Literal["Orphan", "Background", "Foreground"]
FieldValidation = Literal["Strict", "Warn", "Ignore"]


@dataclass
class ObjectList:
    """One list response: the items and the list's metadata (resourceVersion, continue)."""

    items: builtins.list[Obj]
    metadata: dict[str, Any] = field(default_factory=dict)
    api_version: str = ""
    kind: str = ""

    @property
    def resource_version(self) -> str:
        """The store revision the list was read at; watch from here to see every later change."""
        return str(self.metadata.get("resourceVersion") or "")

    @property
    def continue_(self) -> str | None:
        """Token for the next page, or None on the last page."""
        return self.metadata.get("continue") or None

    @property
    def remaining_item_count(self) -> int | None:
        """Items after this page, when the server says."""
        count = self.metadata.get("remainingItemCount")
        return count if isinstance(count, int) else None

    def __iter__(self) -> Iterator[Obj]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def to_dict(obj: Obj | BaseModel) -> Obj:
    """A request body from a dict (used as is) or a kubevisor model (camelCase, unset fields left out)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(by_alias=True, exclude_none=True, mode="json")
    return obj


def _params(**values: Any) -> dict[str, str | int]:
    """Query parameters with unset (None/False/empty) values left out; booleans as true/false."""
    out: dict[str, str | int] = {}
    for key, value in values.items():
        if value is None or value is False or value == "":
            continue
        out[key] = "true" if value is True else value
    return out


class Client:
    """An API server connection: an async context manager that owns the HTTP connection pool.

    ``async with Client.from_kubeconfig(path) as client: cms = client.resource("v1", "configmaps")``
    """

    def __init__(
        self,
        config: kubeconfig.Config,
        *,
        registry: Registry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        user_agent: str = "kubevisor-client/0.1",
    ) -> None:
        self.config = config
        self.namespace = config.namespace
        """Default namespace of namespaced requests that name none (the kubeconfig context's)."""
        self._registry = registry
        headers = {"Accept": "application/json", "User-Agent": user_agent}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        if transport is None:
            verify: Any = config.ssl_context() if config.server.startswith("https:") else True
            transport = httpx.AsyncHTTPTransport(
                verify=verify,
                http1=True,
                http2=False,
                retries=1,  # connection establishment only: safe for every method
                limits=httpx.Limits(
                    max_connections=max_connections,
                    max_keepalive_connections=max_connections,
                    # Below the usual server keep-alive timeout (uvicorn: 5 s), so that an idle pooled
                    # connection is dropped by us rather than closed under a request by the server.
                    keepalive_expiry=4.0,
                ),
            )
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._watch_timeout = httpx.Timeout(timeout, connect=connect_timeout, read=None)
        self._extensions: dict[str, Any] = (
            {"sni_hostname": config.tls_server_name} if config.tls_server_name else {}
        )
        self._http = httpx.AsyncClient(
            base_url=config.server, headers=headers, transport=transport, timeout=self._timeout
        )

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, context: str | None = None, **options: Any
    ) -> Client:
        """A client for ``context`` (default: current-context) of the kubeconfig at ``path``."""
        return cls(kubeconfig.load(path, context), **options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection (open watches must have been closed first)."""
        await self._http.aclose()

    @property
    def registry(self) -> Registry:
        """The kinds this client knows by apiVersion/plural and apiVersion/kind."""
        if self._registry is None:
            from kubevisor.api.registry import default_registry

            self._registry = default_registry()
        return self._registry

    @overload
    def resource(self, kind: Kind, /) -> ResourceClient: ...

    @overload
    def resource(
        self, api_version: str, plural: str, /, *, namespaced: bool | None = None
    ) -> ResourceClient: ...

    def resource(
        self, kind: Kind | str, plural: str | None = None, /, *, namespaced: bool | None = None
    ) -> ResourceClient:
        """Requests for one kind: by registry entry, or by apiVersion and plural (``"v1", "configmaps"``).

        A plural the registry does not know needs ``namespaced`` (default True).
        """
        if isinstance(kind, Kind):
            return ResourceClient(
                self, kind.group, kind.version, kind.plural, namespaced=kind.namespaced, kind=kind
            )
        if plural is None:
            raise TypeError("resource(api_version, plural): plural is required with an apiVersion")
        group, _, version = kind.rpartition("/")
        known = self.registry.get(group, version, plural)
        if known is not None:
            return ResourceClient(self, group, version, plural, namespaced=known.namespaced, kind=known)
        return ResourceClient(
            self, group, version, plural, namespaced=True if namespaced is None else namespaced, kind=None
        )

    def resource_for_kind(self, api_version: str, kind: str) -> ResourceClient:
        """Requests for the registered kind ``kind`` of ``api_version`` (as in an ownerReference)."""
        entry = self.registry.by_kind(api_version, kind)
        if entry is None:
            raise LookupError(f"no registered kind {kind} in {api_version}")
        return self.resource(entry)

    def build_request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        watch: bool = False,
    ) -> httpx.Request:
        """An ``httpx.Request`` with this client's headers, credentials and timeouts."""
        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else None
        return self._http.build_request(
            method,
            path,
            params=params,
            content=content,
            headers=headers,
            timeout=self._watch_timeout if watch else self._timeout,
            extensions=self._extensions or None,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request and return its decoded JSON body (None if empty); raise on failure."""
        request = self.build_request(method, path, params=params, body=body, content_type=content_type)
        try:
            response = await send_completely(self._http, request)
        except httpx.TransportError as exc:
            raise errors.TransportError(f"{method} {request.url}: {exc!r}") from exc
        if response.status_code >= 400:
            raise errors.from_response(response.status_code, response.content, dict(response.headers))
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise errors.ProtocolError(f"{method} {request.url}: response is not JSON") from exc

    def watch_request(self, path: str, params: Mapping[str, str | int]) -> Watch:
        """A :class:`Watch` on ``path`` (sent on first iteration; no read timeout)."""
        return Watch(self._http, self.build_request("GET", path, params=params, watch=True))


class ResourceClient:
    """CRUD, list and watch of one kind. Objects are plain dicts, exactly as the server sends them.

    ``namespace=None`` means: for requests on one object of a namespaced kind, the client's default
    namespace (for ``create``/``update``, the object's own ``metadata.namespace`` first); for ``list``
    and ``watch``, all namespaces. Cluster-scoped kinds ignore ``namespace``.
    """

    def __init__(
        self, client: Client, group: str, version: str, plural: str, *, namespaced: bool, kind: Kind | None
    ) -> None:
        self.client = client
        self.group = group
        self.version = version
        self.plural = plural
        self.namespaced = namespaced
        self.kind = kind
        """The registry entry, when the kind is registered."""
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        self._prefix = prefix

    def __repr__(self) -> str:
        return f"ResourceClient({self.api_version}, {self.plural})"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The URL path of the collection (``name`` None) or of one object or its subresource."""
        parts = [self._prefix]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name is not None:
            if not name:
                raise ValueError(f"{self.plural}: an object name must not be empty")
            parts.append(quote(name, safe=""))
            if subresource:
                parts.append(subresource)
        return "/".join(parts)

    def _ns(self, namespace: str | None, obj: Obj | None = None) -> str | None:
        if not self.namespaced:
            return None
        if namespace:
            return namespace
        if obj is not None:
            ns = (obj.get("metadata") or {}).get("namespace")
            if ns:
                return str(ns)
        return self.client.namespace

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, name: str, namespace: str | None = None, *, subresource: str | None = None) -> Obj:
        """The object ``name``; raises :class:`NotFoundError` if it does not exist."""
        result: Obj = await self.client.request("GET", self.path(self._ns(namespace), name, subresource))
        return result

    async def get_model(self, name: str, model: type[M], namespace: str | None = None) -> M:
        """The object ``name`` parsed with a pydantic model (validated; raises on unknown fields)."""
        return model.model_validate(await self.get(name, namespace))

    async def list(
        self,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
    ) -> ObjectList:
        """One page of objects (all of them when ``limit`` is None), in all namespaces if none given."""
        params = _params(
            labelSelector=label_selector,
            fieldSelector=field_selector,
            limit=limit,
            resourceVersion=resource_version,
        )
        if continue_:
            params["continue"] = continue_
        body = await self.client.request(
            "GET", self.path(namespace if self.namespaced else None), params=params
        )
        return ObjectList(
            items=body.get("items") or [],
            metadata=body.get("metadata") or {},
            api_version=body.get("apiVersion") or "",
            kind=body.get("kind") or "",
        )

    async def list_all(
        self,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
    ) -> ObjectList:
        """Every matching object, following ``continue`` page by page (one consistent snapshot).

        An expired continue token raises :class:`GoneError`; list again from the start.
        """
        selectors: dict[str, Any] = {"label_selector": label_selector, "field_selector": field_selector}
        first = await self.list(namespace, limit=page_size, **selectors)
        items = builtins.list(first.items)
        token = first.continue_
        while token:
            page = await self.list(namespace, limit=page_size, continue_=token, **selectors)
            items.extend(page.items)
            token = page.continue_
        metadata = {k: v for k, v in first.metadata.items() if k not in ("continue", "remainingItemCount")}
        return ObjectList(items=items, metadata=metadata, api_version=first.api_version, kind=first.kind)

    def watch(
        self,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> Watch:
        """Changes after ``resource_version`` (or the current state as ADDED events, then changes).

        Use as ``async with rc.watch(...) as events: async for event in events: ...``. An ERROR event is
        raised (410 -> :class:`GoneError`); the iteration ends when the server ends the stream.
        """
        params = _params(
            watch=True,
            resourceVersion=resource_version,
            labelSelector=label_selector,
            fieldSelector=field_selector,
            timeoutSeconds=timeout_seconds,
            allowWatchBookmarks=allow_bookmarks,
        )
        return self.client.watch_request(self.path(namespace if self.namespaced else None), params)

    # --- writes --------------------------------------------------------------------------------

    async def create(
        self,
        obj: Obj | BaseModel,
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        field_validation: FieldValidation | None = None,
        field_manager: str | None = None,
    ) -> Obj:
        """Create ``obj`` (a dict or a model); returns the stored object. AlreadyExistsError if it exists."""
        body = to_dict(obj)
        params = _params(
            dryRun="All" if dry_run else None, fieldValidation=field_validation, fieldManager=field_manager
        )
        result: Obj = await self.client.request(
            "POST", self.path(self._ns(namespace, body)), params=params, body=body
        )
        return result

    async def update(
        self,
        obj: Obj | BaseModel,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: FieldValidation | None = None,
        field_manager: str | None = None,
    ) -> Obj:
        """Replace ``obj`` (PUT). Its ``metadata.resourceVersion``, if set, must be current (else 409)."""
        body = to_dict(obj)
        name = (body.get("metadata") or {}).get("name")
        if not name:
            raise ValueError(f"{self.plural}: update needs metadata.name in the object")
        params = _params(
            dryRun="All" if dry_run else None, fieldValidation=field_validation, fieldManager=field_manager
        )
        result: Obj = await self.client.request(
            "PUT", self.path(self._ns(None, body), str(name), subresource), params=params, body=body
        )
        return result

    async def update_status(self, obj: Obj | BaseModel, *, dry_run: bool = False) -> Obj:
        """Replace the status of ``obj`` (PUT .../status); only ``status`` changes. 409 if stale."""
        return await self.update(obj, subresource="status", dry_run=dry_run)

    async def patch(
        self,
        name: str,
        patch: Obj | builtins.list[Any],
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
        force: bool | None = None,
        field_validation: FieldValidation | None = None,
    ) -> Obj:
        """Patch ``name``: ``merge`` (RFC 7386), ``json`` (RFC 6902, a list), ``strategic``, or ``apply``."""
        content_type = PATCH_CONTENT_TYPES.get(patch_type)
        if content_type is None:
            raise ValueError(f"unknown patch_type {patch_type!r}; use one of {sorted(PATCH_CONTENT_TYPES)}")
        params = _params(
            dryRun="All" if dry_run else None,
            fieldManager=field_manager,
            force=force,
            fieldValidation=field_validation,
        )
        result: Obj = await self.client.request(
            "PATCH",
            self.path(self._ns(namespace), name, subresource),
            params=params,
            body=patch,
            content_type=content_type,
        )
        return result

    async def delete(
        self,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: PropagationPolicy | None = None,
        grace_period_seconds: int | None = None,
        preconditions: Mapping[str, str] | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Delete ``name``; returns the object (still there with deletionTimestamp while finalizers
        remain, or as last seen) or a Success Status. ``preconditions``: ``uid`` and/or ``resourceVersion``.
        """
        body = self._delete_options(propagation_policy, grace_period_seconds, preconditions, dry_run)
        result: Obj = await self.client.request("DELETE", self.path(self._ns(namespace), name), body=body)
        return result

    async def delete_collection(
        self,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        propagation_policy: PropagationPolicy | None = None,
    ) -> Obj:
        """Delete every matching object of the collection (``deletecollection``)."""
        params = _params(labelSelector=label_selector, fieldSelector=field_selector)
        body = self._delete_options(propagation_policy, None, None, False)
        result: Obj = await self.client.request(
            "DELETE", self.path(self._ns(namespace)), params=params, body=body
        )
        return result

    @staticmethod
    def _delete_options(
        propagation_policy: str | None,
        grace_period_seconds: int | None,
        preconditions: Mapping[str, str] | None,
        dry_run: bool,
    ) -> Obj:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if preconditions:
            body["preconditions"] = dict(preconditions)
        if dry_run:
            body["dryRun"] = ["All"]
        return body
