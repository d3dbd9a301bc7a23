"""The checker on hand-made histories (pure functions: no root, no processes, no sleeping)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tests.chaos import checker, report
from tests.chaos.runner import ScenarioResult
from tests.chaos.workload import Attempt

MEMBERS = ["pg-0", "pg-1"]


def _run(
    writer: str, member: str | None, start: float, end: float, *, acked: bool = True
) -> list[Attempt]:
    """Attempts every 0.05 s in [start, end), each taking 0.01 s."""
    out = []
    t = start
    value = int(start * 1000) + {"app": 0, "pg-0": 1, "pg-1": 2}[writer] * 1_000_000
    while t < end - 1e-9:
        out.append(
            Attempt(writer=writer, value=value, member=member, sent=t, ended=t + 0.01, acked=acked)
        )
        value += 1
        t += 0.05
    return out


def test_a_clean_handover_has_no_split_brain_instant() -> None:
    attempts = [
        *_run("pg-0", "pg-0", 0.0, 2.0),
        *_run("pg-0", "pg-0", 2.0, 4.0, acked=False),
        *_run("pg-1", "pg-1", 0.0, 3.0, acked=False),
        *_run("pg-1", "pg-1", 3.0, 5.0),
        *_run("app", "pg-0", 0.0, 2.0),
        *_run("app", "pg-1", 3.0, 5.0),
    ]
    assert checker.split_brain_instants(attempts, MEMBERS) == []


def test_acks_of_a_new_primary_while_the_old_one_still_accepts_writes_are_split_brain() -> None:
    attempts = [
        *_run("pg-0", "pg-0", 0.0, 3.0),  # the old primary goes on until 3 s
        *_run("pg-1", "pg-1", 0.0, 2.0, acked=False),
        *_run("pg-1", "pg-1", 2.0, 4.0),  # the new one from 2 s
    ]
    found = checker.split_brain_instants(attempts, MEMBERS)
    assert found, "overlapping writable intervals were not detected"
    assert {(s.member, s.while_writable) for s in found} == {("pg-1", "pg-0"), ("pg-0", "pg-1")}
    assert all(2.0 <= s.at <= 3.0 for s in found)


def test_an_application_write_served_by_a_second_member_is_split_brain() -> None:
    attempts = [*_run("pg-0", "pg-0", 0.0, 2.0), *_run("app", "pg-1", 1.0, 1.1)]
    found = checker.split_brain_instants(attempts, MEMBERS)
    assert len(found) == 2
    assert {(s.member, s.while_writable) for s in found} == {("pg-1", "pg-0")}


def test_a_failed_attempt_ends_a_writable_interval() -> None:
    attempts = [
        *_run("pg-0", "pg-0", 0.0, 1.0),
        *_run("pg-0", "pg-0", 1.0, 1.05, acked=False),
        *_run("pg-0", "pg-0", 1.05, 2.0),
    ]
    intervals = checker.writable_intervals(attempts, MEMBERS)
    assert len(intervals) == 2
    assert intervals[0].end < 1.0 < intervals[1].start


def test_lost_writes_are_the_acknowledged_values_missing_on_the_final_primary() -> None:
    attempts = _run("app", "pg-0", 0.0, 0.2)
    kept = {a.value for a in attempts[:2]}
    unacked = Attempt(writer="app", value=-1, member=None, sent=0.3, ended=0.4, acked=False)
    lost = checker.lost_writes([*attempts, unacked], kept)
    assert [a.value for a in lost] == [a.value for a in attempts[2:]]


def test_divergence_counts_extra_and_missing_rows() -> None:
    assert checker.divergence({1, 2, 9}, {1, 2, 3, 4}) == (1, 2)
    assert checker.divergence({1, 2}, {1, 2}) == (0, 0)


def test_write_unavailability_is_the_longest_stretch_without_an_app_ack() -> None:
    attempts = [*_run("app", "pg-0", 0.0, 1.0), *_run("app", "pg-1", 3.0, 4.0)]
    gap = checker.longest_unavailability(attempts, writer="app", start=0.5, end=4.0)
    assert 2.0 < gap < 2.1


def test_the_report_aggregates_runs_per_scenario() -> None:
    def result(lost: int | None, converge: float | None, unavailable: float) -> ScenarioResult:
        return ScenarioResult(
            scenario="s",
            faults=("f",),
            attempts=10,
            acked=8,
            write_unavailability_s=unavailable,
            split_brain=(),
            lost=lost,
            lost_examples=(),
            converge_s=converge,
            diverged=(),
            must_not_lose=False,
            primary_before="pg-0",
            primary_after="pg-1",
            started_wall=0.0,
        )

    (row,) = report.rows([result(1, 2.0, 1.0), result(2, 5.0, 3.0)])
    assert (row.runs, row.acked_writes_lost, row.max_time_to_converge_s) == (2, 3, 5.0)
    assert row.max_write_unavailability_s == 3.0
    (row,) = report.rows([result(None, None, 1.0)])
    assert row.acked_writes_lost is None and row.max_time_to_converge_s is None
    text = report.markdown(report.rows([result(0, 1.0, 0.5)]), profile="quick", settings={})
    assert "| s | 1 | 1 | 0.5 s | 0 | 0 of 8 | 1.0 s | 0 |" in text


def test_the_report_gives_the_median_95th_percentile_and_max_over_runs() -> None:
    assert report.distribution([3.0, 1.0, 2.0]) == (2.0, 3.0, 3.0)
    assert report.distribution([4.0, 1.0, 2.0, 3.0]) == (2.5, 4.0, 4.0)
    twenty = [float(v) for v in range(1, 21)]
    assert report.distribution(twenty) == (10.5, 19.0, 20.0)
    runs = [
        dataclasses.replace(_result("s", 0), write_unavailability_s=gap, failover_s=failover)
        for gap, failover in ((0.4, None), (1.6, 6.1), (0.2, 5.9))
    ]
    (row,) = report.rows(runs)
    assert row.write_unavailability_runs_s == (0.4, 1.6, 0.2)
    assert row.failover_runs_s == (6.1, 5.9)
    text = report.markdown([row], profile="quick", settings={})
    assert "| s | 3 | 0.40 / 1.60 / 1.60 s | 2 | 6.00 / 6.10 / 6.10 s |" in text
    (kept,) = [r for r in [report._row_from_json(row.as_json(), "x")] if r is not None]
    assert kept.failover_runs_s == row.failover_runs_s
    single = report.markdown(report.rows(runs[:1]), profile="quick", settings={})
    assert "Distributions" not in single


def _result(scenario: str, lost: int) -> ScenarioResult:
    return ScenarioResult(
        scenario=scenario,
        faults=("f",),
        attempts=10,
        acked=8,
        write_unavailability_s=0.5,
        split_brain=(),
        lost=lost,
        lost_examples=(),
        converge_s=1.0,
        diverged=(),
        must_not_lose=False,
        primary_before="pg-0",
        primary_after="pg-0",
        started_wall=0.0,
    )


def test_writing_a_report_keeps_the_earlier_rows_of_scenarios_this_run_did_not_include(
    tmp_path: Path,
) -> None:
    stem = tmp_path / "report"
    report.write([_result("a", 1), _result("b", 2)], stem=stem, profile="long", settings={})
    report.write([_result("b [k8s]", 0), _result("b", 5)], stem=stem, profile="k8s", settings={})
    data = json.loads(stem.with_suffix(".json").read_text())
    by_name = {row["scenario"]: row for row in data["scenarios"]}
    assert list(by_name) == ["a", "b", "b [k8s]"]  # plain rows first, then each variant
    assert by_name["a"]["acked_writes_lost"] == 1 and by_name["a"]["measured"].endswith("long")
    assert by_name["b"]["acked_writes_lost"] == 5 and by_name["b"]["measured"].endswith("k8s")
    assert sorted(run["scenario"] for run in data["runs"]) == ["a", "b", "b [k8s]"]
    assert "| a | 1 | 1 | 0.5 s | 0 | 1 of 8 |" in stem.with_suffix(".md").read_text()


def test_the_write_gap_of_each_fault_counts_from_the_last_ack_before_it() -> None:
    attempts = [
        *_run("app", "pg-0", 0.0, 1.0),  # last ack ends at 0.96
        *_run("app", "pg-1", 3.0, 3.5),  # fault 1 at 1.0: gap 0.96 -> 3.01
        *_run("app", "pg-0", 4.0, 5.0),  # fault 2 at 3.5: gap 3.46 -> 4.01
    ]
    gaps = checker.gaps_after(attempts, writer="app", instants=[1.0, 3.5], end=5.0)
    assert [round(g, 2) for g in gaps] == [2.05, 0.55]


def test_the_report_keeps_the_longest_gap_of_each_fault_over_runs(tmp_path: Path) -> None:
    def chain(gaps: tuple[float, ...]) -> ScenarioResult:
        return dataclasses.replace(_result("chain", 0), gaps_s=gaps)

    (row,) = report.rows([chain((0.2, 9.0, 0.3)), chain((1.5, 0.4))])
    assert row.write_gaps_s == (1.5, 9.0, 0.3)
    stem = tmp_path / "report"
    report.write([chain((0.2, 9.0, 0.3))], stem=stem, profile="quick", settings={})
    assert "- chain: 0.20 s, 9.00 s, 0.30 s" in stem.with_suffix(".md").read_text()
    report.write([_result("other", 0)], stem=stem, profile="quick", settings={})
    by_name = {
        r["scenario"]: r for r in json.loads(stem.with_suffix(".json").read_text())["scenarios"]
    }
    assert by_name["chain"]["write_gaps_s"] == [0.2, 9.0, 0.3]  # kept from the earlier report
