"""`pgwarden ctl backup [--type full|incr|diff] [--no-wait]`: a pgBackRest backup from a
healthy replica when one can take it, else on the primary (each member's POST /backup),
waited for unless --no-wait (GET /backup on the member that took it).

A replica is healthy here when it streams; the least lagging is asked first. It takes the
backup with pgBackRest's backup-standby when it can reach the primary's PostgreSQL (both on
one host, agent/api/backup.py); when it answers 409 the next one is asked, then the primary.
The output says which member took it and from where.
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
    sub = add(COMMAND, "take a pgBackRest backup (from a healthy replica, else the primary)")
    sub.add_argument("--type", choices=("full", "incr", "diff"), default="full")
    sub.add_argument("--no-wait", action="store_true", help="return once it started")
    sub.add_argument("--timeout", type=float, default=3600.0, help="wait limit in seconds")
    sub.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)


async def _candidates(
    session: aiohttp.ClientSession, target: Target
) -> tuple[str, list[tuple[str, str]]]:
    """The leader's name, and the members to ask in order: the streaming replicas (least
    lag first), then the primary; each as (name, api_url)."""
    reply = await request(session, target, "GET", "/cluster")
    if not reply.ok:
        raise CtlError(reply.error_message())
    leader = reply.object().get("leader")
    listed = reply.object().get("members")
    members = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    primary = [(str(m["name"]), str(m.get("api_url"))) for m in members if m.get("name") == leader]
    if not primary:
        raise CtlError("the cluster has no leader to back up")
    replicas = sorted(
        (
            m
            for m in members
            if m.get("role") == "replica" and m.get("state") == "streaming" and not m.get("leader")
        ),
        key=lambda m: (m.get("lag_bytes") is None, m.get("lag_bytes") or 0, str(m.get("name"))),
    )
    asked = [(str(m["name"]), str(m.get("api_url"))) for m in replicas]
    return str(leader), [*asked, *primary]


async def backup(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    target: Target,
    *,
    out: TextIO,
    sleep: Callable[[float], Awaitable[None]],
    monotonic: Callable[[], float],
) -> int:
    leader, candidates = await _candidates(session, target)
    refusals: list[str] = []
    for name, url in candidates:
        member = replace(target, urls=(url,))
        try:
            reply = await request(session, member, "POST", "/backup", {"type": args.type})
        except CtlError as exc:
            if name == leader:
                raise
            refusals.append(f"{name}: {exc}")  # unreachable: the next one
            continue
        if reply.ok:
            break
        if reply.status != 409 or name == leader:
            raise CtlError(reply.error_message())
        refusals.append(f"{name}: {reply.error_message()}")
    for refusal in refusals:
        print(f"not from {refusal}", file=out)
    where = (
        f"on the primary {name}"
        if name == leader
        else f"from the replica {name} (backup-standby; primary {leader})"
    )
    print(f"{args.type} backup started {where}", file=out)
    if args.no_wait:
        return 0
    deadline = monotonic() + args.timeout
    while True:
        await sleep(args.poll_interval)
        status = await request(session, member, "GET", "/backup")
        body = status.object() if status.ok else {}
        last = body.get("last")
        if body.get("running") is False and isinstance(last, dict):
            if last.get("ok") is True:
                print(f"{args.type} backup {where} done", file=out)
                return 0
            raise CtlError(f"backup on {name} failed: {last.get('error')}")
        if monotonic() >= deadline:
            raise CtlError(f"timed out after {args.timeout:g} s waiting for the backup")
