"""Prometheus metrics on the agent's own registry (no global registry, no hand-built text).

`Metrics.update(status)` runs after every HA cycle and only sets gauges: no allocation beyond
a few label lookups, no I/O. Counters and histograms are fed by the loop and the DCS layer
through the `count_*` and `observe_*` methods. Unknown values (an LSN of a stopped instance,
the fencing deadline of a replica) are exported as NaN, not 0, so that a graph shows a gap
rather than a false value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from agent.model import AgentStatus, PgState, Role, SyncMode, SyncRole, WalSenderState

PREFIX = "pgwarden"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic Prometheus text format (`text/plain; version=0.0.4; charset=utf-8`), which
every scraper understands."""

# An HA cycle is a DCS round trip plus a few SQL queries: milliseconds, seconds when slow.
_CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A callback is a script: from milliseconds to its timeout (a minute by default).
_CALLBACK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A DCS request on a healthy network takes about a millisecond (docs/facts.md, "etcd 3.4.23").
_DCS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The event loop's lag: under a millisecond idle (0.8 ms median on the loaded machine:
# docs/facts.md, "Idle footprint"), a few ms on a busy machine;
# seconds mean every deadline of the agent slips by as much.
_LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def _value(number: float | None) -> float:
    return math.nan if number is None else float(number)


