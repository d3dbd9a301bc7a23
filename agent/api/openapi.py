"""The REST API's OpenAPI 3.1 document: the one written description of its routes, bodies and
answers. Served at `GET /openapi.json` and kept as docs/openapi.json
(`python -m agent.api.openapi docs/openapi.json` writes it); a unit test checks both against
the router, and the fuzzer (tests/integration/test_openapi_fuzz.py) checks live answers
against the schemas. A pure table, like agent/config/fields.py; the component schemas are in
openapi_schemas.py.
"""

from __future__ import annotations

import json
import sys
from typing import Final

from agent.api.openapi_schemas import SCHEMAS, STR, Schema, ref

_PROBES: Final = {
    "/health": "200 when PostgreSQL runs.",
    "/liveness": "200 while the HA loop cycles.",
    "/readiness": "200 for a primary holding the lease, or a streaming replica.",
    "/primary": "200 only on the primary holding a valid lease.",
    "/leader": "Same as /primary.",
    "/read-write": "Same as /primary.",
    "/replica": "200 on a streaming replica (within `lag`).",
    "/read-only": "200 on a running member that serves reads (within `lag`).",
    "/sync": "200 on a synchronous standby.",
    "/synchronous": "Same as /sync.",
    "/quorum": "200 on a member of the synchronous quorum.",
    "/async": "200 on an asynchronous replica.",
    "/asynchronous": "Same as /async.",
}
_LAG_PROBES: Final = frozenset(
    {"/replica", "/read-only", "/sync", "/synchronous", "/quorum", "/async", "/asynchronous"}
)


def _json_answer(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Schema]:
    return {str(c): _json_answer("Error (see docs/api.md)", ref("Error")) for c in codes}


def _body(name: str, *, required: bool) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": ref(name)}}}


_AUTH: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {"basic": []}]
# Every mutating route: bad credentials, bad body, body too large, the DCS unavailable.
_MUTATING_ERRORS: Final[tuple[int, ...]] = (400, 401, 413, 503)


def _probe(path: str, doc: str) -> Schema:
    operation: dict[str, object] = {
        "summary": doc,
        "responses": {
            "200": _json_answer("Healthy for this probe", ref("Status")),
            "503": _json_answer("Not healthy for this probe", ref("Status")),
        },
    }
    if path in _LAG_PROBES:
        operation["parameters"] = [
            {
                "name": "lag",
                "in": "query",
                "required": False,
                "schema": STR,
                "description": "Maximum lag: bytes, or a size such as 16MB.",
            }
        ]
        operation["responses"] = {**operation["responses"], **_errors(400)}  # type: ignore[dict-item]
    return {"get": operation}


def _mutating(summary: str, body: str, required: bool, ok: str, answer: str, *extra: int) -> Schema:
    return {
        "summary": summary,
        "security": _AUTH,
        "requestBody": _body(body, required=required),
        "responses": {
            ok: _json_answer(summary, ref(answer)),
            **_errors(*_MUTATING_ERRORS, *extra),
        },
    }


def _view(summary: str, schema: str) -> Schema:
    return {
        "summary": summary,
        "responses": {"200": _json_answer(summary, ref(schema)), **_errors(503)},
    }


def _paths() -> dict[str, Schema]:
    paths: dict[str, Schema] = {p: _probe(p, doc) for p, doc in _PROBES.items()}
    paths["/cluster"] = {"get": _view("The cluster view the agent last read", "Cluster")}
    paths["/history"] = {"get": _view("The timeline history", "History")}
    paths["/config"] = {
        "get": _view("The dynamic configuration, read from the DCS now", "Config"),
        "patch": _mutating(
            "Change the dynamic configuration", "ConfigPatch", True, "200", "Config", 409, 412
        ),
    }
    paths["/pause"] = {
        "post": _mutating("Enter maintenance mode", "Empty", False, "200", "Config", 409)
    }
    paths["/resume"] = {
        "post": _mutating("Leave maintenance mode", "Empty", False, "200", "Config", 409)
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "The exposition",
                    "content": {"text/plain": {"schema": STR}},
                }
            },
        }
    }
    paths["/switchover"] = {
        "post": _mutating(
            "Request a switchover", "SwitchoverRequest", False, "202", "Accepted", 409
        ),
        "delete": _mutating(
            "Cancel a scheduled switchover", "Empty", False, "200", "Cancelled", 404, 409
        ),
    }
    paths["/failover"] = {
        "post": _mutating("Promote a named member", "FailoverRequest", True, "202", "Accepted", 409)
    }
    paths["/failsafe"] = {
        "post": _mutating(
            "A primary in failsafe mode asks for confirmation",
            "FailsafeRequest",
            True,
            "200",
            "FailsafeAccepted",
            409,
        )
    }
    paths["/restart"] = {
        "post": _mutating(
            "Restart this member's PostgreSQL", "Empty", False, "202", "LocalAccepted"
        )
    }
    paths["/reload"] = {
        "post": _mutating(
            "Re-render this member's PostgreSQL configuration and reload it",
            "Empty",
            False,
            "202",
            "LocalAccepted",
        )
    }
    paths["/rolling-restart"] = {
        "get": {
            "summary": "The rolling restart, read from the DCS now",
            "responses": {
                "200": _json_answer("The rolling restart", ref("RollingRestart")),
                **_errors(404, 503),
            },
        },
        "post": _mutating(
            "Schedule a rolling restart (now by default)",
            "RollingRestartRequest",
            False,
            "202",
            "RestartAccepted",
            409,
        ),
        "delete": _mutating(
            "Cancel the rolling restart", "Empty", False, "200", "RestartCancelled", 404, 409
        ),
    }
    paths["/reinitialize"] = {
        "post": _mutating(
            "Re-clone this replica from the leader", "Empty", False, "202", "LocalAccepted", 409
        )
    }
    paths["/backup"] = {
        "get": _view("Whether a backup runs on this member, and the last one", "BackupStatus"),
        "post": _mutating(
            "Take a pgBackRest backup: of this member's PostgreSQL on the primary, or from this"
            " streaming replica (backup-standby, the primary on the same host)",
            "BackupRequest",
            False,
            "202",
            "BackupAccepted",
            409,
        ),
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    # The server refuses a body over 64 KiB before it looks at the route (GETs included).
    for operations in paths.values():
        for operation in operations.values():
            assert isinstance(operation, dict)
            operation["responses"] = {**_errors(413), **operation["responses"]}
    return paths


def document() -> dict[str, object]:
    """The OpenAPI 3.1 document of the REST API (the same every call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pgwarden REST API",
            "version": "1",
            "description": "See docs/api.md. GET routes are open; mutating routes need a bearer "
            'token or HTTP basic credentials. Every error is {"error": "..."}.',
        },
        "paths": _paths(),
        "components": {
            "schemas": dict(SCHEMAS),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }


def rendered() -> str:
    """The document as docs/openapi.json holds it."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        out.write(rendered())
