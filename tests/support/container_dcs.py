"""The DCS side of a container cluster (tests/support/containers.py), for the container tier
and bench/containers.py: an etcd's endpoints as the ConfigMap's `10-dcs.yaml`, or the in-tree
test API server set up as a cluster would be for the shipped manifests.

    with kubernetes_cluster(base) as cluster:   # API server, service account, pods; not started
        cluster.start_all()
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.containers import IMAGE, REPO, PodmanCluster
from tests.support.kube import ApiServerProcess, apiserver_process

NAMESPACE = "pgwarden"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SHIPPED_K8S_DCS = REPO / "k8s" / "base" / "config" / "10-dcs.yaml"


def etcd_cluster(base: Path, endpoints: list[str], *, image: str = IMAGE) -> PodmanCluster:
    """Members whose `10-dcs.yaml` names the etcd `endpoints` (keys under /containers/)."""
    items = "".join(f"\n      - {url}" for url in endpoints)
    dcs = f"namespace: containers\ndcs:\n  kind: etcd\n  etcd:\n    endpoints:{items}\n"
    return PodmanCluster(base=base / "pods", dcs_yaml=dcs, image=image)


@contextmanager
def kubernetes_cluster(base: Path, *, image: str = IMAGE) -> Iterator[PodmanCluster]:
    """Members with the shipped `10-dcs.yaml` (the Kubernetes DCS, its lock as shipped) against
    the test API server over TLS, each with the service-account token, CA and namespace
    mounted where Kubernetes mounts them and KUBERNETES_SERVICE_HOST/PORT set; the namespace,
    the primary Service and the pods exist. The API server stops on exit."""
    with kubernetes_api(base) as (api, service_account):
        running = PodmanCluster(
            base=base / "pods",
            dcs_yaml=SHIPPED_K8S_DCS.read_text(),
            env={
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(api.port),
                "POD_NAMESPACE": NAMESPACE,
            },
            mounts={service_account: SA_DIR},
            image=image,
        )
        create_pods(api, running)
        yield running


@contextmanager
def kubernetes_api(base: Path) -> Iterator[tuple[ApiServerProcess, Path]]:
    """The test API server over TLS (a certificate for 127.0.0.1) with a bearer token, and a
    directory laid out like the projected service-account volume: token, ca.crt,
    namespace (files 0644, the volume's default mode)."""
    with apiserver_process(base / "apiserver", token="pgwarden-sa-token", tls=True) as api:
        service_account = base / "serviceaccount"
        service_account.mkdir()
        assert api.ca_file is not None and api.token is not None
        shutil.copy(api.ca_file, service_account / "ca.crt")
        (service_account / "token").write_text(api.token)
        (service_account / "namespace").write_text(NAMESPACE)
        for path in (service_account, *service_account.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield api, service_account


def create_pods(api: ApiServerProcess, running: PodmanCluster) -> None:
    """What `kubectl apply` and the StatefulSet controller would have made: the namespace, the
    selector-less primary Service (named after the cluster) and one Running pod per member,
    carrying the labels the shipped settings select on, with pod IP 127.0.0.1."""
    labels = {"app.kubernetes.io/name": "pgwarden", "app.kubernetes.io/instance": "pgwarden"}
    kube_post(api, "namespaces", {"metadata": {"name": NAMESPACE}})
    service = {"metadata": {"name": "pgwarden"}, "spec": {"ports": [{"port": 5432}]}}
    kube_post(api, f"namespaces/{NAMESPACE}/services", service)
    for member in running.members:
        pod = {
            "metadata": {"name": member.name, "labels": labels},
            "spec": {"containers": [{"name": "postgres", "image": running.image}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1"},
        }
        kube_post(api, f"namespaces/{NAMESPACE}/pods", pod)


def kube_request(api: ApiServerProcess, method: str, path: str, body: object = None) -> object:
    """One request to the test API server's core API (`/api/v1/<path>`), as the agents' user."""
    request = urllib.request.Request(
        f"{api.url}/api/v1/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(api.ca_file))
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return json.loads(response.read())


def kube_post(api: ApiServerProcess, path: str, body: object) -> None:
    kube_request(api, "POST", path, body)
