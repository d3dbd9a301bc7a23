"""The soak's figures and its report section on hand-made values (pure: no root, no
processes). The soak itself (tests/chaos/soak.py) runs under `make chaos` only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tests.chaos import report, soak_report
from tests.chaos.runner import ScenarioResult
from tests.chaos.soak import member_expiries, percentile, soak_row
from tests.chaos.soak_report import SoakRow

ROW = SoakRow(
    profile="ttl 6 / loop 1 / retry 1.5 / margin 1",
    ttl_s=6.0,
    minutes=3.0,
    false_failovers=0,
    stops=0,
    renew_failures=1,
    dcs_errors=0,
    agent_restarts=0,
    longest_write_gap_s=0.8,
    cycle_p99_s=0.4,
    cycle_max_s=1.2,
    api_p99_s=0.3,
    api_max_s=0.9,
    acked=14000,
    lost=0,
    split_brain=0,
    load_avg=14.2,
    stress="--cpu 0",
    measured="2026-12-04 23:10 UTC",
)


def _result(**changes: object) -> ScenarioResult:
    base = ScenarioResult(
        scenario="starvation [soak]",
        faults=("stress-ng --cpu 0 for 180 s (no fault)",),
        attempts=100,
        acked=90,
        write_unavailability_s=1.25,
        split_brain=(),
        lost=0,
        lost_examples=(),
        converge_s=0.2,
        diverged=(),
        must_not_lose=True,
        primary_before="pg-0",
        primary_after="pg-0",
        started_wall=0.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _line(member: str, event: str, **fields: object) -> tuple[str, dict[str, object]]:
    return member, {"event": event, "timestamp": "2026-12-04T23:00:10.000000Z", **fields}


def test_the_nearest_rank_percentile_is_a_recorded_value() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([0.2, 5.0], 99) == 5.0
    assert percentile([], 99) == 0.0


def test_a_soak_row_counts_leader_changes_stops_and_cycle_times_from_the_logs() -> None:
    lines = [
        _line("pg-0", "ha_cycle", duration_ms=100.0),
        _line("pg-1", "ha_cycle", duration_ms=2500.0),
        _line("pg-0", "renew_failed"),
        _line("pg-0", "demoting"),
        _line("pg-0", "fenced"),
        _line("pg-1", "lease_acquired"),
        _line("pg-1", "promoted"),
        _line("pg-2", "dcs_unavailable"),
    ]
    t0 = 1796425200.0  # 2026-12-04 23:00:00 UTC
    row = soak_row(
        timing={"ttl_s": 6.0, "loop_wait_s": 1.0, "retry_timeout_s": 1.5, "fence_margin_s": 1.0},
        minutes=3.0,
        result=_result(split_brain=()),
        lines=lines,
        api_s=[0.01, 0.02, 3.0],
        loads=[10.0, 12.0],
        stress="--cpu 0",
        t_start_wall=t0,
    )
    assert (row.false_failovers, row.stops, row.renew_failures, row.dcs_errors) == (1, 2, 1, 1)
    assert (row.cycle_p99_s, row.cycle_max_s) == (2.5, 2.5)
    assert (row.api_max_s, row.load_avg, row.longest_write_gap_s) == (3.0, 11.0, 1.25)
    assert row.profile == "ttl 6 / loop 1 / retry 1.5 / margin 1"
    assert row.events[0] == "+10s pg-0: demoting"


def test_the_section_marks_a_run_shorter_than_the_issues_bar() -> None:
    text = soak_report.section([ROW, dataclasses.replace(ROW, profile="long", minutes=30.0)])
    assert text.startswith(soak_report.HEADING)
    assert "| 3 (short run) |" in text
    assert "| 30 |" in text


def test_a_profile_with_a_full_run_is_not_listed_as_owing_one() -> None:
    # Short rows under other loads (a CPU quota) do not make a profile owe its 30 minutes.
    quota = dataclasses.replace(ROW, stress="--cpu 0; 0.01 CPU per member")
    full = dataclasses.replace(ROW, minutes=30.0)
    other = dataclasses.replace(ROW, profile="ttl 10 / loop 2 / retry 3 / margin 2", ttl_s=10.0)
    text = soak_report.section([quota, full, other])
    owed = next(line for line in text.splitlines() if line.startswith("Still to be produced"))
    assert other.profile in owed
    assert ROW.profile not in owed


def test_writing_a_soak_row_replaces_its_profile_and_keeps_the_rest(tmp_path: Path) -> None:
    stem = tmp_path / "chaos-report"
    stem.with_suffix(".md").write_text("# Chaos report\n\n| scenario |\n")
    other = dataclasses.replace(ROW, profile="ttl 10 / loop 2 / retry 3 / margin 2", ttl_s=10.0)
    soak_report.write(stem, [ROW, other])
    soak_report.write(stem, [dataclasses.replace(ROW, false_failovers=4)])
    rows = soak_report.read(stem)
    assert [(r.ttl_s, r.false_failovers) for r in rows] == [(6.0, 4), (10.0, 0)]
    markdown = stem.with_suffix(".md").read_text()
    assert markdown.count(soak_report.HEADING) == 1
    assert markdown.startswith("# Chaos report\n\n| scenario |\n")


def test_the_scenario_report_keeps_the_soak_section_when_it_rewrites(tmp_path: Path) -> None:
    stem = tmp_path / "chaos-report"
    soak_report.write(stem, [ROW])
    report.write([_result()], stem=stem, profile="quick", settings={})
    markdown = stem.with_suffix(".md").read_text()
    assert "| starvation [soak] |" in markdown
    assert markdown.count(soak_report.HEADING) == 1
    assert soak_report.read(stem) == [ROW]
    assert json.loads(stem.with_suffix(".json").read_text())["scenarios"]


ALL = frozenset({"pg-0", "pg-1", "pg-2"})


def test_a_member_record_that_disappears_and_comes_back_counts_as_one_expiry() -> None:
    samples = [
        (0.0, frozenset({"pg-0", "pg-1"})),  # pg-2 not seen yet: not an absence
        (0.5, ALL),
        (1.0, ALL - {"pg-1"}),
        (1.5, ALL - {"pg-1"}),
        (3.0, ALL),
        (3.5, ALL - {"pg-2"}),  # gone at the end
        (4.0, ALL - {"pg-2"}),
    ]
    count, longest, notes = member_expiries(samples)
    assert count == 2
    assert longest == 2.0
    assert notes == ("pg-1 absent 2.0 s", "pg-2 absent 0.5 s (at the end)")
    assert member_expiries([(0.0, ALL), (0.5, ALL)]) == (0, 0.0, ())


def test_a_soak_row_counts_member_record_expiries_seen_in_the_dcs() -> None:
    row = soak_row(
        timing={"ttl_s": 6.0, "loop_wait_s": 1.0, "retry_timeout_s": 1.5, "fence_margin_s": 1.0},
        minutes=3.0,
        result=_result(),
        lines=[],
        api_s=[0.01],
        loads=[1.0],
        stress="--cpu 0",
        t_start_wall=0.0,
        members=[(0.0, ALL), (1.0, ALL - {"pg-1"}), (4.0, ALL)],
    )
    assert (row.member_expiries, row.member_absent_max_s) == (1, 3.0)
    assert "member record pg-1 absent 3.0 s" in row.events
    text = soak_report.section([row])
    assert "member records expired (longest absence)" in text
    assert "| 1 (3.00 s) |" in text
    # A row from a report written before the count: n/a, not 0.
    old = soak_report.SoakRow.from_json(
        {k: v for k, v in ROW.as_json().items() if not k.startswith("member_")}
    )
    assert old is not None and old.member_expiries is None
    assert "| n/a |" in soak_report.section([old])
