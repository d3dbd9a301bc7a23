"""Latency of the etcd client's DCS operations against a local single-member etcd.

Usage: .venv/bin/python bench/dcs_latency.py [--n 500] [--runs 3] [--json]

Starts its own etcd (tests/support/etcd.py) on free loopback ports, then times, N times per run:
  acquire   txn(create_revision(leader) == 0 -> put with lease, else range)
  release   delete of the leader key (after each acquire)
  renew     lease_keepalive
  range     a linearizable range of one key
  raw range the same range as a bare aiohttp POST of /v3/kv/range (no client logic): the
            baseline for the client's own overhead (ratio = range / raw range)
Prints p50 / p99 in milliseconds per operation, each the median over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from agent.dcs.etcd_client import (  # noqa: E402
    Compare,
    CompareResult,
    CompareTarget,
    EtcdClient,
    PutOp,
    RangeOp,
)
from tests.support.etcd import running_cluster  # noqa: E402

LEADER_KEY = b"/bench/cluster/leader"
WARMUP = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    operation: str
    p50_ms: float
    p99_ms: float


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def timed(n: int, operation: Callable[[], Awaitable[object]]) -> list[float]:
    """Latencies in ms of `n` sequential calls, after a short warm-up."""
    for _ in range(WARMUP):
        await operation()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await operation()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def one_run(endpoint: str, n: int) -> dict[str, list[float]]:
    client = EtcdClient([endpoint], timeout_s=5.0)
    raw_session = aiohttp.ClientSession()
    try:
        lease_id, _ = await client.lease_grant(60)
        absent = Compare(
            key=LEADER_KEY, target=CompareTarget.CREATE, result=CompareResult.EQUAL, value=0
        )
        acquire_samples: list[float] = []
        release_samples: list[float] = []
        for i in range(WARMUP + n):
            started = time.perf_counter()
            result = await client.txn(
                [absent],
                [PutOp(key=LEADER_KEY, value=b"me", lease=lease_id)],
                [RangeOp(key=LEADER_KEY)],
            )
            acquired = time.perf_counter()
            await client.delete(LEADER_KEY)
            released = time.perf_counter()
            if not result.succeeded:
                raise RuntimeError("leader key unexpectedly held")
            if i >= WARMUP:
                acquire_samples.append((acquired - started) * 1000)
                release_samples.append((released - acquired) * 1000)

        raw_body = {"key": base64.b64encode(LEADER_KEY).decode()}

        async def raw_range() -> object:
            async with raw_session.post(f"{endpoint}/v3/kv/range", json=raw_body) as resp:
                return await resp.json()

        results = {
            "acquire (txn)": acquire_samples,
            "release (delete)": release_samples,
            "renew (lease_keepalive)": await timed(n, lambda: client.lease_keepalive(lease_id)),
            "range": await timed(n, lambda: client.range(LEADER_KEY)),
            "raw aiohttp range (baseline)": await timed(n, raw_range),
        }
        await client.lease_revoke(lease_id)
        return results
    finally:
        await client.close()
        await raw_session.close()


def summarize(runs: list[dict[str, list[float]]]) -> list[Row]:
    rows = []
    for name in runs[0]:
        rows.append(
            Row(
                operation=name,
                p50_ms=statistics.median(percentile(r[name], 0.50) for r in runs),
                p99_ms=statistics.median(percentile(r[name], 0.99) for r in runs),
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="operations per run and kind")
    parser.add_argument("--runs", type=int, default=3, help="runs (the median is reported)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="pgwarden-bench-") as tmp,
        running_cluster(1, Path(tmp)) as cluster,
    ):
        endpoint = cluster.endpoints[0]
        runs = [asyncio.run(one_run(endpoint, args.n)) for _ in range(args.runs)]
    rows = summarize(runs)
    by_name = {row.operation: row for row in rows}
    overhead = by_name["range"].p50_ms / by_name["raw aiohttp range (baseline)"].p50_ms

    if args.json:
        print(
            json.dumps(
                {
                    "n": args.n,
                    "runs": args.runs,
                    "rows": [
                        {
                            **asdict(row),
                            "p50_ms": round(row.p50_ms, 3),
                            "p99_ms": round(row.p99_ms, 3),
                        }
                        for row in rows
                    ],
                    "client_overhead_ratio_p50": round(overhead, 3),
                },
                indent=2,
            )
        )
        return 0
    print(f"etcd client latency, single local etcd, n={args.n}, median of {args.runs} runs")
    print(f"{'operation':<30} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        print(f"{row.operation:<30} {row.p50_ms:>8.3f} {row.p99_ms:>8.3f}")
    print(f"client overhead (range p50 / raw range p50): {overhead:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
