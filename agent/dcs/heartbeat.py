"""How often a member must renew the record its peers read, shared by the DCS backends: a
Kubernetes member rewrites its heartbeat annotation, an etcd member keeps its lease alive."""

from __future__ import annotations


def heartbeat_interval(ttl_s: float, loop_wait_s: float, timeout_s: float) -> float:
    """How long an unchanged member record may go unwritten. Observers expire it `ttl_s`
    after they saw it change; its next write comes at the first cycle past this interval (up
    to `loop_wait_s` later) and may take `timeout_s`, so this leaves those and a slack for a
    slow cycle inside the ttl. Half the ttl at most: a member record is what its peers and
    probes read, and one missed heartbeat must not expire it."""
    slack_s = min(1.0, ttl_s / 10)
    return max(0.0, min(ttl_s / 2, ttl_s - loop_wait_s - timeout_s - slack_s))
