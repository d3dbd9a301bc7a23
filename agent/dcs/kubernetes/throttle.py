"""What one handle knows of the API server's throttling (429 Too Many Requests), and the
priority it gives its requests while the server throttles (issue 15).

The server's limit is shared by the whole fleet, and each member learns of it only from the
429s its own requests get. So each member backs off what can wait, and keeps sending what
cannot:

- **Sent again after the Retry-After** (`KubeApi.call` with `resend=True`): the lock's
  writes (acquire, renew, release) and the records' compare-and-set, which the HA loop's
  decisions wait on. A leader that cannot renew within its deadline still fences, as ever:
  nothing here lengthens a deadline.
- **Deferred** (`resend=False`: a 429 fails the call at once): member heartbeats and record
  updates that only move WAL positions (`KubernetesDcs.publish_member` skips them while
  `throttling()`; a record whose role, state, address or tags changed is still sent, the
  newest one each cycle), reads from the server (`get_cluster`: the watches' caches serve
  the view meanwhile), and watch lists and re-opens (`watches.py`: they wait out the pause).
- **Reads that start a race** (a view with no live leader) do not wait for the pause, only
  for the last 429's Retry-After (jittered, doubled for each further 429 up to 8 times, never
  past the pause), and are not sent again inside the call: a fleet whose
  leaders the throttling cost would otherwise re-read every cycle, and take the tokens the
  remaining leaders' renewals need. And the members of a leaderless cluster read in turn,
  half a ttl apart, the lapsed holder first if it said it was throttled (turns.py).
- **Heartbeats wait** for `max_pause_s` after a 429 (`recent()`), not only for the pause:
  a member whose pause ended heartbeats again only once the fleet has gone that long
  without a 429 to it, or when its record changed in a way a peer wakes for.
- **Told by the leader** (`told()`): a member learns of the throttling from its own 429s,
  and a replica whose heartbeats happen to go through would keep sending them into a bucket
  the renewals need (at 100 clusters, most heartbeats sent while the fleet was throttled were
  each replica's sends before its own first 429). So a leader that got a 429 lately says so
  in the lock object it renews anyway (`refused_lately()`: a marker annotation, no extra
  request; the resend of the refused renewal itself carries it), and its replicas, seeing
  it on their watch of the lock, take it as a 429 of their own for `recent()` (heartbeats
  wait, quiet caches are expected) for as long as the marker is there and `told_s` after
  (a lapsed lock object that still carries it, too, up to `max_pause_s` after the write
  was first seen, as a 429 of their own: its cluster's members then read in turn; a
  cluster left leaderless must not defer its heartbeats for ever). Only a member's own
  429s decide its marker: a leader never re-announces what it was told.
- **A renewal's deadline outranks the Retry-After** (`RenewalSends`; `KubeApi.call` with
  `send_by`): a 429 is refused before the request runs (the test server's token bucket, as
  API priority and fairness and max-in-flight: it takes no token, no seat), and a leader
  gets only about three sends of a renewal spaced by the Retry-After (1 s from
  kube-apiserver, whatever its load) before its fencing deadline. So a refused renewal of a
  lock we hold waits the Retry-After while that ends before the renewal's last stretch
  (the last `URGENT_WINDOW_S` before the last moment it can be sent and answered before
  its fencing deadline); in that stretch it is sent again every `URGENT_SPACING_S` (x [1,
  1.5]), at most `URGENT_SENDS` times per renewal, and not at all past that last moment:
  the fencer acts then, as ever. Only renewals: nothing else is sent before its
  Retry-After.
- **Silence is expected** for `max_pause_s` after a 429 (`recent()`): heartbeats deferred
  and renewals sent again late leave watch streams quiet, which otherwise marks a stream as
  possibly dead (re-opened, its cache re-read from the server: requests the renewals need).
  Meanwhile the watches run until the server ends them (streams opened before the
  throttling began included), the caches are used however quiet, and a member record that
  expires on them is taken as expired without a read.

Every 429 starts or lengthens a pause: the Retry-After (1 s when absent; at least
`min_pause_s`), doubled for each 429 since the last deferred request that went through
(one doubling less for each such request), up to `max_pause_s`, times a random
factor in [1, 1 + `PAUSE_JITTER`] so that a fleet refused at once does not come back at
once. A deferred request that goes through takes one doubling back (the next pause is half as
long): the fleet's deferred demand rises again step by step once it fits. A Retry-After
waited out inside a call is jittered too, within what the call has left.

Pure bookkeeping on an injected clock and random source: no I/O, no sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable

PAUSE_JITTER = 0.5  # a pause lasts its base times a factor drawn from [1, 1.5]
RESEND_JITTER = 0.3  # a Retry-After waited out inside a call: [1, 1.3] times, room allowing
DEFAULT_RETRY_AFTER_S = 1.0  # a 429 without a usable Retry-After header
_MAX_DOUBLINGS = 8
# A refused renewal in the last stretch before the last moment it can be sent (see the
# module docstring): sent again this often (x [1, 1 + PAUSE_JITTER]), at most this many
# times per renewal (between two renewals that went through).
URGENT_WINDOW_S = 1.5
URGENT_SPACING_S = 0.1
URGENT_SENDS = 12


class ThrottleState:
    """This handle's throttling pause (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        max_pause_s: float,
        min_pause_s: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        """`min_pause_s`: the shortest pause, whatever the Retry-After (a heartbeat deferred
        by less than its own period is not deferred at all)."""
        if max_pause_s <= 0 or not 0 <= min_pause_s <= max_pause_s:
            raise ValueError("need 0 <= min_pause_s <= max_pause_s and max_pause_s > 0")
        self._clock = clock
        self._max_pause_s = max_pause_s
        self._min_pause_s = min_pause_s
        self._rng = rng or random.Random()
        self._doublings = 0
        self._until = 0.0  # monotonic end of the current pause
        self._last = float("-inf")  # monotonic time of the last 429
        self._retry_at = 0.0  # monotonic: the last 429's Retry-After (jittered) is over
        self._told_until = float("-inf")  # monotonic: a leader's throttled marker holds
        self.refusals = 0  # 429s seen, for the benches
        self.renewals = RenewalSends(clock=clock, rng=self._rng)

    def refused(self, retry_after_s: float | None) -> float:
        """A request got a 429: start or lengthen the pause (each 429 is a sign of the
        fleet's demand over the limit: several at once, as a member's three watches refused
        together, back it off further). Returns the pause's length from now."""
        self.refusals += 1
        now = self._clock()
        self._last = now
        base_s = DEFAULT_RETRY_AFTER_S if retry_after_s is None else retry_after_s
        # What must not wait for the pause waits the Retry-After, doubled (up to 8 times)
        # while refusals go on.
        again_s = self.jittered_s(base_s) * float(2 ** min(self._doublings, 3))
        base_s = max(base_s, self._min_pause_s, 0.1)
        pause_s = min(self._max_pause_s, base_s * float(2**self._doublings))
        pause_s *= 1 + PAUSE_JITTER * self._rng.random()
        self._retry_at = now + min(again_s, pause_s)
        self._doublings = min(self._doublings + 1, _MAX_DOUBLINGS)
        self._until = max(self._until, now + pause_s)
        return self._until - now

    def answered(self) -> None:
        """A deferred request went through: the pause after the next 429 is shorter."""
        self._doublings = max(0, self._doublings - 1)

    def throttling(self) -> bool:
        """True while a pause runs: what can wait, waits."""
        return self._clock() < self._until

    def retry_after_over(self) -> bool:
        """True once the last 429's own Retry-After (jittered, doubled while refusals go on)
        has passed: what must not wait for the whole pause (a read that starts a race for a
        free lock) waits that long."""
        return self._clock() >= self._retry_at

    def recent(self) -> bool:
        """True within `max_pause_s` of the last 429, or while told so by the leader
        (`told`): the fleet is being throttled, so heartbeats wait, and silence on a watch
        (heartbeats deferred, renewals sent again late) is expected, not a sign of a dead
        stream (watches.py, cache.py)."""
        return self.refused_lately() or self._clock() < self._told_until

    @property
    def max_pause_s(self) -> float:
        """How long after a 429 `recent()` holds."""
        return self._max_pause_s

    def refused_lately(self) -> bool:
        """True within `max_pause_s` of a 429 to this handle's own requests (what a leader
        tells its replicas: see the module docstring)."""
        return self._clock() - self._last < self._max_pause_s

    def told(self, for_s: float) -> None:
        """The leader's lock object says it was refused lately: `recent()` for `for_s`."""
        self._told_until = max(self._told_until, self._clock() + for_s)

    def pause_left_s(self) -> float:
        """Seconds until the current pause ends (0 when none runs)."""
        return max(0.0, self._until - self._clock())

    def jittered_s(self, retry_after_s: float) -> float:
        """A Retry-After with jitter: a fleet refused at once does not come back at once."""
        return retry_after_s * (1 + RESEND_JITTER * self._rng.random())

    def resend_delay_s(self, retry_after_s: float, room_s: float) -> float | None:
        """How long to wait before sending a refused request again inside its call, which
        has `room_s` left: the Retry-After with jitter, as much of it as the room allows;
        None when even the bare Retry-After does not fit (fail now, do not wait in vain)."""
        if retry_after_s >= room_s:
            return None
        return min(self.jittered_s(retry_after_s), retry_after_s + 0.8 * (room_s - retry_after_s))


