"""Errors that carry their HTTP status, and the one place that renders them.

Every failure a client can cause is raised as an ``HTTPError`` subclass with a message naming
the input, what was expected and what came; the app renders it as ``{"error": "..."}``. Anything
else is a server bug and becomes a 500 with a generic message (the detail goes to the log).
"""

from __future__ import annotations

import orjson


class HTTPError(Exception):
    """An error with an HTTP status and optional extra response headers."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or []


class BadRequest(HTTPError):
    status = 400


class NotFound(HTTPError):
    status = 404


class MethodNotAllowed(HTTPError):
    status = 405


class PayloadTooLarge(HTTPError):
    status = 413


class InferenceFailed(HTTPError):
    """onnxruntime rejected inputs that passed our checks (e.g. a value out of a Gather range)."""

    status = 422


class Overloaded(HTTPError):
    status = 503


class NotReady(HTTPError):
    status = 503


class Timeout(HTTPError):
    status = 504


class RunCut(Timeout):
    """A model run ended by its deadline (onnxruntime's terminate flag)."""


class RequestTimeout(HTTPError):
    """The request did not arrive in time, or the client closed its connection first."""

    status = 408


def render(error: HTTPError) -> bytes:
    return orjson.dumps({"error": error.message})
