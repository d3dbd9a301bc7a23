"""The test API server's watch fan-out (tests/k8s_apiserver/watchhub.py): a write reaches only
the watches its index names, and its JSON line is encoded once for all of them."""

from __future__ import annotations

from typing import Any

from tests.k8s_apiserver.resources import ResourceType, find_resource
from tests.k8s_apiserver.selectors import parse_field_selector, parse_label_selector
from tests.k8s_apiserver.watchhub import EventType, StoreEvent, WatchHub, WatchItem


def _pods() -> ResourceType:
    found = find_resource("", "v1", "pods")
    assert found is not None
    return found


PODS = _pods()


def _pod(name: str, cluster: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"app": "pg", "cluster": cluster}},
    }


def _carriers(key: str, value: str) -> int:
    """As if 300 pods carry app=pg and 3 carry each cluster's label."""
    return 300 if (key, value) == ("app", "pg") else 3


def _watch(hub: WatchHub, selector: str) -> Any:
    return hub.subscribe(
        PODS,
        namespace="default",
        labels=parse_label_selector(selector),
        fields=parse_field_selector(None, "Pod"),
        carriers=_carriers,
    )


def _modified(name: str, cluster: str) -> StoreEvent:
    return StoreEvent(
        rv=7,
        type=EventType.MODIFIED,
        resource=PODS,
        namespace="default",
        name=name,
        obj=_pod(name, cluster),
        prev=_pod(name, cluster),
    )


def test_a_cluster_watch_is_indexed_by_its_rarest_label() -> None:
    hub = WatchHub()
    sub = _watch(hub, "app=pg,cluster=c7")
    assert sub.key == ("label", "pods", "cluster", "c7")
    assert not sub.could_see(_modified("c8-0", "c8"))
    assert sub.could_see(_modified("c7-0", "c7"))


def test_a_write_is_encoded_once_for_every_watch_that_sees_it() -> None:
    hub = WatchHub()
    first, second = _watch(hub, "app=pg,cluster=c7"), _watch(hub, "app=pg,cluster=c7")
    other = _watch(hub, "app=pg,cluster=c8")
    hub.publish(_modified("c7-0", "c7"))
    a, b = first.queue.get_nowait(), second.queue.get_nowait()
    assert isinstance(a, WatchItem) and isinstance(b, WatchItem)
    assert a.type is EventType.MODIFIED
    assert a.line is b.line  # one json.dumps for both
    assert other.queue.empty()
