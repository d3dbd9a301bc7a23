"""What the benchmarks share: a writer that survives a server killed under it, the write gap
of an action run under that writer, `pgwarden ctl` run in-process, and the figures table.

Imported by bench/rolling_restart.py, bench/rollout.py and bench/failover.py (run from the
repository root, which they put on sys.path).
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from agent import ctl
from agent.localcluster import LocalCluster
from tests.support.workload import AppWriter


class BenchAppWriter(AppWriter):
    """AppWriter that survives asyncpg's InternalClientError.

    A connection whose server was SIGKILLed mid-statement can raise
    `InternalClientError: cannot switch to state 12; another operation (2) is in progress`,
    which tests/support/workload.py's loop does not catch: the writer task would die and take
    the whole bench with it. The loop is resumed instead (it reconnects, keeping its log).
    """

    async def _run(self) -> None:
        while True:
            try:
                await super()._run()
                return
            except asyncpg.InternalClientError:
                await asyncio.sleep(self.interval_s)


def cluster_writer(cluster: LocalCluster) -> BenchAppWriter:
    """A writer to whichever member of `cluster` accepts writes, every 50 ms."""
    return BenchAppWriter(
        hosts=[("127.0.0.1", m.pg_port) for m in cluster.members],
        # A value of its own: the table's primary key refuses another writer's values.
        start_value=int(time.time() * 1000) % 10**12,
    )


async def under_writes(
    cluster: LocalCluster, action: Callable[[], Awaitable[object]], *, after_s: float
) -> tuple[float, float]:
    """(longest stretch without an acknowledged write, duration of `action`): the writer runs
    1 s before `action` and `after_s` after it."""
    writer = cluster_writer(cluster)
    writer.start()
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    await action()
    took = time.monotonic() - t0
    await asyncio.sleep(after_s)
    log = await writer.stop()
    return log.longest_gap(t0, time.monotonic()), took


async def pgctl(cluster: LocalCluster, *argv: str, env: Mapping[str, str] | None = None) -> str:
    """`pgwarden ctl <argv>` against `cluster` (its URLs and token, plus `env`); its output.
    Raises RuntimeError when the command fails."""
    out = io.StringIO()
    full_env = {
        "PGWARDEN_URL": ",".join(m.api_url for m in cluster.members),
        "PGWARDEN_TOKEN": cluster.token,
        **(env or {}),
    }
    code = await ctl.run(argv, env=full_env, out=out, err=out)
    if code != 0:
        raise RuntimeError(f"pgwarden ctl {' '.join(argv)}: {out.getvalue()}")
    return out.getvalue()


def table(figures: dict[str, list[float]]) -> str:
    """The figures as a Markdown table: median, min, max and the number of runs."""
    lines = ["| figure | median | min | max | runs |", "|---|---:|---:|---:|---:|"]
    for name, values in figures.items():
        lines.append(
            f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | "
            f"{max(values):.3f} | {len(values)} |"
        )
    return "\n".join(lines)
