"""Authentication, TLS and the audit log of the test API server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config

from tests.support.kube import api_client, kube_server, raw_request, read_audit, write_kubeconfig

pytestmark = pytest.mark.integration

NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"
TOKEN = "s3cret-token"
POD = {"metadata": {"name": "a"}, "spec": {"containers": [{"name": "pg", "image": "pg"}]}}


async def test_requests_without_or_with_a_wrong_bearer_token_are_401(tmp_path: Path) -> None:
    async with kube_server(tmp_path, token=TOKEN) as server:
        for token in (None, "wrong"):
            answer = await raw_request(server.url, "GET", PODS, token=token)
            assert answer.status == 401
            assert (answer.body["kind"], answer.body["reason"]) == ("Status", "Unauthorized")
        assert (await raw_request(server.url, "GET", PODS, token=TOKEN)).status == 200
        assert (await raw_request(server.url, "GET", "/healthz")).status == 200


async def test_a_client_trusting_the_generated_ca_works_through_a_kubeconfig(
    tmp_path: Path,
) -> None:
    async with kube_server(tmp_path, tls=True, token=TOKEN) as server:
        assert server.url.startswith("https://127.0.0.1:")
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig",
            url=server.url,
            ca_file=tmp_path / "tls" / "kube-ca.pem",
            token=TOKEN,
        )
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        async with client.ApiClient(configuration=cfg) as api:
            core: Any = client.CoreV1Api(api)
            await core.create_namespaced_pod(NS, POD)
            assert [p.metadata.name for p in (await core.list_namespaced_pod(NS)).items] == ["a"]
        untrusting = api_client(server.url, token=TOKEN)
        try:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await client.CoreV1Api(untrusting).list_namespaced_pod(NS)
        finally:
            await untrusting.close()


async def test_the_audit_log_records_each_request_in_rbac_terms(tmp_path: Path) -> None:
    async with kube_server(tmp_path, token=TOKEN, user="pgwarden-agent") as server:
        api = api_client(server.url, token=TOKEN)
        try:
            core: Any = client.CoreV1Api(api)
            coord: Any = client.CoordinationV1Api(api)
            await core.create_namespaced_pod(NS, POD)
            await core.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"role": "x"}}})
            await core.list_namespaced_pod(NS, label_selector="role=x")
            await coord.create_namespaced_lease(NS, {"metadata": {"name": "l"}, "spec": {}})
            await coord.read_namespaced_lease("l", NS)
            await core.list_namespaced_pod(
                NS, watch=True, timeout_seconds=0, _preload_content=False
            )
            await core.delete_namespaced_pod("a", NS)
        finally:
            await api.close()
        await raw_request(server.url, "GET", PODS)  # no token: recorded with its 401
        records = await read_audit(server.url)
    seen = [
        (r["verb"], r["api_group"], r["resource"], r["namespace"], r["name"], r["user"], r["code"])
        for r in records
    ]
    agent = "pgwarden-agent"
    assert seen == [
        ("create", "", "pods", NS, "", agent, 201),
        ("patch", "", "pods", NS, "a", agent, 200),
        ("list", "", "pods", NS, "", agent, 200),
        ("create", "coordination.k8s.io", "leases", NS, "", agent, 201),
        ("get", "coordination.k8s.io", "leases", NS, "l", agent, 200),
        ("watch", "", "pods", NS, "", agent, 200),
        ("delete", "", "pods", NS, "a", agent, 200),
        ("list", "", "pods", NS, "", "system:anonymous", 401),
    ]
    assert records[1]["content_type"] == "application/strategic-merge-patch+json"
    assert json.dumps(records)  # JSON-able as served
