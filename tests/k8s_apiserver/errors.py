"""Kubernetes `Status` error objects and the exception the handlers raise to produce them.

Every failure the test API server returns is a `meta/v1 Status` with `status: Failure`, a
`reason` from the Kubernetes vocabulary and the matching HTTP code, as a real kube-apiserver
sends them (clients such as kubernetes-asyncio and kubectl key on `code` and `reason`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """The `reason` values of `Status` objects this server produces."""

    NOT_FOUND = "NotFound"
    ALREADY_EXISTS = "AlreadyExists"
    CONFLICT = "Conflict"
    INVALID = "Invalid"
    BAD_REQUEST = "BadRequest"
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    EXPIRED = "Expired"
    GONE = "Gone"
    TOO_MANY_REQUESTS = "TooManyRequests"
    INTERNAL_ERROR = "InternalError"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    TIMEOUT = "Timeout"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"
    UNSUPPORTED_MEDIA_TYPE = "UnsupportedMediaType"
    NOT_ACCEPTABLE = "NotAcceptable"


# The reason a real apiserver attaches to a bare HTTP code (k8s.io/apimachinery errors).
REASON_FOR_CODE: dict[int, Reason] = {
    400: Reason.BAD_REQUEST,
    401: Reason.UNAUTHORIZED,
    403: Reason.FORBIDDEN,
    404: Reason.NOT_FOUND,
    405: Reason.METHOD_NOT_ALLOWED,
    406: Reason.NOT_ACCEPTABLE,
    409: Reason.CONFLICT,
    410: Reason.GONE,
    415: Reason.UNSUPPORTED_MEDIA_TYPE,
    422: Reason.INVALID,
    429: Reason.TOO_MANY_REQUESTS,
    500: Reason.INTERNAL_ERROR,
    503: Reason.SERVICE_UNAVAILABLE,
    504: Reason.TIMEOUT,
}


def reason_for_code(code: int) -> Reason:
    """The conventional reason for an HTTP code (InternalError for unknown 5xx, BadRequest
    for unknown 4xx)."""
    if code in REASON_FOR_CODE:
        return REASON_FOR_CODE[code]
    return Reason.INTERNAL_ERROR if code >= 500 else Reason.BAD_REQUEST


def status_object(
    *,
    code: int,
    reason: Reason | None,
    message: str,
    name: str | None = None,
    kind: str | None = None,
    group: str | None = None,
    retry_after_s: int | None = None,
) -> dict[str, Any]:
    """A `Status` with `status: Failure` (the JSON body of every error response)."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "code": code,
    }
    if reason is not None:
        status["reason"] = str(reason)
    details: dict[str, Any] = {}
    if name is not None:
        details["name"] = name
    if group:
        details["group"] = group
    if kind is not None:
        details["kind"] = kind
    if retry_after_s is not None:
        details["retryAfterSeconds"] = retry_after_s
    if details:
        status["details"] = details
    return status


class ApiError(Exception):
    """Raised inside the server to answer with a `Status` object (never escapes the app)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: Reason | None = None,
        name: str | None = None,
        kind: str | None = None,
        group: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason if reason is not None else reason_for_code(code)
        self.name = name
        self.kind = kind
        self.group = group
        self.retry_after_s = retry_after_s

    def status(self) -> dict[str, Any]:
        """This error as a `Status` object."""
        return status_object(
            code=self.code,
            reason=self.reason,
            message=self.message,
            name=self.name,
            kind=self.kind,
            group=self.group,
            retry_after_s=self.retry_after_s,
        )


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, message, reason=Reason.BAD_REQUEST)
