"""replica-receiver-stuck: a peer between one replica and the primary that accepts and
acknowledges but never answers (a wedged userspace proxy, pooler or middlebox), put in the
path while the replica's WAL receiver reconnects (chaos finding 17).

    python -m tests.chaos.stuck_peer PORT

runs the stuck peer: it accepts every TCP connection on PORT and never answers (what the
client sends is acknowledged by the kernel and never read, nothing is ever written back),
and keeps each connection open until it is killed. The nemesis runs it in the replica's
namespace and sends it, with an iptables `nat OUTPUT` REDIRECT rule inserted first in the
chain, every *new* connection the replica opens to the primary's PostgreSQL port (the
connections already open keep their translation); then it ends the replica's stream (its
walsender terminated on the primary), so that the startup process starts a new WAL receiver,
which connects to the stuck peer and waits there. After `FAULT_S` the rule is deleted (the
fault leaves the path: new connections go straight to the primary) while the stuck peer
keeps the connection it holds, as a wedged middlebox keeps its state. PostgreSQL never gives
up on that connection by itself (no `connect_timeout` in the WAL receiver's connection loop,
no `wal_receiver_timeout` before streaming; the kernel's keepalives and `tcp_user_timeout`
see a peer that acknowledges): only the agent's WAL-receiver watchdog
(`ha.wal_receiver_stall_s`) brings the replica back. The nemesis measures when the replica
streams again; the heal kills the stuck peer and deletes the rule (idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import asyncpg

from tests.chaos.cluster import PG_PORT, ChaosCluster, Member, Proc
from tests.chaos.nemesis import Injected, Nemesis, heal_all

STUCK_PORT = 15998  # the stuck peer in the replica's namespace (the delaying proxy is 15999)
FAULT_S = 2.0  # how long new connections go to the stuck peer after the stream ended
# The quick profile's ha.wal_receiver_stall_s (tests/chaos/conftest.py `runner`): short, as
# its timings are. CHAOS_RECEIVER_WATCHDOG=off runs that cluster with the watchdog off
# (wal_receiver_stall_s 0): the scenario's assertion must then fail.
STALL_S = 0.0 if os.environ.get("CHAOS_RECEIVER_WATCHDOG") == "off" else 8.0
# How long after its stream ended the replica may take to stream again: the bound, one HA
# cycle to see it (loop_wait_s 1 s + a probe), and wal_retrieve_retry_interval (ttl/20) with
# the connection itself; 3 s on top of the bound covers them.
MARGIN_S = 3.0
# How long the nemesis waits for the replica to stream again (the watchdog off: it never
# does; the heal then frees it).
WAIT_S = 8.0 + MARGIN_S + 4.0


def _redirect(action: str, primary: Member, sport: int | None = None) -> list[str]:
    """The nat rule that sends connections to the primary's PostgreSQL to the stuck peer
    (`-I OUTPUT 1`: before any rule of the delaying proxies), or deletes it (`-D`); with
    `sport`, only the connection from that local port."""
    where = ["OUTPUT", "1"] if action == "-I" else ["OUTPUT"]
    source = ["--sport", str(sport)] if sport is not None else []
    return [
        *("-t", "nat", action, *where, "-p", "tcp", "-d", primary.address),
        *("--dport", str(PG_PORT), *source),
        *("-j", "REDIRECT", "--to-ports", str(STUCK_PORT)),
    ]


def _held(member: Member) -> list[int]:
    """The local ports of the connections the stuck peer in `member`'s namespace holds."""
    done = subprocess.run(
        member.host.exec_args("ss", "-Htn", "state", "established", f"sport = :{STUCK_PORT}"),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    # Each line: Recv-Q Send-Q Local:Port Peer:Port (the peer is the WAL receiver's socket).
    return [int(line.split()[3].rsplit(":", 1)[1]) for line in done.stdout.strip().splitlines()]


async def _streaming(cluster: ChaosCluster, index: int) -> bool:
    try:
        conn = await cluster.connect(index, timeout=1.0)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    try:
        async with asyncio.timeout(2.0):
            status = await conn.fetchval("SELECT status FROM pg_stat_wal_receiver")
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    return bool(status == "streaming")


async def _end_stream(cluster: ChaosCluster, primary: int, replica: Member) -> int:
    """Terminate the walsender of `replica` on the primary; how many were terminated."""
    conn = await cluster.connect(primary)
    try:
        async with asyncio.timeout(5.0):
            ended = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                "FROM pg_stat_replication WHERE application_name = $1",
                replica.name,
            )
    finally:
        await conn.close()
    return int(ended or 0)


