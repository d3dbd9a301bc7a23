"""The three patch formats of the Kubernetes API, applied to plain JSON values.

- `application/merge-patch+json`: RFC 7386 (objects merge recursively, `null` deletes a key,
  anything else, lists included, replaces).
- `application/strategic-merge-patch+json`: like merge patch for maps (so labels and
  annotations merge, `null` deletes), plus the directives `$patch: replace|delete` on a map,
  `$retainKeys`, `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` (accepted,
  order ignored). Lists are merged by key only for the well-known fields in `MERGE_KEYS`
  (containers by `name`, conditions by `type`, ...) and `metadata.finalizers` is merged as a
  set; every other list is replaced. The real server knows each field's strategy from the Go
  types; this table is the documented difference. `$patch: delete` inside a keyed list item
  removes that item.
- `application/json-patch+json`: RFC 6902 (add, remove, replace, move, copy, test). A failing
  operation (a failed `test`, a missing path) is a 422 Invalid, as the real server answers.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.k8s_apiserver.errors import ApiError, Reason, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH)

# List fields merged by a key in strategic merge patches (by field name, wherever they are).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "imagePullSecrets": "name",
    "conditions": "type",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "ownerReferences": "uid",
    "tolerations": "key",
    "hostAliases": "ip",
    "podIPs": "ip",
}
# Lists of scalars merged as sets in strategic merge patches.
SET_LISTS = frozenset({"finalizers"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value, inputs untouched."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge patch as described in the module docstring; returns a new value."""
    if isinstance(patch, list):
        return _strategic_list(target, patch, field)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        return _strip_directives(body)
    if directive == "delete":
        return None
    if directive is not None:
        raise bad_request(f"Unknown patch type: {directive!r}")
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = body.pop("$retainKeys", None)
    for key, value in body.items():
        if key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            current = result.get(name)
            if isinstance(current, list) and isinstance(value, list):
                result[name] = [item for item in current if item not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        merged = strategic_merge_patch(result.get(key), value, key)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if not (k.startswith("$setElementOrder/") or k in ("$patch", "$retainKeys"))
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _strategic_list(target: Any, patch: list[Any], field: str) -> Any:
    current = target if isinstance(target, list) else []
    if field in SET_LISTS:
        merged = list(copy.deepcopy(current))
        for item in patch:
            if item not in merged:
                merged.append(copy.deepcopy(item))
        return merged
    key = MERGE_KEYS.get(field)
    if key is None or not all(isinstance(item, dict) for item in patch):
        # `$patch: replace` as the only item means "replace the list with the rest".
        return [_strip_directives(item) for item in patch if not _is_replace_marker(item)]
    merged_items: list[Any] = copy.deepcopy(current)
    for item in patch:
        if _is_replace_marker(item):
            merged_items = []
            continue
        ident = item.get(key)
        index = next(
            (
                i
                for i, existing in enumerate(merged_items)
                if isinstance(existing, dict) and existing.get(key) == ident
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged_items[index]
            continue
        if index is None:
            merged_items.append(_strip_directives(item))
        else:
            merged_items[index] = strategic_merge_patch(merged_items[index], item)
    return merged_items


def _is_replace_marker(item: Any) -> bool:
    return isinstance(item, dict) and item == {"$patch": "replace"}


def _unprocessable(message: str) -> ApiError:
    return ApiError(422, message, reason=Reason.INVALID)


def _parse_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise bad_request(f"JSON pointer must start with '/': {pointer!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _container(doc: Any, parts: list[str], pointer: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise _unprocessable(f"doc is missing path: {pointer!r}")
    return node


def _get(doc: Any, pointer: str) -> Any:
    parts = _parse_pointer(pointer)
    if not parts:
        return doc
    parent = _container(doc, parts, pointer)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _unprocessable(f"doc is missing path: {pointer!r}")


def _remove(doc: Any, pointer: str) -> Any:
    parts = _parse_pointer(pointer)
    if not parts:
        raise _unprocessable("cannot remove the whole document")
    parent = _container(doc, parts, pointer)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _unprocessable(f"unable to remove nonexistent key: {pointer!r}")


def _add(doc: Any, pointer: str, value: Any, *, replace: bool) -> Any:
    parts = _parse_pointer(pointer)
    if not parts:
        return value
    parent = _container(doc, parts, pointer)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _unprocessable(f"replace operation does not apply: doc is missing key: {pointer}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise _unprocessable(f"index out of range in path {pointer!r}")
    else:
        raise _unprocessable(f"doc is missing path: {pointer!r}")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; returns a new value. 400 for a malformed patch, 422 when an
    operation cannot be applied (as the real apiserver)."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise bad_request(f"invalid json patch operation: {op!r}")
        kind, path = op.get("op"), op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise bad_request(f"json patch operation {kind} needs a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=False)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise bad_request(f"json patch operation {kind} needs 'from'")
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value, replace=False)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise _unprocessable(f"testing value {path} failed: test failed")
        else:
            raise bad_request(f"Unexpected kind: {kind!r}")
    return doc
