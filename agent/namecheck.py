"""At start: refuse to run under a name another live agent of the cluster already runs under.

A member's name is its identity in the DCS: the leader key, its member record, its slot, its
place in the `sync` record. An agent started with the name of a running member (a copied
configuration, a cloned VM) took itself for that member restarted elsewhere: as the
primary's namesake with no data it found itself the leader and released the leader key, and
a replica was promoted under the running primary (chaos finding 24,
tests/chaos/test_unlisted_faults.py); as a replica's namesake it cloned and streamed under the
name the `sync` record vouches for. So before anything touches PostgreSQL or the DCS's
records, the agent reads the member record under its name; when it names another REST URL
and the agent there answers that it is this member of this cluster, it stops (exit 2).
A record whose URL does not answer is a former incarnation of this member (a pod
rescheduled on another address): not a reason to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from agent.dcs.base import Dcs, DcsError
from agent.settings import Settings

log = structlog.get_logger("pgwarden.app")

# (name, cluster) the agent at a URL says it runs as; None when it does not answer.
Identify = Callable[[str], Awaitable[tuple[str, str] | None]]


@dataclass(frozen=True, slots=True)
class NameInUse:
    """Another live agent runs as this member: why this one refuses to start."""

    url: str

    def message(self, settings: Settings) -> str:
        return (
            f"name: another agent runs as member {settings.name!r} of cluster "
            f"{settings.cluster!r} at {self.url} (its member record names that URL and it "
            "answers for this name); give this member a name of its own"
        )


async def name_in_use(
    settings: Settings, dcs: Dcs, identify: Identify, *, read_attempts: int = 3
) -> NameInUse | None:
    """The live agent that runs under our name elsewhere, if any. A DCS that cannot be read
    (after `read_attempts` reads, each bounded by the DCS's own timeouts) is not a reason to
    stop: the check is then skipped, with a warning."""
    view = None
    for attempt in range(read_attempts):
        try:
            view = await dcs.get_cluster()
            break
        except DcsError as exc:
            if attempt + 1 == read_attempts:
                log.warning("name_check_skipped", reason=f"the DCS does not answer: {exc}")
                return None
            await asyncio.sleep(settings.timing.loop_wait_s / 2)
    if view is None:
        return None
    record = next((m for m in view.members if m.name == settings.name), None)
    if record is None or record.api_url.rstrip("/") == settings.api.url.rstrip("/"):
        return None  # nobody, or our own record (a restart on the same address)
    answer = await identify(record.api_url)
    if answer == (settings.name, settings.cluster):
        return NameInUse(url=record.api_url)
    return None
