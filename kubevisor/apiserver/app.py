"""The API server's ASGI application: Kubernetes REST conventions over the generic object storage.

One entry point parses the path the way kube-apiserver's RequestInfoFactory does (group, version,
namespace, resource, name, subresource), authenticates, authorizes with RBAC, and dispatches to the verb.
Every failure is a ``Status`` (see :mod:`kubevisor.apiserver.errors`). Objects travel as JSON dicts; the
pydantic models validate them in admission and generate OpenAPI, and are not on the read path.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import platform
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from kubevisor.api.authz import TokenRequest
from kubevisor.api.meta import DeleteOptions
from kubevisor.api.registry import Kind, Obj, Registry
from kubevisor.api.validation import FieldError
from kubevisor.apiserver import (
    admission,
    claimresize,
    cloneauth,
    errors,
    exports,
    hotplugging,
    patching,
    tables,
    uploads,
    vmactions,
    vmistreams,
    watching,
)
from kubevisor.apiserver.auth import (
    RBAC,
    Attributes,
    User,
    bootstrap_policy,
    forbidden_message,
    service_account_groups,
    service_account_user,
)
from kubevisor.apiserver.discovery import AGGREGATED, Discovery, negotiate_aggregated
from kubevisor.apiserver.openapi import OpenAPIV3
from kubevisor.apiserver.pki import TokenIssuer, user_from_certificate
from kubevisor.apiserver.resources import Filter, Objects, now_rfc3339
from kubevisor.apiserver.selectors import SelectorError, parse_field_selector, parse_label_selector
from kubevisor.store import Store

log = logging.getLogger(__name__)

KUBE_VERSION = (1, 31, 0)
BOOTSTRAP_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
JSON = "application/json"
NAMESPACE_SUBRESOURCES = ("status", "finalize")
DEFAULT_WATCH_TIMEOUT = 1800.0


def version_info() -> dict[str, str]:
    major, minor, patch = KUBE_VERSION
    from kubevisor import __version__

    return {
        "major": str(major),
        "minor": str(minor),
        "gitVersion": f"v{major}.{minor}.{patch}+kubevisor.{__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-11-20T00:00:00Z",
        "goVersion": f"python{platform.python_version()}",
        "compiler": "cpython",
        "platform": "linux/amd64",
    }


@dataclass(frozen=True, slots=True)
class Target:
    """A resource request's target, parsed from the path."""

    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None, media: str = JSON) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=media, headers=headers)


def _negotiate(accept: str) -> tuple[str, str]:
    """("json"|"table"|"meta", version) from an Accept header, first acceptable entry wins."""
    if not accept:
        return "json", ""
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        params = dict(p.partition("=")[::2] for p in pieces[1:])
        if media not in ("application/json", "*/*", "application/*", "application/yaml"):
            continue
        as_ = params.get("as")
        if as_ is None:
            return "json", ""
        if params.get("g") != "meta.k8s.io" or params.get("v") not in ("v1", "v1beta1"):
            continue
        if as_ == "Table":
            return "table", params["v"]
        if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return "meta", params["v"]
    raise errors.ApiError(406, "NotAcceptable", f"only the following media types are accepted: {JSON}")


def _partial(obj: Obj, version: str) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": obj["metadata"],
    }


def _bool(value: str | None) -> bool:
    return value in ("true", "1", "True")


def _int64(text: str) -> int:
    """A query parameter Kubernetes declares int64 (ValueError if it is not one)."""
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(text)
    return value


def _quote_warning(text: str) -> str:
    # Like Kubernetes, no control characters; non-ASCII text is sent as UTF-8 bytes (headers are latin-1).
    text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    quoted = '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return quoted.encode("utf-8").decode("latin-1")


WARNINGS_TOTAL_CHARS = 4 * 1024
WARNING_TRUNCATED_CHARS = 256


def _warning_header(warnings: list[str]) -> str:
    """The Warning header of ``warnings`` with kube-apiserver's limits: once their text passes 4 KiB,
    each is cut to 256 characters and those that still do not fit are left out (clients refuse long
    headers: Python's http.client at 64 KiB, h11 at 16 KiB)."""
    unique = list(dict.fromkeys(warnings))
    if sum(len(w) for w in unique) > WARNINGS_TOTAL_CHARS:
        cut = [
            w if len(w) <= WARNING_TRUNCATED_CHARS else w[: WARNING_TRUNCATED_CHARS - 3] + "..."
            for w in unique
        ]
        unique, total = [], 0
        for w in cut:
            if total + len(w) > WARNINGS_TOTAL_CHARS:
                break
            unique.append(w)
            total += len(w)
    return ", ".join(_quote_warning(w) for w in unique)


def _status_response(err: errors.ApiError) -> Response:
    """``err`` as a Status answer. Its message may quote the request, lone surrogates and huge numbers
    included: what orjson cannot encode, the standard encoder escapes."""
    body = err.status()
    try:
        content = orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError
        content = json.dumps(body, default=str).encode()
    return Response(content, status_code=err.code, media_type=JSON, headers=err.headers)


