"""The pod label task against the test API server: labels follow the published status, are
re-asserted after someone removes them, and failures are retried without raising."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.kube.labels import PodLabeler, RoleLabel, cluster_selector
from agent.model import AgentStatus, MemberName, PgState, Role
from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer
from tests.support.kube import agent_client, kube_server

pytestmark = pytest.mark.integration


def factory(url: str) -> Callable[[], Awaitable[Any]]:
    async def build() -> Any:
        return agent_client(url)

    return build


REPLICA = AgentStatus(
    name=MemberName("a"),
    cluster="c",
    role=Role.REPLICA,
    state=PgState.STREAMING,
    api_url="http://127.0.0.1:8008",
)
PRIMARY = replace(REPLICA, role=Role.PRIMARY, state=PgState.RUNNING, lease_held=True)


async def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


def role_of(server: KubeApiServer, pod: str = "a") -> str | None:
    obj = server.store.get(server.store_resource("pods"), "default", pod)
    labels: dict[str, str] = obj["metadata"].get("labels") or {}
    return labels.get("role")


async def test_the_pod_label_follows_the_status_is_reasserted_and_survives_failures(
    tmp_path: Path,
) -> None:
    async with kube_server(tmp_path) as server:
        pods = server.store_resource("pods")
        server.store.create(pods, "default", {"metadata": {"name": "a", "labels": {"app": "pg"}}})
        current = [REPLICA]
        labeler = PodLabeler(
            client_factory=factory(server.url),
            namespace="default",
            pod_name="a",
            label=RoleLabel(),
            status=lambda: current[0],
            reassert_s=0.3,
            timeout_s=1.0,
        )
        task = asyncio.create_task(labeler.run(), name="test-labeler")
        try:
            await eventually(lambda: role_of(server) == "replica")
            current[0] = PRIMARY
            await eventually(lambda: role_of(server) == "primary")
            # Someone removes the label: the periodic re-assertion puts it back.
            obj = server.store.get(pods, "default", "a")
            obj["metadata"]["labels"].pop("role")
            server.store.update(pods, "default", "a", obj)
            await eventually(lambda: role_of(server) == "primary")
            # The API server fails: logged, retried, and the label lands once it is back.
            server.faults.set(Fault(mode=FaultMode.ERROR, status=503))
            with capture_logs() as logs:
                current[0] = replace(PRIMARY, lease_held=False)
                await eventually(lambda: any(e["event"] == "pod_label_failed" for e in logs))
            assert not task.done()
            server.faults.clear()
            await eventually(lambda: role_of(server) is None)
            assert server.store.get(pods, "default", "a")["metadata"]["labels"] == {"app": "pg"}
            current[0] = REPLICA
            await eventually(lambda: role_of(server) == "replica")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Stopping removes the label.
        assert role_of(server) is None


async def test_a_primary_takes_the_primary_label_off_the_other_pods_of_its_cluster(
    tmp_path: Path,
) -> None:
    async with kube_server(tmp_path) as server:
        pods = server.store_resource("pods")
        cluster = {"app": "pg", "pgwarden.io/cluster": "c"}
        for name, labels in (
            ("a", cluster),
            ("dead", {**cluster, "role": "primary"}),  # a former primary that was killed
            ("other-cluster", {"app": "pg", "pgwarden.io/cluster": "x", "role": "primary"}),
        ):
            server.store.create(pods, "default", {"metadata": {"name": name, "labels": labels}})
        labeler = PodLabeler(
            client_factory=factory(server.url),
            namespace="default",
            pod_name="a",
            label=RoleLabel(),
            status=lambda: PRIMARY,
            reassert_s=30.0,
            timeout_s=1.0,
            peers_selector=cluster_selector([("app", "pg")], "c"),
        )
        with capture_logs() as logs:
            await labeler.apply("primary")
        await labeler.close()
        assert role_of(server, "a") == "primary"
        assert role_of(server, "dead") is None
        assert role_of(server, "other-cluster") == "primary"
        assert [e["peer"] for e in logs if e["event"] == "pod_label_removed_from_peer"] == ["dead"]


async def test_with_the_loops_event_the_label_moves_when_a_status_is_published_not_before(
    tmp_path: Path,
) -> None:
    """The label task wakes when the HA loop publishes a status (it does not poll): a new
    status is applied at once when the event says so, and not before."""
    async with kube_server(tmp_path) as server:
        pods = server.store_resource("pods")
        server.store.create(pods, "default", {"metadata": {"name": "a", "labels": {"app": "pg"}}})
        current, changed = [REPLICA], asyncio.Event()
        labeler = PodLabeler(
            client_factory=factory(server.url),
            namespace="default",
            pod_name="a",
            label=RoleLabel(),
            status=lambda: current[0],
            changed=changed,
            reassert_s=30.0,
            timeout_s=1.0,
        )
        task = asyncio.create_task(labeler.run(), name="test-labeler")
        try:
            await eventually(lambda: role_of(server) == "replica")
            patches = len([r for r in server.audit.records if r.verb == "patch"])
            current[0] = PRIMARY  # not published yet
            await asyncio.sleep(0.5)
            assert role_of(server) == "replica"
            changed.set()
            await eventually(lambda: role_of(server) == "primary", timeout_s=0.5)
            await asyncio.sleep(0.5)  # idle: no polling, no patch
            assert len([r for r in server.audit.records if r.verb == "patch"]) == patches + 1
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_a_reassertion_the_pod_watch_shows_in_place_sends_nothing_and_others_patch(
    tmp_path: Path,
) -> None:
    """With the pod labels a watch sees (`observed`, the Kubernetes DCS's pods cache), the
    periodic re-assertion sends no request while they are right; it patches when they are
    wrong (removed by hand, another pod labelled primary) or when no trusted view exists."""
    async with kube_server(tmp_path) as server:
        pods = server.store_resource("pods")
        cluster = {"app": "pg", "pgwarden.io/cluster": "c"}
        server.store.create(pods, "default", {"metadata": {"name": "a", "labels": cluster}})
        trusted, names = [True], ["a"]

        def observed() -> dict[str, dict[str, str]] | None:
            if not trusted[0]:
                return None
            items = [server.store.get(pods, "default", name) for name in names]
            return {o["metadata"]["name"]: dict(o["metadata"].get("labels") or {}) for o in items}

        def patches() -> int:
            return len([r for r in server.audit.records if r.verb == "patch"])

        current = [REPLICA]
        labeler = PodLabeler(
            client_factory=factory(server.url),
            namespace="default",
            pod_name="a",
            label=RoleLabel(),
            status=lambda: current[0],
            reassert_s=0.1,
            timeout_s=1.0,
            peers_selector=cluster_selector([("app", "pg")], "c"),
            observed=observed,
        )
        task = asyncio.create_task(labeler.run(), name="test-labeler")
        try:
            await eventually(lambda: role_of(server) == "replica")
            sent = patches()
            await asyncio.sleep(0.6)  # six re-assertions, all in place
            assert patches() == sent
            # Removed by hand: the next re-assertion puts it back.
            obj = server.store.get(pods, "default", "a")
            obj["metadata"]["labels"].pop("role")
            server.store.update(pods, "default", "a", obj)
            await eventually(lambda: role_of(server) == "replica")
            # No trusted view: re-assertions patch as without a watch.
            trusted[0], sent = False, patches()
            await eventually(lambda: patches() >= sent + 2)
            trusted[0] = True
            current[0] = PRIMARY
            await eventually(lambda: role_of(server) == "primary")
            b = {"metadata": {"name": "b", "labels": {**cluster, "role": "primary"}}}
            server.store.create(pods, "default", b)
            names.append("b")
            await eventually(lambda: role_of(server, "b") is None)  # taken off at re-assertion
            sent = patches()
            await asyncio.sleep(0.6)
            assert patches() == sent
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_a_label_patch_the_server_throttles_waits_out_its_retry_after(
    tmp_path: Path,
) -> None:
    """A 429 with Retry-After 2 on every patch for 2.5 s: the label task tries again after
    the Retry-After (with jitter), not on its own 0.2 s backoff (0.2, 0.4, 0.8: four or
    five patches in that time, from every member of a throttled fleet, issue 15)."""
    async with kube_server(tmp_path) as server:
        pods = server.store_resource("pods")
        server.store.create(pods, "default", {"metadata": {"name": "a", "labels": {"app": "pg"}}})
        server.faults.set(Fault(mode=FaultMode.ERROR, status=429, retry_after_s=2))
        labeler = PodLabeler(
            client_factory=factory(server.url),
            namespace="default",
            pod_name="a",
            label=RoleLabel(),
            status=lambda: REPLICA,
            reassert_s=30.0,
            timeout_s=1.0,
        )
        task = asyncio.create_task(labeler.run(), name="test-labeler")
        try:
            await asyncio.sleep(2.5)
            patches = [r for r in server.audit.records if r.method == "PATCH"]
            server.faults.clear()
            await eventually(lambda: role_of(server) == "replica", timeout_s=4.0)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert 1 <= len(patches) <= 2, [round(r.ts - patches[0].ts, 2) for r in patches]
