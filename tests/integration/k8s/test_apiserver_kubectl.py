"""kubectl 1.32 against the test API server (TLS + bearer token through a kubeconfig):
get (tables and -o json), label and annotate (merge patches), several kinds at once, no need
for /openapi for those; `kubectl create <kind>` generators (protobuf bodies) and
`kubectl create -f` with the default strict validation (through /openapi/v3)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.k8s_apiserver import KubeApiServer
from tests.k8s_apiserver.bodies import PROTOBUF
from tests.k8s_apiserver.resources import RESOURCES
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
    code, out, err = await kubectl_result(cluster, *args)
    assert code == 0, err
    return out


async def kubectl_result(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    """Run kubectl; returns (exit code, stdout, stderr)."""
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
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


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


# ---- request bodies: protobuf from kubectl's typed clients, 415 for the rest -------------


def stored(cluster: Cluster, plural: str, name: str, namespace: str = NS) -> dict[str, Any]:
    server = cluster.server
    obj: dict[str, Any] = server.store.get(server.store_resource(plural), namespace, name)
    return obj


async def test_kubectl_create_configmap_from_literal_and_file_sends_protobuf(
    cluster: Cluster,
) -> None:
    blob = bytes(range(256)) * 3  # not UTF-8: kubectl puts it in binaryData
    (cluster.home / "blob.bin").write_bytes(blob)
    out = await kubectl(
        cluster,
        "create",
        "configmap",
        "cm",
        "--from-literal=a=1",
        "--from-literal=greeting=héllo wörld",
        f"--from-file={cluster.home / 'blob.bin'}",
    )
    assert out.strip() == "configmap/cm created"
    cm = stored(cluster, "configmaps", "cm")
    assert cm["data"] == {"a": "1", "greeting": "héllo wörld"}
    assert base64.b64decode(cm["binaryData"]["blob.bin"]) == blob
    assert cm["metadata"]["namespace"] == NS
    assert "immutable" not in cm
    (create,) = [r for r in cluster.server.audit.records if r.resource == "configmaps"]
    assert (create.verb, create.content_type, create.code) == ("create", PROTOBUF, 201)
    # and it reads back through kubectl
    got = json.loads(await kubectl(cluster, "get", "configmap", "cm", "-o", "json"))
    assert got["data"] == {"a": "1", "greeting": "héllo wörld"}


async def test_kubectl_create_namespace_sends_protobuf(cluster: Cluster) -> None:
    await kubectl(cluster, "create", "namespace", "pg-ns")
    ns = stored(cluster, "namespaces", "pg-ns", namespace="")
    assert ns["metadata"]["name"] == "pg-ns"
    (create,) = [r for r in cluster.server.audit.records if r.resource == "namespaces"]
    assert (create.verb, create.content_type, create.code) == ("create", PROTOBUF, 201)


async def test_protobuf_of_an_undecoded_kind_is_415_and_kubectl_does_not_retry(
    cluster: Cluster,
) -> None:
    """client-go falls back to JSON after a 415 only for CBOR: a protobuf Service the server
    cannot decode fails once, with the Status message."""
    code, _, err = await kubectl_result(
        cluster, "create", "service", "clusterip", "pg", "--tcp=5432:5432"
    )
    assert code != 0
    assert "the body of the request was in an unknown format" in err
    creates = [r for r in cluster.server.audit.records if r.resource == "services"]
    assert [(r.verb, r.content_type, r.code) for r in creates] == [("create", PROTOBUF, 415)]


async def test_unknown_media_type_is_a_415_status_and_yaml_is_accepted(
    cluster: Cluster,
) -> None:
    server, ca = cluster.server, cluster.home / "tls" / "kube-ca.pem"
    path = f"/api/v1/namespaces/{NS}/configmaps"
    body = {"metadata": {"name": "cm"}, "data": {"a": "1"}}
    refused = await raw_request(
        server.url, "POST", path, body=body, content_type="text/plain", token=TOKEN, ca_file=ca
    )
    assert refused.status == 415
    assert refused.body["kind"] == "Status"
    assert refused.body["status"] == "Failure"
    assert refused.body["reason"] == "UnsupportedMediaType"
    assert refused.body["code"] == 415
    assert "accepted media types include: application/json" in refused.body["message"]
    # JSON is valid YAML: sent as application/yaml it is accepted like a real server does
    created = await raw_request(
        server.url,
        "POST",
        path,
        body=body,
        content_type="application/yaml",
        token=TOKEN,
        ca_file=ca,
    )
    assert created.status == 201, created.body
    assert stored(cluster, "configmaps", "cm")["data"] == {"a": "1"}


# ---- kubectl create -f with the default (strict) validation ------------------------------

MANIFEST = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: pg-config
data:
  max_connections: "100"
---
apiVersion: v1
kind: Pod
metadata:
  name: pg-1
  labels: {app: pg}
spec:
  containers:
  - name: pg
    image: postgres:17
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: pg-leader
spec:
  holderIdentity: pg-1
"""


async def test_kubectl_create_f_validates_through_openapi_v3(cluster: Cluster) -> None:
    manifest = cluster.home / "pg.yaml"
    manifest.write_text(MANIFEST)
    out = await kubectl(cluster, "create", "-f", str(manifest))  # no --validate=false
    assert sorted(out.split("\n")[:3]) == [
        "configmap/pg-config created",
        "lease.coordination.k8s.io/pg-leader created",
        "pod/pg-1 created",
    ]
    assert stored(cluster, "configmaps", "pg-config")["data"] == {"max_connections": "100"}
    assert stored(cluster, "pods", "pg-1")["spec"]["containers"][0]["image"] == "postgres:17"
    lease = cluster.server.store.get(
        cluster.server.store_resource("leases", "coordination.k8s.io"), NS, "pg-leader"
    )
    assert lease["spec"]["holderIdentity"] == "pg-1"
    paths = {r.path for r in cluster.server.audit.records}
    assert {"/openapi/v3", "/openapi/v3/api/v1"} <= paths
    assert "/openapi/v2" not in paths


async def test_openapi_v3_lists_field_validation_on_every_patch(cluster: Cluster) -> None:
    """What kubectl's query-param verifier looks for: per kind, a PATCH operation tagged
    with the kind's x-kubernetes-group-version-kind and a fieldValidation query parameter."""
    server, ca = cluster.server, cluster.home / "tls" / "kube-ca.pem"
    index = await raw_request(server.url, "GET", "/openapi/v3", token=TOKEN, ca_file=ca)
    assert index.status == 200
    kinds: set[tuple[str, str, str]] = set()
    for entry in index.body["paths"].values():
        url = entry["serverRelativeURL"]
        assert "?hash=" in url
        doc = await raw_request(server.url, "GET", url, token=TOKEN, ca_file=ca)
        assert doc.status == 200
        for item in doc.body["paths"].values():
            patch = item.get("patch")
            if patch is None:
                continue
            names = {(p["name"], p["in"]) for p in patch["parameters"]}
            assert ("fieldValidation", "query") in names
            gvk = patch["x-kubernetes-group-version-kind"]
            kinds.add((gvk["group"], gvk["version"], gvk["kind"]))
    assert {(r.group, r.version, r.kind) for r in RESOURCES} == kinds
