"""Building the Kubernetes API client from a kubeconfig or the in-cluster service account
(local files only: nothing here talks to a server)."""

from __future__ import annotations

import base64
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
        assert api.host == "http://127.0.0.1:6443"
        assert api.authorization() == "Bearer t0k"
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
        assert api.host == "https://127.0.0.1:443"
        assert api.verifies_tls
        assert api.authorization() == "Bearer sa-token"
        # A projected token rotates: the next request carries the new one.
        (tmp_path / "token").write_text("rotated-token")
        assert api.authorization() == "Bearer rotated-token"
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


def kubeconfig(path: Path, cluster: dict[str, object], user: dict[str, object]) -> str:
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


async def test_embedded_ca_and_client_certificate_data_are_loaded(tmp_path: Path) -> None:
    ca = trustme.CA()
    client = ca.issue_cert("pgwarden")

    def b64(blob: bytes) -> str:
        return base64.b64encode(blob).decode()

    path = kubeconfig(
        tmp_path / "kubeconfig",
        {"server": "https://10.0.0.1:6443", "certificate-authority-data": b64(ca.cert_pem.bytes())},
        {
            "client-certificate-data": b64(client.cert_chain_pems[0].bytes()),
            "client-key-data": b64(client.private_key_pem.bytes()),
        },
    )
    api = await make_api_client(path)
    try:
        assert api.verifies_tls and api.authorization() is None
    finally:
        await api.close()


@pytest.mark.parametrize("user", [{"exec": {"command": "aws"}}, {"username": "a", "password": "b"}])
async def test_auth_the_agent_does_not_speak_is_refused_by_name(
    tmp_path: Path, user: dict[str, object]
) -> None:
    path = kubeconfig(tmp_path / "kubeconfig", {"server": "https://10.0.0.1:6443"}, user)
    with pytest.raises(KubeConfigError, match="not supported"):
        await make_api_client(path)


async def test_a_server_that_is_not_an_url_is_a_config_error(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kubeconfig", {"server": "10.0.0.1:6443"}, {"token": "t"})
    with pytest.raises(KubeConfigError, match=r"cluster\.server"):
        await make_api_client(path)
