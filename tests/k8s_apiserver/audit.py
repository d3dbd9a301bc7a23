"""The audit log: one record per API request (who did what to which object), kept in memory
and optionally appended to a JSON-lines file. Tests compare it with an RBAC Role."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One request, in the vocabulary of RBAC (`verb` on `api_group`/`resource`)."""

    ts: float
    user: str
    method: str
    path: str
    code: int
    is_resource: bool
    verb: str
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    content_type: str = ""  # of the request body (tells which patch type was sent)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (field names as in this class)."""
        return dataclasses.asdict(self)


class AuditLog:
    """Append-only list of AuditRecord, mirrored to a file when one is given."""

    def __init__(self, path: Path | None = None) -> None:
        self._records: list[AuditRecord] = []
        self._path = path
        # Requests by verb since the start (not reset by clear): what a benchmark reads
        # cheaply (GET /_state) instead of the whole log.
        self.verbs: Counter[str] = Counter()
        # Requests and 429s by "verb resource" (e.g. "update leases"), likewise.
        self.kinds: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def add(self, record: AuditRecord) -> None:
        """Record one request (and append it to the file)."""
        self._records.append(record)
        self.verbs[record.verb] += 1
        kind = f"{record.verb} {record.resource}".strip()
        self.kinds[kind] += 1
        if record.code == 429:
            self.refused[kind] += 1
        if self._path is not None:
            with self._path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record.to_json(), sort_keys=True) + "\n")

    @property
    def records(self) -> tuple[AuditRecord, ...]:
        """Everything recorded so far, oldest first."""
        return tuple(self._records)

    def clear(self) -> None:
        """Forget the in-memory records (the file is left as is)."""
        self._records.clear()


def now() -> float:
    """Wall-clock timestamp for records."""
    return time.time()
