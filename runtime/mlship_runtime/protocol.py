"""HTTP limits uvicorn's httptools protocol lacks: header size, header and body deadlines, and a
connection cap that sheds the slowest connections first.

uvicorn bounds neither how long a client may take to send its request line and headers nor how
long it may trickle a body, nor how large the headers may grow (httptools buffers a header of any
size, re-copying it on every read). ``guarded_protocol`` returns its ``HttpToolsProtocol`` with
those limits added where they cost the hot path almost nothing: each connection records which
phase of a request it is in (idle, headers, body, served) and since when, in the parser callbacks
uvicorn calls anyway, and one sweep per event loop, every ``SWEEP_S``, closes what overran:
``408`` for headers or a body that did not arrive in time, ``431`` for headers over the limit.
Over ``max_connections`` the connection waiting longest for its headers is shed (then the
longest idle keep-alive one, then the slowest body): a flood of slow connections cannot lock out
a probe or a client that sends its request at once. A connection is answered ``503`` only when
every other one has a complete request being served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("mlship_runtime")
IDLE, HEAD, BODY, SERVED, CLOSED = range(5)  # where a connection is in its current request
SWEEP_S = 0.25
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


def refusal(status: int, message: str) -> bytes:
    """A complete response that closes the connection, written without the app."""
    body = b'{"error":"' + message.encode() + b'"}'
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))) + body


def guarded_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits``; one class per server (per process)."""
    return type("GuardedHttpToolsProtocol", (GuardedProtocol,), {"limits": limits})


class GuardedProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits]
    _sweeping: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = HEAD
        self.since = time.monotonic()
        self.head_bytes = 0  # read while in HEAD: bounds what httptools buffers

    # ---- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.phase, self.since = HEAD, time.monotonic()  # the deadline runs from the connect
        cls = type(self)
        if not cls._sweeping:
            cls._sweeping = True
            self.loop.call_later(SWEEP_S, _sweep, cls, self.connections, self.loop)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.phase > HEAD:
            super().data_received(data)
            return
        # Counted per read, before httptools buffers it: the bound holds to within one read.
        self.head_bytes += len(data)
        super().data_received(data)
        if self.phase == HEAD and self.head_bytes > self.limits.max_header_bytes:
            self.refuse(431, f"request line and headers exceed {self.limits.max_header_bytes} "
                             "bytes")

    # ---- parser callbacks: the phase of the current request ------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.phase != HEAD:  # a new connection's deadline already runs from its connect
            self.phase, self.since = HEAD, time.monotonic()

    def on_headers_complete(self) -> None:
        # Headers that came in one read with more bytes than the limit (a body, or headers too
        # large): only then are they measured, from what uvicorn kept, so no per-header
        # callback of ours runs on the hot path.
        if self.head_bytes > self.limits.max_header_bytes and \
                self._head_size() > self.limits.max_header_bytes:
            self.refuse(431, f"request line and headers exceed {self.limits.max_header_bytes} "
                             "bytes")
            return
        self.phase, self.since, self.head_bytes = BODY, time.monotonic(), 0
        super().on_headers_complete()

    def _head_size(self) -> int:
        """The request line's URL and the headers: ": " and CRLF for each."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.phase == BODY:
            self.phase = SERVED

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.phase == SERVED:  # not a pipelined request already under way
            self.phase, self.since = IDLE, time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = CLOSED
        super().connection_lost(exc)

    # ---- shedding ------------------------------------------------------------------------

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` (unless a response is under way) and close the connection."""
        if self.phase == CLOSED:
            return
        cycle = self.cycle
        answering = self.phase in (IDLE, HEAD) or cycle is None or not cycle.response_started
        self.phase = CLOSED
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now answers http.disconnect
            cycle.message_event.set()
        if not self.transport.is_closing():
            if answering and status != 0:
                self.transport.write(refusal(status, message))
            self.transport.close()

    def _make_room(self) -> None:
        victim = None
        for phase in (HEAD, IDLE, BODY):
            waiting = [conn for conn in self.connections
                       if isinstance(conn, GuardedProtocol) and conn.phase == phase
                       and conn is not self]
            if waiting:
                victim = min(waiting, key=lambda conn: conn.since)
                break
        if victim is None:
            log.warning("%d connections, every one with a request being served: refusing "
                        "another (max_connections)", len(self.connections) - 1)
            self.refuse(503, "too many connections; retry later")
        elif victim.phase == IDLE:
            victim.refuse(0, "")
        else:
            victim.refuse(408, "connection shed: the server is at max_connections and this "
                               "request was the slowest to arrive")


def _sweep(cls: type[GuardedProtocol], connections: set[Any],
           loop: asyncio.AbstractEventLoop) -> None:
    """Close what overran its deadline, then come back in ``SWEEP_S``."""
    limits = cls.limits
    now = time.monotonic()
    for conn in list(connections):
        if not isinstance(conn, GuardedProtocol):
            continue
        if conn.phase == HEAD and now - conn.since > limits.header_timeout_s:
            conn.refuse(408, f"request headers not received within {limits.header_timeout_s:g} s")
        elif conn.phase == BODY and now - conn.since > limits.body_timeout_s:
            conn.refuse(408, f"request body not received within {limits.body_timeout_s:g} s")
    if not loop.is_closed():
        loop.call_later(SWEEP_S, _sweep, cls, connections, loop)
