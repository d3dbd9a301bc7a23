"""The chaos report: one row per scenario (aggregated over its runs), as Markdown and JSON.

Writing merges: rows of scenarios that this session did not run are kept from the report
already at the path (with the date and profile they were measured with), so that a quick
k8s or failsafe run does not erase the long profile's rows. Delete the files for a fresh one.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.chaos import mix, soak_report
from tests.chaos.runner import ScenarioResult


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    scenario: str
    runs: int
    faults_injected: int
    max_write_unavailability_s: float
    split_brain_instants: int
    acked_writes: int
    acked_writes_lost: int | None  # None: some run had no converged primary to compare with
    max_time_to_converge_s: float | None  # None: some run did not converge within the bound
    diverged_members: int
    must_not_lose: bool
    measured: str = ""  # "<UTC date>, <profile>": when and how this row was measured
    # Per fault instant of a run (the i-th SIGTERM of sigterm-chain...), the longest write
    # gap it caused, max over the runs (see ScenarioResult.gaps_s).
    write_gaps_s: tuple[float, ...] = ()
    # From the fault to the first write another member acknowledged, max over the runs (None:
    # no run failed over); writes the old primary acknowledged after that, summed.
    max_failover_s: float | None = None
    old_primary_acks_after_failover: int = 0
    # Each run's figure, in the order they ran, for the distributions (empty in rows kept
    # from reports written before they were recorded): write-unavailability, and the
    # failover time of the runs that failed over.
    write_unavailability_runs_s: tuple[float, ...] = ()
    failover_runs_s: tuple[float, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "measured": self.measured,
            "scenario": self.scenario,
            "runs": self.runs,
            "faults_injected": self.faults_injected,
            "max_write_unavailability_s": round(self.max_write_unavailability_s, 2),
            "split_brain_instants": self.split_brain_instants,
            "acked_writes": self.acked_writes,
            "acked_writes_lost": self.acked_writes_lost,
            "max_time_to_converge_s": None
            if self.max_time_to_converge_s is None
            else round(self.max_time_to_converge_s, 2),
            "diverged_members": self.diverged_members,
            "must_not_lose": self.must_not_lose,
            "write_gaps_s": [round(g, 2) for g in self.write_gaps_s],
            "max_failover_s": None
            if self.max_failover_s is None
            else round(self.max_failover_s, 2),
            "old_primary_acks_after_failover": self.old_primary_acks_after_failover,
            "write_unavailability_runs_s": [round(v, 2) for v in self.write_unavailability_runs_s],
            "failover_runs_s": [round(v, 2) for v in self.failover_runs_s],
        }


def rows(results: Iterable[ScenarioResult], *, measured: str = "") -> list[Row]:
    grouped: dict[str, list[ScenarioResult]] = {}
    for result in results:
        grouped.setdefault(result.scenario, []).append(result)
    out = []
    # Single scenarios first, the random mixes last, each in the order they ran.
    order = sorted(grouped, key=lambda name: name.startswith("random-mix"))
    for scenario in order:
        runs = grouped[scenario]
        losses = [r.lost for r in runs]
        converges = [r.converge_s for r in runs]
        out.append(
            Row(
                scenario=scenario,
                runs=len(runs),
                faults_injected=sum(len(r.faults) for r in runs),
                max_write_unavailability_s=max(r.write_unavailability_s for r in runs),
                split_brain_instants=sum(len(r.split_brain) for r in runs),
                acked_writes=sum(r.acked for r in runs),
                acked_writes_lost=None
                if any(v is None for v in losses)
                else sum(v for v in losses if v is not None),
                max_time_to_converge_s=None
                if any(v is None for v in converges)
                else max(v for v in converges if v is not None),
                diverged_members=sum(len(r.diverged) for r in runs),
                must_not_lose=any(r.must_not_lose for r in runs),
                measured=measured,
                write_gaps_s=_max_per_instant(r.gaps_s for r in runs),
                max_failover_s=max(
                    (r.failover_s for r in runs if r.failover_s is not None), default=None
                ),
                old_primary_acks_after_failover=sum(
                    r.old_primary_acks_after_failover for r in runs
                ),
                write_unavailability_runs_s=tuple(r.write_unavailability_s for r in runs),
                failover_runs_s=tuple(r.failover_s for r in runs if r.failover_s is not None),
            )
        )
    return out


def distribution(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, 95th percentile, max) of a run's figures. The percentile is the nearest rank
    (the smallest value with at least 95% of the runs at or below it): below 20 runs it is
    the max, as it should be (nothing finer can be said of so few)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    count = len(ordered)
    middle = count // 2
    median = ordered[middle] if count % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return median, ordered[math.ceil(0.95 * count) - 1], ordered[-1]


def _max_per_instant(per_run: Iterable[tuple[float, ...]]) -> tuple[float, ...]:
    """The i-th value is the max of the runs' i-th gaps (runs may have fewer instants)."""
    out: list[float] = []
    for gaps in per_run:
        for i, gap in enumerate(gaps):
            if i < len(out):
                out[i] = max(out[i], gap)
            else:
                out.append(gap)
    return tuple(out)


