"""The one exception the API's handlers raise for a request they refuse.

The error middleware (server.py) turns it, and every other failure, into a JSON body
`{"error": "<message>"}` with the status code carried here. Messages that concern one field of
the request start with the field's name (`candidate: ...`), so a client can tell which one.
"""

from __future__ import annotations


class ApiError(Exception):
    """A refused request: `status` is the HTTP code (4xx or 503), `message` is for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
