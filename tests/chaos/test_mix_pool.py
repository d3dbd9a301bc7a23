"""The random mix's pool, deck and per-fault figures (pure: no root, no processes), and the
stepped wall clock the clock-step faults use (one short-lived Python process)."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.chaos import mix, report
from tests.chaos.cluster import QUICK_TIMING, REPO
from tests.chaos.nemesis import nemeses
from tests.chaos.runner import ScenarioResult
from tests.chaos.stepped_clock import write_offset
from tests.chaos.workload import Attempt

TTL_S = QUICK_TIMING["ttl_s"]


def test_the_pool_holds_every_nemesis_and_every_gray_fault_once() -> None:
    names = [n.name for n in mix.mix_pool(TTL_S)]
    assert len(names) == len(set(names)), names
    assert set(n.name for n in nemeses(TTL_S)) <= set(names)
    missing = [g for g in (*mix.GRAY_NAMES, *mix.HUNT_NAMES) if g not in names]
    assert not missing, f"gray faults the mix cannot draw: {missing}"


def test_the_deck_draws_each_nemesis_once_per_pass_in_a_seeded_random_order() -> None:
    pool = mix.mix_pool(TTL_S)
    deck = mix.Deck(pool=pool, rng=random.Random(6))
    first = [deck.draw().name for _ in pool]
    second = [deck.draw().name for _ in pool]
    assert sorted(first) == sorted(second) == sorted(n.name for n in pool)
    assert first != second  # reshuffled
    again = mix.Deck(pool=pool, rng=random.Random(6))
    assert [again.draw().name for _ in pool] == first


def test_the_slow_network_that_outlasts_a_request_may_fail_over_the_other_may_not() -> None:
    by_name = {n.name: n for n in mix.mix_pool(TTL_S)}
    assert by_name["slow-network-0.5s"].same_primary
    assert not by_name["slow-network-2s"].same_primary
    assert by_name["primary-clock-step-1h"].same_primary


def _fault(name: str, at: float, settled: float, *, after: str = "pg-0") -> mix.MixFault:
    return mix.MixFault(
        name=name,
        description=name,
        at=at,
        settled=settled,
        converge_s=1.0,
        primary_before="pg-0",
        primary_after=after,
        must_not_lose=name == "strict",
        same_primary=name == "strict",
    )


def _ack(value: int, ended: float) -> Attempt:
    return Attempt(
        writer="app", value=value, member="pg-0", sent=ended - 0.01, ended=ended, acked=True
    )


def test_each_lost_write_is_charged_to_the_fault_whose_window_acknowledged_it() -> None:
    faults = [_fault("loose", 10.0, 20.0, after="pg-1"), _fault("strict", 25.0, 35.0)]
    attempts = [_ack(i, 5.0 + i) for i in range(40)]
    lost = [a for a in attempts if a.ended in (12.0, 19.0, 21.0)]
    settled = mix.settle(faults, attempts, lost, end=45.0)
    assert [f.lost for f in settled] == [2, 1]
    assert all(f.gap_s > 0 for f in settled)
    found = mix.violations(settled, sync=False)
    assert len(found) == 1 and found[0].startswith("strict"), found
    # In synchronous mode any loss is a violation.
    assert len(mix.violations(settled, sync=True)) == 2
    # A failover during a nemesis that must keep the primary is one too.
    moved = mix.violations([_fault("strict", 1.0, 2.0, after="pg-2")], sync=False)
    assert moved and "failover pg-0 -> pg-2" in moved[0]


def test_the_report_tabulates_the_mix_by_nemesis(tmp_path: Path) -> None:
    faults = mix.settle(
        [_fault("loose", 10.0, 20.0, after="pg-1"), _fault("loose", 25.0, 35.0)],
        [_ack(i, 5.0 + i) for i in range(40)],
        [],
        end=45.0,
    )
    result = ScenarioResult(
        scenario="random-mix",
        faults=("loose: a", "loose: b"),
        attempts=40,
        acked=40,
        write_unavailability_s=1.0,
        split_brain=(),
        lost=0,
        lost_examples=(),
        converge_s=1.0,
        diverged=(),
        must_not_lose=False,
        primary_before="pg-0",
        primary_after="pg-0",
        started_wall=0.0,
        mix_faults=tuple(faults),
    )
    report.write([result], stem=tmp_path / "r", profile="test", settings={})
    text = (tmp_path / "r.md").read_text()
    assert "Faults of random-mix by nemesis" in text
    assert "| loose | 2 | 1.00 / 1.00 s | 1.00 / 1.00 s | 1 | 0 |" in text
    # Kept when a later run writes other rows.
    report.write([], stem=tmp_path / "r", profile="test", settings={})
    other = dataclasses.replace(result, scenario="x", mix_faults=())
    report.write([other], stem=tmp_path / "r", profile="test", settings={})
    assert "Faults of random-mix by nemesis" in (tmp_path / "r.md").read_text()


def test_a_stepped_agent_clock_moves_the_wall_clock_only(tmp_path: Path) -> None:
    offset = tmp_path / "clock.offset"
    write_offset(offset, 3600.0)
    probe = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.chaos.stepped_clock import install, write_offset\n"
        "install(Path(sys.argv[1]))\n"
        "print(time.time() - time.clock_gettime(time.CLOCK_REALTIME))\n"
        "write_offset(Path(sys.argv[1]), -3600.0); time.sleep(0.3)\n"
        "print(time.time_ns() / 1e9 - time.clock_gettime(time.CLOCK_REALTIME))\n"
        "m = time.monotonic(); time.sleep(0.1); print(time.monotonic() - m)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", probe, str(offset)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    ahead, behind, slept = (float(v) for v in done.stdout.split())
    assert abs(ahead - 3600.0) < 1.0
    assert abs(behind + 3600.0) < 1.0
    assert 0.09 < slept < time.monotonic() - started
