"""What one re-arm of the fencer costs the agent and the fencer in CPU (issue 15).

An idle leader re-arms its fencer once per renewal (every `loop_wait_s`). Here the agent's
client (agent/fence.py `FenceClient`) arms a real fencer `--calls` times in a row, on one
connection kept open (today), or on a new connection per call without the ADOPT the client
sends on a new connection (what every call cost before: connect, one line, close; the
client's path for a fencer of the previous protocol). CPU time of this process
(`time.process_time`) and of the fencer (/proc utime + stime) per call, median of `--runs`.

    .venv/bin/python bench/fence_rearm.py [--calls 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.fence import FenceClient


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def one_run(calls: int, *, per_call: bool) -> tuple[float, float]:
    """(agent µs, fencer µs) of CPU per arm."""
    with tempfile.TemporaryDirectory(prefix="fence-rearm-") as tmp:
        client = FenceClient(run_dir=tmp, data_dir=tmp)
        await client.start()
        assert client._process is not None
        fencer = client._process.pid
        client._legacy = per_call
        client._drop()
        hz = os.sysconf("SC_CLK_TCK")
        cpu, ticks = time.process_time(), _ticks(fencer)
        for _ in range(calls):
            await client.arm(time.monotonic() + 60)
        agent_s, fencer_s = time.process_time() - cpu, (_ticks(fencer) - ticks) / hz
        await client.disarm()
        await client.stop()
    return agent_s / calls * 1e6, fencer_s / calls * 1e6


async def main_async(args: argparse.Namespace) -> None:
    print(f"{args.calls} arms per run, {args.runs} runs; load {os.getloadavg()[0]:.1f}")
    print()
    print("| connection | agent CPU per arm (µs) | fencer CPU per arm (µs) |")
    print("|---|---:|---:|")
    for label, per_call in (("one per call (before)", True), ("kept open (now)", False)):
        runs = [await one_run(args.calls, per_call=per_call) for _ in range(args.runs)]
        agent = statistics.median(r[0] for r in runs)
        fencer = statistics.median(r[1] for r in runs)
        print(f"| {label} | {agent:.0f} | {fencer:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
