"""Authentication of mutating requests: a bearer token or HTTP basic credentials.

Both are compared in constant time (hmac.compare_digest) so that the time an answer takes
says nothing about how much of a guess was right. Read-only routes (probes, views, metrics)
are open; only POST, PATCH, PUT and DELETE pass through `is_authorized`.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from agent.config import ApiSettings

MUTATING_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
REALM = "pgwarden"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def is_authorized(settings: ApiSettings, authorization: str | None) -> bool:
    """True if the `Authorization` header value matches the configured token or basic
    credentials, or if the API is configured with `insecure_no_auth`.

    With neither a token nor basic credentials configured (and no `insecure_no_auth`),
    nothing is authorized: a mutating request is never let through by omission.
    """
    if settings.insecure_no_auth:
        return True
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    scheme = scheme.lower()
    if scheme == "bearer" and settings.token is not None:
        return _same(credentials, settings.token.reveal())
    if scheme == "basic" and settings.basic is not None:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        expected_password = settings.basic.password.reveal() if settings.basic.password else ""
        # Both comparisons run whatever the first one says: no early exit on the user name.
        user_ok = _same(user, settings.basic.username)
        password_ok = _same(password, expected_password)
        return user_ok and password_ok
    return False


def challenges(settings: ApiSettings) -> tuple[str, ...]:
    """The `WWW-Authenticate` values to send with a 401: one per configured scheme."""
    values = []
    if settings.token is not None:
        values.append(f'Bearer realm="{REALM}"')
    if settings.basic is not None:
        values.append(f'Basic realm="{REALM}", charset="UTF-8"')
    return tuple(values) or (f'Bearer realm="{REALM}"',)
