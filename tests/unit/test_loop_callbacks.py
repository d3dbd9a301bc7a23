"""Callbacks in the real HaLoop + Executor on the memory DCS, the fake PostgreSQL and a fake
clock (tests/unit/fakes): which callback follows which event, with which role; a
`pre_promote` veto that hands the race to the next member; a failed `post_bootstrap` that
leaves nothing half-initialized as the leader. The processes themselves are tested in
tests/integration/test_callbacks.py."""

from __future__ import annotations

import asyncio
import dataclasses

from agent.actions import (
    Bootstrap,
    Clone,
    Demote,
    HandOver,
    Promote,
    PromoteReason,
    Reconfigure,
    Rewind,
    StartPostgres,
    StopMode,
    StopPostgres,
)
from agent.callback_settings import CallbackEvent, CallbackSettings
from agent.callbacks import CallbackResult, notification
from agent.model import LocalState, MemberName, PgConfig
from tests.unit.fakes.loop_cluster import LoopCluster
from tests.unit.test_loop_restarts import schedule_restart, set_parameters

ALL = CallbackSettings(
    on_start="/cb",
    on_stop="/cb",
    on_restart="/cb",
    on_reload="/cb",
    on_role_change="/cb",
    pre_promote="/cb",
    post_bootstrap="/cb",
)


def test_each_action_is_followed_by_its_callback_with_the_role() -> None:
    def after(action: object, **kw: bool) -> tuple[str, str] | None:
        flags = {"running": True, "was_primary": False, "restart_requested": False,
                 "restarting": False} | kw  # fmt: skip
        step = notification(action, **flags)  # type: ignore[arg-type]
        return (step[0].value, step[1]) if step is not None else None

    assert after(Promote(reason=PromoteReason.FAILOVER)) == ("on_role_change", "primary")
    assert after(Demote(mode=StopMode.FAST, reason="x")) == ("on_role_change", "demoted")
    assert after(HandOver(candidate=MemberName("b"))) == ("on_role_change", "demoted")
    assert after(StopPostgres(mode=StopMode.FAST), was_primary=True) == ("on_stop", "primary")
    assert after(StopPostgres(mode=StopMode.FAST)) == ("on_stop", "replica")
    assert after(StopPostgres(mode=StopMode.FAST), restart_requested=True) is None
    assert after(StartPostgres(upstream=MemberName("a"))) == ("on_start", "replica")
    assert after(StartPostgres(upstream=None, as_primary=True)) == ("on_start", "primary")
    assert after(StartPostgres(upstream=MemberName("a")), restarting=True) == (
        "on_restart",
        "replica",
    )
    assert after(Bootstrap()) == ("on_start", "primary")
    config = PgConfig()
    assert after(Reconfigure(config=config), was_primary=True) == ("on_reload", "primary")
    assert after(Reconfigure(config=config), running=False) is None  # only files rendered
    assert after(Clone(source=MemberName("a"))) == ("on_start", "replica")
    assert after(Rewind(source=MemberName("a"))) == ("on_start", "replica")


async def test_bootstrap_clone_failover_and_rejoin_call_their_callbacks() -> None:
    c = LoopCluster(callbacks=ALL)
    assert await c.bootstrap() == "a"
    a, b, cc = c["a"], c["b"], c["c"]
    assert a.callbacks.calls == [("post_bootstrap", "primary"), ("on_start", "primary")]
    assert b.callbacks.calls == [("on_start", "replica")]  # cloned, then started
    assert cc.callbacks.calls == [("on_start", "replica")]
    a.alive = False
    a.pg.crash()
    await c.run_until(lambda: b.pg.is_primary and c.streaming_from("b") == ["c"], step_s=0.5)
    # b took the lease, ran pre_promote (it passed), then promoted.
    assert b.callbacks.calls[1:] == [("pre_promote", "replica"), ("on_role_change", "primary")]
    assert ("pre_promote", "replica") not in cc.callbacks.calls
    a.alive = True
    await c.run_until(lambda: c.streaming_from("b") == ["a", "c"])
    assert a.callbacks.calls[2:] == [("on_start", "replica")]  # rewound, started as replica


async def test_a_restart_request_calls_on_restart_not_on_stop_and_on_start() -> None:
    c = LoopCluster(callbacks=ALL)
    await c.bootstrap()
    b = c["b"]
    before = len(b.callbacks.calls)
    from agent.model import LocalRequestKind  # noqa: PLC0415 - only here

    b.loop.submit(LocalRequestKind.RESTART)
    await c.run_until(lambda: len(b.callbacks.calls) > before and c.healthy("a"))
    assert b.callbacks.calls[before:] == [("on_restart", "replica")]


