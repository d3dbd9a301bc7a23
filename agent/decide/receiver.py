"""The WAL-receiver watchdog: a standby that does not stream from a running upstream for
`ha.wal_receiver_stall_s` has its WAL receiver restarted (chaos finding 17).

Why the agent must do it: PostgreSQL's WAL receiver polls its connection start-up with no
timeout of its own (libpq ignores `connect_timeout` under `PQconnectPoll`, and the
walreceiver's wait loop has none), and `wal_receiver_timeout` only covers an established
stream. A peer whose kernel acknowledges but whose process never answers (a wedged
userspace proxy, pooler or middlebox) keeps it waiting for good; `tcp_user_timeout` and the
keepalives in `primary_conninfo` cover a silent peer only.

The signal, and why it is honest: `pg_stat_wal_receiver` has no row, or one not in
`streaming` state, *and* none of the standby's WAL positions (received, replayed, the end of
what it holds in pg_wal) has moved. A standby catching up streams, or replays (its replay
position moves); one replaying a backlog from pg_wal or the archive has no receiver but
moves. Only while the upstream's record says it runs: a leader whose PostgreSQL is down is
the failover path's business (its record says so within a cycle; a dead node's lease expires
and the branch is no longer `when_follower`). The stretch is tied to the postmaster: a
restarted server starts a new one.

Each restart without streaming in between doubles the next wait (at most 8 times the bound),
so that a link on which a connection's start-up takes longer than the bound still gets
through, and an upstream that keeps refusing (a missing slot, pg_hba) costs a log line per
wait, not per cycle. Nothing is restarted while the cluster is paused (maintenance mode).
Pure: values in, values out.
"""

from __future__ import annotations

from dataclasses import replace

from agent.actions import RestartWalReceiver
from agent.decide.state import Memory, Observation, ReceiverStall
from agent.model import MemberName
from agent.settings import Settings

MAX_BACKOFF = 8  # the longest wait, in multiples of wal_receiver_stall_s


def track_stall(obs: Observation, memory: Memory, settings: Settings, upstream_up: bool) -> Memory:
    """Memory with the stall stretch of this cycle: started, kept, or ended."""
    local = obs.local
    stalled = (
        settings.ha.wal_receiver_stall_s > 0
        and upstream_up
        and local.running
        and local.in_recovery
        and not local.streaming
    )
    if not stalled:
        return replace(memory, receiver_stall=None) if memory.receiver_stall else memory
    # Each position on its own: a standby replaying a backlog from pg_wal moves its replay
    # position below a WAL end that stays where the scan found it.
    positions = (local.wal_lsn, local.receive_lsn, local.replay_lsn)
    stall = memory.receiver_stall
    moved = stall is not None and any(
        now is not None and (then is None or now > then)
        for now, then in zip(positions, stall.positions, strict=True)
    )
    if stall is None or stall.postmaster_pid != local.postmaster_pid or moved:
        fresh = ReceiverStall(
            since=obs.now, postmaster_pid=local.postmaster_pid, positions=positions
        )
        return replace(memory, receiver_stall=fresh)
    return memory


def stall_wait(stall: ReceiverStall, settings: Settings) -> float:
    """How long this stretch may last before the (next) restart of the receiver."""
    backoff: int = min(2**stall.restarts, MAX_BACKOFF)
    return settings.ha.wal_receiver_stall_s * backoff


def restart_receiver(
    obs: Observation, memory: Memory, settings: Settings, upstream: MemberName
) -> tuple[RestartWalReceiver, Memory, str] | None:
    """The restart due this cycle, if any: the action, Memory with the wait started again,
    and the reason."""
    stall = memory.receiver_stall
    if stall is None or obs.now - stall.since < stall_wait(stall, settings):
        return None
    if obs.cluster is not None and obs.cluster.config.paused:
        return None  # maintenance mode: the operator may hold replication on purpose
    stalled_s = obs.now - stall.since
    again = replace(stall, since=obs.now, restarts=stall.restarts + 1)
    reason = (
        f"not streaming from {upstream} for {stalled_s:.0f} s while it runs: "
        f"restarting the WAL receiver (restart {again.restarts} in this stretch)"
    )
    action = RestartWalReceiver(upstream=upstream, stalled_s=round(stalled_s, 1))
    return action, replace(memory, receiver_stall=again), reason
