"""The Kubernetes side of a local cluster: the in-tree test API server (tests/k8s_apiserver)
as a process, with tokens and an audit log, a Service and one Running pod per member, and the
kubeconfig the agents use (`LocalCluster(dcs_kind="kubernetes")`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from agent.localproc import LocalMember, free_port, preexec_for


class LocalKubeApi:
    """What `LocalCluster` needs to run its DCS on the test API server (a mixin: the fields
    are LocalCluster's)."""

    base: Path
    cluster: str
    members: list[LocalMember]
    apiserver: subprocess.Popen[bytes] | None
    apiserver_url: str
    apiserver_token: str
    admin_token: str
    operator_token: str
    die_with_parent: bool

    @property
    def kube_namespace(self) -> str:
        return "default"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (one JSON request record per line)."""
        return self.base / "apiserver-audit.jsonl"

    @property
    def kubeconfig(self) -> Path:
        return self.base / "kubeconfig.json"

    def start_apiserver(self) -> None:
        """The test API server (a process, with a token and an audit log), a selector-less
        Service `<cluster>` and one Running pod per member, then a kubeconfig for agents."""
        if self.apiserver_url:
            return
        port = free_port()
        log = open(self.base / "apiserver.log", "ab")  # noqa: SIM115 - owned by the child
        repo = Path(__file__).resolve().parents[1]
        self.apiserver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.k8s_apiserver",
                "--port",
                str(port),
                "--token",
                f"{self.apiserver_token}=pgwarden",
                "--token",
                f"{self.admin_token}=admin",
                "--token",
                f"{self.operator_token}=operator",
                "--audit-log",
                str(self.audit_log),
            ],
            cwd=repo,
            env=dict(os.environ, PYTHONPATH=str(repo)),
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=preexec_for(self.die_with_parent),  # noqa: PLW1509 - see _parent_death_signal
        )
        log.close()
        self.apiserver_url = f"http://127.0.0.1:{port}"
        self._wait_for_apiserver(self.apiserver)
        self._create_service_and_pods()
        self.kubeconfig.write_text(
            json.dumps(_kubeconfig(self.apiserver_url, self.apiserver_token, self.kube_namespace))
        )
        os.chmod(self.kubeconfig, 0o644)

    def _wait_for_apiserver(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                self._kube_request("GET", "/healthz")
                return
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        "the test API server did not start; see apiserver.log"
                    ) from None
                time.sleep(0.05)

    def _create_service_and_pods(self) -> None:
        ns = self.kube_namespace
        self._kube_request(
            "POST",
            f"/api/v1/namespaces/{ns}/services",
            {"metadata": {"name": self.cluster}, "spec": {"ports": [{"port": 5432}]}},
        )
        for member in self.members:
            self._kube_request(
                "POST",
                f"/api/v1/namespaces/{ns}/pods",
                {
                    "metadata": {"name": member.name, "labels": self.kube_labels},
                    "spec": {"containers": [{"name": "postgres", "image": "pgwarden"}]},
                    "status": {"phase": "Running", "podIP": "127.0.0.1"},
                },
            )

    @property
    def kube_labels(self) -> dict[str, str]:
        return {"app": "pgwarden", "cluster-name": self.cluster}

    def _kube_request(self, method: str, path: str, body: object = None) -> object:
        """One request to the test API server (urllib; raises OSError when unreachable)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.apiserver_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.admin_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            raw = response.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", errors="replace")

    def kube_get(self, path: str) -> object:
        """GET an object from the test API server (for tests and the demo)."""
        return self._kube_request("GET", path)


def _kubeconfig(server: str, token: str, namespace: str) -> dict[str, object]:
    """A kubeconfig for the agents: the test API server, their token, the namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server}}],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [
            {
                "name": "local",
                "context": {"cluster": "local", "user": "agent", "namespace": namespace},
            }
        ],
        "current-context": "local",
    }
