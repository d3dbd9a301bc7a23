"""Callbacks benchmark: what `pre_promote` costs a failover, on a real 3-member cluster.

Three variants, each on its own cluster of three agents (real etcd and PostgreSQL, default
timings: ttl 10 s, loop_wait 2 s), each run `--runs` times: a SIGKILL of the primary's agent
and PostgreSQL under a client inserting every 50 ms through libpq multi-host
(target_session_attrs=read-write, bench/failover.py's writer), measuring the longest stretch
without an acknowledged write:

- `no_callbacks`: the plain failover;
- `pre_promote_ok`: every member has a `pre_promote` that exits 0 (the promotion waits for
  it: a long action, then the promotion in the next decision);
- `pre_promote_veto_first`: the first member to run `pre_promote` after each kill vetoes
  (exit 1) and hands the lease back; the next one passes and takes over.

Every `on_*` callback is also set (a script that exits at once) in the two callback variants.

    .venv/bin/python bench/callbacks.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from failover import DEFAULT_TIMING, converge, scenario_hard_kill

from agent.localcluster import LocalCluster

OK = "#!/bin/sh\nexit 0\n"
# Vetoes once per token: the bench creates the token before each kill.
VETO_FIRST = "#!/bin/sh\nif rm {token} 2>/dev/null; then exit 1; fi\nexit 0\n"


def _scripts(root: Path) -> tuple[str, str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o777)  # the callbacks run as postgres; the veto removes the token here
    token = root / "veto-token"
    ok, veto = root / "ok.sh", root / "veto.sh"
    ok.write_text(OK)
    veto.write_text(VETO_FIRST.format(token=token))
    for script in (ok, veto):
        script.chmod(0o755)
    return str(ok), str(veto), token


def _callbacks(ok: str, pre_promote: str) -> dict[str, object]:
    events = ("on_start", "on_stop", "on_restart", "on_reload", "on_role_change")
    return {**{event: ok for event in events}, "pre_promote": pre_promote}


async def run_variant(name: str, runs: int, root: Path) -> list[float]:
    ok, veto, token = _scripts(root / "scripts")
    extra: dict[str, object] = {}
    if name == "pre_promote_ok":
        extra = {"callbacks": _callbacks(ok, ok)}
    elif name == "pre_promote_veto_first":
        extra = {"callbacks": _callbacks(ok, veto)}
    cluster = LocalCluster(base=root / name, size=3, timing=dict(DEFAULT_TIMING), extra=extra)
    gaps: list[float] = []
    try:
        cluster.start()
        await converge(cluster)
        for _ in range(runs):
            if name == "pre_promote_veto_first":
                token.write_text("")
                os.chmod(token, 0o666)
            gaps.append(await scenario_hard_kill(cluster))
            if name == "pre_promote_veto_first" and token.exists():
                raise RuntimeError("no pre_promote ran: the veto token is still there")
    finally:
        cluster.stop()
    return gaps


VARIANTS = ("no_callbacks", "pre_promote_ok", "pre_promote_veto_first")


def render(results: dict[str, list[float]]) -> str:
    lines = [
        "| variant | runs | write gap median (s) | max (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, gaps in results.items():
        lines.append(
            f"| `{name}` | {len(gaps)} | {statistics.median(gaps):.2f} | {max(gaps):.2f} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, list[float]]:
    root = Path(tempfile.mkdtemp(prefix="pgwarden-bench-callbacks-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        return {name: await run_variant(name, args.runs, root) for name in args.only}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    out(json.dumps(results, indent=2) if args.json else render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
