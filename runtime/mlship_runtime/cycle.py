"""One request and its answer on a connection (mlship_runtime.connection): the ASGI
``receive`` and ``send`` of that request, the answer's head kept until its body comes so both go
out in one write, and ``finish``, which lets a task take over an app coroutine stepped by hand.

Response headers are checked for CR, LF and NUL (a header split would forge a response) on the
joined head, in three C-speed counts instead of per-header work: a head of n lines holds
exactly n CRs and n LFs.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Generator
from typing import Any, Protocol

from mlship_runtime.asgi import INTERNAL_ERROR, JSON

log = logging.getLogger("mlship_runtime")
STATUS_LINE = {int(code): b"HTTP/1.1 %d %s\r\n" % (code, code.phrase.encode())
               for code in http.HTTPStatus if code >= 200}
_DISCONNECT = {"type": "http.disconnect"}
_defaults: list[Any] = [None, b""]  # the server's default headers (the date), joined


class Link(Protocol):
    """What a cycle needs of its connection (mlship_runtime.connection.Connection)."""

    transport: asyncio.Transport
    server_state: Any
    write_paused: bool

    async def drain(self) -> None: ...

    def resume_reading(self) -> None: ...

    def answered(self, cycle: Cycle) -> None: ...


class Cycle:
    """One request and its answer."""

    __slots__ = ("body", "chunks", "conn", "disconnected", "event", "expect_continue",
                 "head", "keep_alive", "length", "more_body", "response_complete",
                 "response_started", "scope", "started", "unsized")

    def __init__(self, conn: Link, scope: dict[str, Any], keep_alive: bool,
                 expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.chunks: list[bytes] = []
        self.body = 0  # bytes buffered, not yet received by the app
        self.more_body = True
        self.event: asyncio.Event | None = None  # made only when the app waits for the body
        self.disconnected = self.started = self.unsized = False
        self.response_started = self.response_complete = False
        self.head = b""
        self.length = 0  # body bytes the answer still owes (content-length)

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()

    async def run(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            log.error("exception in the ASGI application", exc_info=exc)
            if not self.response_started:
                self.answer(500, INTERNAL_ERROR,
                            [(b"content-type", JSON), (b"connection", b"close")])
            else:
                self.conn.transport.close()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            if not self.response_complete and not self.disconnected:
                log.error("the ASGI application returned without completing its response")
                self.conn.transport.close()

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if self.expect_continue and not conn.transport.is_closing():
            self.expect_continue = False
            conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.chunks and self.more_body and not self.disconnected and \
                not self.response_complete:
            conn.resume_reading()
            if self.event is None:
                self.event = asyncio.Event()
            await self.event.wait()
            self.event.clear()
        if self.disconnected or self.response_complete:
            return _DISCONNECT
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        self.body = 0
        conn.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict[str, Any]) -> None:
        if self.conn.write_paused and not self.disconnected:
            await self.conn.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']}")
            self.head = self._head(message["status"], message.get("headers", ()))
            self.response_started = True
            self.expect_continue = False
        elif self.response_complete or message["type"] != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {message['type']}")
        else:
            self._body(message.get("body", b""), message.get("more_body", False))

    def _body(self, body: bytes, more: bool) -> None:
        if self.scope["method"] == "HEAD":
            body, self.length = b"", 0
        elif self.unsized:
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + \
                (b"" if more else b"0\r\n\r\n")
        else:
            self.length -= len(body)
            if self.length < 0 or (not more and self.length):
                raise RuntimeError("response body does not match its content-length")
        if self.head:
            body, self.head = self.head + body, b""
        if body:
            self.conn.transport.write(body)
        if not more:
            self._complete()

    def answer(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """The whole answer in one call and one write: the runtime's own apps call it through
        ``scope[ANSWER]`` (mlship_runtime.asgi.respond) instead of sending two ASGI messages."""
        if self.disconnected:
            return
        if self.response_started:
            raise RuntimeError("the response has already started")
        head = self._head(status, headers, len(body))
        self.response_started = True
        self.conn.transport.write(head if self.scope["method"] == "HEAD" else head + body)
        self._complete()

    def _complete(self) -> None:
        self.response_complete = True
        self.wake()
        if not self.keep_alive:
            self.conn.transport.close()
        self.conn.answered(self)

    def _head(self, status: int, headers: Any, length: int | None = None) -> bytes:
        defaults = self.conn.server_state.default_headers
        if defaults is not _defaults[0]:  # uvicorn makes a new list when the second turns
            _defaults[:] = defaults, b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        parts = [STATUS_LINE.get(status) or b"HTTP/1.1 %d \r\n" % status, _defaults[1]]
        lines = 2 + len(defaults) + len(headers)  # with the status line and the blank one
        sized, close = length is not None, False
        if length is not None:
            parts.append(b"content-length: %d\r\n" % length)
            lines += 1
        for name, value in headers:
            key = name.lower()
            if key == b"content-length":
                self.length, sized = int(value), True
            elif key == b"connection" and b"close" in value.lower():
                self.keep_alive, close = False, True
            parts += (key, b": ", value, b"\r\n")
        if not self.keep_alive and not close:
            parts.append(b"connection: close\r\n")
            lines += 1
        if not sized and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.unsized = True
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
            raise RuntimeError("invalid character in a response header")
        return head


class _Rest:
    """The rest of a coroutine stepped once by hand, for a task to finish."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Any, yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # the task's cancel, for the app to handle
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration:
                    return


async def finish(coro: Any, yielded: Any) -> None:
    """Run the rest of ``coro``, which yielded ``yielded`` when stepped by hand."""
    await _Rest(coro, yielded)
