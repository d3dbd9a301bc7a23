"""End to end, callbacks: real etcd, three real PostgreSQL, three agents, every callback set to
a script that appends its arguments to one file (the member's name is the command's own first
word).

One scenario, in order, on one cluster: pg-0 bootstraps alone (post_bootstrap creates a
database, and finds that no TCP client can connect meanwhile), pg-1 and pg-2 clone; pg-0 is
SIGKILLed with its PostgreSQL; pg-1 (failover priority 2, so it races first) takes the
lease, its pre_promote exits 1 and vetoes, it hands the lease back and pg-2 takes over, whose
on_role_change hangs and is killed at its 2 s timeout while pg-2 keeps the lease; pg-0
rejoins as a replica; pg-1 is restarted (on_restart) and stopped (on_stop).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from agent.localcluster import LocalCluster
from tests.support.cluster import (
    E2E_TIMING,
    converge,
    new_base,
    new_primary,
    start_first_member,
    started,
    wait_until,
)
from tests.support.pgversions import PgInstall

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TTL = E2E_TIMING["ttl_s"]
CALLBACK_TIMEOUT_S = 2.0

RECORD = '#!/bin/sh\necho "$*" >> {log}\n'
VETO = '#!/bin/sh\necho "$*" >> {log}\nexit 1\n'
HANG = '#!/bin/sh\necho "$*" >> {log}\nsleep 60\necho "$* finished" >> {log}\n'
# It also notes whether a TCP client could reach the new primary meanwhile (review R4).
POST_BOOTSTRAP = (
    '#!/bin/sh\necho "$*" >> {log}\n'
    "if python3 -c 'import os, socket; "
    'socket.create_connection(("127.0.0.1", int(os.environ["PGPORT"])), 2)\' 2>/dev/null; '
    'then echo "$* tcp open" >> {log}; else echo "$* tcp refused" >> {log}; fi\n'
    'exec /usr/bin/psql -v ON_ERROR_STOP=1 -qc "CREATE DATABASE appdb"\n'
)


@pytest.fixture(scope="module")
def scripts() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pgwarden-e2e-callbacks-", dir="/tmp"))
    os.chmod(path, 0o777)  # the callbacks run as postgres
    log = path / "calls.log"
    for name, text in (("record", RECORD), ("veto", VETO), ("hang", HANG),
                       ("post", POST_BOOTSTRAP)):  # fmt: skip
        script = path / f"{name}.sh"
        script.write_text(text.format(log=log))
        script.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _callbacks(scripts: Path, name: str) -> dict[str, object]:
    record = f"{scripts}/record.sh {name}"
    return {
        "on_start": record,
        "on_stop": record,
        "on_restart": record,
        "on_role_change": f"{scripts}/hang.sh {name}",
        "pre_promote": f"{scripts}/veto.sh {name}" if name == "pg-1" else record,
        "post_bootstrap": f"{scripts}/post.sh {name}",
        "timeout_s": CALLBACK_TIMEOUT_S,
    }


@pytest.fixture(scope="module")
def cluster(scripts: Path, pg_install: PgInstall) -> Iterator[LocalCluster]:
    running = LocalCluster(
        base=new_base(), size=3, timing=dict(E2E_TIMING), pg_bin=pg_install.bin_dir
    )
    for member in running.members:
        extra: dict[str, object] = {"callbacks": _callbacks(scripts, member.name)}
        if member.name == "pg-1":
            extra["tags"] = {"failover_priority": 2}
        running.member_extra[member.name] = extra
    with started(running, start_first_member):  # pg-0 alone: it bootstraps
        yield running


def _calls(scripts: Path) -> list[str]:
    log = scripts / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def _events(member_log: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in member_log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


async def test_every_callback_is_called_with_its_arguments_and_a_veto_hands_over(
    cluster: LocalCluster, scripts: Path
) -> None:
    async with aiohttp.ClientSession() as session:

        async def pg0_leads() -> bool:
            return await cluster.primary_index(session) == 0

        await wait_until(pg0_leads, timeout=60, what="pg-0 bootstrapped")
    cluster.start_member(1)
    cluster.start_member(2)
    assert await converge(cluster, timeout=60) == 0
    calls = _calls(scripts)
    assert calls.count("pg-0 post_bootstrap primary demo") == 1
    assert "pg-0 post_bootstrap primary demo tcp refused" in calls  # on its socket only
    assert "pg-0 on_start primary demo" in calls
    assert "pg-1 on_start replica demo" in calls
    assert "pg-2 on_start replica demo" in calls
    assert not [c for c in calls if "post_bootstrap" in c and not c.startswith("pg-0")]
    # post_bootstrap ran on the new primary before anyone cloned it: the replicas have appdb.
    conn = await asyncpg.connect(
        host="127.0.0.1", port=cluster.members[2].pg_port, user="postgres", database="appdb"
    )
    await conn.close()

    # The primary dies; pg-1 races first, vetoes, hands the lease back; pg-2 takes over.
    t0 = time.monotonic()
    cluster.kill_member(0)
    assert await new_primary(cluster, old=0, timeout=4 * TTL) == 2
    failover_s = time.monotonic() - t0
    print(f"failover with a pre_promote veto: {failover_s:.2f} s")
    assert failover_s < TTL + 5.0, failover_s
    calls = _calls(scripts)
    assert "pg-1 pre_promote replica demo" in calls
    assert "pg-2 pre_promote replica demo" in calls
    assert calls.index("pg-1 pre_promote replica demo") < calls.index(
        "pg-2 pre_promote replica demo"
    )
    assert _events(cluster.members[1].log_path, "promotion_vetoed")
    assert "pg-1 on_role_change primary demo" not in calls

    # pg-2's on_role_change hangs: killed at its timeout, while pg-2 keeps its lease.
    async def hang_killed() -> bool:
        return bool(
            [
                e
                for e in _events(cluster.members[2].log_path, "callback_done")
                if e.get("callback") == "on_role_change" and e.get("result") == "timeout"
            ]
        )

    await wait_until(hang_killed, timeout=CALLBACK_TIMEOUT_S + 5, what="on_role_change killed")
    done = [
        e
        for e in _events(cluster.members[2].log_path, "callback_done")
        if e.get("callback") == "on_role_change"
    ]
    assert CALLBACK_TIMEOUT_S <= float(done[0]["duration_s"]) < CALLBACK_TIMEOUT_S + 3.0  # type: ignore[arg-type]
    assert "pg-2 on_role_change primary demo" in _calls(scripts)
    assert "pg-2 on_role_change primary demo finished" not in _calls(scripts)
    async with aiohttp.ClientSession() as session:
        assert await cluster.primary_index(session) == 2

    # pg-0 rejoins as a replica; pg-1 is restarted, then stopped.
    cluster.start_member(0)
    assert await converge(cluster, timeout=60) == 2
    async with aiohttp.ClientSession() as session:
        status, _ = await cluster.post(session, 1, "/restart", {})
        assert status == 202

        async def restarted() -> bool:
            return "pg-1 on_restart replica demo" in _calls(scripts)

        await wait_until(restarted, timeout=30, what="pg-1 on_restart")
    assert _calls(scripts).count("pg-0 on_start replica demo") == 1
    cluster.stop_member(1)
    assert "pg-1 on_stop replica demo" in _calls(scripts)
