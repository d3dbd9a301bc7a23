"""`pgwarden ctl rollout` against the in-process test API server and a members' API that
serves a fixed, healthy `/cluster` view (no agents): the paths where it must stop without
doing more (the budget allows nothing; a deleted pod does not come back), each within its
`--timeout`, with the message that says to run it again. The full rollout with real agents
is tests/e2e/test_k8s_rollout.py."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import ctl
from agent.http.routing import App, Request, Response, json_response
from agent.http.server import HttpServer
from agent.rollout import REVISION_LABEL
from tests.k8s_apiserver import KubeApiServer
from tests.k8s_apiserver.errors import ApiError

pytestmark = pytest.mark.integration

LABELS = {"app": "pg"}
NAMES = ("pg-0", "pg-1", "pg-2")


@pytest.fixture
async def members() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A members' API with a healthy 3-member view (pg-0 leads); returns its URL and the
    switchover requests it got."""
    posted: list[dict[str, Any]] = []

    async def cluster(_: Request) -> Response:
        return json_response(
            {
                "leader": "pg-0",
                "members": [
                    {"name": "pg-0", "state": "running"},
                    {"name": "pg-1", "state": "streaming", "upstream": "pg-0"},
                    {"name": "pg-2", "state": "streaming", "upstream": "pg-0"},
                ],
                "switchover": None,
                "paused": False,
            }
        )

    async def switchover(request: Request) -> Response:
        body = await request.json()
        assert isinstance(body, dict)
        posted.append(body)
        return json_response({}, status=202)

    app = App()
    app.add_get("/cluster", cluster)
    app.add_post("/switchover", switchover)
    server = await HttpServer.start(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}", posted
    finally:
        await server.close()


def _post(server: KubeApiServer, plural: str, body: dict[str, Any], group: str = "") -> None:
    res = server.store_resource(plural, group)
    server.store.create(res, "default", body)


def _objects(server: KubeApiServer, allowed: int) -> None:
    _post(
        server,
        "statefulsets",
        {
            "metadata": {"name": "pg"},
            "spec": {
                "replicas": 3,
                "updateStrategy": {"type": "OnDelete"},
                "selector": {"matchLabels": LABELS},
            },
            "status": {"updateRevision": "rev-2"},
        },
        group="apps",
    )
    for name in NAMES:
        _post(
            server,
            "pods",
            {"metadata": {"name": name, "labels": {**LABELS, REVISION_LABEL: "rev-1"}}},
        )
    _post(
        server,
        "poddisruptionbudgets",
        {
            "metadata": {"name": "pg"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": LABELS}},
            "status": {"disruptionsAllowed": allowed},
        },
        group="policy",
    )


async def _rollout(server: KubeApiServer, url: str, tmp_path: Path) -> tuple[int, str, str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": server.url}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    out, err = io.StringIO(), io.StringIO()
    argv = [f"--url={url}", "rollout", "pg", f"--kubeconfig={kubeconfig}", "--timeout=1"]
    argv.append("--poll-interval=0.1")
    code = await ctl.run(argv, env={}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _pods(server: KubeApiServer) -> list[str]:
    present = []
    for name in NAMES:
        try:
            server.store.get(server.store_resource("pods"), "default", name)
        except ApiError:
            continue
        present.append(name)
    return present


async def test_no_pod_is_deleted_while_the_budget_allows_none(
    kube_apiserver: KubeApiServer, members: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _objects(kube_apiserver, allowed=0)
    code, out, err = await _rollout(kube_apiserver, members[0], tmp_path)
    assert code == 1
    assert "waiting: wait: the PodDisruptionBudget allows no disruption (next: pod pg-2)" in out
    assert "run it again to continue" in err
    assert _pods(kube_apiserver) == list(NAMES)
    assert members[1] == []


async def test_a_deleted_pod_that_does_not_come_back_stops_the_rollout(
    kube_apiserver: KubeApiServer, members: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _objects(kube_apiserver, allowed=1)
    code, out, err = await _rollout(kube_apiserver, members[0], tmp_path)
    assert code == 1, out + err
    assert "delete pod pg-2 (replica, revision rev-1 -> rev-2)" in out
    assert "pod pg-2 not back with revision rev-2 after 1 s (run it again to continue)" in err
    assert _pods(kube_apiserver) == ["pg-0", "pg-1"]  # one pod only, never the leader
    assert members[1] == []
