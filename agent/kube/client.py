"""The agent's Kubernetes API client: a thin layer on the agent's own HTTP client
(agent/http/client.py), built from a kubeconfig file or,
in a pod, from its service account (token, CA and the KUBERNETES_SERVICE_HOST/PORT
variables). The agent makes a dozen kinds of JSON requests; kubernetes_asyncio, which did
this before, costs about 41 MB of RSS for its generated models alone (bench/footprint.py),
the same rule that replaced etcd3-py with our own client (docs/facts.md, "etcd 3.4.23" and
"Idle footprint").

`KubeClient.call_api` keeps the call shape of kubernetes_asyncio's `ApiClient.call_api` that
the callers use (path, method, query_params, header_params, body, `_request_timeout` as
seconds, or (connect, read) seconds for a stream), and returns the response unread
(`HttpResponse`: `status`, `headers`, `read()`, `content.readline()`, `release()`, the shape
of aiohttp's that kubernetes_asyncio returns): the caller reads and releases it (a watch
reads it line by line). `KubeRequests` is the request side
the pod label task and the Events share: a lazily built client, JSON in and out, a bounded
request, an error naming the status (`RequestRefused`; for a 429 it carries the server's
Retry-After with jitter, which those tasks wait out before they try again: `retry_wait_s`).

The service-account directory defaults to `/var/run/secrets/kubernetes.io/serviceaccount`;
`PGWARDEN_SA_DIR` (or the `environ` argument) points elsewhere, which is how the in-cluster
path is tested outside a pod. Bearer tokens read from files are re-read when the file
changes (projected tokens rotate). Kubeconfig: the current context's cluster (`server`,
`certificate-authority[-data]`, `insecure-skip-tls-verify`) and user (`token`, `tokenFile`,
`client-certificate[-data]` + `client-key[-data]`); exec plugins, auth providers and basic
auth are refused with a clear error.

Building a client only reads local files (no request); errors in the configuration raise
`KubeConfigError` with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from agent.http.client import HttpClient, HttpResponse
from agent.lean import system_ca_context

SA_DIR_ENV = "PGWARDEN_SA_DIR"
_CLOSE_TIMEOUT_S = 2.0
DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# What the DCS backend, the label task and the Events take: a factory of clients.
ApiClient = Any
ClientFactory = Callable[[], Awaitable[ApiClient]]
_UNSUPPORTED_USER_KEYS = ("exec", "auth-provider", "username", "password")


class KubeConfigError(Exception):
    """The kubeconfig or the service account could not be loaded."""


_RETRY_AFTER_JITTER = 0.3  # a Retry-After is waited out 1 to 1.3 times: not all at once


class RequestRefused(RuntimeError):
    """An answer whose status the caller did not expect. `retry_after_s`: for a 429 (the
    server throttles) its Retry-After with jitter, None without one or for another status."""

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def retry_wait_s(failure: BaseException, backoff_s: float) -> float:
    """How long a task waits before it tries a failed request again: its backoff, or the
    server's Retry-After if that is longer (a throttling server is never hammered)."""
    after_s = failure.retry_after_s if isinstance(failure, RequestRefused) else None
    return backoff_s if after_s is None else max(backoff_s, after_s)


def _retry_after_s(status: int, headers: Mapping[str, str]) -> float | None:
    if status != 429:
        return None
    try:
        value = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value * (1 + _RETRY_AFTER_JITTER * random.random()) if value >= 0 else None


class _TokenFile:
    """A bearer token kept in a file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int] | None = None
        self._token = ""

    def __call__(self) -> str:
        stat = self._path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature != self._seen:
            self._token = self._path.read_text().strip()
            self._seen = signature
        return self._token


class KubeClient:
    """Requests to one API server (see the module docstring)."""

    def __init__(
        self, *, host: str, token: Callable[[], str] | None, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.host = host.rstrip("/")
        self._token = token
        if ssl_context is None and self.host.startswith("https://"):
            ssl_context = system_ca_context()
        self._ssl = ssl_context
        self._http: HttpClient | None = None

    async def call_api(
        self,
        path: str,
        method: str,
        *,
        query_params: Sequence[tuple[str, str]] | None = None,
        header_params: Mapping[str, str] | None = None,
        body: Any = None,
        auth_settings: Sequence[str] | None = None,
        _preload_content: bool = False,
        _request_timeout: float | tuple[float, float] | None = None,
    ) -> HttpResponse:
        """One request; the caller reads and releases the response. `_request_timeout`: the
        whole request, body included, in seconds; or (connect, read) for a stream: the
        connection within the first, then never silent for longer than the second."""
        del auth_settings, _preload_content  # the call shape of kubernetes_asyncio
        if self._http is None:
            self._http = HttpClient(ssl_context=self._ssl)
        headers = dict(header_params or {})
        if (authorization := self.authorization()) is not None:
            headers["Authorization"] = authorization
        total: float | None = None
        connect: float | None = None
        read: float | None = None
        if isinstance(_request_timeout, tuple):
            connect, read = _request_timeout
        else:
            total = _request_timeout
        return await self._http.request(
            method,
            self.host + path,
            params=list(query_params or ()),
            headers=headers,
            body=None if body is None else json.dumps(body).encode(),
            timeout=total,
            connect_timeout=connect,
            read_timeout=read,
        )

    def authorization(self) -> str | None:
        """The Authorization header of the next request (a token file is re-read when it
        changed), None without a token."""
        token = self._token() if self._token is not None else ""
        return f"Bearer {token}" if token else None

    @property
    def verifies_tls(self) -> bool:
        """True if https requests check the server's certificate."""
        return self._ssl is not None and self._ssl.verify_mode != ssl.CERT_NONE

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()


