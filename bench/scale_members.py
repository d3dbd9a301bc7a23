"""The simulated members of bench/scale.py, run in their own process (one or several), so
that the test API server (another process, at a higher priority) is measured on its own.

    python bench/scale_members.py --url URL --first 0 --count 50

Each member is a real `KubernetesDcs` handle (the agent's backend: watches, caches,
heartbeats, lock) driven by a small loop with the agent's lease rules at the default timings
(agent.settings.Timing: renew every cycle, fence at the last renewal's send time + ttl -
fence margin, acquire when its view shows no live leader, publish its record); no
PostgreSQL. Every API request is timed on the client (request sent to response headers) by
verb.

It prints JSON lines on stdout and takes commands on stdin, one a line:
    (printed once)  {"event": "converged", "clusters": N, "led": N}
    measure   -> {"event": "measuring"}     start counting (latencies, leadership changes)
    report    -> {"event": "report", ...}   latencies by verb, leaderships lost by live
                                            members (when, and why: fenced or refused),
                                            renewals that went through
                                            only after the fencing deadline of the one
                                            before ("late": the agent's fencer stopped
                                            PostgreSQL meanwhile), leaderships taken, 429s
                                            sent again (and of them, renewals sent again
                                            before their Retry-After was over)
    failover  -> {"event": "failover", "seconds": S}   the leader of the first cluster stops
                                            (no release, as a SIGKILL); until another
                                            member of that cluster leads
    kill N    -> {"event": "killed", "clusters": N} the leaders of the last N clusters stop
                                            (as a SIGKILL); the report then says how many
                                            of those clusters have a new leader, and when
    stop      -> exits

A member sleeps as the agent's HA loop does (agent/loop.py `_sleep_for`, agent/executor.py):
`loop_wait_s` after a cycle, or less, to wake 0.5 s before its fencing deadline to retry a
renewal; after a failed renewal it cycles again at once, or after RENEW_RETRY_PAUSE_S if the
renewal failed faster than that, or after the Retry-After of a 429.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import LockKind
from agent.dcs.base import DcsThrottled, DcsUnavailable
from agent.dcs.kubernetes import KubernetesDcs
from agent.executor import RENEW_RETRY_PAUSE_S
from agent.http.client import HttpResponse
from agent.kube.client import KubeClient
from agent.model import Member, MemberName, PgState, Role
from agent.settings import Timing

TIMING = Timing()
NAMESPACE = "default"
LABELS = {"app": "pg"}
REQUEST_TIMEOUT_S = 0.9 * TIMING.retry_timeout_s  # as KubernetesDcs.from_settings


class Stats:
    """What the members of this process saw since the last `measure`."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.started = time.monotonic()
        self.lost = 0  # a live member stopped leading (fenced or refused renewal)
        self.lost_at: list[float] = []  # seconds since `measure` of each such loss
        # Why: "fenced" (no renewal went through before the fencing deadline) or "refused"
        # (a renewal answered that the lock was taken, or changed on every attempt).
        self.lost_why: dict[str, int] = defaultdict(int)
        # A renewal that went through only after the fencing deadline of the one before: the
        # agent's fencer stopped PostgreSQL meanwhile, though the member leads on (not `lost`).
        self.late = 0
        self.taken = 0  # a member started leading
        self.both = 0  # a member started leading while another of its cluster still led
        self.killed: dict[str, float] = {}  # cluster -> when its leader was killed
        self.replaced: dict[str, float] = {}  # cluster -> seconds until a new leader

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


STATS = Stats()
GROUPS: dict[str, list[SimMember]] = {}  # the members of each cluster, by cluster


def verb(method: str, query: Sequence[tuple[str, str]]) -> str:
    """The RBAC verb of a request (a collection GET with a selector is a list)."""
    keys = {k for k, _ in query}
    if method == "GET":
        if "watch" in keys:
            return "watch"
        return "list" if "labelSelector" in keys or "fieldSelector" in keys else "get"
    return {"PUT": "update", "PATCH": "patch", "POST": "create", "DELETE": "delete"}.get(
        method, method.lower()
    )


