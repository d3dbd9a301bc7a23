"""The guard of the `lease` lock kind against a skipped migration step (docs/kubernetes.md,
"Migrating from the Endpoints lock"): agents of the `endpoints` kind hold leadership in the
Endpoints object `<cluster>` and never look at the Lease, so a `lease` agent started next to
them would take the free Lease and promote a second primary. Before it takes the Lease, a
`lease` agent reads the Endpoints object and refuses while it names another member whose
record is live: not expired on this handle's own clock (DESIGN.md invariant 4, the same
`ObservedExpiry` rule as the lock itself), so a holder that died is waited out for one ttl,
like a lapsed Lease. A refusal is logged (`dcs_acquire_refused_endpoints_lock`, once per
holder).

No Endpoints object, or one that names nobody (the middle step's last release empties it), or
this member: no refusal. A Role that does not grant `get` on the Endpoints (deployments made
before this guard) cannot be checked: that is logged once and the Lease is taken as before,
so the guard never stops a cluster that used only the Lease from electing a leader.

It narrows the hazard, it does not close it: an `endpoints` agent does not look at the Lease,
so if an old leader dies while old and new agents both run, the two kinds can still win their
two objects in the same instant. The supported path stays the middle step
(`endpoints-and-lease`).
"""

from __future__ import annotations

import structlog

from agent.clock import Clock
from agent.dcs.base import DcsAuthError
from agent.dcs.kubernetes.api import KubeApi
from agent.dcs.kubernetes.expiry import ObservedExpiry
from agent.dcs.kubernetes.locks import EndpointsLock
from agent.dcs.kubernetes.objects import resource_version

_KEY = "endpoints-lock"


class EndpointsGuard:
    """Whether a `lease` agent may take the Lease now (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        lock: EndpointsLock,
        *,
        member: str,
        ttl_s: float,
        clock: Clock,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._api = api
        self._lock = lock
        self._member = member
        self._expiry = ObservedExpiry(ttl_s)
        self._clock = clock
        self._log = log.bind(endpoints=lock.name)
        self._told: str | None = None  # the holder of the refusal last logged
        self._told_forbidden = False

    async def allows(self) -> bool:
        """False while the Endpoints lock names another live holder. Raises what the read
        raises (DcsUnavailable), except a refusal of our credentials (see the docstring)."""
        try:
            obj = await self._api.get(self._lock.path())
        except DcsAuthError as exc:
            if not self._told_forbidden:
                self._told_forbidden = True
                self._log.warning("dcs_endpoints_lock_unchecked", error=str(exc))
            return True
        holder = self._lock.holder(obj) if obj is not None else ""
        if not holder or holder == self._member or obj is None:
            self._expiry.forget(_KEY)
            return True
        rv = resource_version(obj)
        if not self._expiry.note(_KEY, str(rv), rv, self._clock.monotonic()):
            return True  # unchanged for a ttl on our clock: its holder is gone
        if self._told != holder:
            self._told = holder
            self._log.warning(
                "dcs_acquire_refused_endpoints_lock",
                holder=holder,
                reason=(
                    "the Endpoints lock names a live leader of the endpoints lock kind; "
                    "migrate through lock: endpoints-and-lease"
                ),
            )
        return False