async def test_a_demoted_primary_calls_on_role_change_demoted() -> None:
    c = LoopCluster(callbacks=ALL)
    await c.bootstrap()
    a = c["a"]
    a.fence.enforcing = False  # the loop itself demotes at its deadline
    c.store.partition("a")
    await c.run_until(lambda: not a.pg.is_primary, step_s=0.25)
    assert a.callbacks.events(CallbackEvent.ON_ROLE_CHANGE) == ["demoted"]


async def test_a_pre_promote_veto_hands_the_race_to_the_next_member() -> None:
    c = LoopCluster(callbacks=ALL)
    await c.bootstrap()
    a, b, cc = c["a"], c["b"], c["c"]
    # b and c are equally up to date; b wins ties by name, so b races first.
    b.callbacks.script(CallbackEvent.PRE_PROMOTE, CallbackResult.FAILED)
    a.alive = False
    a.pg.crash()
    took = await c.run_until(
        lambda: c.leader() == "c" and c.streaming_from("c") == ["b"], step_s=0.5
    )
    assert took <= 2 * a.settings.timing.ttl_s
    assert "promote" not in b.pg.calls
    assert b.callbacks.events(CallbackEvent.PRE_PROMOTE) == ["replica"]
    assert cc.callbacks.events(CallbackEvent.PRE_PROMOTE) == ["replica"]
    assert cc.callbacks.events(CallbackEvent.ON_ROLE_CHANGE) == ["primary"]
    # While its veto holds, b says so in its member record and stays out of the race.
    record = next(m for m in (await c["c"].dcs.get_cluster()).members if m.name == "b")
    assert record.promotion_vetoed
    assert b.loop.status().promotion_vetoed
    # b's lease was held only between its acquire and the release that followed the veto.
    assert c.postgres.primaries() == ["c"]


async def test_a_timed_out_pre_promote_vetoes_too_and_a_lone_candidate_retries_after_ttl() -> None:
    c = LoopCluster(("a", "b"), callbacks=ALL)
    await c.bootstrap()
    a, b = c["a"], c["b"]
    b.callbacks.script(CallbackEvent.PRE_PROMOTE, CallbackResult.TIMEOUT)
    a.alive = False
    a.pg.crash()
    took = await c.run_until(lambda: c.leader() == "b" and b.pg.is_primary, step_s=0.5)
    # Vetoed once, out of the race for ttl_s, then tried again (and passed).
    assert b.callbacks.events(CallbackEvent.PRE_PROMOTE) == ["replica", "replica"]
    assert took >= b.settings.timing.ttl_s


async def test_post_bootstrap_runs_while_no_tcp_client_can_reach_the_new_primary() -> None:
    # We hold the lease during post_bootstrap and a route may already lead writers here: a
    # write acknowledged then would be discarded with the cluster if the hook failed.
    c = LoopCluster(callbacks=ALL)
    a = c["a"]
    seen: list[tuple[bool, bool]] = []

    def look(event: CallbackEvent) -> None:
        if event is CallbackEvent.POST_BOOTSTRAP:
            seen.append((a.pg.running, a.pg.tcp))

    a.callbacks.on_run = look
    assert await c.bootstrap() == "a"
    assert seen == [(True, False)]  # running, on its Unix socket only
    assert a.pg.running and a.pg.tcp  # opened once the bootstrap completed
    assert c.healthy("a")  # and the others could clone it


async def test_a_bootstrap_interrupted_by_an_agent_restart_is_discarded_and_made_again() -> None:
    # The agent stops while post_bootstrap runs (the hook's work may be half done): its
    # server still listens on its Unix socket only, so no client wrote to it. The restarted
    # agent must not record that cluster as complete: it discards it and bootstraps again.
    c = LoopCluster(callbacks=ALL, crash_points=True)
    a = c["a"]
    assert a.switch is not None
    # The old agent dies after the hook, at its first write that records the cluster (the
    # ninth effect: claim, lease, fence, initdb, start, roles, the hook and its end, then the
    # records).
    a.switch.arm(9)
    await c.run_until(lambda: a.switch is not None and a.switch.dead)
    assert a.switch.killed_at == "dcs.write_record"
    assert a.pg.running and not a.pg.tcp and a.pg.data is not None
    first = a.pg.data.system_id
    assert c.store.get_raw("initialize") == b""  # claimed, never recorded
    old = a
    a = await c.restart_agent("a")  # nothing remembered; PostgreSQL still on its socket
    leader = await c.bootstrap()
    new = c[leader].pg.data
    assert new is not None and new.system_id != first  # made again, from scratch
    assert c.store.get_raw("initialize") == new.system_id.encode()
    assert "clear_data_dir" in a.pg.calls
    # While it was being discarded its record never said "running": nobody tried to clone
    # it (each of the two others cloned once, the new cluster).
    assert sum(n.pg.calls.count("clone") for n in c.nodes.values()) == 2
    hooks = [n.callbacks.events(CallbackEvent.POST_BOOTSTRAP) for n in (old, *c.nodes.values())]
    assert sum(len(h) for h in hooks) == 2  # the interrupted run, and the new one


