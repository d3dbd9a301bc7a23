"""The aiohttp application of the test Kubernetes API server and `KubeApiServer`, which runs
it in the current event loop.

Request flow (one middleware): admin paths (`/_fault`, `/_audit`, `/_compact`, `/_state`)
bypass everything; then bearer-token authentication (401), the path is parsed into a request
info (verb, group, resource, namespace, name, subresource), the active fault applies, the
handler runs, and the request is audited with the final status code. Every error is a
Kubernetes `Status` object.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.k8s_apiserver import openapi
from tests.k8s_apiserver.audit import AuditLog, AuditRecord, now
from tests.k8s_apiserver.bodies import JSON, decode_body
from tests.k8s_apiserver.errors import ApiError, Reason, bad_request, status_object
from tests.k8s_apiserver.faults import FaultInjector, FaultMode, parse_fault
from tests.k8s_apiserver.patch import (
    JSON_PATCH,
    MERGE_PATCH,
    PATCH_TYPES,
    STRATEGIC_MERGE_PATCH,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.k8s_apiserver.resources import RESOURCES, ResourceType, find_resource, group_versions
from tests.k8s_apiserver.selectors import (
    FieldRequirement,
    FieldSelector,
    parse_field_selector,
    parse_label_selector,
)
from tests.k8s_apiserver.store import (
    EventType,
    ExpiredError,
    KubeObject,
    Store,
    StreamCut,
    parse_rv,
)
from tests.k8s_apiserver.watchhub import WatchItem, clone, selector_matcher, view

GIT_VERSION = "v1.32.0-pgwarden-test"
ANONYMOUS = "system:anonymous"
_TRUE = ("true", "True", "1")
_HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
_NAMESPACE_SUBRESOURCES = ("status", "finalize")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions:
    """How to run the server. `port=0` picks a free port. `tokens` maps bearer tokens to user
    names; when empty, no authentication is required (requests run as system:anonymous)."""

    host: str = "127.0.0.1"
    port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)
    audit_log: Path | None = None
    history_size: int = 1000
    bookmark_interval_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """What a request addresses, in RBAC terms."""

    verb: str
    is_resource: bool
    resource: ResourceType | None = None
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    api_group: str = ""
    api_version: str = ""


INFO_KEY = web.RequestKey("pgwarden_request_info", RequestInfo)
USER_KEY = web.RequestKey("pgwarden_user", str)
AUDITED_KEY = web.RequestKey("pgwarden_audited", bool)


def _json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=json.dumps)


def _error_response(err: ApiError) -> web.Response:
    response = _json_response(err.status(), status=err.code)
    if err.retry_after_s is not None:
        response.headers["Retry-After"] = str(err.retry_after_s)
    return response


def _resolve_path(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    """Parse an API path into a RequestInfo (is_resource=False for discovery and health)."""
    parts = [p for p in path.split("/") if p]
    read_verb = {"GET": "get", "HEAD": "get"}.get(method, method.lower())
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return RequestInfo(verb=read_verb, is_resource=False)
    if not rest:
        return RequestInfo(verb=read_verb, is_resource=False, api_group=group, api_version=version)
    watch_path = rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    # Otherwise /namespaces, /namespaces/{name}[/status|/finalize] address Namespace objects.
    plural = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if len(rest) > 3:
        raise ApiError(404, "the server could not find the requested resource", kind=plural)
    res = find_resource(group, version, plural)
    if res is None:
        raise ApiError(
            404, "the server could not find the requested resource", reason=Reason.NOT_FOUND
        )
    if res.namespaced is False and namespace:
        raise ApiError(404, "the server could not find the requested resource")
    is_watch = watch_path or query.get("watch") in _TRUE
    if method == "GET":
        verb = "watch" if is_watch else ("get" if name else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        raise ApiError(
            405, f"the server does not allow this method on the requested resource: {method}"
        )
    return RequestInfo(
        verb=verb,
        is_resource=True,
        resource=res,
        namespace=namespace,
        name=name,
        subresource=subresource,
        api_group=group,
        api_version=version,
    )


def _with_type(res: ResourceType, obj: KubeObject) -> KubeObject:
    obj["kind"] = res.kind
    obj["apiVersion"] = res.api_version
    return obj


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        created = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        return "<unknown>"
    seconds = int((datetime.datetime.now(datetime.UTC) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _table(res: ResourceType, objects: list[KubeObject], rv: str, include: str) -> KubeObject:
    """A meta.k8s.io/v1 Table (what kubectl get asks for) with Name, Age (+ Status for pods)."""
    columns: list[dict[str, Any]] = [
        {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
    ]
    if res.kind == "Pod":
        columns.append(
            {
                "name": "Status",
                "type": "string",
                "format": "",
                "description": "Phase",
                "priority": 0,
            }
        )
    columns.append(
        {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}
    )
    rows = []
    for obj in objects:
        meta = obj.get("metadata", {})
        cells: list[Any] = [meta.get("name", "")]
        if res.kind == "Pod":
            cells.append((obj.get("status") or {}).get("phase", "Unknown"))
        cells.append(_age(meta.get("creationTimestamp")))
        row: dict[str, Any] = {"cells": cells}
        if include == "Object":
            row["object"] = _with_type(res, clone(obj))
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns,
        "rows": rows,
    }


def _encode_continue(rv: int, namespace: str, name: str) -> str:
    raw = json.dumps({"rv": rv, "start": [namespace, name]}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(raw["rv"]), (str(raw["start"][0]), str(raw["start"][1]))
    except (binascii.Error, ValueError, KeyError, TypeError, IndexError):
        raise bad_request("continue key is not valid") from None


class ApiServerApp:
    """Handlers and state of one server (store, faults, audit)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.store = Store(history_size=options.history_size)
        self.faults = FaultInjector()
        self.audit = AuditLog(options.audit_log)
        self.app = web.Application(middlewares=[self._middleware])
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    # ---- middleware: admin bypass, auth, faults, audit, Status errors -------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/_"):
            try:
                return await self._admin(request)
            except ApiError as err:
                return _error_response(err)
        user = ANONYMOUS
        info = RequestInfo(verb=request.method.lower(), is_resource=False)
        code = 500
        try:
            path_error: ApiError | None = None
            try:
                info = _resolve_path(request.method, request.path, request.query)
            except ApiError as err:
                path_error = err  # reported after authentication, as the real server does
            user = self._authenticate(request)
            if path_error is not None:
                raise path_error
            request[INFO_KEY] = info
            request[USER_KEY] = user
            if request.path not in _HEALTH_PATHS:
                await self.faults.apply(request.method, request.path)
            response = await handler(request)
            code = response.status
            return response
        except ApiError as err:
            code = err.code
            return _error_response(err)
        except asyncio.CancelledError:
            code = 499  # the client went away first (nginx's "client closed request")
            raise
        finally:
            if not request.get(AUDITED_KEY):
                self._audit(request, user, info, code)

    def _audit(self, request: web.Request, user: str, info: RequestInfo, code: int) -> None:
        request[AUDITED_KEY] = True
        res = info.resource
        self.audit.add(
            AuditRecord(
                ts=now(),
                user=user,
                method=request.method,
                path=request.path,
                code=code,
                is_resource=info.is_resource,
                verb=info.verb,
                api_group=res.group if res is not None else info.api_group,
                api_version=res.version if res is not None else info.api_version,
                resource=res.plural if res is not None else "",
                subresource=info.subresource,
                namespace=info.namespace,
                name=info.name,
                content_type=request.content_type if request.body_exists else "",
            )
        )

    def _authenticate(self, request: web.Request) -> str:
        tokens = self.options.tokens
        if not tokens:
            return ANONYMOUS
        if request.path in _HEALTH_PATHS:
            return ANONYMOUS
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        user = tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(401, "Unauthorized", reason=Reason.UNAUTHORIZED)
        return user

    # ---- admin endpoints -----------------------------------------------------------------

    async def _admin(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/_fault" and method == "POST":
            fault = parse_fault(await self._json_body(request))
            cut = 0
            if fault.mode is FaultMode.CUT_WATCHES:
                cut = self.store.cut_watches(
                    StreamCut.ABRUPT if fault.abrupt else StreamCut.GRACEFUL
                )
            if fault.mode is FaultMode.STALL_WATCHES:
                cut = self.store.stall_watches(fault.path_prefix)
            self.faults.set(fault)
            return _json_response({"fault": fault.to_json(), "cut_watches": cut})
        if path == "/_fault" and method == "GET":
            active = self.faults.active
            return _json_response(
                {"fault": active.to_json() if active else None, "hung": self.faults.hung_requests}
            )
        if path == "/_audit" and method == "GET":
            return _json_response({"items": [r.to_json() for r in self.audit.records]})
        if path == "/_audit" and method == "DELETE":
            self.audit.clear()
            return _json_response({"items": []})
        if path == "/_compact" and method == "POST":
            self.store.compact()
            return _json_response({"resourceVersion": str(self.store.resource_version)})
        if path == "/_state" and method == "GET":
            return _json_response(
                {
                    "resourceVersion": str(self.store.resource_version),
                    "oldestResumable": str(self.store.oldest_resumable_rv),
                    "openWatches": self.store.open_watches,
                    "requestsByVerb": dict(self.audit.verbs),
                    "requestsByKind": dict(self.audit.kinds),
                    "refusedByKind": dict(self.audit.refused),
                    "throttled": self.faults.throttled,
                }
            )
        raise ApiError(404, f"no admin endpoint {method} {path}")

    # ---- dispatch ------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        info: RequestInfo = request[INFO_KEY]
        if not info.is_resource:
            return self._discovery(request, info)
        res = info.resource
        assert res is not None
        if info.subresource and not (info.subresource == "status" and res.has_status):
            raise ApiError(404, "the server could not find the requested resource")
        if info.verb in ("update", "patch") and not info.name:
            raise ApiError(405, "the server does not allow this method on the requested resource")
        match info.verb:
            case "get":
                return self._get(request, res, info)
            case "list":
                return self._list(request, res, info)
            case "watch":
                return await self._watch(request, res, info)
            case "create":
                if info.name:
                    raise ApiError(
                        405, "the server does not allow this method on the requested resource"
                    )
                obj = self.store.create(res, info.namespace, await self._object_body(request))
                return _json_response(obj, status=201)
            case "update":
                obj, created = self.store.update(
                    res,
                    info.namespace,
                    info.name,
                    await self._object_body(request),
                    subresource=info.subresource or None,
                )
                return _json_response(obj, status=201 if created else 200)
            case "patch":
                return await self._patch(request, res, info)
            case "delete":
                return await self._delete(request, res, info)
            case "deletecollection":
                return self._delete_collection(request, res, info)
        raise ApiError(405, f"the server does not allow this method: {request.method}")

    async def _json_body(self, request: web.Request) -> Any:
        return decode_body(JSON, await request.read())

    async def _object_body(self, request: web.Request) -> Any:
        """A create, update or delete body in any media type the server decodes (415 for
        the others, as a real server answers a media type it does not accept)."""
        content_type = request.content_type if "Content-Type" in request.headers else None
        return decode_body(content_type, await request.read())

    # ---- discovery -----------------------------------------------------------------------

    def _discovery(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in _HEALTH_PATHS:
            return web.Response(text="ok")
        if path == "/version":
            return _json_response(
                {
                    "major": "1",
                    "minor": "32",
                    "gitVersion": GIT_VERSION,
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.23.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            )
        if path == "/openapi/v3":
            return _json_response(openapi.index())
        if path.startswith("/openapi/v3/"):
            rest = path.removeprefix("/openapi/v3/").split("/")
            doc = None
            if rest[0] == "api" and len(rest) == 2:
                doc = openapi.gv_document("", rest[1])
            elif rest[0] == "apis" and len(rest) == 3:
                doc = openapi.gv_document(rest[1], rest[2])
            if doc is not None:
                return _json_response(doc)
        host = request.host
        if path == "/api":
            return _json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": host}
                    ],
                }
            )
        if path == "/apis":
            return _json_response(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._group(g, vs) for g, vs in group_versions().items() if g],
                }
            )
        parts = [p for p in path.split("/") if p]
        if parts[0] == "apis" and len(parts) == 2:
            versions = group_versions().get(parts[1])
            if versions:
                group = self._group(parts[1], versions)
                return _json_response({"kind": "APIGroup", "apiVersion": "v1", **group})
        if info.api_version and (
            (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3)
        ):
            resources = [
                r for r in RESOURCES if r.group == info.api_group and r.version == info.api_version
            ]
            if resources:
                return _json_response(
                    self._resource_list(info.api_group, info.api_version, resources)
                )
        raise ApiError(404, "the server could not find the requested resource")

    @staticmethod
    def _group(name: str, versions: list[str]) -> dict[str, Any]:
        listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": listed, "preferredVersion": listed[0]}

    @staticmethod
    def _resource_list(group: str, version: str, resources: list[ResourceType]) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for res in resources:
            entry: dict[str, Any] = {
                "name": res.plural,
                "singularName": res.singular,
                "namespaced": res.namespaced,
                "kind": res.kind,
                "verbs": list(
                    (
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    )
                ),
            }
            if res.short_names:
                entry["shortNames"] = list(res.short_names)
            entries.append(entry)
            if res.has_status:
                entries.append(
                    {
                        "name": f"{res.plural}/status",
                        "singularName": "",
                        "namespaced": res.namespaced,
                        "kind": res.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": version if group == "" else f"{group}/{version}",
            "resources": entries,
        }

    # ---- reads ---------------------------------------------------------------------------

    def _selectors(
        self, request: web.Request, res: ResourceType, name: str
    ) -> tuple[Callable[[KubeObject], bool], Any, FieldSelector]:
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"), res.kind)
        if name:
            fields = FieldSelector(
                requirements=(
                    *fields.requirements,
                    FieldRequirement(path="metadata.name", value=name, negated=False),
                )
            )

        return selector_matcher(labels, fields), labels, fields

    def _get(
        self, request: web.Request, res: ResourceType, info: RequestInfo
    ) -> web.StreamResponse:
        obj = self.store.get(res, info.namespace, info.name)
        if _wants_table(request):
            include = request.query.get("includeObject", "Metadata")
            return _json_response(_table(res, [obj], obj["metadata"]["resourceVersion"], include))
        return _json_response(obj)

    def _list(
        self, request: web.Request, res: ResourceType, info: RequestInfo
    ) -> web.StreamResponse:
        _, labels, fields = self._selectors(request, res, "")
        query = request.query
        namespace = info.namespace if res.namespaced and info.namespace else None
        rv = parse_rv(query.get("resourceVersion"))
        match_mode = query.get("resourceVersionMatch", "")
        continue_token = query.get("continue", "")
        start: tuple[str, str] | None = None
        at_rv: int | None = None
        if continue_token:
            at_rv, start = _decode_continue(continue_token)
        elif match_mode == "Exact":
            if not rv:
                raise bad_request("resourceVersionMatch=Exact requires a non-zero resourceVersion")
            at_rv = rv
        elif match_mode not in ("", "NotOlderThan"):
            raise bad_request(f"unsupported resourceVersionMatch {match_mode!r}")
        elif rv is not None and rv > self.store.resource_version:
            raise ApiError(
                504,
                f"Too large resource version: {rv}, current: {self.store.resource_version}",
                reason=Reason.TIMEOUT,
            )
        try:
            items = self.store.list_objects(res, namespace, labels, fields, at_rv=at_rv)
        except ExpiredError as exc:
            message = (
                "The provided continue parameter is too old to display a consistent list result."
                " You can start a new list without the continue parameter."
                if continue_token
                else f"too old resource version: {exc.requested} ({exc.oldest})"
            )
            raise ApiError(410, message, reason=Reason.EXPIRED) from None
        list_rv = at_rv if at_rv is not None else self.store.resource_version
        if start is not None:
            items = [
                o
                for o in items
                if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start
            ]
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        limit_text = query.get("limit", "")
        limit = int(limit_text) if limit_text.isdigit() else 0
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = _encode_continue(list_rv, last.get("namespace", ""), last["name"])
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if _wants_table(request):
            include = query.get("includeObject", "Metadata")
            table = _table(res, items, str(list_rv), include)
            table["metadata"] = meta
            return _json_response(table)
        for item in items:
            # Items of typed lists carry no kind/apiVersion on the wire (the list has them).
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return _json_response(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": meta,
                "items": items,
            }
        )

    # ---- watch ---------------------------------------------------------------------------

    async def _watch(
        self, request: web.Request, res: ResourceType, info: RequestInfo
    ) -> web.StreamResponse:
        query = request.query
        matches, labels, fields = self._selectors(request, res, info.name)
        namespace = info.namespace if res.namespaced else ""
        rv = parse_rv(query.get("resourceVersion"))
        timeout_text = query.get("timeoutSeconds", "")
        timeout_s = float(timeout_text) if timeout_text else None
        bookmarks = query.get("allowWatchBookmarks") in _TRUE
        send_initial = query.get("sendInitialEvents") in _TRUE
        if send_initial and query.get("resourceVersionMatch") != "NotOlderThan":
            raise ApiError(
                422,
                "sendInitialEvents requires resourceVersionMatch=NotOlderThan",
                reason=Reason.INVALID,
            )
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s

        if rv and not send_initial and rv > self.store.resource_version:
            # The real server first waits up to 3 s for the resourceVersion to appear.
            raise ApiError(
                504,
                f"Too large resource version: {rv}, current: {self.store.resource_version}",
                reason=Reason.TIMEOUT,
            )
        # Subscribe + snapshot with no await in between: no event missed or duplicated.
        sub = self.store.subscribe(
            res, namespace=namespace, labels=labels, fields=fields, path=request.path
        )
        first: list[tuple[EventType, KubeObject]] = []
        expired: ExpiredError | None = None
        if rv is None or rv == 0 or send_initial:
            first = [
                (EventType.ADDED, _with_type(res, obj))
                for obj in self.store.list_objects(res, namespace or None, labels, fields)
            ]
        else:
            try:
                # Only the events the watch's index lets through are matched (a resume
                # from a minute back would otherwise match every pod heartbeat since).
                for event in self.store.events_since(res, rv, could_see=sub.could_see):
                    seen = view(event, namespace, matches)
                    if seen is not None:
                        first.append(seen)
            except ExpiredError as exc:
                expired = exc
        try:
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            self._audit(request, request[USER_KEY], info, 200)
            if expired is not None:
                status = status_object(code=410, reason=Reason.EXPIRED, message=str(expired))
                await self._send(response, "ERROR", status)
                await response.write_eof()
                return response
            include = request.query.get("includeObject", "Metadata")
            table = (res, include) if _wants_table(request) else None
            for kind, obj in first:
                await self._send(response, str(kind), obj, table=table)
            if send_initial and bookmarks:
                await self._send(response, "BOOKMARK", self._bookmark(res, initial_end=True))
            while True:
                wait = self.options.bookmark_interval_s if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0 and sub.stalled and request.transport is not None:
                        request.transport.abort()  # a dead connection never ends cleanly
                        return response
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    async with asyncio.timeout(wait):
                        item = await sub.queue.get()
                except TimeoutError:
                    if bookmarks and sub.queue.empty() and not sub.stalled:
                        await self._send(response, "BOOKMARK", self._bookmark(res))
                    continue
                if item is StreamCut.ABRUPT:
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if item is StreamCut.GRACEFUL:
                    break
                assert isinstance(item, WatchItem)
                if sub.stalled:
                    continue
                if table is None:
                    await response.write(item.line)  # encoded once for every watch (watchhub)
                else:
                    await self._send(response, str(item.type), item.obj, table=table)
            await response.write_eof()
            return response
        except ConnectionResetError:
            # The client went away (it timed out, or closed the stream): nothing to answer,
            # and no traceback per stream (under overload these were thousands, each costly).
            return response
        finally:
            self.store.unsubscribe(sub)

    def _bookmark(self, res: ResourceType, *, initial_end: bool = False) -> KubeObject:
        meta: dict[str, Any] = {"resourceVersion": str(self.store.resource_version)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}

    @staticmethod
    async def _send(
        response: web.StreamResponse,
        kind: str,
        obj: KubeObject,
        *,
        table: tuple[ResourceType, str] | None = None,
    ) -> None:
        """One event line; `table` (the includeObject mode) wraps objects in a one-row Table,
        as the real server does for `kubectl get -w`."""
        if table is not None and kind in ("ADDED", "MODIFIED", "DELETED"):
            res, include = table
            obj = _table(res, [obj], obj["metadata"]["resourceVersion"], include)
        line = json.dumps({"type": kind, "object": obj}) + "\n"
        await response.write(line.encode())

    # ---- writes --------------------------------------------------------------------------

    async def _patch(
        self, request: web.Request, res: ResourceType, info: RequestInfo
    ) -> web.StreamResponse:
        content_type = request.content_type
        if content_type not in PATCH_TYPES:
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types include:"
                f" {', '.join(PATCH_TYPES)}",
                reason=Reason.UNSUPPORTED_MEDIA_TYPE,
            )
        patch = await self._json_body(request)
        current = self.store.get(res, info.namespace, info.name)
        current_rv = current["metadata"]["resourceVersion"]
        if content_type == JSON_PATCH:
            patched = json_patch(current, patch)
        elif content_type == MERGE_PATCH:
            if not isinstance(patch, dict):
                raise bad_request("a merge patch must be a JSON object")
            patched = merge_patch(current, patch)
        else:
            assert content_type == STRATEGIC_MERGE_PATCH
            if not isinstance(patch, dict):
                raise bad_request("a strategic merge patch must be a JSON object")
            patched = strategic_merge_patch(current, patch)
        if not isinstance(patched, dict):
            raise ApiError(422, "the patched object is not a JSON object", reason=Reason.INVALID)
        meta = patched.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
            patched["metadata"] = meta
        # The patch was applied to the current version: it is conditional on that version
        # unless the patch itself names another one (then a mismatch is a 409 Conflict).
        if not meta.get("resourceVersion"):
            meta["resourceVersion"] = current_rv
        obj, _ = self.store.update(
            res, info.namespace, info.name, patched, subresource=info.subresource or None
        )
        return _json_response(obj)

    async def _delete(
        self, request: web.Request, res: ResourceType, info: RequestInfo
    ) -> web.StreamResponse:
        body = await self._object_body(request)
        precondition_rv: int | None = None
        precondition_uid: str | None = None
        if body is not None:
            if not isinstance(body, dict):
                raise bad_request("DeleteOptions must be a JSON object")
            pre = body.get("preconditions") or {}
            if not isinstance(pre, dict):
                raise bad_request("preconditions must be an object")
            precondition_rv = parse_rv(pre.get("resourceVersion"))
            precondition_uid = pre.get("uid") or None
        gone = self.store.delete(
            res,
            info.namespace,
            info.name,
            precondition_rv=precondition_rv,
            precondition_uid=precondition_uid,
        )
        if res.delete_returns_object:
            return _json_response(gone)
        details: dict[str, Any] = {
            "name": info.name,
            "kind": res.plural,
            "uid": gone["metadata"]["uid"],
        }
        if res.group:
            details["group"] = res.group
        return _json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        )

    def _delete_collection(
        self, request: web.Request, res: ResourceType, info: RequestInfo
    ) -> web.StreamResponse:
        _, labels, fields = self._selectors(request, res, "")
        namespace = info.namespace if res.namespaced and info.namespace else None
        items = self.store.list_objects(res, namespace, labels, fields)
        self.store.delete_many(
            res, [(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in items]
        )
        return _json_response(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": items,
            }
        )


