"""Test helpers for the in-tree Kubernetes API server (tests/k8s_apiserver).

- `KubeApiServer` in-process: `async with kube_server(tmp_path, tls=True, token="t") as srv`.
- `ApiServerProcess`: the same server as its own process (`python -m tests.k8s_apiserver`) on
  a free port, for tests where several agent processes share one API server.
- `make_kube_tls(directory)`: a CA and a server certificate for 127.0.0.1/localhost (trustme).
- `write_kubeconfig(...)`: a kubeconfig for kubectl and `kubernetes_asyncio.config`.
- `api_client(...)`: a configured `kubernetes_asyncio.client.ApiClient`.
- `set_fault(...)`, `read_audit(...)`: the admin endpoints over HTTP (work for both modes).

Fixtures (re-export from a conftest): `kube_apiserver` (in-process, plain HTTP, no auth) and
`kube_apiserver_process` (a process with a bearer token and an audit log), both fresh per test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from kubernetes_asyncio import client

from agent.kube.client import KubeClient
from tests.k8s_apiserver import KubeApiServer, ServerOptions
from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0
ADMIN_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeTlsFiles:
    """PEM files: the CA that signed the server certificate, and the server cert/key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_kube_tls(directory: Path) -> KubeTlsFiles:
    """A fresh CA and a server certificate for 127.0.0.1 and localhost, written to
    `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = KubeTlsFiles(
        ca_file=directory / "kube-ca.pem",
        cert_file=directory / "kube-server.pem",
        key_file=directory / "kube-server.key",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    cert.cert_chain_pems[0].write_to_path(str(files.cert_file))
    cert.private_key_pem.write_to_path(str(files.key_file))
    return files


def write_kubeconfig(
    path: Path,
    *,
    url: str,
    ca_file: Path | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> Path:
    """Write a one-context kubeconfig (JSON, which is YAML) for `url`; returns `path`."""
    cluster: dict[str, Any] = {"server": url}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    user: dict[str, Any] = {} if token is None else {"token": token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pgwarden-test", "cluster": cluster}],
        "users": [{"name": "pgwarden-test", "user": user}],
        "contexts": [
            {
                "name": "pgwarden-test",
                "context": {
                    "cluster": "pgwarden-test",
                    "user": "pgwarden-test",
                    "namespace": namespace,
                },
            }
        ],
        "current-context": "pgwarden-test",
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def api_client(url: str, *, token: str | None = None, ca_file: Path | None = None) -> Any:
    """A kubernetes_asyncio ApiClient for the server (close it with `await c.close()`)."""
    cfg = client.Configuration(host=url)
    if token is not None:
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    if ca_file is not None:
        cfg.ssl_ca_cert = str(ca_file)
        cfg.verify_ssl = True
    return client.ApiClient(configuration=cfg)


def agent_client(url: str, *, token: str | None = None, ca_file: Path | None = None) -> KubeClient:
    """The agent's own client (agent/kube/client.py) for the server, as `pgwarden run` builds
    it (close it with `await c.close()`)."""
    return KubeClient(
        host=url, token=None if token is None else (lambda: token), ssl_context=_ssl_for(ca_file)
    )


def _ssl_for(ca_file: Path | None) -> ssl.SSLContext | None:
    return None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


async def _admin(
    url: str, method: str, path: str, body: Any = None, ca_file: Path | None = None
) -> Any:
    timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url + path, json=body, ssl=_ssl_for(ca_file) or True) as resp,
    ):
        resp.raise_for_status()
        return await resp.json()


async def set_fault(url: str, fault: dict[str, Any], *, ca_file: Path | None = None) -> Any:
    """POST /_fault (see tests/k8s_apiserver/faults.py for the JSON forms)."""
    return await _admin(url, "POST", "/_fault", fault, ca_file)


async def read_audit(url: str, *, ca_file: Path | None = None) -> list[dict[str, Any]]:
    """GET /_audit: every request so far, oldest first."""
    items: list[dict[str, Any]] = (await _admin(url, "GET", "/_audit", None, ca_file))["items"]
    return items


@contextlib.asynccontextmanager
async def kube_server(
    tmp_path: Path,
    *,
    tls: bool = False,
    token: str | None = None,
    user: str = "admin",
    history_size: int = 1000,
    bookmark_interval_s: float = 60.0,
) -> AsyncIterator[KubeApiServer]:
    """An in-process server on a free port (TLS material under `tmp_path/tls`)."""
    files = make_kube_tls(tmp_path / "tls") if tls else None
    options = ServerOptions(
        tls_cert=files.cert_file if files else None,
        tls_key=files.key_file if files else None,
        tokens={token: user} if token else {},
        history_size=history_size,
        bookmark_interval_s=bookmark_interval_s,
    )
    server = KubeApiServer(options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class ApiServerProcess:
    """The API server as a child process. `start()` returns once it answers /healthz;
    `stop()` sends SIGTERM, then SIGKILL after 5 s."""

    def __init__(
        self,
        base_dir: Path,
        *,
        token: str | None = None,
        tls: bool = False,
        history_size: int = 1000,
    ) -> None:
        self.base_dir = base_dir
        self.token = token
        self.tls_files = make_kube_tls(base_dir / "tls") if tls else None
        self.port = free_port()
        self.audit_log = base_dir / "audit.jsonl"
        self.log_file = base_dir / "apiserver.log"
        self.history_size = history_size
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        scheme = "https" if self.tls_files else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """The CA to trust (TLS only)."""
        return self.tls_files.ca_file if self.tls_files else None

    def args(self) -> list[str]:
        """The command line."""
        args = [
            sys.executable,
            "-m",
            "tests.k8s_apiserver",
            "--port",
            str(self.port),
            "--audit-log",
            str(self.audit_log),
            "--history-size",
            str(self.history_size),
        ]
        if self.token:
            args += ["--token", f"{self.token}=pgwarden"]
        if self.tls_files:
            args += ["--tls-cert", str(self.tls_files.cert_file)]
            args += ["--tls-key", str(self.tls_files.key_file)]
        return args

    def start(self) -> None:
        """Spawn and wait until healthy (raises RuntimeError with the log otherwise)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.args(), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        context = _ssl_for(self.ca_file)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1, context=context):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"API server did not start: {self.log_file.read_text()[-2000:]}")

    def stop(self) -> None:
        """Terminate (idempotent)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for this server."""
        return write_kubeconfig(path, url=self.url, ca_file=self.ca_file, token=self.token)


