"""The request engine of the etcd client (agent/dcs/etcd_client.py, whose docstring states the
contracts): one unary request sent within `timeout_s`, hedged over the endpoints with failover
and backoff, the auth token got and renewed, the gateway's errors mapped to the client's, and
the HTTP client (agent/http/client.py: a small pool of kept-alive connections per endpoint).
`EtcdClient` builds the KV, lease and watch API on it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Sequence
from typing import Any, NoReturn

from agent.dcs.etcd_hedge import Hedge, Post, Retryable, TokenRejected
from agent.dcs.etcd_wire import (
    GRPC_NOT_FOUND,
    GRPC_PERMISSION_DENIED,
    GRPC_UNAUTHENTICATED,
    RETRYABLE_CODES,
    EtcdAuthFailed,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdPermissionDenied,
    EtcdUnavailable,
    GatewayError,
    dec_error,
    is_bad_credentials,
    is_token_error,
)
from agent.http.client import HttpClient, HttpError

# Backoff between passes over all endpoints (connection refused fails instantly: do not spin).
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0

# An attempt runs alone for this share of the call's deadline before the same request goes to
# the next endpoint too (hedging; `EtcdTransport._call_with_failover`). 0.25: with three
# endpoints all have been asked by half the deadline (a black hole costs no more than the
# old sequential failover's halving did), and an endpoint that answers slowly keeps the
# rest of the deadline.
_HEDGE_SHARE_OF_TIMEOUT = 0.25

# Requests that change nothing in the store (a keepalive only pushes a lease's expiry to "ttl
# from now" again): sent again once on a new connection if a kept one was found closed just
# as they went out (agent/http/client.py); every other request is never sent twice by the
# HTTP client (the hedging above decides about copies).
_IDEMPOTENT_PATHS = frozenset({"/v3/kv/range", "/v3/lease/keepalive", "/v3/auth/authenticate"})


class EtcdTransport:
    """Sends requests to one etcd cluster, reachable at any of `endpoints`; the base of
    `EtcdClient` (see agent/dcs/etcd_client.py). Not thread-safe."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        watch_refresh_s: float = 30.0,
        post: Post | None = None,
    ) -> None:
        """`post`: how one unary request is sent, (url, JSON body, headers) -> (HTTP status,
        decoded JSON answer); agent/http/client.py by default (tests give a fake transport).
        Watches always use the HTTP client."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        self._endpoints = tuple(e.rstrip("/") for e in endpoints)
        self._timeout_s = timeout_s
        self._ca_file = ca_file
        self._cert_file = cert_file
        self._key_file = key_file
        self._username = username
        self._password = password
        self._watch_refresh_s = watch_refresh_s
        self._preferred = 0  # index of the endpoint that answered last
        self._answers = 0  # calls answered so far
        self._http: HttpClient | None = None
        self._token: str | None = None
        self._auth_lock: asyncio.Lock | None = None
        self._auth_enabled = True  # until etcd says otherwise
        self._closed = False
        self._post: Post = post if post is not None else self._post_http

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    @property
    def answered_by(self) -> str:
        """The endpoint that answered the newest call (asked first by the next one)."""
        return self._endpoints[self._preferred]

    @property
    def answers(self) -> int:
        """How many calls an endpoint has answered (a watch stream is not a call)."""
        return self._answers

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    # -- the request engine --------------------------------------------------------------------

    async def _call(
        self,
        path: str,
        body: dict[str, Any],
        *,
        require_leader: bool = True,
        changes: bool = True,
    ) -> dict[str, Any]:
        """POST `body` to `path` on some endpoint within `timeout_s`; the decoded answer.
        `changes`: the request may change the store (hedged more sparingly)."""
        failures: dict[str, str] = {}
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._call_with_failover(
                    path, body, require_leader, failures=failures, changes=changes
                )
        except TimeoutError:
            last = "; ".join(f"{endpoint}: {why}" for endpoint, why in failures.items())
            last = f" (last errors: {last})" if last else ""
            raise EtcdUnavailable(
                f"etcd: no endpoint answered {path} within {self._timeout_s:g} s{last}"
            ) from None

    async def _call_with_failover(
        self,
        path: str,
        body: dict[str, Any],
        require_leader: bool,
        *,
        with_token: bool = True,
        failures: dict[str, str] | None = None,
        changes: bool,
    ) -> dict[str, Any]:
        """Send the request to the endpoints, hedged, until one answers; loops until
        cancelled (the caller bounds it). Records in `failures` why each endpoint last failed.

        Hedging: the last good endpoint is asked first. A request that changes nothing
        (`changes` false: a read, a keepalive, a txn of compares and reads) goes to the next
        endpoint as well each time no answer came for a quarter of the deadline, and after
        the last endpoint round again from the first (a request that stalls where it was
        sent, on a member waiting for an election, may be answered at once when sent anew):
        at most about 1 / _HEDGE_SHARE_OF_TIMEOUT copies. A request that may change the
        store keeps the old failover's schedule, and so sends no more copies than it did:
        the next endpoint is asked when half of the remaining deadline has passed, once per
        endpoint, but the slow attempt is no longer cancelled then. The first answer wins
        and the attempts still running are cancelled. An attempt that fails (refused,
        reset, "no leader") hands over to the next endpoint at once; once every endpoint
        failed and none is still running, the next pass starts after a backoff. A slow
        attempt is never abandoned for one that has not answered yet: on a link where every
        endpoint is equally slow (chaos finding 11) the first request still answers within
        the call's deadline, which cancelling it at a budget could not do.

        Why the copies are harmless: they are the same request. A read, a keepalive and a
        txn of compares (the renewal's ownership check) change nothing, or only push the
        lease's expiry to "ttl from now" again: these are the only requests hedged early. A
        write gets a second copy only where the old failover sent one too (cancelling an
        attempt never unsent it; it only threw its answer away), and every write the DCS
        backend makes is a compare-and-set (acquire: create_revision 0; records: the
        mod_revision read; release: the value is ours), so of two copies at most one
        applies and the other answers "compare failed", which the backend reads back as it
        reads any repeated write; a plain member put arriving late may put an older record
        over a newer one, which the backend's next read notices (the stored record is not
        the one it published last) and publishes again. `lease_grant` may leave a spare
        lease bound to no key, which expires after its ttl.
        """
        failures = {} if failures is None else failures
        hedge = Hedge(
            launch=lambda index: self._attempt(
                self._endpoints[index], path, body, require_leader, with_token
            ),
            endpoints=self._endpoints,
            failures=failures,
        )
        hedge.new_pass(self._preferred)
        try:
            return await self._until_answered(hedge, changes)
        finally:
            hedge.cancel()

    async def _until_answered(self, hedge: Hedge, changes: bool) -> dict[str, Any]:
        """The loop of `_call_with_failover`: start attempts on `hedge` by its schedule and
        the outcomes of those that end, until one answers."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        backoff_s = BACKOFF_FIRST_S
        reauthenticated = False
        while True:
            if not hedge.running:
                if not hedge.untried:
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                    hedge.new_pass(self._preferred)
                hedge.start_next()
            done = await hedge.wait(self._hedge_after_s(changes, deadline, hedge))
            if done is None:
                # The slow attempts keep running. Past the last endpoint, the rotation
                # starts again: a request that stalls where it was sent (a member waiting
                # for its cluster to elect a leader) may be answered at once when sent anew.
                if not hedge.untried:
                    hedge.new_pass(self._preferred)
                hedge.start_next()
                continue
            index, outcome = done
            if isinstance(outcome, TokenRejected):
                if reauthenticated:
                    raise EtcdAuthFailed("etcd: auth token rejected after re-authentication")
                reauthenticated = True
                await self._reauthenticate(outcome.token)
                hedge.start(index)  # at once on the same endpoint
            elif isinstance(outcome, BaseException):
                if hedge.untried:
                    hedge.start_next()  # a failure hands over at once
            else:
                self._preferred = index
                self._answers += 1
                return outcome

    def _hedge_after_s(self, changes: bool, deadline: float, hedge: Hedge) -> float | None:
        """How long the attempts running now run alone before the next copy is sent (None:
        no further copy, wait for them)."""
        if not changes:
            return self._timeout_s * _HEDGE_SHARE_OF_TIMEOUT
        if not hedge.untried:
            return None
        return max((deadline - asyncio.get_running_loop().time()) / 2, 0.001)

    async def _attempt(
        self,
        endpoint: str,
        path: str,
        body: dict[str, Any],
        require_leader: bool,
        with_token: bool,
    ) -> dict[str, Any]:
        headers: dict[str, str] = {}
        if with_token:
            if self._needs_token():
                await self._authenticate()
            headers = self._headers(require_leader=require_leader)
        sent_token = headers.get("Authorization")
        try:
            status, payload = await self._post(f"{endpoint}{path}", body, headers)
        except (HttpError, OSError, ValueError) as exc:
            raise Retryable from exc
        if not isinstance(payload, dict):
            raise Retryable(f"unexpected answer from {path}")
        if status != 200 or "error" in payload:
            try:
                self._raise_for_error(payload, status)
            except TokenRejected:
                raise TokenRejected(sent_token) from None
        return payload

    async def _post_http(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, Any]:
        """The default `post`: one HTTP POST; (status, decoded JSON body)."""
        http = self._ensure_session()
        status, _, data = await http.fetch(
            "POST",
            url,
            body=json.dumps(body).encode(),
            headers={**headers, "Content-Type": "application/json"},
            idempotent=url.endswith(tuple(_IDEMPOTENT_PATHS)),
        )
        return status, json.loads(data) if data else None

    def _raise_for_error(self, payload: Any, status: int) -> NoReturn:
        err = dec_error(payload) if isinstance(payload, dict) else None
        if err is None:
            if status >= 500:
                raise Retryable(f"HTTP {status}")
            raise EtcdError(f"etcd gateway answered HTTP {status}")
        self._raise_for_gateway_error(err)

    def _raise_for_gateway_error(self, err: GatewayError) -> NoReturn:
        if err.code in RETRYABLE_CODES:
            raise Retryable(err.message)
        if self._username is not None and is_token_error(err):
            raise TokenRejected
        if err.code == GRPC_UNAUTHENTICATED or is_bad_credentials(err):
            raise EtcdAuthFailed(f"etcd: {err.message}")
        if err.code == GRPC_PERMISSION_DENIED:
            raise EtcdPermissionDenied(f"etcd: {err.message}")
        if err.code == GRPC_NOT_FOUND and "lease not found" in err.message:
            raise EtcdLeaseNotFound(f"etcd: {err.message}")
        raise EtcdError(f"etcd: {err.message} (code {err.code})")

    # -- auth ----------------------------------------------------------------------------------

    async def _reauthenticate(self, rejected_token: str | None) -> None:
        """Replace `rejected_token` with a fresh one (once, however many callers saw it fail)."""
        async with self._get_auth_lock():
            if self._token == rejected_token:
                self._token = None
                self._auth_enabled = True  # etcd may have turned auth on since we last asked
        await self._authenticate()

    async def _authenticate(self) -> None:
        """Get a token for our user, unless another task already did."""
        async with self._get_auth_lock():
            if not self._needs_token():
                return
            body = {"name": self._username, "password": self._password or ""}
            try:
                resp = await self._call_with_failover(
                    "/v3/auth/authenticate", body, False, with_token=False, changes=False
                )
            except EtcdError as exc:
                if "authentication is not enabled" in str(exc):
                    self._auth_enabled = False  # send no token (until etcd asks for one)
                    return
                raise
            token = resp.get("token")
            if not isinstance(token, str) or not token:
                raise EtcdAuthFailed("etcd: authenticate returned no token")
            self._token = token

    def _needs_token(self) -> bool:
        return self._username is not None and self._token is None and self._auth_enabled

    def _get_auth_lock(self) -> asyncio.Lock:
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        return self._auth_lock

    def _headers(self, *, require_leader: bool) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._token is not None:
            headers["Authorization"] = self._token
        if require_leader:
            headers["Grpc-Metadata-hasleader"] = "true"
        return headers

    # -- session -------------------------------------------------------------------------------

    def _ensure_session(self) -> HttpClient:
        """The HTTP client, made on first use. Deadlines are enforced with asyncio.timeout
        around each attempt, not by the client; it keeps no timer of its own."""
        if self._closed:
            raise EtcdError("etcd client is closed")
        if self._http is None:
            ssl_ctx: ssl.SSLContext | None = None
            if any(e.startswith("https://") for e in self._endpoints):
                ssl_ctx = ssl.create_default_context(cafile=self._ca_file)
                if self._cert_file is not None and self._key_file is not None:
                    ssl_ctx.load_cert_chain(self._cert_file, self._key_file)
            self._http = HttpClient(ssl_context=ssl_ctx)
        return self._http
