"""Kubernetes backend: the API server is the DCS (no etcd). Every write is a conditional one.

Where the records live (namespace `namespace`, cluster `cluster`):
- Leader, lock kind `endpoints` (`locks.EndpointsLock`): annotations of the Endpoints object
  `<cluster>` of the selector-less primary Service. The same conditional PUT (on
  metadata.resourceVersion) that names the leader puts the leader pod's IP and the
  PostgreSQL port into its `subsets`, so routing moves with leadership; a release empties
  them in the same write.
- Leader, lock kind `lease` (`locks.LeaseLock`): the coordination.k8s.io/v1 Lease
  `<cluster>-leader`. The leader also keeps the EndpointSlice `<cluster>` on its own address
  (`routing.EndpointSliceRouter`).
- Records (`RecordKind`): annotations of the ConfigMap `<cluster>-config`, compared and set
  per record (`records.ConfigRecords`).
- Member records: annotation `pgwarden.io/member` on each member's own pod, written with a
  merge patch that also sets the label `pgwarden.io/cluster=<cluster>`. Members are the pods
  matching the configured cluster labels plus that label.

Versions: the leader's is the lock object's resourceVersion; a member's is a hash of its
record (so a heartbeat does not change it); a record's is its token.

Expiry is judged on this handle's own monotonic clock (`expiry.ObservedExpiry`, DESIGN.md
invariant 4), never from renewTime. A leader record unchanged for `ttl_s` reads as no
leader and may be taken over, with a write conditional on the stale resourceVersion, so two
takers cannot both win. Pods do not expire, so a member also writes a heartbeat annotation
(`pgwarden.io/heartbeat`) when its record is unchanged for `heartbeat.heartbeat_interval` (4.3 s
at the default timings; its next write lands inside the ttl even a cycle late; deferred while
the server throttles: `members.py`), and a
member whose record and heartbeat have not changed for `ttl_s` is dropped from the view, as
its key would expire in etcd: a dead agent's record must not look like a healthy replica
(a write seen late, over a watch that died without a word, is timed from about when it was
made: `expiry.py` `written`). The leader does not heartbeat while it renews: each renewal
an observer sees restarts the clock of the member record the lock names too (`expiry.py`,
`members.py`), so its record goes one ttl after its last renewal, as the lock does. The
holder's own lease is judged from the send time of its last successful renewal: past `ttl_s`,
`renew_leader` answers False without writing.

Change notification (`wait_for_change`, base.py point 8): the watches (`watches.py`: pods,
each lock object, the ConfigMap) feed one `changes.ChangeTracker`; the handle's own writes
are recognised by the resourceVersion they returned. Expiries seen on this handle's clock
(leader or member) wake it once each. Once they run, the watches also keep what they saw
(`cache.py`), and while a leader renews and they are healthy `get_cluster` reads everything
from memory (no request; three before the caches). It reads from the server after any failed
request of its own (a 429 aside), while no live leader holds the lock, and before a member
record expires on cached objects (`backend.KubernetesDcs._view_items`; not while the server
throttles, when heartbeats wait and records are expected to expire: `throttle.py`).

Every public call runs under one deadline (`timeout_s`, also the per-request timeout) and
raises `DcsUnavailable` (`DcsAuthError` on 401/403, `api.Throttled` on 429) for connection
errors, timeouts, 5xx and 429 (`api.KubeApi`, the one transport). While the server throttles
(`throttle.py`), the renewals go first: lock and record writes are sent again after a 429's
Retry-After, and heartbeats, reads and watch re-opens wait out a jittered pause; the members
of a leaderless cluster read it in turn (`turns.py`).
Constructing the handle does no I/O: the API client is built on the first call.

A `lease` agent does not take the Lease while the Endpoints lock of `endpoints` agents names
another live leader (`guard.py`: a skipped migration step).

Modules: `backend` (the protocol, lock state), `holding` (one lock object taken, renewed,
released), `members` (member records on pods), `guard`, `locks`, `expiry`, `routing`,
`records`, `watches`, `cache`, `api`, `throttle` (the pause after a 429), `turns`, `objects` (names
and pure helpers).
"""

from agent.dcs.kubernetes.api import ClientFactory
from agent.dcs.kubernetes.backend import KubernetesDcs
from agent.dcs.kubernetes.objects import (
    ACQUIRE_TIME_ANNOTATION,
    CLUSTER_LABEL,
    HEARTBEAT_ANNOTATION,
    LEADER_ANNOTATION,
    MEMBER_ANNOTATION,
    MEMBER_NAME_ANNOTATION,
    PORT_NAME,
    RENEW_TIME_ANNOTATION,
    TRANSITIONS_ANNOTATION,
    TTL_ANNOTATION,
    micro_time,
    record_annotation,
    record_version_annotation,
    to_bytes,
)

__all__ = [
    "ACQUIRE_TIME_ANNOTATION",
    "CLUSTER_LABEL",
    "HEARTBEAT_ANNOTATION",
    "LEADER_ANNOTATION",
    "MEMBER_ANNOTATION",
    "MEMBER_NAME_ANNOTATION",
    "PORT_NAME",
    "RENEW_TIME_ANNOTATION",
    "TRANSITIONS_ANNOTATION",
    "TTL_ANNOTATION",
    "ClientFactory",
    "KubernetesDcs",
    "micro_time",
    "record_annotation",
    "record_version_annotation",
    "to_bytes",
]
