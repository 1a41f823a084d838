"""Reading a download within bounds: at most the bytes expected, and before a deadline.

A socket timeout alone bounds each read, not the transfer: a server that trickles one byte per
timeout never trips it. So every read here is a single ``read1`` with the socket's timeout set
to what is left of the deadline, the deadline is checked between reads, and a body longer than
expected stops being read one chunk past the bound (a declared ``Content-Length`` over it is
refused before the first read).
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20
READ_TIMEOUT_S = 60.0  # one read without a byte, when the deadline is further away


class TooLarge(Exception):
    """The body is longer than expected."""


class DeadlineExceeded(Exception):
    """The transfer did not finish before its deadline."""


def _socket_of(response: Any) -> socket.socket | None:
    raw = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def copy(response: Any, write: Callable[[bytes], object], limit: int | None,
         deadline: float | None) -> int:
    """Copy an ``http.client.HTTPResponse`` body to ``write``; the bytes copied. Raises
    ``TooLarge`` past ``limit`` bytes, ``DeadlineExceeded`` past ``deadline`` (monotonic)."""
    declared = response.getheader("content-length")
    if limit is not None and declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"{int(declared)} bytes declared, {limit} expected")
    sock = _socket_of(response)
    size = 0
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"{size} bytes read when the deadline passed")
            if sock is not None:
                sock.settimeout(min(READ_TIMEOUT_S, left))
        try:
            chunk = response.read1(CHUNK_BYTES)
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"{size} bytes read when the deadline passed") from None
            raise
        if not chunk:
            return size
        size += len(chunk)
        if limit is not None and size > limit:
            raise TooLarge(f"more than the {limit} bytes expected")
        write(chunk)


def read(response: Any, limit: int | None, deadline: float | None) -> bytes:
    """The whole body, within ``limit`` and ``deadline`` (see ``copy``)."""
    parts: list[bytes] = []
    copy(response, parts.append, limit, deadline)
    return b"".join(parts)


def to_file(response: Any, dest: Path, limit: int | None, deadline: float | None,
            on_progress: Callable[[int], None] | None,
            refuse: Callable[[str], Exception]) -> tuple[int, str]:
    """``response``'s body written into ``dest`` (truncated first: a retried attempt never
    splices), within ``copy``'s bounds; (size, sha256) computed while writing. A file that
    cannot be written is ``refuse(message)``: disk full is not a network error, not retried."""
    digest = hashlib.sha256()
    try:
        sink = dest.open("wb")
    except OSError as exc:
        raise refuse(f"{dest}: cannot write: {exc.strerror}") from None

    def write(chunk: bytes) -> None:
        digest.update(chunk)
        try:
            sink.write(chunk)
        except OSError as exc:
            raise refuse(f"{dest}: cannot write: {exc.strerror}") from None
        if on_progress is not None:
            on_progress(len(chunk))

    with sink:  # a network error while reading is the caller's to retry
        size = copy(response, write, limit, deadline)
    return size, digest.hexdigest()
