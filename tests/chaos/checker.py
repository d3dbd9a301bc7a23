"""The invariant checker: pure functions of the recorded attempts and the members' row sets.

(a) split brain: for each member, its member-writer's runs of consecutive acknowledged inserts
    (no failed attempt in between, 50 ms apart) are intervals during which it accepted writes.
    A commit is known only to lie within [sent, ended] of its attempt, so a run is credited
    with [first.ended, last.sent] only (the part certainly covered). A split-brain instant is
    an acknowledged write served by another member whose whole [sent, ended] lies inside such
    an interval: at that instant two members acknowledged writes.
(b) loss: acknowledged values absent from the final primary.
(d) divergence: rows a member holds that the primary does not, or rows it still lacks after
    catching up.
Write unavailability: the longest stretch without an acknowledged write of the application
writer within a window; the write gap of each fault: the same, from the last ack before that
fault to the next fault.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.chaos.workload import Attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    member: str
    start: float
    end: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitBrain:
    at: float  # the ack's end
    member: str  # who served the ack
    while_writable: str  # the member whose writable interval contains it


def writable_intervals(attempts: Iterable[Attempt], members: Iterable[str]) -> list[Interval]:
    """Per member, the certain parts of its runs of consecutive acks by its own writer."""
    names = set(members)
    out: list[Interval] = []
    by_writer: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        if attempt.writer in names:
            by_writer.setdefault(attempt.writer, []).append(attempt)
    for name, own in by_writer.items():
        own.sort(key=lambda a: a.sent)
        for acked, group in itertools.groupby(own, key=lambda a: a.acked):
            run = list(group)
            if acked and run[-1].sent > run[0].ended:
                out.append(Interval(member=name, start=run[0].ended, end=run[-1].sent))
    return out


def split_brain_instants(attempts: Sequence[Attempt], members: Iterable[str]) -> list[SplitBrain]:
    """Acknowledged writes served by one member while another certainly accepted writes."""
    intervals = writable_intervals(attempts, members)
    found = []
    for attempt in attempts:
        if not attempt.acked or attempt.member is None:
            continue
        for interval in intervals:
            if (
                interval.member != attempt.member
                and interval.start <= attempt.sent
                and attempt.ended <= interval.end
            ):
                found.append(
                    SplitBrain(
                        at=attempt.ended, member=attempt.member, while_writable=interval.member
                    )
                )
                break
    return found


def lost_writes(attempts: Iterable[Attempt], final_rows: set[int]) -> list[Attempt]:
    """Acknowledged attempts whose value the final primary does not hold."""
    return [a for a in attempts if a.acked and a.value not in final_rows]


def divergence(member_rows: set[int], primary_rows: set[int]) -> tuple[int, int]:
    """(rows the member has that the primary has not, rows it lacks)."""
    return len(member_rows - primary_rows), len(primary_rows - member_rows)


def longest_unavailability(
    attempts: Iterable[Attempt], *, writer: str, start: float, end: float
) -> float:
    """Longest time within [start, end] without an acknowledged write of `writer`."""
    times = sorted(a.ended for a in attempts if a.writer == writer and a.acked)
    inside = [t for t in times if start <= t <= end]
    points = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(points))


def gaps_after(
    attempts: Iterable[Attempt], *, writer: str, instants: Sequence[float], end: float
) -> list[float]:
    """Per fault instant, the longest time without an acknowledged write of `writer` from its
    last ack before the instant up to the next instant (or `end`): the write gap that fault
    caused, counted from the last write that got through before it."""
    times = sorted(a.ended for a in attempts if a.writer == writer and a.acked)
    out = []
    for start, stop in zip(instants, [*instants[1:], end], strict=True):
        before = [t for t in times if t < start]
        inside = [t for t in times if start <= t <= stop]
        points = [before[-1] if before else start, *inside, stop]
        out.append(max(b - a for a, b in itertools.pairwise(points)))
    return out
