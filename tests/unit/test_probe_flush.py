"""`flush_stuck`: when the probe of a primary must commit its heartbeat to tell whether the
server can still commit (issue 16, the zombie primary; chaos finding 19, slow fsync)."""

from __future__ import annotations

from agent.model import Lsn
from agent.postgres.probe import FlushSeen, flush_stuck


def seen(flush: int, insert: int, pid: int = 100) -> FlushSeen:
    return FlushSeen(postmaster_pid=pid, flush=Lsn(flush), insert=Lsn(insert))


def test_nothing_waiting_to_be_flushed_proves_enough() -> None:
    assert not flush_stuck(seen(10, 20), seen(50, 50))


def test_a_flush_that_did_not_move_while_wal_waits_is_settled_by_the_heartbeat() -> None:
    assert flush_stuck(seen(10, 20), seen(10, 30))


def test_a_flush_that_caught_up_with_what_was_waiting_proves_enough() -> None:
    assert not flush_stuck(seen(10, 20), seen(20, 40))
    assert not flush_stuck(seen(10, 20), seen(35, 40))


def test_a_flush_that_moves_but_lags_behind_what_was_waiting_is_settled_by_the_heartbeat() -> None:
    # Slow storage (fsyncs of a second each): the position moves at every probe, yet what
    # was written before the previous probe is still not durable.
    assert flush_stuck(seen(10, 20), seen(15, 40))


def test_the_first_probe_of_a_postmaster_cannot_tell() -> None:
    assert not flush_stuck(None, seen(10, 30))
    assert not flush_stuck(seen(10, 20, pid=99), seen(10, 30, pid=100))
