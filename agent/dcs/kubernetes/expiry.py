"""Expiry judged on the observer's own monotonic clock (DESIGN.md invariant 4): pods and
lock objects do not expire, so each handle times what it sees itself, never trusting
timestamps written by others (their clocks may be wrong; a stopped writer writes none).

Pure: every time is passed in. A record (key `leader` or `members/<name>`) whose token has
not changed for `ttl_s` since this observer first saw that token is expired. The token is
whatever the writer changes when it renews (the lock object's resourceVersion; a member's
record plus its heartbeat); `rv` orders observations, so an older one read late (a list
racing a watch) never restarts a newer clock. A new observer gives every record a full
`ttl_s` of its own. Implements `changes.Timers`: each expiry is reported once.

A lock object also vouches for the member record of the member it names (`note(...,
vouches=)`): each renewal seen restarts that record's clock too, so the leader need not
heartbeat its record while it renews (members.py), and a dead leader's record expires one
ttl after its last renewal was seen, as the lock does. A record the lock no longer names
keeps the clock its last vouching renewal gave it.

A record seen gone at a resourceVersion (`forget(key, rv=)`: a lock released or deleted)
is not brought back by an older observation: a watch cache that lags or whose stream died
silently, still showing the holder the server no longer shows, would otherwise be taken as
first seen now and make a dead leader (and, through `vouches`, its member record) look live
for another ttl (review hreview3). Absences are ordered the same way: a record is forgotten
only by an observation at least as new as the one that showed it (`rv`), so a cache that lags
(a pod list from before a member's last write) cannot make a record first seen again at the
next read from the server, which would give it a fresh ttl each time (member records: the
lists a handle evaluates, watches' caches and server reads, are complete as of at least the
newest resourceVersion of the pods they show).

A member record written by the same agent instance as the one seen before it (`written`)
starts its clock no later than our first sight of it, and otherwise at our sight of that one
plus the time between the two writes on the writer's own clock (`_dated`): a write seen late
(a pods stream that died without a word) is timed from about when it was made.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, kw_only=True)
class _Seen:
    token: str
    rv: int
    first_seen: float  # monotonic: its clock starts here (first seen, or dated: `written`)
    seen_at: float  # monotonic, when `token` was first seen
    written: tuple[str, float] | None = None  # (writer instance, its monotonic at the write)
    source: str = ""  # the object carrying the record (a pod name), if any
    expiry_told: bool = False


class ObservedExpiry:
    """What one handle saw of each record, and since when."""

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._ttl_s = ttl_s
        self._seen: dict[str, _Seen] = {}
        self._gone: dict[str, int] = {}  # key -> the resourceVersion it was seen gone at

    def note(
        self,
        key: str,
        token: str,
        rv: int,
        now: float,
        *,
        source: str = "",
        vouches: str | None = None,
        written: tuple[str, float] | None = None,
    ) -> bool:
        """Remember what we saw of a record at `now` (carried by the object `source`);
        True while it is not expired. `vouches`: the key of the member record this one (a
        lock object's leader record) names; a new token here restarts that one's clock.
        `written`: the writer's instance and monotonic clock at the write (see `_dated`)."""
        gone = self._gone.get(key)
        if gone is not None:
            if rv <= gone:
                return False  # from before it went away: stale, nothing to time
            del self._gone[key]
        seen = self._seen.get(key)
        if seen is None or (seen.token != token and rv >= seen.rv):
            first = now if seen is None else _dated(seen, written, now)
            seen = _Seen(token=token, rv=rv, first_seen=first, seen_at=now, written=written)
            self._seen[key] = seen
            vouched = self._seen.get(vouches) if vouches is not None else None
            if vouched is not None and vouched.first_seen < now:
                vouched.first_seen = now
                vouched.expiry_told = False
        if source:
            seen.source = source
        return now - seen.first_seen < self._ttl_s

    def is_expired(self, key: str, rv: int, now: float) -> bool:
        """True if the record is still at `rv` as we last saw it, and that is `ttl_s` old."""
        seen = self._seen.get(key)
        return seen is not None and seen.rv == rv and now - seen.first_seen >= self._ttl_s

    def age_s(self, key: str, now: float) -> float | None:
        """How long ago the record's current token was first seen (None: not seen)."""
        seen = self._seen.get(key)
        return None if seen is None else now - seen.first_seen

    def forget(self, key: str, *, rv: int | None = None) -> None:
        """The record went away (at `rv`, when known: nothing older counts again, and an
        absence older than what we saw of the record is itself stale and changes nothing)."""
        if rv is None:
            self._seen.pop(key, None)
            return
        seen = self._seen.get(key)
        if seen is not None and rv < seen.rv:
            return  # a list from before the write we saw: it says nothing of now
        self._seen.pop(key, None)
        self._gone[key] = max(rv, self._gone.get(key, rv))

    def forget_all_but(self, keep: set[str], *, prefix: str, rv: int) -> None:
        """Forget the records under `prefix` that are not in `keep` (a list complete as of
        at least `rv`; see `forget`)."""
        for key in [k for k in self._seen if k.startswith(prefix) and k not in keep]:
            self.forget(key, rv=rv)

    def forget_source(self, source: str, *, prefix: str, rv: int) -> None:
        """Forget the records under `prefix` carried by `source` (its object went away, or
        its record, at `rv`; see `forget`)."""
        for key in [k for k, s in self._seen.items() if k.startswith(prefix)]:
            if self._seen[key].source == source:
                self.forget(key, rv=rv)

    def take_due(self, now: float) -> bool:
        """True if a record expired at `now` that was not reported before; reports it."""
        told = False
        for seen in self._seen.values():
            if not seen.expiry_told and now - seen.first_seen >= self._ttl_s:
                seen.expiry_told = True
                told = True
        return told

    def next_due(self) -> float | None:
        """When the next record not yet reported expires, if nothing renews it."""
        pending = [s.first_seen + self._ttl_s for s in self._seen.values() if not s.expiry_told]
        return min(pending) if pending else None


def _dated(before: _Seen, written: tuple[str, float] | None, now: float) -> float:
    """When the clock of a record's new token starts, first seen at `now`: no later than
    that, and, if one agent instance wrote both it and the token `before`, at our first sight
    of that one plus the time between the two writes on the writer's own clock (a difference
    on one clock, never compared with ours): a write seen late (a pods stream that died
    without a word, found quiet seconds later) is timed from about when it was made, so a
    member that died after it goes a ttl after its last write, not after our first sight of
    it. Never earlier than our sight of the write before plus the writer's own gap (so never
    before the write itself), nor than a clock a lock's renewal restarted (`vouches`). One
    step only (from our sight of the last token seen, not from a dated one): the two clocks'
    rates may differ by a few hundred parts per million, which must not add up."""
    if written is None or before.written is None or written[0] != before.written[0]:
        return now
    gap_s = written[1] - before.written[1]
    if gap_s <= 0:
        return now
    return min(now, max(before.seen_at + gap_s, before.first_seen))
