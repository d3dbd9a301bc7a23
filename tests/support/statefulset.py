"""The StatefulSet and disruption controllers, played for a `LocalCluster` on the test API
server (which stores StatefulSets and PodDisruptionBudgets but runs no controller).

`StatefulSetSim.install()` creates an `OnDelete` StatefulSet selecting the cluster's pods
(status.updateRevision = the given revision), labels the pods with that revision
(`controller-revision-hash`) and creates a PodDisruptionBudget (maxUnavailable 1).
`run()` then does, every `interval_s`:
- a pod that is gone (deleted) is a pod deletion on a node: its agent gets SIGTERM (and is
  waited for, as the kubelet would), then the pod is created again with the label of the
  StatefulSet's updateRevision and its agent started again;
- the budget's status.disruptionsAllowed = ready pods - (replicas - 1), where ready is the
  pod existing and the member's `/readiness` answering 200 (the example's readiness probe);
  `block_budget` forces 0.

Every request goes through aiohttp (the test's writer shares the event loop); stopping and
starting an agent run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent.localcluster import LocalCluster
from agent.rollout import REVISION_LABEL


@dataclass(slots=True)
class StatefulSetSim:
    cluster: LocalCluster
    name: str = "pg"
    interval_s: float = 0.1
    block_budget: bool = False
    deleted: list[str] = field(default_factory=list)  # pods recreated, in order
    # For each pod deletion seen: how many of the other pods were not ready at that moment
    # (a deletion that respected the budget: 0).
    unready_at_deletion: list[int] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    @property
    def _ns(self) -> str:
        return f"/namespaces/{self.cluster.kube_namespace}"

    async def _call(self, method: str, path: str, body: object = None) -> Any:
        assert self._session is not None
        async with self._session.request(
            method,
            self.cluster.apiserver_url + path,
            json=body,
            headers={
                "Authorization": f"Bearer {self.cluster.admin_token}",
                "Content-Type": "application/merge-patch+json"
                if method == "PATCH"
                else "application/json",
            },
            timeout=aiohttp.ClientTimeout(total=2),
        ) as response:
            return await response.json() if response.status != 404 else None

    def attach(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def install(self, session: aiohttp.ClientSession, revision: str) -> None:
        self.attach(session)
        labels = self.cluster.kube_labels
        sts = f"/apis/apps/v1{self._ns}/statefulsets"
        await self._call(
            "POST",
            sts,
            {
                "metadata": {"name": self.name},
                "spec": {
                    "replicas": len(self.cluster.members),
                    "updateStrategy": {"type": "OnDelete"},
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}},
                },
            },
        )
        await self.new_revision(revision)
        for member in self.cluster.members:
            await self._call(
                "PATCH",
                f"/api/v1{self._ns}/pods/{member.name}",
                {"metadata": {"labels": {REVISION_LABEL: revision}}},
            )
        await self._call(
            "POST",
            f"/apis/policy/v1{self._ns}/poddisruptionbudgets",
            {
                "metadata": {"name": self.name},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
                "status": {"disruptionsAllowed": 0},
            },
        )

    async def new_revision(self, revision: str) -> None:
        """What `kubectl apply` of a changed template does to an OnDelete StatefulSet."""
        await self._call(
            "PATCH",
            f"/apis/apps/v1{self._ns}/statefulsets/{self.name}/status",
            {"status": {"updateRevision": revision, "replicas": len(self.cluster.members)}},
        )

    async def revisions(self) -> dict[str, str]:
        listed = await self._call("GET", f"/api/v1{self._ns}/pods")
        return {
            pod["metadata"]["name"]: (pod["metadata"].get("labels") or {}).get(REVISION_LABEL, "")
            for pod in listed["items"]
        }

    async def run(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError):
                present = await self.revisions()
                for index, member in enumerate(self.cluster.members):
                    if member.name not in present:
                        await self._recreate(index)
                await self._update_budget(await self.revisions())
            await asyncio.sleep(self.interval_s)

    async def _recreate(self, index: int) -> None:
        member = self.cluster.members[index]
        self.deleted.append(member.name)
        others = [i for i in range(len(self.cluster.members)) if i != index]
        self.unready_at_deletion.append([await self._ready(i) for i in others].count(False))
        await asyncio.to_thread(self.cluster.stop_member, index)
        sts = await self._call("GET", f"/apis/apps/v1{self._ns}/statefulsets/{self.name}")
        revision = sts["status"]["updateRevision"]
        await self._call(
            "POST",
            f"/api/v1{self._ns}/pods",
            {
                "metadata": {
                    "name": member.name,
                    "labels": {**self.cluster.kube_labels, REVISION_LABEL: revision},
                },
                "spec": {"containers": [{"name": "postgres", "image": "pgwarden"}]},
                "status": {"phase": "Running", "podIP": "127.0.0.1"},
            },
        )
        await asyncio.to_thread(self.cluster.start_member, index)

    async def _ready(self, index: int) -> bool:
        assert self._session is not None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._session.get(
                self.cluster.members[index].api_url + "/readiness",
                timeout=aiohttp.ClientTimeout(total=0.5),
            ) as response:
                return response.status == 200
        return False

    async def _update_budget(self, present: dict[str, str]) -> None:
        ready = [
            member.name in present and await self._ready(index)
            for index, member in enumerate(self.cluster.members)
        ]
        allowed = 0 if self.block_budget else max(0, 1 - ready.count(False))
        await self._call(
            "PATCH",
            f"/apis/policy/v1{self._ns}/poddisruptionbudgets/{self.name}/status",
            {"status": {"disruptionsAllowed": allowed}},
        )
