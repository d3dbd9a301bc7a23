"""`pgwarden ctl`: the operator's command line. It talks to the members' REST API, never to
the DCS, so it needs nothing but a URL (and credentials for the commands that change things).

`--url` may be given several times: each request goes to the first member that answers, and
a member that cannot be reached is skipped. Exit codes: 0 done, 1 refused by the API (the
API's error message is printed) or no member reachable, 2 bad command line.

The table and history renderers are pure functions of the API's JSON, in agent/ctl_render.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

import aiohttp

from agent.ctl_render import render_history, render_table, text_of
from agent.ctl_topology import render_topology

DEFAULT_URL = "http://127.0.0.1:8008"


class CtlError(Exception):
    """A failure to report in one line and exit 1."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where and how to reach the cluster's API."""

    urls: tuple[str, ...]
    token: str | None = None
    user: str | None = None
    password: str | None = None
    timeout_s: float = 5.0
    ca_file: str | None = None  # verify https members against it (default: the system CAs)
    cert_file: str | None = None  # a client certificate, for api.tls.verify_client
    key_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """How `https` URLs are verified: always, against `ca_file` or the system CAs."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    body: object  # the parsed JSON (None when the body was not JSON)
    url: str
    etag: str = ""  # the ETag header (GET /config: the record's version)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        return f"HTTP {self.status}"

    def object(self) -> Mapping[str, object]:
        if not isinstance(self.body, dict):
            raise CtlError(f"{self.url}: the answer is not a JSON object")
        return self.body


# ----------------------------------------------------------------------------- HTTP


def _headers(target: Target) -> dict[str, str]:
    if target.token:
        return {"Authorization": f"Bearer {target.token}"}
    return {}


async def request(
    session: aiohttp.ClientSession,
    target: Target,
    method: str,
    path: str,
    body: Mapping[str, object] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """Send to the first member that answers (any HTTP status counts as an answer)."""
    failures = []
    auth = None
    if target.user is not None and not target.token:
        auth = aiohttp.BasicAuth(target.user, target.password or "")
    for base in target.urls:
        url = base.rstrip("/") + path
        try:
            async with (
                asyncio.timeout(target.timeout_s),
                session.request(
                    method,
                    url,
                    json=body if body is not None else None,
                    headers={**_headers(target), **(headers or {})},
                    auth=auth,
                ) as response,
            ):
                text = await response.text()
        except TimeoutError:
            failures.append(f"{base}: no answer within {target.timeout_s:g} s")
            continue
        except (aiohttp.ClientError, OSError) as exc:
            failures.append(f"{base}: {exc or type(exc).__name__}")
            continue
        try:
            parsed: object = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = None
        etag = response.headers.get("ETag", "")
        return Reply(status=response.status, body=parsed, url=url, etag=etag)
    raise CtlError("no member reachable: " + "; ".join(failures))


# ----------------------------------------------------------------------------- commands


Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Io:
    out: TextIO
    err: TextIO
    sleep: Sleep
    monotonic: Callable[[], float]
    ask: Callable[[str], str] = input
    env: Mapping[str, str] = field(default_factory=dict)


def _print_json(io: _Io, body: object) -> None:
    print(json.dumps(body, indent=2, sort_keys=True), file=io.out)


async def _wait_for_leader(
    session: aiohttp.ClientSession,
    target: Target,
    io: _Io,
    *,
    old_leader: object,
    candidate: object,
    timeout_s: float,
    interval_s: float,
) -> str:
    """Poll /cluster until a leader other than `old_leader` (and `candidate`, if named)
    holds the lease. Members that cannot be reached meanwhile (restarting) are skipped."""
    deadline = io.monotonic() + timeout_s
    while True:
        try:
            reply = await request(session, target, "GET", "/cluster")
        except CtlError:
            reply = None
        if reply is not None and reply.ok and isinstance(reply.body, dict):
            leader = reply.body.get("leader")
            if (
                isinstance(leader, str)
                and leader != old_leader
                and (candidate is None or leader == candidate)
            ):
                return leader
        if io.monotonic() >= deadline:
            raise CtlError(f"timed out after {timeout_s:g} s waiting for a new leader")
        await io.sleep(interval_s)


async def _command(
    args: argparse.Namespace, session: aiohttp.ClientSession, target: Target, io: _Io
) -> int:
    from agent import ctl_backup, ctl_day2  # noqa: PLC0415 - they import this module

    command: str = args.command
    if command in ctl_day2.COMMANDS:
        return await ctl_day2.run_command(args, session, target, io)
    if command == "rollout":
        from agent import ctl_rollout  # noqa: PLC0415 - it imports this module

        return await ctl_rollout.run_command(args, session, target, io)
    if command == ctl_backup.COMMAND:
        return await ctl_backup.backup(
            args, session, target, out=io.out, sleep=io.sleep, monotonic=io.monotonic
        )
    reply = await _send(args, session, target)
    if not reply.ok:
        print(f"Error: {reply.error_message()}", file=io.err)
        return 1
    if args.json:
        _print_json(io, reply.body)
    else:
        print(_answer_text(command, reply), file=io.out)
    if command in ("switchover", "failover") and args.wait:
        answer = reply.object()
        new_leader = await _wait_for_leader(
            session,
            target,
            io,
            old_leader=answer.get("leader"),
            candidate=answer.get("candidate"),
            timeout_s=args.timeout + _seconds_until(answer.get("scheduled_at")),
            interval_s=args.poll_interval,
        )
        if not args.json:
            print(f"New leader: {new_leader}", file=io.out)
    return 0


async def _send(args: argparse.Namespace, session: aiohttp.ClientSession, target: Target) -> Reply:
    """The request of a command answered by `_command` itself."""
    command: str = args.command
    if command in ("list", "history", "topology"):
        path = f"/{'history' if command == 'history' else 'cluster'}"
        return await request(session, target, "GET", path)
    if command == "switchover":
        body = {
            k: v
            for k, v in (
                ("leader", args.leader),
                ("candidate", args.candidate),
                ("scheduled_at", args.scheduled),
            )
            if v is not None
        }
        return await request(session, target, "POST", "/switchover", body)
    if command == "failover":
        return await request(session, target, "POST", "/failover", {"candidate": args.candidate})
    if command == "cancel-switchover":
        return await request(session, target, "DELETE", "/switchover")
    return await request(session, target, "POST", f"/{command}")  # pause, resume, reinitialize


def _answer_text(command: str, reply: Reply) -> str:
    """What `_command` prints of a successful answer (without --json)."""
    if command == "list":
        return render_table(reply.object())
    if command == "history":
        return render_history(reply.object())
    if command == "topology":
        return render_topology(reply.object())
    if command in ("switchover", "failover"):
        answer = reply.object()
        text = f"{command.capitalize()} accepted: {text_of(answer.get('leader'), '(no leader)')}"
        text += f" -> {text_of(answer.get('candidate'), '(healthiest replica)')}"
        if answer.get("scheduled_at"):
            text += f" at {answer['scheduled_at']}"
        return text
    if command == "cancel-switchover":
        return "Scheduled switchover cancelled."
    return f"{command.capitalize()}: accepted ({reply.url})"


def _seconds_until(iso: object) -> float:
    """Seconds from now until an ISO timestamp (0 when absent or past): a scheduled
    switchover's wait starts at its time."""
    if not isinstance(iso, str):
        return 0.0
    try:
        return max(0.0, datetime.fromisoformat(iso).timestamp() - time.time())
    except ValueError:
        return 0.0


