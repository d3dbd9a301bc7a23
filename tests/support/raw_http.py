"""A raw HTTP server on loopback for client tests: the handler writes its bytes itself (split
where the test wants) and closes connections when the test wants; the server counts
connections and records the requests it read."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawServer"], Awaitable[None]]


@dataclass
class RawServer:
    handler: Handler
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    url: str = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await self.handler(reader, writer, self)
        writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> str:
        """One request (head and Content-Length body); its first line, also recorded."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = 0
        for line in head.split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        first = head.split("\r\n", 1)[0] + (f" {body.decode()}" if body else "")
        self.requests.append(first)
        return first


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler, context: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    server = RawServer(handler)
    srv = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=context)
    port = srv.sockets[0].getsockname()[1]
    server.url = f"{'https' if context else 'http'}://127.0.0.1:{port}"
    try:
        yield server
    finally:
        srv.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await srv.wait_closed()


def answer(body: bytes = b"{}", *, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
