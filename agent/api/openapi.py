"""The REST API's OpenAPI 3.1 document: the one written description of its routes, bodies and
answers. Served at `GET /openapi.json` and kept as docs/openapi.json
(`python -m agent.api.openapi docs/openapi.json` writes it); a unit test checks both against
the router, and the fuzzer (tests/integration/test_openapi_fuzz.py) checks live answers
against the schemas. A pure table, like agent/config/fields.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Final

from agent.model import PgState, Role, SyncMode, SyncRole

Schema = Mapping[str, object]

_NULL_INT: Final = {"type": ["integer", "null"]}
_NULL_STR: Final = {"type": ["string", "null"]}
_NULL_NUM: Final = {"type": ["number", "null"]}
_BOOL: Final = {"type": "boolean"}
_STR: Final = {"type": "string"}
_INT: Final = {"type": "integer"}


def _obj(properties: Mapping[str, object], *, required: Sequence[str] | None = None) -> Schema:
    """A closed object: every listed property required unless `required` says otherwise."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties if required is None else required),
        "additionalProperties": False,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(name: str) -> Schema:
    return {"oneOf": [_ref(name), {"type": "null"}]}


_CONFIG_FIELDS: Final = {
    "paused": _BOOL,
    "synchronous_mode": {"enum": [m.value for m in SyncMode]},
    "synchronous_node_count": {"type": "integer", "minimum": 1},
    "synchronous_mode_strict": _BOOL,
    "maximum_lag_on_syncnode_bytes": {"type": "integer", "minimum": -1},
    "failsafe_mode": _BOOL,
}

_PARAMETERS: Final = {
    "type": "object",
    "additionalProperties": {"type": ["string", "number", "boolean"]},
    "description": "name: value; PostgreSQL reads booleans as on/off",
}
_PG_HBA: Final = {"type": "array", "items": _STR}
_PG_CONFIG: Final = _obj({"parameters": _PARAMETERS, "pg_hba": _PG_HBA})
_PG_PATCH: Final = _obj(
    {
        "parameters": {
            **_PARAMETERS,
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            "description": "merged into the record's; null removes a parameter",
        },
        "pg_hba": {**_PG_HBA, "description": "replaces the record's lines"},
    },
    required=(),
)
_NAMES: Final = {"type": "array", "items": _STR}
_ARCHIVING: Final = {
    "oneOf": [
        _obj(
            {
                "failing": _BOOL,
                "archived_count": _INT,
                "last_archived_wal": _NULL_STR,
                "last_archived_at": _NULL_STR,
                "last_archived_age_s": _NULL_NUM,
                "failed_count": _INT,
                "last_failed_wal": _NULL_STR,
                "last_failed_at": _NULL_STR,
            }
        ),
        {"type": "null"},
    ],
    "description": "pg_stat_archiver; null while archive_mode is off",
}
_BACKUP_RUN: Final = _obj(
    {
        "type": {"enum": ["full", "incr", "diff"]},
        "started_at": {"type": "number"},
        "finished_at": _NULL_NUM,
        "ok": {"type": ["boolean", "null"]},
        "error": _NULL_STR,
    }
)
_RESTART: Final = {
    "members": _NAMES,
    "scheduled_at": _NULL_STR,
    "pending": _BOOL,
    "in_place": _BOOL,
    "done": _NAMES,
    "current": _NULL_STR,
}
# Permanent replication slots by name (agent/slot_config.py); in the record only when set.
_SLOTS: Final = {
    "type": "object",
    "additionalProperties": _obj(
        {"type": {"enum": ["physical", "logical"]}, "database": _STR, "plugin": _STR},
        required=("type",),
    ),
}

