"""End to end: a member whose PostgreSQL is of another major version than the leader's
refuses to join, says why, and touches no data (agent/decide/member.py, `major_refusal`).

Two agents start together, one on each installed version: whichever bootstraps leads, the
other never clones (pg_basebackup across majors would fail anyway, and a replica of another
major would be worse) and logs the refusal in every `ha_cycle` event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from agent.localcluster import LocalCluster
from agent.localproc import LocalMember
from tests.support.cluster import E2E_TIMING, new_base, started, wait_until
from tests.support.pgversions import KNOWN, PgInstall, find_install

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@dataclass(kw_only=True)
class MixedCluster(LocalCluster):
    """pg-1 runs the binaries of `other_bin`, pg-0 those of `pg_bin`."""

    other_bin: str = ""
    majors: dict[str, int] = field(default_factory=dict)

    def config_for(self, member: LocalMember) -> dict[str, object]:
        config = super().config_for(member)
        postgresql = config["postgresql"]
        assert isinstance(postgresql, dict)
        if member.name == "pg-1":
            postgresql["bin_dir"] = self.other_bin
        return config


@pytest.fixture(scope="module")
def cluster(pg_install: PgInstall) -> Iterator[MixedCluster]:
    others = [m for m in KNOWN if m != pg_install.major and find_install(m) is not None]
    if not others:
        pytest.skip("needs a second PostgreSQL major version installed")
    other = find_install(others[0])
    assert other is not None
    running = MixedCluster(
        base=new_base("pgwarden-major-"),
        size=2,
        timing=dict(E2E_TIMING),
        cluster="major",
        pg_bin=pg_install.bin_dir,
        other_bin=other.bin_dir,
        majors={"pg-0": pg_install.major, "pg-1": other.major},
    )
    with started(running):
        yield running


def _reasons(member: LocalMember) -> list[str]:
    out = []
    for line in member.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "ha_cycle":
            out.append(str(event.get("reason", "")))
    return out


async def test_a_member_of_another_major_refuses_to_join_and_touches_no_data(
    cluster: MixedCluster,
) -> None:
    leader: list[int] = []

    async def one_primary() -> bool:
        async with aiohttp.ClientSession() as session:
            index = await cluster.primary_index(session)
        leader[:] = [] if index is None else [index]
        return index is not None

    await wait_until(one_primary, timeout=60, what="a primary")
    other = cluster.members[1 - leader[0]]
    mine, theirs = cluster.majors[other.name], cluster.majors[cluster.members[leader[0]].name]
    wanted = f"this member runs PostgreSQL {mine} but the leader"

    async def refused() -> bool:
        return any("refusing to join" in r and wanted in r for r in _reasons(other))

    await wait_until(refused, timeout=30, what=f"{other.name} refusing to join")
    assert any(f"runs PostgreSQL {theirs}" in r for r in _reasons(other))
    assert not (other.data_dir / "PG_VERSION").exists(), "the refusing member made a data dir"
    assert other.postmaster_pid() is None
