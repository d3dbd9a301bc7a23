"""The test API server as its own process, shared by several clients: Lease acquisition races
(create and compare-and-swap PUT) have exactly one winner; the audit log file names the
token's user."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kube import ApiServerProcess, api_client, apiserver_process

pytestmark = pytest.mark.integration

NS = "default"
ROUNDS = 10


def lease_body(holder: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "pg-leader"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10},
    }


async def try_create(coord: Any, holder: str) -> str:
    try:
        await coord.create_namespaced_lease(NS, lease_body(holder))
    except ApiException as exc:
        return f"{exc.status}"
    return "won"


async def try_take_over(coord: Any, holder: str, seen: Any) -> str:
    """Compare-and-swap: replace the lease as read (its resourceVersion) with us as holder.
    The holder names differ every round: an update that changes nothing would succeed for
    both (no new resourceVersion, as on a real server)."""
    seen.spec.holder_identity = holder
    try:
        await coord.replace_namespaced_lease("pg-leader", NS, seen)
    except ApiException as exc:
        return f"{exc.status}"
    return "won"


async def test_two_clients_racing_for_a_lease_have_exactly_one_winner_each_round(
    kube_apiserver_process: ApiServerProcess, tmp_path: Path
) -> None:
    server = kube_apiserver_process
    cfg = client.Configuration()
    await config.load_kube_config(
        config_file=str(server.kubeconfig(tmp_path / "kubeconfig")), client_configuration=cfg
    )
    api_a = client.ApiClient(configuration=cfg)
    api_b = api_client(server.url, token=server.token)
    try:
        coord_a: Any = client.CoordinationV1Api(api_a)
        coord_b: Any = client.CoordinationV1Api(api_b)
        async with asyncio.timeout(20):
            created = await asyncio.gather(try_create(coord_a, "a"), try_create(coord_b, "b"))
            assert sorted(created) == ["409", "won"]
            for i in range(ROUNDS):
                seen_a = await coord_a.read_namespaced_lease("pg-leader", NS)
                seen_b = await coord_b.read_namespaced_lease("pg-leader", NS)
                assert seen_a.metadata.resource_version == seen_b.metadata.resource_version
                results = await asyncio.gather(
                    try_take_over(coord_a, f"a-{i}", seen_a),
                    try_take_over(coord_b, f"b-{i}", seen_b),
                )
                assert sorted(results) == ["409", "won"]
                holder = (await coord_a.read_namespaced_lease("pg-leader", NS)).spec
                winner = f"a-{i}" if results[0] == "won" else f"b-{i}"
                assert holder.holder_identity == winner
    finally:
        await api_a.close()
        await api_b.close()


async def test_the_process_appends_each_request_to_the_audit_log_file(
    kube_apiserver_process: ApiServerProcess,
) -> None:
    server = kube_apiserver_process
    api = api_client(server.url, token=server.token)
    try:
        core: Any = client.CoreV1Api(api)
        await core.list_namespaced_pod(NS)
        await core.list_namespaced_endpoints(NS)
    finally:
        await api.close()
    lines = [json.loads(line) for line in server.audit_log.read_text().splitlines()]
    calls = [(r["verb"], r["resource"], r["user"]) for r in lines if r["is_resource"]]
    assert calls == [("list", "pods", "pgwarden"), ("list", "endpoints", "pgwarden")]


def test_a_stopped_process_releases_its_port(tmp_path: Path) -> None:
    with apiserver_process(tmp_path / "srv") as server:
        assert server.process is not None and server.process.poll() is None
    assert server.process is not None and server.process.returncode == 0


async def test_a_tls_process_serves_clients_configured_by_its_kubeconfig(tmp_path: Path) -> None:
    with apiserver_process(tmp_path / "srv", tls=True, token="t0k") as server:
        assert server.url.startswith("https://")
        cfg = client.Configuration()
        await config.load_kube_config(
            config_file=str(server.kubeconfig(tmp_path / "kubeconfig")), client_configuration=cfg
        )
        async with client.ApiClient(configuration=cfg) as api:
            namespaces = await client.CoreV1Api(api).list_namespace()
        assert "default" in [ns.metadata.name for ns in namespaces.items]
