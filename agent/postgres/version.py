"""The major version of the local PostgreSQL binaries, which decides what the agent may ask of
them (failover slots need 17+) and whom the member may replicate from (the same major only)."""

from __future__ import annotations

import os
import re

from agent.config import PostgresSettings
from agent.postgres.tools import run_tool

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def parse_major(text: str) -> int:
    """`postgres (PostgreSQL) 18.6` -> 18, `... 15.14 (Debian 15.14-0+deb12u1)` -> 15;
    ValueError for anything else."""
    found = _VERSION.search(text)
    if found is None:
        raise ValueError(f"not a PostgreSQL version line: {text.strip()[:80]!r}")
    return int(found.group(1))


async def binaries_major(settings: PostgresSettings, *, timeout_s: float) -> int:
    """`<bin_dir>/postgres --version`, run as the PostgreSQL OS user. Raises PostgresError
    (the tool failed) or ValueError (an answer that is not a version)."""
    out = await run_tool(
        settings,
        [os.path.join(settings.bin_dir, "postgres"), "--version"],
        timeout_s=timeout_s,
        what="postgres --version",
    )
    return parse_major(out)
