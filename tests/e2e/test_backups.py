"""End to end with pgBackRest (issue 17): WAL archiving on a real cluster, its health in
/health and the metrics (a read-only repository shows as failing), a full backup from a
replica (`ctl backup`: pgBackRest's backup-standby) and an incremental one on the primary, a
replica re-created from the repository while the primary takes writes, and a new cluster
bootstrapped from the repository (a backup taken from a replica) at a point in time between
two known commits.

On Debian's PostgreSQL 15 (`LocalCluster`'s default), which Debian's pgBackRest 2.45 is
built for. One repository (a path) and one cluster for the first test; the second destroys
that cluster and bootstraps a new one from the same repository.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from agent import ctl
from agent.localcluster import LocalCluster
from tests.support.cluster import E2E_TIMING, converge, converged, new_primary, wait_until
from tests.support.workload import AppWriter, ensure_table

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not os.path.exists("/usr/bin/pgbackrest"), reason="no pgbackrest"),
]


def _backup_config(repo: Path, stanza: str = "demo") -> dict[str, object]:
    return {
        "pgbackrest": {
            "repo_path": str(repo),
            "stanza": stanza,
            # Quick on a loaded 2-core machine: no compression.
            "options": {"compress-type": "none"},
        },
        "create_replica_methods": ["pgbackrest", "basebackup"],
    }


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pgwarden-backup-", dir="/tmp"))
    os.chmod(path, 0o755)
    repo = path / "repo"
    repo.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(repo, entry.pw_uid, entry.pw_gid)
    try:
        yield path
    finally:
        if not os.environ.get("KEEP_BACKUP_E2E_DIRS"):
            shutil.rmtree(path, ignore_errors=True)


def _cluster(base: Path, name: str, extra: dict[str, object]) -> LocalCluster:
    return LocalCluster(
        base=base / name, size=3, timing=dict(E2E_TIMING), cluster="demo", extra=extra
    )


async def _health(cluster: LocalCluster, index: int) -> dict[str, object]:
    async with cluster.api_session() as session:
        body = await cluster.health(session, index)
    return body or {}


async def _archiving(cluster: LocalCluster, index: int) -> dict[str, object]:
    value = (await _health(cluster, index)).get("archiving")
    return value if isinstance(value, dict) else {}


async def _sql(port: int, statement: str) -> object:
    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=5
    )
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


async def _archived_through(cluster: LocalCluster, primary: int) -> None:
    """Switch WAL and wait until the primary archived the segment it switched from."""
    port = cluster.members[primary].pg_port
    segment = await _sql(port, "SELECT pg_walfile_name(pg_switch_wal())")

    async def archived() -> bool:
        last = (await _archiving(cluster, primary)).get("last_archived_wal")
        return isinstance(last, str) and last >= str(segment)

    await wait_until(archived, timeout=30, what=f"{segment} archived")


async def _backup(cluster: LocalCluster, primary: int) -> str:
    """`pgwarden ctl backup` through any member (a healthy replica takes it, else the primary;
    it waits); what it printed."""
    out, err = io.StringIO(), io.StringIO()
    urls = ",".join(m.api_url for m in reversed(cluster.members))
    code = await ctl.run(
        ["backup", "--type", "full", "--poll-interval", "0.3"],
        env={"PGWARDEN_URL": urls, "PGWARDEN_TOKEN": cluster.token},
        out=out,
        err=err,
    )
    assert code == 0, (out.getvalue(), err.getvalue())
    return out.getvalue()


def _log_events(cluster: LocalCluster, index: int, event: str) -> list[dict[str, object]]:
    found = []
    for line in cluster.members[index].log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def _set_writable(path: Path, writable: bool) -> None:
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files, "."]:
            target = os.path.join(root, name)
            mode = os.stat(target).st_mode
            os.chmod(target, mode | 0o200 if writable else mode & ~0o222)


async def _primary_backs_up_itself(cluster: LocalCluster, primary: int) -> None:
    """POST /backup on the primary: an incremental backup of its own PostgreSQL (what ctl
    falls back to when no replica can take one; tests/unit/test_api_backup.py)."""
    headers = {"Authorization": f"Bearer {cluster.token}"}
    url = cluster.members[primary].api_url + "/backup"
    async with cluster.api_session() as session:
        async with session.post(url, json={"type": "incr"}, headers=headers) as r:
            body = await r.json()
            assert r.status == 202, body
        assert body["source"] == "primary" and body["member"] == cluster.members[primary].name

        async def done() -> bool:
            async with session.get(url) as r:
                status = await r.json()
            return status["running"] is False

        await wait_until(done, timeout=120, what="the primary's incremental backup")
        async with session.get(url) as r:
            last = (await r.json())["last"]
    assert last["ok"] is True and last["type"] == "incr", last


async def _standby_backup(cluster: LocalCluster, primary: int) -> int:
    """`ctl backup` takes the full backup from a replica (backup-standby); which one."""
    shown = await _backup(cluster, primary)
    leader = cluster.members[primary].name
    found = re.search(
        rf"full backup from the replica (\S+) \(backup-standby; primary {leader}\) done", shown
    )
    assert found is not None, shown
    index = next(i for i, m in enumerate(cluster.members) if m.name == found.group(1))
    (done,) = _log_events(cluster, index, "backup_done")
    assert done.get("ok") is True and done.get("source") == "standby", done
    return index


async def _recreate_under_load(cluster: LocalCluster, primary: int, replica: int) -> None:
    """Delete `replica`'s data and start it again while a writer inserts on the primary: it
    is restored from the repository and streams with every acknowledged row."""
    writer = AppWriter(hosts=[("127.0.0.1", cluster.members[primary].pg_port)], start_value=1_000)
    writer.start()
    cluster.stop_member(replica)
    shutil.rmtree(cluster.members[replica].data_dir)
    cluster.start_member(replica)

    async def recreated() -> bool:  # its first clone's event, then this one's
        return len(_log_events(cluster, replica, "replica_created")) == 2

    await wait_until(recreated, timeout=120, what="the replica re-created")
    async with cluster.api_session() as session:

        async def streaming() -> bool:
            health = await cluster.health(session, replica)
            return (health or {}).get("state") == "streaming" and await converged(cluster, session)

        await wait_until(streaming, timeout=120, what="the restored replica streaming")
    log = await writer.stop()
    created = _log_events(cluster, replica, "replica_created")
    failures = _log_events(cluster, replica, "replica_method_failed")
    assert [e.get("method") for e in created] == ["basebackup", "pgbackrest"], failures
    replica_port = cluster.members[replica].pg_port
    wanted = log.acked_values()
    assert wanted

    async def has_rows() -> bool:
        rows = await _sql(replica_port, "SELECT array_agg(value) FROM pgwarden_probe")
        return isinstance(rows, list) and wanted <= set(rows)

    await wait_until(has_rows, timeout=30, what="the writer's rows on the restored replica")


async def _read_only_repository_shows(cluster: LocalCluster, primary: int, repo: Path) -> None:
    """The repository made read-only: archiving fails, and /health and the metrics say so
    within a loop or two; writable again, it recovers."""
    port = cluster.members[primary].pg_port
    archive_dir = repo / "archive"
    _set_writable(archive_dir, False)
    try:
        await _sql(port, "INSERT INTO pgwarden_probe (value) VALUES (-1)")
        await _sql(port, "SELECT pg_switch_wal()")

        async def failing() -> bool:
            return (await _archiving(cluster, primary)).get("failing") is True

        took = await wait_until(failing, timeout=30, what="archiving reported failing")
        metrics_url = cluster.members[primary].api_url + "/metrics"
        async with cluster.api_session() as session, session.get(metrics_url) as r:
            metrics = await r.text()
        assert "pgwarden_archive_failing 1.0" in metrics
        print(f"archiving failure shown after {took:.1f} s")
    finally:
        _set_writable(archive_dir, True)

    async def recovered() -> bool:
        return (await _archiving(cluster, primary)).get("failing") is False

    await wait_until(recovered, timeout=90, what="archiving working again")


async def test_archiving_backup_and_a_replica_restored_from_the_repository(base: Path) -> None:
    repo = base / "repo"
    cluster = _cluster(base, "first", _backup_config(repo))
    try:
        cluster.start()
        primary = await converge(cluster, timeout=90)
        await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
        # No backup yet: the replicas' first method failed and they fell back to basebackup.
        for index in range(3):
            if index != primary:
                failed = _log_events(cluster, index, "replica_method_failed")
                assert [e.get("method") for e in failed] == ["pgbackrest"], failed
                created = _log_events(cluster, index, "replica_created")
                assert [e.get("method") for e in created] == ["basebackup"], created
        await _archived_through(cluster, primary)
        assert (await _archiving(cluster, primary))["failing"] is False

        # The full backup from a replica, an incremental one on the primary; the replica
        # re-created below restores that chain.
        standby = await _standby_backup(cluster, primary)
        await _primary_backs_up_itself(cluster, primary)
        replica = next(i for i in range(3) if i not in (primary, standby))
        await _recreate_under_load(cluster, primary, replica)
        await _read_only_repository_shows(cluster, primary, repo)
    finally:
        cluster.stop()


async def _source_history(base: Path, repo: Path) -> tuple[str, str, int]:
    """A cluster with a backup, a commit, a target time, another commit, archived, then
    destroyed: (the target time, a time a day ahead, its timeline)."""
    # A stanza of its own: the first test's belongs to another system (a new cluster pointed
    # at it is never opened to clients: stanza-create refuses).
    cluster = _cluster(base, "source", _backup_config(repo, "pitr"))
    try:
        cluster.start()
        primary = await converge(cluster, timeout=90)
        port = cluster.members[primary].pg_port
        await _sql(port, "CREATE TABLE IF NOT EXISTS pitr (id int, note text)")
        await _backup(cluster, primary)
        await _sql(port, "INSERT INTO pitr VALUES (1, 'before')")
        await asyncio.sleep(1.0)
        target = await _sql(port, "SELECT clock_timestamp()::text")
        await asyncio.sleep(1.0)
        await _sql(port, "INSERT INTO pitr VALUES (2, 'after')")
        timeline = (await _health(cluster, primary)).get("timeline")
        unreachable = await _sql(port, "SELECT (clock_timestamp() + interval '1 day')::text")
        await _archived_through(cluster, primary)
    finally:
        cluster.stop()
    shutil.rmtree(base / "source", ignore_errors=True)  # the cluster is gone, the repository stays
    assert isinstance(timeline, int)
    return str(target), str(unreachable), timeline


async def _unreachable_target_fails(base: Path, repo: Path, unreachable: str) -> None:
    """The bootstrap fails with PostgreSQL's reason and leaves nothing behind (an empty data
    directory, no leader)."""
    future = {"method": "pgbackrest", "stanza": "pitr", "recovery_target_time": unreachable}
    doomed = LocalCluster(
        base=base / "future",
        size=1,
        timing=dict(E2E_TIMING),
        cluster="demo",
        extra={**_backup_config(repo, "doomed"), "bootstrap": future},
    )
    try:
        doomed.start()

        async def failed() -> bool:
            return bool(_log_events(doomed, 0, "bootstrap_from_backup_failed"))

        await wait_until(failed, timeout=120, what="the unreachable target to fail")
        reason = str(_log_events(doomed, 0, "long_action_failed")[0]["error"])
        assert "recovery ended before configured recovery target was reached" in reason
        # Checked before the retry (after a 5 s pause) starts another restore.
        assert not any(doomed.members[0].data_dir.iterdir())
        async with doomed.api_session() as session:

            async def no_leader() -> bool:
                view = await doomed.cluster_json(session)
                return view is not None and view["leader"] is None

            await wait_until(no_leader, timeout=4, what="the claim withdrawn")
    finally:
        doomed.stop()


async def _basebackup_member_archives_once_it_leads(restored: LocalCluster, primary: int) -> None:
    """Every member has pgBackRest's configuration, not only those that ran a command."""
    candidate = (primary + 1) % 3
    async with restored.api_session() as session:
        code, answer = await restored.post(
            session, primary, "/switchover", {"candidate": restored.members[candidate].name}
        )
    assert code == 202, answer
    assert await new_primary(restored, primary, timeout=30) == candidate
    assert await converge(restored, timeout=60) == candidate
    await _archived_through(restored, candidate)
    assert (await _archiving(restored, candidate))["failing"] is False


