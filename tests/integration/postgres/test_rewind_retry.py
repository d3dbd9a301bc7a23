"""A rewind whose source is briefly unreachable waits for it; one that stays unreachable says so.

Seen after a healed partition: the old primary's first connection to the new one failed
(no route to host) and a rewind that took that for a pg_rewind failure had the member wipe
its data directory and clone it again. Each test diverges a real pair (the standby promoted,
the old primary written to and stopped) and rewinds the old primary onto the new one while
the new one is down, or reached through a relay that drops or black-holes connections.
Durations are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from agent.postgres import PostgresError, StandbyConfig, StopMode, ensure_slots, rewind
from agent.postgres.bootstrap import SourceUnreachable
from tests.support.pgversions import PgInstall
from tests.support.postgres import PgNode, streaming_pair

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

START_TIMEOUT_S = 20.0
SQL_TIMEOUT_S = 5.0


def _report(what: str, seconds: float) -> None:
    print(f"\n[pg-timing] {what}: {seconds * 1000:.1f} ms")


@pytest_asyncio.fixture(loop_scope="module")
async def diverged(pg_install: PgInstall) -> AsyncIterator[tuple[PgNode, PgNode]]:
    """(old primary, new primary): the standby promoted, then a row only the old primary has,
    and the old primary stopped, as the agent leaves it before a rewind."""
    async with streaming_pair(install=pg_install, table_sql="CREATE TABLE t (v text)") as (
        old,
        new,
    ):
        await new.postmaster.promote(timeout_s=10)
        await old.postmaster.execute("INSERT INTO t VALUES ('divergent')", timeout_s=SQL_TIMEOUT_S)
        await old.postmaster.stop(StopMode.FAST, timeout_s=10)
        yield old, new


async def _count(node: PgNode, value: str) -> int:
    rows = await node.postmaster.fetch(
        "SELECT count(*) FROM t WHERE v = $1", value, timeout_s=SQL_TIMEOUT_S
    )
    count = rows[0][0]
    assert isinstance(count, int)
    return count


async def _rejoins_as_a_replica(old: PgNode, new: PgNode) -> None:
    """The rewound old primary starts as a standby of the new one, without its divergent row,
    and receives what the new primary writes."""
    await ensure_slots(new.postmaster, [old.slot])  # a promoted standby has none
    await old.postmaster.start(standby=old.standby_of(new), timeout_s=START_TIMEOUT_S)
    assert await _count(old, "divergent") == 0
    await new.postmaster.execute("INSERT INTO t VALUES ('after-rewind')", timeout_s=SQL_TIMEOUT_S)
    give_up = time.monotonic() + 10
    while await _count(old, "after-rewind") != 1:
        assert time.monotonic() < give_up, "the rewound node does not replicate"
        await asyncio.sleep(0.02)


class Fate(enum.Enum):
    FORWARD = "forward"
    DROP = "drop"  # accepted and closed at once
    SILENCE = "silence"  # accepted and never answered: a black hole


class Relay:
    """A TCP relay on a free loopback port to a PostgreSQL port. `fate(n)` decides what
    happens to the n-th connection (from 0)."""

    def __init__(self, target_port: int, fate: Callable[[int], Fate]) -> None:
        self.target_port = target_port
        self.fate = fate
        self.port = 0
        self.fates: list[Fate] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def source_for(self, old: PgNode) -> StandbyConfig:
        """`old`'s standby configuration for the relay's target, reached through the relay."""
        return StandbyConfig(
            primary_host="127.0.0.1",
            primary_port=self.port,
            slot_name=old.slot,
            application_name=old.name,
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fate = self.fate(len(self.fates))
        self.fates.append(fate)
        self._writers.append(writer)
        try:
            if fate is Fate.DROP:
                return
            if fate is Fate.SILENCE:
                while await reader.read(4096):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.append(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.write_eof()


async def test_a_rewind_waits_for_a_source_that_is_down_briefly_instead_of_failing(
    diverged: tuple[PgNode, PgNode],
) -> None:
    """The new primary restarts while the old one's rewind begins: connections are refused
    for a while (as with no route to host after a partition heals). The rewind retries and
    succeeds; it does not fail, which would make the member re-clone."""
    old, new = diverged
    await new.postmaster.stop(StopMode.FAST, timeout_s=10)
    down_s = 1.5

    async def restart_later() -> None:
        await asyncio.sleep(down_s)
        await new.postmaster.start(standby=None, timeout_s=START_TIMEOUT_S)

    began = time.monotonic()
    restart = asyncio.create_task(restart_later(), name="restart-source")
    try:
        await rewind(old.settings, old.standby_of(new), run_dir=old.run_dir, timeout_s=20)
    finally:
        await restart
    took = time.monotonic() - began
    _report(f"rewind with the source down for {down_s} s", took)
    assert took >= down_s
    await _rejoins_as_a_replica(old, new)


async def test_a_pg_rewind_run_that_could_not_connect_is_retried_not_failed(
    diverged: tuple[PgNode, PgNode],
) -> None:
    """The pre-check reaches the source; pg_rewind's own connection, just after, is dropped
    (the link flapping): pg_rewind exits with 'connection to server ... failed'. That is a
    reason to try again, not a failed rewind."""
    old, new = diverged
    dropping_since: list[float] = []

    def fate(n: int) -> Fate:
        # The first connection (the pre-check) passes; every other one for 1 s is dropped
        # (pg_rewind's, libpq's retry without SSL, and the retried pre-check); then all pass.
        if n == 0:
            return Fate.FORWARD
        if not dropping_since:
            dropping_since.append(time.monotonic())
        return Fate.DROP if time.monotonic() - dropping_since[0] < 1.0 else Fate.FORWARD

    async with Relay(new.port, fate) as relay:
        began = time.monotonic()
        await rewind(old.settings, relay.source_for(old), run_dir=old.run_dir, timeout_s=20)
        _report("rewind with pg_rewind's connection dropped", time.monotonic() - began)
    assert Fate.DROP in relay.fates and relay.fates[-1] is Fate.FORWARD
    await _rejoins_as_a_replica(old, new)


@pytest.mark.parametrize("fault", [Fate.DROP, Fate.SILENCE])
async def test_a_source_unreachable_for_the_whole_timeout_raises_source_unreachable(
    diverged: tuple[PgNode, PgNode], fault: Fate
) -> None:
    """Connections refused-by-closing or black-holed until the rewind's timeout: the rewind
    gives up at its timeout with SourceUnreachable (retry later), not a plain PostgresError
    (re-clone), and the data directory is left as it was: it still rewinds afterwards."""
    old, new = diverged
    timeout_s = 3.0
    control = os.path.join(old.settings.data_dir, "global", "pg_control")
    control_before = os.stat(control).st_mtime_ns
    async with Relay(new.port, lambda _: fault) as relay:
        began = time.monotonic()
        with pytest.raises(SourceUnreachable) as raised:
            await rewind(
                old.settings, relay.source_for(old), run_dir=old.run_dir, timeout_s=timeout_s
            )
        took = time.monotonic() - began
    _report(f"rewind gave up on a source that {fault.value}s connections", took)
    assert isinstance(raised.value, PostgresError)  # callers catching PostgresError still do
    assert "unreachable" in str(raised.value)
    assert timeout_s - 1.0 <= took <= timeout_s + 1.0
    assert len(relay.fates) >= 2, "no retry"
    assert os.stat(control).st_mtime_ns == control_before, "the target was modified"
    await rewind(old.settings, old.standby_of(new), run_dir=old.run_dir, timeout_s=20)
    await _rejoins_as_a_replica(old, new)


async def test_a_rewind_gives_up_on_an_unreachable_source_after_its_unreachable_bound(
    diverged: tuple[PgNode, PgNode],
) -> None:
    """The agent's rewind retries a source it cannot reach for a ttl (`unreachable_s`), not
    for the whole `rewind_timeout_s`: a leader that died as the rewind began kept its member
    stopped and busy for minutes (docs/chaos.md finding 28)."""
    old, new = diverged
    async with Relay(new.port, lambda _: Fate.DROP) as relay:
        began = time.monotonic()
        with pytest.raises(SourceUnreachable):
            await rewind(
                old.settings,
                relay.source_for(old),
                run_dir=old.run_dir,
                timeout_s=60.0,
                unreachable_s=2.0,
            )
        took = time.monotonic() - began
    _report("rewind gave up on an unreachable source (bound 2 s, timeout 60 s)", took)
    assert 1.0 <= took <= 10.0
    assert len(relay.fates) >= 2, "no retry"
    await rewind(old.settings, old.standby_of(new), run_dir=old.run_dir, timeout_s=20)
    await _rejoins_as_a_replica(old, new)
