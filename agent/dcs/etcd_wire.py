"""The etcd v3 JSON gateway's wire format (etcd 3.4): the value types a client hands in and
gets back, the errors it raises, and the encoding and decoding of the gateway's JSON (the only
place that knows its quirks: keys and values are base64, int64 fields are strings, and fields
with default values (0, false, PUT) are omitted). Used by agent/dcs/etcd_client.py."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.dcs.base import DcsAuthError, DcsError, DcsUnavailable

# gRPC status codes the gateway puts in its error bodies.
GRPC_INVALID_ARGUMENT = 3
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_FAILED_PRECONDITION = 9
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16

# Codes that mean "this member cannot serve the request now; another one may".
RETRYABLE_CODES = frozenset({GRPC_DEADLINE_EXCEEDED, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE})


class EtcdError(DcsError):
    """etcd refused a request (an error that retrying elsewhere would not fix)."""


class EtcdUnavailable(DcsUnavailable):
    """No endpoint answered usefully within the call's deadline."""


class EtcdAuthFailed(DcsAuthError):
    """etcd refused our credentials (wrong user or password, or none given while auth is on)."""


class EtcdPermissionDenied(EtcdError):
    """Authenticated, but the user's roles do not allow this request."""


class EtcdLeaseNotFound(EtcdError):
    """A put (or txn put) named a lease that does not exist (revoked or expired)."""


class EtcdCompacted(EtcdError):
    """A watch's start (or resume) revision was compacted: events may have been lost."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int  # the store revision the read was served at (response header)


class CompareTarget(StrEnum):
    VERSION = "VERSION"
    CREATE = "CREATE"
    MOD = "MOD"
    VALUE = "VALUE"
    LEASE = "LEASE"


class CompareResult(StrEnum):
    EQUAL = "EQUAL"
    GREATER = "GREATER"
    LESS = "LESS"
    NOT_EQUAL = "NOT_EQUAL"


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    """One txn guard. `value` is bytes for the VALUE target, an int for every other target."""

    key: bytes
    target: CompareTarget
    result: CompareResult
    value: int | bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PutOp:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteOp:
    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeOp:
    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: tuple[RangeResult, ...]  # results of the RangeOps in the branch taken, in order


class EventType(StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """For DELETE only `kv.key` and `kv.mod_revision` (the deletion's revision) are set."""

    type: EventType
    kv: KeyValue


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchBatch:
    events: tuple[WatchEvent, ...]
    revision: int  # response header revision


TxnOp = PutOp | DeleteOp | RangeOp


# ---------------------------------------------------------------------------------------------
# Encoding and decoding of the gateway's JSON (the only place that knows its quirks).


def prefix_end(key: bytes) -> bytes:
    """The smallest key greater than every key starting with `key` (etcd's `range_end`)."""
    stripped = key.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dec_bytes(obj: dict[str, Any], name: str) -> bytes:
    raw = obj.get(name)
    return base64.b64decode(raw) if raw else b""


def dec_int(obj: dict[str, Any], name: str) -> int:
    raw = obj.get(name)
    return int(raw) if raw is not None else 0


def dec_revision(obj: dict[str, Any]) -> int:
    header = obj.get("header")
    return dec_int(header, "revision") if isinstance(header, dict) else 0


def dec_kv(obj: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=dec_bytes(obj, "key"),
        value=dec_bytes(obj, "value"),
        create_revision=dec_int(obj, "create_revision"),
        mod_revision=dec_int(obj, "mod_revision"),
        version=dec_int(obj, "version"),
        lease=dec_int(obj, "lease"),
    )


def dec_range(obj: dict[str, Any], revision: int | None = None) -> RangeResult:
    kvs = tuple(dec_kv(kv) for kv in obj.get("kvs", ()))
    return RangeResult(kvs=kvs, revision=dec_revision(obj) if revision is None else revision)


def dec_event(obj: dict[str, Any]) -> WatchEvent:
    kind = EventType.DELETE if obj.get("type") == "DELETE" else EventType.PUT
    return WatchEvent(type=kind, kv=dec_kv(obj.get("kv") or {}))


def enc_key_range(key: bytes, prefix: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if prefix:
        body["range_end"] = b64(prefix_end(key))
    return body


def enc_compare(cmp: Compare) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": b64(cmp.key),
        "target": str(cmp.target),
        "result": str(cmp.result),
    }
    if cmp.target is CompareTarget.VALUE:
        if not isinstance(cmp.value, bytes):
            raise TypeError("a VALUE compare needs a bytes value")
        body["value"] = b64(cmp.value)
        return body
    if not isinstance(cmp.value, int) or isinstance(cmp.value, bool):
        raise TypeError(f"a {cmp.target} compare needs an int value")
    field = {
        CompareTarget.VERSION: "version",
        CompareTarget.CREATE: "create_revision",
        CompareTarget.MOD: "mod_revision",
        CompareTarget.LEASE: "lease",
    }[cmp.target]
    body[field] = str(cmp.value)
    return body


def enc_op(op: TxnOp) -> dict[str, Any]:
    match op:
        case PutOp():
            put: dict[str, Any] = {"key": b64(op.key), "value": b64(op.value)}
            if op.lease:
                put["lease"] = str(op.lease)
            return {"request_put": put}
        case DeleteOp():
            return {"request_delete_range": enc_key_range(op.key, op.prefix)}
        case RangeOp():
            return {"request_range": enc_key_range(op.key, op.prefix)}


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayError:
    """An error body of the gateway: unary `{"error","code","message"}` or streamed
    `{"error": {"grpc_code", "message", ...}}`."""

    code: int
    message: str


def dec_error(obj: dict[str, Any]) -> GatewayError | None:
    err = obj.get("error")
    if err is None:
        return None
    if isinstance(err, dict):
        return GatewayError(code=dec_int(err, "grpc_code"), message=str(err.get("message", "")))
    return GatewayError(code=dec_int(obj, "code"), message=str(obj.get("message") or err))


def is_token_error(err: GatewayError) -> bool:
    """The token we sent is no longer good (or we sent none and auth is now on): get a new
    one and retry."""
    return err.code == GRPC_UNAUTHENTICATED or (
        err.code == GRPC_INVALID_ARGUMENT
        and ("auth store is old" in err.message or "user name is empty" in err.message)
    )


def is_bad_credentials(err: GatewayError) -> bool:
    return err.code == GRPC_INVALID_ARGUMENT and (
        "authentication failed" in err.message or "user name is empty" in err.message
    )