def _common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--url",
        action="append",
        default=default,
        help="a member's API URL (repeatable; default $PGWARDEN_URL or " + DEFAULT_URL + ")",
    )
    parser.add_argument("--token", default=default, help="bearer token (default $PGWARDEN_TOKEN)")
    parser.add_argument("--user", default=default, help="basic auth user ($PGWARDEN_USER)")
    parser.add_argument(
        "--password", default=default, help="basic auth password ($PGWARDEN_PASSWORD)"
    )
    parser.add_argument(
        "--ca-file", default=default, help="CA for https members ($PGWARDEN_CA_FILE)"
    )
    parser.add_argument(
        "--cert-file", default=default, help="client certificate ($PGWARDEN_CERT_FILE)"
    )
    parser.add_argument("--key-file", default=default, help="client key ($PGWARDEN_KEY_FILE)")
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the API's JSON answer",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=argparse.SUPPRESS if suppress else 5.0,
        help="seconds per request (default 5)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwarden ctl",
        description="Operate a pgwarden cluster through its members' REST API.",
    )
    _common_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common_options(sub, suppress=True)
        return sub

    add("list", "show the members, their roles, states and lag")
    switchover = add("switchover", "hand leadership to a healthy replica")
    switchover.add_argument("--leader", help="the current leader (checked)")
    switchover.add_argument("--candidate", help="the member to promote (default: the healthiest)")
    switchover.add_argument("--scheduled", help="ISO-8601 time with a zone, e.g. 2030-01-01T03:00Z")
    failover = add("failover", "promote a replica when there is no healthy leader")
    failover.add_argument("--candidate", required=True, help="the member to promote")
    for sub in (switchover, failover):
        sub.add_argument("--wait", action="store_true", help="wait until the leader changed")
        sub.add_argument("--timeout", type=float, default=60.0, help="--wait limit in seconds")
        sub.add_argument("--poll-interval", type=float, default=0.5, help=argparse.SUPPRESS)
    add("history", "show the timeline history")
    add("topology", "show the replication tree (who streams from whom)")
    add("cancel-switchover", "cancel a scheduled switchover whose time has not come")
    add("pause", "enter maintenance mode (no automatic failover)")
    add("resume", "leave maintenance mode")
    from agent import ctl_day2  # noqa: PLC0415 - it imports this module

    ctl_day2.add_parsers(add)
    from agent import ctl_rollout  # noqa: PLC0415 - it imports this module

    ctl_rollout.add_parser(add)
    from agent import ctl_backup  # noqa: PLC0415 - it imports this module

    ctl_backup.add_parser(add)
    add("reinitialize", "re-clone the replica at --url from the leader")
    return parser


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    sleep: Sleep = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    ask: Callable[[str], str] = input,
) -> int:
    """`main` with its surroundings passed in (for tests): environment, streams, clock."""
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    urls = args.url or [u for u in env.get("PGWARDEN_URL", "").split(",") if u.strip()]
    target = Target(
        urls=tuple(u.strip() for u in urls) or (DEFAULT_URL,),
        token=args.token or env.get("PGWARDEN_TOKEN") or None,
        user=args.user or env.get("PGWARDEN_USER") or None,
        password=args.password or env.get("PGWARDEN_PASSWORD") or None,
        timeout_s=args.request_timeout,
        ca_file=args.ca_file or env.get("PGWARDEN_CA_FILE") or None,
        cert_file=args.cert_file or env.get("PGWARDEN_CERT_FILE") or None,
        key_file=args.key_file or env.get("PGWARDEN_KEY_FILE") or None,
    )
    io = _Io(out=out, err=err, sleep=sleep, monotonic=monotonic, ask=ask, env=env)
    try:
        try:
            connector = aiohttp.TCPConnector(ssl=target.ssl_context())
        except (OSError, ssl.SSLError) as exc:
            raise CtlError(f"TLS files: {exc}") from None
        async with aiohttp.ClientSession(connector=connector) as session:
            return await _command(args, session, target, io)
    except CtlError as exc:
        print(f"Error: {exc}", file=err)
        return 1


def main(argv: Sequence[str]) -> int:
    """Entry point: `argv` are the arguments after `pgwarden ctl`."""
    return asyncio.run(run(argv, env=os.environ, out=sys.stdout, err=sys.stderr))
