"""The cluster's keys as one etcd handle knows them: its last full read, plus every event its
watch delivered after it. agent/dcs/etcd.py answers `get_cluster` and the renewal's "is the
leader key still ours" from here when the mirror is current, instead of asking etcd each
cycle (issue 15: the watch already says what changed).

Current means all of (`Mirror.current`):

- loaded: a full read, and no event the watch delivered is newer than that read (a slow read
  answered after the watch moved on would hide those events);
- a watch stream is open on the prefix and created (`stream_open`), and the read was made
  after it opened (sent after, not only answered after: `epoch`): the client resumes streams
  without losing or repeating events (etcd_client.py), so the events applied since the read
  are every change there was, up to the watch's latency; while no stream is open that
  latency has no bound, and a new stream delivers what it missed only after its creation
  (so a stream, re-created every 30 s, costs one read);
- every write of this handle has come back through the watch (read your own writes);
- some request of this handle was answered by the watch's endpoint, sent less than
  `max_age_s` ago, and none failed or was answered by another endpoint since: a watch
  connection can die silently or its member freeze (the stream is re-created only every
  30 s), a request that fails or goes elsewhere says the store is in doubt now;
- it names a leader: with no leader the members race, and a race is judged on a fresh read
  (the sync, failsafe and switchover records), as the Kubernetes backend does.

Pure bookkeeping: no I/O; times are the caller's (its injected clock).
"""

from __future__ import annotations

import math

from agent.dcs.etcd_wire import EventType, KeyValue, WatchEvent


class Mirror:
    """The keys under one prefix, kept from a read and the watch. See the module docstring."""

    def __init__(self, leader_key: bytes) -> None:
        self._leader_key = leader_key
        self._kvs: dict[bytes, KeyValue] = {}
        self._loaded_at = 0  # revision of the full read the keys come from; 0: not loaded
        self._seen_to = 0  # the watch delivered every event below this revision
        self._own_to = 0  # revision of this handle's newest write
        self._stream_on: str | None = None  # the endpoint of the open watch stream
        self._answered_at = -math.inf  # send time of the newest answered request
        self._epoch = 0  # how many times a stream opened or ended (`stream_open`)

    # ------------------------------------------------------------------ fed by the handle

    @property
    def epoch(self) -> int:
        """Changes whenever a stream opens or ends: the handle notes it when it sends a read."""
        return self._epoch

    def load(self, kvs: tuple[KeyValue, ...], revision: int, *, epoch: int) -> None:
        """A full read of the prefix, served at `revision`, sent at stream `epoch`. One sent
        before the open stream opened is not loaded (the module docstring: the read must be
        made after it opened, not merely answered after)."""
        if epoch != self._epoch:
            return
        if revision + 1 < self._seen_to:
            self.unload()  # older than events already delivered: those would be lost
            return
        self._kvs = {kv.key: kv for kv in kvs}
        self._loaded_at = revision

    def unload(self) -> None:
        """Events were lost (a compacted watch): read in full before trusting the keys."""
        self._kvs.clear()
        self._loaded_at = 0

    def apply(self, event: WatchEvent) -> None:
        """An event the watch delivered (in revision order)."""
        revision = event.kv.mod_revision
        self._seen_to = max(self._seen_to, revision + 1)
        if self._loaded_at == 0 or revision <= self._loaded_at:
            return  # nothing to apply it to, or already in the read
        if event.type is EventType.DELETE:
            self._kvs.pop(event.kv.key, None)
        else:
            self._kvs[event.kv.key] = event.kv

    def watching_from(self, revision: int) -> None:
        """The watch starts (or resumes) at `revision`: what came before is in any read the
        mirror will load from, never in its events."""
        self._seen_to = max(self._seen_to, revision)

    def own(self, revision: int) -> None:
        """A write of this handle produced `revision`."""
        self._own_to = max(self._own_to, revision)

    def stream_open(self, endpoint: str | None) -> None:
        """The watch's stream was created on `endpoint`, or ended (None). A new stream first
        delivers what happened while none was open, up to etcd's 100 ms catch-up loop later:
        until a read after it, the keys are not trusted."""
        self._stream_on = endpoint
        self._epoch += 1
        if endpoint is not None:
            self.unload()

    def answered(self, sent_at: float, endpoint: str) -> None:
        """A request sent at `sent_at` was answered by `endpoint`. By another endpoint than
        the watch's, it puts the store in doubt: the watch's member may be frozen or cut off
        (a silent stream, re-created only every 30 s) while another one answers."""
        if endpoint == self._stream_on:
            self._answered_at = max(self._answered_at, sent_at)
        else:
            self._answered_at = -math.inf

    def failed(self) -> None:
        """A request failed: the store is in doubt until one is answered again."""
        self._answered_at = -math.inf

    # ------------------------------------------------------------------ read by the handle

    def current(self, now: float, *, max_age_s: float) -> bool:
        """Whether the keys may stand in for a read now (the module docstring's rules)."""
        return (
            self._loaded_at > 0
            and self._stream_on is not None
            and (self._own_to == 0 or self._seen_to > self._own_to)
            and now - self._answered_at < max_age_s
            and self._leader_key in self._kvs
        )

    def kvs(self) -> tuple[KeyValue, ...]:
        return tuple(self._kvs.values())

    def leader(self) -> KeyValue | None:
        return self._kvs.get(self._leader_key)