class Metrics:
    """The agent's collectors, registered on `self.registry` (a fresh CollectorRegistry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX
        self._info = Gauge(
            f"{p}_member_info",
            "This agent's member and cluster (always 1)",
            ["cluster", "member"],
            registry=r,
        )
        self._role = Gauge(
            f"{p}_role", "1 for this member's current role, 0 for the others", ["role"], registry=r
        )
        self._lease_held = Gauge(
            f"{p}_lease_held", "1 while this member holds the leader lease", registry=r
        )
        self._lease_age = Gauge(
            f"{p}_lease_age_seconds",
            "Seconds since the last successful lease renewal was sent",
            registry=r,
        )
        self._fence_remaining = Gauge(
            f"{p}_fence_remaining_seconds",
            "Seconds left before this primary fences itself",
            registry=r,
        )
        self._timeline = Gauge(f"{p}_timeline", "PostgreSQL timeline", registry=r)
        self._wal_lsn = Gauge(
            f"{p}_wal_lsn_bytes",
            "WAL position (write LSN on a primary, received or replayed on a replica)",
            registry=r,
        )
        self._replay_lsn = Gauge(f"{p}_replay_lsn_bytes", "Replayed WAL position", registry=r)
        self._lag = Gauge(
            f"{p}_replication_lag_bytes",
            "Bytes behind the leader's published WAL position",
            registry=r,
        )
        self._members = Gauge(
            f"{p}_members", "Cluster members by PostgreSQL state", ["state"], registry=r
        )
        self._streaming = Gauge(
            f"{p}_streaming_replicas",
            "Replicas streaming from this member (pg_stat_replication)",
            registry=r,
        )
        self._dcs_up = Gauge(f"{p}_dcs_up", "1 if the last DCS read succeeded", registry=r)
        self._paused = Gauge(
            f"{p}_paused", "1 while the cluster is in maintenance mode", registry=r
        )
        self._sync_set_size = Gauge(
            f"{p}_sync_set_size",
            "Members of the DCS sync record (the set that holds every acknowledged commit)",
            registry=r,
        )
        self._sync_quorum = Gauge(
            f"{p}_sync_quorum",
            "How many members of the sync record confirm each commit (0: asynchronous)",
            registry=r,
        )
        self._sync_mode = Gauge(
            f"{p}_sync_mode",
            "synchronous_mode of the DCS config record (1 for the mode in force)",
            ["mode"],
            registry=r,
        )
        self._sync_fallback = Gauge(
            f"{p}_sync_fallback",
            "1 on a leader whose synchronous mode fell back to asynchronous commits (non-strict)",
            registry=r,
        )
        self._sync_role = Gauge(
            f"{p}_sync_role",
            "This member's synchronous role (1 for the one it has)",
            ["role"],
            registry=r,
        )
        self._failsafe_active = Gauge(
            f"{p}_failsafe_active",
            "1 while this primary stays primary on its members' confirmation alone (DCS down)",
            registry=r,
        )
        self._pending_restart = Gauge(
            f"{p}_pending_restart",
            "1 while PostgreSQL has parameter changes that only a restart applies",
            registry=r,
        )
        self._archive = {
            name: Gauge(f"{p}_archive_{name}", doc, registry=r)
            for name, doc in (
                ("failing", "1 while the latest WAL archiving attempt failed (pg_stat_archiver)"),
                ("archived_count", "WAL segments archived since the statistics were reset"),
                ("failed_count", "Failed archiving attempts since the statistics were reset"),
                ("last_archived_timestamp_seconds", "When the last WAL segment was archived"),
                ("last_failed_timestamp_seconds", "When archiving last failed"),
            )
        }
        self._slot_retained = Gauge(
            f"{p}_replication_slot_retained_bytes",
            "WAL a replication slot holds back on this primary (current position - restart_lsn)",
            ["slot"],
            registry=r,
        )
        self._slot_far_behind = Gauge(
            f"{p}_replication_slot_far_behind",
            "1 while a slot's WAL may be removed or is gone (wal_status unreserved or lost)",
            ["slot"],
            registry=r,
        )
        self._slot_names: set[str] = set()
        self._failsafe_rounds = Counter(
            f"{p}_failsafe_rounds",
            "POST /failsafe rounds of this primary, by result (confirmed: every member accepted)",
            ["result"],
            registry=r,
        )
        self._failovers = Counter(
            f"{p}_failovers", "Promotions without a switchover request", registry=r
        )
        self._switchovers = Counter(
            f"{p}_switchovers", "Switchovers this member took part in", registry=r
        )
        self._demotions = Counter(f"{p}_demotions", "Demotions of this member", registry=r)
        self._lease_losses = Counter(
            f"{p}_lease_losses", "Times this member lost the lease while leader", registry=r
        )
        self._dcs_errors = Counter(
            f"{p}_dcs_errors", "Failed DCS requests", ["operation"], registry=r
        )
        self._receiver_restarts = Counter(
            f"{p}_wal_receiver_restarts",
            "WAL receivers this standby restarted after not streaming for "
            "ha.wal_receiver_stall_s while its upstream ran",
            registry=r,
        )
        self._fencing = Counter(
            f"{p}_fencing_events", "Times this primary fenced itself", registry=r
        )
        self._cycle = Histogram(
            f"{p}_ha_cycle_duration_seconds",
            "Duration of one HA cycle",
            buckets=_CYCLE_BUCKETS,
            registry=r,
        )
        self._loop_lag = Histogram(
            f"{p}_event_loop_lag_seconds",
            "How much later than due the agent's event loop ran a periodic sleeper",
            buckets=_LOOP_LAG_BUCKETS,
            registry=r,
        )
        self._dcs_latency = Histogram(
            f"{p}_dcs_request_duration_seconds",
            "Duration of DCS requests",
            ["operation"],
            buckets=_DCS_BUCKETS,
            registry=r,
        )
        self._callbacks = Counter(
            f"{p}_callbacks",
            "Callback runs by event and result (ok, failed, timeout, superseded, error)",
            ["event", "result"],
            registry=r,
        )
        self._callback_duration = Histogram(
            f"{p}_callback_duration_seconds",
            "Duration of callback runs, from start to exit or kill",
            ["event"],
            buckets=_CALLBACK_BUCKETS,
            registry=r,
        )
        # Every role and state gets a series from the start, so that a 0 is a 0, not absent.
        self._role_children = {role: self._role.labels(role=role.value) for role in Role}
        self._state_children = {state: self._members.labels(state=state.value) for state in PgState}
        for child in (*self._role_children.values(), *self._state_children.values()):
            child.set(0)
        self._identity: tuple[str, str] | None = None
        self._current_role: Role | None = None

    def update(self, status: AgentStatus) -> None:
        """Set every gauge from the status the HA loop just published."""
        identity = (status.cluster, str(status.name))
        if identity != self._identity:
            if self._identity is not None:
                self._info.remove(*self._identity)
            self._info.labels(cluster=identity[0], member=identity[1]).set(1)
            self._identity = identity
        if status.role is not self._current_role:
            if self._current_role is not None:
                self._role_children[self._current_role].set(0)
            self._role_children[status.role].set(1)
            self._current_role = status.role
        self._lease_held.set(1 if status.lease_held else 0)
        self._lease_age.set(_value(status.lease_age_s))
        self._fence_remaining.set(_value(status.fence_remaining_s))
        self._timeline.set(_value(status.timeline))
        self._wal_lsn.set(_value(status.wal_lsn))
        self._replay_lsn.set(_value(status.replay_lsn))
        self._lag.set(_value(status.lag_bytes))
        self._dcs_up.set(1 if status.dcs_ok else 0)
        self._paused.set(1 if status.paused else 0)
        self._streaming.set(
            sum(1 for row in status.replication if row.state is WalSenderState.STREAMING)
        )
        for sync_role in SyncRole:
            self._sync_role.labels(role=sync_role.value).set(
                1 if status.sync_role is sync_role else 0
            )
        self._sync_fallback.set(1 if status.sync_fallback else 0)
        self._failsafe_active.set(1 if status.failsafe_active else 0)
        self._pending_restart.set(1 if status.pending_restart else 0)
        self._set_archive(status)
        self._update_slots(status)
        if status.cluster_view is not None:
            view = status.cluster_view
            record = view.sync
            self._sync_set_size.set(len(record.members) if record is not None else 0)
            self._sync_quorum.set(record.quorum if record is not None else 0)
            for mode in SyncMode:
                self._sync_mode.labels(mode=mode.value).set(
                    1 if view.config.synchronous_mode is mode else 0
                )
            counts = dict.fromkeys(PgState, 0)
            for member in status.cluster_view.members:
                counts[member.state] += 1
            for state, count in counts.items():
                self._state_children[state].set(count)

    def _set_archive(self, status: AgentStatus) -> None:
        """pg_stat_archiver; NaN for what is unknown (archiving off: every gauge NaN)."""
        stats = status.archiver
        values: dict[str, float | None] = dict.fromkeys(self._archive)
        if stats is not None:
            values = {
                "failing": 1.0 if stats.failing else 0.0,
                "archived_count": stats.archived_count,
                "failed_count": stats.failed_count,
                "last_archived_timestamp_seconds": stats.last_archived_at,
                "last_failed_timestamp_seconds": stats.last_failed_at,
            }
        for name, gauge in self._archive.items():
            gauge.set(_value(values[name]))

    def _update_slots(self, status: AgentStatus) -> None:
        """One series per slot the server has now; a dropped slot's series go."""
        names = {slot.name for slot in status.slots}
        for gone in self._slot_names - names:
            self._slot_retained.remove(gone)
            self._slot_far_behind.remove(gone)
        self._slot_names = names
        for slot in status.slots:
            self._slot_retained.labels(slot=slot.name).set(_value(slot.retained_bytes))
            self._slot_far_behind.labels(slot=slot.name).set(1 if slot.far_behind else 0)

    def observe_cycle(self, seconds: float) -> None:
        self._cycle.observe(seconds)

    def observe_event_loop_lag(self, seconds: float) -> None:
        """One overshoot of the periodic sleeper (agent/looplag.py)."""
        self._loop_lag.observe(seconds)

    def observe_dcs(self, operation: str, seconds: float, ok: bool) -> None:
        """One DCS request (`operation` is a method name such as `get_cluster`)."""
        self._dcs_latency.labels(operation=operation).observe(seconds)
        if not ok:
            self._dcs_errors.labels(operation=operation).inc()

    def count_dcs_error(self, operation: str) -> None:
        """A failed DCS request whose duration was not measured (or not worth a sample)."""
        self._dcs_errors.labels(operation=operation).inc()

    def count_failover(self) -> None:
        self._failovers.inc()

    def count_switchover(self) -> None:
        self._switchovers.inc()

    def count_demotion(self) -> None:
        self._demotions.inc()

    def count_lease_loss(self) -> None:
        self._lease_losses.inc()

    def count_failsafe_round(self, confirmed: bool) -> None:
        self._failsafe_rounds.labels(result="confirmed" if confirmed else "refused").inc()

    def count_wal_receiver_restart(self) -> None:
        self._receiver_restarts.inc()

    def count_fencing(self) -> None:
        self._fencing.inc()

    def observe_callback(self, event: str, result: str, seconds: float) -> None:
        """One callback run (agent/callbacks.py) ended with `result` after `seconds`."""
        self._callbacks.labels(event=event, result=result).inc()
        self._callback_duration.labels(event=event).observe(seconds)

    def read_dcs_throttling(self, read: Callable[[], tuple[int, int]]) -> None:
        """Export the DCS's own running totals, read at each scrape: requests it refused to
        shed load, and leader-lock renewals sent again before their Retry-After was over so
        as to go through before the fencing deadline (the Kubernetes backend: throttle.py)."""
        self.registry.register(_ThrottlingCounters(read))

    def render(self) -> tuple[bytes, str]:
        """The exposition in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE


class _ThrottlingCounters:
    """The DCS's throttling totals as two counters, read when scraped."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        refused, early = self._read()
        yield CounterMetricFamily(
            f"{PREFIX}_dcs_throttled",
            "DCS requests refused to shed load (Kubernetes: 429 Too Many Requests)",
            value=refused,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_dcs_renewals_sent_early",
            "Refused leader-lock renewals sent again before their Retry-After was over, to go "
            "through before the fencing deadline (Kubernetes)",
            value=early,
        )
