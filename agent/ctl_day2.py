"""`pgwarden ctl` commands for day-2 operations: show-config, edit-config, restart,
cancel-restart, reload (agent/ctl.py parses the common options and dispatches here).

edit-config edits the cluster's dynamic configuration as YAML: the HA fields and the
`postgresql` section (parameters, pg_hba). The edit comes from $EDITOR (default vi), from
`--apply FILE` (`-` for stdin), or from `--set NAME=VALUE` (a HA field by its name, anything
else a PostgreSQL parameter; `--set NAME=null` removes a parameter). It shows a unified diff,
asks (unless `--force`), and sends only what changed as PATCH /config with `If-Match` the
version it read: a concurrent change makes the write fail instead of being overwritten.
The pure parts (document, diff, patch) are tested on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol, TextIO

import aiohttp
import yaml

from agent.ctl import CtlError, Reply, Target, request

COMMANDS = ("show-config", "edit-config", "restart", "cancel-restart", "reload")
HA_FIELDS = (
    "synchronous_mode",
    "synchronous_node_count",
    "synchronous_mode_strict",
    "maximum_lag_on_syncnode_bytes",
    "failsafe_mode",
)


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    add("show-config", "show the cluster's dynamic configuration (YAML)")
    edit = add("edit-config", "edit the dynamic configuration: $EDITOR, --set or --apply")
    edit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a HA field or a PostgreSQL parameter (VALUE null removes a parameter)",
    )
    edit.add_argument("--apply", metavar="FILE", help="the new configuration as YAML (- stdin)")
    edit.add_argument("--force", action="store_true", help="do not ask before writing")
    restart = add("restart", "rolling restart: replicas one at a time, then the leader")
    restart.add_argument("members", nargs="*", help="only these members (default: all)")
    restart.add_argument("--pending", action="store_true", help="only members pending restart")
    restart.add_argument("--role", choices=("primary", "replica", "any"), default="any")
    restart.add_argument("--scheduled", help="ISO-8601 time with a zone (default: now)")
    restart.add_argument(
        "--in-place", action="store_true", help="restart the leader in place, no switchover"
    )
    restart.add_argument("--timeout", type=float, default=300.0, help="wait limit in seconds")
    restart.add_argument("--poll-interval", type=float, default=0.5, help=argparse.SUPPRESS)
    add("cancel-restart", "cancel a scheduled or running rolling restart")
    reload = add("reload", "re-render and reload PostgreSQL's configuration on members")
    reload.add_argument("members", nargs="*", help="only these members (default: all)")


# ----------------------------------------------------------------------------- pure parts


def editable(config: Mapping[str, object]) -> dict[str, object]:
    """The part of a GET /config answer edit-config edits (pause has its own commands)."""
    document: dict[str, object] = {k: config[k] for k in HA_FIELDS if k in config}
    pg = config.get("postgresql")
    pg = pg if isinstance(pg, dict) else {}
    document["postgresql"] = {
        "parameters": dict(pg.get("parameters") or {}),
        "pg_hba": list(pg.get("pg_hba") or []),
    }
    return document


def to_yaml(document: Mapping[str, object]) -> str:
    return yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)


def apply_sets(document: dict[str, object], sets: Sequence[str]) -> dict[str, object]:
    """`document` with each NAME=VALUE applied (VALUE read as YAML: 8, true, 64MB, null)."""
    result = {**document, "postgresql": dict(_pg(document))}
    before = _section(result, "parameters")
    params: dict[str, object] = dict(before) if isinstance(before, dict) else {}
    for item in sets:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CtlError(f"--set {item!r}: expected NAME=VALUE")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if name.startswith("postgresql.parameters."):
            name = name.removeprefix("postgresql.parameters.")
        if name in HA_FIELDS:
            result[name] = value
        elif value is None:
            params.pop(name, None)
        else:
            params[name] = value
    result["postgresql"] = {**_pg(result), "parameters": params}
    return result


def _pg(document: Mapping[str, object]) -> dict[str, object]:
    pg = document.get("postgresql")
    return dict(pg) if isinstance(pg, dict) else {}


def _section(document: Mapping[str, object], key: str) -> object:
    return _pg(document).get(key) or ({} if key == "parameters" else [])


def patch_body(old: Mapping[str, object], new: Mapping[str, object]) -> dict[str, object]:
    """The PATCH /config body that turns `old` into `new` (only what changed)."""
    unknown = sorted(set(new) - {*HA_FIELDS, "postgresql"})
    if unknown:
        raise CtlError(f"{unknown[0]}: not an editable field (fields: {', '.join(HA_FIELDS)}, "
                       "postgresql)")  # fmt: skip
    body: dict[str, object] = {k: new[k] for k in HA_FIELDS if k in new and new[k] != old.get(k)}
    old_params, new_params = _section(old, "parameters"), _section(new, "parameters")
    if not isinstance(new_params, dict):
        raise CtlError("postgresql.parameters: expected a mapping of name: value")
    assert isinstance(old_params, dict)
    changes: dict[str, object] = {k: v for k, v in new_params.items() if old_params.get(k) != v}
    changes.update({k: None for k in old_params if k not in new_params})
    pg: dict[str, object] = {}
    if changes:
        pg["parameters"] = changes
    if _section(new, "pg_hba") != _section(old, "pg_hba"):
        pg["pg_hba"] = _section(new, "pg_hba")
    if pg:
        body["postgresql"] = pg
    return body


def diff(old: str, new: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), "current", "edited"
        )
    )


# ----------------------------------------------------------------------------- commands


class Io(Protocol):
    """What agent/ctl.py hands its commands: streams, the clock, the question, environment."""

    @property
    def out(self) -> TextIO: ...
    @property
    def sleep(self) -> Callable[[float], Awaitable[None]]: ...
    @property
    def monotonic(self) -> Callable[[], float]: ...
    @property
    def ask(self) -> Callable[[str], str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...


async def run_command(
    args: argparse.Namespace, session: aiohttp.ClientSession, target: Target, io: Io
) -> int:
    """One of `COMMANDS`; raises CtlError to exit 1 with its message."""
    command: str = args.command
    if command in ("show-config", "cancel-restart"):
        method, path = (
            ("GET", "/config") if command == "show-config" else ("DELETE", "/rolling-restart")
        )
        reply = await request(session, target, method, path)
        if not reply.ok:
            raise CtlError(reply.error_message())
        if command == "cancel-restart":
            _print(io.out, "Rolling restart cancelled.")
        elif args.json:
            _print(io.out, json.dumps(reply.body, indent=2, sort_keys=True))
        else:
            _print(io.out, to_yaml(editable(reply.object())).rstrip())
        return 0
    if command == "edit-config":
        return await edit_config(args, session, target, out=io.out, ask=io.ask, env=io.env)
    if command == "restart":
        return await restart(
            args, session, target, out=io.out, sleep=io.sleep, monotonic=io.monotonic
        )
    return await reload(args, session, target, out=io.out)


async def _config(session: aiohttp.ClientSession, target: Target) -> tuple[dict[str, object], str]:
    reply = await request(session, target, "GET", "/config")
    if not reply.ok:
        raise CtlError(reply.error_message())
    return dict(reply.object()), reply.etag


def _edit_in_editor(text: str, env: Mapping[str, str]) -> str:
    editor = env.get("VISUAL") or env.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        code = subprocess.call([*shlex.split(editor), path])
        if code != 0:
            raise CtlError(f"the editor exited with code {code}; nothing changed")
        with open(path, encoding="utf-8") as edited:
            return edited.read()
    finally:
        os.unlink(path)


def _read_apply(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise CtlError(f"--apply {path}: {exc.strerror}") from None


def _parse(text: str) -> dict[str, object]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CtlError(f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CtlError("the configuration must be a YAML mapping")
    return data


async def edit_config(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    target: Target,
    *,
    out: TextIO,
    ask: Callable[[str], str],
    env: Mapping[str, str],
) -> int:
    config, etag = await _config(session, target)
    old = editable(config)
    if args.apply is not None:
        new = _parse(_read_apply(args.apply))
    elif args.set:
        new = apply_sets(old, args.set)
    else:
        new = _parse(await asyncio.to_thread(_edit_in_editor, to_yaml(old), env))
    body = patch_body(old, new)
    if not body:
        _print(out, "Nothing changed.")
        return 0
    _print(out, diff(to_yaml(old), to_yaml(apply_body(old, body))).rstrip("\n"))
    if not args.force and ask("Apply these changes? [y/N] ").strip().lower() not in ("y", "yes"):
        _print(out, "Not applied.")
        return 1
    headers = {"If-Match": etag} if etag else {}
    reply = await request(session, target, "PATCH", "/config", body, headers=headers)
    if not reply.ok:
        raise CtlError(reply.error_message())
    restart = reply.object().get("restart_needed")
    _print(out, "Configuration changed.")
    if isinstance(restart, list) and restart:
        names = ", ".join(str(n) for n in restart)
        _print(out, f"Only a restart applies {names}: pgwarden ctl restart --pending")
    return 0


def apply_body(old: Mapping[str, object], body: Mapping[str, object]) -> dict[str, object]:
    """What the record becomes once `body` is applied to `old` (for the diff shown)."""
    new = {**old, **{k: v for k, v in body.items() if k != "postgresql"}}
    pg = body.get("postgresql")
    if isinstance(pg, dict):
        before = _section(old, "parameters")
        params = dict(before) if isinstance(before, dict) else {}
        for k, v in (pg.get("parameters") or {}).items():
            if v is None:
                params.pop(k, None)
            else:
                params[k] = v
        new["postgresql"] = {
            "parameters": params,
            "pg_hba": pg.get("pg_hba", _section(old, "pg_hba")),
        }
    return new


def _print(out: TextIO, text: str) -> None:
    print(text, file=out)


async def restart(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    target: Target,
    *,
    out: TextIO,
    sleep: Callable[[float], Awaitable[None]],
    monotonic: Callable[[], float],
) -> int:
    body: dict[str, object] = {"role": args.role, "pending": args.pending}
    if args.members:
        body["members"] = list(args.members)
    if args.in_place:
        body["in_place"] = True
    if args.scheduled:
        body["scheduled_at"] = args.scheduled
    reply = await request(session, target, "POST", "/rolling-restart", body)
    if not reply.ok:
        raise CtlError(reply.error_message())
    answer = reply.object()
    listed = answer.get("members")
    members = ", ".join(str(m) for m in listed) if isinstance(listed, list) else ""
    if args.scheduled:
        _print(out, f"Rolling restart of {members} scheduled at {answer.get('scheduled_at')}.")
        return 0
    _print(out, f"Rolling restart of {members}: started.")
    deadline = monotonic() + args.timeout
    seen: list[str] = []
    while True:
        await sleep(args.poll_interval)
        try:
            state = await request(session, target, "GET", "/rolling-restart")
        except CtlError:
            continue  # the member answering may be the one restarting
        if state.status == 404:
            _print(out, "Rolling restart: done.")
            return 0
        done = state.object().get("done") if state.ok else None
        for name in done if isinstance(done, list) else []:
            if name not in seen:
                seen.append(name)
                _print(out, f"  {name}: its turn passed")
        if monotonic() >= deadline:
            raise CtlError(f"the rolling restart is still running after {args.timeout:g} s")


async def reload(
    args: argparse.Namespace, session: aiohttp.ClientSession, target: Target, *, out: TextIO
) -> int:
    reply = await request(session, target, "GET", "/cluster")
    if not reply.ok:
        raise CtlError(reply.error_message())
    listed = reply.object().get("members")
    members = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    chosen = [m for m in members if not args.members or m.get("name") in args.members]
    missing = sorted(set(args.members) - {str(m.get("name")) for m in members})
    if missing:
        raise CtlError(f"no member named {missing[0]!r}")
    failed = 0
    for member in chosen:
        one = replace(target, urls=(str(member.get("api_url")),))
        try:
            answer: Reply | None = await request(session, one, "POST", "/reload")
        except CtlError:
            answer = None
        ok = answer is not None and answer.ok
        failed += not ok
        why = "" if ok else f": {answer.error_message() if answer else 'unreachable'}"
        _print(out, f"{member.get('name')}: {'reload requested' if ok else 'failed'}{why}")
    return 1 if failed else 0
