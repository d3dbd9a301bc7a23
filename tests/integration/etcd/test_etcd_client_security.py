"""The etcd client against etcd with authentication, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.dcs.etcd_client import EtcdAuthFailed, EtcdClient, EtcdUnavailable, EventType
from tests.support.etcd import EtcdCluster, TlsFiles, make_tls_files, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

USER = "root"
PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def etcd_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    # Simple tokens that expire after 1 s of disuse, to exercise re-authentication.
    with running_cluster(
        1,
        tmp_path_factory.mktemp("etcd-auth"),
        auth=(USER, PASSWORD),
        extra_args=("--auth-token=simple", "--auth-token-ttl=1"),
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def etcd_tls(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[EtcdCluster]:
    with running_cluster(1, tmp_path_factory.mktemp("etcd-tls"), tls=tls_files) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd_mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    base = tmp_path_factory.mktemp("etcd-mtls")
    tls = make_tls_files(base / "certs", client_cert_auth=True)
    with running_cluster(1, base, tls=tls) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def make_client(
    endpoints: list[str],
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(
        endpoints,
        timeout_s=2.0,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=username,
        password=password,
    )
    try:
        yield client
    finally:
        await client.close()


async def test_auth_with_the_right_password_reads_writes_and_watches(
    etcd_auth: EtcdCluster,
) -> None:
    async with make_client(etcd_auth.endpoints, username=USER, password=PASSWORD) as client:
        revision = await client.put(b"/auth/a", b"1")
        assert [kv.value for kv in (await client.range(b"/auth/a")).kvs] == [b"1"]
        async with asyncio.timeout(5):
            async for batch in client.watch(b"/auth/", start_revision=revision):
                assert [e.type for e in batch.events] == [EventType.PUT]
                break


async def test_auth_with_a_wrong_password_raises_auth_failed_without_the_password(
    etcd_auth: EtcdCluster,
) -> None:
    async with make_client(etcd_auth.endpoints, username=USER, password="wrong-pw") as client:
        with pytest.raises(EtcdAuthFailed) as raised:
            await client.range(b"/auth/a")
    assert "wrong-pw" not in str(raised.value)


async def test_auth_without_credentials_raises_auth_failed(etcd_auth: EtcdCluster) -> None:
    async with make_client(etcd_auth.endpoints) as client:
        with pytest.raises(EtcdAuthFailed):
            await client.range(b"/auth/a")


async def test_an_expired_token_is_replaced_by_authenticating_again(
    etcd_auth: EtcdCluster,
) -> None:
    async with make_client(etcd_auth.endpoints, username=USER, password=PASSWORD) as client:
        await client.put(b"/auth/b", b"1")
        await asyncio.sleep(2.5)  # the token expires after 1 s unused
        assert [kv.value for kv in (await client.range(b"/auth/b")).kvs] == [b"1"]


async def test_tokens_invalidated_by_etcd_are_replaced_by_authenticating_again(
    etcd_auth: EtcdCluster,
) -> None:
    async with make_client(etcd_auth.endpoints, username=USER, password=PASSWORD) as client:
        await client.put(b"/auth/c", b"1")
        # Disabling and enabling auth drops every token etcd has handed out.
        etcd_auth.etcdctl("auth", "disable")
        etcd_auth.etcdctl("auth", "enable")
        lease_id, _ = await client.lease_grant(5)
        await client.put(b"/auth/c", b"2", lease=lease_id)
        assert [kv.value for kv in (await client.range(b"/auth/c")).kvs] == [b"2"]
        # Many calls that find their token rejected at once all recover.
        etcd_auth.etcdctl("auth", "disable")
        etcd_auth.etcdctl("auth", "enable")
        results = await asyncio.gather(*(client.range(b"/auth/c") for _ in range(10)))
        assert all(r.kvs[0].value == b"2" for r in results)


async def test_tls_with_a_ca_file_verifies_the_server(
    etcd_tls: EtcdCluster, tls_files: TlsFiles
) -> None:
    assert etcd_tls.endpoints[0].startswith("https://")
    async with make_client(etcd_tls.endpoints, ca_file=str(tls_files.ca_file)) as client:
        revision = await client.put(b"/tls/a", b"1")
        assert (await client.range(b"/tls/a")).kvs[0].value == b"1"
        async with asyncio.timeout(5):
            async for batch in client.watch(b"/tls/", start_revision=revision):
                assert batch.events[0].kv.key == b"/tls/a"
                break


async def test_tls_without_the_ca_file_refuses_an_unknown_server(etcd_tls: EtcdCluster) -> None:
    async with make_client(etcd_tls.endpoints) as client:
        with pytest.raises(EtcdUnavailable):
            await client.range(b"/tls/a")


async def test_mutual_tls_works_with_a_client_certificate(etcd_mtls: EtcdCluster) -> None:
    tls = etcd_mtls.tls
    assert tls is not None
    async with make_client(
        etcd_mtls.endpoints,
        ca_file=str(tls.ca_file),
        cert_file=str(tls.client_cert),
        key_file=str(tls.client_key),
    ) as client:
        await client.put(b"/mtls/a", b"1")
        assert (await client.range(b"/mtls/a")).kvs[0].value == b"1"


async def test_mutual_tls_refuses_a_client_without_a_certificate(etcd_mtls: EtcdCluster) -> None:
    tls = etcd_mtls.tls
    assert tls is not None
    async with make_client(etcd_mtls.endpoints, ca_file=str(tls.ca_file)) as client:
        with pytest.raises(EtcdUnavailable):
            await client.range(b"/mtls/a")


async def test_credentials_are_not_needed_when_etcd_runs_without_auth(etcd1: EtcdCluster) -> None:
    async with make_client(etcd1.endpoints, username=USER, password=PASSWORD) as client:
        await client.put(b"/noauth/a", b"1")
        assert (await client.range(b"/noauth/a")).kvs[0].value == b"1"
