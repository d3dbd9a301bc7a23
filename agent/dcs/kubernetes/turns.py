"""Turns for the read that starts a race for a free lock, while the server throttles
(issue 15, throttle.py).

A view with no live leader is never served by the watches' caches: a race for the lock starts
from it and is judged by fresh records, so each member whose view shows no leader reads the
cluster from the server (a pod list and two gets), then races (a guard read and a write).
While the server throttles, three members of every leaderless cluster doing so at once took
the tokens that the remaining leaders' renewals needed, and each leader that lost its lease
then made three more readers (at 100 clusters with every request throttled at 60/s). So,
only while the server has throttled lately (`recent()`: a 429 of this member's own, or the
lock object's last write says its holder was being throttled, `told`, which holds for as
long as the lock object still says so, lapsed too, up to `max_pause_s` after that write was
first seen), the members of a leaderless cluster
read in turn: the first at once, each next one a turn (`turn_s`) later,
counted from when this member's view first showed no leader. A member whose turn has not
come waits on its watches: the first one's acquisition reaches it there and ends the wait
with no request.

The order, from what the caches hold (no request):
- the lock's last holder first if its last write said it was being throttled (the
  `pgwarden.io/throttled` marker, throttle.py `told`): a leader that lost its lease to the
  throttling, not to death, is the one to take it back (in asynchronous replication, its WAL
  is the newest: nothing it acknowledged is lost). A holder that said nothing of the sort
  stopped renewing for another reason, likely dead: it goes last;
- then the others whose member records are live on this member's clock, by the WAL position
  their records last showed, the most advanced first, then by name (the same order on every
  member, so turns do not collide);
- then those whose records expired, in the same order: a member that crash-loops, or died
  long ago, carrying a high old WAL position would otherwise take a turn (half a ttl) ahead of
  the live ones (review hreview3 finding 7). Observers may disagree on which records expired
  near the moment they do: that costs a turn or a request, never safety (below).

Nothing here is a safety rule: a member that reads out of turn (its caches differ) only costs
requests, and every acquisition stays a compare-and-set on the lock. What it costs: the
failover of a cluster whose first member in turn is dead too (the holder itself, if it died
while throttled) is late by a turn (half a ttl, `backend.py`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from agent.dcs.kubernetes.api import Throttled
from agent.dcs.kubernetes.holding import says_throttled
from agent.dcs.kubernetes.locks import LockObject
from agent.dcs.kubernetes.objects import KubeObject, member_entry

_POSITIONS = ("wal_lsn", "replay_lsn")


class RaceTurns:
    """When this member may read a leaderless cluster from the server (see the docstring)."""

    def __init__(self, member: str, *, turn_s: float) -> None:
        self._member = member
        self._turn_s = turn_s
        self._since: float | None = None  # monotonic: the view first showed no leader

    def seen(self, leaderless: bool, now: float) -> None:
        """What the last view (from the caches or the server) showed."""
        if not leaderless:
            self._since = None
        elif self._since is None:
            self._since = now

    def wait(
        self,
        pods: list[Any],
        kinds: Sequence[LockObject],
        locks: Sequence[KubeObject | None],
        now: float,
        *,
        live: Collection[str],
    ) -> None:
        """Raise `Throttled` until this member's turn to read, judged from the cached pods
        and lock objects (`kinds`: the kind of each; `live`: the members whose records are
        live on our clock)."""
        if (wait_s := self.wait_s(pods, kinds, locks, now, live=live)) > 0:
            raise Throttled(f"kubernetes: get_cluster: no leader, turn to read in {wait_s:.1f} s")

    def wait_s(
        self,
        pods: list[Any],
        kinds: Sequence[LockObject],
        locks: Sequence[KubeObject | None],
        now: float,
        *,
        live: Collection[str],
    ) -> float:
        """Seconds until this member's turn to read (0: now); see `wait`."""
        if self._since is None:
            return 0.0
        named = (kind.holder(obj) for kind, obj in zip(kinds, locks, strict=True) if obj)
        holder = next((name for name in named if name), "")
        order = turn_order(pods, holder, throttled=says_throttled(list(locks)), live=live)
        turn = order.index(self._member) if self._member in order else len(order)
        return max(0.0, self._since + turn * self._turn_s - now)


def turn_order(
    pods: list[Any], holder: str, *, throttled: bool, live: Collection[str]
) -> list[str]:
    """The members carried by `pods`, in their turn to read (see the module docstring;
    `live`: the members whose records are live on this member's clock)."""
    positions: dict[str, int] = {}
    for pod in pods:
        entry = member_entry(pod)
        if entry is not None:
            positions[entry[0]] = _position(entry[1])
    others = sorted(
        (n for n in positions if n != holder),
        key=lambda n: (n not in live, -positions[n], n),
    )
    if not holder:
        return others
    return [holder, *others] if throttled else [*others, holder]


def _position(record: str) -> int:
    """The furthest WAL position a member record shows (0 when none)."""
    try:
        data = json.loads(record)
    except ValueError:
        return 0
    if not isinstance(data, dict):
        return 0
    values = [data.get(key) for key in _POSITIONS]
    return max((v for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0)