class ApiServer:
    """The Kubernetes-compatible API over one store."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        tokens: TokenIssuer,
        compaction_interval: float = 300.0,
        agent_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.store = store
        self.agent_tls = agent_tls
        """Client TLS context for node agents (console, VNC, pause...); None: those answer 503."""
        self.registry = registry
        self.objects = Objects(store, registry)
        self.tokens = tokens
        self.version = version_info()
        self.discovery = Discovery(registry, self.version)
        self.openapi = OpenAPIV3(registry)
        self.rbac = RBAC(store)
        self.ready = False
        self.compaction_interval = compaction_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._cert_users: dict[bytes, User] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._bootstrap()
        await self.rbac.start()
        if self.compaction_interval > 0:
            self._tasks.append(asyncio.create_task(self._compact_loop(), name="compaction"))
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.rbac.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _bootstrap(self) -> None:
        ns_kind = self._kind("", "v1", "namespaces")
        for name in BOOTSTRAP_NAMESPACES:
            await self._ensure(ns_kind, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for obj in bootstrap_policy():
            kind = self.registry.by_kind(obj["apiVersion"], obj["kind"])
            assert kind is not None
            await self._ensure(kind, obj)

    async def _ensure(self, kind: Kind, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        from kubevisor.apiserver.resources import object_key

        if await self.store.get(object_key(kind, None, name)) is not None:
            return
        obj = self.objects.prepare_create(kind, None, copy.deepcopy(obj))
        admission.admit(kind, obj, None, field_validation="Strict", duplicates=[], warnings=[])
        with contextlib.suppress(errors.ApiError):
            await self.objects.create(kind, obj)

    def _kind(self, group: str, version: str, plural: str) -> Kind:
        kind = self.registry.get(group, version, plural)
        assert kind is not None, f"{plural} not registered"
        return kind

    async def _compact_loop(self) -> None:
        previous = await self.store.current_revision()
        while True:
            await asyncio.sleep(self.compaction_interval)
            try:
                if previous > await self.store.compact_revision():
                    await self.store.compact(previous)
                previous = await self.store.current_revision()
            except Exception:  # a failed compaction must not stop the loop
                log.exception("compaction failed")

    # --- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send))
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except errors.ApiError as exc:
            response = _status_response(exc)
        except Exception as exc:
            log.exception("internal error serving %s %s", request.method, request.url.path)
            err = errors.ApiError(500, "InternalError", f"an internal error occurred: {exc}")
            response = _status_response(err)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if path in ("/livez", "/readyz", "/healthz"):
            if not self.ready:
                return Response(b"not ready", 503, media_type="text/plain")
            return Response(b"ok", media_type="text/plain")
        if path == "/version":
            return Response(self.discovery.version, media_type=JSON)
        is_upload, upload_target = uploads.parse_path(path)
        if is_upload:  # authenticated by its upload token, not as an API user
            return await self._upload(request, upload_target)
        download = exports.parse_path(path)
        if download is not None:  # authenticated by the export's token, not as an API user
            return await self._download(request, download)
        user = await self.authenticate(request)
        if user is None:
            raise errors.ApiError(401, "Unauthorized", "Unauthorized")
        segs = [s for s in path.split("/") if s]
        if segs and segs[0] == "api":
            if len(segs) == 1:
                await self._authorize_path(user, request, path)
                return self._discovery_root(request, core=True)
            if segs[1] != "v1":
                raise errors.path_not_found(path)
            return await self._group_version(request, user, "", "v1", segs[2:])
        if segs and segs[0] == "apis":
            if len(segs) == 1:
                await self._authorize_path(user, request, path)
                return self._discovery_root(request, core=False)
            if segs[1] == vmactions.GROUP and len(segs) <= 3:
                await self._authorize_path(user, request, path)
                return self._subresources_discovery(path, segs[2:])
            if len(segs) == 2:
                await self._authorize_path(user, request, path)
                body = self.discovery.legacy_group(segs[1])
                if body is None:
                    raise errors.path_not_found(path)
                return Response(body, media_type=JSON)
            if segs[1] == vmactions.GROUP and len(segs) > 3:
                return await self._kubevirt_action(request, user, segs[2], segs[3:])
            return await self._group_version(request, user, segs[1], segs[2], segs[3:])
        if segs and segs[0] == "openapi":
            await self._authorize_path(user, request, path)
            return self._openapi(request, segs)
        raise errors.path_not_found(path)

    async def authenticate(self, request: HTTPConnection) -> User | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            claims = self.tokens.verify(auth[7:].strip())
            if claims is None:
                return None
            if claims.namespace and claims.sa_name:
                sa_kind = self._kind("", "v1", "serviceaccounts")
                try:
                    sa = await self.objects.get(sa_kind, claims.namespace, claims.sa_name)
                except errors.ApiError:
                    return None
                if claims.sa_uid and sa["metadata"].get("uid") != claims.sa_uid:
                    return None
            return User(claims.username, tuple(claims.groups), claims.uid)
        tls = (request.scope.get("extensions") or {}).get("tls") or {}
        der = tls.get("client_cert_der")
        if der:
            return self._certificate_user(der)
        return None

    def _certificate_user(self, der: bytes) -> User | None:
        """The user a verified client certificate names; parsed once per certificate, not per request."""
        user = self._cert_users.get(der)
        if user is None:
            try:
                name, groups = user_from_certificate(der)
            except ValueError:
                return None
            if len(self._cert_users) > 1024:
                self._cert_users.clear()
            user = self._cert_users[der] = User(name, (*groups, "system:authenticated"))
        return user

    async def _authorize_path(self, user: User, request: Request, path: str) -> None:
        attrs = Attributes(verb=request.method.lower(), path=path, resource_request=False)
        allowed, _ = await self.rbac.authorize(user, attrs)
        if not allowed:
            raise errors.forbidden(forbidden_message(user, attrs))

    def _discovery_root(self, request: Request, *, core: bool) -> Response:
        version = negotiate_aggregated(request.headers.get("accept", ""))
        if version is not None:
            return Response(
                self.discovery.aggregated(core, version),
                media_type=AGGREGATED.format(v=version),
                headers={"Vary": "Accept"},
            )
        body = self.discovery.legacy_api if core else self.discovery.legacy_apis
        return Response(body, media_type=JSON, headers={"Vary": "Accept"})

    def _openapi(self, request: Request, segs: list[str]) -> Response:
        if segs[1:2] != ["v3"]:
            raise errors.path_not_found(request.url.path)
        if len(segs) == 2:
            return _json(self.openapi.index())
        doc = self.openapi.document("/".join(segs[2:]))
        if doc is None:
            raise errors.path_not_found(request.url.path)
        body, digest = doc
        headers = {"Etag": f'"{digest}"'}
        if request.query_params.get("hash") == digest:
            headers["Cache-Control"] = "public, immutable"
        return Response(body, media_type=JSON, headers=headers)

    # --- resources -----------------------------------------------------------------------------

    def _target(self, group: str, version: str, segs: list[str], path: str) -> Target:
        if segs[0] == "namespaces" and len(segs) >= 3 and segs[2] not in NAMESPACE_SUBRESOURCES:
            namespace: str | None = segs[1]
            plural, rest = segs[2], segs[3:]
        else:
            namespace, plural, rest = None, segs[0], segs[1:]
        kind = self.registry.get(group, version, plural)
        if kind is None or (namespace is not None and not kind.namespaced) or len(rest) > 2:
            raise errors.path_not_found(path)
        name = rest[0] if rest else None
        sub = rest[1] if len(rest) > 1 else None
        if sub is not None and sub not in kind.all_subresources:
            raise errors.path_not_found(path)
        if kind.namespaced and name is not None and namespace is None:
            raise errors.path_not_found(path)
        return Target(kind, namespace, name, sub)

    async def _group_version(
        self, request: Request, user: User, group: str, version: str, segs: list[str]
    ) -> Response:
        path = request.url.path
        if not segs:
            await self._authorize_path(user, request, path)
            body = self.discovery.resource_list(group, version)
            if body is None:
                raise errors.path_not_found(path)
            return Response(body, media_type=JSON)
        target = self._target(group, version, segs, path)
        kind = target.kind
        method = request.method
        q = request.query_params
        if target.name is None:
            verb = {
                "GET": "watch" if _bool(q.get("watch")) else "list",
                "POST": "create",
                "DELETE": "deletecollection",
            }.get(method)
        else:
            verb = {
                "GET": "get",
                "PUT": "update",
                "PATCH": "patch",
                "DELETE": "delete",
                "POST": "create",
            }.get(method)
        if verb is None or (verb not in kind.verbs and target.subresource is None):
            raise errors.method_not_allowed()
        if target.kind.namespaced and target.namespace is None and verb not in ("list", "watch"):
            raise errors.method_not_allowed()
        attrs = Attributes(
            verb=verb,
            namespace=target.namespace or "",
            group=kind.group,
            resource=kind.plural,
            subresource=target.subresource or "",
            name=target.name or "",
            path=path,
        )
        allowed, _ = await self.rbac.authorize(user, attrs)
        if not allowed:
            raise errors.forbidden(forbidden_message(user, attrs), kind, target.name)
        handler: Callable[[Request, Target, User], Awaitable[Response]] = getattr(self, f"_{verb}")
        return await handler(request, target, user)

    def _filter(self, request: Request) -> Filter:
        q = request.query_params
        try:
            labels = parse_label_selector(q["labelSelector"]) if q.get("labelSelector") else None
            fields = parse_field_selector(q["fieldSelector"]) if q.get("fieldSelector") else None
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from exc
        if labels is not None and labels.empty:
            labels = None
        return Filter(labels, fields)

    def _render(
        self, request: Request, kind: Kind, obj: Obj, status: int = 200, warnings: list[str] | None = None
    ) -> Response:
        mode, version = _negotiate(request.headers.get("accept", ""))
        headers = {"Warning": _warning_header(warnings)} if warnings else None
        if mode == "table":
            table = tables.to_table(
                kind,
                [obj],
                resource_version=obj["metadata"].get("resourceVersion", ""),
                version=version,
                include_object=self._include_object(request),
            )
            return _json(table, status, headers, f"{JSON};as=Table;v={version};g=meta.k8s.io")
        if mode == "meta":
            return _json(
                _partial(obj, version),
                status,
                headers,
                f"{JSON};as=PartialObjectMetadata;v={version};g=meta.k8s.io",
            )
        return _json(obj, status, headers)

    def _include_object(self, request: Request) -> str:
        value = request.query_params.get("includeObject", "Metadata")
        return value if value in ("None", "Metadata", "Object") else "Metadata"

    def _dry_run(self, request: Request) -> bool:
        values = request.query_params.getlist("dryRun")
        for v in values:
            if v != "All":
                raise errors.bad_request(f'dryRun: Unsupported value: "{v}": supported values: "All"')
        return bool(values)

    def _field_validation(self, request: Request) -> str:
        value = request.query_params.get("fieldValidation") or "Warn"
        if value not in admission.FIELD_VALIDATIONS:
            raise errors.bad_request(
                f'fieldValidation: Unsupported value: "{value}": supported values: "Ignore", "Strict", "Warn"'
            )
        return value

    async def _body_object(self, request: Request, kind: Kind, track: bool) -> tuple[Obj, list[str]]:
        body = await _read_body(request)
        value, dups = admission.decode_body(
            body, request.headers.get("content-type", JSON), track_duplicates=track
        )
        if not isinstance(value, dict):
            raise errors.bad_request(f"the request body must be a JSON object describing a {kind.kind}")
        api_version, obj_kind = value.get("apiVersion"), value.get("kind")
        if api_version and api_version != kind.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({kind.api_version})"
            )
        if obj_kind and obj_kind != kind.kind:
            raise errors.bad_request(
                f"the kind in the data ({obj_kind}) does not match the expected kind ({kind.kind})"
            )
        meta = value.get("metadata")
        if meta is None:
            value.pop("metadata", None)  # "metadata": null is no metadata
        elif not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        return value, dups

    # --- verbs ---------------------------------------------------------------------------------

    async def _get(self, request: Request, target: Target, user: User) -> Response:
        assert target.name is not None
        obj = await self.objects.get(target.kind, target.namespace, target.name)
        return self._render(request, target.kind, obj)

    async def _list(self, request: Request, target: Target, user: User) -> Response:
        q = request.query_params
        kind = target.kind
        try:
            limit = _int64(q.get("limit") or "0")
        except ValueError as exc:
            raise errors.bad_request(f"limit: invalid value {q.get('limit')!r}") from exc
        revision = 0
        rv = q.get("resourceVersion")
        if rv and q.get("resourceVersionMatch") == "Exact":
            try:
                revision = _int64(rv)
                if revision < 0:
                    raise ValueError(rv)
            except ValueError as exc:
                raise errors.bad_request(f"resourceVersion: invalid value {rv!r}") from exc
        mode, version = _negotiate(request.headers.get("accept", ""))
        page = await self.objects.list(
            kind,
            target.namespace,
            self._filter(request),
            limit=max(limit, 0),
            continue_token=q.get("continue") or None,
            revision=revision,
        )
        rv_str = str(page.resource_version)
        if mode == "table":
            table = tables.to_table(
                kind,
                page.items,
                resource_version=rv_str,
                continue_token=page.continue_token,
                remaining=page.remaining,
                version=version,
                include_object=self._include_object(request),
            )
            return _json(table, media=f"{JSON};as=Table;v={version};g=meta.k8s.io")
        meta: dict[str, Any] = {"resourceVersion": rv_str}
        if page.continue_token:
            meta["continue"] = page.continue_token
        if page.remaining is not None:
            meta["remainingItemCount"] = page.remaining
        if mode == "meta":
            return _json(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": f"meta.k8s.io/{version}",
                    "metadata": meta,
                    "items": [_partial(o, version) for o in page.items],
                },
                media=f"{JSON};as=PartialObjectMetadataList;v={version};g=meta.k8s.io",
            )
        return _json(
            {"kind": kind.list_kind, "apiVersion": kind.api_version, "metadata": meta, "items": page.items}
        )

    async def _watch(self, request: Request, target: Target, user: User) -> Response:
        q = request.query_params
        if q.get("sendInitialEvents") is not None:
            raise errors.ApiError(
                422,
                "Invalid",
                'ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is '
                "forbidden for watch unless the WatchList feature gate is enabled",
                details={
                    "kind": "ListOptions",
                    "group": "meta.k8s.io",
                    "causes": [
                        {
                            "reason": "FieldValueForbidden",
                            "field": "sendInitialEvents",
                            "message": "Forbidden: sendInitialEvents is forbidden for watch unless the "
                            "WatchList "
                            "feature gate is enabled",
                        }
                    ],
                },
            )
        try:
            timeout = float(_int64(q["timeoutSeconds"])) if q.get("timeoutSeconds") else DEFAULT_WATCH_TIMEOUT
        except ValueError as exc:
            raise errors.bad_request("timeoutSeconds: invalid value") from exc
        flt = self._filter(request)
        from kubevisor.apiserver.resources import check_field_selector

        check_field_selector(target.kind, flt.fields)
        body = watching.stream(
            self.objects,
            target.kind,
            target.namespace,
            flt,
            resource_version=q.get("resourceVersion"),
            timeout=timeout,
            bookmarks=_bool(q.get("allowWatchBookmarks")),
            render=self._watch_render(request, target.kind),
        )
        return StreamingResponse(body, media_type=JSON, headers={"Cache-Control": "no-cache"})

    def _watch_render(self, request: Request, kind: Kind) -> Callable[[Obj], Any] | None:
        """Event objects as the Accept header asks (``kubectl get -w`` wants Tables, to print its columns).

        Like kube-apiserver, only the first Table of a stream carries the column definitions.
        """
        mode, version = _negotiate(request.headers.get("accept", ""))
        if mode == "meta":
            return lambda obj: _partial(obj, version)
        if mode != "table":
            return None
        include_object = self._include_object(request)
        first = True

        def table(obj: Obj) -> Any:
            nonlocal first
            rendered = tables.to_table(
                kind,
                [obj],
                resource_version=obj["metadata"].get("resourceVersion", ""),
                version=version,
                include_object=include_object,
            )
            if not first:
                rendered["columnDefinitions"] = []
            first = False
            return rendered

        return table

    async def _create(self, request: Request, target: Target, user: User) -> Response:
        kind = target.kind
        if target.subresource == "token":
            return await self._token(request, target)
        if target.name is not None:
            raise errors.method_not_allowed()
        if not kind.stored:
            return await self._virtual(request, target, user)
        field_validation = self._field_validation(request)
        obj, dups = await self._body_object(request, kind, field_validation != "Ignore")
        body_ns = (obj.get("metadata") or {}).get("namespace")
        if kind.namespaced:
            if body_ns and body_ns != target.namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            assert target.namespace is not None
            await self.objects.ensure_namespace_usable(target.namespace)
        if (kind.has_status and kind.defaulter is None) or kind.has_status:
            obj.pop("status", None)
        obj = self.objects.prepare_create(kind, target.namespace, obj)
        warnings: list[str] = []
        admission.admit(
            kind, obj, None, field_validation=field_validation, duplicates=dups, warnings=warnings
        )
        await cloneauth.check(self.rbac.authorize, user, kind, obj, target.namespace)
        created = await self.objects.create(kind, obj, dry_run=self._dry_run(request))
        return self._render(request, kind, created, 201, warnings)

    async def _update(self, request: Request, target: Target, user: User) -> Response:
        kind = target.kind
        assert target.name is not None
        field_validation = self._field_validation(request)
        obj, dups = await self._body_object(request, kind, field_validation != "Ignore")
        meta = obj.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != target.name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({target.name})"
            )
        if kind.namespaced and meta.get("namespace") and meta["namespace"] != target.namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["name"] = target.name
        wanted_rv = meta.get("resourceVersion")
        warnings: list[str] = []

        async def compute(current: Obj) -> Obj:
            warnings.clear()
            new = copy.deepcopy(obj)
            if target.subresource == "finalize":
                result = copy.deepcopy(current)
                spec = new.get("spec") or {}
                if not isinstance(spec, dict):
                    raise errors.invalid(
                        kind,
                        target.name,
                        [FieldError("spec", f"{spec!r}: must be an object", "FieldValueTypeInvalid")],
                    )
                result.setdefault("spec", {})["finalizers"] = spec.get("finalizers") or []
                new = result
            else:
                new = self.objects.merge_update(kind, current, new, target.subresource)
            if wanted_rv:
                new["metadata"]["resourceVersion"] = wanted_rv
            else:
                new["metadata"].pop("resourceVersion", None)
            admitted = admission.admit(
                kind, new, current, field_validation=field_validation, duplicates=dups, warnings=warnings
            )
            await claimresize.admit(
                self.objects, self.registry, kind, admitted, current, subresource=target.subresource
            )
            await cloneauth.check(self.rbac.authorize, user, kind, admitted, target.namespace, old=current)
            return admitted

        updated = await self.objects.update(
            kind, target.namespace, target.name, compute, dry_run=self._dry_run(request)
        )
        return self._render(request, kind, updated, 200, warnings)

    async def _patch(self, request: Request, target: Target, user: User) -> Response:
        kind = target.kind
        assert target.name is not None
        field_validation = self._field_validation(request)
        content_type = request.headers.get("content-type", "")
        body = await _read_body(request)
        if len(body) > admission.MAX_BODY:
            raise errors.ApiError(413, "RequestEntityTooLarge", "request entity too large")
        warnings: list[str] = []

        async def compute(current: Obj) -> Obj:
            warnings.clear()
            try:
                patched = patching.apply_patch(content_type, current, body, kind.model, kind.strategic_merge)
            except patching.UnsupportedPatchError as exc:
                raise errors.unsupported_media_type(str(exc)) from exc
            except patching.PatchError as exc:
                raise errors.ApiError(422, "Invalid", f"the patch could not be applied: {exc}") from exc
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata", {}), dict):
                raise errors.bad_request("the patch result is not an object")
            problem = admission.json_problem(patched, 4 * admission.MAX_BODY)
            if problem is not None:
                raise errors.ApiError(422, "Invalid", f"the patch could not be applied: {problem}")
            meta = patched.setdefault("metadata", {})
            if meta.get("name") != target.name:
                raise errors.bad_request("the patch may not change metadata.name")
            if target.subresource == "finalize":
                raise errors.method_not_allowed()
            new = self.objects.merge_update(kind, current, patched, target.subresource)
            new["metadata"]["resourceVersion"] = meta.get("resourceVersion")
            admitted = admission.admit(
                kind, new, current, field_validation=field_validation, duplicates=[], warnings=warnings
            )
            await claimresize.admit(
                self.objects, self.registry, kind, admitted, current, subresource=target.subresource
            )
            await cloneauth.check(self.rbac.authorize, user, kind, admitted, target.namespace, old=current)
            return admitted

        updated = await self.objects.update(
            kind, target.namespace, target.name, compute, dry_run=self._dry_run(request)
        )
        return self._render(request, kind, updated, 200, warnings)

    async def _delete_options(self, request: Request) -> Obj:
        body = await _read_body(request)
        options: Obj = {}
        if body.strip():
            value, _ = admission.decode_body(
                body, request.headers.get("content-type", JSON), track_duplicates=False
            )
            if not isinstance(value, dict):
                raise errors.bad_request("the request body must be a DeleteOptions object")
            admission.check_types(DeleteOptions, value, "DeleteOptions")
            options = value
        q = request.query_params
        if q.get("propagationPolicy"):
            options["propagationPolicy"] = q["propagationPolicy"]
        if q.get("gracePeriodSeconds"):
            try:
                options["gracePeriodSeconds"] = _int64(q["gracePeriodSeconds"])
            except ValueError as exc:
                raise errors.bad_request("gracePeriodSeconds: invalid value") from exc
        if q.get("orphanDependents") is not None:
            options["orphanDependents"] = _bool(q.get("orphanDependents"))
        if options.get("dryRun") and options["dryRun"] != ["All"]:
            raise errors.bad_request('dryRun: Unsupported value: supported values: "All"')
        return options

    async def _delete(self, request: Request, target: Target, user: User) -> Response:
        kind = target.kind
        assert target.name is not None
        options = await self._delete_options(request)
        dry_run = self._dry_run(request) or bool(options.get("dryRun"))
        obj, gone = await self.objects.delete(kind, target.namespace, target.name, options, dry_run=dry_run)
        if gone and kind.strategic_merge:
            details: dict[str, Any] = {
                "name": target.name,
                "kind": kind.plural,
                "uid": obj["metadata"].get("uid"),
            }
            if kind.group:
                details["group"] = kind.group
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
            )
        return self._render(request, kind, obj)

    async def _deletecollection(self, request: Request, target: Target, user: User) -> Response:
        kind = target.kind
        options = await self._delete_options(request)
        dry_run = self._dry_run(request) or bool(options.get("dryRun"))
        page = await self.objects.list(kind, target.namespace, self._filter(request))
        for obj in page.items:
            with contextlib.suppress(errors.ApiError):
                await self.objects.delete(
                    kind, obj["metadata"].get("namespace"), obj["metadata"]["name"], options, dry_run=dry_run
                )
        return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    # --- virtual kinds and special subresources --------------------------------------------------

    async def _websocket(self, ws: WebSocket) -> None:
        """A websocket request: only the VMI streams of subresources.kubevirt.io (console, vnc,
        portforward); anything refused gets its Status as the answer to the upgrade request."""
        path = ws.url.path
        try:
            user = await self.authenticate(ws)
            if user is None:
                raise errors.ApiError(401, "Unauthorized", "Unauthorized")
            segs = [s for s in path.split("/") if s]
            req = vmistreams.parse(segs[3:]) if segs[:2] == ["apis", vmactions.GROUP] else None
            if req is None or segs[2] not in vmactions.VERSIONS or req.subresource not in vmistreams.STREAMS:
                raise errors.path_not_found(path)
            await self._authorize_vmi(user, req, path)
            await vmistreams.proxy_websocket(
                ws,
                self.objects,
                vmi_kind=self._kind("kubevirt.io", "v1", "virtualmachineinstances"),
                node_kind=self._kind("", "v1", "nodes"),
                req=req,
                agent_tls=self.agent_tls,
            )
        except errors.ApiError as exc:
            await self._deny(ws, exc)
        except Exception as exc:
            log.exception("internal error serving websocket %s", path)
            await self._deny(ws, errors.ApiError(500, "InternalError", f"an internal error occurred: {exc}"))

    @staticmethod
    async def _deny(ws: WebSocket, exc: errors.ApiError) -> None:
        from starlette.websockets import WebSocketState

        if ws.application_state == WebSocketState.CONNECTING:
            await ws.send_denial_response(_status_response(exc))
        elif ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(1011, exc.message[:120])

    @staticmethod
    def _subresources_discovery(path: str, rest: list[str]) -> Response:
        """Discovery of subresources.kubevirt.io (virt-api's aggregated API, not a registry group)."""
        versions = [{"groupVersion": f"{vmactions.GROUP}/{v}", "version": v} for v in vmactions.VERSIONS]
        if not rest:
            group = {"name": vmactions.GROUP, "versions": versions, "preferredVersion": versions[0]}
            return _json({"kind": "APIGroup", "apiVersion": "v1", **group})
        if rest[0] not in vmactions.VERSIONS:
            raise errors.path_not_found(path)
        body = vmistreams.resource_list(rest[0], vmactions.VM_ACTIONS)
        return Response(hotplugging.resource_list(body), media_type=JSON)

    async def _authorize_vmi(self, user: User, req: vmistreams.Request, path: str) -> None:
        attrs = Attributes(
            verb=vmistreams.verb(req),
            namespace=req.namespace,
            group=vmactions.GROUP,
            resource="virtualmachineinstances",
            subresource=req.subresource,
            name=req.name,
            path=path,
        )
        allowed, _ = await self.rbac.authorize(user, attrs)
        if not allowed:
            raise errors.forbidden(forbidden_message(user, attrs))

    async def _vmi_subresource(self, request: Request, user: User, segs: list[str]) -> Response:
        """pause, unpause (PUT) and guestosinfo (GET) of a VMI; a stream without an upgrade is refused."""
        path = request.url.path
        req = vmistreams.parse(segs)
        if req is None:
            raise errors.path_not_found(path)
        if req.subresource in vmistreams.STREAMS:
            raise errors.bad_request(
                f"{req.what}: {req.subresource} is a websocket stream; connect with a websocket client "
                f"(e.g. `kubevisor {req.subresource} {req.name}`)"
            )
        wanted = "PUT" if req.subresource in vmistreams.ACTIONS else "GET"
        if request.method != wanted:
            raise errors.method_not_allowed()
        await self._authorize_vmi(user, req, path)
        vmi_kind = self._kind("kubevirt.io", "v1", "virtualmachineinstances")
        node_kind = self._kind("", "v1", "nodes")
        if req.subresource in vmistreams.QUERIES:
            body = await vmistreams.query(
                self.objects, vmi_kind=vmi_kind, node_kind=node_kind, req=req, agent_tls=self.agent_tls
            )
            return Response(body, media_type=JSON)
        options = await _options_body(request)
        await vmistreams.action(
            self.objects,
            vmi_kind=vmi_kind,
            node_kind=node_kind,
            req=req,
            agent_tls=self.agent_tls,
            body=options,
        )
        return Response(b"", status_code=202)

    async def _volume_action(self, request: Request, user: User, segs: list[str]) -> Response:
        """addvolume, removevolume of a VM or VMI (see :mod:`kubevisor.apiserver.hotplugging`)."""
        path = request.url.path
        if segs[0] != "namespaces" or segs[2] not in ("virtualmachines", "virtualmachineinstances"):
            raise errors.path_not_found(path)
        if request.method != "PUT":
            raise errors.method_not_allowed()
        namespace, resource, name, action = segs[1], segs[2], segs[3], segs[4]
        attrs = Attributes(
            verb="update",
            namespace=namespace,
            group=vmactions.GROUP,
            resource=resource,
            subresource=action,
            name=name,
            path=path,
        )
        allowed, _ = await self.rbac.authorize(user, attrs)
        if not allowed:
            raise errors.forbidden(forbidden_message(user, attrs))
        body = await _options_body(request)
        kinds = hotplugging.Kinds(
            vm=self._kind("kubevirt.io", "v1", "virtualmachines"),
            vmi=self._kind("kubevirt.io", "v1", "virtualmachineinstances"),
            pvc=self._kind("", "v1", "persistentvolumeclaims"),
            dv=self.registry.get("cdi.kubevirt.io", "v1beta1", "datavolumes"),
        )
        run = hotplugging.vm_volume if resource == "virtualmachines" else hotplugging.vmi_volume
        await run(self.objects, kinds, namespace=namespace, name=name, action=action, body=body)
        return Response(b"", status_code=202)

    async def _kubevirt_action(self, request: Request, user: User, version: str, segs: list[str]) -> Response:
        """KubeVirt's subresources.kubevirt.io API (virt-api): VM start, stop, restart; VMI pause, unpause,
        guestosinfo (see :mod:`kubevisor.apiserver.vmistreams`)."""
        path = request.url.path
        if version in vmactions.VERSIONS and len(segs) == 5 and segs[4] in hotplugging.ACTIONS:
            return await self._volume_action(request, user, segs)
        if version in vmactions.VERSIONS and segs[2:3] == ["virtualmachineinstances"]:
            return await self._vmi_subresource(request, user, segs)
        if (
            version not in vmactions.VERSIONS
            or len(segs) != 5
            or segs[0] != "namespaces"
            or segs[2] != "virtualmachines"
            or segs[4] not in vmactions.VM_ACTIONS
        ):
            raise errors.path_not_found(path)
        if request.method != "PUT":
            raise errors.method_not_allowed()
        namespace, name, action = segs[1], segs[3], segs[4]
        attrs = Attributes(
            verb="update",
            namespace=namespace,
            group=vmactions.GROUP,
            resource="virtualmachines",
            subresource=action,
            name=name,
            path=path,
        )
        allowed, _ = await self.rbac.authorize(user, attrs)
        if not allowed:
            raise errors.forbidden(forbidden_message(user, attrs))
        vm_kind = self._kind("kubevirt.io", "v1", "virtualmachines")
        vmi_kind = self._kind("kubevirt.io", "v1", "virtualmachineinstances")
        body = await _options_body(request)
        await vmactions.vm_action(
            self.objects,
            vm_kind=vm_kind,
            vmi_kind=vmi_kind,
            namespace=namespace,
            name=name,
            action=action,
            body=body,
        )
        return Response(b"", status_code=202)

    async def _upload(self, request: Request, target: uploads.UploadTarget | None) -> Response:
        """An image upload into a claim (see :mod:`kubevisor.apiserver.uploads`)."""
        return await uploads.proxy_upload(
            request,
            target,
            objects=self.objects,
            tokens=self.tokens,
            kinds={
                "pvc": self._kind("", "v1", "persistentvolumeclaims"),
                "pv": self._kind("", "v1", "persistentvolumes"),
                "node": self._kind("", "v1", "nodes"),
            },
            agent_tls=self.agent_tls,
        )

    async def _download(self, request: Request, target: exports.ExportTarget) -> Response:
        """A VirtualMachineExport download (see :mod:`kubevisor.apiserver.exports`)."""
        return await exports.proxy_download(
            request,
            target,
            objects=self.objects,
            kinds={
                "export": self._kind("export.kubevirt.io", "v1", "virtualmachineexports"),
                "secret": self._kind("", "v1", "secrets"),
                "pvc": self._kind("", "v1", "persistentvolumeclaims"),
                "pv": self._kind("", "v1", "persistentvolumes"),
                "node": self._kind("", "v1", "nodes"),
                "snapshot": self._kind("snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots"),
                "content": self._kind("snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshotcontents"),
            },
            agent_tls=self.agent_tls,
        )

    async def _token(self, request: Request, target: Target) -> Response:
        assert target.namespace is not None and target.name is not None
        sa = await self.objects.get(target.kind, target.namespace, target.name)
        body = await _read_body(request)
        spec: Obj = {}
        if body.strip():
            value, _ = admission.decode_body(
                body, request.headers.get("content-type", JSON), track_duplicates=False
            )
            admission.check_types(TokenRequest, value, "TokenRequest")
            spec = value.get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise errors.ApiError(
                422,
                "Invalid",
                "TokenRequest is invalid: spec.expirationSeconds: may not specify a duration less "
                "than 10 minutes",
            )
        if seconds > 2**32:
            raise errors.ApiError(
                422,
                "Invalid",
                "TokenRequest is invalid: spec.expirationSeconds: may not specify a duration larger "
                "than 2^32 seconds",
            )
        token, expires = self.tokens.issue(
            username=service_account_user(target.namespace, target.name),
            uid=sa["metadata"]["uid"],
            groups=service_account_groups(target.namespace),
            audiences=spec.get("audiences"),
            expiration_seconds=seconds,
        )
        return _json(
            {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {
                    "name": target.name,
                    "namespace": target.namespace,
                    "creationTimestamp": now_rfc3339(),
                },
                "spec": {
                    "audiences": spec.get("audiences") or ["https://kubevisor.local"],
                    "expirationSeconds": seconds,
                    "boundObjectRef": spec.get("boundObjectRef"),
                },
                "status": {
                    "token": token,
                    "expirationTimestamp": expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            },
            201,
        )

    async def _virtual(self, request: Request, target: Target, user: User) -> Response:
        kind = target.kind
        obj, _ = await self._body_object(request, kind, False)
        warnings: list[str] = []
        type_errors = admission.check_fields(
            kind, obj, field_validation="Warn", duplicates=[], warnings=warnings
        )
        if type_errors:
            raise errors.invalid(kind, None, type_errors)
        if kind.kind == "UploadTokenRequest" and target.namespace is not None:
            return _json(uploads.issue_token(self.tokens, user, target.namespace, obj), 201)
        if kind.kind == "SelfSubjectReview":
            obj["status"] = {
                "userInfo": {"username": user.name, "uid": user.uid, "groups": list(user.groups)}
            }
            obj.setdefault("metadata", {})["creationTimestamp"] = None
            return _json(obj, 201)
        spec = obj.get("spec") or {}
        ra = spec.get("resourceAttributes")
        nra = spec.get("nonResourceAttributes")
        if ra:
            attrs = Attributes(
                verb=ra.get("verb") or "",
                namespace=ra.get("namespace") or "",
                group=ra.get("group") or "",
                resource=ra.get("resource") or "",
                subresource=ra.get("subresource") or "",
                name=ra.get("name") or "",
            )
        elif nra:
            attrs = Attributes(verb=nra.get("verb") or "", path=nra.get("path") or "", resource_request=False)
        else:
            raise errors.invalid(
                kind,
                None,
                [
                    FieldError(
                        "spec",
                        "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                        "FieldValueRequired",
                    )
                ],
            )
        allowed, reason = await self.rbac.authorize(user, attrs)
        obj["status"] = {"allowed": allowed, **({"reason": reason} if reason else {})}
        obj.setdefault("metadata", {})["creationTimestamp"] = None
        return _json(obj, 201)


async def _options_body(request: Request) -> Obj:
    """A subresource's options object (e.g. AddVolumeOptions, StopOptions): the decoded body, {} if empty."""
    raw = await _read_body(request)
    if not raw.strip():
        return {}
    value, _ = admission.decode_body(raw, request.headers.get("content-type", JSON), track_duplicates=False)
    return value if isinstance(value, dict) else {}


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > admission.MAX_BODY:
            raise errors.ApiError(
                413, "RequestEntityTooLarge", f"request entity too large: limit is {admission.MAX_BODY} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def token_expiry(seconds: int) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
