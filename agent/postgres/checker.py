"""Checks a DCS `postgresql` section against this member's running server: its pg_settings
(read once per server version) and, for pg_hba lines, PostgreSQL's own parser
(`pg_hba_file_rules` over a trial of the whole file, written where the server reads it and
put back at once; the server itself only re-reads it on a reload, and the agent's reloads
wait for the same lock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent.config import PostgresSettings, Settings
from agent.model import PgConfig
from agent.pgparams import (
    ConfigCheck,
    SettingInfo,
    ValidationUnavailable,
    hba_problems,
    needs_restart,
    parameter_problems,
)
from agent.postgres import replication
from agent.postgres.conffile import render_hba_for
from agent.postgres.osfiles import PostgresError, RunAs, write_file
from agent.postgres.process import Postmaster

_CATALOG_SQL = "SELECT name, vartype, context, unit, min_val, max_val, enumvals FROM pg_settings"
_HBA_ERRORS_SQL = (
    "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL ORDER BY 1"
)


def write_hba(
    settings: PostgresSettings, dcs_lines: Sequence[str], run_dir: str, who: RunAs
) -> None:
    write_file(replication.hba_path(run_dir), render_hba_for(settings, dcs_lines), who)


def setting_info(row: Sequence[object]) -> SettingInfo:
    name, vartype, context, unit, min_val, max_val, enumvals = row
    return SettingInfo(
        name=str(name),
        vartype=str(vartype),
        context=str(context),
        unit=str(unit) if unit is not None else None,
        min_val=str(min_val) if min_val is not None else None,
        max_val=str(max_val) if max_val is not None else None,
        enumvals=tuple(str(v) for v in enumvals) if isinstance(enumvals, list | tuple) else (),
    )


class ConfigChecker:
    """Checks a DCS `postgresql` section against this member's running server."""

    def __init__(self, settings: Settings, postmaster: Postmaster) -> None:
        self._settings = settings
        self._postmaster = postmaster
        self._catalogs: dict[str, dict[str, SettingInfo]] = {}

    async def _catalog(self, timeout_s: float) -> dict[str, SettingInfo]:
        rows = await self._postmaster.fetch("SHOW server_version_num", timeout_s=timeout_s)
        version = str(rows[0][0])
        if version not in self._catalogs:
            rows = await self._postmaster.fetch(_CATALOG_SQL, timeout_s=timeout_s)
            self._catalogs[version] = {str(r[0]).lower(): setting_info(r) for r in rows}
        return self._catalogs[version]

    async def check(self, config: PgConfig, *, timeout_s: float) -> ConfigCheck:
        """Every problem of `config` (each naming its parameter or pg_hba line), and the
        parameters only a restart applies. Raises ValidationUnavailable when the server
        cannot be asked (not running here)."""
        if self._postmaster.pid() is None:
            raise ValidationUnavailable("PostgreSQL is not running on this member")
        try:
            catalog = await self._catalog(timeout_s)
            problems = [
                *parameter_problems(dict(config.parameters), catalog, self._settings),
                *hba_problems(config.pg_hba, self._settings),
            ]
            if not problems and config.pg_hba:
                problems += await self._hba_trial(config.pg_hba, timeout_s)
        except PostgresError as exc:
            raise ValidationUnavailable(f"PostgreSQL did not answer: {exc}") from None
        restart = needs_restart(dict(config.parameters), catalog)
        return ConfigCheck(problems=tuple(problems), restart=tuple(restart))

    async def _hba_trial(self, lines: Sequence[str], timeout_s: float) -> list[str]:
        """PostgreSQL's own verdict on the pg_hba.conf the lines would make."""
        pg = self._settings.postgresql
        run_dir = self._settings.run_dir
        first = 2 + len(pg.pg_hba)  # the header line, then this member's own lines
        postmaster = self._postmaster
        async with postmaster.config_lock:
            try:
                write_hba(pg, lines, run_dir, postmaster.who())
                async with asyncio.timeout(timeout_s):
                    rows = await postmaster.fetch(_HBA_ERRORS_SQL, timeout_s=timeout_s)
            finally:
                write_hba(pg, postmaster.dynamic.pg_hba, run_dir, postmaster.who())
        problems = []
        for line_number, error in rows:
            index = int(str(line_number)) - first
            where = f"pg_hba[{index}]" if 0 <= index < len(lines) else f"pg_hba line {line_number}"
            problems.append(f"{where}: {error}")
        return problems
