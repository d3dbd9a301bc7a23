"""Watch semantics of the test API server: resumption from a resourceVersion, 410 Expired,
timeoutSeconds, selectors (objects leaving a selector are DELETED), bookmarks, cut streams."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.k8s_apiserver import KubeApiServer
from tests.support.kube import kube_server, raw_request, raw_watch, set_fault

pytestmark = pytest.mark.integration

NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"
MERGE = "application/merge-patch+json"


def pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "pg", "image": "pg"}]},
    }


async def label(server: KubeApiServer, name: str, labels: dict[str, str | None]) -> str:
    answer = await raw_request(
        server.url,
        "PATCH",
        f"{PODS}/{name}",
        body={"metadata": {"labels": labels}},
        content_type=MERGE,
    )
    assert answer.status == 200, answer.body
    rv: str = answer.body["metadata"]["resourceVersion"]
    return rv


async def collect(core: Any, **kwargs: Any) -> list[tuple[str, str, str]]:
    """(type, name, resourceVersion) of every event until the server ends the stream."""
    seen: list[tuple[str, str, str]] = []
    async with asyncio.timeout(10), watch.Watch() as stream:
        async for event in stream.stream(core.list_namespaced_pod, NS, **kwargs):
            meta = event["object"].metadata
            seen.append((event["type"], meta.name, meta.resource_version))
    return seen


async def test_watch_resumed_from_a_resource_version_delivers_exactly_the_missed_events(
    kube_apiserver: KubeApiServer, kube_client: Any
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod(NS, pod("a"))
    resume_from = (await core.list_namespaced_pod(NS)).metadata.resource_version
    # Missed while "disconnected": three pod events, plus writes the watch must not see.
    rv_modified = await label(kube_apiserver, "a", {"role": "primary"})
    await core.create_namespace({"metadata": {"name": "elsewhere"}})
    await core.create_namespaced_pod("elsewhere", pod("x"))
    await core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}})
    rv_added = (await core.create_namespaced_pod(NS, pod("b"))).metadata.resource_version
    rv_deleted = (await core.delete_namespaced_pod("a", NS)).metadata.resource_version

    seen = await collect(core, resource_version=resume_from, timeout_seconds=1)

    assert seen == [
        ("MODIFIED", "a", rv_modified),
        ("ADDED", "b", rv_added),
        ("DELETED", "a", rv_deleted),
    ]


async def test_watch_resumes_after_a_broken_stream_without_loss_or_duplicates(
    kube_apiserver: KubeApiServer, kube_client: Any
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod(NS, pod("a"))
    first = await raw_watch(kube_apiserver.url, f"{PODS}?watch=true", max_events=1)
    assert [e["type"] for e in first] == ["ADDED"]
    last_rv = first[-1]["object"]["metadata"]["resourceVersion"]
    for i in range(3):
        await label(kube_apiserver, "a", {"n": str(i)})
    resumed = await raw_watch(
        kube_apiserver.url, f"{PODS}?watch=true&resourceVersion={last_rv}", max_events=3
    )
    assert [e["object"]["metadata"]["labels"]["n"] for e in resumed] == ["0", "1", "2"]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in resumed]
    assert rvs == sorted(rvs) and rvs[0] > int(last_rv)


async def test_watch_without_resource_version_starts_with_added_events_then_streams(
    kube_apiserver: KubeApiServer,
) -> None:
    for name in ("a", "b"):
        await raw_request(kube_apiserver.url, "POST", PODS, body=pod(name))
    reader = asyncio.create_task(
        raw_watch(kube_apiserver.url, f"{PODS}?watch=True", max_events=3), name="watch-reader"
    )
    await kube_apiserver.wait_for_watches(1)
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("c"))
    events = await reader
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("ADDED", "c"),
    ]
    assert events[0]["object"]["kind"] == "Pod"


async def test_watch_from_a_compacted_resource_version_gets_one_410_expired_event(
    kube_apiserver: KubeApiServer, kube_client: Any
) -> None:
    created = await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a"))
    old_rv = created.body["metadata"]["resourceVersion"]
    await label(kube_apiserver, "a", {"x": "1"})
    kube_apiserver.store.compact()
    events = await raw_watch(kube_apiserver.url, f"{PODS}?watch=1&resourceVersion={old_rv}")
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    core: Any = client.CoreV1Api(kube_client)
    with pytest.raises(ApiException) as caught:
        await collect(core, resource_version=old_rv, timeout_seconds=1)
    assert caught.value.status == 410


async def test_the_event_history_window_is_bounded(tmp_path: Path) -> None:
    async with kube_server(tmp_path, history_size=3) as server:
        created = await raw_request(server.url, "POST", PODS, body=pod("a"))
        start = created.body["metadata"]["resourceVersion"]
        rvs = [await label(server, "a", {"n": str(i)}) for i in range(4)]
        # Only the last 3 events are kept: resuming after the first label still works,
        # resuming from the creation (4 events to replay) does not.
        kept = await raw_watch(
            server.url, f"{PODS}?watch=true&resourceVersion={rvs[0]}&timeoutSeconds=1"
        )
        assert [e["object"]["metadata"]["resourceVersion"] for e in kept] == rvs[1:]
        lost = await raw_watch(server.url, f"{PODS}?watch=true&resourceVersion={start}")
        assert [e["type"] for e in lost] == ["ERROR"]
        assert lost[0]["object"]["code"] == 410


async def test_timeout_seconds_ends_the_stream(kube_apiserver: KubeApiServer) -> None:
    started = time.monotonic()
    events = await raw_watch(kube_apiserver.url, f"{PODS}?watch=true&timeoutSeconds=1")
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 <= elapsed < 3.0


async def test_an_object_that_stops_matching_the_selector_is_sent_as_deleted(
    kube_apiserver: KubeApiServer,
) -> None:
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a", {"role": "primary"}))
    reader = asyncio.create_task(
        raw_watch(
            kube_apiserver.url,
            f"{PODS}?watch=true&labelSelector=role%3Dprimary",
            max_events=4,
        ),
        name="selector-watch",
    )
    await kube_apiserver.wait_for_watches(1)
    await label(kube_apiserver, "a", {"note": "x"})  # still matches: MODIFIED
    rv_out = await label(kube_apiserver, "a", {"role": "replica"})  # leaves: DELETED
    await label(kube_apiserver, "a", {"note": "y"})  # not matching: nothing
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("b", {"role": "replica"}))
    await label(kube_apiserver, "b", {"role": "primary"})  # enters: ADDED
    events = await reader
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
        ("ADDED", "b"),
    ]
    deleted = events[2]["object"]
    # Like the real cacher: previous content (still matching), the event's resourceVersion.
    assert deleted["metadata"]["labels"]["role"] == "primary"
    assert deleted["metadata"]["resourceVersion"] == rv_out


async def test_a_single_object_watch_sees_only_that_object(kube_apiserver: KubeApiServer) -> None:
    for name in ("a", "b"):
        await raw_request(kube_apiserver.url, "POST", PODS, body=pod(name))
    by_field = await raw_watch(
        kube_apiserver.url,
        f"{PODS}?watch=true&fieldSelector=metadata.name%3Db&timeoutSeconds=1",
    )
    legacy = await raw_watch(
        kube_apiserver.url, f"/api/v1/watch/namespaces/{NS}/pods/b?timeoutSeconds=1"
    )
    for events in (by_field, legacy):
        assert [e["object"]["metadata"]["name"] for e in events] == ["b"]


async def test_bookmarks_carry_the_current_resource_version(tmp_path: Path) -> None:
    async with kube_server(tmp_path, bookmark_interval_s=0.2) as server:
        created = await raw_request(server.url, "POST", PODS, body=pod("a"))
        events = await raw_watch(
            server.url,
            f"{PODS}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1"
            f"&resourceVersion={created.body['metadata']['resourceVersion']}",
        )
        bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
        assert bookmarks, events
        assert bookmarks[-1]["object"]["metadata"]["resourceVersion"] == str(
            server.store.resource_version
        )
        initial = await raw_watch(
            server.url,
            f"{PODS}?watch=true&allowWatchBookmarks=true&sendInitialEvents=true"
            "&resourceVersionMatch=NotOlderThan",
            max_events=2,
        )
        assert [e["type"] for e in initial] == ["ADDED", "BOOKMARK"]
        end = initial[1]["object"]["metadata"]["annotations"]
        assert end == {"k8s.io/initial-events-end": "true"}


async def test_cut_watches_ends_open_streams_cleanly(kube_apiserver: KubeApiServer) -> None:
    readers = [
        asyncio.create_task(raw_watch(kube_apiserver.url, f"{PODS}?watch=true"), name=f"w{i}")
        for i in range(2)
    ]
    await kube_apiserver.wait_for_watches(2)
    answer = await set_fault(kube_apiserver.url, {"mode": "cut_watches"})
    assert answer["cut_watches"] == 2
    for reader in readers:
        assert await reader == []
    assert kube_apiserver.store.open_watches == 0


async def test_cut_watches_abruptly_breaks_the_connection(kube_apiserver: KubeApiServer) -> None:
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a"))
    reader = asyncio.create_task(
        raw_watch(kube_apiserver.url, f"{PODS}?watch=true"), name="abrupt-watch"
    )
    await kube_apiserver.wait_for_watches(1)
    await set_fault(kube_apiserver.url, {"mode": "cut_watches", "abrupt": True})
    with pytest.raises(aiohttp.ClientError):
        await reader


async def test_a_watch_from_a_future_resource_version_is_504(
    kube_apiserver: KubeApiServer,
) -> None:
    future = kube_apiserver.store.resource_version + 10
    answer = await raw_request(
        kube_apiserver.url, "GET", f"{PODS}?watch=true&resourceVersion={future}"
    )
    assert (answer.status, answer.body["reason"]) == (504, "Timeout")


async def test_a_watch_asking_for_tables_gets_one_row_tables(kube_apiserver: KubeApiServer) -> None:
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a"))
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(
            f"{kube_apiserver.url}{PODS}?watch=true&timeoutSeconds=1",
            headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
        ) as resp,
    ):
        event = json.loads(await resp.content.readline())
    assert event["type"] == "ADDED"
    assert event["object"]["kind"] == "Table"
    assert event["object"]["rows"][0]["cells"][:2] == ["a", "Pending"]