async def test_a_new_cluster_bootstrapped_at_a_time_between_two_commits(base: Path) -> None:
    repo = base / "repo"
    target, unreachable, old_timeline = await _source_history(base, repo)
    await _unreachable_target_fails(base, repo, unreachable)

    # Restored from the source's stanza, archiving into its own (review R5).
    bootstrap = {"method": "pgbackrest", "stanza": "pitr", "recovery_target_time": target}
    # The other members clone from the new leader (its timeline, not the backup's).
    extra = {
        **_backup_config(repo, "restored"),
        "bootstrap": bootstrap,
        "create_replica_methods": ["basebackup"],
    }
    restored = _cluster(base, "restored", extra)
    try:
        restored.start()
        primary = await converge(restored, timeout=180)
        for index in range(3):  # exactly the row committed before the target, everywhere
            rows = await _sql(restored.members[index].pg_port, "SELECT array_agg(id) FROM pitr")
            assert rows == [1], index
        timeline = (await _health(restored, primary)).get("timeline")
        assert isinstance(timeline, int) and timeline > old_timeline
        await _basebackup_member_archives_once_it_leads(restored, primary)
        # Its timelines' history files went into its own stanza, none into the source's.
        archive = repo / "archive"
        # (The source may have made timelines of its own when it shut down: a SIGTERM hands
        # leadership over; the restored cluster's start past every one of them.)
        for tl in (timeline, timeline + 1):
            assert not list((archive / "pitr").rglob(f"{tl:08X}.history*")), tl
        # (The switchover's: pushed by the new primary, whose stanza existed by then.)
        assert list((archive / "restored").rglob(f"{timeline + 1:08X}.history*"))
    finally:
        restored.stop()