async def test_a_bootstrap_whose_pod_died_during_post_bootstrap_is_discarded_and_made_again() -> (
    None
):
    # The agent and PostgreSQL die together while the hook runs: nothing runs on the socket
    # to tell, but the data directory still holds the incomplete-bootstrap marker.
    c = LoopCluster(callbacks=ALL, crash_points=True)
    a = c["a"]
    assert a.switch is not None
    a.switch.arm(8)  # inside the hook (it ran; the agent died before its end)
    await c.run_until(lambda: a.switch is not None and a.switch.dead)
    assert a.switch.killed_at == "callback.post_bootstrap.midway"
    assert a.pg.data is not None
    first = a.pg.data.system_id
    a.pg.crash()
    a = await c.restart_agent("a")
    leader = await c.bootstrap()
    new = c[leader].pg.data
    assert new is not None and new.system_id != first
    assert c.store.get_raw("initialize") == new.system_id.encode()
    assert "clear_data_dir" in a.pg.calls


async def test_a_failed_post_bootstrap_discards_the_new_cluster_and_bootstraps_again() -> None:
    c = LoopCluster(callbacks=ALL)
    a = c["a"]
    a.callbacks.script(CallbackEvent.POST_BOOTSTRAP, CallbackResult.FAILED)
    await c.run_until(lambda: a.callbacks.events(CallbackEvent.POST_BOOTSTRAP) == ["primary"])
    assert a.pg.data is None  # data directory emptied
    assert not a.pg.running
    assert "clone" not in c["b"].pg.calls + c["c"].pg.calls  # nobody cloned the discarded one
    await c.round()  # a withdraws its claim and releases the lease at once
    assert c.leader() != "a"
    leader = await c.bootstrap()
    assert leader != "a"  # a pauses before retrying; another member bootstrapped
    node = c[leader]
    assert node.callbacks.events(CallbackEvent.POST_BOOTSTRAP) == ["primary"]
    system_id = node.pg.data.system_id  # type: ignore[union-attr]
    assert c.store.get_raw("initialize") == system_id.encode()
    assert a.pg.data is not None and a.pg.data.system_id == system_id  # a cloned the new one


async def test_a_rolling_restart_calls_on_restart_and_a_settings_change_on_reload() -> None:

    c = LoopCluster(callbacks=ALL)
    await c.bootstrap()
    marks = {n: len(node.callbacks.calls) for n, node in c.nodes.items()}
    await set_parameters(c, work_mem="64MB")
    await c.round()
    for name, node in c.nodes.items():
        role = "primary" if name == "a" else "replica"
        assert node.callbacks.calls[marks[name] :] == [("on_reload", role)], name
    marks = {n: len(node.callbacks.calls) for n, node in c.nodes.items()}
    await schedule_restart(c, pending=False, in_place=True)
    await c.run_until(
        lambda: all(
            ("on_restart", "primary" if n == "a" else "replica") in node.callbacks.calls[marks[n] :]
            for n, node in c.nodes.items()
        )
    )
    for name, node in c.nodes.items():
        assert ("on_stop", "replica") not in node.callbacks.calls[marks[name] :]
        assert ("on_start", "replica") not in node.callbacks.calls[marks[name] :]


async def test_a_primary_stopped_by_its_fencer_calls_on_role_change_demoted() -> None:
    c = LoopCluster(callbacks=ALL)
    await c.bootstrap()
    a = c["a"]
    a.alive = False  # its loop never cycles again; the fencer acts on its own
    await c.run_until(lambda: a.fence.fenced_at is not None, step_s=0.25)
    await c.settle()
    assert a.callbacks.events(CallbackEvent.ON_ROLE_CHANGE) == ["demoted"]


