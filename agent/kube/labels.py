"""Pod role labels: keep this agent's own pod labelled `role=primary|replica` (names from
`KubernetesSettings`), so that selector Services route to the primary and to the replicas.

Level-triggered: `PodLabeler.run()` compares the label the published `AgentStatus` calls for
with the one it last applied, patches on a difference, and re-asserts it every `reassert_s`
(someone may have changed or removed it). With the Kubernetes DCS, whose pod watch already
sees every member pod (`observed`), a re-assertion that would change nothing is skipped: an
idle member then sends no label request at all (issue 15), and a label changed by hand is
still put back at the next re-assertion. It looks each time the HA loop publishes a status
(`changed`, an event the loop sets), or without one every 0.1 s. It only reads the status; it
never takes part in a decision. A failed patch is logged (`pod_label_failed`) and retried with
backoff (a 429: after its Retry-After, if longer); it never raises into the HA loop and never
blocks it (it runs as its own task, every request bounded by `timeout_s`). When the task is
cancelled (the agent stops), it removes the label once, best effort."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from agent.config import KubernetesSettings
from agent.kube.client import ClientFactory, KubeRequests, retry_wait_s
from agent.model import AgentStatus, PgState, Role

_POLL_S = 0.1  # without a `changed` event: how often the in-memory status is compared
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 5.0

_RUNNING_REPLICA_STATES = frozenset({PgState.RUNNING, PgState.STREAMING})

ObservedLabels = Callable[[], Mapping[str, Mapping[str, str]] | None]
"""The labels of the cluster's member pods by pod name, as a watch last saw them; None while
that view cannot be trusted (KubernetesDcs.observed_pod_labels)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleLabel:
    """Which label to manage and its two values."""

    key: str = "role"
    primary: str = "primary"
    replica: str = "replica"

    @classmethod
    def from_settings(cls, k8s: KubernetesSettings) -> RoleLabel:
        return cls(key=k8s.role_label, primary=k8s.primary_value, replica=k8s.replica_value)


def desired_role_label(status: AgentStatus, label: RoleLabel) -> str | None:
    """The label value this member's pod should carry, None for no label: primary only
    while PostgreSQL runs as primary and this member holds the lease; replica while it runs
    as a replica; otherwise (stopped, starting, fenced, a primary without the lease) none,
    so that no Service routes to it."""
    if status.role is Role.PRIMARY:
        if status.lease_held and status.state is PgState.RUNNING:
            return label.primary
        return None
    if status.role is Role.REPLICA and status.state in _RUNNING_REPLICA_STATES:
        return label.replica
    return None


# The label the Kubernetes DCS backend puts on each member's pod (agent.dcs.kubernetes
# CLUSTER_LABEL; the layers keep kube and dcs apart, so the name is repeated here).
CLUSTER_LABEL = "pgwarden.io/cluster"


def cluster_selector(labels: Iterable[tuple[str, str]], cluster: str) -> str:
    """The label selector of a cluster's member pods: the configured labels plus ours."""
    selector = dict(labels)
    selector[CLUSTER_LABEL] = cluster
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def label_patch(label: RoleLabel, value: str | None) -> dict[str, Any]:
    """A JSON merge patch that sets (or, for None, removes) the label."""
    return {"metadata": {"labels": {label.key: value}}}


