"""`pgwarden ctl backup [--type full|incr|diff] [--no-wait]`: a pgBackRest backup, taken on
the primary (its member's POST /backup), waited for unless --no-wait (GET /backup).

Backups run where the primary's data directory is: pgBackRest's backup from a standby needs
it to reach the primary's host too (SSH or its TLS server), which pgwarden does not set up.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TextIO

import aiohttp

from agent.ctl import CtlError, Target, request

COMMAND = "backup"


def add_parser(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    sub = add(COMMAND, "take a pgBackRest backup on the primary and wait for it")
    sub.add_argument("--type", choices=("full", "incr", "diff"), default="full")
    sub.add_argument("--no-wait", action="store_true", help="return once it started")
    sub.add_argument("--timeout", type=float, default=3600.0, help="wait limit in seconds")
    sub.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)


async def _primary(session: aiohttp.ClientSession, target: Target) -> tuple[str, str]:
    reply = await request(session, target, "GET", "/cluster")
    if not reply.ok:
        raise CtlError(reply.error_message())
    leader = reply.object().get("leader")
    members = reply.object().get("members")
    for member in members if isinstance(members, list) else []:
        if isinstance(member, dict) and member.get("name") == leader:
            return str(leader), str(member.get("api_url"))
    raise CtlError("the cluster has no leader to back up")


async def backup(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    target: Target,
    *,
    out: TextIO,
    sleep: Callable[[float], Awaitable[None]],
    monotonic: Callable[[], float],
) -> int:
    name, url = await _primary(session, target)
    primary = replace(target, urls=(url,))
    reply = await request(session, primary, "POST", "/backup", {"type": args.type})
    if not reply.ok:
        raise CtlError(reply.error_message())
    print(f"{args.type} backup started on {name}", file=out)
    if args.no_wait:
        return 0
    deadline = monotonic() + args.timeout
    while True:
        await sleep(args.poll_interval)
        status = await request(session, primary, "GET", "/backup")
        body = status.object() if status.ok else {}
        last = body.get("last")
        if body.get("running") is False and isinstance(last, dict):
            if last.get("ok") is True:
                print(f"{args.type} backup on {name} done", file=out)
                return 0
            raise CtlError(f"backup on {name} failed: {last.get('error')}")
        if monotonic() >= deadline:
            raise CtlError(f"timed out after {args.timeout:g} s waiting for the backup")
