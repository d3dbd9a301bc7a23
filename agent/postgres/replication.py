"""Pure renderers for PostgreSQL configuration: conninfo strings, slot names, pg_hba, -c options.

No I/O here: every function maps values to text, so it is unit-tested without a server. The
text is consumed by process.py and bootstrap.py (and checked against a real postmaster by the
integration tests).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from agent.config import PostgresSettings
from agent.model import SyncStandbys
from agent.postgres_settings import TlsVerify

IDENT_MAP = "pgwarden"
"""The pg_ident.conf map that lets the agent's OS user(s) connect as the superuser (peer)."""

AGENT_MANAGED = (
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "hba_file",
    "ident_file",
    "cluster_name",
    "hot_standby",
    "wal_log_hints",
    "logging_collector",
)
"""Server settings the agent owns: rendered after `settings.parameters`, so they always win."""

_TUNABLE_DEFAULTS = (
    ("wal_level", "replica"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "10"),
    # pg_rewind reads the target's WAL back to the last checkpoint before the fork; without a
    # reserve a former primary's shutdown checkpoint can recycle it, forcing a full re-clone.
    ("wal_keep_size", "128MB"),
)
"""Settings replication needs; rendered before `settings.parameters`, which may raise them."""

_SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}$")
_CONNINFO_PLAIN_RE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")


