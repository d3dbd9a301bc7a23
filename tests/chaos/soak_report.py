"""The soak's section of the chaos report (tests/chaos/soak.py): one row per timing profile.

The rows live in the report's JSON under "soak" and are rendered as the last section of the
Markdown, from HEADING to the end. Writing a soak row replaces the row of the same profile and
keeps the others; the scenario report (report.write) keeps the whole section when it rewrites
the file, so neither erases the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

HEADING = "## Soak: CPU and I/O starvation, no fault injected"
# The bar: a ttl is earned by a soak of at least this long with no false failover.
FULL_MINUTES = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakRow:
    profile: str  # "ttl 6 / loop 1 / retry 1.5 / margin 1"
    ttl_s: float
    minutes: float  # how long the starvation lasted
    false_failovers: int  # leader changes (lease_acquired) with no fault injected
    stops: int  # fenced / demoting / postgres_killed events (a healthy primary stopped)
    renew_failures: int  # renew_failed events (a renewal that did not get through in time)
    dcs_errors: int  # dcs_unavailable and dcs_lease_lost events
    agent_restarts: int  # agent_starting events after the start (an agent died)
    longest_write_gap_s: float  # of the application writer, over the whole run
    cycle_p99_s: float  # ha_cycle durations of every member (nearest rank)
    cycle_max_s: float
    api_p99_s: float  # GET /health answer time of every member, from the client
    api_max_s: float
    acked: int
    lost: int | None  # acknowledged writes absent from the final primary (must be 0)
    split_brain: int
    load_avg: float  # mean 1-minute load average of the machine during the run
    stress: str  # the stress-ng arguments
    measured: str  # "<UTC date>"
    events: tuple[str, ...] = ()  # the first stopping events, "<+s> <member>: <event>"
    # Member records that disappeared from etcd during the run (a member's lease expired:
    # it flapped at ttl 6 before heartbeat_interval, agent/dcs/heartbeat.py); None in rows
    # measured before they were counted. The longest absence, in seconds.
    member_expiries: int | None = None
    member_absent_max_s: float = 0.0

    @classmethod
    def from_json(cls, item: dict[str, object]) -> SoakRow | None:
        """A row from the report's JSON; None for one this version cannot read."""
        try:
            values: dict[str, Any] = {f.name: item[f.name] for f in fields(cls) if f.name in item}
            events = item.get("events")
            values["events"] = tuple(str(e) for e in events) if isinstance(events, list) else ()
            return cls(**values)
        except (KeyError, TypeError):
            return None

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["events"] = list(self.events)
        return out


def _s(value: float) -> str:
    return f"{value:.2f} s"


def _expiries(row: SoakRow) -> str:
    if row.member_expiries is None:
        return "n/a"
    if not row.member_expiries:
        return "0"
    return f"{row.member_expiries} ({_s(row.member_absent_max_s)})"


def section(rows: Sequence[SoakRow]) -> str:
    """The Markdown section (from HEADING), or "" without rows."""
    if not rows:
        return ""
    lines = [
        HEADING,
        "",
        "A 3-member cluster (3 etcd members, asynchronous replication, the application and "
        "member writers of the chaos workload) under `stress-ng` for the given duration: no "
        "fault is injected, so every leader change is a false failover and every fencing or "
        "demotion stopped a healthy primary. Made by `python -m tests.chaos.soak` (`make "
        f"chaos`, CHAOS_SOAK_MINUTES). The issue's bar is {FULL_MINUTES:g} minutes per ttl; "
        "a row marked *short run* is below it and does not earn a ttl. Cycle: the agents' "
        "`ha_cycle` durations (p99 by nearest rank / max); API: the `/health` answer time of "
        "every member seen from the client (the agents' event loops, the client's own "
        "starvation included); member records expired: a member's record disappeared from "
        "etcd while its agent ran (its lease expired), seen by polling etcd twice a second "
        "(*n/a*: a row measured before they were counted); load: the machine's mean 1-minute "
        "load average (2 cores).",
        "",
        "| profile | minutes | false failovers | fencings / demotions | renewals failed "
        "| DCS errors | member records expired (longest absence) | agent restarts "
        "| longest write gap | cycle p99 / max | API p99 / max "
        "| acknowledged writes lost | split-brain instants | load | stress | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        minutes = f"{row.minutes:g}" + (" (short run)" if row.minutes < FULL_MINUTES else "")
        lost = "n/a" if row.lost is None else str(row.lost)
        lines.append(
            f"| {row.profile} | {minutes} | {row.false_failovers} | {row.stops} "
            f"| {row.renew_failures} | {row.dcs_errors} | {_expiries(row)} | {row.agent_restarts} "
            f"| {_s(row.longest_write_gap_s)} | {_s(row.cycle_p99_s)} / {_s(row.cycle_max_s)} "
            f"| {_s(row.api_p99_s)} / {_s(row.api_max_s)} | {lost} (must be 0) of {row.acked} "
            f"| {row.split_brain} | {row.load_avg:.1f} | `{row.stress}` | {row.measured} |"
        )
    # A profile still owes its full run only when no row of it (under any stress) has one.
    full = {row.profile for row in rows if row.minutes >= FULL_MINUTES}
    short = sorted({row.profile for row in rows if row.minutes < FULL_MINUTES} - full)
    if short:
        lines += [
            "",
            f"Still to be produced: the {FULL_MINUTES:g}-minute rows of "
            + ", ".join(short)
            + " (`make chaos`); until then the table does not earn a shorter default ttl.",
        ]
    noted = [row for row in rows if row.events]
    if noted:
        lines += ["", "Stopping events (first ones, seconds from the start of the stress):", ""]
        lines += [f"- {row.profile}, `{row.stress}`: " + "; ".join(row.events) for row in noted]
    return "\n".join(lines) + "\n"


def read(stem: Path) -> list[SoakRow]:
    """The soak rows of the report at `stem` (none when absent or unreadable)."""
    try:
        data = json.loads(stem.with_suffix(".json").read_text())
        items = data.get("soak", [])
    except (OSError, ValueError, AttributeError):
        return []
    rows = [SoakRow.from_json(item) for item in items if isinstance(item, dict)]
    return [r for r in rows if r is not None]


def merge(old: Sequence[SoakRow], new: Sequence[SoakRow]) -> list[SoakRow]:
    """`new`'s rows replace `old`'s of the same profile and stress; the rest of `old` is
    kept; ordered by ttl, then stress."""
    fresh = {(row.profile, row.stress) for row in new}
    kept = [r for r in old if (r.profile, r.stress) not in fresh]
    return sorted([*kept, *new], key=lambda r: (r.ttl_s, r.stress))


def without_section(markdown: str) -> str:
    """The Markdown before the soak section (all of it when there is none)."""
    head, _sep, _tail = markdown.partition(HEADING)
    return head.rstrip("\n") + "\n" if head.strip() else ""


def write(stem: Path, rows: Sequence[SoakRow]) -> list[SoakRow]:
    """Put `rows` into the report at `stem` (JSON "soak" and the Markdown section), keeping
    the scenario rows and the other profiles' soak rows; returns every soak row now there."""
    merged = merge(read(stem), rows)
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(stem.with_suffix(".json").read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data["soak"] = [row.as_json() for row in merged]
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    try:
        markdown = stem.with_suffix(".md").read_text()
    except OSError:
        markdown = "# Chaos report\n"
    stem.with_suffix(".md").write_text(without_section(markdown) + "\n" + section(merged))
    return merged
