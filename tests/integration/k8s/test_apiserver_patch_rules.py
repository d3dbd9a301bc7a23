"""The patch and selector functions of the test API server on plain values (no server):
strategic-merge directives, RFC 6902 operations, RFC 7386 nulls, selector operators."""

from __future__ import annotations

from typing import Any

import pytest

from tests.k8s_apiserver.errors import ApiError
from tests.k8s_apiserver.patch import json_patch, merge_patch, strategic_merge_patch
from tests.k8s_apiserver.selectors import parse_label_selector

pytestmark = pytest.mark.integration

POD: dict[str, Any] = {
    "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
    "spec": {
        "containers": [{"name": "pg", "image": "pg:15"}, {"name": "exp", "image": "exp:1"}],
        "volumes": [{"name": "data"}],
        "args": ["-a", "-b"],
    },
}


def test_merge_patch_deletes_nulls_merges_maps_and_replaces_lists() -> None:
    out = merge_patch(
        POD, {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"args": ["-c"]}}
    )
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert out["spec"]["args"] == ["-c"]
    assert POD["metadata"]["labels"] == {"a": "1", "b": "2"}  # input untouched


def test_strategic_merge_patch_directives() -> None:
    deleted = strategic_merge_patch(
        POD, {"spec": {"containers": [{"name": "exp", "$patch": "delete"}]}}
    )
    assert [c["name"] for c in deleted["spec"]["containers"]] == ["pg"]
    replaced = strategic_merge_patch(POD, {"metadata": {"labels": {"z": "9", "$patch": "replace"}}})
    assert replaced["metadata"]["labels"] == {"z": "9"}
    retained = strategic_merge_patch(
        POD,
        {"spec": {"$retainKeys": ["containers"], "containers": [{"name": "pg", "image": "pg:16"}]}},
    )
    assert set(retained["spec"]) == {"containers"}
    assert retained["spec"]["containers"][0] == {"name": "pg", "image": "pg:16"}
    pruned = strategic_merge_patch(POD, {"spec": {"$deleteFromPrimitiveList/args": ["-a"]}})
    assert pruned["spec"]["args"] == ["-b"]
    finalizers = strategic_merge_patch(POD, {"metadata": {"finalizers": ["y", "x"]}})
    assert finalizers["metadata"]["finalizers"] == ["x", "y"]
    ordered = strategic_merge_patch(
        POD, {"metadata": {"$setElementOrder/finalizers": ["x"], "labels": {"b": None}}}
    )
    assert ordered["metadata"]["labels"] == {"a": "1"}


def test_json_patch_operations() -> None:
    out = json_patch(
        POD,
        [
            {"op": "add", "path": "/spec/args/-", "value": "-z"},
            {"op": "remove", "path": "/spec/args/0"},
            {"op": "copy", "from": "/metadata/labels/a", "path": "/metadata/labels/c"},
            {"op": "move", "from": "/metadata/labels/b", "path": "/metadata/labels/d"},
            {"op": "replace", "path": "/spec/containers/0/image", "value": "pg:16"},
            {"op": "add", "path": "/metadata/annotations", "value": {"x~y/z": "1"}},
            {"op": "test", "path": "/metadata/annotations/x~0y~1z", "value": "1"},
        ],
    )
    assert out["spec"]["args"] == ["-b", "-z"]
    assert out["metadata"]["labels"] == {"a": "1", "c": "1", "d": "2"}
    assert out["spec"]["containers"][0]["image"] == "pg:16"


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "remove", "path": "/metadata/nope"}],
        [{"op": "replace", "path": "/spec/missing", "value": 1}],
        [{"op": "test", "path": "/metadata/labels/a", "value": "2"}],
    ],
)
def test_json_patch_operations_that_cannot_apply_are_422(ops: list[dict[str, Any]]) -> None:
    with pytest.raises(ApiError) as caught:
        json_patch(POD, ops)
    assert caught.value.code == 422


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("n>3", {"n": "4"}, True),
        ("n>3", {"n": "3"}, False),
        ("n<3", {"n": "2"}, True),
        ("n<3", {}, False),
        ("a=", {"a": ""}, True),
        ("a notin (x), b", {"b": "1"}, True),
        ("example.com/role in (primary)", {"example.com/role": "primary"}, True),
    ],
)
def test_label_selector_operators(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("selector", ["a in b", "a in (x", "=x", "a=b=c", "a,,b", "!"])
def test_malformed_label_selectors_are_400(selector: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_label_selector(selector)
    assert caught.value.code == 400
