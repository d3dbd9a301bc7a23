"""Field validation the real registry applies to some kinds on create, where a client could
get it wrong: events.k8s.io/v1 Events (kubernetes pkg/apis/core/validation/events.go,
ValidateEventCreate for the v1 group: eventTime, reportingController, reportingInstance,
action and reason required, type Normal or Warning, note at most 1 kB, series with a count
of at least 2 and a lastObservedTime, regarding in the Event's namespace)."""

from __future__ import annotations

from typing import Any

from tests.k8s_apiserver.resources import ResourceType

_EVENT_TYPES = ("Normal", "Warning")
_NOTE_LIMIT = 1024
_FIELD_LIMIT = 128


def problems(res: ResourceType, obj: dict[str, Any]) -> list[str]:
    """What the real server refuses in `obj` on create (422 Invalid), as its messages say."""
    if (res.group, res.plural) != ("events.k8s.io", "events"):
        return []
    found: list[str] = []
    if not obj.get("eventTime"):
        found.append("eventTime: Required value")
    for field in ("reportingController", "reportingInstance", "action", "reason"):
        value = obj.get(field)
        if not isinstance(value, str) or not value:
            found.append(f"{field}: Required value")
        elif len(value) > _FIELD_LIMIT:
            found.append(f"{field}: Too long: may not be longer than {_FIELD_LIMIT}")
    if obj.get("type") not in _EVENT_TYPES:
        found.append(f'type: Unsupported value: "{obj.get("type")}"')
    note = obj.get("note")
    if isinstance(note, str) and len(note.encode()) > _NOTE_LIMIT:
        found.append(f"note: Too long: may not be longer than {_NOTE_LIMIT}")
    series = obj.get("series")
    if series is not None:
        if not isinstance(series, dict) or int(series.get("count") or 0) < 2:
            found.append("series.count: Invalid value: should be at least 2")
        elif not series.get("lastObservedTime"):
            found.append("series.lastObservedTime: Required value")
    regarding = obj.get("regarding") or {}
    namespace = obj["metadata"].get("namespace")
    if regarding.get("namespace") not in (None, "", namespace):
        found.append("regarding.namespace: Invalid value: does not match event.namespace")
    return found
