"""An application of agent/http/server.py served on loopback for a test, with an aiohttp
client session to call it (aiohttp stays a test dependency as a client): the few methods of
aiohttp's TestClient the API tests use, each answer read in full before it is returned.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any

import aiohttp

from agent.http.routing import App
from agent.http.server import HttpServer, Limits


class Served:
    """`app` served on 127.0.0.1 (a free port) until `close`."""

    def __init__(self, server: HttpServer, scheme: str) -> None:
        self.server = server
        self.port = server.port
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._session = aiohttp.ClientSession()

    @classmethod
    async def start(
        cls, app: App, *, limits: Limits | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> Served:
        server = await HttpServer.start(app, "127.0.0.1", 0, ssl_context=ssl_context, limits=limits)
        return cls(server, "https" if ssl_context is not None else "http")

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self._session.request(method, self.url + path, **kwargs)
        await response.read()
        response.release()
        return response

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("HEAD", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("DELETE", path, **kwargs)

    async def close(self) -> None:
        await self._session.close()
        await self.server.close()

    async def __aenter__(self) -> Served:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
