"""A small etcd v3 client over etcd's JSON gateway (`/v3/...`, etcd 3.4), on the agent's
own HTTP client (agent/http/client.py).

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
- The constructor does no I/O: a client can be built while etcd is down. The HTTP client is
  created on first use, in the running event loop.

The gateway's JSON is encoded and decoded in one place, agent/dcs/etcd_wire.py (with the value
types and errors, which this module re-exports). This module holds the KV, lease and watch API;
the request engine under it (failover and hedging, auth tokens, the HTTP session) is
`EtcdTransport` in agent/dcs/etcd_transport.py, and a hedged call's attempts are tracked by
agent/dcs/etcd_hedge.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

from agent.dcs.etcd_hedge import Post, Retryable, TokenRejected
from agent.dcs.etcd_transport import BACKOFF_FIRST_S, BACKOFF_MAX_S, EtcdTransport
from agent.dcs.etcd_wire import (
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
    prefix_end,
)
from agent.http.client import HttpError, HttpResponse

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


class EtcdClient(EtcdTransport):
    """A client for one etcd cluster, reachable at any of `endpoints`. See the module docstring.

    Not thread-safe; use it from one event loop. `close()` it when done.
    """

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
        """Close the HTTP client (its streams too). Any later call raises `EtcdError`."""
        self._closed = True
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

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
        backoff_s = BACKOFF_FIRST_S
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
                backoff_s = BACKOFF_FIRST_S
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
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _watch_stream(
        self, endpoint: str, body: dict[str, Any], on_stream: Callable[[str | None], None]
    ) -> AsyncGenerator[WatchBatch, None]:
        """One watch stream on one endpoint, for at most `watch_refresh_s`. Ends normally when
        that period is over; raises `Retryable` / `TokenRejected` / `EtcdError` otherwise.

        No `yield` happens inside a timeout block: the consumer runs at each yield, and a
        deadline firing then would cancel the consumer instead of this read."""
        http = self._ensure_session()
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self._watch_refresh_s
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._needs_token():
                    await self._authenticate()
                headers = self._headers(require_leader=True)
                sent_token = self._token
                resp = await http.request(
                    "POST",
                    f"{endpoint}/v3/watch",
                    body=json.dumps(body).encode(),
                    headers={**headers, "Content-Type": "application/json"},
                )
        except (HttpError, TimeoutError, OSError) as exc:
            raise Retryable from exc
        try:
            if resp.status != 200:
                payload = await _read_json_bounded(resp, self._timeout_s)
                self._raise_for_error(payload, resp.status)
            # Until `created` arrives, bound the wait by timeout_s; after it, by the refresh
            # period (an idle watch legitimately receives nothing).
            read_deadline = loop.time() + self._timeout_s
            created = False
            while True:
                try:
                    async with asyncio.timeout_at(read_deadline):
                        line = await resp.readline()
                except TimeoutError:
                    if created:
                        return  # refresh period over: the caller opens a new stream
                    raise Retryable("watch stream not created in time") from None
                if not line.endswith(b"\n"):
                    raise Retryable("watch stream closed by the server")
                if not line.strip():
                    continue
                batch = self._watch_message(json.loads(line))
                if not created:
                    created = True
                    read_deadline = ends_at
                    on_stream(endpoint)
                if batch is not None:
                    yield batch
        except (HttpError, OSError, ValueError) as exc:
            raise Retryable from exc
        except TokenRejected:
            raise TokenRejected(sent_token) from None
        finally:
            on_stream(None)
            resp.release()

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


async def _read_json_bounded(resp: HttpResponse, timeout_s: float) -> Any:
    try:
        async with asyncio.timeout(timeout_s):
            data = await resp.read()
        return json.loads(data) if data else None
    except (TimeoutError, HttpError, OSError, ValueError) as exc:
        raise Retryable from exc


def _ignore(_: str | None) -> None:
    """`watch` without an `on_stream` callback."""