def _row_from_json(item: dict[str, object], fallback: str) -> Row | None:
    """A row of an earlier report; None when it does not parse (then it is dropped)."""
    try:
        lost = item["acked_writes_lost"]
        converge = item["max_time_to_converge_s"]
        gaps = item.get("write_gaps_s") or []
        failover = item.get("max_failover_s")
        return Row(
            scenario=str(item["scenario"]),
            runs=int(str(item["runs"])),
            faults_injected=int(str(item["faults_injected"])),
            max_write_unavailability_s=float(str(item["max_write_unavailability_s"])),
            split_brain_instants=int(str(item["split_brain_instants"])),
            acked_writes=int(str(item["acked_writes"])),
            acked_writes_lost=None if lost is None else int(str(lost)),
            max_time_to_converge_s=None if converge is None else float(str(converge)),
            diverged_members=int(str(item["diverged_members"])),
            must_not_lose=bool(item["must_not_lose"]),
            measured=str(item.get("measured") or fallback),
            write_gaps_s=tuple(float(str(g)) for g in gaps) if isinstance(gaps, list) else (),
            max_failover_s=None if failover is None else float(str(failover)),
            old_primary_acks_after_failover=int(
                str(item.get("old_primary_acks_after_failover") or 0)
            ),
            write_unavailability_runs_s=_floats(item.get("write_unavailability_runs_s")),
            failover_runs_s=_floats(item.get("failover_runs_s")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _floats(raw: object) -> tuple[float, ...]:
    return tuple(float(str(v)) for v in raw) if isinstance(raw, list) else ()


def _earlier(stem: Path) -> tuple[list[Row], list[dict[str, object]]]:
    """The rows and run details of the report already at `stem` (none if absent/unreadable)."""
    try:
        data = json.loads(stem.with_suffix(".json").read_text())
        profile = str(data.get("profile", "?"))
        generated = data.get("generated") or _date_in_markdown(stem) or "earlier"
        fallback = f"{generated}, {profile}"
        table = [_row_from_json(item, fallback) for item in data.get("scenarios", [])]
        details = [d for d in data.get("runs", []) if isinstance(d, dict)]
    except (OSError, ValueError, AttributeError):
        return [], []
    return [r for r in table if r is not None], details


def _cell(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


def markdown(
    table: Sequence[Row],
    *,
    profile: str,
    settings: dict[str, object],
    gray_runs: Sequence[tuple[str, str]] = (),
) -> str:
    """The report; `gray_runs` is (scenario, what the fault did) per run of a gray scenario
    whose description carries its own figures (lag, failover after the kill, pgbench)."""
    lines = [
        "# Chaos report",
        "",
        f"Generated by the chaos suite (`tests/chaos/`), last written by profile **{profile}** "
        f"on {_now()}. Settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + ". Rows of scenarios that run did not include are kept from earlier runs; the last "
        "column says when and with which profile each row was measured. See docs/chaos.md for "
        "what each column means.",
        "",
        "| scenario | runs | faults injected | max write-unavailability | split-brain instants "
        "| acknowledged writes lost | time to converge (max) | diverged members | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in table:
        lost = "n/a" if row.acked_writes_lost is None else str(row.acked_writes_lost)
        if row.must_not_lose:
            lost += " (must be 0)"
        lines.append(
            f"| {row.scenario} | {row.runs} | {row.faults_injected} "
            f"| {_cell(row.max_write_unavailability_s, ' s')} | {row.split_brain_instants} "
            f"| {lost} of {row.acked_writes} | {_cell(row.max_time_to_converge_s, ' s')} "
            f"| {row.diverged_members} | {row.measured} |"
        )
    chains = [row for row in table if len(row.write_gaps_s) > 1]
    if chains:
        lines += [
            "",
            "Write gap per fault of the scenarios that inject several (the longest stretch "
            "without an acknowledged application write from the last ack before each fault to "
            "the next; max over runs):",
            "",
        ]
        lines += [
            f"- {row.scenario}: " + ", ".join(f"{gap:.2f} s" for gap in row.write_gaps_s)
            for row in chains
        ]
    lines += _distributions(table)
    gray = [row for row in table if _is_gray(row.scenario)]
    if gray:
        lines += [
            "",
            "Gray faults (tests/chaos/test_gray.py and the gray rows of the quick profile): "
            "time from the fault to the first write another member acknowledged (max over "
            "runs; *none*: no failover), and writes the old primary acknowledged after that:",
            "",
        ]
        lines += [
            f"- {row.scenario}: failover "
            + ("none" if row.max_failover_s is None else f"{row.max_failover_s:.2f} s")
            + f", old primary acknowledged {row.old_primary_acks_after_failover} after it"
            for row in gray
        ]
    if gray_runs:
        lines += ["", "Each run of the gray scenarios, as its nemesis described it:", ""]
        lines += [f"- {scenario}: {what}" for scenario, what in gray_runs]
    return "\n".join(lines) + "\n"


def _distributions(table: Sequence[Row]) -> list[str]:
    """The distributions over runs of the rows measured with per-run figures, 2 runs or more."""
    repeated = [row for row in table if len(row.write_unavailability_runs_s) >= 2]
    if not repeated:
        return []
    lines = [
        "",
        "Distributions over the runs (scenarios with 2 runs or more; median / 95th percentile "
        "(nearest rank: the max below 20 runs) / max): the write-unavailability, and the "
        "failover time of the runs that failed over (from the fault to the first write "
        "another member acknowledged):",
        "",
        "| scenario | runs | write-unavailability | failovers | failover time |",
        "|---|---:|---|---:|---|",
    ]
    for row in repeated:
        gaps = " / ".join(f"{v:.2f}" for v in distribution(row.write_unavailability_runs_s))
        failover = (
            " / ".join(f"{v:.2f}" for v in distribution(row.failover_runs_s)) + " s"
            if row.failover_runs_s
            else "-"
        )
        lines.append(
            f"| {row.scenario} | {len(row.write_unavailability_runs_s)} | {gaps} s "
            f"| {len(row.failover_runs_s)} | {failover} |"
        )
    return lines


def figures_tables(runs: Sequence[tuple[str, dict[str, str]]]) -> str:
    """One Markdown table of the runs that carry their own figures (a column per figure, a
    row per run), after a heading; empty when none does."""
    if not runs:
        return ""
    columns: list[str] = []
    for _scenario, found in runs:
        columns += [k for k in found if k not in columns]
    lines = [
        "",
        "Figures of each run (the scenarios that measure their own; see docs/chaos.md):",
        "",
        "| scenario | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for scenario, found in runs:
        lines.append(f"| {scenario} | " + " | ".join(found.get(c, "") for c in columns) + " |")
    return "\n".join(lines) + "\n"


GRAY_PREFIXES = (
    "primary-storage-",
    "replica-storage-",
    "primary-backend-",
    "agent-restart-",
    "slow-network-",
    "primary-disk-",
    "replica-disk-",
    "async-load-",
)


def _is_gray(scenario: str) -> bool:
    return scenario.startswith(GRAY_PREFIXES)


def write(
    results: Sequence[ScenarioResult], *, stem: Path, profile: str, settings: dict[str, object]
) -> None:
    """Write `<stem>.md` and `<stem>.json`, keeping the earlier report's rows (and run
    details) of the scenarios not in `results`."""
    generated = _now()
    fresh = rows(results, measured=f"{generated}, {profile}")
    names = {row.scenario for row in fresh}
    kept_rows, kept_details = _earlier(stem)
    soak = soak_report.read(stem)  # the soak's section is kept as it is (tests/chaos/soak.py)
    kept_rows = [r for r in kept_rows if r.scenario not in names]
    kept_details = [d for d in kept_details if d.get("scenario") not in names]
    table = _ordered([*kept_rows, *fresh])
    stem.parent.mkdir(parents=True, exist_ok=True)
    details = kept_details + [
        {
            "scenario": r.scenario,
            "faults": list(r.faults),
            "primary_before": r.primary_before,
            "primary_after": r.primary_after,
            "split_brain": [
                {"at": round(s.at, 3), "member": s.member, "while_writable": s.while_writable}
                for s in r.split_brain[:20]
            ],
            "lost_examples": list(r.lost_examples),
            "diverged": list(r.diverged),
            "write_gaps_s": [round(g, 3) for g in r.gaps_s],
            "failover_s": None if r.failover_s is None else round(r.failover_s, 3),
            "old_primary_acks_after_failover": r.old_primary_acks_after_failover,
            "figures": dict(r.figures),
            **({"mix_faults": [f.as_json() for f in r.mix_faults]} if r.mix_faults else {}),
        }
        for r in results
    ]
    gray_runs = [
        (str(d.get("scenario")), "; ".join(str(f) for f in faults))
        for d in details
        if _is_gray(str(d.get("scenario"))) and isinstance(faults := d.get("faults"), list)
    ]
    figures = [
        (str(d.get("scenario")), {str(k): str(v) for k, v in found.items()})
        for d in details
        if isinstance(found := d.get("figures"), dict) and found
    ]
    mixes = mix.section(details)
    stem.with_suffix(".md").write_text(
        markdown(table, profile=profile, settings=settings, gray_runs=gray_runs)
        + figures_tables(figures)
        + ("\n".join(mixes) + "\n" if mixes else "")
        + ("\n" + soak_report.section(soak) if soak else "")
    )
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "profile": profile,
                "generated": generated,
                "settings": settings,
                "scenarios": [row.as_json() for row in table],
                "runs": details,
                **({"soak": [row.as_json() for row in soak]} if soak else {}),
            },
            indent=2,
        )
        + "\n"
    )


def _date_in_markdown(stem: Path) -> str | None:
    """The generation date an older report (without "generated" in its JSON) states."""
    try:
        found = re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", stem.with_suffix(".md").read_text())
    except OSError:
        return None
    return found.group(0) if found else None


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _ordered(table: Sequence[Row]) -> list[Row]:
    """By variant (plain, then each bracketed suffix in order of first appearance), single
    scenarios before random mixes within each, otherwise stable."""
    variants: dict[str, int] = {}
    for row in table:
        variants.setdefault(_variant(row.scenario), len(variants))
    return sorted(
        table,
        key=lambda r: (
            variants[_variant(r.scenario)] if _variant(r.scenario) else -1,
            r.scenario.startswith("random-mix"),
        ),
    )


def _variant(scenario: str) -> str:
    """The bracketed suffixes of a scenario name (" [sync]", " [k8s]"); empty when plain."""
    _head, sep, tail = scenario.partition(" [")
    return sep + tail if sep else ""
