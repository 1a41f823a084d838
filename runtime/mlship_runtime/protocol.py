"""HTTP limits uvicorn's protocol lacks: header size, header and body deadlines, and a connection
cap that sheds the slowest connections first (the policy; mlship_runtime.connection applies it).

Each connection records which phase of a request it is in (idle, headers, body, served) and
since when, in the parser callbacks that run anyway, and one sweep per event loop, every
``SWEEP_S``, closes what overran: ``408`` for headers or a body that did not arrive in time,
``431`` for headers over the limit, and keep-alive connections idle past their timeout (so no
timer is made per request). Over ``max_connections`` the connection waiting longest for its
headers is shed (then the longest idle keep-alive one, then the slowest body): a flood of slow
connections cannot lock out a probe or a client that sends its request at once. A connection is
answered ``503`` only when every other one has a complete request being served.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

log = logging.getLogger("mlship_runtime")
IDLE, HEAD, BODY, SERVED, CLOSED = range(5)  # where a connection is in its current request
SWEEP_S = 0.25


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


class Guarded(Protocol):
    """What the policy needs of a connection."""

    phase: int
    since: float
    keep_alive_s: float

    def refuse(self, status: int, message: str) -> None: ...


def refusal(status: int, message: str) -> bytes:
    """A complete JSON response that closes the connection, written without the app."""
    body = orjson.dumps({"error": message})  # as errors.render writes the app's
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, http.HTTPStatus(status).phrase.encode(),
                                            len(body))) + body


def make_room(new: Guarded, connections: set[Any]) -> None:
    """``new`` took the connection count over the cap: shed the slowest other connection."""
    victim = None
    for phase in (HEAD, IDLE, BODY):
        waiting = [conn for conn in connections if conn.phase == phase and conn is not new]
        if waiting:
            victim = min(waiting, key=lambda conn: conn.since)
            break
    if victim is None:
        log.warning("%d connections, every one with a request being served: refusing "
                    "another (max_connections)", len(connections) - 1)
        new.refuse(503, "too many connections; retry later")
    elif victim.phase == IDLE:
        victim.refuse(0, "")
    else:
        victim.refuse(408, "connection shed: the server is at max_connections and this "
                           "request was the slowest to arrive")


def start_sweep(cls: Any, connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
    loop.call_later(SWEEP_S, _sweep, cls, connections, loop)


def _sweep(cls: Any, connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
    """Close what overran its deadline, then come back in ``SWEEP_S``."""
    limits = cls.limits
    now = time.monotonic()
    for conn in list(connections):
        if conn.phase == HEAD and now - conn.since > limits.header_timeout_s:
            conn.refuse(408, f"request headers not received within {limits.header_timeout_s:g} s")
        elif conn.phase == BODY and now - conn.since > limits.body_timeout_s:
            conn.refuse(408, f"request body not received within {limits.body_timeout_s:g} s")
        elif conn.phase == IDLE and now - conn.since > conn.keep_alive_s:
            conn.refuse(0, "")
    if not loop.is_closed():
        loop.call_later(SWEEP_S, _sweep, cls, connections, loop)
