"""The chaos workload: writers that insert unique values and record every attempt.

- `MemberWriter` (one per member) connects to that member's PostgreSQL only, whatever its role:
  its consecutive acknowledged inserts show when the member accepted writes.
- `AppWriter` connects the way applications do: libpq multi-host with
  target_session_attrs=read-write (the host order is shuffled on each connect, as libpq's
  load_balance_hosts=random does, so that one blackholed host does not always come first).
- Optionally (`Workload(patient=True)`) a second application writer, `app-patient`, that
  waits up to PATIENT_ATTEMPT_TIMEOUT_S for each INSERT, as an application without a statement
  timeout does: when its server hangs, its INSERT waits in the server's socket and is executed
  (and acknowledged) the moment the server runs again, whatever happened meanwhile.

Each attempt records its value, which member served it (None when no connection), when it was
sent and when it ended (monotonic: every namespace shares the host's CLOCK_MONOTONIC), and
whether the commit was acknowledged. Values are unique across writers (disjoint ranges).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import asyncpg

from tests.chaos.cluster import PG_PORT, TABLE

ATTEMPT_TIMEOUT_S = 1.0
PATIENT_ATTEMPT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 1.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    writer: str
    value: int
    member: str | None  # the member that served it; None when no connection was made
    sent: float  # monotonic, just before the INSERT was sent (or the connect began)
    ended: float  # monotonic, when the answer (or the failure) came back
    acked: bool


@dataclass(slots=True)
class WriterLog:
    name: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def acks(self) -> list[Attempt]:
        return [a for a in self.attempts if a.acked]


class Writer:
    """Inserts every `interval_s` until stopped; reconnects after any failure."""

    def __init__(
        self,
        *,
        name: str,
        start_value: int,
        interval_s: float = 0.05,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self.attempt_timeout_s = attempt_timeout_s
        self.log = WriterLog(name=name)
        self._next = start_value
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _connect(self) -> asyncpg.Connection:
        raise NotImplementedError

    def _member_of(self, conn: asyncpg.Connection) -> str:
        raise NotImplementedError

    async def _attempt(self, conn: asyncpg.Connection | None) -> asyncpg.Connection | None:
        value = self._next
        self._next += 1
        sent = time.monotonic()
        member: str | None = None
        try:
            if conn is None or conn.is_closed():
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    conn = await self._connect()
            member = self._member_of(conn)
            sent = time.monotonic()
            async with asyncio.timeout(self.attempt_timeout_s):
                await conn.execute(
                    f"INSERT INTO {TABLE} (value, writer) VALUES ($1, $2)", value, self.name
                )
        except Exception:  # any failure is "not acknowledged"; the next attempt reconnects
            self.log.attempts.append(
                Attempt(
                    writer=self.name,
                    value=value,
                    member=member,
                    sent=sent,
                    ended=time.monotonic(),
                    acked=False,
                )
            )
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
            return None
        self.log.attempts.append(
            Attempt(
                writer=self.name,
                value=value,
                member=member,
                sent=sent,
                ended=time.monotonic(),
                acked=True,
            )
        )
        return conn

    async def _run(self) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            conn = await self._attempt(conn)
            pause = max(0.0, self.interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._stop.wait()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"chaos-writer-{self.name}")

    async def stop(self) -> WriterLog:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(self.attempt_timeout_s + CONNECT_TIMEOUT_S + 2):
                await self._task
        return self.log


class MemberWriter(Writer):
    """Writes to one member only (its name is the writer's name)."""

    def __init__(self, *, name: str, address: str, start_value: int) -> None:
        super().__init__(name=name, start_value=start_value)
        self.address = address

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.address,
            port=PG_PORT,
            user="postgres",
            database="postgres",
            timeout=CONNECT_TIMEOUT_S,
        )

    def _member_of(self, conn: asyncpg.Connection) -> str:
        return self.name


class AppWriter(Writer):
    """Writes wherever a read-write session is found (multi-host, target_session_attrs)."""

    def __init__(
        self,
        *,
        members: dict[str, str],
        start_value: int,
        name: str = "app",
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> None:
        super().__init__(name=name, start_value=start_value, attempt_timeout_s=attempt_timeout_s)
        self._by_address = {address: name for name, address in members.items()}

    async def _connect(self) -> asyncpg.Connection:
        hosts = list(self._by_address)
        random.shuffle(hosts)
        return await asyncpg.connect(
            host=hosts,
            port=[PG_PORT] * len(hosts),
            user="postgres",
            database="postgres",
            timeout=CONNECT_TIMEOUT_S / len(hosts),
            target_session_attrs="read-write",
        )

    def _member_of(self, conn: asyncpg.Connection) -> str:
        addr = conn._addr  # (host, port) of the server this connection reached
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        return self._by_address.get(host, str(host))


@dataclass(slots=True)
class Workload:
    """One AppWriter and one MemberWriter per member (and the patient AppWriter if asked),
    started and stopped together."""

    members: dict[str, str]  # member name -> address
    base_value: int
    patient: bool = False
    writers: list[Writer] = field(default_factory=list)

    def start(self) -> None:
        self.writers = [AppWriter(members=self.members, start_value=self.base_value)]
        if self.patient:
            self.writers.append(
                AppWriter(
                    members=self.members,
                    start_value=self.base_value + 90_000_000,
                    name="app-patient",
                    attempt_timeout_s=PATIENT_ATTEMPT_TIMEOUT_S,
                )
            )
        for i, (name, address) in enumerate(self.members.items(), start=1):
            self.writers.append(
                MemberWriter(
                    name=name, address=address, start_value=self.base_value + i * 10_000_000
                )
            )
        for writer in self.writers:
            writer.start()

    async def stop(self) -> list[Attempt]:
        attempts: list[Attempt] = []
        for writer in self.writers:
            attempts.extend((await writer.stop()).attempts)
        return sorted(attempts, key=lambda a: a.ended)
