"""Calls to the other members' REST APIs: the pre-race health check, failsafe rounds.

`Peers` is the seam (the unit tests answer for the members); `HttpPeers` asks them over
HTTP. Neither decides anything: the answers go into the Observation (`PeerStatus`) or into
an Outcome (`confirm_failsafe`), and agent.decide judges them.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from agent.clock import Clock
from agent.decide import PeerStatus
from agent.http.client import HttpClient, HttpError
from agent.lean import system_ca_context
from agent.metrics import Metrics
from agent.model import Member, MemberName, PgState, Role
from agent.settings import Settings

log = structlog.get_logger("pgwarden.loop")


class Peers(Protocol):
    async def health(self, members: Sequence[Member]) -> tuple[PeerStatus, ...]:
        """Ask each member at once how far it got (GET /health); an unreachable member or
        a bad answer is `reachable=False`. Never raises."""

    async def ask_failsafe(self, members: Sequence[tuple[MemberName, str]]) -> list[str]:
        """POST /failsafe to every (name, api_url) at once; the refusals, one line each
        (empty: every member accepted). Never raises."""

    async def close(self) -> None: ...


class HttpPeers:
    """`Peers` over agent/http/client.py; one client, made on first use."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        client_tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        """`client_tls` returns the current TLS context for `https` members (api.tls, which
        may have been rotated since the last call); None: the system CAs."""
        self._settings = settings
        self._clock = clock
        self._client_tls = client_tls
        self._http: HttpClient | None = None

    def _ssl(self, url: str) -> ssl.SSLContext | None:
        """For `https` members: verified against api.tls.ca_file (system CAs without TLS
        settings, loaded on first use). A member whose certificate does not verify fails the
        call (unreachable). Plain `http` members: no context."""
        if not url.startswith("https://"):
            return None
        return self._client_tls() if self._client_tls is not None else system_ca_context()

    def _client(self) -> HttpClient:
        if self._http is None:
            self._http = HttpClient()
        return self._http

    async def health(self, members: Sequence[Member]) -> tuple[PeerStatus, ...]:
        http = self._client()
        timeout = self._settings.timing.peer_check_timeout_s

        async def ask(member: Member) -> PeerStatus:
            try:
                _, _, data = await http.fetch(
                    "GET",
                    member.api_url + "/health",
                    timeout=timeout,
                    ssl_context=self._ssl(member.api_url),
                )
                body = json.loads(data)
                return PeerStatus(
                    name=member.name,
                    reachable=True,
                    role=Role(body.get("role", "unknown")),
                    state=PgState(body.get("state", "unknown")),
                    timeline=body.get("timeline"),
                    wal_lsn=body.get("wal_lsn"),
                    nofailover=member.tags.nofailover or member.promotion_vetoed,
                    failover_priority=member.tags.failover_priority,
                )
            except (HttpError, OSError, ValueError, AttributeError):
                return PeerStatus(name=member.name, reachable=False)

        return tuple(await asyncio.gather(*(ask(m) for m in members)))

    async def ask_failsafe(self, members: Sequence[tuple[MemberName, str]]) -> list[str]:
        http = self._client()
        settings = self._settings
        timing = settings.timing
        # More patient than the pre-race check: one slow answer fails the whole round, and a
        # round only has to be sent before the deadline (a DCS read takes longer anyway).
        timeout = max(timing.peer_check_timeout_s, timing.retry_timeout_s / 2)
        headers = {**settings.api.authorization_header(), "Content-Type": "application/json"}
        body = {"leader": settings.name, "cluster": settings.cluster, "sent_at": self._clock.wall()}
        payload = json.dumps(body).encode()

        async def ask(name: MemberName, url: str) -> str | None:
            try:
                status, _, data = await http.fetch(
                    "POST",
                    url + "/failsafe",
                    body=payload,
                    headers=headers,
                    timeout=timeout,
                    ssl_context=self._ssl(url),
                )
                if status == 200:
                    return None
                answer = json.loads(data)
                return f"{name}: {status} {answer.get('error', '')}"
            except (HttpError, OSError, ValueError, AttributeError) as exc:
                return f"{name}: unreachable ({type(exc).__name__})"

        answers = await asyncio.gather(*(ask(n, u) for n, u in members))
        return [r for r in answers if r]

    async def identify(self, url: str) -> tuple[str, str] | None:
        """(name, cluster) the agent at `url` answers for (GET /health); None when nothing
        answers there, or not as an agent (agent.namecheck)."""
        timeout = max(1.0, self._settings.timing.peer_check_timeout_s)
        try:
            _, _, data = await self._client().fetch(
                "GET", url + "/health", timeout=timeout, ssl_context=self._ssl(url)
            )
            body = json.loads(data)
            name, cluster = body.get("name"), body.get("cluster")
        except (HttpError, OSError, ValueError, AttributeError):
            return None
        return (name, cluster) if isinstance(name, str) and isinstance(cluster, str) else None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


async def check_peers(
    peers: Peers, view_members: Sequence[Member], me: str
) -> tuple[PeerStatus, ...]:
    """Ask every other member directly how far it got (DESIGN.md section 3, failover)."""
    return await peers.health([m for m in view_members if m.name != me])


async def confirm_failsafe(
    peers: Peers, members: Sequence[tuple[MemberName, str]], metrics: Metrics
) -> bool:
    """One failsafe round: True only if every member accepted."""
    refusals = await peers.ask_failsafe(members)
    metrics.count_failsafe_round(not refusals)
    if refusals:
        log.warning("failsafe_not_confirmed", refusals=refusals)
        return False
    log.info("failsafe_confirmed_by_all", members=[n for n, _ in members])
    return True