@dataclass(slots=True)
class StuckPeer:
    """The nemesis' state: the stuck peer it runs, and per run the victim, how many
    connections the stuck peer held, and the seconds from the end of the replica's stream to
    its streaming again (None: not within WAIT_S)."""

    streams_again_s: list[float | None] = field(default_factory=list)
    victims: list[str] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    _peer: tuple[Proc, Member, Member] | None = None
    _ports: list[int] = field(default_factory=list)

    async def _start_peer(self, cluster: ChaosCluster, replica: Member, leader: Member) -> None:
        peer = Proc(
            host=replica.host,
            argv=[sys.executable, "-m", "tests.chaos.stuck_peer", str(STUCK_PORT)],
            log=replica.base / "stuck-peer.log",
        )
        self._peer = (peer, replica, leader)
        peer.start()
        deadline = time.monotonic() + 10.0
        while not cluster._listening(replica, STUCK_PORT):
            if time.monotonic() > deadline or not peer.running:
                raise RuntimeError(f"the stuck peer of {replica.name} did not start")
            await asyncio.sleep(0.05)

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        index = (primary + 1) % len(cluster.members)
        replica, leader = cluster.members[index], cluster.members[primary]
        self.victims.append(replica.name)
        await self._start_peer(cluster, replica, leader)
        replica.host.iptables(*_redirect("-I", leader))
        at = time.monotonic()
        ended = await _end_stream(cluster, primary, replica)
        while not _held(replica) and time.monotonic() - at < FAULT_S + 5.0:
            await asyncio.sleep(0.1)
        held = _held(replica)
        self.held.append(len(held))
        await asyncio.sleep(max(0.0, at + FAULT_S - time.monotonic()))
        # Out of the path for new connections; the held one stays redirected, every packet of
        # it (deleting the rule outright sent its keepalive probes, which conntrack marks
        # INVALID and does not translate, to the primary itself, whose reset ended it after
        # keepalives_idle: a rescue no wedged middlebox gives).
        for port in held:
            replica.host.iptables(*_redirect("-I", leader, port))
        self._ports = held
        replica.host.iptables(*_redirect("-D", leader))
        removed = time.monotonic()
        took: float | None = None
        while time.monotonic() - at < WAIT_S:
            if await _streaming(cluster, index):
                took = time.monotonic() - at
                break
            await asyncio.sleep(0.2)
        self.streams_again_s.append(took)
        again = (
            f"streaming again {took:.1f} s" if took is not None else f"not streaming {WAIT_S:.0f} s"
        )
        return Injected(
            description=f"{replica.name}'s stream from {leader.name} ended ({ended} walsender "
            f"terminated), its new WAL receiver connected to a peer that never answers "
            f"({len(held)} connection held), the peer out of the path {removed - at:.1f} s "
            f"later; {again} after the stream ended",
            instants=(at,),
        )

    def heal(self, cluster: ChaosCluster) -> None:
        if self._peer is not None:
            peer, replica, leader = self._peer
            for port in (None, *self._ports):
                with contextlib.suppress(RuntimeError):  # deleted already by the script
                    replica.host.iptables(*_redirect("-D", leader, port))
            self._ports = []
            peer.kill()
            self._peer = None
        heal_all(cluster)


def receiver_stuck() -> tuple[Nemesis, StuckPeer]:
    """The nemesis (no failover, nothing lost) and its state (the measured recovery)."""
    state = StuckPeer()
    nemesis = Nemesis(
        name="replica-receiver-stuck",
        script=state.script,
        heal=state.heal,
        hold_s=1.0,
        must_not_lose=True,
        same_primary=True,
        quick=False,  # run by its own quick test, which asserts the recovery time too
    )
    return nemesis, state


def main(port: int) -> None:
    """Accept and never answer: every accepted socket is kept (a strong reference: a socket
    collected would be closed) and never read or written."""
    held: list[socket.socket] = []
    with socket.create_server(("0.0.0.0", port), reuse_port=False) as server:
        while True:
            conn, _ = server.accept()
            held.append(conn)


if __name__ == "__main__":
    main(int(sys.argv[1]))
