"""A minimal OpenAPI v3 description of the served resources, for kubectl's field validation.

`kubectl create -f` (and apply, replace) with the default `--validate=strict` first asks
whether the server does field validation itself: it reads `/openapi/v3` (an index of
group-version documents by `serverRelativeURL`), then the document of the object's group
version, and looks for the PATCH operation whose `x-kubernetes-group-version-kind` is the
object's kind and which has a `fieldValidation` query parameter
(k8s.io/cli-runtime resource/query_param_verifier_v3.go). If so it validates nothing itself
and sends `fieldValidation=Strict`; without /openapi/v3 it tries /openapi/v2 and, with both
missing, fails ("failed to download openapi"). If the parameter is not listed, strict
validation falls back to client-side validation against full schemas, which this server does
not have.

The documents therefore list, per resource, the operations the server implements with their
path parameters and `fieldValidation` on create, update and patch (the server accepts it; it
has no schemas, so it never finds an unknown field: every kind is described as an object that
preserves unknown fields). No other query parameter is described.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.k8s_apiserver.patch import PATCH_TYPES
from tests.k8s_apiserver.resources import RESOURCES, ResourceType, group_versions

_FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "Ignore, Warn or Strict (accepted; this server has no schemas, so no field"
    " is ever unknown)",
    "schema": {"type": "string", "uniqueItems": True},
}


def gv_path(group: str, version: str) -> str:
    """The index key of a group version: `api/v1` or `apis/<group>/<version>`."""
    return f"api/{version}" if group == "" else f"apis/{group}/{version}"


def _schema_name(res: ResourceType) -> str:
    package = "core" if res.group == "" else res.group.split(".")[0]
    return f"io.k8s.api.{package}.{res.version}.{res.kind}"


def _operation_id(verb: str, res: ResourceType, *, collection: bool = False) -> str:
    group = "Core" if res.group == "" else "".join(p.title() for p in res.group.split(".")[:1])
    scope = "Namespaced" if res.namespaced else ""
    return f"{verb}{group}{res.version.title()}{scope}{res.kind}{'List' if collection else ''}"


def _operation(
    res: ResourceType, action: str, verb: str, *, writes: bool = False, collection: bool = False
) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{_schema_name(res)}"}
    op: dict[str, Any] = {
        "operationId": _operation_id(verb, res, collection=collection),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": res.group,
            "version": res.version,
            "kind": res.kind,
        },
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": ref}}}
        },
    }
    if writes:
        op["parameters"] = [_FIELD_VALIDATION]
        types = PATCH_TYPES if action == "patch" else ("application/json", "application/yaml")
        op["requestBody"] = {
            "required": True,
            "content": {
                t: {"schema": {"type": "object"} if action == "patch" else ref} for t in types
            },
        }
    return op


def _paths(res: ResourceType) -> dict[str, Any]:
    base = "/api/v1" if res.group == "" else f"/apis/{res.group}/{res.version}"
    params: list[dict[str, Any]] = []
    if res.namespaced:
        base += "/namespaces/{namespace}"
        params.append(_path_param("namespace"))
    collection = f"{base}/{res.plural}"
    item = f"{collection}/{{name}}"
    paths: dict[str, Any] = {
        collection: {
            "parameters": params,
            "get": _operation(res, "list", "list", collection=True),
            "post": _operation(res, "post", "create", writes=True),
            "delete": _operation(res, "deletecollection", "deleteCollection"),
        },
        item: {
            "parameters": [_path_param("name"), *params],
            "get": _operation(res, "get", "read"),
            "put": _operation(res, "put", "replace", writes=True),
            "patch": _operation(res, "patch", "patch", writes=True),
            "delete": _operation(res, "delete", "delete"),
        },
    }
    if res.has_status:
        paths[f"{item}/status"] = {
            "parameters": [_path_param("name"), *params],
            "get": _operation(res, "get", "read"),
            "put": _operation(res, "put", "replace", writes=True),
            "patch": _operation(res, "patch", "patch", writes=True),
        }
    return paths


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def gv_document(group: str, version: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document of one group version (None if it is not served)."""
    served = [r for r in RESOURCES if r.group == group and r.version == version]
    if not served:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for res in served:
        paths.update(_paths(res))
        schemas[_schema_name(res)] = {
            "type": "object",
            "description": f"{res.kind} (no schema: this test server keeps any field)",
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": [
                {"group": res.group, "version": res.version, "kind": res.kind}
            ],
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (pgwarden test API server)", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def document_hash(doc: dict[str, Any]) -> str:
    """The `hash` query parameter of a document's serverRelativeURL (content hash, as the
    real server's, so clients may cache by URL)."""
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


def index() -> dict[str, Any]:
    """The `/openapi/v3` index: group-version path -> serverRelativeURL."""
    paths: dict[str, Any] = {}
    for group, versions in group_versions().items():
        for version in versions:
            doc = gv_document(group, version)
            assert doc is not None
            path = gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={document_hash(doc)}"}
    return {"paths": paths}
