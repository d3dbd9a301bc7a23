"""The API's HTTP plumbing: JSON answers, JSON errors for every failure (the server's own
404 and 405 included), the authentication of mutating requests, and reading a JSON body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import structlog

from agent.api import auth
from agent.api.errors import ApiError
from agent.api.views import Json
from agent.config import ApiSettings
from agent.dcs.base import DcsUnavailable
from agent.http.routing import Handler, HttpError, Middleware, Request, Response, json_response

# The logger name the API has always logged under (split from server.py).
_log = structlog.get_logger("agent.api.server")

MAX_BODY_BYTES = 64 * 1024


def json_answer(body: Json | list[object], status: int = 200) -> Response:
    return json_response(body, status=status, dumps=lambda o: json.dumps(o, sort_keys=True))


def error_answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    response = json_answer({"error": message}, status=status)
    if headers:
        response.headers.extend(headers)
    return response


async def errors_as_json(request: Request, handler: Handler) -> Response:
    """Outermost middleware: every 4xx/5xx leaves as JSON, whoever raised it."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_answer(exc.status, exc.message)
    except DcsUnavailable as exc:
        return error_answer(503, f"the DCS is unavailable: {exc}")
    except HttpError as exc:
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        return error_answer(
            exc.status, f"{exc.reason.lower()}: {request.method} {request.path}", kept
        )
    except Exception:
        _log.exception("api_internal_error", method=request.method, path=request.path)
        return error_answer(500, "internal error (see the agent's log)")


def auth_middleware(settings: ApiSettings) -> Middleware:
    async def require_auth(request: Request, handler: Handler) -> Response:
        # Unknown routes and wrong methods answer 404/405 first: no credentials needed to learn
        # that a route does not exist.
        if request.route_error is not None:
            return await handler(request)
        if request.method in auth.MUTATING_METHODS and not auth.is_authorized(
            settings, request.headers.get("Authorization")
        ):
            response = error_answer(401, "authentication required (Bearer token or HTTP basic)")
            for challenge in auth.challenges(settings):
                response.headers.add("WWW-Authenticate", challenge)
            return response
        return await handler(request)

    return require_auth


async def json_object(request: Request, *, allow_empty: bool) -> Mapping[str, object]:
    """The request body as a JSON object; an empty body is `{}` where `allow_empty`."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "body: expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body: expected a JSON object")
    return data
