"""Faults no profile had (session 24's hunt; tests/chaos/test_unlisted_faults.py).

- **A second agent with a member's name** (`duplicate-name-of-primary`,
  `duplicate-name-of-sync-standby`): an agent configured with the name of a running member
  (a copied configuration, a cloned VM) is started on a spare host with an empty data
  directory, as an operator adding a member would. Needs `ChaosCluster(spare_hosts=1)`.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import yaml

from tests.chaos.cluster import AGENT_SRC, ChaosCluster, Member, Proc
from tests.chaos.nemesis import Injected, Nemesis, heal_all
from tests.chaos.nemesis_hunt import _sync_standby
from tests.chaos.netns import kill_namespace_processes

# How long the second agent may take to see the name taken and exit (its start: the DCS read
# and one REST call to the member that holds the name).
DUPLICATE_EXIT_BOUND_S = 10.0


@dataclass(slots=True)
class DuplicateName:
    """Start an agent named like member `target(cluster, primary)` on spare host `s1`; the
    heal kills it and removes its directory. `exit_codes` gets, per run, its exit code when it
    exited within the hold (None: it still ran at the heal); `exited_after_s` when."""

    role: str  # "primary" or "sync-standby"
    exit_codes: list[int | None] = field(default_factory=list)
    exited_after_s: list[float | None] = field(default_factory=list)
    impostor: Member | None = None

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        index = primary if self.role == "primary" else await _sync_standby_of(cluster, primary)
        name = cluster.members[index].name
        host = cluster.network.hosts["s1"]
        base = cluster.base / "impostor"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        os.chmod(base, 0o755)
        entry = pwd.getpwnam("postgres")
        os.chown(base, entry.pw_uid, entry.pw_gid)
        config = base / "pgwarden.yaml"
        member = Member(
            name=name,
            host=host,
            base=base,
            agent=Proc(
                host=host,
                argv=[sys.executable, "-m", "agent", "run", "--config", str(config)],
                log=base / "agent.log",
                cwd=AGENT_SRC,
            ),
        )
        config.write_text(yaml.safe_dump(cluster.config_for(member), sort_keys=False))
        self.impostor = member
        at = time.monotonic()
        member.agent.start()
        code: int | None = None
        while time.monotonic() - at < DUPLICATE_EXIT_BOUND_S:
            popen = member.agent.popen
            if popen is not None and popen.poll() is not None:
                code = popen.returncode
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - at if code is not None else None
        self.exit_codes.append(code)
        self.exited_after_s.append(took)
        state = "still running" if code is None else f"exited with {code} after {took:.2f} s"
        return Injected(
            description=f"a second agent named {name} ({self.role}) started on {host.key} with "
            f"an empty data directory: {state}",
            instants=(at,),
        )

    def heal(self, cluster: ChaosCluster) -> None:
        if self.impostor is not None:
            self.impostor.agent.signal(signal.SIGKILL)
            kill_namespace_processes(self.impostor.host.netns)
            self.impostor.agent.wait(timeout=5)
        heal_all(cluster)


async def _sync_standby_of(cluster: ChaosCluster, primary: int) -> int:
    found = await _sync_standby(cluster, primary)
    return found if found is not None else (primary + 1) % len(cluster.members)


def duplicate_name(role: str, hold_s: float) -> tuple[Nemesis, DuplicateName]:
    """The duplicate-name fault against the primary's name or the synchronous standby's."""
    state = DuplicateName(role=role)
    return Nemesis(
        name=f"duplicate-name-of-{role}",
        script=state.script,
        heal=state.heal,
        hold_s=hold_s,
        must_not_lose=True,
        same_primary=True,
        quick=False,
    ), state