class KubeRequests:
    """JSON requests for one part of the agent (the pod label task, the Events): the client is
    built by `factory` on the first request; each request, client construction included, is
    bounded by `timeout_s`. An answer whose status is not in `ok` raises `RequestRefused` (a
    `RuntimeError`) naming the request, the status and the start of the body."""

    def __init__(self, factory: ClientFactory, *, timeout_s: float) -> None:
        self._factory = factory
        self._timeout_s = timeout_s
        self._api: ApiClient = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (200,),
    ) -> Any:
        """One request; the decoded JSON body (None if empty or not JSON)."""
        async with asyncio.timeout(self._timeout_s):
            if self._api is None:
                self._api = await self._factory()
            response: Any = await self._api.call_api(
                path,
                method,
                query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self._timeout_s,
            )
            try:
                status = int(response.status)
                data = await response.read()
                retry_after_s = _retry_after_s(status, response.headers)
            finally:
                response.release()
        if status not in ok:
            text = data[:300].decode("utf-8", errors="replace")
            message = f"{method} {path}: HTTP {status}: {text}"
            raise RequestRefused(message, status=status, retry_after_s=retry_after_s)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    async def close(self) -> None:
        """Close the client if one was built (bounded; errors ignored)."""
        api, self._api = self._api, None
        if api is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await api.close()


def service_account_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(SA_DIR_ENV) or DEFAULT_SA_DIR)


def _in_cluster(environ: Mapping[str, str]) -> KubeClient:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
    sa_dir = service_account_dir(environ)
    token = _TokenFile(sa_dir / "token")
    token()  # a missing or unreadable token fails here, as a configuration error
    context = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
    address = f"[{host}]" if ":" in host else host
    return KubeClient(host=f"https://{address}:{port}", token=token, ssl_context=context)


def _named(document: Mapping[str, Any], section: str, name: str, field: str) -> dict[str, Any]:
    for entry in document.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(field)
            return value if isinstance(value, dict) else {}
    raise KubeConfigError(f"{section}: no entry named {name!r}")


def _data_file(data: str, directory: Path, name: str) -> str:
    """A `*-data` value (base64 PEM) as a private file, for ssl's file-only APIs."""
    path = directory / name
    path.write_bytes(base64.b64decode(data))
    path.chmod(0o600)
    return str(path)


def _from_kubeconfig(path: Path) -> KubeClient:
    document: Any = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise KubeConfigError("not a kubeconfig document")
    context = _named(document, "contexts", str(document.get("current-context") or ""), "context")
    cluster = _named(document, "clusters", str(context.get("cluster") or ""), "cluster")
    user = _named(document, "users", str(context.get("user") or ""), "user")
    if unsupported := [key for key in _UNSUPPORTED_USER_KEYS if key in user]:
        raise KubeConfigError(f"user: {', '.join(unsupported)} is not supported (use a token)")
    server = str(cluster.get("server") or "")
    if not server.startswith(("http://", "https://")):
        raise KubeConfigError(f"cluster.server: must be an http(s) URL, got {server[:80]!r}")
    base = path.parent
    ssl_context = None
    if server.startswith("https://"):
        ca = cluster.get("certificate-authority")
        ca_data = cluster.get("certificate-authority-data")
        ssl_context = ssl.create_default_context(
            cafile=str(base / ca) if ca else None,
            cadata=base64.b64decode(ca_data).decode() if ca_data else None,
        )
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        cert, key = user.get("client-certificate"), user.get("client-key")
        cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
        if cert_data and key_data:
            private = Path(tempfile.mkdtemp(prefix="pgwarden-kube-"))
            cert = _data_file(cert_data, private, "client.crt")
            key = _data_file(key_data, private, "client.key")
        if cert and key:
            ssl_context.load_cert_chain(str(base / cert), str(base / key))
    token: Callable[[], str] | None = None
    if isinstance(user.get("token"), str):
        value = user["token"]
        token = lambda: value  # noqa: E731 - a constant token
    elif isinstance(user.get("tokenFile"), str):
        token = _TokenFile(base / user["tokenFile"])
        token()
    return KubeClient(host=server, token=token, ssl_context=ssl_context)


async def make_api_client(
    kubeconfig: str | None, *, environ: Mapping[str, str] | None = None
) -> KubeClient:
    """A new client: from `kubeconfig` when given, else the in-cluster service account.
    The caller closes it (`await client.close()`)."""
    env = dict(os.environ if environ is None else environ)
    try:
        return _from_kubeconfig(Path(kubeconfig)) if kubeconfig else _in_cluster(env)
    except (OSError, ValueError, ssl.SSLError, yaml.YAMLError, KeyError) as exc:
        source = kubeconfig if kubeconfig is not None else "in-cluster service account"
        raise KubeConfigError(f"kubernetes configuration ({source}): {exc}") from exc
    except KubeConfigError as exc:
        source = kubeconfig if kubeconfig is not None else "in-cluster service account"
        raise KubeConfigError(f"kubernetes configuration ({source}): {exc}") from None


def client_factory(
    kubeconfig: str | None, *, environ: Mapping[str, str] | None = None
) -> ClientFactory:
    """A factory for `make_api_client`, to hand to the parts that build clients lazily."""

    async def build() -> ApiClient:
        return await make_api_client(kubeconfig, environ=environ)

    return build
