"""Fault injection of the test API server: errors (5xx, 429 + Retry-After), slow answers,
hung requests (the client's timeout fires), path and method filters, faults set from Python."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer
from tests.support.kube import raw_request, set_fault

pytestmark = pytest.mark.integration

NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
POD = {"metadata": {"name": "a"}, "spec": {"containers": [{"name": "pg", "image": "pg"}]}}


async def test_an_error_fault_answers_503_for_count_requests_then_recovers(
    kube_apiserver: KubeApiServer, kube_client: Any
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod(NS, POD)
    await set_fault(kube_apiserver.url, {"mode": "error", "status": 503, "count": 2})
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            await core.read_namespaced_pod("a", NS)
        assert caught.value.status == 503
        status = json.loads(caught.value.body or b"{}")
        assert (status["kind"], status["reason"]) == ("Status", "ServiceUnavailable")
    assert (await core.read_namespaced_pod("a", NS)).metadata.name == "a"


async def test_a_429_fault_sends_retry_after(kube_apiserver: KubeApiServer) -> None:
    await set_fault(kube_apiserver.url, {"mode": "error", "status": 429, "retry_after_s": 2})
    answer = await raw_request(kube_apiserver.url, "GET", PODS)
    assert answer.status == 429
    assert answer.headers["Retry-After"] == "2"
    assert answer.body["reason"] == "TooManyRequests"
    assert answer.body["details"]["retryAfterSeconds"] == 2
    await set_fault(kube_apiserver.url, {"mode": "clear"})
    assert (await raw_request(kube_apiserver.url, "GET", PODS)).status == 200


async def test_a_slow_fault_delays_answers(kube_apiserver: KubeApiServer) -> None:
    await set_fault(kube_apiserver.url, {"mode": "slow", "delay_s": 0.5, "count": 1})
    started = time.monotonic()
    assert (await raw_request(kube_apiserver.url, "GET", PODS)).status == 200
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    await raw_request(kube_apiserver.url, "GET", PODS)
    assert time.monotonic() - started < 0.4


async def test_a_hang_fault_makes_the_client_time_out_until_cleared(
    kube_apiserver: KubeApiServer, kube_client: Any
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await set_fault(kube_apiserver.url, {"mode": "hang"})
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await core.list_namespaced_pod(NS, _request_timeout=0.5)
    assert 0.4 <= time.monotonic() - started < 2.0
    await set_fault(kube_apiserver.url, {"mode": "clear"})
    listed = await core.list_namespaced_pod(NS, _request_timeout=2)
    assert listed.items == []
    for _ in range(100):  # the abandoned request's handler was cancelled with its client
        if kube_apiserver.faults.hung_requests == 0:
            break
        await asyncio.sleep(0.02)
    assert kube_apiserver.faults.hung_requests == 0


async def test_a_path_prefix_and_methods_limit_the_affected_requests(
    kube_apiserver: KubeApiServer,
) -> None:
    url = kube_apiserver.url
    await set_fault(
        url,
        {
            "mode": "error",
            "status": 500,
            "path_prefix": "/apis/coordination.k8s.io/",
            "methods": ["PUT", "POST"],
        },
    )
    lease = {"metadata": {"name": "leader"}, "spec": {"holderIdentity": "m1"}}
    assert (await raw_request(url, "POST", PODS, body=POD)).status == 201
    assert (await raw_request(url, "GET", LEASES)).status == 200
    failed = await raw_request(url, "POST", LEASES, body=lease)
    assert failed.status == 500
    assert failed.body["reason"] == "InternalError"


async def test_faults_can_be_set_from_python_when_in_process(
    kube_apiserver: KubeApiServer,
) -> None:
    kube_apiserver.faults.set(Fault(mode=FaultMode.ERROR, status=504, count=1))
    answer = await raw_request(kube_apiserver.url, "GET", PODS)
    assert (answer.status, answer.body["reason"]) == (504, "Timeout")
    assert (await raw_request(kube_apiserver.url, "GET", PODS)).status == 200


async def test_an_invalid_fault_is_rejected_with_400(kube_apiserver: KubeApiServer) -> None:
    answer = await raw_request(kube_apiserver.url, "POST", "/_fault", body={"mode": "explode"})
    assert answer.status == 400
