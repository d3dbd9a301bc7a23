"""The component schemas of the REST API's OpenAPI document (openapi.py): the bodies of its
answers and requests, written once. A pure table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from agent.model import PgState, Role, SyncMode, SyncRole

Schema = Mapping[str, object]

_NULL_INT: Final = {"type": ["integer", "null"]}
_NULL_STR: Final = {"type": ["string", "null"]}
_NULL_NUM: Final = {"type": ["number", "null"]}
_BOOL: Final = {"type": "boolean"}
STR: Final = {"type": "string"}
_INT: Final = {"type": "integer"}


def _obj(properties: Mapping[str, object], *, required: Sequence[str] | None = None) -> Schema:
    """A closed object: every listed property required unless `required` says otherwise."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties if required is None else required),
        "additionalProperties": False,
    }


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(name: str) -> Schema:
    return {"oneOf": [ref(name), {"type": "null"}]}


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
_PG_HBA: Final = {"type": "array", "items": STR}
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
_NAMES: Final = {"type": "array", "items": STR}
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
        "member": STR,
        "source": {"enum": ["primary", "standby"]},
        "primary": _NULL_STR,
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
        {"type": {"enum": ["physical", "logical"]}, "database": STR, "plugin": STR},
        required=("type",),
    ),
}

SCHEMAS: Final[Mapping[str, Schema]] = {
    "Error": _obj({"error": STR}),
    "Status": _obj(
        {
            "name": STR,
            "cluster": STR,
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
            "name": STR,
            "role": {"enum": [r.value for r in Role]},
            "state": {"enum": [s.value for s in PgState]},
            "host": STR,
            "port": _INT,
            "api_url": STR,
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
            "cluster": STR,
            "leader": _NULL_STR,
            "members": {"type": "array", "items": ref("Member")},
            "switchover": _nullable("Switchover"),
            "paused": _BOOL,
            "synchronous_mode": {"enum": [m.value for m in SyncMode]},
            "sync": {
                "oneOf": [
                    _obj(
                        {
                            "leader": STR,
                            "members": {"type": "array", "items": STR},
                            "quorum": _INT,
                        }
                    ),
                    {"type": "null"},
                ]
            },
            "failsafe_mode": _BOOL,
            "failsafe": {
                "oneOf": [
                    _obj({"leader": STR, "members": {"type": "array", "items": STR}}),
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
                        "switch_lsn_text": STR,
                        "reason": STR,
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
            "leader": STR,
            "candidate": STR,
            "scheduled_at": {
                "type": "string",
                "format": "date-time",
                "description": "ISO-8601 with a zone, in the future",
            },
        },
        required=(),
    ),
    "FailoverRequest": _obj({"candidate": STR}),
    "FailsafeRequest": _obj({"leader": STR, "cluster": STR, "sent_at": {"type": "number"}}),
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
            "member": STR,
            "leader": STR,
            "promise_s": {"type": "number"},
        }
    ),
    "LocalAccepted": _obj({"accepted": {"const": True}, "request": STR}),
}
