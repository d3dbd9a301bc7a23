"""The in-memory object store: one cluster-wide resourceVersion, a bounded event history for
watch resumption, and live watch subscriptions.

Every method is synchronous, so each operation is atomic with respect to the event loop: a
watch handler that replays history and subscribes without awaiting in between can neither
miss nor duplicate an event.

Semantics kept from the real apiserver (registry/generic/registry/store.go):
- the resourceVersion is a decimal string that increases on every write, shared by all kinds;
  a write that changes nothing (same object) does not bump it and sends no event;
- PUT with a stale `metadata.resourceVersion` is a 409 Conflict; PUT without one is an
  unconditional update, except for kinds that forbid it (Lease: 422 Invalid);
- PUT on a missing object creates it for Endpoints, Service, Lease (the resourceVersion in the
  body is then ignored, as in the real server) and is a 404 for the others;
- create in a namespace that does not exist is a 404 for the namespace;
- the main resource of a kind with a /status subresource ignores changes to `status`, the
  status subresource changes nothing but `status`; (deviation) a create keeps the `status` it
  is given, so tests can make pods with a podIP directly; without one a Pod gets
  `phase: Pending`;
- DELETED events carry the object with the resourceVersion of the deletion.
Not emulated: finalizers / graceful deletion (objects go at once), managedFields, admission,
validation of spec fields.
"""

from __future__ import annotations

import datetime
import re
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from tests.k8s_apiserver import validation
from tests.k8s_apiserver.errors import ApiError, Reason, bad_request
from tests.k8s_apiserver.resources import RESOURCES, ResourceType, find_resource
from tests.k8s_apiserver.selectors import FieldSelector, LabelSelector
from tests.k8s_apiserver.watchhub import (
    EventType,
    StoreEvent,
    StreamCut,
    Subscription,
    WatchHub,
    clone,
)

KubeObject = dict[str, Any]  # an arbitrary Kubernetes object as decoded JSON
__all__ = ["EventType", "ExpiredError", "KubeObject", "Store", "StoreEvent", "StreamCut"]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class ExpiredError(Exception):
    """The requested resourceVersion is older than the retained history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


def now_rfc3339() -> str:
    """Wall-clock time as Kubernetes writes timestamps (seconds, UTC, `Z`)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rv(value: Any) -> int | None:
    """A resourceVersion as an int; None when empty; 400 when not a decimal string."""
    if value is None or value == "":
        return None
    text = str(value)
    if not text.isdigit():
        raise bad_request(f"invalid resource version: {text!r}")
    return int(text)


def _meta(obj: KubeObject) -> dict[str, Any]:
    meta = obj.get("metadata")
    if meta is None:
        meta = {}
        obj["metadata"] = meta
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    return meta


def _not_found(res: ResourceType, name: str) -> ApiError:
    return ApiError(
        404,
        f'{res.group_resource} "{name}" not found',
        reason=Reason.NOT_FOUND,
        name=name,
        kind=res.plural,
        group=res.group,
    )


def conflict(res: ResourceType, name: str, detail: str) -> ApiError:
    """409 Conflict as the real server words it."""
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {res.group_resource} "{name}": {detail}',
        reason=Reason.CONFLICT,
        name=name,
        kind=res.plural,
        group=res.group,
    )


def _invalid(res: ResourceType, name: str, detail: str) -> ApiError:
    return ApiError(
        422,
        f'{res.kind} "{name}" is invalid: {detail}',
        reason=Reason.INVALID,
        name=name,
        kind=res.kind,
        group=res.group,
    )


def _check_string_map(res: ResourceType, name: str, meta: dict[str, Any], key: str) -> None:
    value = meta.get(key)
    if value is None:
        meta.pop(key, None)
        return
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise bad_request(f"metadata.{key} must be a map of strings to strings")
    if key == "labels":
        for k, v in value.items():
            if not _LABEL_KEY_RE.match(k) or len(k.rsplit("/", 1)[-1]) > 63:
                raise _invalid(res, name, f'metadata.labels: Invalid value: "{k}": invalid key')
            if not _LABEL_VALUE_RE.match(v) or len(v) > 63:
                raise _invalid(res, name, f'metadata.labels: Invalid value: "{v}": invalid value')


