"""Building the Kubernetes API client from a kubeconfig or the in-cluster service account
(local files only: nothing here talks to a server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trustme

from agent.kube.client import (
    DEFAULT_SA_DIR,
    SA_DIR_ENV,
    KubeConfigError,
    make_api_client,
    service_account_dir,
)


def test_the_service_account_directory_is_overridable_for_tests() -> None:
    assert service_account_dir({}) == Path(DEFAULT_SA_DIR)
    assert service_account_dir({SA_DIR_ENV: "/tmp/sa"}) == Path("/tmp/sa")


async def test_a_kubeconfig_gives_its_server_and_bearer_token(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t0k"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    api = await make_api_client(str(path))
    try:
        assert api.configuration.host == "http://127.0.0.1:6443"
        assert await api.configuration.get_api_key_with_prefix("BearerToken") == "Bearer t0k"
    finally:
        await api.close()


async def test_in_cluster_uses_the_service_host_token_and_ca(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    env = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        SA_DIR_ENV: str(tmp_path),
    }
    api = await make_api_client(None, environ=env)
    try:
        assert api.configuration.host == "https://127.0.0.1:443"
        assert api.configuration.ssl_ca_cert == str(tmp_path / "ca.crt")
        assert await api.configuration.get_api_key_with_prefix("BearerToken") == "Bearer sa-token"
    finally:
        await api.close()


@pytest.mark.parametrize(
    "env",
    [
        {},  # not in a pod: no KUBERNETES_SERVICE_HOST
        {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
    ],
)
async def test_a_missing_service_account_is_a_config_error_naming_the_source(
    tmp_path: Path, env: dict[str, str]
) -> None:
    with pytest.raises(KubeConfigError, match="in-cluster service account"):
        await make_api_client(None, environ={**env, SA_DIR_ENV: str(tmp_path / "none")})


async def test_a_ca_file_that_is_not_a_certificate_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("garbage")
    env = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        SA_DIR_ENV: str(tmp_path),
    }
    with pytest.raises(KubeConfigError):
        await make_api_client(None, environ=env)


async def test_a_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="kubeconfig-missing"):
        await make_api_client(str(tmp_path / "kubeconfig-missing"))
