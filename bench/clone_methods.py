"""Clone a replica from the pgBackRest repository vs. pg_basebackup from the primary.

A primary (PostgreSQL 15, archiving to a pgBackRest repository on a local path) gets a
pgbench database of `--scale` (100 is about 1.5 GB), a full backup, then more writes (so a
restored replica has WAL to replay from the archive). Each run re-creates the same replica
both ways, through the agent's own code (agent/postgres/restore.py with one method), and
times from an empty data directory to the replica streaming from the primary. Prints the
median and the spread of `--runs` runs per method, and how long the backup took.

    .venv/bin/python bench/clone_methods.py [--scale 100] [--runs 3] [--compress none|lz4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.api_settings import ApiSettings
from agent.backup_settings import PgBackRestSettings, ReplicaMethod
from agent.dcs_settings import DcsKind, DcsSettings, EtcdSettings
from agent.postgres import bootstrap, pgbackrest, restore
from agent.postgres.process import Postmaster, StopMode
from agent.settings import Settings
from tests.support.pgversions import DEBIAN_15_BIN, PgInstall
from tests.support.postgres import (
    PgNode,
    eventually,
    kill_leftovers,
    make_nodes,
    pg_base_dir,
)


def _settings(node: PgNode, repo: str, compress: str, method: ReplicaMethod) -> Settings:
    return Settings(
        name=node.name,
        cluster="bench",
        run_dir=node.run_dir,
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=node.settings,
        api=ApiSettings(insecure_no_auth=True),
        pgbackrest=PgBackRestSettings(
            repo_path=repo, options=(("compress-type", compress), ("process-max", "2"))
        ),
        create_replica_methods=(method,),
    )


def _pgbench(node: PgNode, *args: str) -> None:
    who = node.postmaster.who()
    subprocess.run(
        [os.path.join(node.settings.bin_dir, "pgbench"), "-h", "127.0.0.1", "-p",
         str(node.port), "-U", "postgres", *args, "postgres"],
        check=True, user=who.user, group=who.group, capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": "su per'pa\\ss"},
    )  # fmt: skip


async def _streaming(primary: PgNode, replica: PgNode) -> bool:
    rows = await primary.postmaster.fetch(
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1"
        " AND state = 'streaming'",
        replica.name,
        timeout_s=5.0,
    )
    return rows[0][0] == 1


async def _one_clone(
    primary: PgNode, replica: PgNode, settings: Settings, timeout_s: float
) -> float:
    await replica.postmaster.stop(StopMode.FAST, timeout_s=60)
    bootstrap.clear_data_dir(replica.settings)
    start = time.monotonic()
    standby = replica.standby_of(primary)
    await restore.clone_by_methods(settings, standby, timeout_s=timeout_s)
    await replica.postmaster.start(standby=standby, timeout_s=timeout_s)
    await eventually(lambda: _streaming(primary, replica), timeout_s=timeout_s, interval_s=0.2)
    return time.monotonic() - start


async def main(scale: int, runs: int, compress: str) -> None:
    with pg_base_dir() as base:
        repo = os.path.join(base, "repo")
        os.mkdir(repo)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(repo, entry.pw_uid, entry.pw_gid)
        nodes = make_nodes(base, ["primary", "replica"], install=PgInstall(15, DEBIAN_15_BIN))
        primary, replica = nodes
        by_method = {
            m: _settings(replica, repo, compress, m)
            for m in (ReplicaMethod.PGBACKREST, ReplicaMethod.BASEBACKUP)
        }
        primary_settings = _settings(primary, repo, compress, ReplicaMethod.BASEBACKUP)
        primary.postmaster = Postmaster(
            primary.settings,
            member_name=primary.name,
            run_dir=primary.run_dir,
            archive=pgbackrest.archive_settings(primary_settings),
        )
        parameters = (*primary.settings.parameters, ("max_wal_size", "2GB"))
        for node in nodes:
            node.settings = replace(node.settings, parameters=parameters)
        try:
            await bootstrap.initdb(primary.settings, run_dir=primary.run_dir)
            await primary.postmaster.start(standby=None, timeout_s=60)
            await bootstrap.create_roles(primary.postmaster, primary.settings)
            await bootstrap.ensure_slots(primary.postmaster, [replica.slot])
            await pgbackrest.stanza_create(primary_settings)
            t0 = time.monotonic()
            _pgbench(primary, "-i", "-q", "-s", str(scale))
            load_s = time.monotonic() - t0
            size = await primary.postmaster.fetch(
                "SELECT pg_size_pretty(pg_database_size('postgres'))", timeout_s=10
            )
            t0 = time.monotonic()
            await pgbackrest.backup(primary_settings, pgbackrest.BackupType.FULL)
            backup_s = time.monotonic() - t0
            _pgbench(primary, "-c", "2", "-T", "20")  # WAL after the backup, to replay
            await primary.postmaster.execute("SELECT pg_switch_wal()", timeout_s=10)
            times: dict[ReplicaMethod, list[float]] = {m: [] for m in by_method}
            for _ in range(runs):
                for method, settings in by_method.items():
                    times[method].append(await _one_clone(primary, replica, settings, 3600))
                    print(f"  {method.value}: {times[method][-1]:.1f} s", file=sys.stderr)
        finally:
            for node in nodes:
                await node.postmaster.close()
            kill_leftovers(nodes)
    print(f"database {size[0][0]} (pgbench scale {scale}, loaded in {load_s:.0f} s), "
          f"full backup {backup_s:.1f} s, compress-type {compress}, {runs} runs")  # fmt: skip
    print("| method | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for method, values in times.items():
        print(f"| {method.value} | {statistics.median(values):.1f} | {min(values):.1f} | "
              f"{max(values):.1f} |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compress", default="none", choices=("none", "lz4", "gz", "zst"))
    args = parser.parse_args()
    asyncio.run(main(args.scale, args.runs, args.compress))
