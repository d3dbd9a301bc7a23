"""How often the real `HaLoop.run()` cycles, on the loop suite's fakes (memory DCS, fake
PostgreSQL, fake clock) and an event loop on that fake clock (tests/unit/fakes/virtual_time.py),
where every turn of the event loop that does not wait costs a little fake time, as CPU does.

Chaos finding 12: a replica whose postmaster lingered (dying after its disk filled) cycled
about 38 times a second: each cycle decided StartPostgres, the start returned at once
(postmaster.pid still said ready), the end of that long action woke the loop, and so on.
"""

from __future__ import annotations

import asyncio
import contextlib

from agent.executor import RENEW_RETRY_PAUSE_S
from tests.unit.fakes.loop_cluster import LoopCluster
from tests.unit.fakes.virtual_time import run_virtual

STEP_S = 0.0002  # fake time one turn of the event loop costs when it does not wait
WINDOW_S = 6.0  # less than the ttl: the leader's loop is not running meanwhile
THROTTLED_WINDOW_S = 3.0


async def _cycles_in_window(cluster: LoopCluster, name: str) -> int:
    """Run `name`'s real loop for WINDOW_S of fake time; how many cycles it made."""
    loop = cluster[name].loop
    before = loop.status().cycle
    task = asyncio.create_task(loop.run(), name=f"loop-{name}")
    await asyncio.sleep(WINDOW_S)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return loop.status().cycle - before


def test_a_streaming_replica_cycles_once_per_loop_wait() -> None:
    cluster = LoopCluster()

    async def main() -> int:
        leader = await cluster.bootstrap()
        replica = next(n for n in sorted(cluster.nodes) if n != leader)
        return await _cycles_in_window(cluster, replica)

    cycles = run_virtual(main(), cluster.clock, cluster.advance, step_s=STEP_S)
    loop_wait_s = cluster["a"].settings.timing.loop_wait_s
    assert 1 <= cycles <= WINDOW_S / loop_wait_s + 1


def test_a_replica_whose_postmaster_lingers_waits_for_it_instead_of_cycling_in_a_spin() -> None:
    cluster = LoopCluster()

    async def main() -> tuple[int, str, list[str]]:
        leader = await cluster.bootstrap()
        replica = next(n for n in sorted(cluster.nodes) if n != leader)
        pg = cluster[replica].pg
        pg.linger()
        pg.calls.clear()
        cycles = await _cycles_in_window(cluster, replica)
        return cycles, cluster[replica].loop.status().last_reason, list(pg.calls)

    cycles, reason, calls = run_virtual(main(), cluster.clock, cluster.advance, step_s=STEP_S)
    loop_wait_s = cluster["a"].settings.timing.loop_wait_s
    # One cycle per loop_wait (the spin made hundreds in the window).
    assert cycles <= WINDOW_S / loop_wait_s + 1, (cycles, reason, calls.count("start"))
    assert calls.count("start") <= 1
    assert "accepting connections" in reason


def test_a_replica_starts_postgres_at_once_when_its_lingering_postmaster_is_gone() -> None:
    cluster = LoopCluster()

    async def main() -> bool:
        leader = await cluster.bootstrap()
        replica = next(n for n in sorted(cluster.nodes) if n != leader)
        pg = cluster[replica].pg
        pg.linger()
        loop = cluster[replica].loop
        task = asyncio.create_task(loop.run(), name=f"loop-{replica}")
        await asyncio.sleep(1.0)
        pg.crash()  # the postmaster is gone: the loop wakes and starts a new one
        await asyncio.sleep(0.5)  # less than loop_wait: only the exit's wake-up can do it
        running = pg.running
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return running

    assert run_virtual(main(), cluster.clock, cluster.advance, step_s=STEP_S)


def test_a_leader_whose_fencer_fails_at_once_retries_at_the_loops_pace_not_in_a_spin() -> None:
    # A dead fencer's socket refuses at once; each renewal the fencer did not take is
    # retried (the lease stands to the deadline armed before), but not in a spin of
    # renewals against the DCS.
    cluster = LoopCluster()

    async def main() -> int:
        leader = await cluster.bootstrap()
        node = cluster[leader]
        node.fence.unavailable = True
        node.fence.enforcing = False
        return await _cycles_in_window(cluster, leader)

    cycles = run_virtual(main(), cluster.clock, cluster.advance, step_s=STEP_S)
    loop_wait_s = cluster["a"].settings.timing.loop_wait_s
    # One cycle per loop_wait, and a few more in the last half second before the deadline
    # (the loop wakes every 0.05 s there); the spin made thousands.
    assert 1 <= cycles <= WINDOW_S / loop_wait_s + 15, cycles


def test_a_leader_cut_off_from_a_dcs_that_refuses_at_once_does_not_spin() -> None:
    # The DCS refuses at once (a connection refused, an API server answering 503 at once).
    # Until its deadline the leader retries its renewal every RENEW_RETRY_PAUSE_S (it did so
    # at once: thousands of renewals per fake second); then it fences, and its passed
    # deadline is no reason to wake every 0.05 s (it did: the loop slept until 0.5 s before
    # a deadline long gone, at least 0.05 s).
    cluster = LoopCluster()

    async def main() -> tuple[int, int, bool]:
        leader = await cluster.bootstrap()
        node = cluster[leader]
        node.dcs.faults.unavailable = True
        timing = node.settings.timing
        task = asyncio.create_task(node.loop.run(), name=f"loop-{leader}")
        await asyncio.sleep(timing.ttl_s - timing.fence_margin_s - 1.0)
        retrying = node.loop.status().cycle
        await asyncio.sleep(timing.fence_margin_s + 2.0)  # past the deadline: fenced
        before = node.loop.status().cycle
        await asyncio.sleep(WINDOW_S)
        after = node.loop.status().cycle - before
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return retrying, after, node.pg.is_primary

    retrying, after, primary = run_virtual(main(), cluster.clock, cluster.advance, step_s=STEP_S)
    timing = cluster["a"].settings.timing
    assert not primary
    # Every RENEW_RETRY_PAUSE_S until the deadline, then once per loop_wait.
    assert retrying <= (timing.ttl_s - timing.fence_margin_s) / RENEW_RETRY_PAUSE_S + 2, retrying
    assert 1 <= after <= WINDOW_S / timing.loop_wait_s + 1, after


def test_a_leader_whose_renewals_are_throttled_retries_after_the_retry_after_not_at_once() -> None:
    # The DCS sheds load (an API server's 429 with a Retry-After of 1.5 s, issue 15): each
    # refused renewal is retried once that wait is over, not at once nor every
    # RENEW_RETRY_PAUSE_S (a fleet of leaders doing so keeps the server's bucket empty).
    cluster = LoopCluster()

    async def main() -> int:
        leader = await cluster.bootstrap()
        node = cluster[leader]
        node.dcs.faults.throttled_s = 1.5
        before = node.loop.status().cycle
        task = asyncio.create_task(node.loop.run(), name=f"loop-{leader}")
        await asyncio.sleep(THROTTLED_WINDOW_S)  # well before the deadline (it wakes often)
        cycles = node.loop.status().cycle - before
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return cycles

    cycles = run_virtual(main(), cluster.clock, cluster.advance, step_s=STEP_S)
    # One renewal per Retry-After, and the first cycle (it was every 0.2 s: about 16).
    assert 1 <= cycles <= THROTTLED_WINDOW_S / 1.5 + 2, cycles
