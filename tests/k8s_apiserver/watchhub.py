"""Live watch subscriptions and the fan-out of store events to them.

A write reaches only the watches that can see it: each subscription is indexed by the exact
object name of a `metadata.name=X` field selector (or the URL's name) or else by one
equality requirement of its label selector (`k=v`, `k in (v)`); only the rest (no such
requirement: list-all watches, kubectl) is scanned on every event of its resource. Each
candidate applies the real cacher's rules (`view`); the JSON line of an event is encoded once
and shared by every watch that sees it unchanged.

Before the index, every write woke every watch of its kind: at 100 three-member clusters (300
pod watches, 300 Lease watches) a Lease renewal cost 300 task wake-ups and selector checks,
and the server answered in seconds (bench/scale.py, docs/kubernetes.md "Scale").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, cast

from tests.k8s_apiserver.resources import ResourceType
from tests.k8s_apiserver.selectors import FieldSelector, LabelSelector, Op

KubeObject = dict[str, Any]  # an arbitrary Kubernetes object as decoded JSON


class EventType(StrEnum):
    """Watch event types."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreEvent:
    """One write: the object after it (for DELETED, the deleted object stamped with the
    deletion's resourceVersion) and before it (None for ADDED)."""

    rv: int
    type: EventType
    resource: ResourceType
    namespace: str
    name: str
    obj: KubeObject
    prev: KubeObject | None


@dataclass(frozen=True, slots=True)
class WatchItem:
    """One event as a watch sees it, and its JSON line for a plain (non-Table) watch."""

    type: EventType
    obj: KubeObject
    line: bytes


class StreamCut(StrEnum):
    """Sentinels a subscription receives when the server cuts open watches."""

    GRACEFUL = "graceful"  # end the chunked response cleanly
    ABRUPT = "abrupt"  # drop the TCP connection without a final chunk


_T = TypeVar("_T")


def clone(value: _T) -> _T:
    """A deep copy of decoded JSON (dicts, lists, scalars), several times faster than
    `copy.deepcopy`."""
    data: Any = value
    if type(data) is dict:
        return cast(_T, {k: clone(v) for k, v in data.items()})
    if type(data) is list:
        return cast(_T, [clone(v) for v in data])
    return value


def event_line(kind: str, obj: KubeObject) -> bytes:
    """A watch stream's line for one event."""
    return (json.dumps({"type": kind, "object": obj}) + "\n").encode()


def view(
    event: StoreEvent, namespace: str, matches: Callable[[KubeObject], bool]
) -> tuple[EventType, KubeObject] | None:
    """How a filtered watch sees a store event (the real cacher's rules): an object that
    starts matching is ADDED, one that stops matching is DELETED (previous content, event
    resourceVersion), others pass through or are dropped."""
    if namespace and event.namespace != namespace:
        return None
    new_ok = event.type is not EventType.DELETED and matches(event.obj)
    old_ok = event.prev is not None and matches(event.prev)
    if event.type is EventType.DELETED:
        return (EventType.DELETED, event.obj) if old_ok else None
    if new_ok and old_ok:
        return EventType.MODIFIED, event.obj
    if new_ok:
        return EventType.ADDED, event.obj
    if old_ok and event.prev is not None:
        gone = clone(event.prev)
        gone["metadata"]["resourceVersion"] = str(event.rv)
        return EventType.DELETED, gone
    return None


def selector_matcher(labels: LabelSelector, fields: FieldSelector) -> Callable[[KubeObject], bool]:
    """Whether an object matches both selectors."""

    def matches(obj: KubeObject) -> bool:
        return labels.matches(obj.get("metadata", {}).get("labels") or {}) and fields.matches(obj)

    return matches


# Index keys: ("name", group_resource, name) or ("label", group_resource, key, value);
# ("all", group_resource) for subscriptions with neither.
_Key = tuple[str, ...]


def _index_key(
    res: ResourceType,
    labels: LabelSelector,
    fields: FieldSelector,
    carriers: Callable[[str, str], int],
) -> _Key:
    for req in fields.requirements:
        if req.path == "metadata.name" and not req.negated:
            return ("name", res.group_resource, req.value)
    pairs = [
        (lreq.key, lreq.values[0])
        for lreq in labels.requirements
        if lreq.op in (Op.EQUALS, Op.IN) and len(lreq.values) == 1
    ]
    if not pairs:
        return ("all", res.group_resource)
    # The rarest label among today's objects (`app=pg,cluster=c7`: the cluster's).
    key, value = min(pairs, key=lambda pair: carriers(*pair))
    return ("label", res.group_resource, key, value)


@dataclass(eq=False, slots=True, kw_only=True)
class Subscription:
    """A live watch: its filter and its queue of what it sees."""

    resource: ResourceType
    namespace: str  # "" for all namespaces
    matches: Callable[[KubeObject], bool]
    key: _Key
    path: str = ""  # the watch request's path
    queue: asyncio.Queue[WatchItem | StreamCut] = field(default_factory=asyncio.Queue)
    stalled: bool = False  # delivers nothing more, without a word (a dead connection)

    def could_see(self, event: StoreEvent) -> bool:
        """Whether the index lets `event` through to this watch (cheap; `view` decides)."""
        match self.key:
            case ("name", _, name):
                return event.name == name
            case ("label", _, key, value):
                return any(
                    (obj.get("metadata", {}).get("labels") or {}).get(key) == value
                    for obj in (event.obj, event.prev)
                    if obj is not None
                )
            case _:
                return True


class WatchHub:
    """The open subscriptions, indexed (see the module docstring)."""

    def __init__(self) -> None:
        self._index: dict[_Key, set[Subscription]] = {}
        self._count = 0

    def subscribe(
        self,
        res: ResourceType,
        *,
        namespace: str,
        labels: LabelSelector,
        fields: FieldSelector,
        carriers: Callable[[str, str], int],
        path: str = "",
    ) -> Subscription:
        """A queue receiving what a watch with these selectors sees of every future event.
        `carriers(key, value)`: how many objects of `res` carry that label now (to index
        the watch by its rarest label)."""
        sub = Subscription(
            resource=res,
            namespace=namespace,
            matches=selector_matcher(labels, fields),
            key=_index_key(res, labels, fields, carriers),
            path=path,
        )
        self._index.setdefault(sub.key, set()).add(sub)
        self._count += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering events to `sub` (idempotent)."""
        subs = self._index.get(sub.key)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self._count -= 1
        if not subs:
            del self._index[sub.key]

    def __iter__(self) -> Iterator[Subscription]:
        for subs in list(self._index.values()):
            yield from list(subs)

    def __len__(self) -> int:
        return self._count

    def _candidates(self, event: StoreEvent) -> set[Subscription]:
        gr = event.resource.group_resource
        found: set[Subscription] = set()
        for key in (("name", gr, event.name), ("all", gr)):
            found.update(self._index.get(key, ()))
        for obj in (event.obj, event.prev):
            if obj is None:
                continue
            for k, v in (obj.get("metadata", {}).get("labels") or {}).items():
                found.update(self._index.get(("label", gr, k, v), ()))
        return found

    def publish(self, event: StoreEvent) -> None:
        """Queue the event for every subscription that sees it."""
        lines: dict[tuple[EventType, int], bytes] = {}
        for sub in self._candidates(event):
            seen = view(event, sub.namespace, sub.matches)
            if seen is None:
                continue
            kind, obj = seen
            line = lines.get((kind, id(obj)))
            if line is None:
                line = lines[(kind, id(obj))] = event_line(str(kind), obj)
            sub.queue.put_nowait(WatchItem(kind, obj, line))
