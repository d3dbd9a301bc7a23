"""`pgwarden ctl topology`: the replication tree, drawn from the cluster view (GET /cluster).

Each replica hangs under the member it streams from (its `upstream` in its member record:
the leader, or the member it cascades from with `tags.replicatefrom`); a member whose
upstream is unknown or not in the view is shown at the top level. Pure: dict in, text out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def _label(member: Mapping[str, object]) -> str:
    parts = [str(member.get("role", "unknown")), str(member.get("state", "unknown"))]
    if member.get("timeline") is not None:
        parts.append(f"TL {member['timeline']}")
    lag = member.get("lag_bytes")
    if not member.get("leader") and isinstance(lag, int):
        parts.append(f"lag {lag} B")
    tags = member.get("tags")
    if isinstance(tags, Mapping):
        parts += [name for name in ("clonefrom", "noloadbalance", "nofailover") if tags.get(name)]
        wanted = tags.get("replicatefrom")
        if wanted and wanted != member.get("upstream"):
            parts.append(f"replicatefrom {wanted}, not streaming from it")
    leader = " [leader]" if member.get("leader") else ""
    return f"{member.get('name')}{leader} ({', '.join(parts)})"


def render_topology(cluster: Mapping[str, object]) -> str:
    raw = cluster.get("members")
    members: Sequence[Mapping[str, object]] = (
        [m for m in raw if isinstance(m, Mapping)] if isinstance(raw, list) else []
    )
    names = {str(m.get("name")) for m in members}
    children: dict[str, list[Mapping[str, object]]] = {}
    roots: list[Mapping[str, object]] = []
    for m in members:
        upstream = m.get("upstream")
        if m.get("leader") or not isinstance(upstream, str) or upstream not in names:
            roots.append(m)
        else:
            children.setdefault(upstream, []).append(m)
    roots.sort(key=lambda m: (not m.get("leader"), str(m.get("name"))))
    lines = [f"Cluster: {cluster.get('cluster', '?')}"]
    seen: set[str] = set()

    def draw(member: Mapping[str, object], depth: int) -> None:
        name = str(member.get("name"))
        if name in seen:  # a loop in the records: show it once
            return
        seen.add(name)
        lines.append("  " * depth + "+ " + _label(member))
        for child in sorted(children.get(name, []), key=lambda m: str(m.get("name"))):
            draw(child, depth + 1)

    for root in roots:
        draw(root, 0)
    for m in members:  # members only reachable through a loop
        draw(m, 0)
    return "\n".join(lines)
