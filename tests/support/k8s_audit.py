"""Reading the test API server's audit log (one JSON record per line, see
tests/k8s_apiserver/audit.py): what the agents did, in RBAC terms, and how often."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

AGENT_USER = "pgwarden"  # the user LocalCluster's agent token maps to


def audit_records(audit_log: Path) -> Iterator[dict[str, Any]]:
    """Every record of the file, oldest first (a torn last line is skipped)."""
    with audit_log.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def agent_permissions(audit_log: Path, *, user: str = AGENT_USER) -> set[tuple[str, str, str]]:
    """The set of (verb, resource, subresource) the agents used: what their RBAC Role must
    allow. `resource` is `plural` for the core group and `plural.group` otherwise (as in
    `kubectl auth can-i`)."""
    out: set[tuple[str, str, str]] = set()
    for record in audit_records(audit_log):
        if record.get("user") != user or not record.get("is_resource"):
            continue
        resource = record["resource"]
        if record.get("api_group"):
            resource = f"{resource}.{record['api_group']}"
        out.add((record["verb"], resource, record.get("subresource", "")))
    return out


def request_rate(
    audit_log: Path, *, since: float, until: float, user: str = AGENT_USER
) -> tuple[float, Counter[str]]:
    """Requests per second by `user` with a wall-clock timestamp in [since, until), and the
    count per "verb resource" (a watch counts when it is opened)."""
    counts: Counter[str] = Counter()
    for record in audit_records(audit_log):
        if record.get("user") == user and since <= record.get("ts", 0.0) < until:
            counts[f"{record.get('verb')} {record.get('resource')}"] += 1
    return sum(counts.values()) / max(until - since, 1e-9), counts
