"""CRUD semantics of the test API server, through kubernetes_asyncio (what the agent uses)
and raw HTTP for the edges: resourceVersion preconditions, patches, selectors, lists."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.k8s_apiserver import KubeApiServer
from tests.support.kube import raw_request

pytestmark = pytest.mark.integration

NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


def pod(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]},
    }
    body.update(extra)
    return body


def lease(name: str, holder: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10},
    }


async def test_created_objects_get_uid_timestamp_and_increasing_resource_versions(
    kube_client: Any,
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    first = await core.create_namespaced_pod(NS, pod("a"))
    second = await core.create_namespaced_pod(NS, pod("b"))
    assert first.metadata.uid and first.metadata.uid != second.metadata.uid
    assert first.metadata.creation_timestamp is not None
    assert first.metadata.namespace == NS
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    listed = await core.list_namespaced_pod(NS)
    assert [p.metadata.name for p in listed.items] == ["a", "b"]
    assert int(listed.metadata.resource_version) == int(second.metadata.resource_version)


async def test_list_is_an_xlist_with_resource_version_and_items_without_kind(
    kube_apiserver: KubeApiServer,
) -> None:
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a"))
    answer = await raw_request(kube_apiserver.url, "GET", PODS)
    assert answer.body["kind"] == "PodList"
    assert answer.body["apiVersion"] == "v1"
    assert answer.body["metadata"]["resourceVersion"] == str(kube_apiserver.store.resource_version)
    assert "kind" not in answer.body["items"][0]


async def test_create_of_an_existing_name_is_409_already_exists(
    kube_apiserver: KubeApiServer,
) -> None:
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a"))
    answer = await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a"))
    assert answer.status == 409
    assert answer.body["kind"] == "Status"
    assert answer.body["status"] == "Failure"
    assert answer.body["reason"] == "AlreadyExists"
    assert answer.body["code"] == 409
    assert answer.body["details"] == {"name": "a", "kind": "pods"}


async def test_get_of_a_missing_object_is_a_404_not_found_status(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    with pytest.raises(ApiException) as caught:
        await core.read_namespaced_pod("nope", NS)
    assert caught.value.status == 404
    assert json.loads(caught.value.body or b"{}")["reason"] == "NotFound"


async def test_create_in_a_missing_namespace_is_404(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod("nowhere", pod("a"))
    assert caught.value.status == 404
    await core.create_namespace({"metadata": {"name": "nowhere"}})
    created = await core.create_namespaced_pod("nowhere", pod("a"))
    assert created.metadata.namespace == "nowhere"


async def test_put_with_a_stale_resource_version_is_409_conflict(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    created = await core.create_namespaced_pod(NS, pod("a"))
    fresh = await core.read_namespaced_pod("a", NS)
    fresh.metadata.labels = {"role": "primary"}
    updated = await core.replace_namespaced_pod("a", NS, fresh)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    created.metadata.labels = {"role": "replica"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as caught:
        await core.replace_namespaced_pod("a", NS, created)
    assert caught.value.status == 409
    assert json.loads(caught.value.body or b"{}")["reason"] == "Conflict"
    assert (await core.read_namespaced_pod("a", NS)).metadata.labels == {"role": "primary"}


async def test_put_without_resource_version_is_unconditional_for_pods_but_invalid_for_leases(
    kube_apiserver: KubeApiServer,
) -> None:
    url = kube_apiserver.url
    await raw_request(url, "POST", PODS, body=pod("a"))
    answer = await raw_request(url, "PUT", f"{PODS}/a", body=pod("a", {"x": "1"}))
    assert answer.status == 200
    assert answer.body["metadata"]["labels"] == {"x": "1"}
    await raw_request(url, "POST", LEASES, body=lease("leader", "m1"))
    answer = await raw_request(url, "PUT", f"{LEASES}/leader", body=lease("leader", "m2"))
    assert answer.status == 422
    assert answer.body["reason"] == "Invalid"


async def test_put_creates_a_missing_lease_but_not_a_missing_configmap(
    kube_apiserver: KubeApiServer,
) -> None:
    url = kube_apiserver.url
    answer = await raw_request(url, "PUT", f"{LEASES}/leader", body=lease("leader", "m1"))
    assert answer.status == 201
    assert answer.body["spec"]["holderIdentity"] == "m1"
    cm = {"metadata": {"name": "c"}, "data": {"k": "v"}}
    answer = await raw_request(url, "PUT", f"/api/v1/namespaces/{NS}/configmaps/c", body=cm)
    assert answer.status == 404


async def test_put_with_a_name_other_than_the_url_is_400(kube_apiserver: KubeApiServer) -> None:
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a"))
    answer = await raw_request(kube_apiserver.url, "PUT", f"{PODS}/a", body=pod("b"))
    assert answer.status == 400
    assert answer.body["reason"] == "BadRequest"


async def test_an_update_that_changes_nothing_keeps_the_resource_version(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    created = await core.create_namespaced_pod(NS, pod("a", {"x": "1"}))
    same = await core.replace_namespaced_pod("a", NS, created)
    assert same.metadata.resource_version == created.metadata.resource_version
    patched = await core.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"x": "1"}}})
    assert patched.metadata.resource_version == created.metadata.resource_version


async def test_patch_with_a_stale_resource_version_is_409_conflict(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    created = await core.create_namespaced_pod(NS, pod("a"))
    rv = created.metadata.resource_version
    ok = await core.patch_namespaced_pod(
        "a", NS, {"metadata": {"resourceVersion": rv, "labels": {"role": "primary"}}}
    )
    assert ok.metadata.labels == {"role": "primary"}
    for content_type in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
        with pytest.raises(ApiException) as caught:
            await core.patch_namespaced_pod(
                "a",
                NS,
                {"metadata": {"resourceVersion": rv, "labels": {"role": "replica"}}},
                _content_type=content_type,
            )
        assert caught.value.status == 409
    assert (await core.read_namespaced_pod("a", NS)).metadata.labels == {"role": "primary"}


async def test_strategic_merge_patch_merges_labels_and_annotations_and_null_deletes(
    kube_client: Any,
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod(
        NS, pod("a", {"app": "pg", "role": "replica"}, metadata={"name": "a"})
    )
    await core.patch_namespaced_pod(
        "a",
        NS,
        {"metadata": {"labels": {"app": "pg", "role": "replica"}, "annotations": {"s": "1"}}},
    )
    patched = await core.patch_namespaced_pod(
        "a",
        NS,
        {"metadata": {"labels": {"role": "primary", "app": None}, "annotations": {"t": "2"}}},
    )
    assert patched.metadata.labels == {"role": "primary"}
    assert patched.metadata.annotations == {"s": "1", "t": "2"}


async def test_strategic_merge_patch_merges_containers_by_name_but_merge_patch_replaces_lists(
    kube_client: Any,
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod(NS, pod("a"))
    sidecar = {"spec": {"containers": [{"name": "exporter", "image": "exp:1"}]}}
    merged = await core.patch_namespaced_pod("a", NS, sidecar)
    assert [c.name for c in merged.spec.containers] == ["postgres", "exporter"]
    replaced = await core.patch_namespaced_pod(
        "a", NS, sidecar, _content_type="application/merge-patch+json"
    )
    assert [c.name for c in replaced.spec.containers] == ["exporter"]


async def test_merge_patch_merges_annotations_and_null_deletes(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod(NS, pod("a"))
    merge = "application/merge-patch+json"
    await core.patch_namespaced_pod(
        "a", NS, {"metadata": {"annotations": {"a": "1", "b": "2"}}}, _content_type=merge
    )
    patched = await core.patch_namespaced_pod(
        "a", NS, {"metadata": {"annotations": {"a": None, "c": "3"}}}, _content_type=merge
    )
    assert patched.metadata.annotations == {"b": "2", "c": "3"}


async def test_json_patch_applies_operations_and_a_failed_test_is_422_invalid(
    kube_apiserver: KubeApiServer,
) -> None:
    url = kube_apiserver.url
    await raw_request(url, "POST", PODS, body=pod("a", {"x": "1"}))
    ops = [
        {"op": "test", "path": "/metadata/labels/x", "value": "1"},
        {"op": "replace", "path": "/metadata/labels/x", "value": "2"},
        {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
    ]
    answer = await raw_request(
        url, "PATCH", f"{PODS}/a", body=ops, content_type="application/json-patch+json"
    )
    assert answer.status == 200
    assert answer.body["metadata"]["labels"] == {"x": "2"}
    assert answer.body["metadata"]["annotations"] == {"k": "v"}
    rv = answer.body["metadata"]["resourceVersion"]
    answer = await raw_request(
        url,
        "PATCH",
        f"{PODS}/a",
        body=[{"op": "test", "path": "/metadata/labels/x", "value": "1"}],
        content_type="application/json-patch+json",
    )
    assert answer.status == 422
    assert answer.body["reason"] == "Invalid"
    after = await raw_request(url, "GET", f"{PODS}/a")
    assert after.body["metadata"]["resourceVersion"] == rv


async def test_an_unknown_patch_content_type_is_415(kube_apiserver: KubeApiServer) -> None:
    await raw_request(kube_apiserver.url, "POST", PODS, body=pod("a"))
    answer = await raw_request(
        kube_apiserver.url,
        "PATCH",
        f"{PODS}/a",
        body={"metadata": {"labels": {"a": "b"}}},
        content_type="application/json",
    )
    assert answer.status == 415
    assert answer.body["reason"] == "UnsupportedMediaType"


async def test_delete_with_a_failing_precondition_is_409_and_a_matching_one_deletes(
    kube_client: Any,
) -> None:
    coord: Any = client.CoordinationV1Api(kube_client)
    created = await coord.create_namespaced_lease(NS, lease("leader", "m1"))
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version=str(1)))
    with pytest.raises(ApiException) as caught:
        await coord.delete_namespaced_lease("leader", NS, body=stale)
    assert caught.value.status == 409
    wrong_uid = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-it"))
    with pytest.raises(ApiException) as caught:
        await coord.delete_namespaced_lease("leader", NS, body=wrong_uid)
    assert caught.value.status == 409
    matching = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(
            resource_version=created.metadata.resource_version, uid=created.metadata.uid
        )
    )
    status = await coord.delete_namespaced_lease("leader", NS, body=matching)
    assert status.status == "Success"
    with pytest.raises(ApiException) as caught:
        await coord.read_namespaced_lease("leader", NS)
    assert caught.value.status == 404


async def test_delete_of_a_pod_returns_the_pod(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod(NS, pod("a"))
    gone = await core.delete_namespaced_pod("a", NS)
    assert gone.metadata.name == "a"


async def test_pod_status_changes_only_through_the_status_subresource(
    kube_apiserver: KubeApiServer,
) -> None:
    url = kube_apiserver.url
    created = await raw_request(
        url, "POST", PODS, body=pod("a", status={"phase": "Running", "podIP": "127.0.0.2"})
    )
    body = created.body
    body["status"] = {"phase": "Failed"}
    body["metadata"]["labels"] = {"x": "1"}
    main = await raw_request(url, "PUT", f"{PODS}/a", body=body)
    assert main.body["status"] == {"phase": "Running", "podIP": "127.0.0.2"}
    assert main.body["metadata"]["labels"] == {"x": "1"}
    status = await raw_request(
        url,
        "PATCH",
        f"{PODS}/a/status",
        body={"status": {"phase": "Succeeded"}, "metadata": {"labels": {"x": "2"}}},
        content_type="application/merge-patch+json",
    )
    assert status.body["status"]["phase"] == "Succeeded"
    assert status.body["metadata"]["labels"] == {"x": "1"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("role=primary", ["p1"]),
        ("role==primary", ["p1"]),
        ("role!=primary", ["p2", "p3"]),
        ("role in (primary,replica)", ["p1", "p2"]),
        ("role notin (primary)", ["p2", "p3"]),
        ("role", ["p1", "p2"]),
        ("!role", ["p3"]),
        ("app=pg,role=replica", ["p2"]),
        ("app=pg,!role", []),
    ],
)
async def test_label_selectors_filter_lists(
    kube_client: Any, selector: str, expected: list[str]
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod(NS, pod("p1", {"app": "pg", "role": "primary"}))
    await core.create_namespaced_pod(NS, pod("p2", {"app": "pg", "role": "replica"}))
    await core.create_namespaced_pod(NS, pod("p3", {"other": "x"}))
    listed = await core.list_namespaced_pod(NS, label_selector=selector)
    assert [p.metadata.name for p in listed.items] == expected


async def test_a_malformed_label_selector_is_400(kube_apiserver: KubeApiServer) -> None:
    answer = await raw_request(kube_apiserver.url, "GET", f"{PODS}?labelSelector=a%20in%20b")
    assert answer.status == 400


async def test_field_selectors_on_name_and_namespace_filter_and_unknown_fields_are_400(
    kube_client: Any,
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespace({"metadata": {"name": "other"}})
    await core.create_namespaced_pod(NS, pod("p1"))
    await core.create_namespaced_pod(NS, pod("p2"))
    await core.create_namespaced_pod("other", pod("p1"))
    by_name = await core.list_namespaced_pod(NS, field_selector="metadata.name=p1")
    assert [p.metadata.name for p in by_name.items] == ["p1"]
    not_name = await core.list_namespaced_pod(NS, field_selector="metadata.name!=p1")
    assert [p.metadata.name for p in not_name.items] == ["p2"]
    everywhere = await core.list_pod_for_all_namespaces(field_selector="metadata.namespace==other")
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [("other", "p1")]
    with pytest.raises(ApiException) as caught:
        await core.list_namespaced_pod(NS, field_selector="spec.nope=x")
    assert caught.value.status == 400


async def test_list_pages_with_limit_and_continue_at_one_resource_version(
    kube_client: Any,
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    for i in range(5):
        await core.create_namespaced_pod(NS, pod(f"p{i}"))
    first = await core.list_namespaced_pod(NS, limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    await core.create_namespaced_pod(NS, pod("p9"))  # not in the snapshot being paged
    second = await core.list_namespaced_pod(NS, limit=10, _continue=first.metadata._continue)
    assert [p.metadata.name for p in second.items] == ["p2", "p3", "p4"]
    assert second.metadata.resource_version == first.metadata.resource_version
    assert second.metadata._continue is None


async def test_list_at_an_exact_past_resource_version_shows_the_past_and_too_old_is_410(
    kube_apiserver: KubeApiServer,
) -> None:
    url = kube_apiserver.url
    created = await raw_request(url, "POST", PODS, body=pod("a", {"v": "1"}))
    rv = created.body["metadata"]["resourceVersion"]
    await raw_request(
        url,
        "PATCH",
        f"{PODS}/a",
        body={"metadata": {"labels": {"v": "2"}}},
        content_type="application/merge-patch+json",
    )
    await raw_request(url, "POST", PODS, body=pod("b"))
    past = await raw_request(url, "GET", f"{PODS}?resourceVersion={rv}&resourceVersionMatch=Exact")
    assert [(i["metadata"]["name"], i["metadata"]["labels"]) for i in past.body["items"]] == [
        ("a", {"v": "1"})
    ]
    assert past.body["metadata"]["resourceVersion"] == rv
    kube_apiserver.store.compact()
    gone = await raw_request(url, "GET", f"{PODS}?resourceVersion={rv}&resourceVersionMatch=Exact")
    assert gone.status == 410
    assert gone.body["reason"] == "Expired"


async def test_endpoints_endpointslices_and_configmaps_are_stored_as_given(
    kube_client: Any,
) -> None:
    core: Any = client.CoreV1Api(kube_client)
    disc: Any = client.DiscoveryV1Api(kube_client)
    ep = await core.create_namespaced_endpoints(
        NS,
        {
            "metadata": {"name": "pg", "annotations": {"leader": "m1"}},
            "subsets": [{"addresses": [{"ip": "127.0.0.2"}], "ports": [{"port": 5432}]}],
        },
    )
    assert ep.subsets[0].addresses[0].ip == "127.0.0.2"
    es = await disc.create_namespaced_endpoint_slice(
        NS,
        {
            "metadata": {"name": "pg-1", "labels": {"kubernetes.io/service-name": "pg"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.2"]}],
            "ports": [{"port": 5432}],
        },
    )
    assert es.endpoints[0].addresses == ["127.0.0.2"]
    cm = await core.create_namespaced_config_map(
        NS, {"metadata": {"name": "c"}, "data": {"k": "v"}}
    )
    assert cm.data == {"k": "v"}


async def test_create_with_a_resource_version_is_refused(kube_apiserver: KubeApiServer) -> None:
    body = pod("a")
    body["metadata"]["resourceVersion"] = "5"
    answer = await raw_request(kube_apiserver.url, "POST", PODS, body=body)
    assert answer.status == 500
    assert "resourceVersion should not be set" in answer.body["message"]


async def test_put_or_patch_on_a_collection_is_405(kube_apiserver: KubeApiServer) -> None:
    answer = await raw_request(kube_apiserver.url, "PUT", PODS, body=pod("a"))
    assert (answer.status, answer.body["reason"]) == (405, "MethodNotAllowed")


async def test_namespaces_are_served_with_their_status_subresource(
    kube_apiserver: KubeApiServer,
) -> None:
    ns = await raw_request(kube_apiserver.url, "GET", "/api/v1/namespaces/default")
    assert ns.body["status"] == {"phase": "Active"}
    status = await raw_request(kube_apiserver.url, "GET", "/api/v1/namespaces/default/status")
    assert status.body["metadata"]["name"] == "default"


async def test_deleting_a_namespace_deletes_its_objects(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    await core.create_namespace({"metadata": {"name": "gone"}})
    await core.create_namespaced_pod("gone", pod("a"))
    await core.delete_namespace("gone")
    assert (await core.list_pod_for_all_namespaces()).items == []


async def test_a_pod_created_without_status_is_pending(kube_client: Any) -> None:
    core: Any = client.CoreV1Api(kube_client)
    created = await core.create_namespaced_pod(NS, pod("a"))
    assert created.status.phase == "Pending"
