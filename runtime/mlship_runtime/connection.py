"""The HTTP/1.1 connection: httptools' parser, the ASGI app run eagerly, one write per answer.

uvicorn's own protocol makes a task, an ``asyncio.Event`` and a request-response object for
every request, hands the body over in a second loop iteration, checks every response header
with two regular expressions and writes the head and the body separately; for a tiny model that
costs more than the inference. Here a request whose body is complete when its headers are (all
but large or chunked uploads) runs as soon as its last byte is parsed, inside the same
``data_received``: the app's coroutine is stepped directly, and only one that really waits (a
queued batch, a thread) becomes a task. The answer's head is kept until its body comes and both
go out in one write. Everything else an HTTP/1.1 server owes its clients stays: keep-alive
and HTTP/1.0, pipelining (in order, reads paused meanwhile), ``Expect: 100-continue``, streamed
and chunked request bodies with back-pressure, HEAD, write back-pressure, a JSON 400 for what
does not parse, and uvicorn's graceful shutdown (its ``Server`` drives this class through
``connections``, ``tasks`` and ``shutdown``).

The limits uvicorn lacks (mlship_runtime.protocol) live in the same callbacks: each connection
records which phase of a request it is in and since when; the keep-alive timeout is one of them,
so no timer is made per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections import deque
from typing import Any, ClassVar

import httptools

from mlship_runtime.asgi import ANSWER, CLIENT_CERT, CLIENT_REQUEST_ID, REQUEST_ID
from mlship_runtime.cycle import Cycle, finish
from mlship_runtime.protocol import (
    BODY,
    CLOSED,
    HEAD,
    IDLE,
    SERVED,
    Limits,
    make_room,
    refusal,
    start_sweep,
)

log = logging.getLogger("mlship_runtime")
HIGH_WATER = 64 * 1024  # body bytes buffered before reading pauses until the app takes them
EAGER_BODY = 1024 * 1024  # declared bodies up to this run the app once complete
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class Connection(asyncio.Protocol):
    """One client connection; ``connection_class`` gives it its server's limits."""

    limits: ClassVar[Limits]
    _sweeping: ClassVar[bool] = False

    def __init__(self, config: Any, server_state: Any, app_state: Any = None,
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.keep_alive_s = config.timeout_keep_alive
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.3 has no leniencies
            # Parse what a client pipelines after "Connection: close": its first request is
            # still answered.
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.phase, self.since, self.head_bytes = HEAD, time.monotonic(), 0
        self.cycle: Cycle | None = None  # the request being answered
        self.pending: Cycle | None = None  # the request being parsed, not yet handed over
        self.pipeline: deque[Cycle] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.eager = True  # the request's body, if any, is declared and at most EAGER_BODY
        # The request's x-request-id and x-forwarded-client-cert headers, for the audit line.
        self.request_id: bytes | None = None
        self.client_cert: bytes | None = None
        self.read_paused = self.write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # ---- the transport -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.since = time.monotonic()  # the header deadline runs from the connect
        cls = type(self)
        if not cls._sweeping:
            cls._sweeping = True
            start_sweep(cls, self.connections, self.loop)
        if len(self.connections) > self.limits.max_connections:
            make_room(self, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = CLOSED
        self.connections.discard(self)
        for cycle in (self.cycle, *self.pipeline):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.wake()
        self.pipeline.clear()
        self._resume_writes()
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        if self.phase <= HEAD:  # counted before httptools buffers it: bounded to a read
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # no protocol switch here: answer, then close
            if self.pending is not None:
                self.pending.keep_alive = False
                self.on_message_complete()
            elif self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False
            else:
                self.transport.close()
        except httptools.HttpParserError as exc:
            self.refuse(400, f"invalid HTTP request: {str(exc) or type(exc).__name__}")
            return
        if self.phase == HEAD and self.head_bytes > self.limits.max_header_bytes:
            self.refuse(431, f"request line and headers exceed {self.limits.max_header_bytes} "
                             "bytes")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self._resume_writes()

    def _resume_writes(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drain(self) -> None:
        if self._drained is None:
            self._drained = self.loop.create_future()
        await self._drained

    def resume_reading(self) -> None:
        if self.read_paused and self.phase != CLOSED and not self.pipeline:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    # ---- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url, self.headers, self.expect_continue = b"", [], False
        self.request_id = self.client_cert = None
        self.eager = True
        if self.phase == CLOSED:  # refused: what else the read holds is not served
            return
        if self.phase != HEAD:  # a new connection's deadline already runs from its connect
            self.phase, self.since = HEAD, time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif name == b"x-request-id":
            self.request_id = value
        elif name == b"x-forwarded-client-cert":
            self.client_cert = value
        elif name == b"content-length":  # declared and small: the app runs once it is here
            self.eager = self.eager and value.isdigit() and int(value) <= EAGER_BODY
        elif name == b"transfer-encoding":
            self.eager = False
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.phase == CLOSED:
            return
        limit = self.limits.max_header_bytes
        # Measured only when the read that completed them was larger than the limit: no
        # per-header work of ours on the hot path.
        if self.head_bytes > limit and len(self.url) + sum(
                len(name) + len(value) + 4 for name, value in self.headers) > limit:
            self.refuse(431, f"request line and headers exceed {limit} bytes")
            return
        self.phase, self.since, self.head_bytes = BODY, time.monotonic(), 0
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope: dict[str, Any] = {"type": "http", "asgi": _ASGI, "http_version": version,
                 "method": parser.get_method().decode("ascii"), "scheme": "http",
                 "path": path, "raw_path": raw_path, "query_string": url.query or b"",
                 "root_path": "", "headers": self.headers, "client": self.client,
                 "server": self.server}
        cycle = Cycle(self, scope, version != "1.0" and parser.should_keep_alive(),
                      self.expect_continue)
        scope[ANSWER] = cycle.answer
        if self.request_id is not None and REQUEST_ID.fullmatch(self.request_id):
            scope[CLIENT_REQUEST_ID] = self.request_id
        if self.client_cert is not None:
            scope[CLIENT_CERT] = self.client_cert
        self.pending = cycle
        if self.expect_continue or parser.should_upgrade() or not self.eager:
            self._hand_over(cycle)  # the app reads the body as it comes

    def on_body(self, body: bytes) -> None:
        cycle = self.pending
        if cycle is None or cycle.response_complete:
            return
        cycle.chunks.append(body)
        cycle.body += len(body)
        if cycle.started:
            if cycle.body > HIGH_WATER:
                self.pause_reading()
            cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.pending
        if cycle is None:
            return
        self.pending = None
        cycle.more_body = False
        if self.phase == BODY:
            self.phase = SERVED
        if cycle.started:
            cycle.wake()
        else:
            self._hand_over(cycle)

    # ---- requests and answers ------------------------------------------------------------

    def _hand_over(self, cycle: Cycle) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.pipeline.append(cycle)  # answered in order, after the one being served
            self.pause_reading()
            return
        self._start(cycle)

    def _start(self, cycle: Cycle) -> None:
        self.cycle = cycle
        cycle.started = True
        coro = cycle.run(self.app)
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        task = self.loop.create_task(finish(coro, yielded))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def answered(self, cycle: Cycle) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:
            self.loop.call_soon(self._next)  # not nested in this answer's frames
            return
        if self.phase == SERVED:  # not a request already being parsed
            self.phase, self.since = IDLE, time.monotonic()
        self.resume_reading()

    def _next(self) -> None:
        if self.pipeline and self.phase != CLOSED:
            self._start(self.pipeline.popleft())
            if not self.pipeline:
                self.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now if idle, else after the current answer."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        else:
            cycle.keep_alive = False

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` (unless an answer is under way) and close the connection."""
        if self.phase == CLOSED:
            return
        cycle = self.cycle
        answering = self.phase in (IDLE, HEAD) or cycle is None or not cycle.response_started
        self.phase = CLOSED
        for waiting in (cycle, self.pending, *self.pipeline):
            if waiting is not None and not waiting.response_complete:
                waiting.disconnected = True  # the app's receive() now answers http.disconnect
                waiting.wake()
        if not self.transport.is_closing():
            if answering and status != 0:
                self.transport.write(refusal(status, message))
            self.transport.close()


def connection_class(limits: Limits) -> type[Connection]:
    """The protocol class for one server (per process), with ``limits``."""
    return type("MlshipConnection", (Connection,), {"limits": limits})