class TimedClient(KubeClient):
    """The agent's client, timing each request to its response headers."""

    async def call_api(self, path: str, method: str, **kwargs: Any) -> HttpResponse:
        started = time.monotonic()
        response = await super().call_api(path, method, **kwargs)
        query: Sequence[tuple[str, str]] = kwargs.get("query_params") or ()
        STATS.latency[verb(method, query)].append(time.monotonic() - started)
        return response


def record(name: str) -> Member:
    return Member(
        name=MemberName(name),
        role=Role.REPLICA,
        state=PgState.STREAMING,
        api_url=f"http://127.0.0.1:8008/{name}",
        host="127.0.0.1",
        port=5432,
        timeline=1,
    )


class SimMember:
    """One simulated agent (see the module docstring)."""

    def __init__(self, cluster: str, name: str, url: str) -> None:
        self.name = name
        self.cluster = cluster

        async def client() -> KubeClient:
            return TimedClient(host=url, token=None, ssl_context=None)

        self.dcs = KubernetesDcs(
            client_factory=client,
            namespace=NAMESPACE,
            cluster=cluster,
            member_name=name,
            ttl_s=TIMING.ttl_s,
            timeout_s=REQUEST_TIMEOUT_S,
            loop_wait_s=TIMING.loop_wait_s,
            fence_margin_s=TIMING.fence_margin_s,
            lock=LockKind.LEASE,
            labels=LABELS,
        )
        self.sent: float | None = None  # send time of the last successful acquire/renew
        self.alive = True
        self.retry_in: float | None = None  # after a failed renewal: cycle again this soon
        self.trace: list[tuple[float, str]] = []  # (monotonic, what) while `tracing`
        self.tracing = False

    @property
    def leading(self) -> bool:
        return self.sent is not None and time.monotonic() < TIMING.fence_deadline(self.sent)

    def _set(self, sent: float | None, why: str = "") -> None:
        if self.sent is None and sent is not None:
            STATS.taken += 1
            # Two leaders at once, each on its own fencing clock (the one clock of this
            # process): a dead member's lease counts too until its fencing deadline.
            if any(m is not self and m.leading for m in GROUPS.get(self.cluster, ())):
                STATS.both += 1
            killed_at = STATS.killed.get(self.cluster)
            if killed_at is not None and self.cluster not in STATS.replaced:
                STATS.replaced[self.cluster] = time.monotonic() - killed_at
        if self.sent is not None and sent is None and self.alive:
            STATS.lost += 1
            STATS.lost_at.append(time.monotonic() - STATS.started)
            STATS.lost_why[why] += 1
        self.sent = sent

    async def cycle(self) -> None:
        if self.sent is not None and not self.leading:
            self._set(None, "fenced")
        try:
            view = await self.dcs.get_cluster()
        except DcsUnavailable:
            view = None
        sent = time.monotonic()
        if self.tracing:
            leader = "?" if view is None else (view.leader.name if view.leader else "-")
            self.trace.append((sent, f"view leader {leader}"))
        self.retry_in = None
        try:
            if (before := self.sent) is not None:
                renewed = await self.dcs.renew_leader()
                if renewed and time.monotonic() >= TIMING.fence_deadline(before) and self.alive:
                    STATS.late += 1
                self._set(sent if renewed else None, "refused")
        except DcsThrottled as exc:  # as agent/executor.py: after its Retry-After
            self.retry_in = exc.retry_after_s if exc.retry_after_s is not None else 0.0
        except DcsUnavailable:  # at once, or after RENEW_RETRY_PAUSE_S if it failed fast
            self.retry_in = max(0.0, RENEW_RETRY_PAUSE_S - (time.monotonic() - sent))
        with contextlib.suppress(DcsUnavailable):
            leaderless = self.sent is None and view is not None and view.leader is None
            if leaderless and await self.dcs.acquire_leader():
                self._set(sent)
        with contextlib.suppress(DcsUnavailable):
            await self.dcs.publish_member(record(self.name))

    async def run(self) -> None:
        while self.alive:
            started = time.monotonic()
            await self.cycle()
            wait = max(0.0, TIMING.loop_wait_s - (time.monotonic() - started))
            if self.retry_in is not None:  # a renewal that failed: retried sooner
                wait = min(wait, self.retry_in)
            if self.sent is not None:  # as agent/loop.py: retry a renewal before the fence
                deadline = TIMING.fence_deadline(self.sent)
                wait = min(wait, max(0.05, deadline - time.monotonic() - 0.5))
            with contextlib.suppress(DcsUnavailable):
                await self.dcs.wait_for_change(wait)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def failover(group: Sequence[SimMember], tasks: Mapping[str, asyncio.Task[None]]) -> float:
    """Stop the leader of `group` without a release; seconds until another one leads."""
    while not any(m.leading for m in group):  # noqa: ASYNC110 - polling the members
        await asyncio.sleep(0.05)
    leader = next(m for m in group if m.leading)
    leader.alive = False
    tasks[leader.name].cancel()
    died = time.monotonic()
    others = [m for m in group if m is not leader]
    for m in others:
        m.tracing = True
    while not any(m.leading for m in others) and time.monotonic() - died < 60:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    took = time.monotonic() - died
    for m in others:
        trace = [f"{t - died:.2f} {what}" for t, what in m.trace]
        print(json.dumps({"trace": m.name, "lines": trace}), file=sys.stderr, flush=True)
    return took