class RenewalSends:
    """When a refused renewal of a lock we hold is sent again (see the module docstring):
    by its Retry-After, or by its deadline in the last stretch before it. One renewal at a
    time, known by its `send_by` (monotonic: the last moment it can be sent and answered
    before its fencing deadline); calls of the HA loop that come sooner than planned wait,
    and none is sent once it gave up."""

    def __init__(self, *, clock: Callable[[], float], rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self._send_by = float("nan")  # the renewal under way
        self._next_at = float("-inf")  # monotonic: not sent again before
        self._left = URGENT_SENDS  # early sends left to it
        self.urgent = 0  # renewals sent again before their Retry-After was over (benches)

    def _for(self, send_by: float) -> None:
        if send_by != self._send_by:  # a renewal of a new lease period
            self._send_by, self._next_at, self._left = send_by, float("-inf"), URGENT_SENDS

    def wait_s(self, send_by: float) -> float | None:
        """Seconds before the renewal may be sent (0: now); None once it gave up."""
        self._for(send_by)
        if self._next_at == float("inf"):
            return None
        return max(0.0, self._next_at - self._clock())

    def delay_s(
        self, retry_after_s: float | None, send_by: float, room_s: float = 0.0
    ) -> float | None:
        """The renewal was refused: how long before it is sent again. The Retry-After
        (jittered, x [1, 1 + RESEND_JITTER], the jitter cut to what the call has left,
        `room_s`, when the bare Retry-After fits in it) while it ends before the last
        `URGENT_WINDOW_S` before `send_by`; else the start of that stretch, or
        `URGENT_SPACING_S` (x [1, 1 + PAUSE_JITTER]) from now within it, while the renewal
        has early sends left; None (it gives up: the fencer acts at the deadline) when the
        next send would come after `send_by`."""
        self._for(send_by)
        now = self._clock()
        base_s = DEFAULT_RETRY_AFTER_S if retry_after_s is None else retry_after_s
        wait_s = base_s * (1 + RESEND_JITTER * self._rng.random())
        if base_s < room_s:
            wait_s = min(wait_s, base_s + 0.8 * (room_s - base_s))
        stretch_s = send_by - URGENT_WINDOW_S - now  # until the last stretch
        delay_s = wait_s
        if wait_s > stretch_s and self._left > 0:
            spacing_s = URGENT_SPACING_S * (1 + PAUSE_JITTER * self._rng.random())
            delay_s = min(wait_s, max(spacing_s, stretch_s))
        if now + delay_s > send_by:
            self._next_at = float("inf")
            return None
        if delay_s < wait_s:
            self._left -= 1
            self.urgent += 1
        self._next_at = now + delay_s
        return delay_s

    def answered(self) -> None:
        """The renewal went through: the next one starts afresh."""
        self._send_by = float("nan")