SCHEMAS: Final[Mapping[str, Schema]] = {
    "Error": _obj({"error": _STR}),
    "Status": _obj(
        {
            "name": _STR,
            "cluster": _STR,
            "role": {"enum": [r.value for r in Role]},
            "state": {"enum": [s.value for s in PgState]},
            "leader": _NULL_STR,
            "lease_held": _BOOL,
            "timeline": _NULL_INT,
            "wal_lsn": _NULL_INT,
            "replay_lsn": _NULL_INT,
            "lag_bytes": _NULL_INT,
            "fence_remaining_s": _NULL_NUM,
            "dcs_ok": _BOOL,
            "paused": _BOOL,
            "pending": _NULL_STR,
            "cycle": _INT,
            "status_age_s": {"type": ["number", "null"]},
            "sync_role": {"enum": [r.value for r in SyncRole]},
            "failsafe_active": _BOOL,
            "pending_restart": _NAMES,
            "archiving": _ARCHIVING,
            "slots_far_behind": _NAMES,
        }
    ),
    "Member": _obj(
        {
            "name": _STR,
            "role": {"enum": [r.value for r in Role]},
            "state": {"enum": [s.value for s in PgState]},
            "host": _STR,
            "port": _INT,
            "api_url": _STR,
            "timeline": _NULL_INT,
            "wal_lsn": _NULL_INT,
            "wal_lsn_text": _NULL_STR,
            "lag_bytes": _NULL_INT,
            "leader": _BOOL,
            "pending_restart": _NAMES,
            "tags": _obj(
                {
                    "nofailover": _BOOL,
                    "failover_priority": _INT,
                    "nosync": _BOOL,
                    "sync_priority": _INT,
                    "replicatefrom": _NULL_STR,
                    "clonefrom": _BOOL,
                    "noloadbalance": _BOOL,
                }
            ),
            "sync_role": {"enum": ["leader", "sync", "quorum", "async", "none"]},
            "promotion_vetoed": _BOOL,
            "upstream": _NULL_STR,
            "archiving": _ARCHIVING,
        }
    ),
    "Switchover": _obj({"leader": _NULL_STR, "candidate": _NULL_STR, "scheduled_at": _NULL_STR}),
    "Cluster": _obj(
        {
            "cluster": _STR,
            "leader": _NULL_STR,
            "members": {"type": "array", "items": _ref("Member")},
            "switchover": _nullable("Switchover"),
            "paused": _BOOL,
            "synchronous_mode": {"enum": [m.value for m in SyncMode]},
            "sync": {
                "oneOf": [
                    _obj(
                        {
                            "leader": _STR,
                            "members": {"type": "array", "items": _STR},
                            "quorum": _INT,
                        }
                    ),
                    {"type": "null"},
                ]
            },
            "failsafe_mode": _BOOL,
            "failsafe": {
                "oneOf": [
                    _obj({"leader": _STR, "members": {"type": "array", "items": _STR}}),
                    {"type": "null"},
                ]
            },
            "restart": {"oneOf": [_obj(_RESTART), {"type": "null"}]},
        }
    ),
    "History": _obj(
        {
            "history": {
                "type": "array",
                "items": _obj(
                    {
                        "timeline": _INT,
                        "switch_lsn": _INT,
                        "switch_lsn_text": _STR,
                        "reason": _STR,
                        "at": _NULL_STR,
                        "new_leader": _NULL_STR,
                    }
                ),
            }
        }
    ),
    "Config": _obj(
        {
            **_CONFIG_FIELDS,
            "postgresql": _PG_CONFIG,
            "slots": _SLOTS,
            "restart_needed": {
                **_NAMES,
                "description": "PATCH: the changed parameters only a restart applies",
            },
        },
        required=[*_CONFIG_FIELDS, "postgresql"],
    ),
    "ConfigPatch": {
        **_obj({**_CONFIG_FIELDS, "postgresql": _PG_PATCH, "slots": _SLOTS}, required=()),
        "minProperties": 1,
    },
    "RollingRestartRequest": _obj(
        {
            "members": {**_NAMES, "description": "default: every member"},
            "role": {"enum": ["any", "primary", "replica"]},
            "pending": {**_BOOL, "description": "only members pending restart"},
            "in_place": {**_BOOL, "description": "the leader restarts in place"},
            "scheduled_at": {
                "type": "string",
                "format": "date-time",
                "description": "ISO-8601 with a zone, in the future; default now",
            },
        },
        required=(),
    ),
    "RollingRestart": _obj(_RESTART),
    "RestartAccepted": _obj({"accepted": {"const": True}, **_RESTART}),
    "RestartCancelled": _obj({"cancelled": {"const": True}, "done": _NAMES}),
    "SwitchoverRequest": _obj(
        {
            "leader": _STR,
            "candidate": _STR,
            "scheduled_at": {
                "type": "string",
                "format": "date-time",
                "description": "ISO-8601 with a zone, in the future",
            },
        },
        required=(),
    ),
    "FailoverRequest": _obj({"candidate": _STR}),
    "FailsafeRequest": _obj({"leader": _STR, "cluster": _STR, "sent_at": {"type": "number"}}),
    "Empty": _obj({}),
    "BackupRequest": _obj({"type": {"enum": ["full", "incr", "diff"]}}, required=()),
    "BackupAccepted": _obj(
        {"accepted": {"const": True}, **_BACKUP_RUN["properties"]}  # type: ignore[dict-item]
    ),
    "BackupStatus": _obj({"running": _BOOL, "last": {"oneOf": [_BACKUP_RUN, {"type": "null"}]}}),
    "Accepted": _obj(
        {
            "accepted": {"const": True},
            "leader": _NULL_STR,
            "candidate": _NULL_STR,
            "scheduled_at": _NULL_STR,
        }
    ),
    "Cancelled": _obj({"cancelled": {"const": True}, "leader": _NULL_STR, "candidate": _NULL_STR}),
    "FailsafeAccepted": _obj(
        {
            "accepted": {"const": True},
            "member": _STR,
            "leader": _STR,
            "promise_s": {"type": "number"},
        }
    ),
    "LocalAccepted": _obj({"accepted": {"const": True}, "request": _STR}),
}

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
    return {str(c): _json_answer("Error (see docs/api.md)", _ref("Error")) for c in codes}


def _body(name: str, *, required: bool) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


_AUTH: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {"basic": []}]
# Every mutating route: bad credentials, bad body, body too large, the DCS unavailable.
_MUTATING_ERRORS: Final[tuple[int, ...]] = (400, 401, 413, 503)


def _probe(path: str, doc: str) -> Schema:
    operation: dict[str, object] = {
        "summary": doc,
        "responses": {
            "200": _json_answer("Healthy for this probe", _ref("Status")),
            "503": _json_answer("Not healthy for this probe", _ref("Status")),
        },
    }
    if path in _LAG_PROBES:
        operation["parameters"] = [
            {
                "name": "lag",
                "in": "query",
                "required": False,
                "schema": _STR,
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
            ok: _json_answer(summary, _ref(answer)),
            **_errors(*_MUTATING_ERRORS, *extra),
        },
    }


def _view(summary: str, schema: str) -> Schema:
    return {
        "summary": summary,
        "responses": {"200": _json_answer(summary, _ref(schema)), **_errors(503)},
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
                    "content": {"text/plain": {"schema": _STR}},
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
                "200": _json_answer("The rolling restart", _ref("RollingRestart")),
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
            "Take a pgBackRest backup of this member (the primary)",
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
