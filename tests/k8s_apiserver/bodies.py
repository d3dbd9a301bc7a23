"""Request bodies by media type: JSON, YAML and (for a few kinds) Kubernetes protobuf.

A real kube-apiserver decodes `application/json`, `application/yaml` and
`application/vnd.kubernetes.protobuf` (and CBOR) for every built-in kind. kubectl's typed
clients (`kubectl create configmap`, `kubectl create namespace`, ...) always send protobuf, and
client-go does not fall back to JSON on 415 for protobuf (its 415 fallback is for CBOR only),
so the test server decodes the protobuf of the kinds those generators produce for the
resources it serves. A body it cannot decode (another media type, or the protobuf of another
kind or with a field outside the tables below) is answered with 415 UnsupportedMediaType, the
`Status` a real server sends for a media type it does not accept.

Kubernetes protobuf (k8s.io/apimachinery runtime/serializer/protobuf): the 4-byte magic
`k8s\\0`, then a `runtime.Unknown` message {1: typeMeta {1: apiVersion, 2: kind}, 2: raw,
3: contentEncoding, 4: contentType}, where `raw` is the object in the proto2 messages of
k8s.io/api `generated.proto`. Non-pointer Go fields are always encoded (empty strings, zero
integers, empty messages); they are dropped here as the JSON encoding's `omitempty` does.
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import yaml

from tests.k8s_apiserver.errors import ApiError, Reason, bad_request

JSON = "application/json"
YAML = "application/yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"
ACCEPTED = (JSON, YAML, PROTOBUF)
PROTOBUF_MAGIC = b"k8s\x00"

# Field tables: message -> field number -> (JSON name, type). Types: "string" (dropped when
# empty), "int" (dropped when 0), "int?" / "bool?" (Go pointers: kept when present),
# "time" (metav1.Time, dropped when zero), "map" (map<string,string>), "bytesmap"
# (map<string,bytes>, base64 in JSON), "[]string", or another message's name.
_MESSAGES: dict[str, dict[int, tuple[str, str]]] = {
    "ObjectMeta": {
        1: ("name", "string"),
        2: ("generateName", "string"),
        3: ("namespace", "string"),
        4: ("selfLink", "string"),
        5: ("uid", "string"),
        6: ("resourceVersion", "string"),
        7: ("generation", "int"),
        8: ("creationTimestamp", "time"),
        9: ("deletionTimestamp", "time"),
        10: ("deletionGracePeriodSeconds", "int?"),
        11: ("labels", "map"),
        12: ("annotations", "map"),
        14: ("finalizers", "[]string"),
    },
    "ConfigMap": {
        1: ("metadata", "ObjectMeta"),
        2: ("data", "map"),
        3: ("binaryData", "bytesmap"),
        4: ("immutable", "bool?"),
    },
    "Namespace": {
        1: ("metadata", "ObjectMeta"),
        2: ("spec", "NamespaceSpec"),
        3: ("status", "NamespaceStatus"),
    },
    "NamespaceSpec": {1: ("finalizers", "[]string")},
    "NamespaceStatus": {1: ("phase", "string")},
}
# The top-level kinds whose protobuf this server decodes, by apiVersion.
PROTOBUF_KINDS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Namespace"): "Namespace",
}


def unsupported_media_type(detail: str = "") -> ApiError:
    """415 with the message of k8s.io/apimachinery's errUnsupportedMediaType (plus why)."""
    message = (
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(ACCEPTED)
    )
    if detail:
        message += f" ({detail})"
    return ApiError(415, message, reason=Reason.UNSUPPORTED_MEDIA_TYPE)


def decode_body(content_type: str | None, raw: bytes) -> Any:
    """The body as a JSON value (None when empty). `content_type` is the media type without
    parameters, or None when the request had no Content-Type header (read as JSON)."""
    if not raw.strip():
        return None
    if content_type is None or content_type == JSON:
        return _json(raw)
    if content_type == YAML:
        try:
            return yaml.safe_load(raw.decode())
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise bad_request(f"the body of the request is not valid YAML: {exc}") from None
    if content_type == PROTOBUF:
        return decode_protobuf(raw)
    raise unsupported_media_type(f"got {content_type}")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"the body of the request is not valid JSON: {exc}") from None


