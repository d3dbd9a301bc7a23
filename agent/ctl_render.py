"""The tables `pgwarden ctl` prints: `list` (the `/cluster` object, like `patronictl list`) and
`history` (the `/history` object). Pure functions of the API's JSON, tested on their own
(tests/unit/test_ctl.py, test_sync_views.py); `topology` is agent/ctl_topology.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

_MIB = 1024 * 1024


def text_of(value: object, default: str = "") -> str:
    """`value` as a table cell: `default` for None."""
    return default if value is None else str(value)


def _lag_mb(member: Mapping[str, object]) -> str:
    if member.get("leader") is True:
        return ""
    lag = member.get("lag_bytes")
    if isinstance(lag, bool) or not isinstance(lag, int | float):
        return "unknown"
    return str(round(lag / _MIB))


_SYNC_ROLES = {"sync": "Sync Standby", "quorum": "Quorum Standby"}


def _role(member: Mapping[str, object]) -> str:
    if member.get("leader") is True:
        return "Leader"
    sync_role = _SYNC_ROLES.get(text_of(member.get("sync_role")))
    if sync_role is not None:
        return sync_role
    return text_of(member.get("role"), "unknown").capitalize()


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(parts) + " |"

    return [line, fmt(headers), line, *(fmt(r) for r in rows), line]


def render_table(cluster: Mapping[str, object]) -> str:
    """The `/cluster` object as a table like `patronictl list`:
    Member | Host | Role | State | TL | Lag in MB, the leader marked `Leader` (and first, as
    the API sends it), then the pending switchover and the maintenance mode, if any."""
    members = cluster.get("members")
    rows = [
        _member_row(member)
        for member in (members if isinstance(members, list) else [])
        if isinstance(member, dict)
    ]
    title = f"Cluster: {text_of(cluster.get('cluster'), '?')}"
    leader = cluster.get("leader")
    title += f" (leader: {leader})" if leader else " (no leader)"
    lines = [title]
    headers = ["Member", "Host", "Role", "State", "TL", "Lag in MB", "Pending restart"]
    lines += _grid(headers, rows, right={4, 5})
    paused = cluster.get("paused") is True
    notes = (
        _switchover_line(cluster.get("switchover")),
        _restart_line(cluster.get("restart")),
        "Maintenance mode: on (paused; the agents take no automatic action)" if paused else None,
        _sync_line(cluster),
        _failsafe_line(cluster),
    )
    lines += [note for note in notes if note is not None]
    return "\n".join(lines)


def _member_row(member: Mapping[str, object]) -> list[str]:
    host = text_of(member.get("host"), "?")
    if member.get("port") is not None:
        host = f"{host}:{member['port']}"
    return [
        text_of(member.get("name"), "?"),
        host,
        _role(member),
        text_of(member.get("state"), "unknown"),
        text_of(member.get("timeline")),
        _lag_mb(member),
        "*" if member.get("pending_restart") else "",
    ]


def _names(listed: object) -> str:
    return ", ".join(str(n) for n in listed) if isinstance(listed, list) else ""


def _switchover_line(switchover: object) -> str | None:
    if not isinstance(switchover, dict):
        return None
    text = (
        f"Switchover pending: {text_of(switchover.get('leader'), '(no leader)')} -> "
        f"{text_of(switchover.get('candidate'), '(healthiest replica)')}"
    )
    if switchover.get("scheduled_at"):
        text += f", scheduled at {switchover['scheduled_at']}"
    return text


def _restart_line(restart: object) -> str | None:
    if not isinstance(restart, dict):
        return None
    done = restart.get("done")
    text = f"Rolling restart of {_names(restart.get('members'))}"
    text += f" at {text_of(restart.get('scheduled_at'))}"
    text += " (pending only)" if restart.get("pending") else ""
    if isinstance(done, list) and done:
        text += f"; done: {', '.join(str(n) for n in done)}"
    return text + " (pgwarden ctl cancel-restart cancels it)"


def _sync_line(cluster: Mapping[str, object]) -> str | None:
    mode = text_of(cluster.get("synchronous_mode"))
    if not mode or mode == "off":
        return None
    text = f"Synchronous mode: {mode}"
    sync = cluster.get("sync")
    if isinstance(sync, dict):
        names = _names(sync.get("members"))
        quorum = sync.get("quorum")
        text += (
            f" (recorded set: {names}; every commit on {quorum} of them)"
            if names and quorum
            else " (no synchronous standby: commits are asynchronous)"
        )
    return text


def _failsafe_line(cluster: Mapping[str, object]) -> str | None:
    if cluster.get("failsafe_mode") is not True:
        return None
    failsafe = cluster.get("failsafe")
    names = _names(failsafe.get("members") if isinstance(failsafe, dict) else None)
    return "Failsafe mode: on" + (
        f" (a DCS outage is survived while {names} confirm the primary)" if names else ""
    )


def render_history(history: Mapping[str, object]) -> str:
    """The `/history` object as a table: TL | LSN | Reason | Time | New leader."""
    entries = history.get("history")
    rows = [
        [
            text_of(e.get("timeline")),
            text_of(e.get("switch_lsn_text"), text_of(e.get("switch_lsn"))),
            text_of(e.get("reason")),
            text_of(e.get("at")),
            text_of(e.get("new_leader")),
        ]
        for e in (entries if isinstance(entries, list) else [])
        if isinstance(e, dict)
    ]
    if not rows:
        return "No timeline switch recorded."
    return "\n".join(_grid(["TL", "LSN", "Reason", "Time", "New leader"], rows, right={0}))
