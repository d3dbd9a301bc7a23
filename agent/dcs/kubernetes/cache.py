"""What a watch has seen of its objects (an informer's store, as client-go and Patroni keep
one), so that `get_cluster` reads the member pods, the ConfigMap and the lock object from
memory instead of asking the API server every cycle.

A cache is used only while it can be trusted (`usable`): it was filled by a list or by the
handle's first read, its watch stream is live (not failing and retrying; a stream the server
refused to re-open with a 429 counts as live for a while, `hold`: the server answered, and
each member re-reading from it would take the tokens the renewals need), it has seen the
resourceVersion of this handle's own last write to its objects (so a caller reads its own
writes), and, where its objects change on a schedule (the lock: the leader renews every
cycle; member pods: every member heartbeats), an event came within `max_quiet_s` (a stream
that died without a word, or a server that stopped answering, must not look current). The
backend adds its own conditions (backend.py `_view_items`: a live leader, no member record
expiring on cached objects, no failed request since its last read from the server);
otherwise it reads from the server, as before the watches ran. A peer's
write showsA peer's
write shows once its watch event arrives (milliseconds on a healthy link); every write stays
conditional on resourceVersion, so a read that lags a peer's write can cost a failed
compare-and-set, never safety.
"""

from __future__ import annotations

from typing import Any

from agent.dcs.kubernetes.objects import KubeObject, name_of, resource_version


class ObjectCache:
    """The objects of one watch, by name."""

    def __init__(self, *, max_quiet_s: float | None = None) -> None:
        self._max_quiet_s = max_quiet_s
        self._heard_at: float | None = None  # monotonic, the last fill or event
        self._objects: dict[str, KubeObject] = {}
        self._filled = False
        self._live = False
        self._held_until = 0.0  # monotonic: usable though not live until then (`hold`)
        self._rv = 0  # the newest resourceVersion seen
        self._own_rv = 0  # of this handle's own last write to these objects

    def fill(self, items: list[Any], rv: int, *, now: float) -> None:
        """The complete set of objects as of `rv` (a list, or the handle's first read)."""
        self._heard_at = now
        self._objects = {name_of(obj): obj for obj in items if isinstance(obj, dict)}
        self._rv = max(self._rv, rv, *(resource_version(o) for o in self._objects.values()))
        self._filled = True

    def apply(self, kind: str, obj: KubeObject, *, now: float) -> None:
        """One watch event (ADDED, MODIFIED, DELETED; bookmarks only move the position)."""
        self._heard_at = now
        rv = resource_version(obj)
        self._rv = max(self._rv, rv)
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self._objects.pop(name_of(obj), None)
        else:
            self._objects[name_of(obj)] = obj

    def set_live(self, live: bool) -> None:
        self._live = live
        self._held_until = 0.0

    def hold(self, until: float) -> None:
        """The stream is down because the server throttles its re-open (429): what it saw
        stays usable until `until` (the other conditions still apply)."""
        self._live = False
        self._held_until = until

    def own_write(self, rv: int) -> None:
        """This handle wrote one of these objects at `rv`: not usable until seen."""
        self._own_rv = max(self._own_rv, rv)

    def usable(self, now: float, *, lenient: bool = False) -> bool:
        """Whether the cache may be read (see the module docstring); `lenient`: however
        long it has been quiet (the server throttles: silence is expected, throttle.py)."""
        quiet = (
            not lenient
            and self._max_quiet_s is not None
            and self._heard_at is not None
            and now - self._heard_at >= self._max_quiet_s
        )
        live = self._live or now < self._held_until
        return self._filled and live and self._rv >= self._own_rv and not quiet

    def objects(self) -> list[KubeObject]:
        return list(self._objects.values())
