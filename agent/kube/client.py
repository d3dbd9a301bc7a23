"""Building a kubernetes_asyncio `ApiClient`: from a kubeconfig file, or in a pod from its
service account (token, CA and the KUBERNETES_SERVICE_HOST/PORT variables).

The service-account directory defaults to `/var/run/secrets/kubernetes.io/serviceaccount`;
`PGWARDEN_SA_DIR` (or the `sa_dir` argument) points elsewhere, which is how the in-cluster path
is tested outside a pod. The token file is re-read when it changes (projected tokens rotate):
kubernetes_asyncio's in-cluster loader refreshes it every minute.

Nothing here talks to the API server; building a client only reads local files. Errors in the
configuration raise `KubeConfigError` with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

SA_DIR_ENV = "PGWARDEN_SA_DIR"
DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# An ApiClient, untyped in kubernetes_asyncio; only the DCS backend and the label task use it.
ApiClient = Any
ClientFactory = Callable[[], Awaitable[ApiClient]]


class KubeConfigError(Exception):
    """The kubeconfig or the service account could not be loaded."""


def service_account_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(SA_DIR_ENV) or DEFAULT_SA_DIR)


async def make_api_client(
    kubeconfig: str | None, *, environ: Mapping[str, str] | None = None
) -> ApiClient:
    """A new ApiClient: from `kubeconfig` when given, else the in-cluster service account.
    The caller closes it (`await api.close()`)."""
    configuration: Any = k8s_client.Configuration()
    try:
        if kubeconfig is not None:
            await k8s_config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        else:
            env = dict(os.environ if environ is None else environ)
            sa_dir = service_account_dir(env)
            loader: Any = InClusterConfigLoader(
                token_filename=str(sa_dir / "token"),
                cert_filename=str(sa_dir / "ca.crt"),
                environ=env,
            )
            loader.load_and_set(configuration)
        # Loads the CA file (an unreadable or bad one fails here, as a config error).
        return k8s_client.ApiClient(configuration=configuration)
    except (k8s_config.ConfigException, OSError, ValueError) as exc:
        source = kubeconfig if kubeconfig is not None else "in-cluster service account"
        raise KubeConfigError(f"kubernetes configuration ({source}): {exc}") from exc


def client_factory(
    kubeconfig: str | None, *, environ: Mapping[str, str] | None = None
) -> ClientFactory:
    """A factory for `make_api_client`, to hand to the parts that build clients lazily."""

    async def build() -> ApiClient:
        return await make_api_client(kubeconfig, environ=environ)

    return build
