"""A small etcd v3 client over etcd's JSON gateway (`/v3/...`, etcd 3.4), on aiohttp.

Contracts shared by every call:

- Each call is bounded by `timeout_s` in total: endpoint failover, re-authentication and retries
  all happen inside that budget. When nothing answers it raises `EtcdUnavailable` shortly after
  the deadline; it never hangs.
- Requests are hedged: the endpoint that answered last is asked first. A request that changes
  nothing (a read, a keepalive, a txn of compares) also goes to the next endpoint when no
  answer came after a quarter of `timeout_s`; one that may change the store goes on to the
  next endpoint only when half of the remaining deadline has passed, as the sequential
  failover did. The first request keeps running either way, and the first answer wins. On a
  connection error or an etcd answer that means
  "this member cannot serve you now" (gRPC Unavailable / DeadlineExceeded: no leader, leader
  changed, request timed out) the next endpoint is asked at once. So a black-holed endpoint
  costs a quarter of the deadline, and a slow one that answers within the deadline is not
  abandoned (`_call_with_failover` says why the duplicates are harmless). A repeated write
  may already have been applied by a member whose answer we did not wait for; callers make
  writes safe to repeat with txn compares (as the DCS backend does).
- Requests (except serializable reads) carry the gRPC metadata `hasleader=true`, so a member cut
  off from its cluster answers at once with "no leader" instead of timing out, and a watch on
  such a member is closed by the server.
- The constructor does no I/O: a client can be built while etcd is down. The aiohttp session is
  created on first use, in the running event loop.

The gateway's JSON is encoded and decoded in one place, agent/dcs/etcd_wire.py (with the value
types and errors, which this module re-exports); a hedged call's attempts are tracked by
agent/dcs/etcd_hedge.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, NoReturn

import aiohttp

from agent.dcs.etcd_hedge import Hedge, Post, Retryable, TokenRejected
from agent.dcs.etcd_wire import (
    GRPC_NOT_FOUND,
    GRPC_PERMISSION_DENIED,
    GRPC_UNAUTHENTICATED,
    RETRYABLE_CODES,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteOp,
    EtcdAuthFailed,
    EtcdCompacted,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdPermissionDenied,
    EtcdUnavailable,
    EventType,
    GatewayError,
    KeyValue,
    PutOp,
    RangeOp,
    RangeResult,
    TxnOp,
    TxnResult,
    WatchBatch,
    WatchEvent,
    b64,
    dec_error,
    dec_event,
    dec_int,
    dec_range,
    dec_revision,
    enc_compare,
    enc_key_range,
    enc_op,
    is_bad_credentials,
    is_token_error,
    prefix_end,
)

# The client's API: the value types and errors live in etcd_wire, importable from here.
__all__ = [
    "Compare",
    "CompareResult",
    "CompareTarget",
    "DeleteOp",
    "EtcdAuthFailed",
    "EtcdClient",
    "EtcdCompacted",
    "EtcdError",
    "EtcdLeaseNotFound",
    "EtcdPermissionDenied",
    "EtcdUnavailable",
    "EventType",
    "KeyValue",
    "Post",
    "PutOp",
    "RangeOp",
    "RangeResult",
    "TxnOp",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "prefix_end",
]

# Backoff between passes over all endpoints (connection refused fails instantly: do not spin).
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0

# An attempt runs alone for this share of the call's deadline before the same request goes to
# the next endpoint too (hedging; `EtcdClient._call_with_failover`). 0.25: with three
# endpoints all have been asked by half the deadline (a black hole costs no more than the
# old sequential failover's halving did), and an endpoint that answers slowly keeps the
# rest of the deadline.
_HEDGE_SHARE_OF_TIMEOUT = 0.25


class EtcdClient:
    """A client for one etcd cluster, reachable at any of `endpoints`. See the module docstring.

    Not thread-safe; use it from one event loop. `close()` it when done.
    """

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
        decoded JSON answer); aiohttp by default (tests give a fake transport). Watches
        always use aiohttp."""
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
        self._session: aiohttp.ClientSession | None = None
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

    # -- public KV / lease API ----------------------------------------------------------------

    async def range(
        self, key: bytes, *, prefix: bool = False, serializable: bool = False
    ) -> RangeResult:
        """Read `key` (or every key under the prefix `key`). Linearizable unless
        `serializable` (then any member answers from its local state, even without a leader)."""
        body = enc_key_range(key, prefix)
        if serializable:
            body["serializable"] = True
        resp = await self._call(
            "/v3/kv/range", body, require_leader=not serializable, changes=False
        )
        return dec_range(resp)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write `key`; returns the revision of the write. Raises `EtcdLeaseNotFound` when
        `lease` is not 0 and no longer exists."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return dec_revision(await self._call("/v3/kv/put", body))

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete `key` (or every key under the prefix); returns how many keys were deleted."""
        resp = await self._call("/v3/kv/deleterange", enc_key_range(key, prefix))
        return dec_int(resp, "deleted")

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds run `success`, else run `failure`.
        `ranges` holds the results of the RangeOps of the branch taken, in order."""
        body = {
            "compare": [enc_compare(c) for c in compares],
            "success": [enc_op(op) for op in success],
            "failure": [enc_op(op) for op in failure],
        }
        writes = any(not isinstance(op, RangeOp) for op in (*success, *failure))
        resp = await self._call("/v3/kv/txn", body, changes=writes)
        revision = dec_revision(resp)
        ranges = tuple(
            dec_range(r["response_range"], revision)
            for r in resp.get("responses", ())
            if "response_range" in r
        )
        return TxnResult(succeeded=bool(resp.get("succeeded")), revision=revision, ranges=ranges)

    async def lease_grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease; returns (lease id, ttl granted). etcd may grant more than asked for
        (its minimum is about 1.5 election timeouts)."""
        resp = await self._call("/v3/lease/grant", {"TTL": str(ttl_s)})
        return dec_int(resp, "ID"), dec_int(resp, "TTL")

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease; returns its ttl from now, or 0 when the lease is gone or expired."""
        resp = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, changes=False)
        result = resp.get("result")
        return dec_int(result, "TTL") if isinstance(result, dict) else 0

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease, deleting its keys. A lease that is already gone is not an error."""
        with contextlib.suppress(EtcdLeaseNotFound):
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})

    async def close(self) -> None:
        """Close the HTTP session. Any later call raises `EtcdError`."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- watch ---------------------------------------------------------------------------------

    def watch(
        self,
        key: bytes,
        *,
        prefix: bool = True,
        start_revision: int,
        on_stream: Callable[[str | None], None] | None = None,
    ) -> AsyncIterator[WatchBatch]:
        """Batches of events on `key` (or the prefix `key`) from `start_revision` on.

        Survives dropped streams: it reconnects (to the next endpoint if needed) and resumes
        after the last event it delivered, so no event is lost or repeated. The stream is
        re-created every `watch_refresh_s` as well, so a silently dead connection cannot hide
        changes for longer. Raises `EtcdCompacted` if the start or resume revision was compacted.
        While no endpoint is reachable it keeps retrying (it never raises `EtcdUnavailable`):
        bound it with your own timeout. Use it with `contextlib.aclosing` or cancel the consumer
        task to close the stream. `on_stream(endpoint)` is called when a stream is created on
        `endpoint` (events from then on arrive with the watch's latency), `on_stream(None)`
        when it ends.
        """
        if start_revision < 1:
            raise ValueError("start_revision must be >= 1")
        return self._watch(key, prefix, start_revision, on_stream or _ignore)

    async def _watch(
        self,
        key: bytes,
        prefix: bool,
        start_revision: int,
        on_stream: Callable[[str | None], None],
    ) -> AsyncGenerator[WatchBatch, None]:
        next_revision = start_revision
        backoff_s = _BACKOFF_FIRST_S
        failures = 0  # consecutive streams that failed before delivering anything
        index = self._preferred
        while True:
            create: dict[str, Any] = {
                **enc_key_range(key, prefix),
                "start_revision": str(next_revision),
            }
            delivered = False
            try:
                stream = self._watch_stream(
                    self._endpoints[index], {"create_request": create}, on_stream
                )
                async with contextlib.aclosing(stream):
                    async for batch in stream:
                        delivered = True
                        next_revision = batch.events[-1].kv.mod_revision + 1
                        yield batch
                # The stream lived its full refresh period: resume at once on the same endpoint.
                self._preferred = index
                failures = 0
                backoff_s = _BACKOFF_FIRST_S
                continue
            except TokenRejected as rejected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._timeout_s):
                        await self._reauthenticate(rejected.token)
            except Retryable:
                pass
            # The stream failed (or its token was rejected): the member may be gone; try the next.
            index = (index + 1) % len(self._endpoints)
            failures = 0 if delivered else failures + 1
            if failures >= len(self._endpoints):
                # A full pass failed: wait before the next one.
                failures = 0
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)

    async def _watch_stream(
        self, endpoint: str, body: dict[str, Any], on_stream: Callable[[str | None], None]
    ) -> AsyncGenerator[WatchBatch, None]:
        """One watch stream on one endpoint, for at most `watch_refresh_s`. Ends normally when
        that period is over; raises `Retryable` / `TokenRejected` / `EtcdError` otherwise.

        No `yield` happens inside a timeout block: the consumer runs at each yield, and a
        deadline firing then would cancel the consumer instead of this read."""
        session = self._ensure_session()
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self._watch_refresh_s
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._needs_token():
                    await self._authenticate()
                headers = self._headers(require_leader=True)
                sent_token = self._token
                resp = await session.post(f"{endpoint}/v3/watch", json=body, headers=headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Retryable from exc
        try:
            if resp.status != 200:
                payload = await _read_json_bounded(resp, self._timeout_s)
                self._raise_for_error(payload, resp.status)
            # Until `created` arrives, bound the wait by timeout_s; after it, by the refresh
            # period (an idle watch legitimately receives nothing).
            read_deadline = loop.time() + self._timeout_s
            created = False
            buffer = b""
            while True:
                try:
                    async with asyncio.timeout_at(read_deadline):
                        chunk = await resp.content.readany()
                except TimeoutError:
                    if created:
                        return  # refresh period over: the caller opens a new stream
                    raise Retryable("watch stream not created in time") from None
                if not chunk:
                    raise Retryable("watch stream closed by the server")
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    batch = self._watch_message(json.loads(line))
                    if not created:
                        created = True
                        read_deadline = ends_at
                        on_stream(endpoint)
                    if batch is not None:
                        yield batch
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise Retryable from exc
        except TokenRejected:
            raise TokenRejected(sent_token) from None
        finally:
            on_stream(None)
            resp.close()

    def _watch_message(self, msg: dict[str, Any]) -> WatchBatch | None:
        err = dec_error(msg)
        if err is not None:
            self._raise_for_gateway_error(err)
        result = msg.get("result")
        if not isinstance(result, dict):
            raise Retryable("unexpected watch message")
        if result.get("canceled"):
            compact_revision = dec_int(result, "compact_revision")
            if compact_revision:
                raise EtcdCompacted(compact_revision)
            reason = str(result.get("cancel_reason", ""))
            if "Unauthenticated" in reason or "auth store is old" in reason:
                raise TokenRejected
            if "PermissionDenied" in reason:
                raise EtcdPermissionDenied("etcd: permission denied for watch")
            raise Retryable(f"watch canceled: {reason}")
        events = tuple(dec_event(e) for e in result.get("events", ()))
        if not events:
            return None
        return WatchBatch(events=events, revision=dec_revision(result))

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
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        backoff_s = _BACKOFF_FIRST_S
        reauthenticated = False
        try:
            while True:
                if not hedge.running:
                    if not hedge.untried:
                        await asyncio.sleep(backoff_s)
                        backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
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
        finally:
            hedge.cancel()

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
        except (aiohttp.ClientError, OSError, ValueError) as exc:
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
        session = self._ensure_session()
        async with session.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

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

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise EtcdError("etcd client is closed")
        if self._session is None:
            ssl_ctx: ssl.SSLContext | bool = True
            if any(e.startswith("https://") for e in self._endpoints):
                ssl_ctx = ssl.create_default_context(cafile=self._ca_file)
                if self._cert_file is not None and self._key_file is not None:
                    ssl_ctx.load_cert_chain(self._cert_file, self._key_file)
            connector = aiohttp.TCPConnector(ssl=ssl_ctx, limit=0, enable_cleanup_closed=True)
            # Deadlines are enforced with asyncio.timeout around each attempt, not by aiohttp.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                raise_for_status=False,
            )
        return self._session


async def _read_json_bounded(resp: aiohttp.ClientResponse, timeout_s: float) -> Any:
    try:
        async with asyncio.timeout(timeout_s):
            return await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise Retryable from exc


def _ignore(_: str | None) -> None:
    """`watch` without an `on_stream` callback."""
