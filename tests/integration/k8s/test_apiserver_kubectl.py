"""kubectl 1.32 against the test API server (TLS + bearer token through a kubeconfig):
get (tables and -o json), label and annotate (merge patches), several kinds at once, and no
need for /openapi."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.k8s_apiserver import KubeApiServer
from tests.support.kube import kube_server, raw_request, write_kubeconfig

KUBECTL = shutil.which("kubectl")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed"),
]

NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"
TOKEN = "kubectl-token"
KUBECTL_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    server: KubeApiServer
    kubeconfig: Path
    home: Path


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with kube_server(tmp_path, tls=True, token=TOKEN) as server:
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig",
            url=server.url,
            ca_file=tmp_path / "tls" / "kube-ca.pem",
            token=TOKEN,
        )
        pod = {
            "metadata": {"name": "pg-0", "labels": {"app": "pg"}},
            "spec": {"containers": [{"name": "pg", "image": "pg"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.2"},
        }
        created = await raw_request(
            server.url,
            "POST",
            PODS,
            body=pod,
            token=TOKEN,
            ca_file=tmp_path / "tls" / "kube-ca.pem",
        )
        assert created.status == 201, created.body
        yield Cluster(server=server, kubeconfig=kubeconfig, home=tmp_path)


async def kubectl(cluster: Cluster, *args: str) -> str:
    """Run kubectl (it must succeed); returns stdout."""
    assert KUBECTL is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--cache-dir",
        str(cluster.home / "kube-cache"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, HOME=str(cluster.home)),
    )
    try:
        async with asyncio.timeout(KUBECTL_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return out.decode()


def pod_labels(cluster: Cluster) -> dict[str, str]:
    labels: dict[str, str] = cluster.server.store.get(
        cluster.server.store_resource("pods"), NS, "pg-0"
    )["metadata"].get("labels", {})
    return labels


async def test_kubectl_get_pods_prints_the_pod(cluster: Cluster) -> None:
    out = await kubectl(cluster, "get", "pods")
    header, row = out.splitlines()[:2]
    assert header.split()[:2] == ["NAME", "STATUS"]
    assert row.split()[:2] == ["pg-0", "Running"]


async def test_kubectl_get_pod_as_json_is_the_stored_object(cluster: Cluster) -> None:
    obj = json.loads(await kubectl(cluster, "get", "pod", "pg-0", "-o", "json"))
    stored = cluster.server.store.get(cluster.server.store_resource("pods"), NS, "pg-0")
    assert obj["metadata"]["uid"] == stored["metadata"]["uid"]
    assert obj["status"]["podIP"] == "127.0.0.2"


async def test_kubectl_label_overwrite_and_removal_send_merge_patches(cluster: Cluster) -> None:
    await kubectl(cluster, "label", "pod", "pg-0", "role=replica")
    await kubectl(cluster, "label", "pod", "pg-0", "role=primary", "--overwrite")
    assert pod_labels(cluster) == {"app": "pg", "role": "primary"}
    await kubectl(cluster, "label", "pod", "pg-0", "role-")
    assert pod_labels(cluster) == {"app": "pg"}
    patches = [r for r in cluster.server.audit.records if r.verb == "patch"]
    assert len(patches) == 3
    assert {r.content_type for r in patches} == {"application/merge-patch+json"}


async def test_kubectl_annotate_sends_a_merge_patch(cluster: Cluster) -> None:
    await kubectl(cluster, "annotate", "pod", "pg-0", 'pgwarden/member={"role":"primary"}')
    stored = cluster.server.store.get(cluster.server.store_resource("pods"), NS, "pg-0")
    assert stored["metadata"]["annotations"] == {"pgwarden/member": '{"role":"primary"}'}
    (patch,) = [r for r in cluster.server.audit.records if r.verb == "patch"]
    assert patch.content_type == "application/merge-patch+json"


async def test_kubectl_gets_endpoints_and_leases_together(cluster: Cluster) -> None:
    server, ca = cluster.server, cluster.home / "tls" / "kube-ca.pem"
    ep = {"metadata": {"name": "pg"}, "subsets": [{"addresses": [{"ip": "127.0.0.2"}]}]}
    lease = {"metadata": {"name": "pg-leader"}, "spec": {"holderIdentity": "pg-0"}}
    for path, body in (
        (f"/api/v1/namespaces/{NS}/endpoints", ep),
        (f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", lease),
    ):
        answer = await raw_request(server.url, "POST", path, body=body, token=TOKEN, ca_file=ca)
        assert answer.status == 201
    out = await kubectl(cluster, "get", "endpoints,leases", "-o", "name")
    assert sorted(out.split()) == ["endpoints/pg", "lease.coordination.k8s.io/pg-leader"]


async def test_kubectl_needs_no_openapi_for_get_label_and_annotate(cluster: Cluster) -> None:
    await kubectl(cluster, "get", "pods")
    await kubectl(cluster, "label", "pod", "pg-0", "a=b")
    await kubectl(cluster, "annotate", "pod", "pg-0", "c=d")
    paths = {r.path for r in cluster.server.audit.records}
    assert not [p for p in paths if p.startswith("/openapi")]
    assert "/api/v1" in paths or "/api" in paths  # it did use discovery
