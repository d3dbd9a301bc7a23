"""Write workloads for end-to-end tests, benchmarks and chaos runs.

- `MemberWriter`: one per member, connects to that member's PostgreSQL only and inserts every
  `interval_s`; records the monotonic instant of each acknowledged insert. Comparing the
  members' acknowledged intervals shows whether two of them ever accepted writes at once.
- `AppWriter`: connects the way applications do (libpq multi-host with
  target_session_attrs=read-write) and records every attempt; the longest stretch without an
  acknowledged write is the write unavailability of a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field

import asyncpg

TABLE = "pgwarden_probe"


@dataclass(slots=True)
class Ack:
    at: float  # monotonic, when the commit was acknowledged
    member: str
    value: int


@dataclass(slots=True)
class WriterLog:
    acks: list[Ack] = field(default_factory=list)
    attempts: int = 0

    def acked_values(self) -> set[int]:
        return {a.value for a in self.acks}

    def longest_gap(self, start: float, end: float) -> float:
        """Longest time within [start, end] with no acknowledged write."""
        times = [start, *sorted(a.at for a in self.acks if start <= a.at <= end), end]
        return max(b - a for a, b in itertools.pairwise(times))

    def first_ack_after(self, t: float) -> float | None:
        later = [a.at for a in self.acks if a.at >= t]
        return min(later) if later else None


async def ensure_table(host: str, port: int, user: str = "postgres") -> None:
    conn = await asyncpg.connect(host=host, port=port, user=user, database="postgres", timeout=5)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (value bigint PRIMARY KEY, writer text, "
            "at timestamptz DEFAULT now())"
        )
    finally:
        await conn.close()


class _Writer:
    def __init__(self, *, name: str, interval_s: float, start_value: int) -> None:
        self.name = name
        self.interval_s = interval_s
        self.log = WriterLog()
        self._next = start_value
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def _connect(self) -> asyncpg.Connection:
        raise NotImplementedError

    async def _run(self) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn = await self._reuse_or_connect(conn)
                value = self._next
                self._next += 1
                self.log.attempts += 1
                await asyncio.wait_for(
                    conn.execute(
                        f"INSERT INTO {TABLE} (value, writer) VALUES ($1, $2)", value, self.name
                    ),
                    timeout=1.0,
                )
                self.log.acks.append(
                    Ack(at=time.monotonic(), member=self._member(conn), value=value)
                )
            except Exception:  # any failure means "not acknowledged"; the next try reconnects
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                conn = None
            spent = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, self.interval_s - spent))
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _reuse_or_connect(self, conn: asyncpg.Connection | None) -> asyncpg.Connection:
        if conn is not None and not conn.is_closed():
            return conn
        return await asyncio.wait_for(self._connect(), timeout=1.0)

    def _member(self, conn: asyncpg.Connection) -> str:
        return self.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"writer-{self.name}")

    async def stop(self) -> WriterLog:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.log


class MemberWriter(_Writer):
    """Writes to one member's PostgreSQL only, whatever its role."""

    def __init__(
        self, *, name: str, host: str, port: int, interval_s: float = 0.05, start_value: int
    ) -> None:
        super().__init__(name=name, interval_s=interval_s, start_value=start_value)
        self.host, self.port = host, port

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.host, port=self.port, user="postgres", database="postgres", timeout=0.5
        )


class AppWriter(_Writer):
    """Writes to whichever member accepts writes (multi-host, target_session_attrs)."""

    def __init__(
        self, *, hosts: list[tuple[str, int]], interval_s: float = 0.05, start_value: int = 1
    ) -> None:
        super().__init__(name="app", interval_s=interval_s, start_value=start_value)
        self.hosts = hosts
        self._ports = {port: f"{host}:{port}" for host, port in hosts}

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=[h for h, _ in self.hosts],
            port=[p for _, p in self.hosts],
            user="postgres",
            database="postgres",
            timeout=0.5,
            target_session_attrs="read-write",
        )

    def _member(self, conn: asyncpg.Connection) -> str:
        addr = conn._addr  # (host, port) of the server this connection reached
        return self._ports.get(addr[1], str(addr)) if isinstance(addr, tuple) else str(addr)


def writer_sequence(logs: dict[str, WriterLog], *, start: float, end: float) -> list[str]:
    """Which member acknowledged writes, in time order, with repeats collapsed.

    Within a window with one change of primary the answer is `[old, new]`. A member that
    shows up twice (`[old, new, old]`) acknowledged writes both before and after another
    member did: at some instant both accepted writes (split brain).
    """
    acks = sorted(
        (a.at, name) for name, log in logs.items() for a in log.acks if start <= a.at <= end
    )
    sequence: list[str] = []
    for _, name in acks:
        if not sequence or sequence[-1] != name:
            sequence.append(name)
    return sequence


def has_split_brain(sequence: list[str]) -> bool:
    return len(sequence) != len(set(sequence))