async def test_a_switchover_candidate_that_keeps_vetoing_hands_the_race_on() -> None:
    # The completed switchover request still names b after b's veto: the others must not
    # keep deferring to it (b retried every ttl_s, each try restarting their deference).
    c = LoopCluster(callbacks=ALL)
    await c.bootstrap()
    a, b, cc = c["a"], c["b"], c["c"]
    b.callbacks.script(CallbackEvent.PRE_PROMOTE, *[CallbackResult.FAILED] * 50)
    await c.request_switchover("a", "b")
    took = await c.run_until(lambda: c.leader() == "c" and cc.pg.is_primary, step_s=0.5)
    assert took <= 2 * a.settings.timing.ttl_s
    assert "promote" not in b.pg.calls
    assert c.postgres.primaries() == ["c"]


async def test_a_recorded_bootstrap_whose_probe_fails_is_opened_not_discarded() -> None:
    # The opening restart fails after the cluster was recorded, and the next probe's SQL
    # times out (no system id, and a running server's pg_control is not read): the recorded
    # cluster must be opened, not taken for another system and emptied (a fresh-clone CI run
    # left its leader with no data and every member waiting on it).
    c = LoopCluster(callbacks=ALL)
    a = c["a"]
    a.pg.fail("open_to_clients")
    probe = a.pg.probe
    blinded: list[bool] = []

    async def flaky(*, timeout_s: float) -> LocalState:
        state = await probe(timeout_s=timeout_s)
        if state.socket_only and c.store.get_raw("initialize") and not blinded:
            blinded.append(True)
            return dataclasses.replace(state, system_id=None)
        return state

    a.pg.probe = flaky  # type: ignore[method-assign]
    leader = await c.bootstrap()
    assert blinded == [True]
    data = c[leader].pg.data
    assert leader == "a" and data is not None
    assert c.store.get_raw("initialize") == data.system_id.encode()
    assert "clear_data_dir" not in a.pg.calls  # kept, then opened


async def test_a_bootstrap_whose_record_probe_times_out_takes_the_system_id_from_pg_control() -> (
    None
):
    # The probe of the bootstrap's record step gets no answer to its SQL (a fresh server under
    # load): what the real probe reports then is a server not running, with pg_control read.
    # The system id comes from pg_control and the bootstrap is recorded; it was discarded and
    # made again, and with pgBackRest each one left the repository's stanza to a system the
    # cluster never became (tests/e2e/test_backups.py never converged).
    c = LoopCluster()
    a = c["a"]
    probe = a.pg.probe
    blinded: list[bool] = []

    async def timed_out(*, timeout_s: float) -> LocalState:
        after_roles = a.pg.calls[-1:] == ["create_roles"]
        state = await probe(timeout_s=timeout_s)
        if after_roles and not blinded:
            blinded.append(True)
            assert a.pg.data is not None
            return LocalState(
                data_dir_initialized=True,
                running=False,
                postmaster_pid=state.postmaster_pid,
                unresponsive=True,
                control=a.pg.data.control(),
                bootstrap_incomplete=True,
            )
        return state

    for name in ("b", "c"):
        c[name].alive = False  # a alone makes the cluster
    a.pg.probe = timed_out  # type: ignore[method-assign]
    await c.run_until(lambda: c.store.get_raw("initialize") not in (None, b""))
    assert blinded == [True]
    data = a.pg.data
    assert data is not None
    assert c.store.get_raw("initialize") == data.system_id.encode()
    assert a.pg.calls.count("initdb") == 1 and "clear_data_dir" not in a.pg.calls


async def test_a_bootstrap_that_ends_while_its_agent_probes_is_not_taken_for_unfinished() -> None:
    """The loop's observation reads the DCS, then probes PostgreSQL; a Bootstrap that ends
    meanwhile (a slow probe under load) leaves a view and a local state from before its end.
    Judged as nothing in flight, they showed a bootstrap that never completed, and the agent
    discarded the data directory of the cluster it had just opened (a fresh-clone CI run,
    PITR bootstrap: the server listened 0.3 s, then was stopped and emptied)."""
    c = LoopCluster(callbacks=ALL)
    a = c["a"]
    probe = a.pg.probe
    stale: list[bool] = []

    async def slow_probe(*, timeout_s: float) -> LocalState:
        state = await probe(timeout_s=timeout_s)
        pending = a.loop.executor.pending
        if pending is None or not isinstance(pending.action, Bootstrap):
            return state
        for _ in range(1000):  # the action ends while this probe is "slow"
            if a.loop.executor.pending is None:
                stale.append(True)
                break
            await asyncio.sleep(0)
        return state

    a.pg.probe = slow_probe  # type: ignore[method-assign]
    assert await c.bootstrap() == "a"
    assert stale, "no bootstrap ended during a probe: the test did not reach the case"
    assert a.pg.data is not None and a.pg.tcp
    assert a.callbacks.events(CallbackEvent.POST_BOOTSTRAP) == ["primary"], "made twice"
