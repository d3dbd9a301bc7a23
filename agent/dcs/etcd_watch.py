"""The etcd backend's watch (agent/dcs/etcd.py): one long-lived named task on the cluster's
prefix, started by the first `wait_for_change` (`changes.watch_forever` around `_follow`), that
feeds the mirror (etcd_mirror.py) and tells the change tracker what changed (base.py, point 8).
It never raises into the caller.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from agent.dcs import keys
from agent.dcs.changes import Backoff, ChangeTracker, WatchResync, watch_forever
from agent.dcs.etcd_client import EtcdClient, EtcdCompacted, EventType, WatchEvent
from agent.dcs.etcd_mirror import Mirror


class EtcdWatch:
    """The prefix watch of one `EtcdDcs` handle: resumes where it stopped, re-reads after a
    compaction (through the tracker's resync)."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        prefix: bytes,
        leader_key: bytes,
        mirror: Mirror,
        changes: ChangeTracker,
        timeout_s: float,
        log: structlog.typing.FilteringBoundLogger,
        member_name: str,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._leader_key = leader_key
        self._mirror = mirror
        self._changes = changes
        self._timeout_s = timeout_s
        self._log = log
        self._name = member_name
        self._read_revision = 0  # header revision of the first get_cluster: the watch start
        self._watch_from = 0  # where the watch resumes (0: not started)
        self._task: asyncio.Task[None] | None = None

    def read_at(self, revision: int) -> None:
        """A full read of the prefix was served at `revision` (the first one is where the
        watch starts)."""
        if self._read_revision == 0:
            self._read_revision = revision

    def ensure(self) -> None:
        """Start the watch task, unless it runs."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                watch_forever(
                    self._follow,
                    tracker=self._changes,
                    log=self._log,
                    position=lambda: self._watch_from,
                ),
                name=f"dcs-etcd-watch-{self._name}",
            )

    async def stop(self, timeout_s: float) -> None:
        """Cancel the watch task and wait for it, at most `timeout_s`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await task

    async def _follow(self, backoff: Backoff) -> None:
        """One watch stream on the prefix, from where the last one stopped; a compacted
        start resumes from the oldest revision still kept, and the caller re-reads."""
        if self._watch_from == 0:
            self._watch_from = await self._start()
        self._mirror.watching_from(self._watch_from)
        try:
            batches = self._client.watch(
                self._prefix, start_revision=self._watch_from, on_stream=self._mirror.stream_open
            )
            async for batch in batches:
                backoff.reset()
                for event in batch.events:
                    self._watch_from = event.kv.mod_revision + 1
                    self._on_event(event)
                self._changes.watched_to(self._watch_from)
        except EtcdCompacted as exc:
            self._mirror.unload()
            start, self._watch_from = self._watch_from, exc.compact_revision
            raise WatchResync(
                "dcs_watch_compacted", start=start, compact_revision=exc.compact_revision
            ) from exc

    async def _start(self) -> int:
        if self._read_revision > 0:
            return self._read_revision + 1
        # Never read: nothing to be newer than; start at the store's current revision.
        async with asyncio.timeout(self._timeout_s):
            result = await self._client.range(self._leader_key)
        return result.revision + 1

    def _on_event(self, event: WatchEvent) -> None:
        self._mirror.apply(event)  # before the waiter may wake: its read must show it
        relative = relative_key(self._prefix, event.kv.key)
        if keys.is_quiet_key(relative):
            return  # the leader's position heartbeat (base.py, point 8)
        if keys.is_member_key(relative):
            # A heartbeat (new WAL positions only) wakes nobody; a new role, state or
            # address does, and so does a record that appears (base.py, point 8). A record
            # that goes always counts, known or not (etcd deletes only what was there).
            if event.type is EventType.DELETE:
                self._changes.member_changed(relative, None)
            elif not self._changes.member_changed(relative, keys.member_signature(event.kv.value)):
                return
        self._changes.observed(event.kv.mod_revision)


def relative_key(prefix: bytes, key: bytes) -> str:
    """A key under `prefix`, relative to it (the layout of agent/dcs/keys.py)."""
    return key[len(prefix) :].decode("utf-8", errors="replace")
