"""What the REST API's handlers see of HTTP (agent/http/server.py serves it): requests,
responses, header fields, and the application: routes with `{name}` path parameters, HEAD by
every GET route, middlewares around the handlers (the first is the outermost). A request no
route serves reaches the middlewares with `route_error` set (404, or 405 with Allow) and
raises it as `HttpError` when passed on, so the application decides how such answers read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]


class Headers:
    """HTTP header fields in order, names compared without case, a name possibly repeated."""

    __slots__ = ("_items",)

    def __init__(self, items: HeaderItems = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self.extend(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        values = self.getall(name)
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self._items if key.lower() == wanted]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __setitem__(self, name: str, value: str) -> None:
        self._items = [(k, v) for k, v in self._items if k.lower() != name.lower()]
        self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append a field. Raises ValueError for a line break in it (header injection)."""
        if any(c in name or c in value for c in "\r\n") or not name:
            raise ValueError(f"header field {name!r}: no line breaks, a non-empty name")
        self._items.append((name, value))

    def extend(self, items: HeaderItems) -> None:
        for name, value in items.items() if isinstance(items, Mapping) else items:
            self.add(name, value)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


@dataclass(slots=True, eq=False)
class Request:
    """One request, its body already read (bounded by the app's `max_body`)."""

    method: str
    path: str  # percent-decoded, without the query
    query: Mapping[str, str]  # the first value of each name
    headers: Headers
    body: bytes = b""
    peer_cert: Mapping[str, object] | None = None  # the verified client certificate, if any
    match_info: dict[str, str] = field(default_factory=dict)  # the route's `{name}` values
    route_error: HttpError | None = None  # set when no route serves this method and path

    async def read(self) -> bytes:
        return self.body

    async def json(self) -> object:
        """The body parsed as JSON. Raises ValueError (or UnicodeDecodeError) if it is not."""
        return json.loads(self.body)


@dataclass(slots=True, eq=False)
class Response:
    body: bytes = b""
    status: int = 200
    headers: Headers = field(default_factory=Headers)

    @classmethod
    def of(cls, body: bytes, *, status: int = 200, headers: HeaderItems = ()) -> Response:
        return cls(body=body, status=status, headers=Headers(headers))


def json_response(
    data: object, *, status: int = 200, dumps: Callable[[object], str] = json.dumps
) -> Response:
    return Response.of(
        dumps(data).encode("utf-8"),
        status=status,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )


class HttpError(Exception):
    """A request refused with `status` (routing: 404, 405 with an Allow header)."""

    def __init__(self, status: int, headers: HeaderItems = ()) -> None:
        self.status = status
        self.reason = reason(status)
        self.headers = Headers(headers)
        super().__init__(f"{status} {self.reason}")


Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, Handler], Awaitable[Response]]
Cleanup = Callable[[], Awaitable[None]]


class App:
    """Routes and middlewares (the first middleware is the outermost). `max_body` bounds
    every request body; `on_cleanup` runs when the server serving the app is closed."""

    def __init__(self, *, middlewares: Sequence[Middleware] = (), max_body: int = 1 << 20):
        self.max_body = max_body
        self.on_cleanup: list[Cleanup] = []
        self._middlewares = tuple(middlewares)
        self._exact: dict[str, dict[str, Handler]] = {}
        self._templates: dict[tuple[str, ...], dict[str, Handler]] = {}
        self._added: list[tuple[str, str]] = []

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve `method` on `path`; a segment `{name}` matches any one segment, its value
        in `request.match_info[name]`."""
        if not path.startswith("/"):
            raise ValueError(f"route {path!r}: a path starts with /")
        segments = tuple(path.split("/")[1:])
        if any(s.startswith("{") for s in segments):
            methods = self._templates.setdefault(segments, {})
        else:
            methods = self._exact.setdefault(path, {})
        if method in methods:
            raise ValueError(f"route {method} {path}: added twice")
        methods[method] = handler
        self._added.append((method, path))

    def add_get(self, path: str, handler: Handler) -> None:
        """GET, and HEAD by the same handler (the body left out)."""
        self.add_route("GET", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add_route("POST", path, handler)

    def add_patch(self, path: str, handler: Handler) -> None:
        self.add_route("PATCH", path, handler)

    def add_delete(self, path: str, handler: Handler) -> None:
        self.add_route("DELETE", path, handler)

    def routes(self) -> list[tuple[str, str]]:
        """(method, path) as added (HEAD is implied by GET and not listed)."""
        return list(self._added)

    def _methods(self, path: str) -> tuple[dict[str, Handler], dict[str, str]]:
        exact = self._exact.get(path)
        if exact is not None:
            return exact, {}
        parts = path.split("/")[1:]
        for segments, methods in self._templates.items():
            if len(segments) != len(parts):
                continue
            found: dict[str, str] = {}
            for segment, part in zip(segments, parts, strict=True):
                if segment.startswith("{") and segment.endswith("}") and part:
                    found[segment[1:-1]] = part
                elif segment != part:
                    break
            else:
                return methods, found
        return {}, {}

    async def respond(self, request: Request) -> Response:
        """The answer of the route (through the middlewares) or of the routing error."""
        methods, request.match_info = self._methods(request.path)
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            if methods:
                allow = sorted({*methods, "HEAD"} if "GET" in methods else methods)
                request.route_error = HttpError(405, {"Allow": ", ".join(allow)})
            else:
                request.route_error = HttpError(404)
            handler = _raise_route_error
        for middleware in reversed(self._middlewares):
            handler = _wrapped(middleware, handler)
        return await handler(request)

    async def cleanup(self) -> None:
        for callback in self.on_cleanup:
            await callback()


def _wrapped(middleware: Middleware, handler: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        return await middleware(request, handler)

    return handle


async def _raise_route_error(request: Request) -> Response:
    assert request.route_error is not None
    raise request.route_error


def reason(status: int) -> str:
    """The status's reason phrase (`Status` for one HTTP does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"