def slot_name_for(member_name: str) -> str:
    """The physical replication slot name of a member.

    A name that is already a valid slot name (`[a-z0-9_]`, 1..63 characters) is used as is.
    Any other is folded to that alphabet, cut to 50 characters and suffixed with 12 hex digits
    of its SHA-256, so that `pg-0` and `pg_0` (or two long names with a common prefix) never
    share a slot. The result is stable across restarts and versions.
    """
    if _SLOT_RE.match(member_name):
        return member_name
    folded = re.sub(r"[^a-z0-9_]", "_", member_name.lower())[:50]
    digest = hashlib.sha256(member_name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{folded}_{digest}" if folded else f"m_{digest}"


def _conninfo_value(value: str) -> str:
    """A libpq keyword value: bare when safe, else single-quoted with \\ and ' escaped."""
    if value and _CONNINFO_PLAIN_RE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    """How a libpq client (walreceiver, pg_basebackup, pg_rewind) checks the server:
    `sslmode` (verify-full or verify-ca) against the CA in `root_cert` (a path)."""

    sslmode: TlsVerify
    root_cert: str


# A WAL receiver applies connect_timeout to the TCP connect only, and wal_receiver_timeout only
# once it streams: a peer that vanished (no FIN, no RST) while the start-up packet or the
# authentication was in flight held the connection until the kernel gave up retransmitting
# (~15 min with tcp_retries2 = 15), and the replica did not stream meanwhile (chaos finding 17).
# tcp_user_timeout ends a connection whose sent data stays unacknowledged for 10 s (well above
# the 2-5 s of the slow-network faults); the keepalives find an idle dead peer in ~11 s.
_TCP_DEAD_PEER: tuple[tuple[str, str], ...] = (
    ("keepalives", "1"),
    ("keepalives_idle", "5"),
    ("keepalives_interval", "2"),
    ("keepalives_count", "3"),
    ("tcp_user_timeout", "10000"),
)


def primary_conninfo(
    *,
    host: str,
    port: int,
    user: str,
    application_name: str,
    passfile: str | None = None,
    tls: ClientTls | None = None,
    connect_timeout_s: int = 2,
    dbname: str | None = None,
) -> str:
    """A libpq key=value connection string (as primary_conninfo or a tool's source server).

    It never holds a password: libpq reads it from `passfile` (see `render_passfile`), so it
    is neither in postgresql.auto.conf (which pg_basebackup and pg_rewind copy to other
    members) nor on a command line. With `tls` the connection must use TLS and verify the
    server (`sslmode`, `sslrootcert`). Values are quoted and escaped by libpq's rules, so
    spaces, quotes and backslashes survive. `dbname` is only for non-replication use
    (pg_rewind).
    """
    pairs: list[tuple[str, str]] = [("host", host), ("port", str(port)), ("user", user)]
    if passfile is not None:
        pairs.append(("passfile", passfile))
    if tls is not None:
        pairs.append(("sslmode", tls.sslmode.value))
        pairs.append(("sslrootcert", tls.root_cert))
    if dbname is not None:
        pairs.append(("dbname", dbname))
    pairs.append(("application_name", application_name))
    pairs.append(("connect_timeout", str(connect_timeout_s)))
    pairs.extend(_TCP_DEAD_PEER)
    return " ".join(f"{key}={_conninfo_value(value)}" for key, value in pairs)


def _pgpass_field(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("a password file entry cannot hold a line break")
    return value.replace("\\", "\\\\").replace(":", "\\:")


def render_passfile(entries: Iterable[tuple[str, str]]) -> str:
    """A libpq password file: one `*:*:*:<user>:<password>` line per (user, password), so
    any host, port and database (`replication` included) finds the user's password; `:` and
    `\\` escaped as libpq reads them. libpq ignores the file unless its mode is 0600 or
    stricter, and it must be readable by PostgreSQL's OS user (the walreceiver reads it)."""
    lines = [f"*:*:*:{_pgpass_field(user)}:{_pgpass_field(password)}" for user, password in entries]
    return "".join(line + "\n" for line in lines)


def quote_literal(value: str) -> str:
    """An SQL string literal, correct whatever standard_conforming_strings says."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def quote_ident(value: str) -> str:
    """An SQL identifier, always double-quoted (so keywords and mixed case are literal)."""
    return '"' + value.replace('"', '""') + '"'


def quote_config_value(value: str) -> str:
    """A value as postgresql.conf / postgresql.auto.conf writes it (ALTER SYSTEM's escaping)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _hba_token(name: str) -> str:
    """A user name in pg_hba.conf / pg_ident.conf, double-quoted so keywords stay literal.

    PostgreSQL 15 cannot escape a double quote inside a quoted token, so such names (and
    control characters) are rejected rather than rendered wrongly.
    """
    if not name or '"' in name or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"user name not usable in pg_hba.conf: {name!r}")
    return f'"{name}"'


def render_hba(
    *,
    superuser: str,
    superuser_password_set: bool,
    replication_user: str,
    replication_password_set: bool,
    extra_lines: Iterable[str] = (),
    tls: bool = False,
) -> str:
    """The agent's pg_hba.conf (kept outside the data directory, passed as hba_file).

    Order: the operator's extra lines first (first match wins in pg_hba), then
    - the superuser over the unix socket by `peer` through the `pgwarden` ident map (only the
      agent's OS users are mapped; see `render_ident`),
    - replication connections of the replication user and normal connections of the superuser
      (pg_rewind's source) from anywhere with scram-sha-256.
    A user without a password (test and demo set-ups) gets `trust`, and then from loopback
    only, never from the network.
    With `tls` (postgresql.tls set) these TCP lines are `hostssl`: a replication or superuser
    connection without TLS matches none of them and is refused, from loopback too. An
    operator's extra `host` line may still admit such connections: the docs say to write
    `hostssl` there as well.
    """
    connection_type = "hostssl" if tls else "host"
    lines = ["# Written by pgwarden before every start; edits are lost.", *extra_lines]
    lines.append(f"local all {_hba_token(superuser)} peer map={IDENT_MAP}")
    for database, user, has_password in (
        ("replication", replication_user, replication_password_set),
        ("all", superuser, superuser_password_set),
    ):
        if has_password:
            for network in ("0.0.0.0/0", "::0/0"):
                lines.append(
                    f"{connection_type} {database} {_hba_token(user)} {network} scram-sha-256"
                )
        else:
            for network in ("127.0.0.0/8", "::1/128"):
                lines.append(f"{connection_type} {database} {_hba_token(user)} {network} trust")
    return "\n".join(lines) + "\n"


def render_ident(*, os_users: Iterable[str], superuser: str) -> str:
    """pg_ident.conf: each of the agent's OS users may connect as the superuser (peer)."""
    lines = ["# Written by pgwarden before every start; edits are lost."]
    for os_user in dict.fromkeys(os_users):
        lines.append(f"{IDENT_MAP} {_hba_token(os_user)} {_hba_token(superuser)}")
    return "\n".join(lines) + "\n"


def socket_dir(settings: PostgresSettings) -> str:
    """The unix socket directory: `settings.socket_dir`, by default the data directory's parent."""
    if settings.socket_dir:
        return settings.socket_dir
    return os.path.dirname(os.path.abspath(settings.data_dir.rstrip("/")))


def conf_dir(run_dir: str) -> str:
    """Where the agent writes pg_hba.conf, pg_ident.conf and the server log (OS user's, 0700)."""
    return os.path.join(run_dir, "postgres")


def hba_path(run_dir: str) -> str:
    return os.path.join(conf_dir(run_dir), "pg_hba.conf")


def ident_path(run_dir: str) -> str:
    return os.path.join(conf_dir(run_dir), "pg_ident.conf")


def log_path(run_dir: str) -> str:
    return os.path.join(conf_dir(run_dir), "postgres.log")


def passfile_path(run_dir: str) -> str:
    """The libpq password file of the replication and superuser passwords (mode 0600)."""
    return os.path.join(conf_dir(run_dir), "pgpass")


def tls_dir(run_dir: str) -> str:
    """Where the agent copies postgresql.tls's files, owned by PostgreSQL's OS user."""
    return os.path.join(conf_dir(run_dir), "tls")


def tls_paths(run_dir: str) -> tuple[str, str, str]:
    """The copies' paths: (certificate, key, CA)."""
    directory = tls_dir(run_dir)
    return (
        os.path.join(directory, "server.crt"),
        os.path.join(directory, "server.key"),
        os.path.join(directory, "ca.crt"),
    )


def client_tls(settings: PostgresSettings, run_dir: str) -> ClientTls | None:
    """The libpq TLS settings of this member's connections to another member (None: no TLS).
    The CA is the copy in the run directory: the OS user's tools can read it."""
    if settings.tls is None:
        return None
    return ClientTls(sslmode=settings.tls.verify, root_cert=tls_paths(run_dir)[2])


def _list_guc_value(path: str) -> str:
    """A one-element list setting: double-quoted when it holds a separator."""
    if any(ch in path for ch in ', "'):
        return '"' + path.replace('"', '""') + '"'
    return path


def managed_settings(
    settings: PostgresSettings, *, member_name: str, run_dir: str
) -> list[tuple[str, str]]:
    """The settings the agent owns (AGENT_MANAGED, and the TLS files with postgresql.tls)."""
    managed = [
        ("port", str(settings.port)),
        ("listen_addresses", settings.listen_host),
        ("unix_socket_directories", _list_guc_value(socket_dir(settings))),
        ("hba_file", hba_path(run_dir)),
        ("ident_file", ident_path(run_dir)),
        ("cluster_name", member_name),
        ("hot_standby", "on"),
        ("wal_log_hints", "on"),
        ("logging_collector", "off"),
    ]
    if settings.tls is not None:
        cert, key, ca = tls_paths(run_dir)
        managed += [
            ("ssl", "on"),
            ("ssl_cert_file", cert),
            ("ssl_key_file", key),
            ("ssl_ca_file", ca),
        ]
    return managed


def server_settings(
    settings: PostgresSettings,
    *,
    member_name: str,
    run_dir: str,
    dynamic: Iterable[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """Every setting the agent gives the server, lowest precedence first (the last of a name
    wins): replication defaults, the DCS's `dynamic` parameters, `settings.parameters` (so an
    operator may raise max_wal_senders, say), then the agent-managed settings (which always
    win). agent/pgparams.py explains the order."""
    return [
        *_TUNABLE_DEFAULTS,
        *dynamic,
        *settings.parameters,
        *managed_settings(settings, member_name=member_name, run_dir=run_dir),
    ]


def server_options(settings: PostgresSettings, *, member_name: str, run_dir: str) -> list[str]:
    """`server_settings` (without DCS parameters) as `-c name=value` arguments."""
    options: list[str] = []
    for name, value in server_settings(settings, member_name=member_name, run_dir=run_dir):
        options += ["-c", f"{name}={value}"]
    return options


def render_auto_conf(existing: str, *, conninfo: str | None, slot_name: str | None) -> str:
    """postgresql.auto.conf with its primary_conninfo / primary_slot_name lines replaced.

    Used while the server is stopped (after a clone or a rewind, which copy the source's file).
    Every other line is kept as it was; None removes the setting.
    """
    owned = ("primary_conninfo", "primary_slot_name")
    kept = [
        line for line in existing.splitlines() if line.split("=", 1)[0].strip().lower() not in owned
    ]
    if not kept:
        kept = [
            "# Do not edit this file manually!",
            "# It will be overwritten by the ALTER SYSTEM command.",
        ]
    if conninfo is not None:
        kept.append(f"primary_conninfo = {quote_config_value(conninfo)}")
    if slot_name is not None:
        kept.append(f"primary_slot_name = {quote_config_value(slot_name)}")
    return "\n".join(kept) + "\n"


# ------------------------------------------------------------------ synchronous_standby_names


ASYNC = SyncStandbys(quorum=False, count=0, names=())
"""No synchronous standby: commits wait for no one."""


def _ssn_name(name: str) -> str:
    """An application name in synchronous_standby_names, always double-quoted (so `*`, `FIRST`
    or a dash are names, not syntax); an embedded double quote is doubled."""
    return '"' + name.replace('"', '""') + '"'


def render_synchronous_standby_names(standbys: SyncStandbys) -> str:
    """`FIRST k ("a", "b")` or `ANY k ("a", "b")`; "" for asynchronous replication.

    `count` is clamped to the number of names (PostgreSQL rejects a larger one)."""
    if standbys.count <= 0 or not standbys.names:
        return ""
    count = min(standbys.count, len(standbys.names))
    keyword = "ANY" if standbys.quorum else "FIRST"
    return f"{keyword} {count} ({', '.join(_ssn_name(n) for n in standbys.names)})"


_SSN_RE = re.compile(r"^\s*(FIRST|ANY)?\s*(\d+)?\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)


def _split_names(text: str) -> tuple[str, ...] | None:
    names: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        if text[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    return None
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            names.append("".join(buf))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in ",":
                j += 1
            names.append(text[i:j].strip().lower())
            i = j
    return tuple(names)


def parse_synchronous_standby_names(text: str) -> SyncStandbys | None:
    """The inverse of the renderer, tolerant of PostgreSQL's other spellings (`a, b` is
    `FIRST 1 (a, b)`; bare names fold to lower case). None when it cannot be read (the caller
    then assumes the worst)."""
    if not text.strip():
        return ASYNC
    match = _SSN_RE.match(text)
    if match is None:
        names = _split_names(text)
        if names is None or not names:
            return None
        return SyncStandbys(quorum=False, count=1, names=names)
    keyword, count, inner = match.groups()
    names = _split_names(inner)
    if names is None or not names:
        return None
    return SyncStandbys(
        quorum=(keyword or "").upper() == "ANY",
        count=int(count) if count is not None else 1,
        names=names,
    )
