"""What every ASGI app of the runtime shares: the response path, turning an exception into
its answer, and the lifespan protocol. A single-model ``App`` and the multi-model ``Router``
both answer through here, so errors look the same and start-up/shutdown run the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mlship_runtime import codec
from mlship_runtime.errors import HTTPError, render

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Response = tuple[int, bytes, Headers]

JSON = b"application/json"
# The binary tensor extension's header, as ASGI spells header names.
HEADER_LENGTH = codec.HEADER_LENGTH.lower().encode()
TEXT_METRICS = b"text/plain; version=0.0.4; charset=utf-8"
# The scope key of the server's whole-answer call: answer(status, body, headers).
ANSWER = "mlship.answer"
# ...and of the client's x-request-id, when it has one a header and a log can carry as it is:
# 1..128 visible ASCII characters (no space, no control).
CLIENT_REQUEST_ID = "mlship.request_id"
REQUEST_ID = re.compile(rb"[!-~]{1,128}")
# ...and of its x-forwarded-client-cert header (a mesh sidecar's), when it has one.
CLIENT_CERT = "mlship.client_cert"
INTERNAL_ERROR = b'{"error":"internal server error"}'
access_log = logging.getLogger("mlship_runtime.access")


def error_response(error: Exception, scope: Scope) -> Response:
    """An ``HTTPError`` is the client's: its status and ``{"error": ...}``. Anything else is a
    bug here: logged with its traceback, answered 500 without detail."""
    if isinstance(error, HTTPError):
        return error.status, render(error), [(b"content-type", JSON), *error.headers]
    access_log.error("unexpected error serving %s %s", scope.get("method"), scope.get("path"),
                     exc_info=error)
    return 500, INTERNAL_ERROR, [(b"content-type", JSON)]


async def respond(scope: Scope, send: Send, status: int, body: bytes, headers: Headers) -> None:
    """The answer: in one call when the server offers ``scope[ANSWER]`` (the runtime's own
    connection, mlship_runtime.cycle), else as the two ASGI messages."""
    answer = scope.get(ANSWER)
    if answer is not None:
        answer(status, body, headers)
        return
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send, on_startup: Callable[[], None] | None,
                   on_shutdown: Callable[[], Awaitable[None]]) -> None:
    """Start-up hands the load off (``on_startup``); shutdown drains what the app runs."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_startup is not None:
                on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def infer_response(payload: bytes, length: int | None) -> Response:
    """A V2 infer answer: JSON, or JSON header plus binary tensors (``length`` = header size)."""
    if length is None:
        return 200, payload, [(b"content-type", JSON)]
    return 200, payload, [(b"content-type", b"application/octet-stream"),
                          (HEADER_LENGTH, str(length).encode())]


def declared_length(scope: Scope) -> int:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value)
    return 0