class PodLabeler:
    """The label task for one pod. Build it in app.py; run `run()` as a named task.

    With `peers_selector` (the label selector of the cluster's pods), a primary also takes
    the primary label off every other pod of its cluster whenever it applies its own: a
    former primary that died (SIGKILL, node loss) cannot remove its label itself, and a
    selector Service must not keep routing writers to it.
    """

    def __init__(
        self,
        *,
        client_factory: ClientFactory,
        namespace: str,
        pod_name: str,
        label: RoleLabel,
        status: Callable[[], AgentStatus],
        reassert_s: float,
        timeout_s: float,
        peers_selector: str | None = None,
        changed: asyncio.Event | None = None,
        observed: ObservedLabels | None = None,
    ) -> None:
        self._requests = KubeRequests(client_factory, timeout_s=timeout_s)
        self._peers_selector = peers_selector
        self._namespace = namespace
        self._pod = pod_name
        self._label = label
        self._status = status
        self._reassert_s = reassert_s
        self._changed = changed
        self._observed = observed
        self._log = structlog.get_logger("pgwarden.kube").bind(pod=pod_name, label=label.key)

    async def run(self) -> None:
        """Forever: apply the desired label on change and every `reassert_s`."""
        loop = asyncio.get_running_loop()
        applied: tuple[str | None] | None = None  # (value,) once a patch succeeded
        applied_at = 0.0
        backoff_s = _BACKOFF_FIRST_S
        try:
            while True:
                if self._changed is not None:
                    self._changed.clear()  # before reading: a publish from now on wakes us
                desired = desired_role_label(self._status(), self._label)
                changed = applied != (desired,)
                due = changed or loop.time() - applied_at >= self._reassert_s
                if due and not changed and self.observed_as(desired):
                    applied_at = loop.time()  # the watch shows it in place: nothing to send
                elif due:
                    try:
                        await self.apply(desired)
                    except Exception as exc:  # logged and retried; never fatal
                        wait_s = retry_wait_s(exc, backoff_s)  # a 429: after its Retry-After
                        self._log.warning(
                            "pod_label_failed", value=desired, error=repr(exc), retry_s=wait_s
                        )
                        applied = None
                        await asyncio.sleep(wait_s)
                        backoff_s = min(2 * backoff_s, _BACKOFF_MAX_S)
                        continue
                    if applied != (desired,):
                        self._log.info("pod_labelled", value=desired)
                    applied, applied_at, backoff_s = (desired,), loop.time(), _BACKOFF_FIRST_S
                await self._wait(self._reassert_s - (loop.time() - applied_at))
        finally:
            # The agent stops: no Service should route to this pod any more (best effort).
            if applied != (None,):
                with contextlib.suppress(Exception):
                    await self.apply(None)
            await self.close()

    def observed_as(self, value: str | None) -> bool:
        """Whether the pod watch shows this pod labelled `value` (None: no label) and, for
        the primary value with a peers selector, no other pod of the cluster labelled primary
        too. False when there is no trusted view, or this pod is not in it."""
        pods = self._observed() if self._observed is not None else None
        if pods is None or self._pod not in pods:
            return False
        if pods[self._pod].get(self._label.key) != value:
            return False
        if value != self._label.primary or self._peers_selector is None:
            return True
        return not any(
            name != self._pod and labels.get(self._label.key) == self._label.primary
            for name, labels in pods.items()
        )

    async def _wait(self, limit_s: float) -> None:
        """Until the status is published again (at most `limit_s`), or one poll period."""
        if self._changed is None:
            await asyncio.sleep(_POLL_S)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, limit_s)):
                await self._changed.wait()

    async def apply(self, value: str | None) -> None:
        """Set (or remove) this pod's label; as primary, take it off the other pods too.
        Each request is bounded by `timeout_s`."""
        await self._patch(self._pod, value)
        if value is None or value != self._label.primary or self._peers_selector is None:
            return
        for pod in await self._other_primaries():
            await self._patch(pod, None)
            self._log.warning("pod_label_removed_from_peer", peer=pod, value=value)

    async def _other_primaries(self) -> list[str]:
        selector = f"{self._peers_selector},{self._label.key}={self._label.primary}"
        body = await self._requests.request(
            "GET", f"/api/v1/namespaces/{self._namespace}/pods", query=[("labelSelector", selector)]
        )
        items = (body.get("items") if isinstance(body, dict) else None) or []
        names = [str(item["metadata"]["name"]) for item in items]
        return [name for name in names if name != self._pod]

    async def _patch(self, pod: str, value: str | None) -> None:
        """One merge patch of a pod's labels, bounded by `timeout_s`."""
        await self._requests.request(
            "PATCH",
            f"/api/v1/namespaces/{self._namespace}/pods/{pod}",
            body=label_patch(self._label, value),
            content_type="application/merge-patch+json",
        )

    async def close(self) -> None:
        await self._requests.close()