class KubeApiServer:
    """The test API server running in the current event loop.

    `async with KubeApiServer(ServerOptions(...)) as server:` starts it on `server.url`;
    `server.store`, `server.faults` and `server.audit` give direct access from the test.
    Stopping ends open watches cleanly and releases hung requests first.
    """

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.options = options if options is not None else ServerOptions()
        self._api = ApiServerApp(self.options)
        self._runner: web.AppRunner | None = None
        self._port = self.options.port

    @property
    def store(self) -> Store:
        """The object store."""
        return self._api.store

    def store_resource(self, plural: str, group: str = "", version: str = "v1") -> ResourceType:
        """The ResourceType of `plural` (for direct `store` calls from tests)."""
        res = find_resource(group, version, plural)
        if res is None:
            raise KeyError(plural)
        return res

    @property
    def faults(self) -> FaultInjector:
        """The fault injector (set/clear faults from Python)."""
        return self._api.faults

    @property
    def audit(self) -> AuditLog:
        """The audit log."""
        return self._api.audit

    @property
    def app(self) -> web.Application:
        """The aiohttp application."""
        return self._api.app

    @property
    def tls(self) -> bool:
        """Whether the server speaks HTTPS."""
        return self.options.tls_cert is not None

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:43121."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.options.host}:{self._port}"

    def cut_watches(self, *, abrupt: bool = False) -> int:
        """End every open watch stream now; returns how many there were."""
        return self.store.cut_watches(StreamCut.ABRUPT if abrupt else StreamCut.GRACEFUL)

    def stall_watches(self, path_prefix: str | None = None) -> int:
        """Make the open watch streams (whose path starts with `path_prefix`) go silent
        without a word (FaultMode.STALL_WATCHES); returns how many."""
        return self.store.stall_watches(path_prefix)

    async def wait_for_watches(self, count: int, timeout_s: float = 5.0) -> None:
        """Return once at least `count` watches are open (TimeoutError after `timeout_s`)."""
        async with asyncio.timeout(timeout_s):
            for _ in iter(int, 1):  # until the timeout cancels it
                if self.store.open_watches >= count:
                    return
                await asyncio.sleep(0.01)

    async def start(self) -> None:
        """Bind and serve (returns once listening)."""
        ssl_context: ssl.SSLContext | None = None
        if self.options.tls_cert is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(str(self.options.tls_cert), str(self.options.tls_key))
        # handler_cancellation: a client that gives up (timeout) also ends its hung or
        # streaming handler, as on a real server.
        runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await runner.setup()
        # A backlog as deep as a Go server's (somaxconn): hundreds of watches opened at once
        # (bench/scale.py) overflowed aiohttp's 128 and waited out SYN retransmissions.
        site = web.TCPSite(
            runner,
            self.options.host,
            self.options.port,
            ssl_context=ssl_context,
            backlog=4096,
        )
        await site.start()
        self._runner = runner
        for address in runner.addresses:
            self._port = int(address[1])
            break

    async def stop(self) -> None:
        """Stop serving: end watches, release hung requests, close the listener."""
        if self._runner is None:
            return
        self.cut_watches()
        self.faults.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> KubeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
