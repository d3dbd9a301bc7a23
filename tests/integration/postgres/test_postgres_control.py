"""The PostgreSQL control layer against real postmasters.

One three-node story, in order (the tests of this module share `three_nodes` and build on
each other): bootstrap n1, clone n2 and n3, probe, promote n2, re-point n3 to it without a
restart, rewind the diverged n1 onto n2. Then process control on the resulting cluster:
stop modes, a killed postmaster, adoption, and bad inputs.
Durations are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from agent.model import LocalState
from agent.postgres import (
    PostgresError,
    Postmaster,
    Prober,
    StandbyConfig,
    StopMode,
    clone,
    create_roles,
    ensure_slots,
    initdb,
    read_controldata,
    rewind,
)
from agent.postgres.bootstrap import clear_data_dir, drop_slots, last_timeline_switch
from tests.support.pgversions import PgInstall
from tests.support.postgres import (
    REPLICATION_PASSWORD,
    SUPERUSER_PASSWORD,
    PgNode,
    eventually,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

START_TIMEOUT_S = 20.0
SQL_TIMEOUT_S = 5.0


def _report(what: str, seconds: float) -> None:
    print(f"\n[pg-timing] {what}: {seconds * 1000:.1f} ms")


async def _count(node: PgNode, value: str) -> int:
    rows = await node.postmaster.fetch(
        "SELECT count(*) FROM t WHERE v = $1", value, timeout_s=SQL_TIMEOUT_S
    )
    count = rows[0][0]
    assert isinstance(count, int)
    return count


async def _insert(node: PgNode, value: str) -> None:
    await node.postmaster.execute("INSERT INTO t (v) VALUES ($1)", value, timeout_s=SQL_TIMEOUT_S)


async def _visible_on(nodes: list[PgNode], value: str, *, timeout_s: float = 10.0) -> float:
    async def everywhere() -> bool:
        return all([await _count(node, value) == 1 for node in nodes])

    return await eventually(everywhere, timeout_s=timeout_s)


async def _receiver(node: PgNode) -> tuple[object, ...] | None:
    rows = await node.postmaster.fetch(
        "SELECT status, sender_port FROM pg_stat_wal_receiver", timeout_s=SQL_TIMEOUT_S
    )
    return rows[0] if rows else None


async def _probe(node: PgNode, *, timeout_s: float = 5.0) -> LocalState:
    prober = Prober(node.settings, run_dir=node.run_dir, member_name=node.name)
    try:
        pid = node.postmaster.pid()
        return await prober.probe(running=pid is not None, postmaster_pid=pid, timeout_s=timeout_s)
    finally:
        await prober.close()


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


async def _n3_runs(n2: PgNode, n3: PgNode) -> None:
    """The tests from the stop modes on start from n3 streaming from n2, as each leaves it. One
    that failed half-way (a stop that left n3 down) is not taken as the next one's failure:
    a fresh-clone CI run saw one failed restart fail the four tests after it."""
    if n3.postmaster.pid() is None:
        await n3.postmaster.start(standby=n3.standby_of(n2), timeout_s=START_TIMEOUT_S)


def _exists(path: str) -> bool:
    return os.path.exists(path)


# --------------------------------------------------------------------------- the story


async def test_a_bootstrapped_primary_accepts_writes_and_knows_the_replication_role(
    three_nodes: list[PgNode],
) -> None:
    n1, n2, n3 = three_nodes
    began = time.monotonic()
    await initdb(n1.settings, run_dir=n1.run_dir)
    _report("initdb", time.monotonic() - began)
    assert oct(os.stat(n1.settings.data_dir).st_mode & 0o777) == "0o700"

    began = time.monotonic()
    await n1.postmaster.start(standby=None, timeout_s=START_TIMEOUT_S)
    _report("start (primary)", time.monotonic() - began)

    await create_roles(n1.postmaster, n1.settings)
    await create_roles(n1.postmaster, n1.settings)  # idempotent
    await ensure_slots(n1.postmaster, [n2.slot, n3.slot])
    await n1.postmaster.execute("CREATE TABLE t (v text)", timeout_s=SQL_TIMEOUT_S)
    await _insert(n1, "first")
    assert await _count(n1, "first") == 1
    rows = await n1.postmaster.fetch(
        "SELECT rolreplication, rolcanlogin FROM pg_roles WHERE rolname = 'replicator'",
        timeout_s=SQL_TIMEOUT_S,
    )
    assert rows == [(True, True)]
    rows = await n1.postmaster.fetch(
        "SELECT slot_name FROM pg_replication_slots ORDER BY 1", timeout_s=SQL_TIMEOUT_S
    )
    assert rows == sorted([(n2.slot,), (n3.slot,)])


async def test_two_clones_stream_from_the_primary_through_their_own_slots(
    three_nodes: list[PgNode],
) -> None:
    n1, n2, n3 = three_nodes
    for replica in (n2, n3):
        began = time.monotonic()
        await clone(replica.settings, replica.standby_of(n1), run_dir=replica.run_dir, timeout_s=60)
        _report(f"clone ({replica.name})", time.monotonic() - began)
        began = time.monotonic()
        await replica.postmaster.start(standby=replica.standby_of(n1), timeout_s=START_TIMEOUT_S)
        _report(f"start (standby {replica.name})", time.monotonic() - began)

    await _insert(n1, "streamed")
    _report("commit visible on both replicas", await _visible_on([n2, n3], "streamed"))

    async def both_streaming() -> bool:
        rows = await n1.postmaster.fetch(
            "SELECT application_name, state FROM pg_stat_replication ORDER BY 1",
            timeout_s=SQL_TIMEOUT_S,
        )
        return rows == [("n2", "streaming"), ("n3", "streaming")]

    await eventually(both_streaming, timeout_s=10)
    rows = await n1.postmaster.fetch(
        "SELECT slot_name, active FROM pg_replication_slots ORDER BY 1", timeout_s=SQL_TIMEOUT_S
    )
    assert rows == sorted([(n2.slot, True), (n3.slot, True)])


async def test_probe_describes_the_primary_and_a_replica_in_one_snapshot_each(
    three_nodes: list[PgNode], pg_install: PgInstall
) -> None:
    n1, n2, _ = three_nodes
    primary = await _probe(n1)
    assert primary.is_primary
    assert primary.pg_major == pg_install.major  # what the member record publishes
    assert primary.postmaster_pid == n1.postmaster.pid()
    assert primary.timeline == 1
    assert primary.wal_lsn is not None
    assert {row.application_name for row in primary.replication} == {"n2", "n3"}
    assert all(row.state == "streaming" and row.flush_lsn for row in primary.replication)

    await _insert(n1, "probe")
    await _visible_on([n2], "probe")
    primary_after = await _probe(n1)
    assert primary_after.wal_lsn is not None
    assert primary_after.wal_lsn > primary.wal_lsn

    replica = await _probe(n2)
    assert replica.is_replica
    assert replica.streaming
    assert replica.upstream == f"127.0.0.1:{n1.port}"
    assert replica.timeline == 1
    assert replica.system_id == primary.system_id
    assert replica.receive_lsn is not None
    assert replica.replay_lsn is not None
    assert replica.wal_lsn == max(replica.receive_lsn, replica.replay_lsn)
    assert replica.replay_lsn >= primary.wal_lsn
    assert replica.replication == ()

    # A persistent prober: repeated probes on one connection keep working.
    prober = Prober(n1.settings, run_dir=n1.run_dir, member_name=n1.name)
    try:
        began = time.monotonic()
        for _ in range(20):
            state = await prober.probe(
                running=True, postmaster_pid=n1.postmaster.pid(), timeout_s=5.0
            )
            assert state.is_primary
        _report("probe (mean of 20, kept connection)", (time.monotonic() - began) / 20)
    finally:
        await prober.close()


async def test_promoting_a_replica_gives_a_writable_primary_on_the_next_timeline(
    three_nodes: list[PgNode],
) -> None:
    n1, n2, _ = three_nodes
    # Many pages dirty in n2's buffers make the checkpoint a promotion requests a slow, spread
    # one: n2's control file keeps naming timeline 1 for a while (see the rewind test).
    await n1.postmaster.execute(
        "CREATE TABLE bulk AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 5000) g",
        timeout_s=SQL_TIMEOUT_S,
    )
    await _insert(n1, "before-promote")
    await _visible_on([n2], "before-promote")
    # Freeze the old primary (a split brain: it keeps running, unaware) so that it writes no
    # WAL that n3 could receive beyond n2's fork point before n3 is re-pointed.
    os.killpg(n1.postmaster.pid() or 0, signal.SIGSTOP)
    before = await _probe(n2)
    began = time.monotonic()
    await n2.postmaster.promote(timeout_s=10)
    _report("promote", time.monotonic() - began)
    state = await _probe(n2)
    assert state.is_primary
    assert state.timeline == 2
    # The exact end of timeline 1, from the new timeline's history file: at or past what the
    # replica had replayed before the promotion, and before anything written since.
    switch = await last_timeline_switch(n2.postmaster)
    assert switch is not None and switch[0] == 1
    assert before.replay_lsn is not None and state.wal_lsn is not None
    assert before.replay_lsn <= switch[1] <= state.wal_lsn
    await _insert(n2, "after-promote")
    assert await _count(n2, "after-promote") == 1
    await n2.postmaster.promote(timeout_s=10)  # a primary is left as it is


async def test_follow_repoints_a_running_replica_to_the_new_primary_without_a_restart(
    three_nodes: list[PgNode],
) -> None:
    n1, n2, n3 = three_nodes
    await ensure_slots(n2.postmaster, [n1.slot, n3.slot])
    pid_before = n3.postmaster.pid()
    began = time.monotonic()
    await n3.postmaster.follow(n3.standby_of(n2))

    async def streams_from_n2() -> bool:
        return await _receiver(n3) == ("streaming", n2.port)

    await eventually(streams_from_n2, timeout_s=15)
    _report("follow (until streaming from the new primary)", time.monotonic() - began)
    assert n3.postmaster.pid() == pid_before
    await _insert(n2, "after-follow")
    await _visible_on([n3], "after-follow")
    assert await _count(n3, "after-promote") == 1
    state = await _probe(n3)
    assert state.timeline == 2
    assert state.upstream == f"127.0.0.1:{n2.port}"
    os.killpg(n1.postmaster.pid() or 0, signal.SIGCONT)


async def test_a_first_probe_of_a_standby_with_no_receiver_names_the_timeline_it_followed(
    three_nodes: list[PgNode],
) -> None:
    """What a restarted agent's first probe (a new Prober) sees of a standby that followed
    the timeline switch while no WAL receiver runs (its upstream died): the WAL it holds was
    received on timeline 2, whatever its control file says until a restartpoint. Reported as
    on timeline 1, with WAL past the switch, it looked diverged and was rewound onto the
    leader that had just died (docs/chaos.md finding 28)."""
    _, n2, n3 = three_nodes
    await n3.postmaster.follow(dataclasses.replace(n3.standby_of(n2), primary_host=""))

    async def no_receiver() -> bool:
        return await _receiver(n3) is None

    await eventually(no_receiver, timeout_s=15)
    control = await n3.postmaster.fetch(
        "SELECT greatest((SELECT timeline_id FROM pg_control_checkpoint()),"
        " (SELECT min_recovery_end_timeline FROM pg_control_recovery()))",
        timeout_s=SQL_TIMEOUT_S,
    )
    state = await _probe(n3)
    await n3.postmaster.follow(n3.standby_of(n2))
    assert control == [(1,)]  # the case: the control file names timeline 1 still
    assert state.timeline == 2
    assert state.receive_lsn is not None and state.receive_lsn > 0

    async def streams_from_n2() -> bool:
        return await _receiver(n3) == ("streaming", n2.port)

    await eventually(streams_from_n2, timeout_s=15)


async def test_rewind_turns_the_diverged_old_primary_into_a_replica_of_the_new_one(
    three_nodes: list[PgNode],
) -> None:
    n1, n2, _ = three_nodes
    await _insert(n1, "divergent")  # the old primary still accepts writes: timelines diverge
    await n1.postmaster.stop(StopMode.FAST, timeout_s=10)
    assert n1.postmaster.pid() is None
    # The case pg_rewind alone gets wrong ("no rewind required"): the new primary's control
    # file still names the old timeline, its post-promotion checkpoint being unfinished.
    rows = await n2.postmaster.fetch(
        "SELECT timeline_id FROM pg_control_checkpoint()", timeout_s=SQL_TIMEOUT_S
    )
    assert rows == [(1,)]

    began = time.monotonic()
    await rewind(n1.settings, n1.standby_of(n2), run_dir=n1.run_dir, timeout_s=60)
    _report("rewind", time.monotonic() - began)
    auto_conf = _read(os.path.join(n1.settings.data_dir, "postgresql.auto.conf"))
    assert f"port={n2.port}" in auto_conf.replace(" ", "")  # n1 now streams from n2
    assert "application_name=n1" in auto_conf

    began = time.monotonic()
    await n1.postmaster.start(standby=n1.standby_of(n2), timeout_s=START_TIMEOUT_S)
    _report("start (rewound standby)", time.monotonic() - began)
    assert await _count(n1, "divergent") == 0
    await _insert(n2, "after-rewind")
    await _visible_on([n1], "after-rewind")
    state = await _probe(n1)
    assert state.is_replica
    assert state.timeline == 2


async def test_a_crashed_former_primary_is_rewound_too(three_nodes: list[PgNode]) -> None:
    """pg_rewind finishes crash recovery of a target that was not shut down cleanly."""
    n1, n2, _ = three_nodes
    # n1 is a replica of n2 now; make n1 a diverged, crashed primary of its own.
    began = time.monotonic()
    await n1.postmaster.promote(timeout_s=10)
    _report("promote (upstream alive)", time.monotonic() - began)
    await _insert(n1, "crashed-divergent")
    await n1.postmaster.stop(StopMode.IMMEDIATE, timeout_s=10)
    control = await read_controldata(n1.settings)
    assert control is not None
    assert control.cluster_state == "in production"

    await rewind(n1.settings, n1.standby_of(n2), run_dir=n1.run_dir, timeout_s=60)
    await n1.postmaster.start(standby=n1.standby_of(n2), timeout_s=START_TIMEOUT_S)
    assert await _count(n1, "crashed-divergent") == 0
    await _insert(n2, "after-crash-rewind")
    await _visible_on([n1], "after-crash-rewind")


async def test_a_failed_rewind_is_repaired_by_clearing_and_cloning_again(
    three_nodes: list[PgNode],
) -> None:
    _, n2, n3 = three_nodes
    await n3.postmaster.stop(StopMode.FAST, timeout_s=10)
    clear_data_dir(n3.settings)
    began = time.monotonic()
    await clone(n3.settings, n3.standby_of(n2), run_dir=n3.run_dir, timeout_s=60)
    _report("re-clone", time.monotonic() - began)
    await n3.postmaster.start(standby=n3.standby_of(n2), timeout_s=START_TIMEOUT_S)
    await _insert(n2, "after-reclone")
    await _visible_on([n3], "after-reclone")


async def test_network_logins_need_the_right_password_and_the_right_database(
    three_nodes: list[PgNode],
) -> None:
    _, n2, _ = three_nodes
    dsn = {"host": "127.0.0.1", "port": n2.port, "database": "postgres", "timeout": 5}
    conn = await asyncpg.connect(user="postgres", password=SUPERUSER_PASSWORD, **dsn)
    assert await conn.fetchval("SELECT current_user") == "postgres"
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(user="postgres", password="wrong", **dsn)
    # The replication role may only open replication connections.
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(user="replicator", password=REPLICATION_PASSWORD, **dsn)


# --------------------------------------------------------------------------- process control


@pytest.mark.parametrize("mode", [StopMode.SMART, StopMode.FAST, StopMode.IMMEDIATE])
async def test_each_stop_mode_stops_the_postmaster_and_its_processes(
    three_nodes: list[PgNode], mode: StopMode
) -> None:
    _, n2, n3 = three_nodes
    await _n3_runs(n2, n3)
    pid = n3.postmaster.pid()
    assert pid is not None
    began = time.monotonic()
    await n3.postmaster.stop(mode, timeout_s=10)
    _report(f"stop {mode}", time.monotonic() - began)
    assert n3.postmaster.pid() is None
    assert not _exists(f"/proc/{pid}")
    stopped = await _probe(n3)
    assert not stopped.running
    assert stopped.data_dir_initialized
    assert stopped.control is not None
    assert stopped.control.system_id == (await _probe(n2)).system_id
    await n3.postmaster.start(standby=n3.standby_of(n2), timeout_s=START_TIMEOUT_S)
    assert n3.postmaster.pid() not in (None, pid)


async def test_a_smart_stop_blocked_by_a_session_escalates_to_immediate(
    three_nodes: list[PgNode],
) -> None:
    _, n2, n3 = three_nodes
    await _n3_runs(n2, n3)
    prober = Prober(n3.settings, run_dir=n3.run_dir, member_name=n3.name)
    state = await prober.probe(running=True, postmaster_pid=n3.postmaster.pid(), timeout_s=5)
    assert state.is_replica  # the prober now holds a session: smart would wait forever
    began = time.monotonic()
    await n3.postmaster.stop(StopMode.SMART, timeout_s=1.0)
    elapsed = time.monotonic() - began
    assert n3.postmaster.pid() is None
    assert 0.7 < elapsed < 3.0
    stopped = await prober.probe(running=False, postmaster_pid=None, timeout_s=5)
    assert not stopped.running
    await prober.close()
    await n3.postmaster.start(standby=n3.standby_of(n2), timeout_s=START_TIMEOUT_S)


async def test_a_frozen_postmaster_is_killed_with_its_whole_process_group(
    three_nodes: list[PgNode],
) -> None:
    _, n2, n3 = three_nodes
    await _n3_runs(n2, n3)
    pid = n3.postmaster.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # deaf to every shutdown signal but SIGKILL
    began = time.monotonic()
    frozen = await _probe(n3, timeout_s=0.5)  # accepts no connection: down, within the bound
    assert time.monotonic() - began < 1.0
    assert not frozen.running
    assert frozen.postmaster_pid == pid
    assert frozen.control is not None
    await n3.postmaster.stop(StopMode.FAST, timeout_s=0.5)
    assert n3.postmaster.pid() is None
    await eventually(_no_postgres_in_group(pid), timeout_s=5)
    await n3.postmaster.start(standby=n3.standby_of(n2), timeout_s=START_TIMEOUT_S)


async def test_a_standby_started_without_upstream_waits_until_follow_names_one(
    three_nodes: list[PgNode],
) -> None:
    _, n2, n3 = three_nodes
    await _n3_runs(n2, n3)
    await n3.postmaster.stop(StopMode.FAST, timeout_s=10)
    nowhere = StandbyConfig(primary_host="", primary_port=0, slot_name=None, application_name="n3")
    await n3.postmaster.start(standby=nowhere, timeout_s=START_TIMEOUT_S)
    state = await _probe(n3)
    assert state.is_replica
    assert not state.streaming
    assert await _receiver(n3) is None
    await n3.postmaster.follow(n3.standby_of(n2))
    await _insert(n2, "after-late-follow")
    await _visible_on([n3], "after-late-follow")


async def test_a_killed_postmaster_ends_wait_for_exit_and_clears_pid(
    three_nodes: list[PgNode],
) -> None:
    _, n2, n3 = three_nodes
    await _n3_runs(n2, n3)
    pid = n3.postmaster.pid()
    assert pid is not None
    prober = Prober(n3.settings, run_dir=n3.run_dir, member_name=n3.name)
    assert (await prober.probe(running=True, postmaster_pid=pid, timeout_s=5)).is_replica
    waiter = asyncio.create_task(n3.postmaster.wait_for_exit(), name="wait-for-exit")
    await asyncio.sleep(0.05)
    assert not waiter.done()
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(5):
        await waiter
    assert n3.postmaster.pid() is None
    # Restartable after the crash (crash recovery on start); leftover backends exit by themselves.
    await eventually(_no_postgres_in_group(pid), timeout_s=10)
    await n3.postmaster.start(standby=n3.standby_of(n2), timeout_s=START_TIMEOUT_S)
    await _insert(n2, "after-kill")
    await _visible_on([n3], "after-kill")
    # The prober's kept connection died with the server: it reconnects within the same probe.
    new_pid = n3.postmaster.pid()
    try:
        state = await prober.probe(running=True, postmaster_pid=new_pid, timeout_s=5)
        assert state.is_replica
        assert state.postmaster_pid == new_pid
    finally:
        await prober.close()


def _no_postgres_in_group(pgid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    return check


async def test_a_new_postmaster_object_adopts_the_running_server(
    three_nodes: list[PgNode],
) -> None:
    _, n2, n3 = three_nodes
    await _n3_runs(n2, n3)
    pid = n3.postmaster.pid()
    assert pid is not None
    adopter = Postmaster(n3.settings, member_name=n3.name, run_dir=n3.run_dir)
    assert adopter.pid() == pid
    await adopter.start(standby=n3.standby_of(n2), timeout_s=START_TIMEOUT_S)  # no second one
    assert adopter.pid() == pid
    rows = await adopter.fetch("SELECT pg_is_in_recovery()", timeout_s=SQL_TIMEOUT_S)
    assert rows == [(True,)]
    waiter = asyncio.create_task(adopter.wait_for_exit(), name="adopted-wait-for-exit")
    await n3.postmaster.stop(StopMode.FAST, timeout_s=10)
    async with asyncio.timeout(5):
        await waiter
    assert adopter.pid() is None
    await adopter.close()


async def test_slots_are_dropped_only_when_named_and_inactive(three_nodes: list[PgNode]) -> None:
    _, n2, _ = three_nodes
    await ensure_slots(n2.postmaster, ["gone_member"])
    await drop_slots(n2.postmaster, ["gone_member", "never_existed"])
    rows = await n2.postmaster.fetch(
        "SELECT slot_name FROM pg_replication_slots ORDER BY 1", timeout_s=SQL_TIMEOUT_S
    )
    names = [row[0] for row in rows]
    assert "gone_member" not in names
    assert names == sorted([three_nodes[0].slot, three_nodes[2].slot])


# --------------------------------------------------------------------------- bad inputs


async def test_starting_on_an_empty_data_dir_fails_and_names_the_problem(
    spare_node: PgNode, pg_install: PgInstall
) -> None:
    with pytest.raises(PostgresError, match="not initialized"):
        await spare_node.postmaster.start(standby=None, timeout_s=5)
    assert spare_node.postmaster.pid() is None
    state = await _probe(spare_node)
    assert state == LocalState(data_dir_initialized=False, running=False, pg_major=pg_install.major)


async def test_clone_clears_the_remains_of_an_interrupted_clone(
    spare_node: PgNode, three_nodes: list[PgNode]
) -> None:
    n2 = three_nodes[1]
    await ensure_slots(n2.postmaster, [spare_node.slot])
    with pytest.raises(PostgresError, match="pg_basebackup"):  # nothing listens on port 1
        await clone(
            spare_node.settings,
            dataclasses.replace(spare_node.standby_of(n2), primary_port=1),
            run_dir=spare_node.run_dir,
            timeout_s=30,
        )
    _append(os.path.join(spare_node.settings.data_dir, "half-copied"), "x")
    await clone(
        spare_node.settings, spare_node.standby_of(n2), run_dir=spare_node.run_dir, timeout_s=30
    )
    assert not _exists(os.path.join(spare_node.settings.data_dir, "half-copied"))
    await spare_node.postmaster.start(standby=spare_node.standby_of(n2), timeout_s=START_TIMEOUT_S)
    await _insert(n2, "to-spare")
    await _visible_on([spare_node], "to-spare")
    await drop_slots(n2.postmaster, [spare_node.slot])  # in use: kept
    assert await n2.postmaster.fetch(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
        spare_node.slot,
        timeout_s=SQL_TIMEOUT_S,
    ) == [(1,)]

    # Started as a primary, a stopped standby is promoted: it moves to a timeline of its own.
    await spare_node.postmaster.stop(StopMode.FAST, timeout_s=10)
    await spare_node.postmaster.start(standby=None, timeout_s=START_TIMEOUT_S)
    assert not _exists(os.path.join(spare_node.settings.data_dir, "standby.signal"))
    state = await _probe(spare_node)
    assert state.is_primary
    assert state.timeline == 3
    await spare_node.postmaster.stop(StopMode.IMMEDIATE, timeout_s=5)
    await drop_slots(n2.postmaster, [spare_node.slot])


async def test_initdb_and_clone_refuse_a_data_dir_that_holds_a_cluster(
    spare_node: PgNode, three_nodes: list[PgNode]
) -> None:
    n2 = three_nodes[1]
    await initdb(spare_node.settings, run_dir=spare_node.run_dir)
    with pytest.raises(PostgresError, match="not empty"):
        await initdb(spare_node.settings, run_dir=spare_node.run_dir)
    with pytest.raises(PostgresError, match="not empty"):
        await clone(
            spare_node.settings,
            spare_node.standby_of(n2),
            run_dir=spare_node.run_dir,
            timeout_s=30,
        )
    clear_data_dir(spare_node.settings)
    assert os.listdir(spare_node.settings.data_dir) == []


async def test_a_server_that_cannot_start_raises_with_the_log_tail(spare_node: PgNode) -> None:
    await initdb(spare_node.settings, run_dir=spare_node.run_dir)
    # A bad setting in postgresql.auto.conf makes the postmaster exit at once.
    auto = os.path.join(spare_node.settings.data_dir, "postgresql.auto.conf")
    _append(auto, "work_mem = 'lots'\n")
    with pytest.raises(PostgresError, match="work_mem"):
        await spare_node.postmaster.start(standby=None, timeout_s=10)
    assert spare_node.postmaster.pid() is None


async def test_roles_without_passwords_replicate_over_loopback_trust(
    passwordless_pair: list[PgNode],
) -> None:
    primary, replica = passwordless_pair
    await initdb(primary.settings, run_dir=primary.run_dir)
    await primary.postmaster.start(standby=None, timeout_s=START_TIMEOUT_S)
    await create_roles(primary.postmaster, primary.settings)
    await ensure_slots(primary.postmaster, [replica.slot])
    await primary.postmaster.execute("CREATE TABLE t (v text)", timeout_s=SQL_TIMEOUT_S)
    await clone(
        replica.settings, replica.standby_of(primary), run_dir=replica.run_dir, timeout_s=60
    )
    await replica.postmaster.start(standby=replica.standby_of(primary), timeout_s=START_TIMEOUT_S)
    await _insert(primary, "open")
    await _visible_on([replica], "open")
