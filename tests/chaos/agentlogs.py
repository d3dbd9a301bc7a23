"""Reading the agents' JSON logs of a chaos cluster: what each member logged since a mark.

Each agent writes one JSON object per line to `<member base>/agent.log` (`log.format: json`);
a mark is the size of every member's log, taken before the part of a run to look at.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tests.chaos.cluster import ChaosCluster

# Events that stop or replace a primary: its fencing, demotion, a hung server's kill, and a
# leader change (the lease taken, a promotion).
STOPPING_EVENTS = ("fenced", "demoting", "postgres_killed", "lease_acquired", "promoted")

Line = tuple[str, dict[str, object]]  # (member name, parsed log line)


def log_sizes(cluster: ChaosCluster) -> list[int]:
    """The mark: each member's log size now."""
    return [
        (m.base / "agent.log").stat().st_size if (m.base / "agent.log").exists() else 0
        for m in cluster.members
    ]


def lines_since(cluster: ChaosCluster, sizes: list[int]) -> list[Line]:
    """(member, parsed JSON line) for each agent log line written since the mark `sizes`."""
    found = []
    for member, size in zip(cluster.members, sizes, strict=True):
        with open(member.base / "agent.log", "rb") as f:
            f.seek(size)
            for raw in f.read().decode(errors="replace").splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict):
                    found.append((member.name, line))
    return found


def events(lines: Iterable[Line], names: tuple[str, ...]) -> list[str]:
    """ "<member>: <event>" for each line whose event is one of `names`, in log order."""
    return [f"{member}: {line['event']}" for member, line in lines if line.get("event") in names]


def cycle_durations_s(lines: Iterable[Line], member: str | None = None) -> list[float]:
    """The duration of each `ha_cycle` (of `member`, or of every member), in seconds."""
    return [
        float(str(line.get("duration_ms", 0))) / 1000
        for name, line in lines
        if (member is None or name == member) and line.get("event") == "ha_cycle"
    ]
