"""The watches that feed `wait_for_change` (base.py point 8): the member pods (by label
selector), each lock object (one, two during a lock migration) and the ConfigMap. Each is a
named task running `changes.watch_forever`, resumed from its last resourceVersion, bounded
by `timeoutSeconds` and restarted (a silently dead stream cannot hide changes for longer
than that); a 410 Expired re-lists and wakes the caller.

What counts: member records only when their signature (`keys.member_signature`: all but
WAL positions) changes or they appear or vanish; the lock only when its holder changes (a
renewal only restarts the observers' expiry clocks, which it notes); a ConfigMap change
unless it touched only quiet records (the leader's `position` heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import structlog

from agent.clock import Clock
from agent.dcs import keys
from agent.dcs.changes import Backoff, ChangeTracker, WatchResync, watch_forever
from agent.dcs.kubernetes.api import Expired, KubeApi, bounded, expect
from agent.dcs.kubernetes.cache import ObjectCache
from agent.dcs.kubernetes.expiry import ObservedExpiry
from agent.dcs.kubernetes.locks import LockObject
from agent.dcs.kubernetes.objects import (
    KubeObject,
    member_entry,
    member_signatures,
    name_of,
    resource_version,
    to_bytes,
)
from agent.dcs.kubernetes.records import ConfigRecords, loud_signature

WATCH_TIMEOUT_S = 30  # server-side end of each watch; the stream is then resumed
_CLOSE_TIMEOUT_S = 2.0


class Watched(StrEnum):
    PODS = "pods"
    LOCK = "lock"
    CONFIG = "config"


# A lock object and the key under which its leader record's expiry is timed.
WatchedLock = tuple[LockObject, str]


class ClusterWatches:
    """The watches of one handle; started by the first `wait_for_change` (`ensure`)."""

    def __init__(
        self,
        api: KubeApi,
        *,
        pods: tuple[str, str],
        locks: tuple[WatchedLock, ...],
        config: ConfigRecords,
        tracker: ChangeTracker,
        expiry: ObservedExpiry,
        clock: Clock,
        log: structlog.typing.FilteringBoundLogger,
        timeout_s: float,
        watch_timeout_s: int,
        task_suffix: str,
        pods_quiet_s: float | None = None,
    ) -> None:
        """`pods_quiet_s`: the pods cache is not trusted after this long without an event
        (cache.py)."""
        self._api = api
        pods_path, selector = pods
        # Each watch: its name, what it watches, and its collection path and selector.
        self._targets: dict[str, tuple[Watched, str, dict[str, str]]] = {
            Watched.PODS.value: (Watched.PODS, pods_path, {"labelSelector": selector}),
            Watched.CONFIG.value: (
                Watched.CONFIG,
                config.path(named=False),
                {"fieldSelector": f"metadata.name={config.name}"},
            ),
        }
        self._locks: dict[str, WatchedLock] = {}  # by watch name
        for lock, key in locks:
            name = Watched.LOCK.value if len(locks) == 1 else f"{Watched.LOCK}-{lock.name}"
            query = {"fieldSelector": f"metadata.name={lock.name}"}
            self._targets[name] = (Watched.LOCK, lock.path(named=False), query)
            self._locks[name] = (lock, key)
        self._tracker = tracker
        self._expiry = expiry
        self._clock = clock
        self._log = log
        self._timeout_s = timeout_s
        self._watch_timeout_s = watch_timeout_s
        self._suffix = task_suffix
        self._start_rv = 0  # list resourceVersion of the first read: where watches start
        self._seed_signatures: dict[str, str] = {}
        self._seed_holders: dict[str, str] = {}  # by watch name
        self._watched_holders: dict[str, str] = {}  # each lock's holder as its watch last saw
        self._config_signature = loud_signature(None)  # of the ConfigMap its watch saw last
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # What the pods and ConfigMap watches have seen (cache.py), read by get_cluster.
        self.caches = {
            Watched.PODS: ObjectCache(max_quiet_s=pods_quiet_s),
            Watched.CONFIG: ObjectCache(),
        }

    def first_read(
        self,
        rv: int,
        pods: list[Any],
        locks: list[KubeObject | None],
        config: KubeObject | None,
    ) -> None:
        """The handle's first read (the pod list at `rv`, then the lock objects in the
        order given at construction, then the ConfigMap): the watches start there, so that
        a change after it wakes the caller even if the read already showed it."""
        if self._start_rv == 0:
            self._start_rv = rv
            self._seed_signatures = member_signatures(pods)
            for (name, (lock, _)), obj in zip(self._locks.items(), locks, strict=True):
                self._seed_holders[name] = lock.holder(obj) if obj is not None else ""
            now = self._clock.monotonic()
            self.caches[Watched.PODS].fill(pods, rv, now=now)
            self.caches[Watched.CONFIG].fill([config] if config is not None else [], rv, now=now)
            self._config_signature = loud_signature(config)

    def cached(self) -> tuple[list[KubeObject], KubeObject | None] | None:
        """The member pods and the ConfigMap as the watches last saw them, if both caches
        can be trusted (cache.py); None: read them from the server."""
        pods, config = self.caches[Watched.PODS], self.caches[Watched.CONFIG]
        now = self._clock.monotonic()
        if not (pods.usable(now) and config.usable(now)):
            return None
        configs = config.objects()
        return pods.objects(), configs[0] if configs else None

    def ensure(self) -> None:
        """Start every watch that is not running."""
        for name in self._targets:
            task = self._tasks.get(name)
            if task is None or task.done():
                follow, position = self._follower(name)
                self._tasks[name] = asyncio.create_task(
                    watch_forever(
                        follow,
                        tracker=self._tracker,
                        log=self._log.bind(watch=name),
                        position=position,
                    ),
                    name=f"dcs-k8s-watch-{name}-{self._suffix}",
                )

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await task

    def _follower(
        self, name: str
    ) -> tuple[Callable[[Backoff], Awaitable[None]], Callable[[], int]]:
        """One watch's `follow` coroutine for `watch_forever`, and its position: each stream
        resumes from the last resourceVersion seen; a 410 re-lists and wakes the caller."""
        rv = 0
        first = True

        cache = self.caches.get(self._targets[name][0])

        async def follow(backoff: Backoff) -> None:
            nonlocal rv, first
            try:
                if rv == 0:
                    rv = await self._start(name, from_first_read=first)
                    first = False
                if cache is not None:
                    cache.set_live(True)
                rv = await self._follow_once(name, rv)
            except Expired:
                expired_at, rv = rv, 0
                if cache is not None:
                    cache.set_live(False)  # until the re-list refills it
                raise WatchResync("dcs_watch_expired", resource_version=expired_at) from None
            except BaseException:
                if cache is not None:
                    cache.set_live(False)  # failing: the cache may miss changes meanwhile
                raise
            backoff.reset()

        return follow, lambda: rv

    async def _start(self, name: str, *, from_first_read: bool) -> int:
        """Where a watch starts: the first read's resourceVersion, or (never read, or after a
        410) a fresh list's, which also re-seeds what the watch compares against."""
        what, path, query = self._targets[name]
        if from_first_read and self._start_rv > 0:
            if what is Watched.PODS and self._seed_signatures:
                self._tracker.seed_members(self._seed_signatures, replace=False)
                self._seed_signatures = {}
            if what is Watched.LOCK:
                self._watched_holders[name] = self._seed_holders.get(name, "")
            return self._start_rv
        async with bounded(f"list {what.value}", self._timeout_s):
            listed = await self._api.call("GET", path, query=query)
        expect(listed, 200)
        items = listed.obj.get("items") or []
        if what in self.caches:
            self.caches[what].fill(items, resource_version(listed.obj), now=self._clock.monotonic())
        if what is Watched.PODS:
            self._tracker.seed_members(member_signatures(items), replace=True)
        if what is Watched.CONFIG:
            self._config_signature = loud_signature(items[0] if items else None)
        if what is Watched.LOCK:
            lock, _ = self._locks[name]
            self._watched_holders[name] = lock.holder(items[0]) if items else ""
        rv = resource_version(listed.obj)
        if self._start_rv == 0:
            self._start_rv = rv
        return rv

    async def _follow_once(self, name: str, rv: int) -> int:
        """One watch stream from `rv`; returns the resourceVersion to resume from."""
        _, path, query = self._targets[name]
        query = dict(query, resourceVersion=str(rv), allowWatchBookmarks="true")
        events = self._api.watch(path, query, timeout_s=self._watch_timeout_s)
        async with contextlib.aclosing(events):
            async for kind, obj in events:
                rv = max(rv, resource_version(obj))
                if (cache := self.caches.get(self._targets[name][0])) is not None:
                    cache.apply(kind, obj, now=self._clock.monotonic())
                if kind != "BOOKMARK" and self._counts(name, kind, obj):
                    self._tracker.observed(resource_version(obj))
        return rv  # the server ended the stream (timeoutSeconds): resume

    def _counts(self, name: str, kind: str, obj: KubeObject) -> bool:
        """Note what the event shows for expiry; True if it is a change point 8 counts."""
        match self._targets[name][0]:
            case Watched.PODS:
                return self._pod_counts(kind, obj)
            case Watched.LOCK:
                return self._lock_counts(name, kind, obj)
            case Watched.CONFIG:
                # A ConfigMap deleted or created counts as its records going or coming.
                signature = loud_signature(None if kind == "DELETED" else obj)
                changed = signature != self._config_signature
                self._config_signature = signature
                return changed

    def _pod_counts(self, kind: str, obj: KubeObject) -> bool:
        pod = name_of(obj)
        entry = None if kind == "DELETED" else member_entry(obj)
        if entry is None:
            # The record (or the pod) went away: a change if we had seen it.
            self._expiry.forget_source(pod, prefix=keys.MEMBERS)
            return self._tracker.member_changed(pod, None)
        name, value, token = entry
        now = self._clock.monotonic()
        self._expiry.note(keys.member_key(name), token, resource_version(obj), now, source=pod)
        # A heartbeat (new WAL positions only) does not count.
        return self._tracker.member_changed(pod, keys.member_signature(to_bytes(value)))

    def _lock_counts(self, name: str, kind: str, obj: KubeObject) -> bool:
        lock, key = self._locks[name]
        holder = "" if kind == "DELETED" else lock.holder(obj)
        rv = resource_version(obj)
        if holder:
            self._expiry.note(key, str(rv), rv, self._clock.monotonic())
        else:
            self._expiry.forget(key)
        before = self._leader()
        self._watched_holders[name] = holder
        # A renewal by the same holder only moves the expiry (noted). With two lock objects
        # (a migration), a change counts only if it changes the leader they name together:
        # taking both objects is one change, not two.
        return self._leader() != before

    def _leader(self) -> str:
        """The leader the lock watches saw: the first lock object that names one."""
        holders = (self._watched_holders.get(name, "") for name in self._locks)
        return next((h for h in holders if h), "")
