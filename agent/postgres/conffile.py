"""The server's configuration file and pg_hba.conf, rendered (pure).

The postmaster runs with `-c config_file=<run_dir>/postgres/postgresql.conf`, a file the
agent writes before every start and reload (outside the data directory: pg_rewind and
pg_basebackup copy the source's files). It includes the data directory's own postgresql.conf
first, then every setting the agent gives the server, lowest precedence first
(`replication.server_settings`; agent/pgparams.py explains the order): a reload applies a
DCS change, and the file's final values are what the server runs with, so
pg_settings.pending_restart means what it says. Only the agent-owned settings are also on the
command line, where nothing (not even ALTER SYSTEM) overrides them.
Pure renderers; agent/postgres/checker.py checks DCS settings against the running server.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from agent.config import PostgresSettings
from agent.model import PgConfig
from agent.postgres import replication


def conf_path(run_dir: str) -> str:
    return os.path.join(replication.conf_dir(run_dir), "postgresql.conf")


def _pairs(options: Sequence[str]) -> list[tuple[str, str]]:
    """`-c name=value` arguments as (name, value) pairs."""
    values = [option for option in options if option != "-c"]
    return [(name, value) for name, _, value in (v.partition("=") for v in values)]


def render_conf(
    settings: PostgresSettings,
    dynamic: PgConfig,
    *,
    member_name: str,
    run_dir: str,
    timeouts: Sequence[str] = (),
    archive: Sequence[tuple[str, str]] = (),
) -> str:
    """The configuration file: the data directory's postgresql.conf, then `timeouts` (the
    replication timeouts' `-c` options), then `replication.server_settings`, then `archive`
    (the archive settings pgBackRest needs: agent/postgres/pgbackrest.py)."""
    data_conf = os.path.join(settings.data_dir, "postgresql.conf")
    lines = [
        "# Written by pgwarden before every start and reload; edits are lost.",
        "# Precedence: the last line of a name wins (see pgwarden run --check-config).",
        f"include_if_exists = {replication.quote_config_value(data_conf)}",
    ]
    ordered = [
        *_pairs(timeouts),
        *replication.server_settings(
            settings, member_name=member_name, run_dir=run_dir, dynamic=dynamic.parameters
        ),
        *archive,
    ]
    lines += [f"{name} = {replication.quote_config_value(value)}" for name, value in ordered]
    return "\n".join(lines) + "\n"


def command_line(settings: PostgresSettings, *, member_name: str, run_dir: str) -> list[str]:
    """The postmaster's `-c` options: the configuration file and the agent-owned settings."""
    options = ["-c", f"config_file={conf_path(run_dir)}"]
    for name, value in replication.managed_settings(
        settings, member_name=member_name, run_dir=run_dir
    ):
        options += ["-c", f"{name}={value}"]
    return options


def render_hba_for(settings: PostgresSettings, dcs_lines: Sequence[str]) -> str:
    """pg_hba.conf: this member's lines, the DCS's, then the agent's own."""
    return replication.render_hba(
        superuser=settings.superuser.username,
        superuser_password_set=settings.superuser.password is not None,
        replication_user=settings.replication.username,
        replication_password_set=settings.replication.password is not None,
        extra_lines=(*settings.pg_hba, *dcs_lines),
        tls=settings.tls is not None,
    )
