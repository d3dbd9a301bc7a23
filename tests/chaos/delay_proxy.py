"""A transparent TCP proxy that delays traffic by destination, for the slow-network scenarios.

`tc netem` is not available on these machines, so latency is added in user space. One proxy
runs in each member's namespace (as root), for the whole life of the cluster:

    python -m tests.chaos.delay_proxy PORT CONTROL

and an iptables `nat OUTPUT ... REDIRECT --to-ports PORT` rule in the same namespace sends it
every TCP connection the member opens to another host of the run (etcd, the other members'
PostgreSQL and REST API): the agent's etcd client, its peer requests and the WAL receiver all
go through it without any change to their configuration. The proxy reads each connection's
original destination (`SO_ORIGINAL_DST`) and connects there with a socket mark (`SO_MARK`)
that the REDIRECT rule skips, so its own connections are not redirected again.

CONTROL is a JSON object `{"<address>": one_way_delay_s, ...}`, read every 50 ms (absent or
empty: no delay). Each chunk read from either side of a connection to `<address>` is
forwarded `one_way_delay_s` after it was read, in order (a pipe, not stop-and-wait: the added
round trip is twice the one-way delay, whatever the throughput). A change of CONTROL applies
to the chunks read after it, on the connections already open too: that is why the proxies
run from the start rather than being put in place at the fault (existing connections would
bypass a new REDIRECT rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
import time
from pathlib import Path

MARK = 0x29A  # the REDIRECT rule skips packets with this mark (the proxy's own connections)
_SO_ORIGINAL_DST = 80
_SO_MARK = 36
_POLL_S = 0.05
_CHUNK = 65536
_RATE_CHUNK = 16384  # smaller reads while rate-limited: a smoother rate
_RATE_QUEUE_CHUNKS = 4  # how far a rate-limited direction reads ahead


def redirect_rules(port: int, own_address: str, subnet: str) -> list[list[str]]:
    """The iptables rules (nat table, OUTPUT) that send this host's TCP connections to the
    run's other hosts through the proxy on `port`: its own address is left alone, and so are
    the proxy's own connections (marked)."""
    nat = ["-t", "nat", "-A", "OUTPUT", "-p", "tcp"]
    return [
        [*nat, "-d", own_address, "-j", "RETURN"],
        [*nat, "-m", "mark", "--mark", str(MARK), "-j", "RETURN"],
        [*nat, "-d", subnet, "-j", "REDIRECT", "--to-ports", str(port)],
    ]


def write_control(path: Path, delays: dict[str, object]) -> None:
    """Set the one-way delay per destination address (atomically: the proxy polls it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(delays))
    tmp.replace(path)


class Delays:
    """The control file's current content, reloaded every _POLL_S. A value is a one-way delay
    in seconds, or `{"delay_s": ..., "rate_bps": ...}`: a rate limit (bytes per second, each
    direction) makes the proxy read no faster than it forwards, so a sender's backlog stays in
    the sender's socket buffers (and dies with it), as on a saturated link."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.by_address: dict[str, float] = {}
        self.rate_by_address: dict[str, float] = {}

    def reload(self) -> None:
        try:
            loaded = json.loads(self.control.read_text() or "{}")
        except (OSError, ValueError):
            loaded = {}
        delays: dict[str, float] = {}
        rates: dict[str, float] = {}
        for key, value in loaded.items():
            if isinstance(value, dict):
                delays[str(key)] = float(value.get("delay_s", 0.0))
                if value.get("rate_bps"):
                    rates[str(key)] = float(value["rate_bps"])
            else:
                delays[str(key)] = float(value)
        self.by_address, self.rate_by_address = delays, rates

    async def watch(self) -> None:
        while True:
            self.reload()
            await asyncio.sleep(_POLL_S)


def _original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delays: Delays, address: str
) -> None:
    """Forward what `reader` yields to `writer`, each chunk one delay after it was read. A
    read that fails (the peer reset the connection) ends the pump with ConnectionResetError,
    one delay later too, and the caller closes both sides: a reset must reach the other end.
    (Before, the failed read ended its task silently and this pump waited for its queue for
    good: a WAL receiver whose primary went down during its connection's start-up packet
    waited on the proxy forever, and the member never streamed again; the WAL receiver did
    not wait out its `connect_timeout=2`: 48 s observed.)"""
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def read() -> None:
        while True:
            limited = address in delays.rate_by_address
            # Rate-limited: read no further ahead than a few chunks (backpressure).
            while limited and queue.qsize() >= _RATE_QUEUE_CHUNKS:
                await asyncio.sleep(0.005)
                limited = address in delays.rate_by_address
            try:
                data: bytes | None = await reader.read(_RATE_CHUNK if limited else _CHUNK)
            except (OSError, ConnectionError):
                data = None
            queue.put_nowait((time.monotonic() + delays.by_address.get(address, 0.0), data))
            if not data:
                return

    reading = asyncio.create_task(read(), name=f"read-{address}")
    try:
        while True:
            due, data = await queue.get()
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            if data is None:
                raise ConnectionResetError(f"the connection to or from {address} was reset")
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            rate = delays.rate_by_address.get(address)
            if rate:
                await asyncio.sleep(len(data) / rate)
    finally:
        reading.cancel()


async def _serve(
    delays: Delays, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
) -> None:
    sock = client_writer.get_extra_info("socket")
    try:
        address, port = _original_destination(sock)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setsockopt(socket.SOL_SOCKET, _SO_MARK, MARK)
        upstream.setblocking(False)
        try:
            async with asyncio.timeout(5.0):
                await asyncio.get_running_loop().sock_connect(upstream, (address, port))
        except BaseException:
            upstream.close()
            raise
        up_reader, up_writer = await asyncio.open_connection(sock=upstream)
    except (OSError, TimeoutError):
        client_writer.close()
        return
    pumps = [
        asyncio.ensure_future(_pump(client_reader, up_writer, delays, address)),
        asyncio.ensure_future(_pump(up_reader, client_writer, delays, address)),
    ]
    try:
        await asyncio.gather(*pumps)
    except (OSError, ConnectionError):
        # A reset: abort both sides (RST, not FIN), as a reset on the path would.
        for w in (client_writer, up_writer):
            with contextlib.suppress(OSError, AttributeError):
                w.transport.abort()
    finally:
        for pump in pumps:
            pump.cancel()
        for w in (client_writer, up_writer):
            with contextlib.suppress(OSError):
                w.close()


async def main(port: int, control: Path) -> None:
    delays = Delays(control)
    delays.reload()
    watcher = asyncio.create_task(delays.watch(), name="control-watch")
    server = await asyncio.start_server(
        lambda r, w: _serve(delays, r, w), host="0.0.0.0", port=port, reuse_address=True
    )
    try:
        async with server:
            await server.serve_forever()
    finally:
        watcher.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
