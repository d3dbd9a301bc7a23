"""`pgwarden demo`: etcd and a 3-member cluster on this machine, with a live view.

The cluster is `agent.localcluster.LocalCluster`, which the end-to-end tests and the
benchmarks drive too, so the demo shows exactly what is tested.

The demo stops everything it started however it ends: `q`, Ctrl-C, SIGTERM, SIGHUP (its
terminal closed), or a broken stdout (`make demo | tee log` and Ctrl-C: tee is gone first)
all lead to `LocalCluster.stop()`. If the demo itself is killed (SIGKILL, OOM) it cannot
clean up, so each process it starts directly carries a parent-death signal
(`die_with_parent`, see `localproc.parent_death_signal`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import aiohttp

from agent.ctl_render import render_table
from agent.dcs_settings import LockKind
from agent.localcluster import LocalCluster
from agent.localproc import ETCD_BIN, PG_BIN

HELP = (
    "keys: [k]ill primary (agent+PostgreSQL)  [s]witchover  [r]estart stopped members\n"
    "      [f]ailsafe mode on/off  [d]CS freeze/thaw (SIGSTOP/SIGCONT)  [q]uit"
)


async def _read_keys(queue: asyncio.Queue[str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        try:
            line = await reader.readline()
        except OSError:  # the terminal hung up (EIO)
            return
        if not line:
            return
        await queue.put(line.decode().strip().lower())


async def run_demo(cluster: LocalCluster, *, refresh_s: float) -> None:
    keys: asyncio.Queue[str] = asyncio.Queue()
    reader = asyncio.create_task(_read_keys(keys), name="demo-keys") if sys.stdin.isatty() else None
    store = "etcd" if cluster.dcs_kind == "etcd" else "the test Kubernetes API server"
    message = f"starting: {store} and {cluster.size} members (bootstrap takes a few seconds)"
    started = time.monotonic()
    async with cluster.api_session() as session:
        try:
            while True:
                view = await cluster.cluster_json(session)
                table = render_table(view) if view is not None else "(no member answers yet)"
                try:
                    sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n")
                    sys.stdout.write(
                        f"pgwarden demo - {time.strftime('%H:%M:%S')} - "
                        f"up {time.monotonic() - started:.0f}s - data in {cluster.base}\n\n"
                    )
                    sys.stdout.write(table + "\n\n" + message + "\n" + HELP + " (then Enter)\n")
                    sys.stdout.flush()
                except OSError as exc:  # EPIPE: `| tee` ended by Ctrl-C; EIO: terminal closed
                    raise _OutputGone(exc.strerror or str(exc)) from exc
                try:
                    key = await asyncio.wait_for(keys.get(), timeout=refresh_s)
                except TimeoutError:
                    continue
                message = await _handle_key(cluster, session, key)
                if message == "quit":
                    return
        finally:
            if reader is not None:
                reader.cancel()


async def _handle_key(cluster: LocalCluster, session: aiohttp.ClientSession, key: str) -> str:
    if key in ("q", "quit"):
        return "quit"
    if key in ("k", "kill"):
        index = await cluster.primary_index(session)
        if index is None:
            return "no primary to kill right now"
        cluster.kill_member(index)
        return f"killed pg-{index} (agent and PostgreSQL, SIGKILL) at {time.strftime('%H:%M:%S')}"
    if key in ("s", "switchover"):
        index = await cluster.primary_index(session)
        if index is None:
            return "no primary right now"
        status, body = await cluster.post(session, index, "/switchover", {})
        return f"switchover: HTTP {status} {json.dumps(body)}"
    if key in ("r", "restart"):
        started = []
        for index, member in enumerate(cluster.members):
            if member.process is None or member.process.poll() is not None:
                cluster.start_member(index)
                started.append(member.name)
        return f"restarted {', '.join(started) or 'nothing'}"
    if key in ("f", "failsafe"):
        view = await cluster.cluster_json(session)
        wanted = not (view is not None and view.get("failsafe_mode") is True)
        status, body = await cluster.patch_config(session, {"failsafe_mode": wanted})
        return f"failsafe_mode {'on' if wanted else 'off'}: HTTP {status} {json.dumps(body)}"
    if key in ("d", "dcs"):
        frozen = cluster.toggle_dcs_frozen()
        what = "frozen (SIGSTOP): watch the primary" if frozen else "thawed (SIGCONT)"
        return f"the DCS is {what} at {time.strftime('%H:%M:%S')}"
    return f"unknown key {key!r}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgwarden demo")
    parser.add_argument("--dir", help="where to keep the demo's data (default: a new temp dir)")
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument(
        "--dcs",
        choices=["etcd", "kubernetes"],
        default="etcd",
        help="etcd, or the Kubernetes API (the in-tree test API server, one pod per member)",
    )
    parser.add_argument("--lock", choices=[k.value for k in LockKind], default="lease")
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws")
    parser.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=None,
        help="stop by itself after this many seconds (for scripts)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    needed = [f"{PG_BIN}/postgres"] + ([ETCD_BIN] if args.dcs == "etcd" else [])
    for binary in needed:
        if not Path(binary).exists():
            print(f"pgwarden demo: {binary} is missing; run `make demo`", file=sys.stderr)
            return 2
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    cluster = LocalCluster(
        base=base, size=args.size, dcs_kind=args.dcs, kube_lock=args.lock, die_with_parent=True
    )

    async def run() -> None:
        task = asyncio.create_task(run_demo(cluster, refresh_s=args.refresh), name="demo")
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=args.duration)

    code = 0
    for sig in _STOP_SIGNALS:  # until the loop runs, and while `start` waits for etcd
        signal.signal(sig, _stop_requested)
    try:
        cluster.start()
        asyncio.run(run())
    except _StopRequested:
        pass
    except _OutputGone as exc:
        _quiet_stdout()
        _say(f"pgwarden demo: cannot write the view ({exc}); stopping", sys.stderr)
        code = 1
    finally:
        # Stopping takes some seconds: another SIGTERM or SIGHUP must not cut it short
        # (Ctrl-C still does; the agents then get their parent-death SIGTERM).
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _say("\nstopping every process the demo started ...", sys.stdout)
        cluster.stop()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return code


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopRequested(Exception):
    """A stop signal arrived before the live view ran."""


class _OutputGone(Exception):
    """stdout cannot be written any more (a closed pipe, a hung-up terminal)."""


def _stop_requested(signum: int, frame: object) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def _say(text: str, stream: TextIO) -> None:
    """Print `text` if `stream` still works (it may be a closed pipe or a hung-up tty):
    nothing may keep `cluster.stop()` from running."""
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):
        if stream is sys.stdout:
            _quiet_stdout()


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that neither later prints nor the interpreter's final
    flush fail on the broken one."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