@contextlib.contextmanager
def apiserver_process(base_dir: Path, **kwargs: Any) -> Iterator[ApiServerProcess]:
    """A started ApiServerProcess, always stopped afterwards."""
    proc = ApiServerProcess(base_dir, **kwargs)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


# -- pytest fixtures (re-export them from a conftest) -------------------------------------------


@pytest.fixture
async def kube_apiserver(tmp_path: Path) -> AsyncIterator[KubeApiServer]:
    """A fresh in-process API server (HTTP, no authentication)."""
    async with kube_server(tmp_path) as server:
        yield server


@pytest.fixture
def kube_apiserver_process(tmp_path: Path) -> Iterator[ApiServerProcess]:
    """A fresh API server process with bearer token `pgwarden-token` and an audit log."""
    with apiserver_process(tmp_path / "apiserver", token="pgwarden-token") as proc:
        yield proc


@dataclass(frozen=True, slots=True, kw_only=True)
class RawResponse:
    """An HTTP answer of the API server, body decoded as JSON when possible."""

    status: int
    body: Any
    headers: dict[str, str]


async def raw_request(
    url: str,
    method: str,
    path: str,
    *,
    body: Any = None,
    content_type: str = "application/json",
    token: str | None = None,
    ca_file: Path | None = None,
    timeout_s: float = 5.0,
) -> RawResponse:
    """One request with plain aiohttp (for edge cases the typed client hides)."""
    headers = {"Content-Type": content_type} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.request(
            method, url + path, data=data, headers=headers, ssl=_ssl_for(ca_file) or True
        ) as resp,
    ):
        text = await resp.text()
        try:
            decoded: Any = json.loads(text)
        except ValueError:
            decoded = text
        return RawResponse(status=resp.status, body=decoded, headers=dict(resp.headers))


async def raw_watch(
    url: str,
    path: str,
    *,
    max_events: int | None = None,
    timeout_s: float = 5.0,
    token: str | None = None,
) -> list[dict[str, Any]]:
    """Open a watch (`path` includes the query, e.g. `...?watch=true&resourceVersion=5`) and
    collect its events until the stream ends or `max_events` arrived. Raises TimeoutError after
    `timeout_s`, aiohttp errors if the connection breaks."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.get(url + path, headers=headers) as resp,
    ):
        resp.raise_for_status()
        while max_events is None or len(events) < max_events:
            line = await resp.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events