# ---- protobuf ------------------------------------------------------------------------------


class _Malformed(Exception):
    pass


class _Unsupported(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise _Malformed("truncated field")
            out.append((number, data[pos : pos + size]))
            pos += size
        else:
            raise _Unsupported(f"wire type {wire} of field {number}")
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _bytes(value: int | bytes, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise _Malformed(f"{name} is not length-delimited")
    return value


def _string(value: int | bytes, name: str) -> str:
    try:
        return _bytes(value, name).decode()
    except UnicodeDecodeError:
        raise _Malformed(f"{name} is not UTF-8") from None


def _int(value: int | bytes, name: str) -> int:
    if not isinstance(value, int):
        raise _Malformed(f"{name} is not a varint")
    return _signed(value)


def _time(data: bytes) -> str | None:
    seconds = nanos = 0
    for number, value in _fields(data):
        if number == 1:
            seconds = _int(value, "Time.seconds")
        elif number == 2:
            nanos = _int(value, "Time.nanos")
    if seconds == 0 and nanos == 0:
        return None
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")  # metav1.Time is second-precision in JSON


def _map_entry(data: bytes, name: str) -> tuple[str, bytes]:
    key, value = "", b""
    for number, item in _fields(data):
        if number == 1:
            key = _string(item, f"{name} key")
        elif number == 2:
            value = _bytes(item, f"{name} value")
    return key, value


def _message(message: str, data: bytes) -> dict[str, Any]:
    table = _MESSAGES[message]
    out: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in table:
            raise _Unsupported(f"field {number} of {message}")
        name, kind = table[number]
        where = f"{message}.{name}"
        match kind:
            case "string":
                if text := _string(value, where):
                    out[name] = text
            case "int":
                if number_value := _int(value, where):
                    out[name] = number_value
            case "int?":
                out[name] = _int(value, where)
            case "bool?":
                out[name] = bool(_int(value, where))
            case "time":
                if stamp := _time(_bytes(value, where)):
                    out[name] = stamp
            case "map":
                key, item = _map_entry(_bytes(value, where), where)
                try:
                    out.setdefault(name, {})[key] = item.decode()
                except UnicodeDecodeError:
                    raise _Malformed(f"{where} is not UTF-8") from None
            case "bytesmap":
                key, item = _map_entry(_bytes(value, where), where)
                out.setdefault(name, {})[key] = base64.b64encode(item).decode()
            case "[]string":
                out.setdefault(name, []).append(_string(value, where))
            case _:
                if nested := _message(kind, _bytes(value, where)):
                    out[name] = nested
    return out


def decode_protobuf(raw: bytes) -> dict[str, Any]:
    """A Kubernetes protobuf body as the object's JSON form (415 for kinds or fields this
    server has no table for, 400 for malformed data)."""
    if not raw.startswith(PROTOBUF_MAGIC):
        raise bad_request("the protobuf body does not start with the Kubernetes magic k8s\\0")
    try:
        api_version = kind = encoding = ""
        payload = b""
        for number, value in _fields(raw[len(PROTOBUF_MAGIC) :]):
            if number == 1:
                for sub, item in _fields(_bytes(value, "typeMeta")):
                    if sub == 1:
                        api_version = _string(item, "apiVersion")
                    elif sub == 2:
                        kind = _string(item, "kind")
            elif number == 2:
                payload = _bytes(value, "raw")
            elif number == 3:
                encoding = _string(value, "contentEncoding")
        message = PROTOBUF_KINDS.get((api_version, kind))
        if message is None:
            raise _Unsupported(
                f"this test server decodes {PROTOBUF} only for "
                + ", ".join(f"{v} {k}" for v, k in PROTOBUF_KINDS)
                + f", not for {api_version} {kind}"
            )
        if encoding:
            raise _Unsupported(f"content encoding {encoding}")
        return {"apiVersion": api_version, "kind": kind, **_message(message, payload)}
    except _Unsupported as exc:
        raise unsupported_media_type(str(exc)) from None
    except _Malformed as exc:
        raise bad_request(f"the protobuf body is malformed: {exc}") from None
