"""The watches that feed `wait_for_change` (base.py point 8) and the caches `get_cluster`
reads (cache.py): the member pods (by label selector), each lock object (one, two during a
lock migration) and the ConfigMap. Each is a named task running `changes.watch_forever`,
resumed from its last resourceVersion; a 410 Expired re-lists and wakes the caller.

How long a stream lives: the ConfigMap's, whose object changes only when someone writes a
record, ends after 30 s (`watch_timeout_s`: on our side, the server's `timeoutSeconds` being
4 times as long) and is resumed, so a stream that died without a word cannot hide a change for
longer. The pods' and the locks' objects change on a schedule
(every member heartbeats, the leader renews every cycle), so their streams ask for a long
`timeoutSeconds` (`steady_timeout_s`, 300 s) and are instead resumed as soon as they have
been silent for `steady_quiet_s`: a dead stream is found sooner, for a fraction of the
requests. A lock stream with no leader to renew is simply resumed that often.

What counts: member records only when their signature (`keys.member_signature`: all but
WAL positions) changes or they appear or vanish; the lock only when its holder changes (a
renewal only restarts the observers' expiry clocks, which it notes); a ConfigMap change
unless it touched only quiet records (the leader's `position` heartbeat).

While the handle's throttling pause runs (throttle.py: a 429 on any of its requests; the
Retry-After, doubled while refusals go on, jittered: 900 watches of a throttled fleet do not
come back at once), a watch that ended or failed is not listed or re-opened before the pause
ends, and its cache stays usable meanwhile, for up to `hold_s`. And while the server has
throttled lately (`recent()`), silence is expected: a stream is not ended on our side for
its silence or its age, only by the server, including a stream opened before the throttling
began (at 100 clusters, the streams of the whole fleet ending for their silence or age in the
first 30 s of a throttling took the tokens the leaders' renewals needed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

from agent.clock import Clock
from agent.dcs import keys
from agent.dcs.changes import Backoff, ChangeTracker, WatchResync, watch_forever
from agent.dcs.kubernetes.api import Expired, KubeApi, Throttled, bounded, expect
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
    vouched_record,
    written_stamp,
)
from agent.dcs.kubernetes.records import ConfigRecords, loud_signature

WATCH_TIMEOUT_S = 30  # server-side end of the ConfigMap watch; the stream is then resumed
STEADY_WATCH_TIMEOUT_S = 300  # server-side end of the pods and lock watches
_THROTTLED_TIMEOUTS = 4  # a ConfigMap stream asks the server for 4 times its own timeout
_CLOSE_TIMEOUT_S = 2.0


class Watched(StrEnum):
    PODS = "pods"
    LOCK = "lock"
    CONFIG = "config"


# A lock object and the key under which its leader record's expiry is timed.
WatchedLock = tuple[LockObject, str]


@dataclass(frozen=True, slots=True)
class _Target:
    """One watch: what it watches, where, and how long its streams live."""

    what: Watched
    path: str
    query: dict[str, str]
    timeout_s: int  # the stream's timeoutSeconds
    quiet_s: float | None  # resume a stream silent this long (None: timeout_s + a grace)


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
        steady_timeout_s: int = STEADY_WATCH_TIMEOUT_S,
        steady_quiet_s: float | None = None,
        pods_quiet_s: float | None = None,
        lock_quiet_s: float | None = None,
        hold_s: float | None = None,
    ) -> None:
        """`steady_quiet_s`: resume a pods or lock stream silent this long (None: those
        streams end after `watch_timeout_s` like the ConfigMap's). `pods_quiet_s`,
        `lock_quiet_s`: their caches are not trusted after this long without an event
        (cache.py). `hold_s`: how long a cache stays usable while its watch's re-open is
        throttled (default `watch_timeout_s`: a ConfigMap stream that died without a word is
        trusted as long)."""
        self._api = api
        self._hold_s = float(watch_timeout_s) if hold_s is None else hold_s
        pods_path, selector = pods
        steady = (steady_timeout_s, steady_quiet_s) if steady_quiet_s else (watch_timeout_s, None)
        # Each watch by name: what it watches, its collection path and selector, and its
        # stream's timeoutSeconds and silence limit.
        self._targets: dict[str, _Target] = {
            Watched.PODS.value: _Target(
                Watched.PODS, pods_path, {"labelSelector": selector}, *steady
            ),
            Watched.CONFIG.value: _Target(
                Watched.CONFIG,
                config.path(named=False),
                {"fieldSelector": f"metadata.name={config.name}"},
                watch_timeout_s,
                None,
            ),
        }
        self._locks: dict[str, WatchedLock] = {}  # by watch name
        # What each watch has seen (cache.py), read by get_cluster.
        self._caches: dict[str, ObjectCache] = {
            Watched.PODS.value: ObjectCache(max_quiet_s=pods_quiet_s),
            Watched.CONFIG.value: ObjectCache(),
        }
        self._lock_caches: dict[str, ObjectCache] = {}  # by lock object name
        for lock, key in locks:
            name = Watched.LOCK.value if len(locks) == 1 else f"{Watched.LOCK}-{lock.name}"
            query = {"fieldSelector": f"metadata.name={lock.name}"}
            self._targets[name] = _Target(Watched.LOCK, lock.path(named=False), query, *steady)
            self._locks[name] = (lock, key)
            self._caches[name] = self._lock_caches[lock.name] = ObjectCache(
                max_quiet_s=lock_quiet_s
            )
        self._tracker = tracker
        self._expiry = expiry
        self._clock = clock
        self._log = log
        self._timeout_s = timeout_s
        self._suffix = task_suffix
        self._start_rv = 0  # list resourceVersion of the first read: where watches start
        self._seed_signatures: dict[str, str] = {}
        self._seed_holders: dict[str, str] = {}  # by watch name
        self._watched_holders: dict[str, str] = {}  # each lock's holder as its watch last saw
        self._config_signature = loud_signature(None)  # of the ConfigMap its watch saw last
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def pods_cache(self) -> ObjectCache:
        return self._caches[Watched.PODS.value]

    @property
    def config_cache(self) -> ObjectCache:
        return self._caches[Watched.CONFIG.value]

    def lock_cache(self, lock_name: str) -> ObjectCache:
        """The cache of the lock object named `lock_name`."""
        return self._lock_caches[lock_name]

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
            now = self._clock.monotonic()
            for (name, (lock, _)), obj in zip(self._locks.items(), locks, strict=True):
                self._seed_holders[name] = lock.holder(obj) if obj is not None else ""
                self._caches[name].fill([obj] if obj is not None else [], rv, now=now)
            self.pods_cache.fill(pods, rv, now=now)
            self.config_cache.fill([config] if config is not None else [], rv, now=now)
            self._config_signature = loud_signature(config)

    def cached(
        self, *, lenient: bool = False
    ) -> tuple[list[KubeObject], list[KubeObject | None], KubeObject | None] | None:
        """The member pods, the lock objects (in the order given at construction) and the
        ConfigMap as the watches last saw them, if every cache can be trusted (cache.py;
        `lenient`: however quiet); None: read them from the server."""
        now = self._clock.monotonic()
        if not all(cache.usable(now, lenient=lenient) for cache in self._caches.values()):
            return None
        locks: list[KubeObject | None] = []
        for name in self._locks:
            objects = self._caches[name].objects()
            locks.append(objects[0] if objects else None)
        configs = self.config_cache.objects()
        return self.pods_cache.objects(), locks, configs[0] if configs else None

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
                        pause_s=self._pause_s,
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

        cache = self._caches[name]

        async def follow(backoff: Backoff) -> None:
            nonlocal rv, first
            if (pause_s := self._api.throttle.pause_left_s()) > 0:
                # The server throttles this handle: no list or re-open before the pause ends
                # (what the stream saw stays usable meanwhile, if its position is intact).
                if rv:
                    cache.hold(self._clock.monotonic() + self._hold_s)
                await asyncio.sleep(pause_s)
            try:
                if rv == 0:
                    rv = await self._start(name, from_first_read=first)
                    first = False
                cache.set_live(True)
                rv = await self._follow_once(name, rv)
            except Expired:
                expired_at, rv = rv, 0
                cache.set_live(False)  # until the re-list refills it
                raise WatchResync("dcs_watch_expired", resource_version=expired_at) from None
            except Throttled:
                if rv:  # its position is intact: it missed nothing before the refusal
                    cache.hold(self._clock.monotonic() + self._hold_s)
                else:  # a re-list after a 410 was refused: the cache may miss changes
                    cache.set_live(False)
                raise
            except BaseException:
                cache.set_live(False)  # failing: the cache may miss changes meanwhile
                raise
            backoff.reset()

        return follow, lambda: rv

    def _pause_s(self, failure: Exception) -> float:
        """How long a failed watch waits at least before trying again: the throttling
        pause after a 429 (the backoff alone otherwise)."""
        return self._api.throttle.pause_left_s() if isinstance(failure, Throttled) else 0.0

    async def _start(self, name: str, *, from_first_read: bool) -> int:
        """Where a watch starts: the first read's resourceVersion, or (never read, or after a
        410) a fresh list's, which also re-seeds what the watch compares against."""
        target = self._targets[name]
        what, path, query = target.what, target.path, target.query
        if from_first_read and self._start_rv > 0:
            if what is Watched.PODS and self._seed_signatures:
                self._tracker.seed_members(self._seed_signatures, replace=False)
                self._seed_signatures = {}
            if what is Watched.LOCK:
                self._watched_holders[name] = self._seed_holders.get(name, "")
            return self._start_rv
        async with bounded(f"list {what.value}", self._timeout_s):
            listed = await self._api.call("GET", path, query=query, resend=False)
        expect(listed, 200)
        items = listed.obj.get("items") or []
        self._caches[name].fill(items, resource_version(listed.obj), now=self._clock.monotonic())
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
        target = self._targets[name]
        query = dict(target.query, resourceVersion=str(rv), allowWatchBookmarks="true")
        # A stream that ends on the server's timeout asks for a longer one and is ended on
        # our side at its own, unless the server throttles by then (silence is expected:
        # the stream runs on, and a stream opened before the throttling began is not
        # re-opened for its silence or its age either).
        timeout_s, end_s = target.timeout_s, None
        if target.quiet_s is None:
            timeout_s, end_s = _THROTTLED_TIMEOUTS * target.timeout_s, target.timeout_s
        events = self._api.watch(
            target.path,
            query,
            timeout_s=timeout_s,
            quiet_s=target.quiet_s,
            end_s=end_s,
            patient=self._api.throttle.recent,
        )
        cache = self._caches[name]
        async with contextlib.aclosing(events):
            async for kind, obj in events:
                rv = max(rv, resource_version(obj))
                cache.apply(kind, obj, now=self._clock.monotonic())
                if kind != "BOOKMARK" and self._counts(name, kind, obj):
                    self._tracker.observed(resource_version(obj))
        return rv  # the server ended the stream (timeoutSeconds): resume

    def _counts(self, name: str, kind: str, obj: KubeObject) -> bool:
        """Note what the event shows for expiry; True if it is a change point 8 counts."""
        match self._targets[name].what:
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
            self._expiry.forget_source(pod, prefix=keys.MEMBERS, rv=resource_version(obj))
            return self._tracker.member_changed(pod, None)
        name, value, token = entry
        now = self._clock.monotonic()
        rv, written = resource_version(obj), written_stamp(obj)
        self._expiry.note(keys.member_key(name), token, rv, now, source=pod, written=written)
        # A heartbeat (new WAL positions only) does not count.
        return self._tracker.member_changed(pod, keys.member_signature(to_bytes(value)))

    def _lock_counts(self, name: str, kind: str, obj: KubeObject) -> bool:
        lock, key = self._locks[name]
        holder = "" if kind == "DELETED" else lock.holder(obj)
        rv = resource_version(obj)
        if holder:
            now = self._clock.monotonic()
            self._expiry.note(key, str(rv), rv, now, vouches=vouched_record(obj, holder))
        else:
            self._expiry.forget(key, rv=rv)
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