def _spec_of(obj: KubeObject) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _without_rv(obj: KubeObject) -> KubeObject:
    clone = dict(obj)
    clone["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return clone


class Store:
    """All objects of the fake cluster. See the module docstring for the semantics."""

    def __init__(self, *, history_size: int = 1000, initial_rv: int = 100) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self._objects: dict[str, dict[tuple[str, str], KubeObject]] = {
            res.group_resource: {} for res in RESOURCES
        }
        self._rv = initial_rv
        self._history: deque[StoreEvent] = deque(maxlen=history_size)
        # Resuming a watch from a resourceVersion >= this is possible (no event lost).
        self._oldest_resumable = initial_rv
        self._watches = WatchHub()
        namespaces = find_resource("", "v1", "namespaces")
        assert namespaces is not None
        for name in INITIAL_NAMESPACES:
            self.create(namespaces, "", {"metadata": {"name": name}})

    # ---- introspection -------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The current (latest) cluster-wide resourceVersion."""
        return self._rv

    @property
    def oldest_resumable_rv(self) -> int:
        """The oldest resourceVersion a watch can resume from."""
        return self._oldest_resumable

    def compact(self) -> None:
        """Forget all history (like an etcd compaction): older resourceVersions expire."""
        self._history.clear()
        self._oldest_resumable = self._rv

    # ---- watch plumbing ------------------------------------------------------------------

    def subscribe(
        self,
        res: ResourceType,
        *,
        namespace: str = "",
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        path: str = "",
    ) -> Subscription:
        """A queue receiving what a watch of `res` with these selectors sees of every future
        event (watchhub.py)."""
        objects = self._objects[res.group_resource].values()

        def carriers(key: str, value: str) -> int:
            return sum(1 for o in objects if (o["metadata"].get("labels") or {}).get(key) == value)

        return self._watches.subscribe(
            res,
            namespace=namespace,
            labels=labels if labels is not None else LabelSelector(),
            fields=fields if fields is not None else FieldSelector(),
            carriers=carriers,
            path=path,
        )

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering events to `sub` (idempotent)."""
        self._watches.unsubscribe(sub)

    def cut_watches(self, how: StreamCut) -> int:
        """Tell every open watch to end (cleanly or abruptly); returns how many were open."""
        for sub in self._watches:
            sub.queue.put_nowait(how)
        return len(self._watches)

    def stall_watches(self, path_prefix: str | None) -> int:
        """Make the open watches whose path starts with `path_prefix` (all: None) go silent
        forever, as over a connection that died without a word; returns how many."""
        stalled = [
            sub for sub in self._watches if path_prefix is None or sub.path.startswith(path_prefix)
        ]
        for sub in stalled:
            sub.stalled = True
        return len(stalled)

    @property
    def open_watches(self) -> int:
        """How many watch subscriptions are open."""
        return len(self._watches)

    def events_since(
        self,
        res: ResourceType,
        rv: int,
        *,
        could_see: Callable[[StoreEvent], bool] | None = None,
    ) -> list[StoreEvent]:
        """The retained events of `res` after `rv` (those `could_see` lets through);
        ExpiredError when some were forgotten. Scans back from the newest (a watch resumes
        from a recent resourceVersion)."""
        if rv < self._oldest_resumable:
            raise ExpiredError(rv, self._oldest_resumable)
        found: list[StoreEvent] = []
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.resource is res and (could_see is None or could_see(event)):
                found.append(event)
        found.reverse()
        return found

    def _record(
        self,
        *,
        kind: EventType,
        res: ResourceType,
        namespace: str,
        name: str,
        obj: KubeObject,
        prev: KubeObject | None,
    ) -> None:
        if len(self._history) == self._history.maxlen:
            self._oldest_resumable = self._history[0].rv
        event = StoreEvent(
            rv=self._rv, type=kind, resource=res, namespace=namespace, name=name, obj=obj, prev=prev
        )
        self._history.append(event)
        self._watches.publish(event)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    # ---- reads ---------------------------------------------------------------------------

    def get(self, res: ResourceType, namespace: str, name: str) -> KubeObject:
        """A copy of the object; 404 when absent."""
        obj = self._objects[res.group_resource].get((namespace, name))
        if obj is None:
            raise _not_found(res, name)
        return clone(obj)

    def list_objects(
        self,
        res: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        at_rv: int | None = None,
    ) -> list[KubeObject]:
        """Copies of matching objects in key order (namespace, name); `namespace=None` lists
        all namespaces. `at_rv` lists the state as of that resourceVersion (reconstructed
        from the history; ExpiredError when too old, 504 when in the future)."""
        objects = self._objects[res.group_resource]
        if at_rv is not None and at_rv != self._rv:
            objects = self._state_at(res, at_rv)
        return [
            clone(obj)
            for key, obj in sorted(objects.items())
            if (namespace is None or key[0] == namespace)
            and labels.matches(obj["metadata"].get("labels") or {})
            and fields.matches(obj)
        ]

    def _state_at(self, res: ResourceType, rv: int) -> dict[tuple[str, str], KubeObject]:
        if rv > self._rv:
            raise ApiError(
                504,
                f"Too large resource version: {rv}, current: {self._rv}",
                reason=Reason.TIMEOUT,
            )
        if rv < self._oldest_resumable:
            raise ExpiredError(rv, self._oldest_resumable)
        state = dict(self._objects[res.group_resource])
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.resource is not res:
                continue
            key = (event.namespace, event.name)
            if event.prev is None:
                state.pop(key, None)
            else:
                state[key] = event.prev
        return state

    def namespace_exists(self, name: str) -> bool:
        """Whether the Namespace object exists."""
        return ("", name) in self._objects["namespaces"]

    # ---- writes --------------------------------------------------------------------------

    def _check_body(self, res: ResourceType, namespace: str, obj: Any) -> KubeObject:
        if not isinstance(obj, dict):
            raise bad_request("the request body must be a JSON object")
        kind = obj.get("kind")
        if kind not in (None, "", res.kind):
            raise bad_request(f"the kind in the data ({kind}) does not match {res.kind}")
        api_version = obj.get("apiVersion")
        if api_version not in (None, "", res.api_version):
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API"
                f" version ({res.api_version})"
            )
        meta = _meta(obj)
        body_ns = meta.get("namespace")
        if res.namespaced:
            if body_ns not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on"
                    " the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        obj["kind"] = res.kind
        obj["apiVersion"] = res.api_version
        return obj

    def create(self, res: ResourceType, namespace: str, body: Any) -> KubeObject:
        """POST: store a new object; 409 AlreadyExists, 404 for a missing namespace."""
        obj = self._check_body(res, namespace, clone(body))
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
        if not isinstance(name, str) or not name:
            raise _invalid(
                res, "", "metadata.name: Required value: name or generateName is required"
            )
        if len(name) > 253 or not _NAME_RE.match(name):
            raise _invalid(
                res,
                name,
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must'
                " consist of lower case alphanumeric characters, '-' or '.'",
            )
        if found := validation.problems(res, obj):
            raise _invalid(res, name, ", ".join(found))
        if meta.get("resourceVersion"):
            # The real server's storage layer refuses this with a plain error: a 500.
            raise ApiError(
                500,
                "Internal error occurred: resourceVersion should not be set on objects to be"
                " created",
                reason=Reason.INTERNAL_ERROR,
            )
        if res.namespaced and not self.namespace_exists(namespace):
            ns_res = find_resource("", "v1", "namespaces")
            assert ns_res is not None
            raise _not_found(ns_res, namespace)
        key = (namespace if res.namespaced else "", name)
        if key in self._objects[res.group_resource]:
            raise ApiError(
                409,
                f'{res.group_resource} "{name}" already exists',
                reason=Reason.ALREADY_EXISTS,
                name=name,
                kind=res.plural,
                group=res.group,
            )
        _check_string_map(res, name, meta, "labels")
        _check_string_map(res, name, meta, "annotations")
        meta["name"] = name
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("deletionTimestamp", None)
        if res.has_generation:
            meta["generation"] = 1
        if res.kind == "Pod" and not obj.get("status"):
            obj["status"] = {"phase": "Pending"}  # what the real pod strategy starts with
        if res.kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        meta["resourceVersion"] = self._next_rv()
        self._objects[res.group_resource][key] = obj
        self._record(kind=EventType.ADDED, res=res, namespace=key[0], name=name, obj=obj, prev=None)
        return clone(obj)

    def update(
        self,
        res: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> tuple[KubeObject, bool]:
        """PUT (or the write of a PATCH): returns (object, created). See the module docstring
        for the resourceVersion rules."""
        obj = self._check_body(res, namespace, clone(body))
        meta = obj["metadata"]
        body_name = meta.get("name")
        if body_name not in (None, "", name):
            raise bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        key = (namespace if res.namespaced else "", name)
        old = self._objects[res.group_resource].get(key)
        if old is None:
            if not res.create_on_update or subresource is not None:
                raise _not_found(res, name)
            meta.pop("resourceVersion", None)
            meta.pop("uid", None)
            return self.create(res, namespace, obj), True
        wanted_rv = parse_rv(meta.get("resourceVersion"))
        old_meta = old["metadata"]
        if wanted_rv is None:
            if not res.unconditional_update:
                raise _invalid(
                    res,
                    name,
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                )
        elif wanted_rv != int(old_meta["resourceVersion"]):
            raise conflict(
                res,
                name,
                "the object has been modified; please apply your changes to the latest version"
                " and try again",
            )
        uid = meta.get("uid")
        if uid not in (None, "", old_meta["uid"]):
            raise conflict(
                res,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta:"
                f" {old_meta['uid']}",
            )
        if res.has_status and subresource == "status":
            new = clone(old)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
        else:
            new = obj
            _check_string_map(res, name, meta, "labels")
            _check_string_map(res, name, meta, "annotations")
            if res.has_status:
                if "status" in old:
                    new["status"] = clone(old["status"])
                else:
                    new.pop("status", None)
            for keep in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if keep in old_meta:
                    meta[keep] = old_meta[keep]
                else:
                    meta.pop(keep, None)
            if res.has_generation and _spec_of(new) != _spec_of(old):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if _without_rv(new) == _without_rv(old):
            return clone(old), False  # a no-op write: no new resourceVersion, no event
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[res.group_resource][key] = new
        self._record(
            kind=EventType.MODIFIED, res=res, namespace=key[0], name=name, obj=new, prev=old
        )
        return clone(new), False

    def delete(
        self,
        res: ResourceType,
        namespace: str,
        name: str,
        *,
        precondition_rv: int | None = None,
        precondition_uid: str | None = None,
    ) -> KubeObject:
        """DELETE: remove the object now; 409 Conflict when a precondition fails."""
        key = (namespace if res.namespaced else "", name)
        old = self._objects[res.group_resource].get(key)
        if old is None:
            raise _not_found(res, name)
        old_meta = old["metadata"]
        if precondition_uid and precondition_uid != old_meta["uid"]:
            raise conflict(
                res,
                name,
                f"Precondition failed: UID in precondition: {precondition_uid}, UID in object"
                f" meta: {old_meta['uid']}",
            )
        if precondition_rv is not None and precondition_rv != int(old_meta["resourceVersion"]):
            raise conflict(
                res,
                name,
                f"Precondition failed: ResourceVersion in precondition: {precondition_rv},"
                f" ResourceVersion in object meta: {old_meta['resourceVersion']}",
            )
        if res.kind == "Namespace":
            self._delete_namespace_contents(name)
        del self._objects[res.group_resource][key]
        gone = clone(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._record(
            kind=EventType.DELETED, res=res, namespace=key[0], name=name, obj=gone, prev=old
        )
        return clone(gone)

    def _delete_namespace_contents(self, namespace: str) -> None:
        for res in RESOURCES:
            if not res.namespaced:
                continue
            for ns, name in [k for k in self._objects[res.group_resource] if k[0] == namespace]:
                self.delete(res, ns, name)

    def delete_many(self, res: ResourceType, keys: Iterable[tuple[str, str]]) -> None:
        """Delete each (namespace, name) that still exists (deletecollection)."""
        for namespace, name in keys:
            if (namespace, name) in self._objects[res.group_resource]:
                self.delete(res, namespace, name)