def kill_leaders(
    groups: Sequence[Sequence[SimMember]], tasks: Mapping[str, asyncio.Task[None]]
) -> int:
    """Stop the leader of each group (no release, as a SIGKILL); how many were stopped."""
    killed = 0
    for group in groups:
        leader = next((m for m in group if m.leading), None)
        if leader is None:
            continue
        leader.alive = False
        tasks[leader.name].cancel()
        STATS.killed[leader.cluster] = time.monotonic()
        killed += 1
    return killed


async def commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def main_async(args: argparse.Namespace) -> None:
    clusters = [f"c{c:03d}" for c in range(args.first, args.first + args.count)]
    members = [SimMember(c, f"{c}-{m}", args.url) for c in clusters for m in range(3)]
    for m in members:
        GROUPS.setdefault(m.cluster, []).append(m)
    tasks: dict[str, asyncio.Task[None]] = {}
    for i, m in enumerate(members):  # staggered: no storm of connections at once
        tasks[m.name] = asyncio.create_task(m.run(), name=m.name)
        if i % 3 == 2:
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len({m.cluster for m in members if m.leading}) == len(clusters):
            break
        await asyncio.sleep(0.5)
    emit("converged", clusters=len(clusters), led=len({m.cluster for m in members if m.leading}))
    reader = await commands()
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "measure":
                STATS.reset()
                emit("measuring")
            elif line == "report":
                emit(
                    "report",
                    latency=STATS.latency,
                    lost=STATS.lost,
                    lost_at=STATS.lost_at,
                    lost_why=STATS.lost_why,
                    late=STATS.late,
                    taken=STATS.taken,
                    both=STATS.both,
                    retried_429=sum(m.dcs._api.throttled for m in members),
                    refused_429=sum(m.dcs._api.throttle.refusals for m in members),
                    urgent_429=sum(m.dcs._api.throttle.renewals.urgent for m in members),
                    killed=len(STATS.killed),
                    replaced=sorted(STATS.replaced.values()),
                )
            elif line == "failover":
                emit("failover", seconds=await failover(members[:3], tasks))
            elif line.startswith("kill "):
                count = int(line.split()[1])
                groups = [members[i : i + 3] for i in range(0, len(members), 3)]
                emit("killed", clusters=kill_leaders(groups[1:][-count:] if count else [], tasks))
            elif line == "stop":
                break
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for m in members:
            with contextlib.suppress(Exception):
                await m.dcs.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    # Warnings only (a 100-cluster run logs each watch resumption otherwise), on stderr.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
